"""httpx's AsyncClient on the test's loop (asyncio's and tonio_loop) against
a local server that runs on the same loop, over TCP and TLS: certificate
checks that pass and fail, timeouts, streaming and connection reuse.
(tests/integration/test_uvicorn.py uses httpx against uvicorn too.)
"""

import asyncio
import ssl

import pytest

httpx = pytest.importorskip("httpx")
web = pytest.importorskip("aiohttp.web")

from tests.integration.support import aiohttp_site, skip_shared_pool_on_threaded_loop  # noqa: E402

CONNECTIONS = web.AppKey("connections", set)


async def hello(request):
    request.app[CONNECTIONS].add(request.transport.get_extra_info("peername"))
    return web.Response(text=f"hello {request.query.get('name', '')}")


async def slow(request):
    await asyncio.sleep(float(request.query["s"]))
    return web.Response(text="late")


async def echo(request):
    return web.Response(body=await request.read())


@pytest.fixture(params=[False, True], ids=["tcp", "tls"])
async def server(request):
    """{"url", "ca" (None without TLS), "tls_files", "app"} of a server
    on 127.0.0.1 running on the test's loop."""
    app = web.Application()
    app[CONNECTIONS] = set()
    app.add_routes([web.get("/hello", hello), web.get("/slow", slow), web.post("/echo", echo)])
    tls = request.getfixturevalue("tls_files") if request.param else None
    async with aiohttp_site(app, tls) as url:
        yield {"url": url, "ca": tls and tls["ca"], "tls_files": tls, "app": app}


def client(server, **kwargs):
    verify = ssl.create_default_context(cafile=server["ca"]) if server["ca"] else True
    return httpx.AsyncClient(base_url=server["url"], verify=verify, timeout=10, **kwargs)


async def test_requests_reuse_one_connection(server):
    async with client(server) as c:
        for name in ("a", "b", "c"):
            r = await c.get("/hello", params={"name": name})
            assert (r.status_code, r.text) == (200, f"hello {name}")
            assert r.http_version == "HTTP/1.1"
    assert len(server["app"][CONNECTIONS]) == 1


async def test_concurrent_requests(server):
    skip_shared_pool_on_threaded_loop()
    async with client(server, limits=httpx.Limits(max_connections=5)) as c:
        rs = await asyncio.gather(*[c.get("/hello", params={"name": str(i)})
                                    for i in range(50)])
    assert [r.text for r in rs] == [f"hello {i}" for i in range(50)]
    assert 1 <= len(server["app"][CONNECTIONS]) <= 5


async def test_streamed_upload_and_download(server):
    data = bytes(range(256)) * 4096            # 1 MiB

    async def body():
        for i in range(0, len(data), 65536):
            yield data[i:i + 65536]

    async with client(server) as c:
        async with c.stream("POST", "/echo", content=body()) as r:
            got = b"".join([part async for part in r.aiter_raw()])
    assert got == data


async def test_read_timeout(server):
    async with client(server) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.get("/slow", params={"s": "0.8"}, timeout=0.2)
        # the client goes on working after the timeout
        assert (await c.get("/hello")).text == "hello "


async def test_connection_refused():
    import socket

    with socket.socket() as s:       # a port that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        async with httpx.AsyncClient(timeout=5) as c:
            with pytest.raises(httpx.ConnectError):
                await c.get(f"http://127.0.0.1:{port}/")


@pytest.mark.parametrize("server", [True], ids=["tls"], indirect=True)
async def test_certificate_of_unknown_ca_is_refused(server):
    verify = ssl.create_default_context(cafile=server["tls_files"]["other_ca"])
    async with httpx.AsyncClient(verify=verify, timeout=10) as c:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await c.get(server["url"] + "/hello")
    # the server survives the failed handshake
    async with client(server) as c:
        assert (await c.get("/hello")).status_code == 200
