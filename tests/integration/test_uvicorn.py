"""uvicorn serving a real ASGI app (tests/integration/asgi_app.py) in a child
process, with `--loop tonio_loop:new_event_loop` and, for parity, with
asyncio's own loop; httptools and h11 for HTTP, uvicorn's two websockets
implementations, and TLS. The clients are httpx, websockets and plain
asyncio streams, each on the test's loop (both loops again).
"""

import asyncio
import hashlib
import os
import ssl

import pytest

from tests.integration.support import LOOP_MODULES, skip_shared_pool_on_threaded_loop, start_uvicorn

httpx = pytest.importorskip("httpx")
websockets_client = pytest.importorskip("websockets.asyncio.client")
from websockets.exceptions import ConnectionClosed  # noqa: E402

# (server loop, --http, --ws, TLS)
SERVERS = [
    ("asyncio", "httptools", "websockets", False),
    ("tonio", "httptools", "websockets", False),
    ("asyncio", "h11", "websockets-sansio", False),
    ("tonio", "h11", "websockets-sansio", False),
    ("asyncio", "httptools", "websockets-sansio", True),
    ("tonio", "httptools", "websockets-sansio", True),
]


class Server:
    def __init__(self, loop, http, ws, tls_files, port, child):
        self.loop = loop
        self.http = http
        self.ws = ws
        self.port = port
        self.child = child
        self.tls = tls_files is not None
        scheme = "https" if self.tls else "http"
        self.url = f"{scheme}://127.0.0.1:{port}"
        self.ws_url = f"{'wss' if self.tls else 'ws'}://127.0.0.1:{port}/ws"
        self.ca = tls_files["ca"] if self.tls else None

    def ssl_context(self):
        return ssl.create_default_context(cafile=self.ca) if self.tls else None

    def client(self, **kwargs):
        return httpx.AsyncClient(base_url=self.url, verify=self.ssl_context() or True,
                                 timeout=10, **kwargs)


@pytest.fixture(scope="module", params=SERVERS,
                ids=[f"{s[0]}-{s[1]}-{s[2]}{'-tls' if s[3] else ''}" for s in SERVERS])
def server(request):
    loop, http, ws, tls = request.param
    tls_files = request.getfixturevalue("tls_files") if tls else None
    child, port = start_uvicorn(loop=loop, http=http, ws=ws, tls=tls_files)
    yield Server(loop, http, ws, tls_files, port, child)
    child.stop()


def pattern(n, size):
    return b"".join(bytes([i % 256]) * size for i in range(n))


async def test_json_from_the_expected_loop(server):
    async with server.client() as client:
        r = await client.get("/json", params={"x": "1"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["loop"] == LOOP_MODULES[server.loop]
    assert body["query"] == {"x": "1"}
    assert body["lifespan"] is True
    assert body["pid"] == server.child.pid


async def test_request_body_streams_through(server):
    chunks = [bytes([i]) * 16384 for i in range(64)]

    async def body():
        for chunk in chunks:
            yield chunk

    async with server.client() as client:
        r = await client.post("/echo", content=body())
    assert r.status_code == 200
    assert r.headers.get("transfer-encoding") == "chunked"
    assert hashlib.sha256(r.content).digest() == hashlib.sha256(b"".join(chunks)).digest()


async def test_streamed_response(server):
    n, size = 200, 8192
    received = bytearray()
    async with server.client() as client:
        async with client.stream("GET", "/stream", params={"n": n, "size": size}) as r:
            assert r.status_code == 200
            assert int(r.headers["content-length"]) == n * size
            async for part in r.aiter_bytes():
                received += part
    assert bytes(received) == pattern(n, size)


async def test_concurrent_requests_share_connections(server):
    skip_shared_pool_on_threaded_loop()
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    async with server.client(limits=limits) as client:
        responses = await asyncio.gather(
            *[client.get("/json", params={"i": str(i)}) for i in range(30)])
    assert [r.json()["query"]["i"] for r in responses] == [str(i) for i in range(30)]
    assert {r.status_code for r in responses} == {200}


async def test_pipelined_requests_answered_in_order(server):
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", server.port, ssl=server.ssl_context(),
        server_hostname="localhost" if server.tls else None)
    try:
        writer.write(b"".join(
            b"GET /json?n=%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % i for i in range(3)))
        await writer.drain()
        seen = []
        async with asyncio.timeout(10):
            for _ in range(3):
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 ")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:")))
                body = await reader.readexactly(length)
                seen.append(body)
        assert [b'"n": "%d"' % i in body for i, body in enumerate(seen)] == [True] * 3
    finally:
        writer.close()
        await writer.wait_closed()


async def test_malformed_request_gets_400_and_server_lives_on(server):
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", server.port, ssl=server.ssl_context(),
        server_hostname="localhost" if server.tls else None)
    try:
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        async with asyncio.timeout(10):
            answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    assert answer.startswith(b"HTTP/1.1 400 ")
    async with server.client() as client:
        assert (await client.get("/nowhere")).status_code == 404
        assert (await client.get("/json")).status_code == 200


async def test_client_gone_mid_response(server):
    async with server.client() as client:
        async with client.stream("GET", "/stream", params={"n": 2000, "size": 65536}) as r:
            async for _ in r.aiter_bytes():
                break     # leave after the first part: the connection is dropped
        r = await client.get("/json")
    assert r.status_code == 200
    assert r.json()["pid"] == server.child.pid


async def test_websocket_echo_and_close_code(server):
    big = os.urandom(1 << 20)
    async with websockets_client.connect(server.ws_url, ssl=server.ssl_context(),
                                         max_size=2 << 20, open_timeout=10) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x00\x01binary")
        assert await ws.recv() == b"\x00\x01binary"
        await ws.send(big)
        assert await ws.recv() == big
        pong = await ws.ping(b"p")
        await asyncio.wait_for(pong, 10)
        await ws.send("close 4001")
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 10)
    assert info.value.rcvd.code == 4001


async def test_many_websockets_at_once(server):
    async def talk(i):
        async with websockets_client.connect(server.ws_url, ssl=server.ssl_context(),
                                             open_timeout=10) as ws:
            for j in range(10):
                await ws.send(f"{i}:{j}")
                assert await ws.recv() == f"{i}:{j}"
        return i

    async with asyncio.timeout(30):
        assert await asyncio.gather(*[talk(i) for i in range(20)]) == list(range(20))
