"""Loads that punish a loop's worst case rather than its fast path.

sock_cancel_*: N tasks await loop.sock_recv() on one socket with nothing to
read, then all are cancelled and gathered. The rate is cancellations per
second; a loop whose cost per cancel grows with the number of operations
waiting on the fd shows it as a rate that falls from 5k to 30k.

threadsafe_flood: 8 threads call loop.call_soon_threadsafe() as fast as they
can while the loop awaits asyncio.sleep(0.3) (each thread gives up after
3 s, so that a loop that falls behind ends too). The rate is callbacks run
per second of the sleep; below it, how late the sleep ended and the
process's peak RSS: a loop must keep its timers and its memory while
other threads outrun it.
"""

import asyncio
import resource
import socket
import threading
import time

from bench.registry import duration, scale, workload


def _sock_cancel(new_loop, n):
    loop = new_loop()
    a, b = socket.socketpair()
    a.setblocking(False)

    async def main():
        ops = [asyncio.ensure_future(loop.sock_recv(a, 10)) for _ in range(n)]
        while any(t._fut_waiter is None for t in ops):
            await asyncio.sleep(0.001)
        t0 = time.perf_counter()
        for t in ops:
            t.cancel()
        await asyncio.gather(*ops, return_exceptions=True)
        return time.perf_counter() - t0

    try:
        seconds = loop.run_until_complete(main())
    finally:
        loop.close()
        a.close()
        b.close()
    return {"ops": n, "seconds": seconds}


@workload("sock_cancel_5k", group="overload", unit="cancels/s", quick=True)
def sock_cancel_5k(new_loop, quick):
    """5,000 sock_recv() waiting on one socket, all cancelled and gathered"""
    return _sock_cancel(new_loop, scale(5_000))


@workload("sock_cancel_30k", group="overload", unit="cancels/s", quick=True)
def sock_cancel_30k(new_loop, quick):
    """30,000 sock_recv() waiting on one socket, all cancelled and gathered"""
    return _sock_cancel(new_loop, scale(30_000))


def _threadsafe_flood(new_loop, threads):
    loop = new_loop()
    stop = threading.Event()
    produced = [0] * threads
    ran = [0]
    cap = duration(3.0)    # a loop that never wakes: the flood ends anyway

    def callback():
        ran[0] += 1

    def producer(i):
        t_end = time.monotonic() + cap
        n = 0
        while not stop.is_set() and time.monotonic() < t_end:
            for _ in range(100):
                loop.call_soon_threadsafe(callback)
            n += 100
        produced[i] = n

    async def main():
        workers = [threading.Thread(target=producer, args=(i,)) for i in range(threads)]
        for t in workers:
            t.start()
        t0 = time.perf_counter()
        await asyncio.sleep(duration(0.3))
        slept = time.perf_counter() - t0
        stop.set()
        for t in workers:
            t.join()
        return slept

    try:
        slept = loop.run_until_complete(main())
    finally:
        loop.close()
    return {"ops": ran[0], "seconds": slept,
            "late_ms": (slept - duration(0.3)) * 1000,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


@workload("threadsafe_flood", group="overload", unit="callbacks/s", quick=True,
          figures={"late_ms": "ms late", "peak_rss_mb": "MB peak RSS"})
def threadsafe_flood(new_loop, quick):
    """8 threads flood call_soon_threadsafe() while the loop sleeps 0.3 s"""
    return _threadsafe_flood(new_loop, 8)
