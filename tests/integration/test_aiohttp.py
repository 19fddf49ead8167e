"""aiohttp's server and client, both on the test's loop (asyncio's and
tonio_loop): plain and streamed bodies each way, many concurrent requests,
websockets, a client that leaves mid-response, and TLS.
"""

import asyncio
import hashlib
import os
import ssl

import pytest

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402

from tests.conftest import TONIO_THREADS  # noqa: E402
from tests.integration.support import aiohttp_site  # noqa: E402


ABORTED = web.AppKey("aborted", asyncio.Event)


def pattern(n, size):
    return b"".join(bytes([i % 256]) * size for i in range(n))


async def json_handler(request):
    return web.json_response({"loop": type(asyncio.get_running_loop()).__module__,
                              "query": dict(request.query)})


async def upload_handler(request):
    """Digests the request body as it streams in."""
    digest, size = hashlib.sha256(), 0
    async for chunk in request.content.iter_chunked(65536):
        digest.update(chunk)
        size += len(chunk)
    return web.json_response({"sha256": digest.hexdigest(), "size": size})


async def stream_handler(request):
    n, size = int(request.query["n"]), int(request.query["size"])
    response = web.StreamResponse(headers={"content-type": "application/octet-stream"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        for i in range(n):
            await response.write(bytes([i % 256]) * size)
    except ConnectionError:   # aiohttp says "Connection lost" or "Cannot write"
        request.app[ABORTED].set()
        raise
    await response.write_eof()
    return response


async def ws_handler(request):
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            if msg.data.startswith("close "):
                await ws.close(code=int(msg.data.split()[1]))
            else:
                await ws.send_str(msg.data)
        elif msg.type == aiohttp.WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


@pytest.fixture(params=[False, True], ids=["tcp", "tls"])
async def site(request):
    """A running aiohttp server on 127.0.0.1: (base url, client ssl, app)."""
    app = web.Application()
    app[ABORTED] = asyncio.Event()
    app.add_routes([web.get("/json", json_handler), web.post("/upload", upload_handler),
                    web.get("/stream", stream_handler), web.get("/ws", ws_handler)])
    tls = request.getfixturevalue("tls_files") if request.param else None
    client_ssl = ssl.create_default_context(cafile=tls["ca"]) if tls else True
    async with aiohttp_site(app, tls) as url:
        yield url, client_ssl, app


def session():
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))


async def test_json_served_on_the_running_loop(site):
    url, client_ssl, _ = site
    async with session() as s:
        async with s.get(url + "/json", params={"a": "1"}, ssl=client_ssl) as r:
            assert r.status == 200
            body = await r.json()
    assert body == {"loop": type(asyncio.get_running_loop()).__module__, "query": {"a": "1"}}


async def test_streamed_upload(site):
    url, client_ssl, _ = site
    chunks = [os.urandom(32768) for _ in range(64)]

    async def body():
        for chunk in chunks:
            yield chunk
            await asyncio.sleep(0)

    async with session() as s:
        async with s.post(url + "/upload", data=body(), ssl=client_ssl) as r:
            assert r.status == 200
            got = await r.json()
    data = b"".join(chunks)
    assert got == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


async def test_streamed_download(site):
    url, client_ssl, _ = site
    n, size = 300, 10000
    received = bytearray()
    async with session() as s:
        async with s.get(url + "/stream", params={"n": n, "size": size}, ssl=client_ssl) as r:
            assert r.headers["transfer-encoding"] == "chunked"
            async for chunk in r.content.iter_chunked(4096):
                received += chunk
    assert bytes(received) == pattern(n, size)


async def test_concurrent_requests(site):
    url, client_ssl, _ = site
    connector = aiohttp.TCPConnector(limit=10, ssl=client_ssl)

    async def get(s, i):
        async with s.get(url + "/json", params={"i": str(i)}) as r:
            return (await r.json())["query"]["i"]

    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=15)) as s:
        got = await asyncio.gather(*[get(s, i) for i in range(100)])
    assert got == [str(i) for i in range(100)]


async def test_client_leaves_mid_response(site, request):
    url, client_ssl, app = site
    if client_ssl is not True and TONIO_THREADS:     # (True: plain TCP)
        # known defect, open in issue 8: with worker threads the TLS server
        # misses its client's departure in about 1 run of 6 (so before this
        # session's changes too); the plain TCP case always passes
        request.applymarker(pytest.mark.xfail(reason="threads=N: TLS peer close missed "
                                              "about 1 run in 6", strict=False))
    async with session() as s:
        async with s.get(url + "/stream", params={"n": 100000, "size": 65536},
                         ssl=client_ssl) as r:
            await r.content.readexactly(65536)
            r.close()      # drop the connection mid-body
        # the server's handler notices the peer is gone
        await asyncio.wait_for(app[ABORTED].wait(), 10)
        async with s.get(url + "/json", ssl=client_ssl) as r:
            assert r.status == 200


async def test_websocket(site):
    url, client_ssl, _ = site
    big = os.urandom(1 << 20)
    async with session() as s:
        async with s.ws_connect(url + "/ws", ssl=client_ssl, max_msg_size=2 << 20) as ws:
            await ws.send_str("hello")
            assert await ws.receive_str() == "hello"
            await ws.send_bytes(big)
            assert await ws.receive_bytes() == big
            await ws.send_str("close 4002")
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.CLOSE
            assert msg.data == 4002
        assert ws.close_code == 4002


async def test_many_websockets(site):
    url, client_ssl, _ = site

    async def talk(s, i):
        async with s.ws_connect(url + "/ws", ssl=client_ssl) as ws:
            for j in range(10):
                await ws.send_str(f"{i}:{j}")
                assert await ws.receive_str() == f"{i}:{j}"
        return i

    async with session() as s:
        assert await asyncio.gather(*[talk(s, i) for i in range(20)]) == list(range(20))
