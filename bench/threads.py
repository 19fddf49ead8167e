"""Loop(threads=N): echo (Protocol, 64 connections), an HTTP-like
request/response server, a JSON API server and a million coroutines, at
several thread counts.

    python -m bench.threads [--threads 0,1,2] [--duration 5] [--conns 64]
                            [--workloads echo,http,api,coros]

Run it on the free-threaded Python (3.13t) to see the workers run in
parallel; with the GIL they take turns. The load comes from bench/bin/loadgen
(built on first use), pinned to the last CPU; the server's CPU time per
request is reported next to the throughput because the load generator
shares the machine, and so is the generator's own: together they bound what
the CPUs allow (cpus / (server + generator CPU per request)), and "room" is
that bound at threads=1's costs over threads=1's rate. echo and http do a
few microseconds of Python per request: on two cores the load generator, not
the server, sets their pace.
api renders a JSON document per request (tens of microseconds of Python, as
an application's handler does): there the workers' Python is the work that
threads=N spreads over the cores. Results also go to
bench/results/threads-<python>.json.
"""

import argparse
import asyncio
import json
import os
import platform
import resource
import sys
import time

import tonio_loop

from bench import net

HERE = os.path.dirname(os.path.abspath(__file__))

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


def render_items(n=20):
    """The request's data (as rows from a database would be: made for it)
    rendered as a JSON document."""
    items = [{"id": i, "name": f"item {i}", "price": i * 1.25, "tags": ["new", "sale"],
              "stock": i % 7} for i in range(n)]
    for it in items:
        it["total"] = it["price"] * it["stock"]
    return json.dumps({"count": n, "items": items}).encode()


class Api(Http):
    """A JSON API: each request's handler task builds and renders a document
    (on 3.13t some tens of microseconds of Python, as an application's
    handler spends)."""

    async def handle(self):
        body = render_items()
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


def cpu_bound(cpu_us, load_us):
    """Requests/s the machine's CPUs allow when each costs the server cpu_us
    and the load generator load_us of CPU time."""
    return os.cpu_count() * 1e6 / (cpu_us + load_us)


def cpu_time():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def serve(protocol, mode, args):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cpu = {}
    # from a thread: its output is read while the server runs on the loop
    result = await loop.run_in_executor(None, lambda: net.run_loadgen(
        port, mode=mode, size=64, conns=args.conns, warmup=1, seconds=args.duration,
        cpu=os.cpu_count() - 1, on_start=lambda: cpu.setdefault("start", cpu_time()),
        on_end=lambda: cpu.setdefault("end", cpu_time())))
    server.close()
    await server.wait_closed()
    return (result["rps"], (cpu["end"] - cpu["start"]) / max(result["requests"], 1) * 1e6,
            result.get("cpu_us_per_req", 0.0))


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
    ap.add_argument("--workloads", default="echo,http,api,coros")
    ap.add_argument("--out", help="the JSON report (default bench/results/threads-<python>.json)")
    args = ap.parse_args()
    net.tool("loadgen")
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    python = f"{sys.version.split()[0]}{'' if gil else 't'}"
    print(f"Python {sys.version.split()[0]} GIL={'on' if gil else 'off'} "
          f"cpus={os.cpu_count()} conns={args.conns} {platform.machine()} "
          f"{platform.processor() or ''}".rstrip())
    servers = {"echo": (Echo, "echo"), "http": (Http, "http"), "api": (Api, "http")}
    workloads = args.workloads.split(",")
    counts = [int(t) for t in args.threads.split(",")]
    report = {"python": python, "gil": gil, "cpus": os.cpu_count(), "conns": args.conns,
              "duration": args.duration, "repeat": args.repeat, "results": []}
    # rounds of every thread count in turn, so that the machine's drift
    # (other tenants, frequency) weighs on each count alike
    runs = {}
    for _ in range(args.repeat):
        for threads in counts:
            for name in workloads:
                if name == "coros":
                    run = tonio_loop.run(coroutines(args.coroutines), threads=threads)
                else:
                    protocol, mode = servers[name]
                    run = tonio_loop.run(serve(protocol, mode, args), threads=threads)
                runs.setdefault((threads, name), []).append(run)
    medians = {}
    for threads in counts:
        for name in workloads:
            got = sorted(runs[(threads, name)])
            medians[(threads, name)] = got[len(got) // 2]
            if name == "coros":
                rate = medians[(threads, name)]
                print(f"threads={threads} coros {rate:10.0f} coroutines/s", flush=True)
                report["results"].append({"threads": threads, "workload": name,
                                          "coroutines_per_s": rate, "runs": got})
                continue
            rps, cpu, load = medians[(threads, name)]
            bound = cpu_bound(cpu, load)
            print(f"threads={threads} {name:5} {rps:10.0f} req/s  {cpu:6.1f} us CPU/req "
                  f"+ {load:4.1f} us load generator: {rps / bound:4.0%} of the "
                  f"{bound:7.0f} req/s {os.cpu_count()} CPUs allow (median of {args.repeat})",
                  flush=True)
            report["results"].append({"threads": threads, "workload": name, "rps": rps,
                                      "cpu_us_per_req": cpu, "loadgen_cpu_us_per_req": load,
                                      "cpu_bound_rps": bound, "runs": got})
    for name in workloads:
        if name != "coros" and 1 in counts and 2 in counts:
            ratios = sorted(b[0] / a[0] for a, b in zip(runs[(1, name)], runs[(2, name)]))
            # the most any thread count could serve without a cheaper request
            rps, cpu, load = medians[(1, name)]
            room = cpu_bound(cpu, load) / rps
            print(f"{name:5} threads=2 / threads=1: {ratios[len(ratios) // 2]:.2f}x "
                  f"(median of the {len(ratios)} rounds' ratios, "
                  f"{ratios[0]:.2f}-{ratios[-1]:.2f}); the CPUs leave threads=1 room "
                  f"for {room:.2f}x", flush=True)
    out = args.out or os.path.join(HERE, "results", f"threads-{python}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"written: {os.path.relpath(out)}")


if __name__ == "__main__":
    main()
