"""create_datagram_endpoint and the datagram transport, on both loops."""

import asyncio
import contextvars
import errno
import os
import socket
import sys
import tempfile
import time

import pytest

from .netutil import is_tonio, wait_for

HEADER = 8 if sys.version_info >= (3, 13) else 0   # asyncio 3.13 counts 8 per datagram


class DgramRecorder(asyncio.DatagramProtocol):
    """Writes down datagrams, errors and the life cycle."""

    def __init__(self, *, echo=False):
        loop = asyncio.get_running_loop()
        self.events = []
        self.datagrams = []
        self.errors = []
        self.transport = None
        self.echo = echo
        self.made = loop.create_future()
        self.lost = loop.create_future()
        self.paused = 0
        self.resumed = 0
        self.waiting = None

    def connection_made(self, transport):
        self.events.append("made")
        self.transport = transport
        self.made.set_result(transport)

    def datagram_received(self, data, addr):
        self.events.append("datagram")
        self.datagrams.append((data, addr))
        if self.echo:
            self.transport.sendto(data, addr)
        self._wake()

    def error_received(self, exc):
        self.events.append("error")
        self.errors.append(exc)
        self._wake()

    def pause_writing(self):
        self.paused += 1

    def resume_writing(self):
        self.resumed += 1

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost.set_result(exc)

    def _wake(self):
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_result(None)

    async def _wait_count(self, items, n, timeout):
        async with asyncio.timeout(timeout):
            while True:
                # the future first: a datagram_received() on another worker
                # between the count and the future would wake nobody
                self.waiting = asyncio.get_running_loop().create_future()
                if len(items) >= n:
                    break
                await self.waiting
        return items

    async def wait_datagrams(self, n, timeout=5):
        return await self._wait_count(self.datagrams, n, timeout)

    async def wait_errors(self, n, timeout=5):
        return await self._wait_count(self.errors, n, timeout)


