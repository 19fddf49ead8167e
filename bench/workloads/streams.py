"""Echo servers over TCP in four styles, and idle connections' memory.

Each echo workload forks a server running on the loop under test, pinned to
one CPU, and drives it from this process (pinned to another CPU) with 10
connections that each send a message and wait for all of it to come back.
The figure that ranks loops is the server's CPU time per request, measured
with getrusage() inside the server over the measured window: it holds even
when the client, not the server, is the bottleneck.

Modes: "protocol" (asyncio.Protocol), "buffered" (asyncio.BufferedProtocol),
"streams" (asyncio.start_server) and "sock" (loop.sock_recv/sock_sendall).
Self-contained on purpose: no other part of bench/ is needed to run these.
"""

import asyncio
import os
import resource
import selectors
import socket
import struct
import sys
import time

from bench.registry import workload

CONNECTIONS = 10
SIZES = {"1k": 1024, "10k": 10 * 1024, "100k": 100 * 1024}
SERVER_CPU = 0
CLIENT_CPU = 1


# ---- the servers (run in the forked child) ---------------------------------

class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class EchoBufferedProtocol(asyncio.BufferedProtocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = bytearray(256 * 1024)
        self.view = memoryview(self.buffer)

    def get_buffer(self, sizehint):
        return self.view

    def buffer_updated(self, nbytes):
        self.transport.write(self.view[:nbytes])


async def echo_streams(reader, writer):
    try:
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass        # the client hangs up mid-message when the run ends
    writer.close()


async def start_server(loop, mode):
    if mode == "protocol":
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0)
    elif mode == "buffered":
        server = await loop.create_server(EchoBufferedProtocol, "127.0.0.1", 0)
    elif mode == "streams":
        server = await asyncio.start_server(echo_streams, "127.0.0.1", 0)
    else:
        return await start_sock_server(loop)
    return server.sockets[0].getsockname()


async def start_sock_server(loop):
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(128)
    lsock.setblocking(False)

    async def serve(conn):
        with conn:
            try:
                while data := await loop.sock_recv(conn, 256 * 1024):
                    await loop.sock_sendall(conn, data)
            except ConnectionError:
                pass

    async def accept():
        while True:
            conn, _ = await loop.sock_accept(lsock)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            loop.create_task(serve(conn))

    loop.create_task(accept())
    return lsock.getsockname()


def cpu_seconds():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def serve_child(new_loop, mode, ctl, nofile=None):
    """The server process: answer control bytes on `ctl` with measurements."""
    if nofile:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    try:
        os.sched_setaffinity(0, {SERVER_CPU})
    except (AttributeError, OSError):
        pass
    loop = new_loop()
    asyncio.set_event_loop(loop)

    def on_ctl():
        cmd = ctl.recv(1)
        if not cmd or cmd == b"q":
            loop.stop()
            return
        value = cpu_seconds() if cmd == b"c" else float(rss_bytes())
        ctl.sendall(struct.pack("d", value))

    addr = loop.run_until_complete(start_server(loop, mode))
    loop.add_reader(ctl.fileno(), on_ctl)
    ctl.sendall(struct.pack("H", addr[1]))
    loop.run_forever()
    os._exit(0)


class Server:
    """A forked echo server and its control socket."""

    def __init__(self, new_loop, mode, nofile=None):
        self.ctl, child_ctl = socket.socketpair()
        self.pid = os.fork()
        if self.pid == 0:
            self.ctl.close()
            try:
                serve_child(new_loop, mode, child_ctl, nofile)
            finally:
                os._exit(1)
        child_ctl.close()
        self.port = struct.unpack("H", self._recv(2))[0]

    def _recv(self, n):
        data = b""
        while len(data) < n:
            chunk = self.ctl.recv(n - len(data))
            if not chunk:
                raise RuntimeError("the benchmark server died")
            data += chunk
        return data

    def ask(self, cmd):
        self.ctl.sendall(cmd)
        return struct.unpack("d", self._recv(8))[0]

    def close(self):
        try:
            self.ctl.sendall(b"q")
        except OSError:
            pass
        self.ctl.close()
        os.waitpid(self.pid, 0)


# ---- the client (this process) ------------------------------------------------

