"""TLS on every transport, on asyncio's loop and tonio_loop's, with real
certificates (tests/tlsutil.py) over real sockets."""

import asyncio
import gc
import hashlib
import logging
import os
import socket
import ssl
import threading
import weakref

import pytest

from .netutil import Recorder, close_server, raw_client, recording, wait_for
from .tlsutil import make_certs

TLS12, TLS13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    made = make_certs(str(tmp_path_factory.mktemp("certs")))
    if made is None:
        pytest.skip("no openssl command to make the test certificates")
    return made


async def tls_pair(certs, server_factory=None, client_factory=None, *, server_ctx=None,
                   client_ctx=None, **client_kwargs):
    """(server, client transport, client protocol, server protocol) over TLS"""
    loop = asyncio.get_running_loop()
    make_server_proto, accepted = recording(server_factory)
    server = await loop.create_server(make_server_proto, "127.0.0.1", 0,
                                      ssl=server_ctx or certs.server_context())
    addr = server.sockets[0].getsockname()
    tr, pr = await loop.create_connection(client_factory or Recorder, *addr,
                                          ssl=client_ctx or certs.client_context(),
                                          server_hostname="localhost", **client_kwargs)
    await wait_for(pr.made)
    while not accepted:
        await asyncio.sleep(0)
    await wait_for(accepted[0].made)
    return server, tr, pr, accepted[0]


class _Thread(threading.Thread):
    """A peer in a thread with a blocking socket, for misbehaving peers."""

    def __init__(self, target):
        super().__init__(daemon=True)
        self.target = target
        self.error = None
        self.result = None

    def run(self):
        try:
            self.result = self.target()
        except BaseException as e:   # reported by join_checked()
            self.error = e

    def join_checked(self, timeout=10):
        self.join(timeout)
        assert not self.is_alive(), "peer thread hung"
        if self.error is not None:
            raise self.error
        return self.result


def raw_listener():
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    lsock.settimeout(10)
    return lsock


def peer(lsock, body):
    """Accept one connection on lsock in a thread and run body(conn)."""
    def run():
        conn, _ = lsock.accept()
        conn.settimeout(10)
        with conn:
            return body(conn)
    t = _Thread(run)
    t.start()
    return t


# ---- handshakes, versions, extra info ------------------------------------------------------

@pytest.mark.parametrize("version", [TLS12, TLS13], ids=["tls1.2", "tls1.3"])
async def test_echo_and_extra_info(certs, version):
    server, tr, pr, sp = await tls_pair(
        certs, lambda: Recorder(echo=True),
        server_ctx=certs.server_context(version=version))
    tr.write(b"hello ")
    tr.writelines([b"tls ", bytearray(b"world"), memoryview(b"!")])
    assert await pr.wait_for_data(16) == b"hello tls world!"
    sslobj = tr.get_extra_info("ssl_object")
    assert isinstance(sslobj, ssl.SSLObject)
    assert sslobj.version() == {TLS12: "TLSv1.2", TLS13: "TLSv1.3"}[version]
    assert not sslobj.server_side and sslobj.server_hostname == "localhost"
    peercert = tr.get_extra_info("peercert")
    assert dict(x[0] for x in peercert["subject"])["commonName"] == "localhost"
    assert tr.get_extra_info("cipher") == sslobj.cipher()
    assert tr.get_extra_info("compression") == sslobj.compression()
    assert isinstance(tr.get_extra_info("sslcontext"), ssl.SSLContext)
    # the socket transport's extra info shows through
    assert tr.get_extra_info("peername") == server.sockets[0].getsockname()
    assert tr.get_extra_info("socket").family == socket.AF_INET
    assert tr.get_extra_info("nothing", "dflt") == "dflt"
    assert sp.transport.get_extra_info("ssl_object").server_side
    assert sp.transport.get_extra_info("peercert") is None
    assert isinstance(tr, asyncio.Transport)
    assert tr.can_write_eof() is False
    with pytest.raises(NotImplementedError):
        tr.write_eof()
    tr.close()
    assert tr.is_closing()
    assert await wait_for(pr.lost) is None
    assert await wait_for(sp.lost) is None
    # close_notify reached the server: eof_received, then connection_lost
    assert sp.events == ["made", "data", "eof", "lost"] or sp.events[-2:] == ["eof", "lost"]
    assert pr.events[0] == "made" and pr.events[-1] == "lost"
    await close_server(server)


