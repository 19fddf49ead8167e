"""The loop core: call_soon, timers, cancel churn, call_soon_threadsafe.

These measure the loop's own overhead, so the callbacks do as little as
possible: most are `itertools.count().__next__`, a C callable whose final
value also proves that every callback ran exactly once. Each workload runs a
short warm-up on the same loop first (free lists, allocator arenas, the
ready queue's capacity), then the timed part.
"""

import itertools
import random
import threading
import time

from bench.registry import scale, workload

GROUP = "loop core"
BATCH = 1000  # callbacks or timers scheduled per loop iteration


def _timed_run(loop, start, *args):
    """Seconds that loop.run_forever() takes after call_soon(start, *args)."""
    loop.call_soon(start, *args)
    t0 = time.perf_counter()
    loop.run_forever()
    return time.perf_counter() - t0


def _measure(run, n, per=1, what=None):
    """Warm up with a tenth of n, then time n: run(n, counter) returns the
    seconds it took. With `what`, the counter must have counted n * per
    callbacks."""
    warm = max(1, n // 10)
    run(warm, itertools.count())
    counter = itertools.count()
    seconds = run(n, counter)
    if what is not None:
        got = next(counter)
        if got != n * per:
            raise AssertionError(f"{what}: {got} callbacks ran, expected {n * per}")
    return {"ops": n * per, "seconds": seconds, "total_ops": (n + warm) * per}


@workload("call_soon", group=GROUP, unit="callbacks/s", quick=True, callgrind=True)
def call_soon(new_loop, quick):
    """call_soon(): 1000 callbacks scheduled per loop iteration, then run"""
    loop = new_loop()
    try:
        schedule = loop.call_soon

        def driver(tick, rounds):
            for _ in range(BATCH):
                schedule(tick)
            if rounds > 1:
                schedule(driver, tick, rounds - 1)
            else:
                schedule(loop.stop)

        return _measure(lambda n, counter: _timed_run(loop, driver, counter.__next__, n),
                        scale(300 if quick else 1000), BATCH, "call_soon")
    finally:
        loop.close()


@workload("call_soon_chain", group=GROUP, unit="iterations/s", quick=True, callgrind=True)
def call_soon_chain(new_loop, quick):
    """one callback that reschedules itself: one loop iteration (with its poll) each"""
    loop = new_loop()
    try:
        schedule = loop.call_soon

        def step(left):
            if left > 1:
                schedule(step, left - 1)
            else:
                loop.stop()

        return _measure(lambda n, counter: _timed_run(loop, step, n),
                        scale(100_000 if quick else 300_000))
    finally:
        loop.close()


@workload("timers", group=GROUP, unit="timers/s", quick=True, callgrind=True)
def timers(new_loop, quick):
    """call_later(): 1000 timers per iteration, deadlines spread over 10 ms, all fired"""
    loop = new_loop()
    try:
        later = loop.call_later
        rng = random.Random(7)
        delays = [rng.random() * 0.010 for _ in range(BATCH)]

        def driver(counter, rounds):
            tick = counter.__next__
            for d in delays:
                later(d, tick)
            if rounds > 1:
                loop.call_soon(driver, counter, rounds - 1)
            else:
                # every timer is due within 10 ms from now
                later(0.011, loop.stop)

        return _measure(lambda n, counter: _timed_run(loop, driver, counter, n),
                        scale(200 if quick else 600), BATCH, "timers")
    finally:
        loop.close()


@workload("timer_cancel", group=GROUP, unit="timeouts/s", quick=True, callgrind=True)
def timer_cancel(new_loop, quick):
    """timeout churn: schedule a 60 s timer and cancel the oldest, 1000 live"""
    loop = new_loop()
    try:
        later = loop.call_later

        def never():
            raise AssertionError("a 60 s timeout fired")

        live = [later(60.0, never) for _ in range(BATCH)]

        def driver(rounds):
            # each operation is what a timeout does: arm a timer, and cancel
            # one that was armed earlier when its operation finished in time
            for i in range(BATCH):
                live[i].cancel()
                live[i] = later(60.0, never)
            if rounds > 1:
                loop.call_soon(driver, rounds - 1)
            else:
                loop.stop()

        result = _measure(lambda n, counter: _timed_run(loop, driver, n),
                          scale(200 if quick else 600), BATCH)
        for h in live:
            h.cancel()
        return result
    finally:
        loop.close()


@workload("call_soon_threadsafe", group=GROUP, unit="callbacks/s", quick=True,
          callgrind=True)
def call_soon_threadsafe(new_loop, quick):
    """call_soon_threadsafe() from another thread while the loop runs"""
    loop = new_loop()
    try:

        def produce(counter, n, ready):
            post = loop.call_soon_threadsafe
            tick = counter.__next__
            ready.wait()
            for _ in range(n):
                post(tick)
            post(loop.stop)

        def run(n, counter):
            ready = threading.Event()
            thread = threading.Thread(target=produce, args=(counter, n, ready))
            thread.start()
            # the producer starts once the loop runs, so the poll is live
            seconds = _timed_run(loop, ready.set)
            thread.join()
            return seconds

        return _measure(run, scale(100_000 if quick else 300_000), 1, "call_soon_threadsafe")
    finally:
        loop.close()
