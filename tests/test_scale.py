"""One loop holding 10,000 concurrent connections (slow: run with -m slow)."""

import resource
import selectors
import socket
import subprocess
import sys
import textwrap
import time

import pytest

N = 10_000

SERVER = textwrap.dedent("""
    import asyncio, resource, sys
    import tonio_loop

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    class Echo(asyncio.Protocol):
        def connection_made(self, t):
            self.t = t
        def data_received(self, d):
            self.t.write(d)

    def rss_kib():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=4096)
        print(server.sockets[0].getsockname()[1], rss_kib(), flush=True)
        # report memory when asked, stop at end of input
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                     sys.stdin)
        while line := await reader.readline():
            print(rss_kib(), flush=True)
        server.close()

    factory = tonio_loop.new_event_loop if sys.argv[1] == "tonio" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())
""")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ten_thousand_connections(loop_name):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < N + 500:
        pytest.skip(f"RLIMIT_NOFILE's hard limit ({hard}) is below {N + 500}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        run_ten_thousand(loop_name)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def run_ten_thousand(loop_name):
    proc = subprocess.Popen([sys.executable, "-c", SERVER, loop_name],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    socks = []
    try:
        port, rss0 = map(int, proc.stdout.readline().split())
        for _ in range(N):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            socks.append(s)
        # every connection is served: one byte each way, all at once
        for i, s in enumerate(socks):
            s.send(bytes([i % 256]))
        sel = selectors.DefaultSelector()
        for s in socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        pending = len(socks)
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(1):
                data = key.fileobj.recv(10)
                assert len(data) == 1
                sel.unregister(key.fileobj)
                pending -= 1
        sel.close()
        assert pending == 0
        proc.stdin.write("rss\n")
        proc.stdin.flush()
        rss1 = int(proc.stdout.readline())
        per_conn = (rss1 - rss0) * 1024 / N
        print(f"{loop_name}: {per_conn:.0f} bytes of server RSS per connection")
        assert per_conn < 16 * 1024
    finally:
        for s in socks:
            s.close()
        proc.stdin.close()
        proc.wait(30)
        proc.stdout.close()
