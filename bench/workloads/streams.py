"""Echo servers in the other styles asyncio offers, connection set-up, and
what an idle connection costs.

The echo workloads serve with a BufferedProtocol, with asyncio streams
(start_server) and with the low-level socket API (sock_accept, sock_recv,
sock_sendall), loaded like echo_protocol_* (bench/workloads/echo.py) by
bench/loadgen.c with 10 connections, the server pinned to its own CPU; the
server's CPU time per request is reported next to requests/s.
"""

import asyncio
import os
import resource
import socket
import struct
import time

from bench import net
from bench.registry import duration, scale, workload

SIZES = {"1k": 1024, "10k": 10 * 1024, "100k": 100 * 1024}


class EchoBufferedProtocol(asyncio.BufferedProtocol):
    """Reads into its own buffer and writes the slice back."""

    def connection_made(self, transport):
        self.transport = transport
        self.view = memoryview(bytearray(256 * 1024))

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
        pass        # the load generator hangs up mid-message at the end
    writer.close()


async def serve_streams(loop):
    server = await asyncio.start_server(echo_streams, "127.0.0.1", 0)

    async def close():
        server.close()
        await server.wait_closed()

    return server.sockets[0].getsockname()[1], close


async def serve_sock(loop):
    """sock_accept in a task, one task per connection doing
    sock_recv/sock_sendall."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(128)
    lsock.setblocking(False)
    tasks = set()

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
            task = loop.create_task(serve(conn))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    acceptor = loop.create_task(accept())

    async def close():
        acceptor.cancel()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(acceptor, *tasks, return_exceptions=True)
        lsock.close()

    return lsock.getsockname()[1], close


SERVERS = {
    "buffered": ("BufferedProtocol echo server", net.serve_protocol(EchoBufferedProtocol)),
    "streams": ("asyncio streams echo server (start_server)", serve_streams),
    "sock": ("sock_recv/sock_sendall echo server, a task per connection", serve_sock),
}


def _register(mode, size_name):
    what, serve = SERVERS[mode]
    size = SIZES[size_name]

    def run(new_loop, quick):
        return net.measure_server(new_loop, serve, mode="echo", size=size, quick=quick)

    run.__doc__ = f"{what}, {size_name[:-1]} KiB messages, 10 connections"
    run.__name__ = f"echo_{mode}_{size_name}"
    return workload(run.__name__, group="echo", unit="requests/s",
                    quick=size_name == "1k")(run)


for _mode in SERVERS:
    for _size in SIZES:
        globals()[f"echo_{_mode}_{_size}"] = _register(_mode, _size)


# ---- connection set-up ---------------------------------------------------------

class _Accepted(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport


class _Client(asyncio.Protocol):
    def __init__(self):
        self.closed = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc):
        self.closed.set_result(None)


@workload("tcp_connect_close", group="echo", unit="connections/s", quick=True)
def tcp_connect_close(new_loop, quick):
    """create_connection + accept + close on 127.0.0.1, client and server on one loop"""
    n = scale(1000 if quick else 5000)

    async def run():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Accepted, "127.0.0.1", 0, backlog=1024)
        addr = server.sockets[0].getsockname()

        async def one():
            tr, pr = await loop.create_connection(_Client, *addr)
            tr.close()
            await pr.closed

        for _ in range(scale(100)):
            await one()
        cpu0, t0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            await one()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        server.close()
        await server.wait_closed()
        return {"ops": n, "seconds": elapsed, "cpu_seconds": cpu}

    loop = new_loop()
    try:
        return loop.run_until_complete(run())
    finally:
        loop.close()


# ---- idle connections' memory -------------------------------------------------

def _rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _idle_server(new_loop, ctl, nofile):
    """Child: an echo server answering b'm' on ctl with its RSS."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    loop = new_loop()

    def on_ctl():
        if ctl.recv(1) == b"m":
            ctl.sendall(struct.pack("d", float(_rss_bytes())))
        else:
            loop.stop()

    from bench.workloads.echo import EchoProtocol
    server = loop.run_until_complete(loop.create_server(EchoProtocol, "127.0.0.1", 0,
                                                        backlog=4096))
    loop.add_reader(ctl.fileno(), on_ctl)
    ctl.sendall(struct.pack("H", server.sockets[0].getsockname()[1]))
    loop.run_forever()


@workload("idle_connection_memory", group="echo", unit="connections/s")
def idle_connection_memory(new_loop, quick):
    """Server memory per idle connection (bytes_per_connection), 9000 connections"""
    n = scale(2000 if quick else 9000)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < n + 200:
        n = max(hard - 200, 1)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ctl, child_ctl = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        ctl.close()
        try:
            _idle_server(new_loop, child_ctl, min(hard, n + 200))
        finally:
            os._exit(0)
    child_ctl.close()

    def ask():
        ctl.sendall(b"m")
        return struct.unpack("d", ctl.recv(8))[0]

    socks = []
    try:
        port = struct.unpack("H", ctl.recv(2))[0]
        rss0 = ask()
        t0 = time.perf_counter()
        for _ in range(n):
            socks.append(socket.create_connection(("127.0.0.1", port)))
        for s in socks:     # every one is served, then left idle
            s.sendall(b"x")
        for s in socks:
            s.recv(1)
        elapsed = time.perf_counter() - t0
        time.sleep(duration(0.2))
        rss1 = ask()
    finally:
        for s in socks:
            s.close()
        ctl.sendall(b"q")
        ctl.close()
        os.waitpid(pid, 0)
    return {"ops": n, "seconds": elapsed, "bytes_per_connection": (rss1 - rss0) / n}
