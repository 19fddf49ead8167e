"""The loop's low-level socket API (sock_recv, sock_sendall, ...), sendfile
and the resolver, on both loops."""

import asyncio
import concurrent.futures
import io
import os
import socket
import ssl
import tempfile

import pytest

from .netutil import Recorder, close_server, is_tonio, recording, tcp_server, wait_for


def nb_socket(family=socket.AF_INET, type=socket.SOCK_STREAM):
    s = socket.socket(family, type)
    s.setblocking(False)
    return s


async def connected_pair():
    """A non-blocking (client, server-side) pair made with the sock_* API."""
    loop = asyncio.get_running_loop()
    lsock = nb_socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(5)
    client = nb_socket()
    accept = asyncio.ensure_future(loop.sock_accept(lsock))
    await loop.sock_connect(client, lsock.getsockname())
    conn, addr = await wait_for(accept)
    assert addr == client.getsockname()
    assert conn.gettimeout() == 0
    lsock.close()
    return client, conn


async def test_roundtrip_recv_sendall_recv_into():
    loop = asyncio.get_running_loop()
    client, conn = await connected_pair()
    with client, conn:
        assert await loop.sock_sendall(client, b"hello") is None
        assert await loop.sock_recv(conn, 1024) == b"hello"
        buf = bytearray(10)
        await loop.sock_sendall(conn, memoryview(b"0123456789abc"))
        n = await loop.sock_recv_into(client, buf)
        assert buf[:n] == b"0123456789"[:n]
        rest = await loop.sock_recv(client, 100)
        assert bytes(buf[:n]) + rest == b"0123456789abc"[:n + len(rest)]
        await loop.sock_sendall(client, b"")
        client.shutdown(socket.SHUT_WR)
        assert await loop.sock_recv(conn, 10) == b""


async def test_ops_are_coroutines():
    loop = asyncio.get_running_loop()
    client, conn = await connected_pair()
    with client, conn:
        coro = loop.sock_recv(conn, 10)
        assert asyncio.iscoroutine(coro)
        task = asyncio.ensure_future(coro)
        await asyncio.sleep(0)
        assert not task.done()
        await loop.sock_sendall(client, b"abc")
        assert await wait_for(task) == b"abc"
        # keyword arguments as asyncio's signatures name them
        await loop.sock_sendall(sock=client, data=b"kw")
        assert await loop.sock_recv(sock=conn, n=2) == b"kw"


async def test_cancelled_recv_leaves_data_for_the_next():
    loop = asyncio.get_running_loop()
    client, conn = await connected_pair()
    with client, conn:
        task = asyncio.ensure_future(loop.sock_recv(conn, 100))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await loop.sock_sendall(client, b"kept")
        await asyncio.sleep(0.01)
        assert await loop.sock_recv(conn, 100) == b"kept"
        # wait_for timing out cancels the same way
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(loop.sock_recv(conn, 100), 0.01)
        await loop.sock_sendall(client, b"again")
        assert await wait_for(loop.sock_recv(conn, 100)) == b"again"


async def test_big_sendall_against_slow_reader():
    loop = asyncio.get_running_loop()
    client, conn = await connected_pair()
    with client, conn:
        payload = os.urandom(8 * 1024 * 1024)
        send = asyncio.ensure_future(loop.sock_sendall(client, payload))
        received = bytearray()
        while len(received) < len(payload):
            chunk = await wait_for(loop.sock_recv(conn, 65536))
            assert chunk
            received += chunk
            await asyncio.sleep(0)
        await wait_for(send)
        assert received == payload


async def test_cancelled_sendall_stops_sending():
    loop = asyncio.get_running_loop()
    client, conn = await connected_pair()
    with client, conn:
        send = asyncio.ensure_future(loop.sock_sendall(client, b"x" * 50_000_000))
        await asyncio.sleep(0.02)
        assert not send.done()
        send.cancel()
        with pytest.raises(asyncio.CancelledError):
            await send