def drive(port, size, seconds):
    """10 connections, each sending `size` bytes and reading them back, for
    `seconds`; returns the number of completed round trips."""
    message = os.urandom(size)
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(CONNECTIONS):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        socks.append(s)
    state = {}
    for s in socks:
        s.sendall(message) if size <= 65536 else None
        state[s] = [0, 0 if size <= 65536 else size]   # bytes received, bytes left to send
        sel.register(s, selectors.EVENT_READ | (selectors.EVENT_WRITE if size > 65536 else 0))
    done = 0
    deadline = time.perf_counter() + seconds
    view = memoryview(message)
    while time.perf_counter() < deadline:
        for key, events in sel.select(0.5):
            s = key.fileobj
            st = state[s]
            if events & selectors.EVENT_WRITE and st[1]:
                try:
                    st[1] -= s.send(view[size - st[1]:])
                except BlockingIOError:
                    pass
                if not st[1]:
                    sel.modify(s, selectors.EVENT_READ)
            if events & selectors.EVENT_READ:
                try:
                    data = s.recv(262144)
                except BlockingIOError:
                    continue
                st[0] += len(data)
                if st[0] >= size:
                    st[0] -= size
                    done += 1
                    try:
                        n = s.send(message)
                    except BlockingIOError:
                        n = 0
                    if n < size:
                        st[1] = size - n
                        sel.modify(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
    sel.close()
    for s in socks:
        s.close()
    return done


def echo_benchmark(new_loop, mode, size, quick, seconds=None):
    if seconds is None:
        seconds = 0.8 if quick else 5.0
    try:
        os.sched_setaffinity(0, {CLIENT_CPU})
    except (AttributeError, OSError):
        pass
    server = Server(new_loop, mode)
    try:
        drive(server.port, size, 0.2)              # warm up
        cpu0 = server.ask(b"c")
        t0 = time.perf_counter()
        done = drive(server.port, size, seconds)
        elapsed = time.perf_counter() - t0
        cpu = server.ask(b"c") - cpu0
    finally:
        server.close()
    return {"ops": done, "seconds": elapsed, "cpu_seconds": cpu,
            "cpu_us_per_request": cpu / max(done, 1) * 1e6}


def _register(mode, size_name):
    size = SIZES[size_name]
    quick = size_name == "1k"

    @workload(f"echo_{mode}_{size_name}", group="streams", unit="requests/s", quick=quick,
              mode=mode, size=size)
    def run(new_loop, quick):
        return echo_benchmark(new_loop, mode, size, quick)

    run.__name__ = f"echo_{mode}_{size_name}"
    return run


for _mode in ("protocol", "buffered", "streams", "sock"):
    for _size in SIZES:
        globals()[f"echo_{_mode}_{_size}"] = _register(_mode, _size)


@workload("idle_connection_memory", group="streams", unit="connections/s", quick=False)
def idle_connection_memory(new_loop, quick):
    """Server RSS per idle connection (reported as bytes_per_connection)."""
    n = 2000 if quick else 9000
    server = Server(new_loop, "protocol", nofile=n + 100)
    socks = []
    try:
        rss0 = server.ask(b"m")
        t0 = time.perf_counter()
        for _ in range(n):
            socks.append(socket.create_connection(("127.0.0.1", server.port)))
        for s in socks:
            s.send(b"x")
        for s in socks:
            s.recv(1)
        elapsed = time.perf_counter() - t0
        rss1 = server.ask(b"m")
    finally:
        for s in socks:
            s.close()
        server.close()
    return {"ops": n, "seconds": elapsed, "bytes_per_connection": (rss1 - rss0) / n}


class _Accepted(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport


class _Client(asyncio.Protocol):
    def __init__(self):
        self.closed = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc):
        self.closed.set_result(None)


@workload("tcp_connect_close", group="streams", unit="connections/s", quick=True)
def tcp_connect_close(new_loop, quick):
    """create_connection + accept + close, client and server on one loop;
    cpu_seconds is the process's CPU time for all of it."""
    n = 1000 if quick else 5000

    async def run():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Accepted, "127.0.0.1", 0, backlog=1024)
        addr = server.sockets[0].getsockname()

        async def one():
            tr, pr = await loop.create_connection(_Client, *addr)
            tr.close()
            await pr.closed

        for _ in range(100):
            await one()
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        for _ in range(n):
            await one()
        elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
        server.close()
        await server.wait_closed()
        return {"ops": n, "seconds": elapsed, "cpu_seconds": cpu}

    loop = new_loop()
    try:
        return loop.run_until_complete(run())
    finally:
        loop.close()


if __name__ == "__main__":
    # python -m bench.workloads.streams [mode] [size] [seconds]: a quick look
    import uvloop
    import tonio_loop
    mode = sys.argv[1] if len(sys.argv) > 1 else "protocol"
    size = SIZES[sys.argv[2] if len(sys.argv) > 2 else "1k"]
    for name, factory in (("asyncio", asyncio.new_event_loop),
                          ("uvloop", uvloop.new_event_loop),
                          ("tonio", tonio_loop.new_event_loop)):
        r = echo_benchmark(factory, mode, size, quick=len(sys.argv) <= 3)
        print(f"{name:8s} {mode:9s} {size:7d}B  {r['ops'] / r['seconds']:9.0f} req/s  "
              f"server {r['cpu_us_per_request']:6.2f} us/req", flush=True)