async def test_server_closes_first_client_sees_eof(certs):
    server, tr, pr, sp = await tls_pair(certs)
    sp.transport.write(b"bye")
    sp.transport.close()
    assert await wait_for(pr.eof) is None
    assert await wait_for(pr.lost) is None
    assert bytes(pr.data) == b"bye"
    assert pr.events == ["made", "data", "eof", "lost"]
    assert await wait_for(sp.lost) is None
    await close_server(server)


async def test_eof_received_true_warns(certs, caplog):
    server, tr, pr, sp = await tls_pair(certs, client_factory=lambda: Recorder(keep_open=True))
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        sp.transport.close()
        await wait_for(pr.lost)
    assert "returning true from eof_received() has no effect when using ssl" in caplog.text
    await wait_for(sp.lost)
    await close_server(server)


async def test_client_certificate(certs):
    server_ctx = certs.server_context(require_client_cert=True)
    client_ctx = certs.client_context(certfile=certs.client)
    server, tr, pr, sp = await tls_pair(certs, lambda: Recorder(echo=True),
                                        server_ctx=server_ctx, client_ctx=client_ctx)
    peer = sp.transport.get_extra_info("peercert")
    assert dict(x[0] for x in peer["subject"])["commonName"] == "tonio client"
    tr.write(b"x")
    assert await pr.wait_for_data(1) == b"x"
    tr.close()
    await wait_for(pr.lost)
    await wait_for(sp.lost)
    await close_server(server)


async def test_missing_client_certificate_tls12(certs):
    loop = asyncio.get_running_loop()
    make, accepted = recording()
    server = await loop.create_server(
        make, "127.0.0.1", 0,
        ssl=certs.server_context(require_client_cert=True, version=TLS12))
    # the server's alert, or the reset of a server that closed before its
    # alert was read (asyncio's SSLProtocol aborts the socket on failure)
    try:
        with pytest.raises((ssl.SSLError, ConnectionResetError)) as info:
            await loop.create_connection(Recorder, *server.sockets[0].getsockname(),
                                         ssl=certs.client_context(),
                                         server_hostname="localhost")
    finally:
        await close_server(server)
    if isinstance(info.value, ssl.SSLError):
        assert info.value.reason in ("SSLV3_ALERT_HANDSHAKE_FAILURE",
                                     "TLSV13_ALERT_CERTIFICATE_REQUIRED")
    assert accepted == [] or not accepted[0].made.done()


@pytest.mark.parametrize("hostname", ["other.example", "127.0.0.2"])
async def test_hostname_mismatch(certs, hostname):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Recorder, "127.0.0.1", 0, ssl=certs.server_context())
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        await loop.create_connection(Recorder, *server.sockets[0].getsockname(),
                                     ssl=certs.client_context(), server_hostname=hostname)
    assert "mismatch" in info.value.verify_message
    await close_server(server)


async def test_host_name_checked_from_host_argument(certs):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Recorder, "127.0.0.1", 0,
                                      ssl=certs.server_context(certs.other_host))
    port = server.sockets[0].getsockname()[1]
    # server_hostname defaults to the host: "127.0.0.1" is not other.example
    with pytest.raises(ssl.SSLCertVerificationError):
        await loop.create_connection(Recorder, "127.0.0.1", port, ssl=certs.client_context())
    # with server_hostname="" nothing is checked (check_hostname must be off)
    ctx = certs.client_context()
    ctx.check_hostname = False
    tr, pr = await loop.create_connection(Recorder, "127.0.0.1", port, ssl=ctx,
                                          server_hostname="")
    assert tr.get_extra_info("ssl_object").server_hostname is None
    tr.close()
    await wait_for(pr.lost)
    await close_server(server)


async def test_expired_certificate(certs):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Recorder, "127.0.0.1", 0,
                                      ssl=certs.server_context(certs.expired))
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        await loop.create_connection(Recorder, *server.sockets[0].getsockname(),
                                     ssl=certs.client_context(), server_hostname="localhost")
    assert info.value.verify_message == "certificate has expired"
    await close_server(server)


