"""add_reader / add_writer / remove_reader / remove_writer on real sockets."""

import os
import socket
import tempfile

import pytest


@pytest.fixture
def sockpair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_reader_callback(loop, sockpair):
    a, b = sockpair
    got = []

    def on_readable(sock, tag):
        data = sock.recv(100)
        got.append((tag, data))
        if b"".join(d for _, d in got) == b"hello world":
            loop.stop()

    assert loop.add_reader(a.fileno(), on_readable, a, "t") is None
    loop.call_soon(b.send, b"hello ")
    loop.call_later(0.01, b.send, b"world")
    loop.call_later(2, loop.stop)
    loop.run_forever()
    assert b"".join(d for _, d in got) == b"hello world"
    assert all(tag == "t" for tag, _ in got)
    assert loop.remove_reader(a.fileno()) is True
    assert loop.remove_reader(a.fileno()) is False


def test_reader_with_file_object(loop, sockpair):
    a, b = sockpair
    got = []
    loop.add_reader(a, lambda: (got.append(a.recv(10)), loop.stop()))
    b.send(b"x")
    loop.run_forever()
    assert got == [b"x"]
    assert loop.remove_reader(a) is True


def test_writer_callback(loop, sockpair):
    a, b = sockpair
    sent = []

    def on_writable():
        sent.append(a.send(b"data"))
        loop.remove_writer(a.fileno())
        loop.stop()

    loop.add_writer(a.fileno(), on_writable)
    loop.run_forever()
    assert sent == [4]
    assert b.recv(10) == b"data"
    assert loop.remove_writer(a.fileno()) is False


def test_reader_and_writer_on_same_fd(loop, sockpair):
    a, b = sockpair
    events = []

    def on_write():
        events.append("w")
        loop.remove_writer(a)
        b.send(b"ping")

    def on_read():
        events.append(("r", a.recv(10)))
        loop.stop()

    loop.add_reader(a, on_read)
    loop.add_writer(a, on_write)
    loop.run_forever()
    assert events == ["w", ("r", b"ping")]
    assert loop.remove_reader(a) is True


def test_replacing_reader_cancels_old_handle(loop, sockpair):
    a, b = sockpair
    calls = []
    loop.add_reader(a, calls.append, "old")
    loop.add_reader(a, lambda: (calls.append("new"), a.recv(10), loop.stop()))
    b.send(b"x")
    loop.run_forever()
    assert calls == ["new"]
    loop.remove_reader(a)


def test_cancelled_reader_handle_is_dropped(loop, sockpair):
    a, b = sockpair
    calls = []
    handle = loop._add_reader(a.fileno(), calls.append, "never")
    handle.cancel()
    b.send(b"x")
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert calls == []
    # it was unregistered when its event came in
    assert loop.remove_reader(a.fileno()) is False


def test_reader_exception_goes_to_handler(loop, sockpair):
    a, b = sockpair
    errors = []
    loop.set_exception_handler(lambda lp, ctx: (errors.append(ctx), loop.stop()))

    def bad():
        a.recv(10)
        raise ValueError("reader failed")

    loop.add_reader(a, bad)
    b.send(b"x")
    loop.run_forever()
    loop.remove_reader(a)
    assert isinstance(errors[0]["exception"], ValueError)


def test_invalid_file_objects(loop):
    with pytest.raises(ValueError, match="Invalid file object"):
        loop.add_reader("not a file", print)
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        loop.add_reader(-1, print)
    with pytest.raises(ValueError):
        loop.remove_writer(object())


def test_closed_fd_is_refused(loop):
    a, b = socket.socketpair()
    fd = a.fileno()
    a.close()
    b.close()
    with pytest.raises(OSError):
        loop.add_reader(fd, print)
    assert loop.remove_reader(fd) is False


def test_regular_file_is_refused(loop):
    with tempfile.TemporaryFile() as f:
        with pytest.raises(PermissionError):
            loop.add_reader(f.fileno(), print)


def test_closed_loop(loop, sockpair):
    a, b = sockpair
    loop.add_reader(a, print)
    loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.add_reader(a, print)
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.add_writer(a, print)
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(a) is False


def test_missing_arguments(loop, sockpair):
    a, _ = sockpair
    with pytest.raises(TypeError):
        loop.add_reader(a)
    with pytest.raises(TypeError):
        loop.add_reader()


def test_fd_reused_after_close(loop):
    # close a watched fd without remove_reader, then watch a new fd that got
    # the same number: the new one must work
    a, b = socket.socketpair()
    fd = a.fileno()
    loop.add_reader(fd, print)
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.remove_reader(fd)
    a.close()
    b.close()
    c, d = socket.socketpair()
    try:
        if c.fileno() != fd:
            c, d = d, c
        got = []
        loop.add_reader(c, lambda: (got.append(c.recv(10)), loop.stop()))
        d.send(b"reused")
        loop.call_later(2, loop.stop)
        loop.run_forever()
        assert got == [b"reused"]
        loop.remove_reader(c)
    finally:
        c.close()
        d.close()


def test_pipe_reader(loop):
    r, w = os.pipe()
    os.set_blocking(r, False)
    got = []
    try:
        loop.add_reader(r, lambda: (got.append(os.read(r, 100)), loop.stop()))
        os.write(w, b"through a pipe")
        loop.run_forever()
        assert got == [b"through a pipe"]
        loop.remove_reader(r)
    finally:
        os.close(r)
        os.close(w)
