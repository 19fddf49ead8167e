"""TCP transports: create_connection/create_server and every transport method,
on asyncio's loop and tonio_loop's, over real sockets on 127.0.0.1."""

import asyncio
import contextvars
import gc
import logging
import socket
import sys

import pytest

from .netutil import (BufferedRecorder, Recorder, close_server, is_tonio, recording,
                      tcp_server, wait_for)

cvar = contextvars.ContextVar("cvar", default="unset")


async def connect_pair(server_factory=None, client_factory=None, **server_kwargs):
    """(server, client transport, client protocol, server protocol)"""
    loop = asyncio.get_running_loop()
    make_server_proto, accepted = recording(server_factory)
    server, addr = await tcp_server(make_server_proto, **server_kwargs)
    tr, pr = await loop.create_connection(client_factory or Recorder, *addr)
    await wait_for(pr.made)
    while not accepted:
        await asyncio.sleep(0)
    await wait_for(accepted[0].made)
    return server, tr, pr, accepted[0]


async def test_echo_roundtrip_and_callback_order():
    server, tr, pr, sp = await connect_pair(lambda: Recorder(echo=True))
    tr.write(b"hello ")
    tr.write(bytearray(b"world"))
    tr.write(memoryview(b"!!"))
    assert await pr.wait_for_data(13) == b"hello world!!"
    tr.close()
    assert await wait_for(pr.lost) is None
    assert await wait_for(sp.lost) is None
    assert pr.events[0] == "made" and pr.events[-1] == "lost"
    assert sp.events[0] == "made" and sp.events[-2:] == ["eof", "lost"]
    await close_server(server)


async def test_create_connection_returns_transport_and_protocol():
    loop = asyncio.get_running_loop()
    server, addr = await tcp_server(Recorder)
    tr, pr = await loop.create_connection(Recorder, *addr)
    assert isinstance(tr, asyncio.Transport)
    assert isinstance(tr, asyncio.WriteTransport) and isinstance(tr, asyncio.ReadTransport)
    assert pr.transport is tr
    assert tr.get_protocol() is pr
    assert pr.events == ["made"]
    assert not tr.is_closing()
    assert tr.is_reading()
    assert tr.can_write_eof() is True
    tr.close()
    assert tr.is_closing()
    await wait_for(pr.lost)
    await close_server(server)


async def test_extra_info():
    server, tr, pr, sp = await connect_pair()
    peer = tr.get_extra_info("peername")
    sockname = tr.get_extra_info("sockname")
    assert peer == server.sockets[0].getsockname()
    assert sockname[0] == "127.0.0.1"
    assert sp.transport.get_extra_info("peername") == sockname
    assert sp.transport.get_extra_info("sockname") == peer
    sock = tr.get_extra_info("socket")
    assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
    assert sock.getsockname() == sockname
    # the view is safe: options work, it cannot be closed under the transport
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert not hasattr(sock, "close")
    ssock = sp.transport.get_extra_info("socket")
    assert ssock.getpeername() == sockname
    assert tr.get_extra_info("nonexistent") is None
    assert tr.get_extra_info("nonexistent", 42) == 42
    assert tr.get_extra_info(name="nonexistent", default="d") == "d"
    tr.close()
    await wait_for(sp.lost)
    # still known after the socket closed
    assert tr.get_extra_info("peername") == peer
    assert sp.transport.get_extra_info("peername") == sockname
    await close_server(server)


async def test_tcp_nodelay_on_both_ends():
    server, tr, pr, sp = await connect_pair()
    for t in (tr, sp.transport):
        s = t.get_extra_info("socket")
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    tr.close()
    await wait_for(sp.lost)
    await close_server(server)


async def test_write_type_errors_and_empty_write():
    server, tr, pr, sp = await connect_pair()
    # asyncio 3.14 names the types
    kinds = "bytes, bytearray, or memoryview" if sys.version_info >= (3, 14) else "bytes-like"
    with pytest.raises(TypeError, match=f"data argument must be a {kinds} object, not 'str'"):
        tr.write("text")
    with pytest.raises(TypeError):
        tr.write(None)
    tr.write(b"")
    assert tr.get_write_buffer_size() == 0
    tr.close()
    await wait_for(sp.lost)
    assert sp.data == b""
    await close_server(server)


