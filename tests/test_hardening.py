"""Edges where tonio_loop once differed from asyncio's loop (found by
running the same scripts on both, and real projects' test suites on both).
Parity tests: each runs on both loops and asserts asyncio's outcome."""

import asyncio
import sys
import socket
import time

import pytest

from tests.conftest import TONIO_THREADS
from tests.netutil import is_tonio


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
    import inspect
    return sorted(name for name in dir(asyncio.SelectorEventLoop)
                  if not name.startswith("_") and inspect.iscoroutinefunction(
                      getattr(asyncio.SelectorEventLoop, name)))


@pytest.mark.parametrize("name", _coroutine_methods())
def test_coroutine_methods_introspect_as_coroutine_functions(loop, name):
    """Every loop method asyncio defines with `async def` is a coroutine
    function to inspect and asyncio, with asyncio's signature; mock's
    autospec then makes an awaitable mock of it (aiohttp's tests do)."""
    import inspect
    from unittest import mock

    method = getattr(loop, name)
    assert inspect.iscoroutinefunction(method)
    assert inspect.iscoroutinefunction(getattr(type(loop), name))
    if sys.version_info < (3, 14):
        assert asyncio.iscoroutinefunction(method)
    # asyncio's loop on this platform (3.13's create_unix_server() has
    # cleanup_socket, which the base class has not)
    expected = inspect.signature(getattr(asyncio.SelectorEventLoop, name))
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

    def callback():
        seen.append(events.get_running_loop())
        seen.append(events.get_event_loop())
        seen.append(events._get_running_loop())
        loop.stop()

    loop.call_soon(callback)
    loop.run_forever()
    assert seen == [loop, loop, loop]
    if sys.version_info < (3, 14):
        # 3.14's C tasks ask the C running loop, which the Python functions
        # no longer set: there asyncio's own loop cannot run a task so (its
        # step fails, "is not the running loop", and the loop hangs)
        async def main():
            seen.append(events.get_running_loop())
            seen.append(events.get_event_loop())
            loop.call_soon(lambda: seen.append(events._get_running_loop()))
            await asyncio.sleep(0)

        loop.run_until_complete(main())
        assert seen == [loop] * 6
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


async def _all_waiting(tasks):
    """Until every task awaits a future (their first steps ran)."""
    while any(t._fut_waiter is None for t in tasks):
        await asyncio.sleep(0.001)


class _CountingSocket(socket.socket):
    """A socket whose recv() counts its calls (the loop then calls the
    method, not the system call)."""
    recvs = 0

    def recv(self, *args):
        type(self).recvs += 1
        return super().recv(*args)


