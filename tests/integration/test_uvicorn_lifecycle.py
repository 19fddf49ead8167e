"""A uvicorn server's life on tonio_loop (and, for parity, on asyncio's loop):
graceful shutdown on SIGINT and SIGTERM with a request in flight, and
worker mode (`--workers 2`).

These tests drive the server from plain blocking sockets, so the loop under
test is only the server's: each runs once per server loop.
"""

import json
import signal
import socket
import time

import pytest

from tests.integration.support import LOOP_MODULES, port_open, process_gone, start_uvicorn

SERVER_LOOPS = pytest.mark.parametrize("server_loop", list(LOOP_MODULES))
SIGNALS = pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM],
                                  ids=["SIGINT", "SIGTERM"])
# After its graceful shutdown a single uvicorn process raises the signal it
# caught again with the default handler back in place: SIGINT becomes a
# KeyboardInterrupt that uvicorn's main() swallows (exit 0), SIGTERM kills.
EXIT_STATUS = {signal.SIGINT: 0, signal.SIGTERM: -signal.SIGTERM}


def request(port, path, *, keep_alive=False):
    """A connected socket that has sent GET path."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    connection = b"keep-alive" if keep_alive else b"close"
    sock.sendall(b"GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: %s\r\n\r\n"
                 % (path.encode(), connection))
    return sock


def read_response(sock, *, until_eof=True):
    """(status line, headers, body) of one response on sock."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
    length = int(headers[b"content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of the body"
        body += chunk
    if until_eof:
        assert sock.recv(65536) == b"", "the server kept the connection open"
    return lines[0], headers, body


def parse_shutdown_lines(lines):
    """{pid: ticks} from the app's "shutdown <pid> <ticks>" lines."""
    found = {}
    for line in lines:
        word, pid, ticks = line.split()
        assert word == b"shutdown", line
        found[int(pid)] = int(ticks)
    return found


@SERVER_LOOPS
@SIGNALS
@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_graceful_shutdown_finishes_request_in_flight(server_loop, sig, http):
    server, port = start_uvicorn(loop=server_loop, http=http, pipe_stdout=True)
    idle = slow = None
    try:
        # an idle keep-alive connection, and a request the app is busy with
        idle = request(port, "/json", keep_alive=True)
        status, _, body = read_response(idle, until_eof=False)
        assert status == b"HTTP/1.1 200 OK"
        assert json.loads(body)["loop"] == LOOP_MODULES[server_loop]
        slow = request(port, "/slow?s=0.6", keep_alive=True)
        assert server.read_line() == b"slow %d" % server.pid

        t0 = time.monotonic()
        server.proc.send_signal(sig)

        # the request in flight completes, then its connection is closed
        status, headers, body = read_response(slow)
        assert status == b"HTTP/1.1 200 OK"
        assert json.loads(body) == {"pid": server.pid, "slept": 0.6}
        # the idle connection is closed without a response
        assert idle.recv(65536) == b""

        status = server.wait(10)
        elapsed = time.monotonic() - t0
        assert status == EXIT_STATUS[sig], server.tail()
        assert elapsed < 5, f"exited {elapsed:.1f} s after the signal"
        # the lifespan shutdown ran on the server's loop, after the ticker had ticked
        ticks = parse_shutdown_lines([server.read_line()])
        assert list(ticks) == [server.pid] and ticks[server.pid] > 0
        log = server.output()
        assert "Waiting for application shutdown." in log
        assert "Application shutdown complete." in log
        assert "Traceback" not in log, log
        assert not port_open(port)
    finally:
        for sock in (idle, slow):
            if sock is not None:
                sock.close()
        server.stop()


def _wait_for_startups(server, count, timeout=30):
    deadline = time.monotonic() + timeout
    while server.output().count("Application startup complete.") < count:
        assert server.proc.poll() is None, server.tail()
        assert time.monotonic() < deadline, f"workers did not start:\n{server.tail()}"
        time.sleep(0.05)


# the supervisor treats SIGINT and SIGTERM alike (the single-process test
# above covers both); SIGTERM is what process managers send
@SERVER_LOOPS
@pytest.mark.parametrize("sig", [signal.SIGTERM], ids=["SIGTERM"])
def test_workers_serve_and_stop(server_loop, sig):
    server, port = start_uvicorn(loop=server_loop, workers=2, pipe_stdout=True)
    socks = []
    try:
        _wait_for_startups(server, 2)
        # the first worker to accept blocks its loop, so the second
        # connection can only be accepted by the other worker
        socks.append(request(port, "/block?s=1.5"))
        first = server.read_line()
        socks.append(request(port, "/block?s=0.05"))
        second = server.read_line()
        answers = [json.loads(read_response(sock)[2]) for sock in socks]

        pids = {int(first.split()[1]), int(second.split()[1])}
        assert len(pids) == 2 and server.pid not in pids
        assert {a["pid"] for a in answers} == pids
        assert {a["loop"] for a in answers} == {LOOP_MODULES[server_loop]}

        server.proc.send_signal(sig)
        assert server.wait(15) == 0, server.tail()
        ticks = parse_shutdown_lines([server.read_line(), server.read_line()])
        assert set(ticks) == pids and min(ticks.values()) > 0
        deadline = time.monotonic() + 5
        while not all(process_gone(pid) for pid in pids):
            assert time.monotonic() < deadline, "a worker outlived the parent"
            time.sleep(0.05)
        assert "Traceback" not in server.output(), server.output()
        assert not port_open(port)
    finally:
        for sock in socks:
            sock.close()
        server.stop()