def dead_address():
    """A UDP address on 127.0.0.1 where nobody listens (any more)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()


async def endpoint(**kwargs):
    loop = asyncio.get_running_loop()
    return await loop.create_datagram_endpoint(DgramRecorder, **kwargs)


async def close(*transports):
    # asyncio drops the transport's protocol once connection_lost() ran
    protocols = [tr.get_protocol() for tr in transports]
    for tr in transports:
        tr.close()
    for pr in protocols:
        await wait_for(pr.lost)


# ---- addresses and the transport --------------------------------------------------

async def test_echo_between_endpoints():
    st, sp = await endpoint(local_addr=("127.0.0.1", 0))
    sp.echo = True
    server_addr = st.get_extra_info("sockname")
    ct, cp = await endpoint(remote_addr=server_addr)
    # asyncio 3.11's transport lacks the base class (added in 3.12); ours has it
    if sys.version_info >= (3, 12) or is_tonio():
        assert isinstance(st, asyncio.DatagramTransport)
    assert isinstance(st, asyncio.BaseTransport)
    assert sp.events == ["made"] and cp.events == ["made"]
    assert st.get_extra_info("peername") is None
    assert ct.get_extra_info("peername") == server_addr
    client_addr = ct.get_extra_info("sockname")
    for i in range(5):
        ct.sendto(b"ping %d" % i)
    got = await cp.wait_datagrams(5)
    assert got == [(b"ping %d" % i, server_addr) for i in range(5)]
    assert sp.datagrams == [(b"ping %d" % i, client_addr) for i in range(5)]
    assert st.get_write_buffer_size() == 0
    await close(st, ct)
    assert sp.events[-1] == "lost" and cp.events[-1] == "lost"
    assert st.is_closing() and ct.is_closing()


async def test_extra_info_socket_view():
    tr, _ = await endpoint(local_addr=("127.0.0.1", 0))
    sock = tr.get_extra_info("socket")
    assert sock.family == socket.AF_INET and sock.type == socket.SOCK_DGRAM
    assert sock.getsockname() == tr.get_extra_info("sockname")
    assert tr.get_extra_info("nothing", "dflt") == "dflt"
    await close(tr)
    assert tr.get_extra_info("sockname")[0] == "127.0.0.1"


async def test_unconnected_sendto_with_addresses():
    a, ap = await endpoint(local_addr=("127.0.0.1", 0))
    b, bp = await endpoint(local_addr=("127.0.0.1", 0))
    c, cp = await endpoint(local_addr=("127.0.0.1", 0))
    a_addr = a.get_extra_info("sockname")
    a.sendto(b"to b", b.get_extra_info("sockname"))
    a.sendto(b"to c", c.get_extra_info("sockname"))
    a.sendto(bytearray(b"ba"), b.get_extra_info("sockname"))
    a.sendto(memoryview(b"xmv")[1:], c.get_extra_info("sockname"))
    assert await bp.wait_datagrams(2) == [(b"to b", a_addr), (b"ba", a_addr)]
    assert await cp.wait_datagrams(2) == [(b"to c", a_addr), (b"mv", a_addr)]
    # a name, not a number, goes through the resolver as asyncio's does
    b.sendto(b"by name", ("localhost", a_addr[1]))
    got = await ap.wait_datagrams(1)
    assert got[0][0] == b"by name"
    await close(a, b, c)


async def test_sendto_argument_checks():
    st, _ = await endpoint(local_addr=("127.0.0.1", 0))
    ct, cp = await endpoint(remote_addr=st.get_extra_info("sockname"))
    with pytest.raises(TypeError, match="data argument must be a bytes-like object, not 'str'"):
        ct.sendto("text")
    other = ("127.0.0.1", 9)
    with pytest.raises(ValueError, match=r"Invalid address: must be None or \('127.0.0.1', \d+\)"):
        ct.sendto(b"x", other)
    # the connected address itself, or None, are fine
    ct.sendto(b"x", st.get_extra_info("sockname"))
    ct.sendto(b"y", None)
    ct.sendto(data=b"z", addr=None)
    with pytest.raises(TypeError):
        ct.sendto()
    with pytest.raises(TypeError):
        ct.sendto(b"x", None, None)
    with pytest.raises(TypeError):
        ct.sendto(b"x", address=None)
    await close(st, ct)


async def test_unconnected_sendto_bad_address_is_fatal():
    # asyncio hands the address to socket.sendto(): a TypeError there is a
    # fatal error (reported, transport closed), an OSError goes to
    # error_received()
    loop = asyncio.get_running_loop()
    contexts = []
    loop.set_exception_handler(lambda loop, ctx: contexts.append(ctx))
    tr, pr = await endpoint(local_addr=("127.0.0.1", 0))
    tr.sendto(b"x", ("127.0.0.1",))
    assert await wait_for(pr.lost) is not None
    assert contexts[0]["message"] == "Fatal write error on datagram transport"
    assert isinstance(contexts[0]["exception"], TypeError)
    assert contexts[0]["transport"] is tr


async def test_sendto_without_address_on_unconnected_socket():
    loop = asyncio.get_running_loop()
    contexts = []
    loop.set_exception_handler(lambda loop, ctx: contexts.append(ctx))
    tr, pr = await endpoint(local_addr=("127.0.0.1", 0))
    tr.sendto(b"nowhere")
    assert isinstance(await wait_for(pr.lost), TypeError)
    assert contexts[0]["message"] == "Fatal write error on datagram transport"


async def test_empty_datagram():
    st, sp = await endpoint(local_addr=("127.0.0.1", 0))
    ct, _ = await endpoint(remote_addr=st.get_extra_info("sockname"))
    ct.sendto(b"")
    ct.sendto(b"after")
    got = await sp.wait_datagrams(1)
    await asyncio.sleep(0.05)
    if sys.version_info >= (3, 13):
        assert [d for d, _ in sp.datagrams] == [b"", b"after"]
    else:
        assert [d for d, _ in got] == [b"after"]
    await close(st, ct)


async def test_error_received_for_refused_port():
    # a connected UDP socket hears about ICMP port unreachable
    tr, pr = await endpoint(remote_addr=dead_address())
    for _ in range(3):
        tr.sendto(b"anyone?")
        await asyncio.sleep(0.01)
    errors = await pr.wait_errors(1)
    assert isinstance(errors[0], ConnectionRefusedError)
    assert errors[0].errno == errno.ECONNREFUSED
    assert not tr.is_closing()     # errors do not close a datagram transport
    assert "lost" not in pr.events
    await close(tr)


async def test_protocol_errors_are_reported_and_transport_stays():
    loop = asyncio.get_running_loop()
    contexts = []
    loop.set_exception_handler(lambda loop, ctx: contexts.append(ctx))

    class Faulty(DgramRecorder):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            if data == b"boom":
                raise ZeroDivisionError("in datagram_received")

    st, sp = await loop.create_datagram_endpoint(Faulty, local_addr=("127.0.0.1", 0))
    ct, _ = await endpoint(remote_addr=st.get_extra_info("sockname"))
    ct.sendto(b"boom")
    ct.sendto(b"fine")
    await sp.wait_datagrams(2)
    assert [d for d, _ in sp.datagrams] == [b"boom", b"fine"]
    assert len(contexts) == 1
    assert isinstance(contexts[0]["exception"], ZeroDivisionError)
    assert not st.is_closing()
    await close(st, ct)


async def test_callbacks_run_in_creation_context():
    var = contextvars.ContextVar("var", default="unset")
    seen = []

    class Ctx(DgramRecorder):
        def connection_made(self, transport):
            seen.append(("made", var.get()))
            super().connection_made(transport)

        def datagram_received(self, data, addr):
            seen.append(("datagram", var.get()))
            super().datagram_received(data, addr)

        def error_received(self, exc):
            seen.append(("error", var.get()))
            super().error_received(exc)

        def connection_lost(self, exc):
            seen.append(("lost", var.get()))
            super().connection_lost(exc)

    loop = asyncio.get_running_loop()

    async def make():
        var.set("creator")
        return await loop.create_datagram_endpoint(Ctx, local_addr=("127.0.0.1", 0))

    tr, pr = await asyncio.create_task(make())
    var.set("caller")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"hi", tr.get_extra_info("sockname"))
        await pr.wait_datagrams(1)
    await close(tr)
    assert seen[:2] == [("made", "creator"), ("datagram", "creator")]
    # asyncio runs connection_lost() in the context of whoever called
    # close(); tonio_loop keeps every protocol callback in the context the
    # endpoint was made in (docs/design.md, "Protocol callbacks and contextvars"), as its TCP transports do
    assert seen[2] == ("lost", "creator" if is_tonio() else "caller")


# ---- flow control, buffering, close and abort ------------------------------------

@pytest.fixture
def unix_peer():
    """A bound AF_UNIX datagram socket with a small receive queue, and the
    path to connect an endpoint to: a full receiver makes the sender block
    (EAGAIN), which UDP on loopback never does."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "peer.sock")
        b = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        b.bind(path)
        b.setblocking(False)
        yield b, path
        b.close()