async def test_untrusted_certificate_default_context(certs):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Recorder, "127.0.0.1", 0, ssl=certs.server_context())
    # ssl=True: the default context, which does not know our CA
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        await loop.create_connection(Recorder, *server.sockets[0].getsockname(), ssl=True,
                                     server_hostname="localhost")
    assert "self-signed" in info.value.verify_message or "local issuer" in \
        info.value.verify_message
    await close_server(server)


# ---- argument errors ----------------------------------------------------------------------

async def test_argument_errors(certs):
    loop = asyncio.get_running_loop()
    ctx = certs.client_context()
    for kwargs, msg in [
        (dict(server_hostname="x"), "server_hostname is only meaningful with ssl"),
        (dict(ssl_handshake_timeout=1), "ssl_handshake_timeout is only meaningful with ssl"),
        (dict(ssl_shutdown_timeout=1), "ssl_shutdown_timeout is only meaningful with ssl"),
    ]:
        with pytest.raises(ValueError) as info:
            await loop.create_connection(Recorder, "127.0.0.1", 1, **kwargs)
        assert str(info.value) == msg
    sock = socket.socket()
    try:
        with pytest.raises(ValueError) as info:
            await loop.create_connection(Recorder, sock=sock, ssl=ctx)
        assert str(info.value) == ("You must set server_hostname when using ssl "
                                   "without a host")
    finally:
        sock.close()
    with pytest.raises(ValueError) as info:
        await loop.create_server(Recorder, "127.0.0.1", 0, ssl_handshake_timeout=1)
    assert str(info.value) == "ssl_handshake_timeout is only meaningful with ssl"
    # the timeouts themselves are checked once connected (by the TLS layer)
    server = await loop.create_server(Recorder, "127.0.0.1", 0, ssl=certs.server_context())
    addr = server.sockets[0].getsockname()
    for kwargs, msg in [
        (dict(ssl_handshake_timeout=0),
         "ssl_handshake_timeout should be a positive number, got 0"),
        (dict(ssl_shutdown_timeout=-1.5),
         "ssl_shutdown_timeout should be a positive number, got -1.5"),
    ]:
        # (on our own socket: 3.12's create_connection leaves it open then)
        sock = socket.create_connection(addr)
        try:
            with pytest.raises(ValueError) as info:
                await loop.create_connection(Recorder, sock=sock, ssl=ctx,
                                             server_hostname="localhost", **kwargs)
            assert str(info.value) == msg
        finally:
            sock.close()
    await close_server(server)


async def test_start_tls_argument_errors(certs):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Recorder, "127.0.0.1", 0)
    tr, pr = await loop.create_connection(Recorder, *server.sockets[0].getsockname())
    with pytest.raises(TypeError) as info:
        await loop.start_tls(tr, pr, object())
    assert str(info.value).startswith("sslcontext is expected to be an instance of "
                                      "ssl.SSLContext, got <object object")
    with pytest.raises(ValueError) as info:
        await loop.start_tls(tr, pr, certs.client_context(), ssl_handshake_timeout=-1)
    assert str(info.value) == "ssl_handshake_timeout should be a positive number, got -1"
    tr.close()
    await wait_for(pr.lost)
    await close_server(server)


# ---- misbehaving peers ----------------------------------------------------------------------

async def test_handshake_timeout_client(certs):
    loop = asyncio.get_running_loop()
    lsock = raw_listener()

    def silent(conn):
        conn.recv(4096)             # the ClientHello, never answered
        conn.recv(4096)             # until the client gives up
    t = peer(lsock, silent)
    try:
        with pytest.raises(ConnectionAbortedError) as info:
            await loop.create_connection(Recorder, *lsock.getsockname(),
                                         ssl=certs.client_context(),
                                         server_hostname="localhost", ssl_handshake_timeout=0.3)
        assert str(info.value) == ("SSL handshake is taking longer than 0.3 seconds: "
                                   "aborting the connection")
        t.join_checked()
    finally:
        lsock.close()


