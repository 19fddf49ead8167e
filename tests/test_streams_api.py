"""asyncio's streams (open_connection, start_server and the Unix variants)
running unchanged on both loops."""

import asyncio

import pytest

from .netutil import wait_for


def echo_lines_server():
    """A line-upper-casing handler and an event set once it is done (3.11's
    Server.wait_closed() does not wait for handlers)."""
    finished = asyncio.Event()

    async def echo_lines(reader, writer):
        try:
            while line := await reader.readline():
                writer.write(line.upper())
                await writer.drain()
            writer.close()
            await writer.wait_closed()
        finally:
            finished.set()

    return echo_lines, finished


async def test_open_connection_start_server():
    echo_lines, finished = echo_lines_server()
    server = await asyncio.start_server(echo_lines, "127.0.0.1", 0)
    addr = server.sockets[0].getsockname()
    reader, writer = await asyncio.open_connection(*addr)
    assert writer.get_extra_info("peername") == addr
    for i in range(100):
        writer.write(b"line %d\n" % i)
    await writer.drain()
    for i in range(100):
        assert await wait_for(reader.readline()) == b"LINE %d\n" % i
    writer.write_eof()
    assert await wait_for(reader.read()) == b""
    writer.close()
    await writer.wait_closed()
    await wait_for(finished.wait())
    server.close()
    await server.wait_closed()


async def test_unix_streams(tmp_path):
    path = str(tmp_path / "streams.sock")
    echo_lines, finished = echo_lines_server()
    server = await asyncio.start_unix_server(echo_lines, path)
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(b"unix\n")
    assert await wait_for(reader.readexactly(5)) == b"UNIX\n"
    writer.close()
    await writer.wait_closed()
    await wait_for(finished.wait())
    server.close()
    await server.wait_closed()


async def test_drain_flow_control_large_payload():
    done = asyncio.get_running_loop().create_future()

    async def sink(reader, writer):
        total = 0
        while chunk := await reader.read(1 << 16):
            total += len(chunk)
            await asyncio.sleep(0)
        done.set_result(total)
        writer.close()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
    writer.transport.set_write_buffer_limits(high=65536)
    sent = 0
    for _ in range(200):
        writer.write(b"d" * 50_000)
        sent += 50_000
        await writer.drain()
        assert writer.transport.get_write_buffer_size() <= 65536
    writer.close()
    assert await wait_for(done, 20) == sent
    await writer.wait_closed()
    server.close()
    await server.wait_closed()


async def test_readuntil_and_limit():
    async def handler(reader, writer):
        writer.write(b"a" * 100 + b"END")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0, limit=16)
    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname(),
                                                   limit=32)
    with pytest.raises(asyncio.LimitOverrunError):
        await wait_for(reader.readuntil(b"END"))
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()


async def test_tls_streams():
    test_utils = pytest.importorskip("test.test_asyncio.utils",
                                     reason="this Python ships without its test suite")
    server_ctx = test_utils.simple_server_sslcontext()
    client_ctx = test_utils.simple_client_sslcontext()

    async def handler(reader, writer):
        line = await reader.readline()
        writer.write(line[::-1])
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_ctx)
    reader, writer = await asyncio.open_connection(
        *server.sockets[0].getsockname(), ssl=client_ctx, server_hostname="")
    assert writer.get_extra_info("sslcontext") is client_ctx
    writer.write(b"olleh\n")
    assert await wait_for(reader.read()) == b"\nhello"
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