async def test_writelines():
    server, tr, pr, sp = await connect_pair()
    tr.writelines([b"a", bytearray(b"bc"), memoryview(b"def")])
    tr.writelines([])
    await sp.wait_for_data(6)
    assert sp.data == b"abcdef"
    tr.close()
    await wait_for(sp.lost)
    await close_server(server)


async def test_write_eof_half_close():
    server, tr, pr, sp = await connect_pair(lambda: Recorder(keep_open=True))
    tr.write(b"request")
    tr.write_eof()
    await wait_for(sp.eof)
    assert sp.data == b"request"
    # the server kept its side open and can still answer
    sp.transport.write(b"response")
    await pr.wait_for_data(8)
    with pytest.raises(RuntimeError, match=r"Cannot call write\(\) after write_eof\(\)"):
        tr.write(b"more")
    tr.write_eof()   # twice is fine
    sp.transport.close()
    await wait_for(pr.lost)
    await wait_for(sp.lost)
    assert pr.data == b"response"
    await close_server(server)


async def test_eof_received_false_closes():
    server, tr, pr, sp = await connect_pair()
    tr.write_eof()
    await wait_for(sp.lost)
    assert sp.events == ["made", "eof", "lost"]
    await wait_for(pr.lost)
    await close_server(server)


async def test_close_flushes_buffered_data():
    server, tr, pr, sp = await connect_pair()
    sp.transport.pause_reading()
    payload = bytes(range(256)) * 40000     # ~10 MB: more than the kernel buffers
    tr.write(payload)
    assert tr.get_write_buffer_size() > 0
    tr.close()
    assert tr.is_closing()
    assert not pr.lost.done()
    sp.transport.resume_reading()
    await wait_for(pr.lost, 20)
    await wait_for(sp.lost, 20)
    assert len(sp.data) == len(payload) and sp.data == payload
    assert tr.get_write_buffer_size() == 0
    await close_server(server)


async def test_abort_drops_buffered_data():
    server, tr, pr, sp = await connect_pair()
    sp.transport.pause_reading()
    payload = b"x" * 10_000_000
    tr.write(payload)
    assert tr.get_write_buffer_size() > 0
    tr.abort()
    assert tr.get_write_buffer_size() == 0
    assert await wait_for(pr.lost) is None
    sp.transport.resume_reading()
    await wait_for(sp.lost)
    assert len(sp.data) < len(payload)
    await close_server(server)


async def test_write_after_close_is_dropped_and_logged(caplog):
    server, tr, pr, sp = await connect_pair()
    tr.close()
    await wait_for(pr.lost)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        for _ in range(7):
            tr.write(b"late")
    warnings = [r for r in caplog.records if "socket.send() raised exception." in r.message]
    assert len(warnings) == 3       # from the 5th dropped write on
    await wait_for(sp.lost)
    assert sp.data == b""
    await close_server(server)


async def test_close_twice_and_abort_after_close_call_lost_once():
    server, tr, pr, sp = await connect_pair()
    tr.close()
    tr.close()
    tr.abort()
    await wait_for(pr.lost)
    await asyncio.sleep(0.01)
    assert pr.events.count("lost") == 1
    await wait_for(sp.lost)
    await close_server(server)


async def test_pause_resume_reading():
    server, tr, pr, sp = await connect_pair()
    st = sp.transport
    st.pause_reading()
    assert not st.is_reading()
    st.pause_reading()   # idempotent
    tr.write(b"while paused")
    await asyncio.sleep(0.05)
    assert sp.data == b""
    st.resume_reading()
    assert st.is_reading()
    st.resume_reading()
    await sp.wait_for_data(12)
    tr.close()
    await wait_for(sp.lost)
    assert not st.is_reading()
    st.resume_reading()      # no effect once closing
    assert not st.is_reading()
    await close_server(server)