async def test_handshake_timeout_server(certs):
    loop = asyncio.get_running_loop()
    make, accepted = recording()
    server = await loop.create_server(make, "127.0.0.1", 0, ssl=certs.server_context(),
                                      ssl_handshake_timeout=0.3)
    sock = raw_client(server.sockets[0].getsockname())
    sock.setblocking(False)
    try:
        # the server gives up on a client that says nothing: the socket closes
        assert await asyncio.wait_for(loop.sock_recv(sock, 100), 5) == b""
    finally:
        sock.close()
    assert accepted == [] or not accepted[0].made.done()
    await close_server(server)


async def test_garbage_instead_of_server_hello(certs):
    loop = asyncio.get_running_loop()
    lsock = raw_listener()

    def http(conn):
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        conn.recv(4096)
    t = peer(lsock, http)
    try:
        with pytest.raises(ssl.SSLError) as info:
            await loop.create_connection(Recorder, *lsock.getsockname(),
                                         ssl=certs.client_context(), server_hostname="localhost")
        assert info.value.reason == "WRONG_VERSION_NUMBER"
        t.join_checked()
    finally:
        lsock.close()


async def test_garbage_instead_of_client_hello(certs):
    loop = asyncio.get_running_loop()
    make, accepted = recording()
    server = await loop.create_server(make, "127.0.0.1", 0, ssl=certs.server_context())
    sock = raw_client(server.sockets[0].getsockname())
    sock.setblocking(False)
    try:
        await loop.sock_sendall(sock, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while True:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)
            if not chunk:
                break
            data += chunk
        # at most a TLS alert record, then the server closes
        assert data == b"" or data[0] == 0x15
    finally:
        sock.close()
    assert accepted == [] or not accepted[0].made.done()
    await close_server(server)


async def test_peer_vanishes_mid_handshake(certs):
    loop = asyncio.get_running_loop()
    lsock = raw_listener()
    t = peer(lsock, lambda conn: conn.recv(4096))  # reads the ClientHello, hangs up
    try:
        with pytest.raises(ConnectionResetError):
            await loop.create_connection(Recorder, *lsock.getsockname(),
                                         ssl=certs.client_context(), server_hostname="localhost")
        t.join_checked()
    finally:
        lsock.close()