async def test_recv_arguments():
    loop = asyncio.get_running_loop()
    client, conn = await connected_pair()
    with client, conn:
        with pytest.raises(ValueError, match="negative buffersize in recv"):
            await loop.sock_recv(conn, -1)
        with pytest.raises(TypeError):
            await loop.sock_recv(conn, "10")
        with pytest.raises(TypeError):
            await loop.sock_recv_into(conn, b"immutable")
        with pytest.raises(TypeError):
            loop.sock_recv(conn)
        await loop.sock_sendall(client, b"0123456789")
        await asyncio.sleep(0.01)
        assert await loop.sock_recv(conn, 3) == b"012"
        assert await loop.sock_recv(conn, 300_000) == b"3456789"


async def test_debug_mode_refuses_blocking_sockets():
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    try:
        with socket.socket() as s:
            for coro in (loop.sock_recv(s, 1), loop.sock_sendall(s, b"x"),
                         loop.sock_accept(s), loop.sock_connect(s, ("127.0.0.1", 1)),
                         loop.sock_recv_into(s, bytearray(1))):
                with pytest.raises(ValueError, match="the socket must be non-blocking"):
                    await coro
    finally:
        loop.set_debug(False)


async def test_ssl_socket_refused():
    loop = asyncio.get_running_loop()
    ctx = ssl.create_default_context()
    with ctx.wrap_socket(socket.socket(), server_hostname="x",
                         do_handshake_on_connect=False) as s:
        for coro in (loop.sock_recv(s, 1), loop.sock_sendall(s, b"x"),
                     loop.sock_accept(s), loop.sock_recv_into(s, bytearray(1))):
            with pytest.raises(TypeError, match="Socket cannot be of type SSLSocket"):
                await coro


async def test_sock_connect_refused():
    loop = asyncio.get_running_loop()
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    addr = probe.getsockname()
    probe.close()
    with nb_socket() as s:
        with pytest.raises(ConnectionRefusedError) as info:
            await loop.sock_connect(s, addr)
        assert info.value.errno == 111
    with nb_socket(socket.AF_UNIX) as s:
        with pytest.raises((FileNotFoundError, ConnectionRefusedError)):
            await loop.sock_connect(s, "/nonexistent/tonio.sock")


async def test_sock_connect_resolves_names():
    loop = asyncio.get_running_loop()
    server, addr = await tcp_server(Recorder)
    with nb_socket() as s:
        await loop.sock_connect(s, ("localhost", addr[1]))
        assert s.getpeername() == addr
    await close_server(server)


async def test_sock_op_on_transport_fd():
    loop = asyncio.get_running_loop()
    server, addr = await tcp_server(Recorder)
    tr, pr = await loop.create_connection(Recorder, *addr)
    sock = tr.get_extra_info("socket")
    raw = socket.socket(fileno=os.dup(sock.fileno()))
    try:
        fd = raw.fileno()
        # a duplicate fd is not the transport's: fine
        assert loop.remove_reader(fd) is False
    finally:
        raw.close()
    tr.close()
    await wait_for(pr.lost)
    await close_server(server)


async def test_accept_cancel_and_restart():
    loop = asyncio.get_running_loop()
    lsock = nb_socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(5)
    with lsock:
        task = asyncio.ensure_future(loop.sock_accept(lsock))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        client = nb_socket()
        with client:
            await loop.sock_connect(client, lsock.getsockname())
            conn, _ = await wait_for(loop.sock_accept(lsock))
            conn.close()


async def test_udp_recvfrom_sendto():
    loop = asyncio.get_running_loop()
    a = nb_socket(type=socket.SOCK_DGRAM)
    b = nb_socket(type=socket.SOCK_DGRAM)
    with a, b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        recv = asyncio.ensure_future(loop.sock_recvfrom(a, 100))
        await asyncio.sleep(0.01)
        assert await loop.sock_sendto(b, b"datagram", a.getsockname()) == 8
        data, addr = await wait_for(recv)
        assert data == b"datagram" and addr == b.getsockname()
        buf = bytearray(4)
        await loop.sock_sendto(b, b"xyz", a.getsockname())
        n, addr = await wait_for(loop.sock_recvfrom_into(a, buf))
        assert (n, bytes(buf[:n]), addr) == (3, b"xyz", b.getsockname())
        await loop.sock_sendto(b, b"12345678", a.getsockname())
        n, addr = await wait_for(loop.sock_recvfrom_into(a, buf, 2))
        assert (n, bytes(buf[:2])) == (2, b"12")