async def unix_endpoint(path):
    tr, pr = await endpoint(remote_addr=path, family=socket.AF_UNIX)
    tr.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return tr, pr


def drain(sock):
    got = []
    while True:
        try:
            got.append(sock.recv(65536))
        except BlockingIOError:
            return got


def fill(tr, make, limit=100000):
    """sendto() until the kernel refuses and the transport buffers."""
    sent = []
    while tr.get_write_buffer_size() == 0:
        msg = make(len(sent))
        tr.sendto(msg)
        sent.append(msg)
        assert len(sent) < limit and not tr.is_closing(), "never buffered"
    return sent


async def test_buffer_on_eagain_and_flow_control(unix_peer):
    b, path = unix_peer
    tr, pr = await unix_endpoint(path)
    assert tr.get_extra_info("peername") == path
    tr.set_write_buffer_limits(high=2000, low=500)
    assert tr.get_write_buffer_limits() == (500, 2000)
    sent = []
    i = 0
    while pr.paused == 0:
        msg = b"%05d" % i + b"x" * 95
        tr.sendto(msg)
        sent.append(msg)
        i += 1
        assert i < 10000 and not tr.is_closing(), "never paused"
    assert tr.get_write_buffer_size() > 2000
    assert pr.paused == 1 and pr.resumed == 0
    buffered = tr.get_write_buffer_size()
    tr.sendto(b"more")
    sent.append(b"more")
    assert tr.get_write_buffer_size() == buffered + 4 + HEADER
    assert pr.paused == 1      # told once
    got = []
    async with asyncio.timeout(5):
        while len(got) < len(sent):
            got += drain(b)
            await asyncio.sleep(0.001)
    assert got == sent         # in order, nothing lost
    assert pr.resumed == 1
    assert pr.errors == []
    await close(tr)