async def test_peer_vanishes_mid_record(certs):
    """The server sends half a TLS record and hangs up without close_notify:
    the client loses the connection without getting the partial data."""
    loop = asyncio.get_running_loop()
    lsock = raw_listener()
    server_ctx = certs.server_context()
    ready = threading.Event()

    def half_record(conn):
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = server_ctx.wrap_bio(incoming, outgoing, server_side=True)
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                conn.sendall(outgoing.read())
                incoming.write(conn.recv(65536))
        conn.sendall(outgoing.read())
        obj.write(b"x" * 1000)
        record = outgoing.read()
        ready.wait(5)
        conn.sendall(record[:len(record) // 2])
        conn.shutdown(socket.SHUT_RDWR)
    t = peer(lsock, half_record)
    try:
        tr, pr = await loop.create_connection(Recorder, *lsock.getsockname(),
                                              ssl=certs.client_context(),
                                              server_hostname="localhost")
        ready.set()
        await wait_for(pr.lost)
        assert bytes(pr.data) == b""
        t.join_checked()
    finally:
        lsock.close()


async def test_shutdown_timeout(certs, caplog):
    """close() waits ssl_shutdown_timeout for the peer's close_notify, then
    drops the connection."""
    loop = asyncio.get_running_loop()
    lsock = raw_listener()
    server_ctx = certs.server_context()
    done = threading.Event()

    def deaf(conn):
        s = server_ctx.wrap_socket(conn, server_side=True)
        s.sendall(b"hi")
        done.wait(10)              # never reads the close_notify
        s.close()
    t = peer(lsock, deaf)
    try:
        tr, pr = await loop.create_connection(Recorder, *lsock.getsockname(),
                                              ssl=certs.client_context(),
                                              server_hostname="localhost",
                                              ssl_shutdown_timeout=0.3)
        await pr.wait_for_data(2)
        t0 = loop.time()
        tr.close()
        exc = await wait_for(pr.lost)
        assert 0.2 < loop.time() - t0 < 3
        assert exc is None or isinstance(exc, TimeoutError)
        done.set()
        t.join_checked()
    finally:
        done.set()
        lsock.close()


# ---- flow control and large transfers ------------------------------------------------------

class Sink(Recorder):
    """Counts and hashes what it gets instead of keeping it."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.count = 0
        self.digest = hashlib.sha256()
        self.target = None
        self.done = asyncio.get_running_loop().create_future()

    def data_received(self, data):
        self.count += len(data)
        self.digest.update(data)
        if self.target and self.count >= self.target and not self.done.done():
            self.done.set_result(None)


async def write_with_flow_control(tr, proto, payload, chunk=65536):
    """Writes payload, waiting whenever the transport paused the protocol."""
    for i in range(0, len(payload), chunk):
        tr.write(payload[i:i + chunk])
        while proto.paused > proto.resumed:
            await asyncio.sleep(0.001)


@pytest.mark.parametrize("version", [TLS12, TLS13], ids=["tls1.2", "tls1.3"])
async def test_large_transfers_both_ways(certs, version):
    size = 8 * 1024 * 1024
    up = os.urandom(size)
    down = os.urandom(size)
    server, tr, pr, sp = await tls_pair(certs, Sink, Sink,
                                        server_ctx=certs.server_context(version=version))
    pr.target = sp.target = size
    await asyncio.gather(write_with_flow_control(tr, pr, up),
                         write_with_flow_control(sp.transport, sp, down))
    await wait_for(asyncio.gather(pr.done, sp.done), 30)
    assert sp.count == size and sp.digest.digest() == hashlib.sha256(up).digest()
    assert pr.count == size and pr.digest.digest() == hashlib.sha256(down).digest()
    # 8 MiB does not fit in the buffers: both writers were paused and resumed.
    # With worker threads (and no GIL) the peer may read on the loop thread
    # as fast as a worker writes, and the buffers need never fill: only that
    # every pause was followed by a resume holds then.
    threaded = getattr(asyncio.get_running_loop(), "threads", 0)
    assert (threaded or pr.paused >= 1) and pr.resumed == pr.paused
    assert (threaded or sp.paused >= 1) and sp.resumed == sp.paused
    tr.close()
    await wait_for(pr.lost)
    await wait_for(sp.lost)
    await close_server(server)


async def test_pause_resume_reading(certs):
    server, tr, pr, sp = await tls_pair(certs)
    tr.pause_reading()
    assert not tr.is_reading()
    sp.transport.write(b"a" * 100_000)
    await asyncio.sleep(0.2)
    assert pr.data == b""
    tr.resume_reading()
    assert tr.is_reading()
    assert await pr.wait_for_data(100_000) == b"a" * 100_000
    # a paused reader keeps the client's writes flowing
    tr.write(b"ping")
    await sp.wait_for_data(4)
    tr.close()
    await wait_for(pr.lost)
    await wait_for(sp.lost)
    await close_server(server)


async def test_write_buffer_limits_and_size(certs):
    server, tr, pr, sp = await tls_pair(certs)
    assert tr.get_write_buffer_size() == 0
    tr.set_write_buffer_limits(high=1000)
    assert tr.get_write_buffer_limits() == (250, 1000)
    with pytest.raises(ValueError) as info:
        tr.set_write_buffer_limits(high=1, low=2)
    assert str(info.value) == "high (1) must be >= low (2) must be >= 0"
    sp.transport.pause_reading()
    # the TLS layer buffers once the socket transport below pushed back,
    # which takes what the kernel's socket buffers hold
    chunk = b"z" * 65536
    sent = 0
    while not pr.paused and sent < 256 * 1024 * 1024:
        tr.write(chunk)
        sent += len(chunk)
        await asyncio.sleep(0)
    assert pr.paused == 1 and tr.get_write_buffer_size() >= 1000
    sp.transport.resume_reading()
    assert await sp.wait_for_data(sent, timeout=20) == b"z" * sent
    assert pr.resumed == 1
    tr.close()
    await wait_for(pr.lost)
    await wait_for(sp.lost)
    await close_server(server)


# ---- the other entry points -------------------------------------------------------------------

async def test_unix_sockets(certs, tmp_path):
    loop = asyncio.get_running_loop()
    path = str(tmp_path / "tls.sock")
    make, accepted = recording(lambda: Recorder(echo=True))
    server = await loop.create_unix_server(make, path, ssl=certs.server_context())
    with pytest.raises(ValueError) as info:
        await loop.create_unix_connection(Recorder, path, ssl=certs.client_context())
    assert str(info.value) == "you have to pass server_hostname when using ssl"
    tr, pr = await loop.create_unix_connection(Recorder, path, ssl=certs.client_context(),
                                               server_hostname="localhost")
    tr.write(b"over unix")
    assert await pr.wait_for_data(9) == b"over unix"
    assert tr.get_extra_info("ssl_object").version() == "TLSv1.3"
    tr.close()
    await wait_for(pr.lost)
    await wait_for(accepted[0].lost)
    await close_server(server)


async def test_connect_accepted_socket(certs):
    loop = asyncio.get_running_loop()
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    client = socket.socket()
    client.connect(lsock.getsockname())
    conn, _ = lsock.accept()
    lsock.close()
    try:
        serve = asyncio.ensure_future(loop.connect_accepted_socket(
            lambda: Recorder(echo=True), conn, ssl=certs.server_context()))
        tr, pr = await loop.create_connection(Recorder, sock=client,
                                              ssl=certs.client_context(),
                                              server_hostname="localhost")
        str_, sp = await wait_for(serve)
        assert str_.get_extra_info("ssl_object").server_side
        tr.write(b"accepted")
        assert await pr.wait_for_data(8) == b"accepted"
        tr.close()
        await wait_for(pr.lost)
        await wait_for(sp.lost)
    finally:
        client.close()
        conn.close()


async def test_start_tls_upgrade_both_sides(certs):
    loop = asyncio.get_running_loop()
    upgraded = loop.create_future()

    class Server(Recorder):
        def data_received(self, data):
            super().data_received(data)
            if data == b"STARTTLS":
                # nothing more for this protocol: the next bytes are the
                # client's handshake, which on a loop with worker threads
                # may come before the start_tls task below has run
                self.transport.pause_reading()
                self.transport.write(b"GO")
                upgraded.set_result(loop.create_task(loop.start_tls(
                    self.transport, self, certs.server_context(), server_side=True)))

    make, accepted = recording(Server)
    server = await loop.create_server(make, "127.0.0.1", 0)
    tr, pr = await loop.create_connection(Recorder, *server.sockets[0].getsockname())
    tr.write(b"STARTTLS")
    await pr.wait_for_data(2)
    new_tr = await wait_for(loop.start_tls(tr, pr, certs.client_context(),
                                           server_hostname="localhost"))
    server_tr = await wait_for(await wait_for(upgraded))
    assert new_tr.get_protocol() is pr and new_tr.get_extra_info("ssl_object") is not None
    assert server_tr.get_extra_info("ssl_object").server_side
    # connection_made is not called again by start_tls
    assert pr.events.count("made") == 1
    new_tr.write(b"secret")
    sp = accepted[0]
    await sp.wait_for_data(len(b"STARTTLSsecret"))
    server_tr.write(b"reply")
    assert await pr.wait_for_data(len(b"GOreply")) == b"GOreply"
    new_tr.close()
    await wait_for(pr.lost)
    await wait_for(sp.lost)
    await close_server(server)


async def test_streams_start_tls(certs):
    async def handler(reader, writer):
        assert await reader.readline() == b"STARTTLS\n"
        writer.write(b"OK\n")
        await writer.drain()
        await writer.start_tls(certs.server_context())
        line = await reader.readline()
        writer.write(line.upper())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
    writer.write(b"STARTTLS\n")
    assert await wait_for(reader.readline()) == b"OK\n"
    await wait_for(writer.start_tls(certs.client_context(), server_hostname="localhost"))
    assert writer.get_extra_info("ssl_object") is not None
    writer.write(b"quiet\n")
    assert await wait_for(reader.readline()) == b"QUIET\n"
    assert await wait_for(reader.read()) == b""
    writer.close()
    await writer.wait_closed()
    await close_server(server)


async def test_tls_over_tls(certs):
    """start_tls over a TLS transport: the inner layer runs over the outer
    one's protocol methods."""
    loop = asyncio.get_running_loop()
    inner = loop.create_future()

    class Server(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            # the next bytes are the inner handshake: with worker threads
            # they may come before the start_tls task below has run
            transport.pause_reading()
            inner.set_result(loop.create_task(loop.start_tls(
                transport, self, certs.server_context(), server_side=True)))

    make, accepted = recording(Server)
    server = await loop.create_server(make, "127.0.0.1", 0, ssl=certs.server_context())
    tr, pr = await loop.create_connection(Recorder, *server.sockets[0].getsockname(),
                                          ssl=certs.client_context(),
                                          server_hostname="localhost")
    tr2 = await wait_for(loop.start_tls(tr, pr, certs.client_context(),
                                        server_hostname="localhost"))
    server_tr2 = await wait_for(await wait_for(inner))
    tr2.write(b"inner")
    sp = accepted[0]
    assert await sp.wait_for_data(5) == b"inner"
    server_tr2.write(b"both ways")
    assert await pr.wait_for_data(9) == b"both ways"
    tr2.close()
    await wait_for(pr.lost)
    await wait_for(sp.lost)
    await close_server(server)


async def test_server_handshake_failure_is_quiet_and_server_goes_on(certs):
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))
    make, accepted = recording(lambda: Recorder(echo=True))
    server = await loop.create_server(make, "127.0.0.1", 0, ssl=certs.server_context())
    addr = server.sockets[0].getsockname()
    ctx = certs.client_context()
    wrong = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)     # does not trust our CA
    with pytest.raises(ssl.SSLCertVerificationError):
        await loop.create_connection(Recorder, *addr, ssl=wrong, server_hostname="localhost")
    tr, pr = await loop.create_connection(Recorder, *addr, ssl=ctx, server_hostname="localhost")
    tr.write(b"still here")
    assert await pr.wait_for_data(10) == b"still here"
    tr.close()
    await wait_for(pr.lost)
    await close_server(server)
    # a client that rejects the certificate is not the server's error
    assert [c for c in errors if "exception" in c and
            not isinstance(c["exception"], (ssl.SSLError, ConnectionError))] == []