async def test_unix_sock_ops(tmp_path):
    loop = asyncio.get_running_loop()
    path = str(tmp_path / "s.sock")
    lsock = nb_socket(socket.AF_UNIX)
    lsock.bind(path)
    lsock.listen(1)
    client = nb_socket(socket.AF_UNIX)
    with lsock, client:
        accept = asyncio.ensure_future(loop.sock_accept(lsock))
        await loop.sock_connect(client, path)
        conn, addr = await wait_for(accept)
        with conn:
            assert addr == ""
            await loop.sock_sendall(client, b"unix")
            assert await loop.sock_recv(conn, 10) == b"unix"


# ---- sendfile ------------------------------------------------------------

@pytest.fixture
def datafile():
    data = os.urandom(3 * 1024 * 1024 + 123)
    f = tempfile.TemporaryFile()
    f.write(data)
    f.seek(0)
    yield f, data
    f.close()


async def read_all(loop, sock):
    got = bytearray()
    while True:
        chunk = await wait_for(loop.sock_recv(sock, 1 << 20))
        if not chunk:
            return bytes(got)
        got += chunk


async def test_sock_sendfile(datafile):
    loop = asyncio.get_running_loop()
    f, data = datafile
    client, conn = await connected_pair()
    with client, conn:
        reader = asyncio.ensure_future(read_all(loop, conn))
        sent = await wait_for(loop.sock_sendfile(client, f, 100, 1_000_000), 20)
        assert sent == 1_000_000
        assert f.tell() == 1_000_100
        sent = await wait_for(loop.sock_sendfile(client, f, 1_000_100), 20)   # to the end
        assert sent == len(data) - 1_000_100
        assert f.tell() == len(data)
        client.shutdown(socket.SHUT_WR)
        got = await wait_for(reader, 20)
        assert got == data[100:1_000_100] + data[1_000_100:]


async def test_sock_sendfile_arguments(datafile):
    loop = asyncio.get_running_loop()
    f, data = datafile
    client, conn = await connected_pair()
    with client, conn:
        with pytest.raises(ValueError, match="count must be a positive integer"):
            await loop.sock_sendfile(client, f, 0, 0)
        with pytest.raises(ValueError, match="offset must be a non-negative integer"):
            await loop.sock_sendfile(client, f, -1)
        with pytest.raises(TypeError, match="offset must be a non-negative integer"):
            await loop.sock_sendfile(client, f, "0")
        with open(__file__, "r") as text:
            with pytest.raises(ValueError, match="file should be opened in binary mode"):
                await loop.sock_sendfile(client, text)
        with nb_socket(type=socket.SOCK_DGRAM) as udp:
            with pytest.raises(ValueError, match="only SOCK_STREAM type sockets are supported"):
                await loop.sock_sendfile(udp, f)
        # not a regular file: falls back to read + send, or refuses
        with pytest.raises(asyncio.SendfileNotAvailableError):
            await loop.sock_sendfile(client, io.BytesIO(b"abc"), fallback=False)
        reader = asyncio.ensure_future(read_all(loop, conn))
        assert await loop.sock_sendfile(client, io.BytesIO(b"abc")) == 3
        client.shutdown(socket.SHUT_WR)
        assert await wait_for(reader) == b"abc"