async def test_close_flushes_buffer_first(unix_peer):
    b, path = unix_peer
    tr, pr = await unix_endpoint(path)
    sock = tr.get_extra_info("socket")
    sent = fill(tr, lambda i: os.urandom(200))
    tr.close()
    assert tr.is_closing()
    await asyncio.sleep(0.02)
    assert not pr.lost.done()          # waits for the buffer
    got = []
    async with asyncio.timeout(5):
        while not pr.lost.done():
            got += drain(b)
            await asyncio.sleep(0.001)
    got += drain(b)
    assert got == sent
    assert pr.lost.result() is None
    assert sock.fileno() == -1


async def test_abort_drops_buffer(unix_peer):
    b, path = unix_peer
    tr, pr = await unix_endpoint(path)
    sock = tr.get_extra_info("socket")
    fill(tr, lambda i: b"z" * 200)
    tr.abort()
    assert tr.is_closing()
    assert await wait_for(pr.lost) is None
    assert sock.fileno() == -1


async def test_writes_after_close_of_connected_transport_warn():
    st, _ = await endpoint(local_addr=("127.0.0.1", 0))
    ct, cp = await endpoint(remote_addr=st.get_extra_info("sockname"))
    ct.abort()
    await wait_for(cp.lost)
    for _ in range(8):
        ct.sendto(b"lost")         # counted, logged after a few, never raises
    assert ct._conn_lost >= 8
    await close(st)


async def test_pause_and_resume_reading():
    st, sp = await endpoint(local_addr=("127.0.0.1", 0))
    ct, _ = await endpoint(remote_addr=st.get_extra_info("sockname"))
    try:
        assert st.is_reading()
    except NotImplementedError:
        await close(st, ct)
        pytest.skip("this Python's asyncio datagram transport has no is_reading() "
                    "(3.11.2, Debian's debug build: it came in a later 3.11)")
    st.pause_reading()
    assert not st.is_reading()
    ct.sendto(b"held")
    await asyncio.sleep(0.03)
    assert sp.datagrams == []
    st.resume_reading()
    await sp.wait_datagrams(1)
    await close(st, ct)
    assert not st.is_reading()


# ---- create_datagram_endpoint's arguments ----------------------------------------

async def test_argument_errors():
    loop = asyncio.get_running_loop()
    with pytest.raises(ValueError, match="unexpected address family"):
        await loop.create_datagram_endpoint(DgramRecorder)
    with pytest.raises(TypeError, match="2-tuple is expected"):
        await loop.create_datagram_endpoint(DgramRecorder, local_addr="127.0.0.1")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        with pytest.raises(ValueError, match=r"A (UDP|datagram) [Ss]ocket was expected"):
            await loop.create_datagram_endpoint(DgramRecorder, sock=s)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        with pytest.raises(ValueError, match=r"socket modifier keyword arguments can not be used "
                                             r"when sock is specified. \(local_addr=\('1', 2\)"):
            await loop.create_datagram_endpoint(DgramRecorder, sock=s, local_addr=("1", 2))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        with pytest.raises(OSError) as err:
            await loop.create_datagram_endpoint(DgramRecorder, local_addr=taken.getsockname(),
                                                family=socket.AF_INET)
        assert err.value.errno == errno.EADDRINUSE


async def test_family_only_makes_unbound_socket():
    tr, pr = await endpoint(family=socket.AF_INET)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        tr.sendto(b"from nowhere", s.getsockname())
        s.settimeout(5)
        data, _ = s.recvfrom(100)
    assert data == b"from nowhere"
    await close(tr)


async def test_reuse_port_and_broadcast():
    tr, _ = await endpoint(local_addr=("127.0.0.1", 0), reuse_port=True, allow_broadcast=True)
    sock = tr.get_extra_info("socket")
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST)
    # allow_broadcast with remote_addr does not connect: sendto() uses it
    tr2, _ = await endpoint(remote_addr=tr.get_extra_info("sockname"), allow_broadcast=True)
    assert tr2.get_extra_info("peername") is None
    tr2.sendto(b"via address")
    await close(tr, tr2)