async def test_flow_control_pause_and_resume_writing():
    server, tr, pr, sp = await connect_pair()
    tr.set_write_buffer_limits(high=1024, low=256)
    assert tr.get_write_buffer_limits() == (256, 1024)
    sp.transport.pause_reading()
    chunk = b"y" * 65536
    while not pr.paused:
        tr.write(chunk)
        await asyncio.sleep(0)
        assert len(sp.data) == 0
    assert tr.get_write_buffer_size() > 1024
    assert pr.resumed == 0
    sp.transport.resume_reading()
    async with asyncio.timeout(10):
        while not pr.resumed:
            await asyncio.sleep(0.001)
    assert pr.paused == 1 and pr.resumed == 1
    assert tr.get_write_buffer_size() <= 256
    tr.close()
    await wait_for(sp.lost, 10)
    await close_server(server)


async def test_set_write_buffer_limits_rules():
    server, tr, pr, sp = await connect_pair()
    assert tr.get_write_buffer_limits() == (16384, 65536)
    tr.set_write_buffer_limits(high=100)
    assert tr.get_write_buffer_limits() == (25, 100)
    tr.set_write_buffer_limits(low=100)
    assert tr.get_write_buffer_limits() == (100, 400)
    tr.set_write_buffer_limits()
    assert tr.get_write_buffer_limits() == (16384, 65536)
    with pytest.raises(ValueError, match=r"high \(1\) must be >= low \(2\) must be >= 0"):
        tr.set_write_buffer_limits(high=1, low=2)
    with pytest.raises(ValueError):
        tr.set_write_buffer_limits(high=-1)
    # a limit of 0 pauses the protocol as soon as anything is buffered
    sp.transport.pause_reading()
    tr.set_write_buffer_limits(0)
    while not pr.paused:
        tr.write(b"z" * 65536)
        await asyncio.sleep(0)
    sp.transport.resume_reading()
    tr.close()
    await wait_for(sp.lost, 10)
    await close_server(server)


async def test_set_protocol_switches_delivery():
    server, tr, pr, sp = await connect_pair()
    other = Recorder()
    sp.transport.set_protocol(other)
    assert sp.transport.get_protocol() is other
    tr.write(b"for the other one")
    await other.wait_for_data(17)
    assert sp.data == b""
    tr.close()
    await wait_for(other.lost)
    assert not sp.lost.done()
    await close_server(server)


async def test_buffered_protocol_server_and_client():
    loop = asyncio.get_running_loop()
    server, tr, pr, sp = await connect_pair(lambda: BufferedRecorder(16))
    tr.write(b"0123456789" * 10)
    async with asyncio.timeout(5):
        while len(sp.data) < 100:
            await asyncio.sleep(0.001)
    assert sp.data == b"0123456789" * 10
    assert set(sp.sizehints) == {-1}
    tr.close()
    assert await wait_for(sp.lost) is None
    assert sp.eof_count == 1
    # a BufferedProtocol client as well
    bp = BufferedRecorder(7)
    tr2, pr2 = await loop.create_connection(lambda: bp, *server.sockets[0].getsockname())
    assert pr2 is bp
    await wait_for(bp.made)
    tr2.close()
    await wait_for(bp.lost)
    await close_server(server)


class RaisingGetBuffer(BufferedRecorder):
    def get_buffer(self, sizehint):
        raise ZeroDivisionError("no buffer")


class EmptyBuffer(BufferedRecorder):
    def get_buffer(self, sizehint):
        return bytearray()


@pytest.mark.parametrize("proto_cls, exc_type, message", [
    (RaisingGetBuffer, ZeroDivisionError, "Fatal error: protocol.get_buffer() call failed."),
    (EmptyBuffer, RuntimeError, "Fatal error: protocol.get_buffer() call failed."),
])
async def test_buffered_protocol_errors_close_the_transport(proto_cls, exc_type, message):
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))
    server, tr, pr, sp = await connect_pair(lambda: proto_cls())
    tr.write(b"data")
    exc = await wait_for(sp.lost)
    assert isinstance(exc, exc_type)
    assert len(errors) == 1
    assert errors[0]["message"] == message
    assert errors[0]["exception"] is exc
    assert errors[0]["transport"] is sp.transport
    assert errors[0]["protocol"] is sp
    await wait_for(pr.lost)
    await close_server(server)