async def test_one_readable_fd_wakes_one_of_many_operations():
    """Many sock_recv() on one socket: a message is read once, by one of
    them, and the others are not woken to find nothing (tonio_loop: they
    wait in line; asyncio: the last one's reader replaced the others')."""
    loop = asyncio.get_running_loop()
    n = 2000
    a, b = socket.socketpair()
    a = _CountingSocket(fileno=a.detach())
    a.setblocking(False)
    try:
        ops = [asyncio.ensure_future(loop.sock_recv(a, 100)) for _ in range(n)]
        await _all_waiting(ops)
        _CountingSocket.recvs = 0
        b.send(b"one")
        done, pending = await asyncio.wait(ops, timeout=1, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.sleep(0.01)
        assert [t.result() for t in done] == [b"one"]
        assert len(pending) == n - 1
        assert _CountingSocket.recvs <= 2
        if is_tonio(loop):
            # asyncio's other operations lost their reader (a bug of its
            # own): ours are served in the order they came (with worker
            # threads, the order their first steps ran in)
            assert TONIO_THREADS or ops[0] in done
            ops = [t for t in ops if t not in done]
            b.send(b"two")
            done, _ = await asyncio.wait(ops, timeout=1, return_when=asyncio.FIRST_COMPLETED)
            assert [t.result() for t in done] == [b"two"]
            assert TONIO_THREADS or ops[0] in done
        for t in ops:
            t.cancel()
        await asyncio.gather(*ops, return_exceptions=True)
        b.send(b"left for whoever reads next")
        assert await asyncio.wait_for(loop.sock_recv(a, 100), 1) == b"left for whoever reads next"
    finally:
        a.close()
        b.close()


async def test_a_backlog_serves_a_line_of_sock_accept():
    """20 sock_accept() on one listening socket and 20 connections queued:
    tonio_loop accepts all 20, each waiter one, in the order they came.
    asyncio accepts one: each sock_accept() replaced the previous reader and
    the first done removed it (its bug; the other 19 wait forever)."""
    loop = asyncio.get_running_loop()
    n = 20
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(n)
    srv.setblocking(False)
    clients = []
    ops = [asyncio.ensure_future(loop.sock_accept(srv)) for _ in range(n)]
    try:
        await _all_waiting(ops)
        for _ in range(n):
            c = socket.create_connection(srv.getsockname())
            clients.append(c)
        done, _ = await asyncio.wait(ops, timeout=0.5)
        assert len(done) == (n if is_tonio(loop) else 1)
        if is_tonio(loop):
            ports = [t.result()[1][1] for t in ops]
            expected = [c.getsockname()[1] for c in clients]
            assert (sorted(ports) == sorted(expected)) if TONIO_THREADS else ports == expected
    finally:
        for t in ops:
            t.cancel()
        await asyncio.gather(*ops, return_exceptions=True)
        for t in ops:
            if not t.cancelled():
                t.result()[0].close()
        for c in clients:
            c.close()
        srv.close()


async def test_cancelling_many_operations_on_one_fd_costs_each_the_same():
    """N sock_recv() on one socket, cancelled and gathered: the time per
    operation must not grow with N (it did, as N squared). A ratio of two
    runs of the same loop, not a benchmark; bench's sock_cancel_many has the
    figures."""
    import time
    loop = asyncio.get_running_loop()

    async def per_op(n):
        a, b = socket.socketpair()
        a.setblocking(False)
        try:
            ops = [asyncio.ensure_future(loop.sock_recv(a, 10)) for _ in range(n)]
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            t0 = time.process_time()
            for t in ops:
                t.cancel()
            await asyncio.gather(*ops, return_exceptions=True)
            return (time.process_time() - t0) / n
        finally:
            a.close()
            b.close()

    small = min([await per_op(2000) for _ in range(3)])
    large = min([await per_op(16000) for _ in range(3)])
    assert large < 4 * max(small, 1e-6), (small, large)


async def test_wait_for_a_nan_deadline_times_out():
    """asyncio's heap keeps a NaN deadline below the timers scheduled before
    it: wait_for()'s timeout fires first. (From 3.13 asyncio.sleep() refuses
    a NaN itself; call_later() still takes one.)"""
    loop = asyncio.get_running_loop()

    async def nan_timer():          # asyncio.sleep(nan) before 3.13
        fut = loop.create_future()
        handle = loop.call_later(float("nan"), fut.set_result, None)
        try:
            await fut
        finally:
            handle.cancel()

    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(nan_timer(), 0.1)
    if sys.version_info >= (3, 13):
        with pytest.raises(ValueError, match="Invalid delay: NaN"):
            await asyncio.sleep(float("nan"))
    else:
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


def test_a_replaced_time_is_the_schedulers_clock(loop):
    """asyncio's scheduler reads self.time(): a test that moves the clock
    with `loop.time = ...` (aiohttp's keep-alive tests do) makes due timers
    fire, and call_later() counts from it; deleting it restores the clock."""
    fired = []
    real = loop.time
    loop.call_later(50, fired.append, "in 50 s")
    loop.time = lambda: real() + 100
    try:
        handle = loop.call_later(1, fired.append, "in 1 s")
        assert 100.5 < handle.when() - real() < 101.5
        loop.run_until_complete(asyncio.sleep(0.01))
        assert fired == ["in 50 s"]
    finally:
        del loop.time
    handle.cancel()
    assert abs(loop.time() - real()) < 1
    h = loop.call_later(0.01, fired.append, "real clock")
    loop.run_until_complete(asyncio.sleep(0.05))
    assert fired == ["in 50 s", "real clock"] and h.when() < real()


def test_a_subclass_time_is_the_schedulers_clock(make_loop):
    """A loop class whose time() runs ahead: call_later() and the timers
    follow it, and its own super().time() is the real clock."""
    base = type(make_loop())

    class Ahead(base):
        def time(self):
            return super().time() + 1000

    loop = Ahead()
    try:
        start = time.monotonic()
        fired = []
        h = loop.call_later(0.01, fired.append, 1)
        assert 1000 < h.when() - start < 1001
        loop.run_until_complete(asyncio.sleep(0.02))
        assert fired == [1]
    finally:
        loop.close()


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
    # a plain listening socket: the connection waits in its backlog (a
    # server's wait_closed() would wait, on 3.12+, for a client socket that
    # only the collector closes)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    try:
        with pytest.raises(AttributeError, match="connection_made"):
            await loop.create_connection(lambda: 5, *srv.getsockname())
    finally:
        srv.close()


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