async def test_loop_sendfile_over_transport(datafile):
    loop = asyncio.get_running_loop()
    f, data = datafile
    factory, accepted = recording()
    server, addr = await tcp_server(factory)
    tr, pr = await loop.create_connection(Recorder, *addr)
    tr.write(b"header:")
    sent = await wait_for(loop.sendfile(tr, f, 0, None), 20)
    assert sent == len(data)
    tr.write(b":trailer")
    while not accepted:
        await asyncio.sleep(0)
    sp = accepted[0]
    await sp.wait_for_data(len(data) + 15, timeout=20)
    assert sp.data == b"header:" + data + b":trailer"
    assert tr.is_reading()
    # the transport still owns its fd afterwards
    with pytest.raises(RuntimeError, match="is used by transport"):
        loop.add_reader(tr.get_extra_info("socket").fileno(), lambda: None)
    tr.close()
    await wait_for(sp.lost)
    with pytest.raises(RuntimeError, match="Transport is closing"):
        await loop.sendfile(tr, f)
    await close_server(server)


# ---- the resolver -----------------------------------------------------------

async def test_getaddrinfo_numeric_needs_no_thread():
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)
    assert infos == socket.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)
    infos = await loop.getaddrinfo("::1", "443", family=socket.AF_INET6,
                                   proto=socket.IPPROTO_TCP)
    assert infos[0][4][:2] == ("::1", 443)
    assert await loop.getaddrinfo(None, 0, flags=socket.AI_PASSIVE,
                                  type=socket.SOCK_STREAM) == \
        socket.getaddrinfo(None, 0, flags=socket.AI_PASSIVE, type=socket.SOCK_STREAM)
    assert await loop.getnameinfo(("127.0.0.1", 80),
                                  socket.NI_NUMERICHOST | socket.NI_NUMERICSERV) == \
        ("127.0.0.1", "80")
    if is_tonio():
        assert loop._default_executor is None


async def test_getaddrinfo_names_and_errors():
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo("localhost", 80, family=socket.AF_INET,
                                   type=socket.SOCK_STREAM)
    assert infos[0][4] == ("127.0.0.1", 80)
    assert isinstance(infos[0][0], socket.AddressFamily)
    with pytest.raises(socket.gaierror):
        await loop.getaddrinfo("no-such-host.invalid", 80)
    with pytest.raises(socket.gaierror):
        await loop.getaddrinfo("127.0.0.1", "no-such-service")
    with pytest.raises(socket.gaierror):
        await loop.getaddrinfo("127.0.0.1", 80, family=socket.AF_INET6)
    with pytest.raises(TypeError):
        await loop.getaddrinfo(1234, 80)
    host, port = await loop.getnameinfo(("127.0.0.1", 80))
    assert port == "http"


async def test_getaddrinfo_cancel_leaves_no_thread_behind(monkeypatch):
    import threading
    import time
    loop = asyncio.get_running_loop()
    calls = []
    real = socket.getaddrinfo

    def slow_getaddrinfo(*args, **kwargs):
        calls.append(args[0])
        time.sleep(0.2)
        return real("127.0.0.1", 80)

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    loop.set_default_executor(executor)
    try:
        tasks = [asyncio.ensure_future(loop.getaddrinfo(f"h{i}.example", 80))
                 for i in range(20)]
        await asyncio.sleep(0.05)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert all(t.cancelled() for t in tasks)
    finally:
        t0 = time.monotonic()
        executor.shutdown(wait=True)
    # the queued lookups were dropped: only the one already running finished
    assert time.monotonic() - t0 < 1
    assert len(calls) <= 2
    assert not any(t.name.startswith("ThreadPoolExecutor") and t.is_alive()
                   for t in threading.enumerate() if t in executor._threads)


def test_pending_operation_when_the_loop_closes(loop):
    a, b = socket.socketpair()
    a.setblocking(False)
    with a, b:
        task = loop.create_task(loop.sock_recv(a, 10))
        loop.run_until_complete(asyncio.sleep(0.01))
        assert not task.done()
        task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        pending = loop.create_task(loop.sock_recv(a, 10))
        loop.run_until_complete(asyncio.sleep(0.01))
        loop.close()
        # the operation let go of the loop; the socket is still usable
        b.send(b"after")
        assert a.recv(10) == b"after"
        del pending