class RaisingProtocol(Recorder):
    def __init__(self, where):
        super().__init__()
        self.where = where

    def data_received(self, data):
        super().data_received(data)
        if self.where == "data_received":
            raise ValueError("boom in data_received")

    def eof_received(self):
        super().eof_received()
        if self.where == "eof_received":
            raise ValueError("boom in eof_received")


@pytest.mark.parametrize("where", ["data_received", "eof_received"])
async def test_protocol_callback_raising_is_reported_and_closes(where):
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))
    server, tr, pr, sp = await connect_pair(lambda: RaisingProtocol(where))
    # another connection to the same server stays untouched
    tr2, pr2 = await loop.create_connection(Recorder, *server.sockets[0].getsockname())
    tr.write(b"trigger")
    if where == "eof_received":
        tr.write_eof()
    exc = await wait_for(sp.lost)
    assert isinstance(exc, ValueError) and str(exc) == f"boom in {where}"
    assert [e["message"] for e in errors] == [f"Fatal error: protocol.{where}() call failed."]
    assert errors[0]["exception"] is exc
    assert errors[0]["protocol"] is sp
    assert sp.transport.is_closing()
    await wait_for(pr.lost)     # the peer sees the close
    tr2.write(b"still fine")
    tr2.close()
    await wait_for(pr2.lost)
    assert pr2.exc is None
    await close_server(server)


async def test_connection_made_raising_is_reported():
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))

    class Bad(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            raise KeyError("made")

    server, addr = await tcp_server(Recorder)
    tr, pr = await loop.create_connection(Bad, *addr)
    assert len(errors) == 1 and isinstance(errors[0]["exception"], KeyError)
    assert errors[0]["message"].startswith("Exception in callback")
    tr.close()
    await wait_for(pr.lost)
    await close_server(server)


async def test_peer_reset_mid_stream():
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))
    server, tr, pr, sp = await connect_pair()
    tr2, pr2 = await loop.create_connection(Recorder, *server.sockets[0].getsockname())
    tr.write(b"some data")
    await sp.wait_for_data(9)
    # reset the client's socket: SO_LINGER 0 then close sends an RST
    sock = tr.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    tr.abort()
    exc = await wait_for(sp.lost)
    assert isinstance(exc, ConnectionResetError)
    assert errors == []        # resets are not worth a report outside debug mode
    # the other connection did not notice
    tr2.write(b"ping")
    await asyncio.sleep(0.01)
    assert not tr2.is_closing()
    tr2.close()
    await wait_for(pr2.lost)
    await close_server(server)


async def test_write_to_reset_peer_closes_with_error():
    server, tr, pr, sp = await connect_pair()
    sock = sp.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sp.transport.abort()
    await wait_for(sp.lost)
    async with asyncio.timeout(5):
        while not pr.lost.done():
            tr.write(b"x" * 1000)
            await asyncio.sleep(0.001)
    assert isinstance(pr.lost.result(), (ConnectionResetError, BrokenPipeError))
    await close_server(server)


async def test_context_of_protocol_callbacks():
    loop = asyncio.get_running_loop()
    seen = []

    class CtxProto(Recorder):
        def connection_made(self, transport):
            seen.append(("made", cvar.get()))
            super().connection_made(transport)

        def data_received(self, data):
            seen.append(("data", cvar.get()))
            super().data_received(data)

        def connection_lost(self, exc):
            seen.append(("lost", cvar.get()))
            super().connection_lost(exc)

    cvar.set("server")
    server, addr = await tcp_server(CtxProto)
    cvar.set("client")
    tr, pr = await loop.create_connection(CtxProto, *addr)
    cvar.set("changed later")
    tr.write(b"x")
    await asyncio.sleep(0.05)
    tr.close()
    await wait_for(pr.lost)
    await asyncio.sleep(0.05)
    assert ("made", "client") in seen
    assert ("made", "server") in seen and ("data", "server") in seen
    assert ("lost", "server") in seen
    if is_tonio():
        # asyncio runs connection_lost() in the context of whoever called
        # close(); tonio_loop keeps every protocol callback in the context
        # the connection was made in (docs/design.md, "Protocol callbacks and contextvars")
        assert ("lost", "client") in seen
        assert not any(v == "changed later" for _, v in seen)
    await close_server(server)


