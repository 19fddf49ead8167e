"""Futures and tasks: where asyncio's own C Future/Task (what uvloop runs)
meets tonio_loop's.

What bounds the ratios (measured with callgrind, see the futures branch's
report): asyncio.sleep(0) is Python (a coroutine plus a generator per
call), about 3,100 instructions of the ~4,400 a switch costs on tonio_loop;
gather() runs ~11,000 instructions of its own Python per item and, with a
million live objects, CPython's cyclic GC takes ~45% of the wall time on
every loop.

Each workload runs a short warm-up on the same loop first (free lists,
allocator arenas), then the timed part, and checks the result so a broken
loop cannot look fast.
"""

import asyncio
import gc
import os
import time

from bench.registry import workload

try:
    from bench.registry import scale
except ImportError:     # a registry without the tiny smoke-run mode
    def scale(n):
        return n

GROUP = "tasks"


def _measure(new_loop, main, n, check):
    """Seconds that main(n) takes on a fresh loop, after a warm-up run of
    main(n // 20); check() vets the result."""
    loop = new_loop()
    try:
        loop.run_until_complete(main(max(1, n // 20)))
        t0 = time.perf_counter()
        result = loop.run_until_complete(main(n))
        seconds = time.perf_counter() - t0
        check(result)
        return seconds
    finally:
        loop.close()


def _sum_below(n):
    def check(total):
        assert total == n * (n - 1) // 2, total
    return check


@workload("sleep0_pingpong", group=GROUP, unit="switches/s", quick=True)
def sleep0_pingpong(new_loop, quick):
    """two tasks taking turns with `await asyncio.sleep(0)` (a bare yield each)"""
    n = scale(100_000 if quick else 1_000_000)

    async def player(k):
        for _ in range(k):
            await asyncio.sleep(0)
        return k

    async def main(k):
        return await asyncio.gather(player(k), player(k))

    def check(result):
        assert result == [n, n], result

    return {"ops": 2 * n, "seconds": _measure(new_loop, main, n, check)}


@workload("create_task_chain", group=GROUP, unit="tasks/s", quick=True)
def create_task_chain(new_loop, quick):
    """`await loop.create_task(coro())` in a loop: create, switch, finish, wake"""
    n = scale(50_000 if quick else 500_000)

    async def child(i):
        return i

    async def main(k):
        create = asyncio.get_running_loop().create_task
        total = 0
        for i in range(k):
            total += await create(child(i))
        return total

    return {"ops": n, "seconds": _measure(new_loop, main, n, _sum_below(n))}


@workload("gather_squares", group=GROUP, unit="coroutines/s", quick=True)
def gather_squares(new_loop, quick):
    """TonIO's workload: gather() over 1M coroutines computing i ** 2"""
    n = scale(50_000 if quick else 1_000_000)

    async def square(i):
        return i ** 2

    async def main(k):
        return await asyncio.gather(*[square(i) for i in range(k)])

    def check(result):
        assert len(result) == n and result[-1] == (n - 1) ** 2

    return {"ops": n, "seconds": _measure(new_loop, main, n, check)}


def _queue_run(new_loop, n, maxsize):
    async def producer(q, k):
        for i in range(k):
            await q.put(i)
        await q.put(None)

    async def consumer(q):
        total = 0
        while (item := await q.get()) is not None:
            total += item
        return total

    async def main(k):
        q = asyncio.Queue(maxsize=maxsize)
        _, total = await asyncio.gather(producer(q, k), consumer(q))
        return total

    return {"ops": n, "seconds": _measure(new_loop, main, n, _sum_below(n))}


@workload("queue_pipe", group=GROUP, unit="items/s", quick=True)
def queue_pipe(new_loop, quick):
    """asyncio.Queue(maxsize=1), producer and consumer: a hand-off per item"""
    return _queue_run(new_loop, scale(50_000 if quick else 500_000), 1)


@workload("queue_buffered", group=GROUP, unit="items/s")
def queue_buffered(new_loop, quick):
    """asyncio.Queue(maxsize=100): a task switch per 100 items, the rest is Queue's Python"""
    return _queue_run(new_loop, scale(100_000 if quick else 1_000_000), 100)


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@workload("pending_tasks", group=GROUP, unit="tasks/s", quick=True)
def pending_tasks(new_loop, quick):
    """1M tasks started and left waiting on one future: start rate and memory"""
    n = scale(50_000 if quick else 1_000_000)

    async def wait_on(fut):
        await fut

    async def main(k):
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        gc.collect()
        before = _rss_bytes()
        t0 = time.perf_counter()
        tasks = [loop.create_task(wait_on(fut)) for _ in range(k)]
        await asyncio.sleep(0)      # every task has run up to `await fut`
        seconds = time.perf_counter() - t0
        grown = _rss_bytes() - before
        assert all(t._fut_waiter is fut for t in tasks[:10])
        fut.set_result(None)
        await asyncio.gather(*tasks)
        return seconds, grown

    loop = new_loop()
    try:
        loop.run_until_complete(main(max(1, n // 20)))
        seconds, grown = loop.run_until_complete(main(n))
        return {"ops": n, "seconds": seconds, "bytes_per_task": round(grown / n, 1)}
    finally:
        loop.close()