async def test_sock_argument():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    tr, pr = await endpoint(sock=s)
    assert s.gettimeout() == 0
    assert tr.get_extra_info("sockname") == s.getsockname()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.sendto(b"hello", s.getsockname())
        await pr.wait_datagrams(1)
    await close(tr)
    assert s.fileno() == -1


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
async def test_ipv6():
    try:
        st, sp = await endpoint(local_addr=("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    sp.echo = True
    ct, cp = await endpoint(remote_addr=st.get_extra_info("sockname")[:2])
    ct.sendto(b"six")
    got = await cp.wait_datagrams(1)
    assert got[0][0] == b"six" and got[0][1][0] == "::1" and len(got[0][1]) == 4
    await close(st, ct)


async def test_unix_datagram_paths():
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory() as d:
        spath = os.path.join(d, "server.sock")
        cpath = os.path.join(d, "client.sock")
        st, sp = await endpoint(local_addr=spath, family=socket.AF_UNIX)
        sp.echo = True
        assert st.get_extra_info("sockname") == spath
        ct, cp = await endpoint(local_addr=cpath, remote_addr=spath, family=socket.AF_UNIX)
        assert ct.get_extra_info("peername") == spath
        ct.sendto(b"unix")
        assert await cp.wait_datagrams(1) == [(b"unix", spath)]
        assert sp.datagrams == [(b"unix", cpath)]
        await close(st, ct)
        # a stale socket file is removed before binding again
        assert os.path.exists(spath)
        st, _ = await endpoint(local_addr=spath, family=socket.AF_UNIX)
        await close(st)
        with pytest.raises(TypeError, match="string is expected"):
            await loop.create_datagram_endpoint(DgramRecorder, local_addr=(spath,),
                                                family=socket.AF_UNIX)


async def test_repr_states():
    tr, _ = await endpoint(local_addr=("127.0.0.1", 0))
    fd = tr.get_extra_info("socket").fileno()
    assert repr(tr).endswith(f" fd={fd} read=polling write=<idle, bufsize=0>>")
    pr = tr.get_protocol()
    tr.close()
    assert " closing fd=" in repr(tr)
    await wait_for(pr.lost)
    assert repr(tr).endswith(f" closed fd={fd}>")


# ---- stress -------------------------------------------------------------------------

@pytest.mark.slow
async def test_flood_with_slow_protocol():
    """Thousands of datagrams at a protocol that takes its time: the kernel
    drops what does not fit, nothing crashes, the loop keeps answering, and
    errors from a dead peer are reported, not raised."""
    loop = asyncio.get_running_loop()

    class Slow(DgramRecorder):
        def datagram_received(self, data, addr):
            time.sleep(0.0002)
            super().datagram_received(data, addr)

    st, sp = await loop.create_datagram_endpoint(Slow, local_addr=("127.0.0.1", 0))
    target = st.get_extra_info("sockname")
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    for s in senders:
        s.setblocking(False)
    sent = 0
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    tick_task = asyncio.create_task(ticker())
    payload = b"f" * 512
    for _ in range(20):
        for s in senders:
            for _ in range(200):
                try:
                    s.sendto(payload, target)
                    sent += 1
                except BlockingIOError:
                    break
        await asyncio.sleep(0.002)
    await asyncio.sleep(0.2)
    tick_task.cancel()
    for s in senders:
        s.close()
    received = len(sp.datagrams)
    assert 0 < received <= sent
    assert all(d == payload for d, _ in sp.datagrams)
    assert ticks > 10           # other work ran during the flood
    # a dead peer's refusals arrive as error_received, the transport stays
    ct, cp = await endpoint(remote_addr=dead_address())
    for _ in range(50):
        ct.sendto(payload)
        await asyncio.sleep(0)
    await cp.wait_errors(1)
    assert all(isinstance(e, ConnectionRefusedError) for e in cp.errors)
    assert not ct.is_closing()
    await close(st, ct)