async def test_add_reader_on_transport_fd_raises():
    loop = asyncio.get_running_loop()
    server, tr, pr, sp = await connect_pair()
    fd = tr.get_extra_info("socket").fileno()
    with pytest.raises(RuntimeError, match="is used by transport"):
        loop.add_reader(fd, lambda: None)
    with pytest.raises(RuntimeError, match="is used by transport"):
        loop.add_writer(fd, lambda: None)
    with pytest.raises(RuntimeError, match="is used by transport"):
        loop.remove_reader(fd)
    tr.close()
    # a closing transport no longer claims it
    assert loop.remove_reader(fd) is False
    await wait_for(pr.lost)
    await close_server(server)


async def test_invalid_ports_and_addresses():
    loop = asyncio.get_running_loop()
    with pytest.raises(OverflowError):
        await loop.create_connection(Recorder, "127.0.0.1", 70000)
    with pytest.raises(OSError):
        await loop.create_connection(Recorder, "256.1.1.1.1", 80)
    with pytest.raises(ConnectionRefusedError):
        # a port nobody listens on: bind one and close it again
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        await loop.create_connection(Recorder, "127.0.0.1", port)
    with pytest.raises(ValueError, match="host/port and sock can not be specified"):
        with socket.socket() as s:
            await loop.create_connection(Recorder, "127.0.0.1", 1, sock=s)
    with pytest.raises(ValueError, match="host and port was not specified and no sock"):
        await loop.create_connection(Recorder)
    with pytest.raises(ValueError, match="server_hostname is only meaningful with ssl"):
        await loop.create_connection(Recorder, "127.0.0.1", 1, server_hostname="x")
    with pytest.raises(ValueError, match="A Stream Socket was expected"):
        with socket.socket(type=socket.SOCK_DGRAM) as s:
            await loop.create_connection(Recorder, sock=s)
    with pytest.raises(TypeError, match="ssl argument must be an SSLContext or None"):
        await loop.create_server(Recorder, "127.0.0.1", 0, ssl=True)
    with pytest.raises(OverflowError):
        await loop.create_server(Recorder, "127.0.0.1", -5)


async def test_address_in_use():
    loop = asyncio.get_running_loop()
    server, addr = await tcp_server(Recorder)
    with pytest.raises(OSError) as info:
        await loop.create_server(Recorder, *addr, reuse_address=False)
    assert "address already in use" in str(info.value)
    await close_server(server)


async def test_connection_refused_message_all_errors():
    if sys.version_info < (3, 12):
        pytest.skip("all_errors is new in 3.12")
    loop = asyncio.get_running_loop()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(ExceptionGroup) as info:
        await loop.create_connection(Recorder, "127.0.0.1", port, all_errors=True)
    assert isinstance(info.value.exceptions[0], ConnectionRefusedError)


async def test_create_connection_with_sock_and_local_addr():
    loop = asyncio.get_running_loop()
    server, addr = await tcp_server(Recorder)
    sock = socket.socket()
    sock.connect(addr)
    tr, pr = await loop.create_connection(Recorder, sock=sock)
    assert tr.get_extra_info("socket").fileno() == sock.fileno()
    assert sock.gettimeout() == 0
    tr.close()
    await wait_for(pr.lost)
    assert sock.fileno() == -1       # the transport closed it
    tr, pr = await loop.create_connection(Recorder, *addr, local_addr=("127.0.0.1", 0))
    assert tr.get_extra_info("sockname")[0] == "127.0.0.1"
    tr.close()
    await wait_for(pr.lost)
    await close_server(server)


async def test_happy_eyeballs_and_interleave():
    loop = asyncio.get_running_loop()
    server, addr = await tcp_server(Recorder)
    tr, pr = await loop.create_connection(Recorder, "localhost", addr[1],
                                          happy_eyeballs_delay=0.1, interleave=1,
                                          family=socket.AF_INET)
    assert tr.get_extra_info("peername") == addr
    tr.close()
    await wait_for(pr.lost)
    await close_server(server)


