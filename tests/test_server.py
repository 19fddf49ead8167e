"""asyncio.Server on both loops: every method, hosts, options, and accept()
running out of file descriptors."""

import ast
import asyncio
import socket
import subprocess
import sys
import textwrap

import pytest

from .netutil import Recorder, close_server, recording, tcp_server, wait_for


async def test_server_api():
    loop = asyncio.get_running_loop()
    server, addr = await tcp_server(Recorder)
    assert server.get_loop() is loop
    assert server.is_serving()
    socks = server.sockets
    assert len(socks) == 1 and socks[0].getsockname() == addr
    assert socks[0].family == socket.AF_INET
    assert repr(server).startswith("<Server sockets=")
    server.close()
    assert not server.is_serving()
    assert server.sockets == ()
    await wait_for(server.wait_closed())
    server.close()      # twice is fine
    with pytest.raises(ConnectionRefusedError):
        await loop.create_connection(Recorder, *addr)


async def test_start_serving_false_then_start_serving():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Recorder, "127.0.0.1", 0, start_serving=False)
    assert not server.is_serving()
    addr = server.sockets[0].getsockname()
    await server.start_serving()
    assert server.is_serving()
    await server.start_serving()   # idempotent
    tr, pr = await loop.create_connection(Recorder, *addr)
    await wait_for(pr.made)
    tr.close()
    await wait_for(pr.lost)
    await close_server(server)


async def test_serve_forever_and_cancel():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Recorder, "127.0.0.1", 0, start_serving=False)
    task = asyncio.create_task(server.serve_forever())
    await asyncio.sleep(0.01)
    assert server.is_serving()
    with pytest.raises(RuntimeError, match="is already being awaited on serve_forever"):
        await server.serve_forever()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not server.is_serving()
    with pytest.raises(RuntimeError, match="is closed"):
        await server.serve_forever()


async def test_async_with_closes():
    loop = asyncio.get_running_loop()
    async with await loop.create_server(Recorder, "127.0.0.1", 0) as server:
        assert server.is_serving()
    assert not server.is_serving()
    await wait_for(server.wait_closed())


async def test_wait_closed_waits_for_connections():
    loop = asyncio.get_running_loop()
    factory, accepted = recording()
    server, addr = await tcp_server(factory)
    tr, pr = await loop.create_connection(Recorder, *addr)
    await wait_for(pr.made)
    await asyncio.sleep(0.01)
    server.close()
    waiter = asyncio.ensure_future(server.wait_closed())
    await asyncio.sleep(0.05)
    if sys.version_info >= (3, 12):
        # 3.12.1+ waits for the connections as well
        assert not waiter.done()
    tr.close()
    await wait_for(accepted[0].lost)
    await wait_for(waiter)
    await wait_for(pr.lost)


async def test_close_clients_and_abort_clients():
    loop = asyncio.get_running_loop()
    server, addr = await tcp_server(Recorder)
    if not hasattr(server, "close_clients"):
        await close_server(server)
        pytest.skip("close_clients/abort_clients are new in 3.13")
    clients = []
    for _ in range(3):
        clients.append(await loop.create_connection(Recorder, *addr))
    await asyncio.sleep(0.05)
    server.close()
    server.close_clients()
    for tr, pr in clients[:3]:
        await wait_for(pr.lost)
    await wait_for(server.wait_closed())
    server, addr = await tcp_server(Recorder)
    tr, pr = await loop.create_connection(Recorder, *addr)
    await asyncio.sleep(0.05)
    server.close()
    server.abort_clients()
    await wait_for(pr.lost)
    await wait_for(server.wait_closed())


async def test_host_list_and_all_interfaces():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Recorder, ["127.0.0.1", "127.0.0.1"], 0)
    # the same address appears once
    assert len(server.sockets) == 1
    await close_server(server)
    server = await loop.create_server(Recorder, "", 0, family=socket.AF_INET)
    assert server.sockets[0].getsockname()[0] == "0.0.0.0"
    await close_server(server)
    server = await loop.create_server(Recorder, None, 0, family=socket.AF_INET)
    assert server.sockets[0].getsockname()[0] == "0.0.0.0"
    await close_server(server)


async def test_reuse_port_and_keep_alive():
    loop = asyncio.get_running_loop()
    kwargs = {"reuse_port": True}
    if sys.version_info >= (3, 13):
        kwargs["keep_alive"] = True
    server = await loop.create_server(Recorder, "127.0.0.1", 0, **kwargs)
    sock = server.sockets[0]
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
    if "keep_alive" in kwargs:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0
    addr = sock.getsockname()
    second = await loop.create_server(Recorder, *addr, reuse_port=True)
    await close_server(second)
    await close_server(server)


