"""call_later, call_at, TimerHandle and loop.time(): parity with asyncio."""

import asyncio
import math
import sys
import time

import pytest


def run_until(loop, predicate, timeout=5.0):
    deadline = time.monotonic() + timeout

    def check():
        if predicate() or time.monotonic() > deadline:
            loop.stop()
        else:
            loop.call_later(0.001, check)

    loop.call_soon(check)
    loop.run_forever()
    assert predicate()


def test_time_is_monotonic_clock(loop):
    t0 = time.monotonic()
    lt = loop.time()
    t1 = time.monotonic()
    assert t0 <= lt <= t1


def test_time_has_sub_millisecond_resolution(loop):
    # uvloop rounds loop.time() to milliseconds; asyncio's does not
    stamps = {loop.time() for _ in range(200)}
    assert any((s * 1000) % 1 for s in stamps)


def test_call_later_order_and_args(loop):
    calls = []
    loop.call_later(0.03, calls.append, 3)
    loop.call_later(0.01, calls.append, 1)
    loop.call_later(0.02, calls.append, 2)
    loop.call_later(0.04, loop.stop)
    loop.run_forever()
    assert calls == [1, 2, 3]


def test_same_deadline_all_fire(loop, is_tonio):
    calls = []
    when = loop.time() + 0.01
    for i in range(20):
        loop.call_at(when, calls.append, i)
    loop.call_at(when + 0.01, loop.stop)
    loop.run_forever()
    assert sorted(calls) == list(range(20))
    if is_tonio:
        # asyncio leaves the order undefined; tonio_loop keeps it FIFO
        assert calls == list(range(20))


def test_timer_never_fires_before_its_deadline(loop):
    late = []

    def cb(when):
        late.append(loop.time() - when)

    for i in range(50):
        delay = (i % 7) * 0.0013
        loop.call_later(delay, lambda d=delay, t=loop.time(): cb(t + d))
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert len(late) == 50
    assert min(late) >= 0, min(late)


def test_call_at_deadline_respected(loop):
    fired = []
    when = loop.time() + 0.02
    loop.call_at(when, lambda: fired.append(loop.time()))
    loop.call_at(when + 0.01, loop.stop)
    loop.run_forever()
    assert fired and fired[0] >= when


def test_timer_handle_api(loop):
    def cb():
        pass

    when = loop.time() + 10
    h = loop.call_at(when, cb)
    assert h.when() == pytest.approx(when)
    assert not h.cancelled()
    r = repr(h)
    assert r.startswith("<TimerHandle when=") and "cb()" in r
    h.cancel()
    assert h.cancelled()
    assert r != repr(h) and "cancelled" in repr(h)


def test_call_later_zero_returns_timer_handle(loop):
    h = loop.call_later(0, lambda: None)
    assert type(h).__name__ == "TimerHandle"
    assert hasattr(h, "when")
    loop.call_soon(loop.stop)
    loop.run_forever()


def test_negative_delay_fires_soon(loop):
    calls = []
    loop.call_later(-5, calls.append, "neg")
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert calls == ["neg"]


def test_cancelled_timer_does_not_fire(loop):
    calls = []
    h = loop.call_later(0.01, calls.append, "x")
    loop.call_later(0.01, calls.append, "y")
    h.cancel()
    loop.call_later(0.03, loop.stop)
    loop.run_forever()
    assert calls == ["y"]


def test_cancel_after_due_but_before_run(loop):
    calls = []
    handles = []

    def first():
        calls.append("first")
        handles[0].cancel()

    when = loop.time() + 0.01
    loop.call_at(when, first)
    handles.append(loop.call_at(when, calls.append, "second"))
    loop.call_at(when + 0.02, loop.stop)
    loop.run_forever()
    assert calls == ["first"]


def test_cancel_churn_keeps_order(loop):
    calls = []
    base = loop.time()
    handles = [loop.call_at(base + 0.001 * (i % 10), calls.append, i) for i in range(1000)]
    for h in handles[::2]:
        h.cancel()
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert sorted(calls) == list(range(1, 1000, 2))
    # deadlines are non-decreasing in firing order
    when_of = {i: 0.001 * (i % 10) for i in range(1000)}
    assert [when_of[i] for i in calls] == sorted(when_of[i] for i in calls)


def test_delay_none_and_when_none(loop):
    with pytest.raises(TypeError, match="delay must not be None"):
        loop.call_later(None, print)
    with pytest.raises(TypeError, match="when cannot be None"):
        loop.call_at(None, print)


def test_delay_of_wrong_type(loop):
    with pytest.raises(TypeError):
        loop.call_later("1", print)


def test_nan_delay_fires_at_once(loop, is_tonio):
    if not is_tonio and sys.version_info >= (3, 13):
        pytest.xfail("asyncio 3.13 raises ValueError out of run_forever for a NaN deadline")
    calls = []
    h = loop.call_later(float("nan"), calls.append, "nan")
    assert math.isnan(h.when())
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert calls == ["nan"]


def test_inf_delay_never_fires_and_does_not_block(loop):
    calls = []
    h = loop.call_later(float("inf"), calls.append, "inf")
    assert h.when() == float("inf")
    loop.call_later(0.01, loop.stop)
    t0 = time.monotonic()
    loop.run_forever()
    assert time.monotonic() - t0 < 1
    assert calls == []
    h.cancel()


def test_huge_int_delay(loop):
    with pytest.raises(OverflowError):
        loop.call_later(10 ** 400, print)


def test_timer_comparisons(loop):
    def cb():
        pass

    h1 = loop.call_at(100.0, cb)
    h2 = loop.call_at(200.0, cb)
    h3 = loop.call_at(100.0, cb)
    assert h1 < h2 and h2 > h1 and h1 <= h3 and h1 >= h3
    assert h1 == h3 and h1 != h2
    assert hash(h1) == hash(h3)
    assert h1.__eq__(object()) is NotImplemented
    for h in (h1, h2, h3):
        h.cancel()


def test_timer_wakes_loop_from_poll(loop):
    # nothing else is ready: the loop must sleep in the poll and still wake
    t0 = time.monotonic()
    fired = []
    loop.call_later(0.05, lambda: (fired.append(time.monotonic()), loop.stop()))
    loop.run_forever()
    assert fired[0] - t0 >= 0.05
    assert fired[0] - t0 < 1.0


def test_many_timers_fire_in_deadline_order(loop):
    import random

    rnd = random.Random(7)
    delays = [rnd.random() * 0.05 for _ in range(2000)]
    fired = []
    base = loop.time()
    for d in delays:
        loop.call_at(base + d, fired.append, d)
    loop.call_later(0.08, loop.stop)
    loop.run_forever()
    assert fired == sorted(delays)


async def test_sleep_uses_timers():
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.sleep(0.02)
    assert loop.time() - t0 >= 0.02


async def test_timeout_context_manager():
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await asyncio.sleep(1)


async def test_wait_for_timeout():
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.sleep(1), 0.01)