async def test_connect_accepted_socket():
    loop = asyncio.get_running_loop()
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    csock = socket.socket()
    csock.connect(lsock.getsockname())
    conn, _ = lsock.accept()
    lsock.close()
    tr, pr = await loop.connect_accepted_socket(Recorder, conn)
    ctr, cpr = await loop.create_connection(Recorder, sock=csock)
    ctr.write(b"hi")
    await pr.wait_for_data(2)
    with pytest.raises(ValueError, match="ssl_handshake_timeout is only meaningful with ssl"):
        with socket.socket() as s:
            await loop.connect_accepted_socket(Recorder, s, ssl_handshake_timeout=1)
    ctr.close()
    await wait_for(pr.lost)
    await wait_for(cpr.lost)


async def test_repr_of_transport():
    server, tr, pr, sp = await connect_pair()
    r = repr(tr)
    assert "fd=" in r and "read=polling" in r and "write=<idle, bufsize=0>" in r
    tr.close()
    await wait_for(pr.lost)
    assert "closed" in repr(tr)
    await close_server(server)


async def test_unclosed_transport_warns_and_closes_fd():
    import os
    server, tr, pr, sp = await connect_pair()
    tr.pause_reading()       # nothing keeps it alive but us now
    fd = tr.get_extra_info("socket").fileno()
    pr.transport = pr.made = None
    with pytest.warns(ResourceWarning, match="unclosed transport"):
        del tr
        for _ in range(3):
            gc.collect()
            await asyncio.sleep(0)
    with pytest.raises(OSError):
        os.fstat(fd)
    await wait_for(sp.lost)     # the peer saw the socket close
    await close_server(server)


async def test_large_transfer_both_ways():
    server, tr, pr, sp = await connect_pair(lambda: Recorder(echo=True))
    payload = bytes(range(256)) * 8192          # 2 MiB
    tr.write(payload)
    await pr.wait_for_data(len(payload), timeout=20)
    assert pr.data == payload
    tr.close()
    await wait_for(sp.lost)
    await close_server(server)


async def test_transport_loop_attributes():
    loop = asyncio.get_running_loop()
    server, tr, pr, sp = await connect_pair()
    assert tr._loop is loop
    assert tr._protocol_paused is False
    tr.close()
    await wait_for(pr.lost)
    await close_server(server)


async def test_debug_mode_logs_slow_protocol_callbacks(caplog):
    import time
    loop = asyncio.get_running_loop()

    class Slow(Recorder):
        def data_received(self, data):
            super().data_received(data)
            time.sleep(0.12)

    loop.set_debug(True)
    try:
        server, tr, pr, sp = await connect_pair(Slow)
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            tr.write(b"slow")
            await sp.wait_for_data(4)
            # on a threaded loop data_received() may still be sleeping on a
            # worker while this task goes on: wait for its report (bounded)
            for _ in range(100):
                await asyncio.sleep(0.01)
                if any(r.getMessage().startswith("Executing") for r in caplog.records):
                    break
        slow = [r for r in caplog.records if r.getMessage().startswith("Executing")]
        assert slow and "took" in slow[0].getMessage()
        tr.close()
        await wait_for(sp.lost)
        await close_server(server)
    finally:
        loop.set_debug(False)


def test_transport_after_loop_close(loop):
    async def setup():
        server, tr, pr, sp = await connect_pair()
        sp.transport.pause_reading()
        return server, tr, pr, sp

    server, tr, pr, sp = loop.run_until_complete(setup())
    server.close()
    loop.close()
    # the kernel still takes what fits...
    tr.write(b"x" * 1000)
    # ...but nothing can wait for the rest any more
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        for _ in range(1000):
            tr.write(b"f" * 65536)
    assert tr.get_write_buffer_size() == 0     # what the kernel refused is not kept
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        tr.abort()
    with pytest.warns(ResourceWarning):
        del tr, pr, sp
        gc.collect()


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_in_protocol_leaves_the_loop(loop, exc_type):
    class Interrupting(Recorder):
        def data_received(self, data):
            super().data_received(data)
            raise exc_type()

    async def setup():
        return await connect_pair(Interrupting)

    server, tr, pr, sp = loop.run_until_complete(setup())
    tr.write(b"stop")

    async def forever():
        await asyncio.sleep(5)

    task = loop.create_task(forever())
    with pytest.raises(exc_type):
        loop.run_until_complete(task)
    # the loop and the transports still work afterwards
    assert sp.data == b"stop"
    assert not sp.transport.is_closing()
    task.cancel()

    async def cleanup():
        with pytest.raises(asyncio.CancelledError):
            await task
        sp.transport.close()
        tr.close()
        await wait_for(pr.lost)
        await wait_for(sp.lost)
        await close_server(server)

    loop.run_until_complete(cleanup())


