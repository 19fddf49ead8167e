"""connect_read_pipe/connect_write_pipe on pipes, FIFOs, ptys and
socketpairs, on both loops."""

import asyncio
import errno
import os
import socket
import tempfile

import pytest

from .netutil import Recorder, wait_for


class PipeRecorder(Recorder):
    """Recorder for pipes: eof_received's result does not matter there."""


async def read_pipe(fobj):
    loop = asyncio.get_running_loop()
    return await loop.connect_read_pipe(PipeRecorder, fobj)


async def write_pipe(fobj):
    loop = asyncio.get_running_loop()
    return await loop.connect_write_pipe(PipeRecorder, fobj)


def skip_without_pipe_is_reading():
    """Older 3.11 patch releases (Debian's 3.11.2) have no is_reading() on
    asyncio's read pipe transport: nothing to compare with there."""
    import asyncio.unix_events
    if (type(asyncio.get_running_loop()).__module__.startswith("asyncio")
            and "is_reading" not in vars(asyncio.unix_events._UnixReadPipeTransport)):
        pytest.skip("this Python's asyncio read pipes have no is_reading()")


async def test_read_pipe_data_eof_and_lost():
    skip_without_pipe_is_reading()
    rfd, wfd = os.pipe()
    rfile = open(rfd, "rb", buffering=0)
    tr, pr = await read_pipe(rfile)
    assert isinstance(tr, asyncio.ReadTransport)
    assert tr.get_extra_info("pipe") is rfile
    assert tr.is_reading() and not tr.is_closing()
    assert os.get_blocking(rfd) is False
    os.write(wfd, b"first ")
    os.write(wfd, b"second")
    await pr.wait_for_data(12)
    os.close(wfd)
    assert await wait_for(pr.lost) is None
    assert pr.events[0] == "made" and pr.events[-2:] == ["eof", "lost"]
    assert pr.data == b"first second"
    assert rfile.closed
    assert tr.is_closing()


async def test_read_pipe_pause_resume_and_close():
    skip_without_pipe_is_reading()
    rfd, wfd = os.pipe()
    tr, pr = await read_pipe(open(rfd, "rb", buffering=0))
    tr.pause_reading()
    assert not tr.is_reading()
    os.write(wfd, b"held back")
    await asyncio.sleep(0.03)
    assert pr.data == b""
    tr.resume_reading()
    await pr.wait_for_data(9)
    tr.close()
    assert tr.is_closing()
    assert await wait_for(pr.lost) is None
    assert "eof" not in pr.events
    os.close(wfd)


async def test_write_pipe_write_and_close_flushes():
    rfd, wfd = os.pipe()
    wfile = open(wfd, "wb", buffering=0)
    tr, pr = await write_pipe(wfile)
    assert isinstance(tr, asyncio.WriteTransport)
    assert tr.get_extra_info("pipe") is wfile
    assert tr.can_write_eof()
    payload = os.urandom(1024 * 1024)        # far more than the pipe holds
    tr.write(payload)
    assert tr.get_write_buffer_size() > 0
    tr.close()
    assert tr.is_closing()
    loop = asyncio.get_running_loop()
    got = bytearray()
    os.set_blocking(rfd, False)
    async with asyncio.timeout(10):
        while True:
            try:
                chunk = os.read(rfd, 1 << 16)
            except BlockingIOError:
                await asyncio.sleep(0.001)
                continue
            if not chunk:
                break
            got += chunk
    os.close(rfd)
    assert bytes(got) == payload
    assert await wait_for(pr.lost) is None
    assert wfile.closed


async def test_write_pipe_flow_control_and_abort():
    rfd, wfd = os.pipe()
    tr, pr = await write_pipe(open(wfd, "wb", buffering=0))
    tr.set_write_buffer_limits(high=4096, low=1024)
    assert tr.get_write_buffer_limits() == (1024, 4096)
    while not pr.paused:
        tr.write(b"p" * 65536)
    assert tr.get_write_buffer_size() > 4096
    # draining the pipe resumes the protocol
    os.set_blocking(rfd, False)
    async with asyncio.timeout(10):
        while not pr.resumed:
            try:
                os.read(rfd, 1 << 20)
            except BlockingIOError:
                pass
            await asyncio.sleep(0.001)
    tr.write(b"q" * 200_000)
    tr.abort()
    assert tr.get_write_buffer_size() == 0
    assert await wait_for(pr.lost) is None
    os.close(rfd)


