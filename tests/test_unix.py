"""Unix stream sockets: create_unix_server/create_unix_connection on paths
and the abstract namespace, on both loops."""

import asyncio
import os
import socket
import sys

import pytest

from .netutil import BufferedRecorder, Recorder, close_server, recording, wait_for


async def unix_pair(path, server_factory=Recorder, **kwargs):
    loop = asyncio.get_running_loop()
    factory, accepted = recording(server_factory)
    server = await loop.create_unix_server(factory, path, **kwargs)
    tr, pr = await loop.create_unix_connection(Recorder, path)
    await wait_for(pr.made)
    while not accepted:
        await asyncio.sleep(0)
    await wait_for(accepted[0].made)
    return server, tr, pr, accepted[0]


async def test_unix_echo_and_extra_info(tmp_path):
    path = str(tmp_path / "echo.sock")
    server, tr, pr, sp = await unix_pair(path, lambda: Recorder(echo=True))
    assert server.sockets[0].getsockname() == path
    assert server.sockets[0].family == socket.AF_UNIX
    assert tr.get_extra_info("peername") == path
    assert tr.get_extra_info("sockname") == ""
    assert sp.transport.get_extra_info("sockname") == path
    assert sp.transport.get_extra_info("peername") == ""
    assert tr.get_extra_info("socket").family == socket.AF_UNIX
    tr.write(b"over unix")
    await pr.wait_for_data(9)
    assert pr.data == b"over unix"
    tr.write_eof()
    await wait_for(sp.lost)
    await wait_for(pr.lost)
    await close_server(server)


async def test_unix_pathlib_and_bytes_path(tmp_path):
    path = tmp_path / "p.sock"
    server, tr, pr, sp = await unix_pair(path)
    tr.close()
    await wait_for(sp.lost)
    await close_server(server)
    bpath = os.fsencode(tmp_path / "b.sock")
    server, tr, pr, sp = await unix_pair(bpath)
    tr.close()
    await wait_for(sp.lost)
    await close_server(server)


async def test_unix_abstract_namespace():
    name = b"\0tonio-test-%d" % os.getpid()
    server, tr, pr, sp = await unix_pair(name)
    assert server.sockets[0].getsockname() == name
    assert tr.get_extra_info("peername") == name
    tr.write(b"abstract")
    await sp.wait_for_data(8)
    tr.close()
    await wait_for(sp.lost)
    await close_server(server)
    str_name = "\0tonio-test-str-%d" % os.getpid()
    server, tr, pr, sp = await unix_pair(str_name)
    tr.close()
    await wait_for(sp.lost)
    await close_server(server)


async def test_unix_buffered_protocol(tmp_path):
    path = str(tmp_path / "buf.sock")
    server, tr, pr, sp = await unix_pair(path, lambda: BufferedRecorder(5))
    tr.write(b"abcdefghijklmnop")
    async with asyncio.timeout(5):
        while len(sp.data) < 16:
            await asyncio.sleep(0.001)
    assert sp.data == b"abcdefghijklmnop"
    tr.close()
    await wait_for(sp.lost)
    await close_server(server)


async def test_stale_socket_file_is_replaced(tmp_path):
    loop = asyncio.get_running_loop()
    path = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()
    assert os.path.exists(path)
    server = await loop.create_unix_server(Recorder, path)
    tr, pr = await loop.create_unix_connection(Recorder, path)
    tr.close()
    await wait_for(pr.lost)
    await close_server(server)


async def test_existing_non_socket_path(tmp_path):
    loop = asyncio.get_running_loop()
    path = tmp_path / "file"
    path.write_text("not a socket")
    with pytest.raises(OSError, match="already in use"):
        await loop.create_unix_server(Recorder, str(path))


async def test_cleanup_socket(tmp_path):
    loop = asyncio.get_running_loop()
    path = str(tmp_path / "cleanup.sock")
    server = await loop.create_unix_server(Recorder, path)
    assert os.path.exists(path)
    await close_server(server)
    if sys.version_info >= (3, 13):
        assert not os.path.exists(path)      # cleanup_socket=True by default
        server = await loop.create_unix_server(Recorder, path, cleanup_socket=False)
        await close_server(server)
        assert os.path.exists(path)
    else:
        assert os.path.exists(path)


async def test_unix_argument_errors(tmp_path):
    loop = asyncio.get_running_loop()
    with pytest.raises(ValueError, match="path and sock can not be specified"):
        with socket.socket(socket.AF_UNIX) as s:
            await loop.create_unix_connection(Recorder, str(tmp_path / "x"), sock=s)
    with pytest.raises(ValueError, match="no path and sock were specified"):
        await loop.create_unix_connection(Recorder)
    with pytest.raises(ValueError, match="A UNIX Domain Stream Socket was expected"):
        with socket.socket() as s:
            await loop.create_unix_connection(Recorder, sock=s)
    with pytest.raises(ValueError, match="A UNIX Domain Stream Socket was expected"):
        with socket.socket() as s:
            await loop.create_unix_server(Recorder, sock=s)
    with pytest.raises(FileNotFoundError):
        await loop.create_unix_connection(Recorder, str(tmp_path / "missing.sock"))
    with pytest.raises(ValueError, match="you have to pass server_hostname when using ssl"):
        import ssl
        await loop.create_unix_connection(Recorder, str(tmp_path / "x"),
                                          ssl=ssl.create_default_context())


async def test_unix_server_from_sock_and_connection_from_sock(tmp_path):
    loop = asyncio.get_running_loop()
    path = str(tmp_path / "sock.sock")
    lsock = socket.socket(socket.AF_UNIX)
    lsock.bind(path)
    server = await loop.create_unix_server(Recorder, sock=lsock)
    csock = socket.socket(socket.AF_UNIX)
    csock.connect(path)
    tr, pr = await loop.create_unix_connection(Recorder, sock=csock)
    tr.write(b"via socks")
    tr.close()
    await wait_for(pr.lost)
    await close_server(server)
