"""Edges where tonio_loop once differed from asyncio's loop (found by
running the same scripts on both, and real projects' test suites on both).
Parity tests: each runs on both loops and asserts asyncio's outcome."""

import asyncio
import sys
import socket

import pytest


async def test_sock_recv_of_zero_bytes_returns_at_once():
    """sock_recv(sock, 0) and sock_recv_into(sock, bytearray(0)) with
    nothing to read: b'' and 0 at once, as socket.recv(0) says."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        assert await asyncio.wait_for(loop.sock_recv(a, 0), 1) == b""
        assert await asyncio.wait_for(loop.sock_recv_into(a, bytearray(0)), 1) == 0
        b.send(b"x")
        assert await asyncio.wait_for(loop.sock_recv(a, 0), 1) == b""
        assert await asyncio.wait_for(loop.sock_recv(a, 10), 1) == b"x"
    finally:
        a.close()
        b.close()


def _coroutine_methods():
    from asyncio import selector_events
    import inspect
    return sorted(name for name in dir(selector_events.BaseSelectorEventLoop)
                  if not name.startswith("_") and inspect.iscoroutinefunction(
                      getattr(selector_events.BaseSelectorEventLoop, name)))


@pytest.mark.parametrize("name", _coroutine_methods())
def test_coroutine_methods_introspect_as_coroutine_functions(loop, name):
    """Every loop method asyncio defines with `async def` is a coroutine
    function to inspect and asyncio, with asyncio's signature; mock's
    autospec then makes an awaitable mock of it (aiohttp's tests do)."""
    import inspect
    from unittest import mock
    from asyncio import selector_events

    method = getattr(loop, name)
    assert inspect.iscoroutinefunction(method)
    assert inspect.iscoroutinefunction(getattr(type(loop), name))
    if sys.version_info < (3, 14):
        assert asyncio.iscoroutinefunction(method)
    expected = inspect.signature(getattr(selector_events.BaseSelectorEventLoop, name))
    params = list(expected.parameters.values())[1:]        # without self
    assert list(inspect.signature(method).parameters.values()) == params
    with mock.patch.object(loop, name, autospec=True):
        call = getattr(loop, name)(*[None] * sum(
            p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            for p in params))
        assert inspect.isawaitable(call)
        call.close()


@pytest.fixture
def python_running_loop_functions(monkeypatch):
    """asyncio's pure-Python running-loop functions in place of the C ones,
    as CPython's TestPyGetEventLoop does."""
    from asyncio import events
    for name in ("_get_running_loop", "_set_running_loop", "get_running_loop",
                 "get_event_loop"):
        impl = getattr(events, "_py_" + name, None) or getattr(events, "_py__" + name[1:])
        monkeypatch.setattr(events, name, impl)
        if hasattr(asyncio, name):
            monkeypatch.setattr(asyncio, name, impl)


def test_running_loop_seen_by_asyncios_python_functions(loop, python_running_loop_functions):
    from asyncio import events
    seen = []

    async def main():
        seen.append(events.get_running_loop())
        seen.append(events.get_event_loop())
        loop.call_soon(lambda: seen.append(events._get_running_loop()))
        await asyncio.sleep(0)

    loop.run_until_complete(main())
    assert seen == [loop, loop, loop]
    assert events._get_running_loop() is None


def test_one_iteration_at_a_time_sees_io_at_once(loop):
    """call_soon(stop); run_forever() runs one iteration, which polls I/O
    (asyncio's documented behaviour): a readable fd's callback runs in the
    first such iteration, also on a loop that ran before."""
    a, b = socket.socketpair()
    try:
        for _ in range(3):                      # a loop that has run before
            loop.call_soon(loop.stop)
            loop.run_forever()
        fired = []
        loop.add_reader(a, fired.append, 1)
        b.send(b"x")
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert fired == [1]
        loop.remove_reader(a)
    finally:
        a.close()
        b.close()


async def test_wait_for_a_nan_sleep_times_out():
    """asyncio's heap keeps a NaN deadline below the timers scheduled before
    it: wait_for()'s timeout fires first."""
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.sleep(float("nan")), 0.1)


def test_huge_fd_numbers(loop):
    with pytest.raises(OverflowError):
        loop.add_reader(2 ** 40, print)
    with pytest.raises(OverflowError):
        loop.add_writer(2 ** 70, print)
    assert loop.remove_writer(2 ** 40) is False
    assert loop.remove_reader(2 ** 70) is False
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        loop.add_reader(-1, print)


def test_slow_callback_duration_is_a_plain_attribute(loop):
    assert loop.slow_callback_duration == 0.1
    loop.slow_callback_duration = "0.1"
    assert loop.slow_callback_duration == "0.1"
    loop.slow_callback_duration = 2
    assert loop.slow_callback_duration == 2


def test_call_at_keeps_an_int_deadline(loop):
    h = loop.call_at(5, print)
    assert h.when() == 5 and type(h.when()) is int
    assert type(loop.call_later(1, print).when()) is float
    assert type(loop.call_at(5.0, print).when()) is float
    h.cancel()


async def _connected_pair():
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    tr, pr = await loop.create_connection(asyncio.Protocol, sock=a)
    b.setblocking(False)
    return tr, b


async def test_transport_argument_edges():
    """set_write_buffer_limits() takes floats, get_extra_info() refuses an
    unhashable name (asyncio looks it up in a dict)."""
    tr, peer = await _connected_pair()
    try:
        tr.set_write_buffer_limits(high=65536.0)
        low, high = tr.get_write_buffer_limits()
        assert (low, high) == (16384, 65536)
        tr.set_write_buffer_limits(high=float("inf"), low=0)
        with pytest.raises(ValueError, match="must be >= low"):
            tr.set_write_buffer_limits(high=1.0, low=2.0)
        with pytest.raises(TypeError, match="unhashable"):
            tr.get_extra_info([])
        assert tr.get_extra_info("no such thing", 7) == 7
    finally:
        tr.close()
        peer.close()


async def test_write_of_a_strided_memoryview():
    """asyncio's write() takes a non-contiguous memoryview, then its
    socket.send() fails and the transport dies (a bug); tonio_loop sends the
    bytes it shows."""
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(type(ctx.get("exception"))))
    tr, peer = await _connected_pair()
    try:
        view = memoryview(bytearray(b"abcdef"))[::2]
        tr.write(view)
        await asyncio.sleep(0.05)
        if isinstance(loop, __import__("tonio_loop").Loop):
            assert peer.recv(10) == b"ace" and not tr.is_closing() and errors == []
        else:
            assert tr.is_closing() and errors == [BufferError]
    finally:
        loop.set_exception_handler(None)
        tr.close()
        peer.close()


async def test_create_connection_with_a_factory_that_makes_no_protocol():
    """asyncio's transport looks up protocol.connection_made as it is made:
    the AttributeError reaches create_connection()'s caller."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(AttributeError, match="connection_made"):
            await loop.create_connection(lambda: 5, "127.0.0.1", port)
    finally:
        server.close()
        await server.wait_closed()


async def test_start_tls_on_a_transport_aborted_just_before():
    """start_tls() over a transport whose connection goes away before the
    handshake: None, asyncio's answer (aiohttp then raises
    ClientConnectorError), with or without worker threads."""
    import ssl
    loop = asyncio.get_running_loop()
    tr, peer = await _connected_pair()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        tr.abort()
        result = await loop.start_tls(tr, tr.get_protocol(), ctx, server_hostname="x",
                                      ssl_handshake_timeout=5)
        assert result is None
    finally:
        peer.close()
