"""The Event/Waiter core under threads.

tonio_loop._core.Event is the once-set flag with a waiter list that every
Future stands on, exposed for exactly these tests: set() and wait() from any
thread. Where it overlaps threading.Event (is_set, wait with and without a
timeout) both run the same test; set() returning whether this call set the
flag, and the waiter count, are the core's own.
"""

import random
import threading
import time

import pytest

from tonio_loop import _core

EVENTS = {"threading": threading.Event, "tonio": _core.Event}


@pytest.fixture(params=list(EVENTS))
def event_cls(request):
    return EVENTS[request.param]


def test_wait_after_set_returns_at_once(event_cls):
    ev = event_cls()
    assert not ev.is_set()
    ev.set()
    assert ev.is_set()
    t0 = time.monotonic()
    assert ev.wait() is True
    assert ev.wait(5) is True
    assert time.monotonic() - t0 < 1


def test_wait_times_out(event_cls):
    ev = event_cls()
    t0 = time.monotonic()
    assert ev.wait(0.05) is False
    assert time.monotonic() - t0 >= 0.04
    assert ev.wait(0) is False
    assert ev.wait(-1) is False


def test_waiters_in_threads_all_wake(event_cls):
    ev = event_cls()
    results = []
    lock = threading.Lock()

    def waiter():
        r = ev.wait(10)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=waiter) for _ in range(16)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    ev.set()
    for t in threads:
        t.join(10)
    assert results == [True] * 16


def test_wait_arguments(event_cls):
    ev = event_cls()
    with pytest.raises(TypeError):
        ev.wait("soon")


def test_set_is_won_once():
    ev = _core.Event()
    assert ev.set() is True
    assert ev.set() is False
    assert ev.is_set()
    with pytest.raises(TypeError):
        _core.Event(1)


def test_racing_setters_one_winner():
    for _ in range(50):
        ev = _core.Event()
        wins = []
        barrier = threading.Barrier(8)

        def setter():
            barrier.wait()
            wins.append(ev.set())

        threads = [threading.Thread(target=setter) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(wins) == [False] * 7 + [True]


def test_timed_out_waiters_leave_the_list():
    ev = _core.Event()
    threads = [threading.Thread(target=ev.wait, args=(0.02,)) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert ev._waiters() == 0
    assert not ev.is_set()


def test_hammer_many_events_many_threads():
    """Waiters with random timeouts and setters in random order, on many
    events at once: every set() wins exactly once, every waiter that saw True
    finds the event set, and no waiter is left queued."""
    n_events, n_waiters, n_setters = 200, 12, 4
    events = [_core.Event() for _ in range(n_events)]
    wins = [0] * n_events
    bad = []
    lock = threading.Lock()
    start = threading.Barrier(n_waiters + n_setters)

    def waiter(seed):
        rnd = random.Random(seed)
        start.wait()
        for ev in rnd.sample(events, len(events)):
            if ev.wait(rnd.choice((0, 0.0005, 0.002, None if ev.is_set() else 0.001))):
                if not ev.is_set():
                    bad.append("woken but not set")

    def setter(seed):
        rnd = random.Random(seed)
        start.wait()
        for i in rnd.sample(range(n_events), n_events):
            if events[i].set():
                with lock:
                    wins[i] += 1
            if rnd.random() < 0.1:
                time.sleep(0.0002)

    threads = ([threading.Thread(target=waiter, args=(k,)) for k in range(n_waiters)] +
               [threading.Thread(target=setter, args=(100 + k,)) for k in range(n_setters)])
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert bad == []
    assert wins == [1] * n_events
    assert all(ev.is_set() and ev._waiters() == 0 for ev in events)
    # waiting after the fact never blocks
    assert all(ev.wait(10) for ev in events)


def test_waiter_removed_while_setter_fires():
    """A waiter whose timeout ends just as a setter detaches it must still get
    its wake-up (never a lost one, never a use of a gone waiter)."""
    for i in range(300):
        ev = _core.Event()
        out = []
        t = threading.Thread(target=lambda: out.append(ev.wait(0.0002 * (i % 5))))
        t.start()
        time.sleep(0.0002 * (i % 3))
        ev.set()
        t.join(10)
        assert not t.is_alive()
        assert ev._waiters() == 0


def test_ctrl_c_interrupts_a_wait(event_cls):
    import os
    import signal

    ev = event_cls()
    timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        ev.wait(10)
    timer.join()
    assert time.monotonic() - t0 < 5
    if isinstance(ev, _core.Event):
        assert ev._waiters() == 0
