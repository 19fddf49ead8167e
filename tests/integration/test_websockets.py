"""The websockets library's own asyncio server and client, both on the
test's loop (asyncio's and tonio_loop): echo, broadcast, oversized messages,
close codes and a server shut down with clients still connected.
(tests/integration/test_uvicorn.py runs its client against uvicorn.)
"""

import asyncio
import os

import pytest

server_mod = pytest.importorskip("websockets.asyncio.server")
client_mod = pytest.importorskip("websockets.asyncio.client")
from websockets.exceptions import ConnectionClosed, ConnectionClosedError  # noqa: E402


async def echo(ws):
    async for message in ws:
        if message == "bye":
            await ws.close(4003, "as you wish")
            return
        await ws.send(message)


@pytest.fixture
async def server():
    """An echo server on 127.0.0.1 (messages up to 1 MiB): its ws:// URL."""
    async with server_mod.serve(echo, "127.0.0.1", 0, max_size=1 << 20) as srv:
        port = srv.sockets[0].getsockname()[1]
        yield srv, f"ws://127.0.0.1:{port}"


async def test_echo_text_and_binary(server):
    _, url = server
    payload = os.urandom(512 * 1024)
    async with client_mod.connect(url, max_size=1 << 20) as ws:
        await ws.send("héllo")
        assert await ws.recv() == "héllo"
        await ws.send(payload)
        assert await ws.recv() == payload
        # a fragmented message arrives whole
        await ws.send(iter([b"ab", b"cd", b"ef"]))
        assert await ws.recv() == b"abcdef"
        latency = await asyncio.wait_for(await ws.ping(), 10)
        assert latency is None or latency >= 0


async def test_close_code_and_reason(server):
    _, url = server
    async with client_mod.connect(url) as ws:
        await ws.send("bye")
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 10)
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (4003, "as you wish")


async def test_oversized_message_closes_with_1009(server):
    _, url = server
    async with client_mod.connect(url, max_size=None) as ws:
        await ws.send(b"x" * ((1 << 20) + 1))
        with pytest.raises(ConnectionClosedError) as info:
            await asyncio.wait_for(ws.recv(), 10)
    assert info.value.rcvd.code == 1009     # message too big


async def test_broadcast_to_many_clients(server):
    srv, url = server
    clients = [await client_mod.connect(url) for _ in range(30)]
    try:
        async with asyncio.timeout(10):
            while len(srv.connections) < 30:
                await asyncio.sleep(0.01)
        server_mod.broadcast(srv.connections, "news")
        got = await asyncio.wait_for(asyncio.gather(*[c.recv() for c in clients]), 10)
        assert got == ["news"] * 30
    finally:
        await asyncio.gather(*[c.close() for c in clients])


async def test_server_shutdown_closes_clients_with_1001():
    srv = await server_mod.serve(echo, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    clients = [await client_mod.connect(f"ws://127.0.0.1:{port}") for _ in range(5)]
    srv.close()
    await asyncio.wait_for(srv.wait_closed(), 10)
    for ws in clients:
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 10)
        assert info.value.rcvd.code == 1001     # going away
