"""What the integration tests share: free ports, servers run as child
processes, and TLS certificates made for the session.

Every server is a real program started here on 127.0.0.1 (uvicorn, postgres,
redis-server) in a session of its own, so that a test that fails half-way
still leaves nothing running: `Child.stop()` signals the whole process group
it started and waits for it.
"""

import asyncio
import contextlib
import datetime
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# what the servers under test run on: uvicorn's --loop argument
SERVER_LOOPS = {
    "asyncio": "asyncio",
    "tonio": "tonio_loop:new_event_loop",
}
# the module the ASGI app finds its running loop's class in
LOOP_MODULES = {
    "asyncio": "asyncio.unix_events",
    "tonio": "tonio_loop._loop",
}


def skip_shared_pool_on_threaded_loop():
    """Call from a test whose tasks share one httpx client: on a loop with
    worker threads (TONIO_THREADS) those tasks run on several workers at
    once, and httpcore's connection pool guards its state with an anyio
    Lock built on asyncio's primitives, which are not thread-safe (the
    documented non-guarantee of threads=N): the pool loses track of its
    connections ("list.remove(x): x not in list")."""
    if getattr(asyncio.get_running_loop(), "threads", 0):
        pytest.skip("httpx's connection pool shared by tasks on several worker threads: its "
                    "anyio Lock rests on asyncio primitives, which are not thread-safe")


def free_port():
    """A TCP port on 127.0.0.1 that nobody listened on a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Child:
    """A server process of the tests, with its output in a file.

    stdout stays a pipe when `pipe_stdout` is set (the ASGI app prints
    markers there); stderr always goes to a temporary file, so a chatty
    server can never block on a full pipe."""

    def __init__(self, cmd, *, env=None, pipe_stdout=False, cwd=None):
        self.cmd = cmd
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipe_stdout else subprocess.DEVNULL,
            stderr=self.log, env=env, cwd=cwd, start_new_session=True)
        self._stdout_buf = b""

    @property
    def pid(self):
        return self.proc.pid

    def output(self):
        """Everything the process wrote to stderr so far."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def tail(self, n=15):
        return "\n".join(self.output().strip().splitlines()[-n:])

    def wait_for_port(self, port, timeout=20.0):
        """True once the process accepts connections on port; False when it
        died or took longer than timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if port_open(port):
                return True
            time.sleep(0.05)
        return False

    def read_line(self, timeout=10.0):
        """The next line the process printed to its stdout pipe (bytes,
        without the newline); AssertionError when none came in time."""
        import select

        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._stdout_buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"no line from {self.cmd[0]} within {timeout}s; "
                                     f"stderr:\n{self.tail()}")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError(f"{self.cmd[0]} closed stdout; stderr:\n{self.tail()}")
            self._stdout_buf += chunk
        line, self._stdout_buf = self._stdout_buf.split(b"\n", 1)
        return line

    def wait(self, timeout):
        """The exit status, or None when the process still runs after timeout."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        """Stop the process and everything it started (its process group)."""
        if self.proc.poll() is None:
            self._signal_group(sig)
            if self.wait(timeout) is None:
                self._signal_group(signal.SIGKILL)
                self.proc.wait()
        # workers or forked server processes may outlive their parent
        self._signal_group(signal.SIGKILL)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()

    def _signal_group(self, sig):
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def process_gone(pid):
    """True when pid no longer runs (exited; a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def python_env():
    """The environment of a Python child that imports tonio_loop and tests."""
    path = [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(path), PYTHONUNBUFFERED="1")


@contextlib.asynccontextmanager
async def aiohttp_site(app, tls=None):
    """Serve an aiohttp app on 127.0.0.1 from the running loop, with TLS
    when given tls_files; yields the base URL."""
    from aiohttp import web

    server_ssl = None
    if tls is not None:
        server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ssl.load_cert_chain(tls["cert"], tls["key"])
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def skip_unavailable(what, why):
    """Skip with a reason that says what could not start and why."""
    pytest.skip(f"{what} cannot start here: {why}")


# ---- TLS --------------------------------------------------------------------

def make_certificates(directory):
    """A CA and a server certificate for localhost/127.0.0.1 signed by it,
    plus a second, unrelated CA; returns the paths of the PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=7))

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def build(subject, issuer, public_key, signer, *extensions):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                   .public_key(public_key).serial_number(x509.random_serial_number())
                   .not_valid_before(valid[0]).not_valid_after(valid[1]))
        for ext, critical in extensions:
            builder = builder.add_extension(ext, critical=critical)
        return builder.sign(signer, hashes.SHA256())

    # Python 3.13 verifies with VERIFY_X509_STRICT, which wants key identifiers
    def ca(cn):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = build(name(cn), name(cn), key.public_key(), key,
                     (x509.BasicConstraints(ca=True, path_length=None), True),
                     (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
                     (x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                    content_commitment=False, key_encipherment=False,
                                    data_encipherment=False, key_agreement=False,
                                    encipher_only=False, decipher_only=False), True))
        return key, cert

    ca_key, ca_cert = ca("tonio_loop test CA")
    _, other_ca_cert = ca("some other CA")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build(name("localhost"), ca_cert.subject, key.public_key(), ca_key,
                 (x509.SubjectAlternativeName([
                     x509.DNSName("localhost"),
                     x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False),
                 (x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False),
                 (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
                 (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                  False))

    pem = serialization.Encoding.PEM
    files = {
        "ca": ca_cert.public_bytes(pem),
        "other_ca": other_ca_cert.public_bytes(pem),
        "cert": cert.public_bytes(pem),
        "key": key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()),
    }
    paths = {}
    for what, data in files.items():
        paths[what] = os.path.join(directory, f"{what}.pem")
        with open(paths[what], "wb") as f:
            f.write(data)
    return paths


def uvicorn_command(port, *, loop, http="httptools", ws="websockets-sansio",
                    workers=None, tls=None, app="tests.integration.asgi_app:app"):
    """The command line of a uvicorn server on 127.0.0.1:port."""
    cmd = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1",
           "--port", str(port), "--loop", SERVER_LOOPS[loop], "--http", http,
           "--ws", ws, "--no-access-log", "--timeout-graceful-shutdown", "10"]
    if workers:
        cmd += ["--workers", str(workers)]
    if tls:
        cmd += ["--ssl-certfile", tls["cert"], "--ssl-keyfile", tls["key"]]
    return cmd


def start_uvicorn(*, loop, pipe_stdout=False, timeout=30.0, **options):
    """A uvicorn server (see uvicorn_command) that accepts connections:
    (Child, port). Fails the test when it does not come up."""
    pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install -e '.[test]')")
    for _attempt in range(3):   # the free port may be taken in between
        port = free_port()
        server = Child(uvicorn_command(port, loop=loop, **options),
                       env=python_env(), pipe_stdout=pipe_stdout, cwd=ROOT)
        if server.wait_for_port(port, timeout):
            return server, port
        log = server.tail()
        server.stop(signal.SIGKILL)
        if "address already in use" not in log.lower():
            break
    pytest.fail(f"uvicorn --loop {SERVER_LOOPS[loop]} did not start:\n{log}")
