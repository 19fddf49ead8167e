"""Loop(threads=N): echo (Protocol, 64 connections), an HTTP-like
request/response server and a million coroutines, at several thread counts.

    python -m bench.threads [--threads 0,1,2] [--duration 5] [--conns 64]

Run it on the free-threaded Python (3.13t) to see the workers run in
parallel; with the GIL they take turns. The load comes from bench/bin/loadgen
(built by `make bench`), pinned to the last CPU; the server's CPU time per
request is reported next to the throughput because the load generator
shares the machine.
"""

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time

import tonio_loop

HERE = os.path.dirname(os.path.abspath(__file__))
LOADGEN = os.path.join(HERE, "bin", "loadgen")

RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n"
            b"Connection: keep-alive\r\n\r\nHello, world!")


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class Http(asyncio.Protocol):
    """Answers each complete request (up to the blank line), as a handler
    task would: the response is written from a task on a worker."""

    def connection_made(self, transport):
        self.transport = transport
        self.buf = b""

    def data_received(self, data):
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            _, self.buf = self.buf.split(b"\r\n\r\n", 1)
            asyncio.get_running_loop().create_task(self.handle())

    async def handle(self):
        await asyncio.sleep(0)
        self.transport.write(RESPONSE)


def cpu_time():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def serve(protocol, mode, args):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cmd = [LOADGEN, "--port", str(port), "--mode", mode, "--conns", str(args.conns),
           "--size", "64", "--warmup", "1", "--duration", str(args.duration),
           "--cpu", str(os.cpu_count() - 1)]
    # tonio_loop has no subprocesses yet: the load generator runs from a thread
    result = {}

    def run_load():
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        for line in p.stdout:
            line = line.strip()
            if line == "START":
                result["cpu0"] = cpu_time()
            elif line == "END":
                result["cpu1"] = cpu_time()
            elif line.startswith("{"):
                result.update(json.loads(line))
        p.wait()

    await loop.run_in_executor(None, run_load)
    server.close()
    await server.wait_closed()
    cpu = result["cpu1"] - result["cpu0"]
    return result["rps"], cpu / max(result["requests"], 1) * 1e6


async def coroutines(n):
    async def leaf(i):
        await asyncio.sleep(0)
        return i

    t0 = time.perf_counter()
    total = 0
    for start in range(0, n, 10000):
        total += sum(await asyncio.gather(*[leaf(i) for i in range(start, start + 10000)]))
    assert total == n * (n - 1) // 2
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="0,1,2")
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--coroutines", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if not os.path.exists(LOADGEN):
        sys.exit("bench/bin/loadgen is missing: `make bench` builds it")
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    print(f"Python {sys.version.split()[0]} GIL={'on' if gil else 'off'} "
          f"cpus={os.cpu_count()} conns={args.conns}")
    for threads in [int(t) for t in args.threads.split(",")]:
        for name, fn in (("echo", lambda: serve(Echo, "echo", args)),
                         ("http", lambda: serve(Http, "http", args))):
            runs = sorted(tonio_loop.run(fn(), threads=threads) for _ in range(args.repeat))
            rps, cpu = runs[len(runs) // 2]
            print(f"threads={threads} {name:5} {rps:10.0f} req/s  {cpu:6.1f} us CPU/req "
                  f"(median of {args.repeat})", flush=True)
        rates = sorted(tonio_loop.run(coroutines(args.coroutines), threads=threads)
                       for _ in range(args.repeat))
        print(f"threads={threads} coros {rates[len(rates) // 2]:10.0f} coroutines/s", flush=True)


if __name__ == "__main__":
    main()
