"""Shared pieces of the stream, server and socket tests."""

import asyncio
import socket

import tonio_loop


def is_tonio(loop=None):
    loop = loop or asyncio.get_running_loop()
    return isinstance(loop, tonio_loop.Loop)


class Recorder(asyncio.Protocol):
    """A protocol that writes down everything that happens to it."""

    def __init__(self, *, keep_open=False, echo=False):
        loop = asyncio.get_running_loop()
        self.events = []
        self.chunks = []
        self.received = 0
        self.transport = None
        self.keep_open = keep_open
        self.echo = echo
        self.made = loop.create_future()
        self.lost = loop.create_future()
        self.eof = loop.create_future()
        self.exc = None
        self.paused = 0
        self.resumed = 0

    def connection_made(self, transport):
        self.events.append("made")
        self.transport = transport
        self.made.set_result(transport)

    # With worker threads (TONIO_THREADS) the protocol's callbacks and the
    # test's tasks run on different threads: a list append and an attribute
    # store are safe beside a reader there; a growing bytearray is not, nor
    # is join() walking the list itself while it grows (free-threaded
    # Python: "sequence changed size"), so it joins a copy.
    @property
    def data(self):
        return b"".join(self.chunks[:])

    def data_received(self, data):
        self.events.append("data")
        self.chunks.append(data)
        self.received += len(data)
        if self.echo:
            self.transport.write(data)

    def eof_received(self):
        self.events.append("eof")
        if not self.eof.done():
            self.eof.set_result(None)
        return self.keep_open

    def pause_writing(self):
        self.paused += 1

    def resume_writing(self):
        self.resumed += 1

    def connection_lost(self, exc):
        self.events.append("lost")
        self.exc = exc
        self.lost.set_result(exc)

    async def wait_for_data(self, n, timeout=5):
        async with asyncio.timeout(timeout):
            while self.received < n:
                await asyncio.sleep(0.001)
        return bytes(self.data)


class BufferedRecorder(asyncio.BufferedProtocol):
    """A BufferedProtocol reading into a small buffer of its own."""

    def __init__(self, size=1024):
        loop = asyncio.get_running_loop()
        self.buf = bytearray(size)
        self.chunks = []
        self.sizehints = []
        self.transport = None
        self.made = loop.create_future()
        self.lost = loop.create_future()
        self.eof_count = 0

    def connection_made(self, transport):
        self.transport = transport
        self.made.set_result(transport)

    def get_buffer(self, sizehint):
        self.sizehints.append(sizehint)
        return self.buf

    @property
    def data(self):     # see Recorder.data
        return b"".join(self.chunks[:])

    def buffer_updated(self, nbytes):
        self.chunks.append(bytes(self.buf[:nbytes]))

    def eof_received(self):
        self.eof_count += 1

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def recording(make=None):
    """A protocol factory that keeps every protocol it made, and that list."""
    made = []

    def factory():
        protocol = (make or Recorder)()
        made.append(protocol)
        return protocol

    return factory, made


async def wait_for(fut, timeout=5):
    return await asyncio.wait_for(fut, timeout)


async def tcp_server(factory, **kwargs):
    """A server on 127.0.0.1 and its address."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, "127.0.0.1", 0, **kwargs)
    return server, server.sockets[0].getsockname()


async def close_server(server):
    server.close()
    await asyncio.wait_for(server.wait_closed(), 5)


def raw_client(addr, family=socket.AF_INET):
    """A plain blocking client socket connected to addr."""
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(addr)
    return s


def recv_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def recv_all(sock):
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