async def test_create_connection_numeric_addresses_and_options():
    loop = asyncio.get_running_loop()
    server, addr = await tcp_server(Recorder)
    for kwargs in ({}, {"family": socket.AF_INET}, {"proto": socket.IPPROTO_TCP},
                   {"flags": 0, "ssl": None, "sock": None, "local_addr": None}):
        tr, pr = await loop.create_connection(Recorder, "127.0.0.1", addr[1], **kwargs)
        assert tr.get_extra_info("peername") == addr
        tr.close()
        await wait_for(pr.lost)
    # a coroutine, usable as a task
    task = asyncio.ensure_future(loop.create_connection(Recorder, "127.0.0.1", addr[1]))
    tr, pr = await wait_for(task)
    tr.close()
    await wait_for(pr.lost)
    with pytest.raises(OSError):
        # the address family does not match the host
        await loop.create_connection(Recorder, "127.0.0.1", addr[1], family=socket.AF_INET6)
    await close_server(server)


async def test_create_connection_ipv6():
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(Recorder, "::1", 0)
    except OSError:
        pytest.skip("no IPv6 loopback")
    addr = server.sockets[0].getsockname()
    tr, pr = await loop.create_connection(Recorder, "::1", addr[1])
    assert tr.get_extra_info("peername")[:2] == addr[:2]
    assert tr.get_extra_info("socket").family == socket.AF_INET6
    tr.close()
    await wait_for(pr.lost)
    await close_server(server)
    with pytest.raises(ConnectionRefusedError) as info:
        await loop.create_connection(Recorder, "::1", addr[1])
    assert info.value.errno == 111


async def test_create_connection_refused_message():
    loop = asyncio.get_running_loop()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(ConnectionRefusedError) as info:
        await loop.create_connection(Recorder, "127.0.0.1", port)
    assert str(info.value) in (f"[Errno 111] Connect call failed ('127.0.0.1', {port})",
                               "[Errno 111] Connection refused")


async def test_create_connection_factory_raising_leaks_nothing():
    loop = asyncio.get_running_loop()
    server, addr = await tcp_server(Recorder)

    def factory():
        raise ZeroDivisionError("no protocol")

    with pytest.raises(ZeroDivisionError):
        await loop.create_connection(factory, *addr)
    await close_server(server)
    gc.collect()


async def test_create_connection_cancelled_while_connecting():
    loop = asyncio.get_running_loop()
    # nothing answers there: the connect stays in progress (or fails at once
    # where the network is unreachable)
    task = asyncio.ensure_future(loop.create_connection(Recorder, "10.255.255.1", 9))
    await asyncio.sleep(0.05)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        assert task.cancelled()
    except OSError:
        pass


async def test_data_received_objects_hash_their_own_contents():
    # the transport may read into a bytes object data_received() let go of:
    # a hash taken of an earlier message must not stick to a later one
    seen = []

    class Hashing(Recorder):
        def data_received(self, data):
            super().data_received(data)
            seen.append((hash(data), bytes(data), {data: 1}.get(bytes(data))))

    server, tr, pr, sp = await connect_pair(Hashing)
    for i in range(20):
        tr.write(bytes([65 + i]) * 1500)
        await sp.wait_for_data(1500 * (i + 1))
    assert all(h == hash(copy) and found == 1 for h, copy, found in seen)
    assert b"".join(copy for _, copy, _ in seen) == bytes(sp.data)
    tr.close()
    await wait_for(sp.lost)
    await close_server(server)