async def test_no_garbage_left(certs):
    """The TLS transport, its context and protocol go away once closed."""
    server, tr, pr, sp = await tls_pair(certs, lambda: Recorder(echo=True))
    tr.write(b"x")
    await pr.wait_for_data(1)
    ctx_ref = weakref.ref(tr.get_extra_info("sslcontext"))
    tr_ref = weakref.ref(tr)
    tr.close()
    await wait_for(pr.lost)
    await wait_for(sp.lost)
    await close_server(server)
    await asyncio.sleep(0)
    del tr, pr, sp
    gc.collect()
    assert tr_ref() is None
    # Free-threaded CPython: a reference dropped on another thread than the
    # object's owner (a worker, with threads=N) is merged by the owner the
    # next time it runs, so the last one may take a few loop passes
    for _ in range(100):
        if ctx_ref() is None:
            break
        await asyncio.sleep(0.01)
        gc.collect()
    assert ctx_ref() is None


async def test_sni_and_alpn(certs):
    """SNI and ALPN go through the SSLContexts, as with asyncio."""
    loop = asyncio.get_running_loop()
    seen = []
    server_ctx = certs.server_context()
    server_ctx.set_alpn_protocols(["h2", "http/1.1"])
    server_ctx.sni_callback = lambda obj, name, ctx: seen.append((name, obj.server_side))
    client_ctx = certs.client_context()
    client_ctx.set_alpn_protocols(["http/1.1"])
    server, tr, pr, sp = await tls_pair(certs, server_ctx=server_ctx, client_ctx=client_ctx)
    assert seen == [("localhost", True)]
    assert tr.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
    assert sp.transport.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
    tr.close()
    await wait_for(pr.lost)
    await wait_for(sp.lost)
    await close_server(server)