async def test_write_pipe_reader_goes_away():
    rfd, wfd = os.pipe()
    tr, pr = await write_pipe(open(wfd, "wb", buffering=0))
    os.close(rfd)
    exc = await wait_for(pr.lost)
    # nothing was buffered: closed quietly
    assert exc is None
    # with data buffered the loss is a BrokenPipeError
    rfd, wfd = os.pipe()
    tr, pr = await write_pipe(open(wfd, "wb", buffering=0))
    while tr.get_write_buffer_size() == 0:
        tr.write(b"b" * 65536)
    os.close(rfd)
    exc = await wait_for(pr.lost)
    assert isinstance(exc, BrokenPipeError)


async def test_write_after_close_and_write_eof():
    rfd, wfd = os.pipe()
    tr, pr = await write_pipe(open(wfd, "wb", buffering=0))
    tr.write(b"before")
    tr.write_eof()
    tr.write(b"after")    # dropped: the pipe is closing
    await wait_for(pr.lost)
    with open(rfd, "rb") as r:
        assert r.read() == b"before"
    with pytest.raises(AssertionError):
        tr.write("text")


async def test_pipe_refuses_regular_files():
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryFile() as f:
        with pytest.raises(ValueError, match="Pipe transport is for pipes/sockets only."):
            await loop.connect_read_pipe(PipeRecorder, f)
        with pytest.raises(ValueError, match="Pipe transport is only for pipes, sockets "
                                             "and character devices"):
            await loop.connect_write_pipe(PipeRecorder, f)


async def test_socketpair_as_pipes():
    a, b = socket.socketpair()
    rtr, rpr = await read_pipe(a)
    wtr, wpr = await write_pipe(b)
    wtr.write(b"through a socketpair")
    await rpr.wait_for_data(20)
    wtr.close()
    await wait_for(wpr.lost)
    assert await wait_for(rpr.lost) is None
    assert a.fileno() == -1 and b.fileno() == -1


async def test_fifo(tmp_path):
    path = str(tmp_path / "fifo")
    os.mkfifo(path)
    rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    wfd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    rtr, rpr = await read_pipe(open(rfd, "rb", buffering=0))
    wtr, wpr = await write_pipe(open(wfd, "wb", buffering=0))
    wtr.write(b"fifo data")
    await rpr.wait_for_data(9)
    wtr.close()
    await wait_for(wpr.lost)
    await wait_for(rpr.lost)


async def test_pty_read_eio_is_quiet():
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda l, ctx: errors.append(ctx))
    master, slave = os.openpty()
    mfile = open(master, "rb", buffering=0)
    tr, pr = await read_pipe(mfile)
    os.write(slave, b"to the tty\n")
    await pr.wait_for_data(10)
    os.close(slave)
    exc = await wait_for(pr.lost)
    # the master reads EIO once the slave is gone: an OSError, not reported
    assert isinstance(exc, OSError) and exc.errno == errno.EIO
    assert errors == []


async def test_pty_write():
    master, slave = os.openpty()
    sfile = open(slave, "wb", buffering=0)
    tr, pr = await write_pipe(sfile)
    tr.write(b"abc\n")
    await asyncio.sleep(0.01)
    assert os.read(master, 100).startswith(b"abc")
    tr.close()
    await wait_for(pr.lost)
    os.close(master)


async def test_read_pipe_data_received_raising_is_reported():
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda l, ctx: errors.append(ctx))

    class Bad(PipeRecorder):
        def data_received(self, data):
            super().data_received(data)
            raise ZeroDivisionError

    rfd, wfd = os.pipe()
    tr, pr = await loop.connect_read_pipe(Bad, open(rfd, "rb", buffering=0))
    os.write(wfd, b"x")
    await pr.wait_for_data(1)
    await asyncio.sleep(0.01)
    assert len(errors) == 1 and isinstance(errors[0]["exception"], ZeroDivisionError)
    # the pipe stays open, as asyncio's does
    os.write(wfd, b"y")
    await pr.wait_for_data(2)
    os.close(wfd)
    await wait_for(pr.lost)


async def test_pipe_reprs():
    rfd, wfd = os.pipe()
    rtr, rpr = await read_pipe(open(rfd, "rb", buffering=0))
    wtr, wpr = await write_pipe(open(wfd, "wb", buffering=0))
    assert f"fd={rfd}" in repr(rtr) and "polling" in repr(rtr)
    assert f"fd={wfd}" in repr(wtr) and "bufsize=0" in repr(wtr)
    wtr.close()
    await wait_for(wpr.lost)
    await wait_for(rpr.lost)
    assert "closed" in repr(rtr) and "closed" in repr(wtr)