async def test_server_from_sock_and_backlog():
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = await loop.create_server(Recorder, sock=sock, backlog=5)
    addr = sock.getsockname()
    conns = [await loop.create_connection(Recorder, *addr) for _ in range(8)]
    for tr, pr in conns:
        await wait_for(pr.made)
        tr.close()
        await wait_for(pr.lost)
    await close_server(server)
    assert sock.fileno() == -1     # the server closed it


async def test_protocol_factory_failure_drops_connection():
    loop = asyncio.get_running_loop()
    calls = []

    def factory():
        calls.append(1)
        if len(calls) == 1:
            raise ZeroDivisionError("no protocol")
        return Recorder()

    server, addr = await tcp_server(factory)
    tr, pr = await loop.create_connection(Recorder, *addr)
    assert await wait_for(pr.lost) is None     # the server closed it
    tr2, pr2 = await loop.create_connection(Recorder, *addr)
    tr2.write(b"still serving")
    await asyncio.sleep(0.02)
    assert not tr2.is_closing()
    tr2.close()
    await wait_for(pr2.lost)
    await close_server(server)


async def test_many_connections_in_one_accept_burst():
    loop = asyncio.get_running_loop()
    factory, accepted = recording(lambda: Recorder(echo=True))
    server, addr = await tcp_server(factory, backlog=200)
    conns = await asyncio.gather(*[loop.create_connection(Recorder, *addr)
                                   for _ in range(150)])
    for i, (tr, pr) in enumerate(conns):
        tr.write(b"%d;" % i)
    for i, (tr, pr) in enumerate(conns):
        await pr.wait_for_data(len(b"%d;" % i))
        assert bytes(pr.data) == b"%d;" % i
        tr.close()
    for tr, pr in conns:
        await wait_for(pr.lost)
    assert len(accepted) == 150
    await close_server(server)


EMFILE_CHILD = textwrap.dedent("""
    import asyncio, os, resource, socket, sys
    import tonio_loop

    def main(factory):
        async def run():
            loop = asyncio.get_running_loop()
            reports = []
            loop.set_exception_handler(lambda l, ctx: reports.append(ctx))

            class Echo(asyncio.Protocol):
                def connection_made(self, t):
                    self.t = t
                def data_received(self, d):
                    self.t.write(d)

            server = await loop.create_server(Echo, "127.0.0.1", 0)
            addr = server.sockets[0].getsockname()
            # use up the process's fds, keeping a couple for the clients
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            hog = []
            try:
                while True:
                    hog.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                pass
            for fd in hog[-2:]:
                os.close(fd)
            hog = hog[:-2]
            # the client connects (the kernel completes the handshake), the
            # server cannot accept it
            client = socket.socket()
            client.setblocking(False)
            try:
                client.connect(addr)
            except BlockingIOError:
                pass
            await asyncio.sleep(0.3)
            starved = len(reports)
            for fd in hog:
                os.close(fd)
            # ACCEPT_RETRY_DELAY is one second: served again after that
            r, w = await asyncio.wait_for(asyncio.open_connection(*addr), 5)
            w.write(b"ping")
            got = await asyncio.wait_for(r.readexactly(4), 5)
            w.close()
            await w.wait_closed()
            await asyncio.sleep(1.2)
            client.close()
            server.close()
            msgs = {ctx["message"] for ctx in reports}
            errnos = {getattr(ctx.get("exception"), "errno", None) for ctx in reports}
            print(repr((starved, len(reports), sorted(msgs),
                        sorted(e for e in errnos if e), got)))

        asyncio.run(run(), loop_factory=factory) if sys.version_info >= (3, 12) else \\
            asyncio.Runner(loop_factory=factory).run(run())

    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    main(tonio_loop.new_event_loop if sys.argv[1] == "tonio" else asyncio.new_event_loop)
""")


def test_accept_out_of_fds_keeps_serving(loop_name):
    out = subprocess.run([sys.executable, "-c", EMFILE_CHILD, loop_name],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    starved, total, msgs, errnos, got = ast.literal_eval(out.stdout.strip())
    assert got == b"ping"
    assert msgs == ["socket.accept() out of system resource"]
    assert errnos == [24]       # EMFILE
    assert starved >= 1
    if loop_name == "tonio":
        # said once per outage, not once per retry and pending connection
        assert total == 1
