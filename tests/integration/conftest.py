"""Servers the integration tests talk to, started once per session.

PostgreSQL and redis come from the system package manager (`make test`
installs them with tools/install-system-deps); each runs here on 127.0.0.1
on a free port with a temporary data directory, and is stopped and removed
again at the end of the session. Where one truly cannot start (not
installed, no `postgres` user to run it as root), its tests skip with the
reason, which `-rs` prints.
"""

import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from tests.integration.support import Child, free_port, make_certificates, skip_unavailable


@pytest.fixture(scope="session")
def tls_files():
    """Paths of a CA, a server certificate and key for localhost and
    127.0.0.1 signed by it, and an unrelated CA ("ca", "cert", "key",
    "other_ca")."""
    try:
        import cryptography  # noqa: F401
    except ImportError:
        skip_unavailable("TLS", "the cryptography package is not installed")
    directory = tempfile.mkdtemp(prefix="tonio-tls-")
    try:
        yield make_certificates(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# ---- PostgreSQL -------------------------------------------------------------

def _postgres_bindir():
    """The bin directory of the newest PostgreSQL server installed."""
    def version(path):
        m = re.search(r"/postgresql/(\d+)/", path)
        return int(m.group(1)) if m else 0

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _as_postgres_user():
    """The command prefix and (uid, gid) that run the server: initdb and
    postgres refuse to run as root, so root runs them as `postgres`."""
    if os.geteuid() != 0:
        return [], None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        skip_unavailable("PostgreSQL", "running as root and there is no `postgres` user "
                         "to run the server as")
    runuser = shutil.which("runuser")
    if runuser is None:
        skip_unavailable("PostgreSQL", "running as root and `runuser` is missing")
    return [runuser, "-u", "postgres", "--"], (user.pw_uid, user.pw_gid)


def _pg_ready(bindir, port):
    return subprocess.run([os.path.join(bindir, "pg_isready"), "-q", "-h", "127.0.0.1",
                           "-p", str(port), "-U", "postgres"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server of our own: {"host", "port", "user", "database"}."""
    bindir = _postgres_bindir()
    if bindir is None:
        skip_unavailable("PostgreSQL", "no server binaries (initdb) installed; "
                         "`apt-get install postgresql` provides them")
    prefix, owner = _as_postgres_user()
    directory = tempfile.mkdtemp(prefix="tonio-pg-")
    server = None
    try:
        if owner is not None:
            os.chown(directory, *owner)
        data = os.path.join(directory, "data")
        init = subprocess.run(
            prefix + [os.path.join(bindir, "initdb"), "-D", data, "-U", "postgres",
                      "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"],
            capture_output=True, text=True, timeout=120)
        if init.returncode != 0:
            skip_unavailable("PostgreSQL", f"initdb failed: {init.stderr.strip()[-500:]}")
        for _attempt in range(3):   # the free port may be taken in between
            port = free_port()
            server = Child(prefix + [
                os.path.join(bindir, "postgres"), "-D", data, "-p", str(port),
                "-k", directory, "-c", "listen_addresses=127.0.0.1",
                "-c", "fsync=off", "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off", "-c", "max_connections=100",
                "-c", "shared_buffers=16MB"])
            deadline = time.monotonic() + 30
            while server.proc.poll() is None and time.monotonic() < deadline:
                if _pg_ready(bindir, port):
                    break
                time.sleep(0.1)
            if server.proc.poll() is None and _pg_ready(bindir, port):
                break
            why = server.tail(5)
            server.stop(signal.SIGINT)
            server = None
        if server is None:
            skip_unavailable("PostgreSQL", f"the server did not start: {why}")
        yield {"host": "127.0.0.1", "port": port, "user": "postgres", "database": "postgres"}
    finally:
        if server is not None:
            server.stop(signal.SIGINT, timeout=20)   # SIGINT: fast shutdown
        shutil.rmtree(directory, ignore_errors=True)


# ---- redis ------------------------------------------------------------------

def _redis_ready(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_server():
    """A redis-server of our own, without persistence: {"host", "port"}."""
    exe = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.path.exists(p)),
        None)
    if exe is None:
        skip_unavailable("redis", "redis-server is not installed "
                         "(`apt-get install redis-server` provides it)")
    directory = tempfile.mkdtemp(prefix="tonio-redis-")
    server = None
    try:
        for _attempt in range(3):
            port = free_port()
            server = Child([exe, "--port", str(port), "--bind", "127.0.0.1",
                            "--dir", directory, "--save", "", "--appendonly", "no",
                            "--daemonize", "no", "--loglevel", "warning"])
            deadline = time.monotonic() + 15
            while server.proc.poll() is None and time.monotonic() < deadline:
                if _redis_ready(port):
                    break
                time.sleep(0.05)
            if server.proc.poll() is None and _redis_ready(port):
                break
            why = server.tail(5)
            server.stop()
            server = None
        if server is None:
            skip_unavailable("redis", f"redis-server did not start: {why}")
        yield {"host": "127.0.0.1", "port": port}
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)
