"""What the network workloads share: the C tools, CPU pinning and the
measurement of a server under load.

The client side is bench/loadgen.c, a small epoll load generator (echo and
HTTP modes), or wrk for HTTP when the system has it. The floor is
bench/echo_server.c, a plain C epoll echo server. Both are built here with
the system cc into bench/bin/ the first time they are needed. The server
under test runs on one CPU and the client on another, so the client never
steals the server's time; the server's CPU time over the measured window is
reported next to requests/s.

A workload that serves with a loop calls

    measure_server(new_loop, serve, mode="echo", size=1024, quick=quick)

where `serve(loop)` is a coroutine function that starts the server and
returns `(port, close)`, `close` being a coroutine function that stops it
again (see `serve_protocol`). With new_loop=None (the "C floor" pseudo
implementation, see bench.registry) it measures the C echo server instead.
"""

import fcntl
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

from bench.registry import Unavailable, duration, scale

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.join(HERE, "bin")
TOOLS = ("loadgen", "echo_server")
# tools built on demand only, with the libraries they link
TOOL_LIBS = {"tls_loadgen": ["-lssl", "-lcrypto"]}
CFLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror"]
CONNS = 10


# ---- the C tools ------------------------------------------------------------

def tool(name):
    """Path of a C tool, built (again) when missing or older than its sources."""
    src = os.path.join(HERE, name + ".c")
    exe = os.path.join(BIN, name)
    if _fresh(exe, src):
        return exe
    os.makedirs(BIN, exist_ok=True)
    with open(os.path.join(BIN, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # workers may race to build
        if not _fresh(exe, src):
            cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
            if cc is None:
                raise Unavailable("no C compiler (cc) to build the load generator")
            tmp = f"{exe}.{os.getpid()}.tmp"
            libs = TOOL_LIBS.get(name, [])
            proc = subprocess.run([cc, *CFLAGS, "-o", tmp, src, *libs],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                if libs and "openssl/" in proc.stderr:
                    raise Unavailable(f"{name} needs the OpenSSL headers (libssl-dev)")
                raise RuntimeError(f"building {name} failed:\n{proc.stderr}")
            os.replace(tmp, exe)
    return exe


def _fresh(exe, src):
    sources = [src] + glob.glob(os.path.join(HERE, "*.h"))
    return os.path.exists(exe) and all(os.path.getmtime(exe) >= os.path.getmtime(s)
                                       for s in sources)


def build_tools():
    """Build every C tool (the runner does this once before measuring)."""
    return [tool(name) for name in TOOLS]


# ---- CPUs -------------------------------------------------------------------

def cpus():
    """(server CPU, client CPU), or (None, None) with fewer than two CPUs."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None, None
    return allowed[0], allowed[1]


def pin_self(cpu):
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def _pinner(cpu):
    """A preexec_fn that pins a child process to cpu (None: leave it free)."""
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def proc_cpu_seconds(pid):
    """User + system CPU time of another process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3): utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- the load ---------------------------------------------------------------

class LoadError(RuntimeError):
    """The load generator saw the server misbehave."""


def run_loadgen(port, *, mode="echo", size=1024, conns=CONNS, warmup=0.5,
                seconds=2.0, cpu=None, on_start=None, on_end=None, client="loadgen",
                requests=None):
    """Load 127.0.0.1:port with bench/loadgen (or another client tool with
    the same command line and output: tls_loadgen); returns its JSON result.

    on_start/on_end are called (from this thread) when the measured window
    begins and ends, to read the server's CPU time. With `requests`, the
    window ends after that many requests (or after `seconds`, if sooner)."""
    cmd = [tool(client), "--port", str(port), "--mode", mode,
           "--conns", str(conns), "--size", str(size),
           "--warmup", str(warmup), "--duration", str(seconds)]
    if requests is not None:
        cmd += ["--requests", str(requests)]
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    result = None
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        for line in proc.stdout:
            line = line.strip()
            if line == "START" and on_start:
                on_start()
            elif line == "END" and on_end:
                on_end()
            elif line.startswith("{"):
                result = json.loads(line)
        err = proc.stderr.read()
    if result is None:
        raise LoadError(f"loadgen exited with {proc.returncode}: {err.strip()}")
    if "error" in result:
        raise LoadError(f"loadgen: {result['error']}")
    return result


def _latency(result):
    return {k: result["latency_us"][k] for k in ("p50", "p99")}


class _CpuWindow:
    """CPU seconds a server spends between START and END of the load."""

    def __init__(self, read):
        self.read = read
        self.start = self.end = None

    def on_start(self):
        self.start = self.read()

    def on_end(self):
        self.end = self.read()

    @property
    def seconds(self):
        if self.start is None or self.end is None:
            return None
        return self.end - self.start


def load_phases(quick):
    """(warm-up, measured) seconds of one load run."""
    return duration(0.5 if quick else 1.0), duration(1.5 if quick else 4.0)


def _figures(result, cpu):
    figures = {"ops": result["requests"], "seconds": result["seconds"],
               "latency_us": _latency(result), "conns": result["conns"]}
    if cpu is not None:
        figures["cpu_seconds"] = cpu
    return figures


# ---- servers under test -----------------------------------------------------

def serve_protocol(protocol_factory, ssl=None):
    """A `serve` for measure_server: loop.create_server on 127.0.0.1
    (ssl: a function returning the server's SSLContext)."""

    async def serve(loop):
        server = await loop.create_server(protocol_factory, "127.0.0.1", 0,
                                          ssl=ssl() if ssl else None)
        port = server.sockets[0].getsockname()[1]

        async def close():
            server.close()
            await server.wait_closed()

        return port, close

    return serve


def measure_server(new_loop, serve, *, mode="echo", size=1024, quick=True,
                   conns=CONNS, client="loadgen"):
    """Serve on a fresh loop (or the C floor when new_loop is None) and load
    it from a pinned load generator (`client`, see run_loadgen); returns the
    workload's figures."""
    server_cpu, client_cpu = cpus()
    if new_loop is None:
        return _measure_c_floor(size, quick, conns, server_cpu, client_cpu)
    pin_self(server_cpu)
    warmup, seconds = load_phases(quick)
    loop = new_loop()
    try:
        port, close = loop.run_until_complete(serve(loop))
        done = loop.create_future()
        window = _CpuWindow(time.process_time)

        def load():
            try:
                outcome = (run_loadgen(port, mode=mode, size=size, conns=conns,
                                       warmup=warmup, seconds=seconds,
                                       cpu=client_cpu, on_start=window.on_start,
                                       on_end=window.on_end, client=client), None)
            except BaseException as exc:
                outcome = (None, exc)
            loop.call_soon_threadsafe(_settle, done, outcome)

        thread = threading.Thread(target=load, name="loadgen")
        thread.start()
        try:
            result = loop.run_until_complete(done)
        finally:
            thread.join()
            loop.run_until_complete(close())
        return _figures(result, window.seconds)
    finally:
        loop.close()


def _settle(fut, outcome):
    result, exc = outcome
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


def _measure_c_floor(size, quick, conns, server_cpu, client_cpu):
    warmup, seconds = load_phases(quick)
    cmd = [tool("echo_server")]
    if server_cpu is not None:
        cmd += ["--cpu", str(server_cpu)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as server:
        try:
            line = server.stdout.readline().split()
            if len(line) != 2 or line[0] != "PORT":
                raise RuntimeError("the C echo server did not start")
            window = _CpuWindow(lambda: proc_cpu_seconds(server.pid))
            result = run_loadgen(int(line[1]), mode="echo", size=size, conns=conns,
                                 warmup=warmup, seconds=seconds, cpu=client_cpu,
                                 on_start=window.on_start, on_end=window.on_end)
        finally:
            server.terminate()
            server.wait()
    return _figures(result, window.seconds)


# ---- TLS ----------------------------------------------------------------------

def tls_certificate():
    """A self-signed EC certificate + key for the TLS servers (one PEM file
    in bench/bin/, made with the openssl command once)."""
    pem = os.path.join(BIN, "tls_cert.pem")
    if os.path.exists(pem):
        return pem
    if shutil.which("openssl") is None:
        raise Unavailable("no openssl command to make the TLS certificate")
    os.makedirs(BIN, exist_ok=True)
    with open(os.path.join(BIN, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(pem):
            tmp = f"{pem}.{os.getpid()}.tmp"
            key = tmp + ".key"
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                            "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key,
                            "-out", tmp, "-days", "3650", "-subj", "/CN=localhost"],
                           check=True, capture_output=True)
            with open(tmp, "a") as out, open(key) as k:
                out.write(k.read())
            os.unlink(key)
            os.replace(tmp, pem)
    return pem


def tls_server_context():
    """The benchmark servers' context: our certificate, no session tickets
    (every handshake of the handshake workload is a full one)."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tls_certificate())
    ctx.num_tickets = 0
    return ctx


# ---- HTTP through uvicorn ---------------------------------------------------

def loop_import_string(new_loop):
    """What `uvicorn --loop` takes for a loop factory."""
    import asyncio as _asyncio

    if new_loop is _asyncio.new_event_loop:
        return "asyncio"
    module = new_loop.__module__
    top = module.split(".")[0]
    if top == "uvloop":
        return "uvloop"
    if getattr(sys.modules.get(top), new_loop.__name__, None) is new_loop:
        module = top  # tonio_loop:new_event_loop, as users write it
    return f"{module}:{new_loop.__qualname__}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(proc, port, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _server_failure(proc, log, what):
    """Unavailable when the server died of a missing API, else an error."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    log.seek(0)
    err = log.read().decode(errors="replace")
    lines = [line for line in err.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else f"exit status {proc.returncode}"
    if "NotImplementedError" in err:
        # name the method that is missing: the innermost frame of the traceback
        frames = re.findall(r'^\s*File ".*", line \d+, in (\w+)', err, re.M)
        missing = f"{frames[-1]}() not implemented" if frames else last
        raise Unavailable(f"{what}: {missing}")
    raise RuntimeError(f"{what} did not start: {last}")


def _wrk_seconds(value):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if m is None:
        return None
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(2)]
    return float(m.group(1)) * scale


def run_wrk(port, *, seconds, conns=CONNS, cpu=None, path="/"):
    """Load with wrk (one thread, keep-alive); returns loadgen-like figures."""
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--latency",
           f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                         preexec_fn=_pinner(cpu)).stdout
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if m is None:
        raise LoadError(f"unexpected wrk output:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", out)
    if errors:
        raise LoadError(f"wrk: {errors.group(0)}")
    latency = {}
    for pct, key in (("50", "p50"), ("99", "p99")):
        lm = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        if lm and _wrk_seconds(lm.group(1)) is not None:
            latency[key] = round(_wrk_seconds(lm.group(1)) * 1e6)
    return {"requests": int(m.group(1)),
            "seconds": _wrk_seconds(m.group(2) + m.group(3)),
            "conns": conns, "latency_us": latency}


def measure_uvicorn(new_loop, *, app="bench.http_app:app", quick=True, conns=CONNS,
                    http="httptools"):
    """uvicorn (`--http` httptools or h11) with `--loop` set to the
    implementation, in its own process on the server CPU, loaded by wrk (or
    loadgen's HTTP mode)."""
    try:
        import uvicorn  # noqa: F401
        __import__(http)
    except ImportError as exc:
        raise Unavailable(f"{exc.name} is not installed (pip install -e '.[bench]')")
    server_cpu, client_cpu = cpus()
    warmup, seconds = load_phases(quick)
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1",
           "--port", str(port), "--loop", loop_import_string(new_loop),
           "--http", http, "--no-access-log", "--log-level", "warning",
           "--lifespan", "off"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (os.path.dirname(HERE), os.environ.get("PYTHONPATH")) if p))
    # stderr goes to a file: a server that logs an error per request must
    # not block on a full pipe
    with tempfile.TemporaryFile() as log, \
            subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log,
                             preexec_fn=_pinner(server_cpu), env=env) as proc:
        try:
            if not _wait_listening(proc, port):
                _server_failure(proc, log, "uvicorn")
            window = _CpuWindow(lambda: proc_cpu_seconds(proc.pid))
            use_wrk = shutil.which("wrk") is not None and seconds >= 1
            if use_wrk:
                run_wrk(port, seconds=warmup, conns=conns, cpu=client_cpu)
                window.on_start()
                result = run_wrk(port, seconds=seconds, conns=conns, cpu=client_cpu)
                window.on_end()
            else:
                result = run_loadgen(port, mode="http", conns=conns, warmup=warmup,
                                     seconds=seconds, cpu=client_cpu,
                                     on_start=window.on_start, on_end=window.on_end)
            if proc.poll() is not None:
                _server_failure(proc, log, "uvicorn")
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    figures = _figures(result, window.seconds)
    figures["client"] = "wrk" if use_wrk else "loadgen"
    return figures


# ---- uvicorn in-process, a fixed number of requests ------------------------
#
# The workloads above run uvicorn in a child process for a fixed time. These
# run uvicorn's Server on the loop under test inside the measuring process,
# for a fixed number of requests from bench/loadgen (a child process, which
# valgrind does not follow): `python -m bench --callgrind` can then count
# the server's instructions per request, free of the machine's noise.

def measure_uvicorn_requests(new_loop, app, *, quick=True, conns=CONNS):
    """uvicorn (httptools) serving bench.http_app's `app` on new_loop() in
    this process, pinned to the server CPU, for a warm-up of a tenth and then
    scale(20000) requests (60000 full) from loadgen on the client CPU."""
    try:
        import uvicorn
    except ImportError as exc:
        raise Unavailable(f"{exc.name} is not installed (pip install -e '.[bench]')")
    import asyncio

    from bench import http_app

    server_cpu, client_cpu = cpus()
    pin_self(server_cpu)
    n = scale(20000 if quick else 60000)
    warm = max(1, n // 10)
    port = free_port()
    config = uvicorn.Config(getattr(http_app, app), host="127.0.0.1", port=port,
                            http="httptools", loop="none", lifespan="off",
                            access_log=False, log_level="warning")
    server = uvicorn.Server(config)
    window = _CpuWindow(lambda: proc_cpu_seconds(os.getpid()))

    def load():
        run_loadgen(port, mode="http", conns=conns, warmup=0, seconds=600,
                    cpu=client_cpu, requests=warm)
        return run_loadgen(port, mode="http", conns=conns, warmup=0, seconds=600,
                           cpu=client_cpu, requests=n, on_start=window.on_start,
                           on_end=window.on_end)

    async def main():
        serving = asyncio.ensure_future(server.serve())
        while not server.started:
            if serving.done():
                return serving.result()
            await asyncio.sleep(0.01)
        try:
            # a thread waits for the load generator: the loop only serves
            return await asyncio.get_running_loop().run_in_executor(None, load)
        finally:
            server.should_exit = True
            await serving

    loop = new_loop()
    try:
        result = loop.run_until_complete(main())
    finally:
        loop.close()
    if result is None:
        raise RuntimeError("uvicorn did not start")
    figures = _figures(result, window.seconds)
    figures["total_ops"] = result["requests"] + warm
    return figures
