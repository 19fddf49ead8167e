"""call_soon, call_soon_threadsafe and Handle: parity with asyncio's loop."""

import asyncio
import contextvars
import gc
import logging
import sys
import threading
import time
import weakref

import pytest

cvar = contextvars.ContextVar("cvar", default="unset")


def test_fifo_order_and_arguments(loop):
    calls = []
    loop.call_soon(calls.append, 1)
    loop.call_soon(lambda *a: calls.append(a), 2, 3, 4, 5, 6)
    loop.call_soon(calls.append, 7)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == [1, (2, 3, 4, 5, 6), 7]


def test_callbacks_scheduled_by_callbacks_wait_for_next_iteration(loop):
    order = []

    def first():
        order.append("first")
        loop.call_soon(order.append, "nested")

    loop.call_soon(first)
    loop.call_soon(order.append, "second")
    loop.call_soon(loop.stop)
    loop.run_forever()
    # stop() ends the loop after the iteration in which it ran: the nested
    # callback was scheduled during that iteration and has not run yet
    assert order == ["first", "second"]
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert order == ["first", "second", "nested"]


def test_handle_api(loop):
    def cb():
        pass

    h = loop.call_soon(cb)
    assert not h.cancelled()
    assert isinstance(h._context, contextvars.Context)
    if sys.version_info >= (3, 12):
        assert h.get_context() is h._context
    r = repr(h)
    assert r.startswith("<Handle ") and "cb()" in r
    h.cancel()
    assert h.cancelled()
    assert repr(h) == "<Handle cancelled>"
    h.cancel()   # idempotent
    assert weakref.ref(h)() is h


def test_cancelled_handle_does_not_run(loop):
    calls = []
    h = loop.call_soon(calls.append, "x")
    loop.call_soon(calls.append, "y")
    h.cancel()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == ["y"]


def test_cancel_from_earlier_callback(loop):
    calls = []
    h2 = None

    def first():
        calls.append(1)
        h2.cancel()

    loop.call_soon(first)
    h2 = loop.call_soon(calls.append, 2)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == [1]


def test_handle_cancels_itself_while_running(loop):
    holder = {}
    seen = []

    def cb(arg):
        holder["h"].cancel()
        seen.append(arg)

    holder["h"] = loop.call_soon(cb, object())
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(seen) == 1 and holder["h"].cancelled()


def test_context_is_copied_at_schedule_time(loop):
    seen = []
    token = cvar.set("outer")

    def cb():
        seen.append(cvar.get())
        cvar.set("changed in callback")

    try:
        loop.call_soon(cb)
        loop.call_soon(cb)
        cvar.set("after")
        loop.call_soon(loop.stop)
        loop.run_forever()
        # each callback ran in its own copy: the first one's set() did not leak
        assert seen == ["outer", "outer"]
        assert cvar.get() == "after"
    finally:
        cvar.reset(token)


def test_explicit_context(loop):
    ctx = contextvars.Context()
    ctx.run(cvar.set, "in ctx")
    seen = []
    loop.call_soon(lambda: seen.append(cvar.get()), context=ctx)
    loop.call_soon(lambda: seen.append(cvar.get()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["in ctx", "unset"]


def test_context_already_entered_is_reported(loop, caplog):
    ctx = contextvars.copy_context()

    def inner():
        pass

    def outer():
        # runs inside ctx: running another handle of ctx cannot enter it again
        loop.call_soon(inner, context=ctx)._run()

    loop.call_soon(outer, context=ctx)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.run_forever()
    assert len(caplog.records) == 1
    rec = caplog.records[0]
    assert rec.getMessage().startswith("Exception in callback ")
    assert isinstance(rec.exc_info[1], RuntimeError)
    assert "already entered" in str(rec.exc_info[1])


def test_exception_in_callback_goes_to_handler_and_loop_continues(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append((lp, ctx)))
    calls = []

    def bad():
        raise ValueError("boom")

    h = loop.call_soon(bad)
    loop.call_soon(calls.append, "after")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == ["after"]
    assert len(contexts) == 1
    lp, ctx = contexts[0]
    assert lp is loop
    assert isinstance(ctx["exception"], ValueError)
    assert ctx["handle"] is h
    assert ctx["message"].startswith("Exception in callback ")
    assert "bad()" in ctx["message"]


def test_base_exception_other_than_exit_goes_to_handler(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    def bad():
        raise GeneratorExit

    loop.call_soon(bad)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert isinstance(contexts[0]["exception"], GeneratorExit)


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_and_system_exit_propagate(loop, exc):
    calls = []

    def bad():
        raise exc

    loop.call_soon(bad)
    loop.call_soon(calls.append, "next")
    with pytest.raises(exc):
        loop.run_forever()
    assert not loop.is_running()
    # the remaining callback is still queued and runs on the next run
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == ["next"]


def test_non_callable_is_reported_when_run(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    h = loop.call_soon(42)   # accepted outside debug mode, as in asyncio
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert isinstance(contexts[0]["exception"], TypeError)
    assert contexts[0]["handle"] is h


def test_non_callable_rejected_in_debug_mode(loop):
    loop.set_debug(True)
    with pytest.raises(TypeError, match="a callable object was expected by call_soon"):
        loop.call_soon(42)
    with pytest.raises(TypeError, match="a callable object was expected by call_soon_threadsafe"):
        loop.call_soon_threadsafe(42)
    with pytest.raises(TypeError, match="a callable object was expected by call_at"):
        loop.call_later(1, 42)


def test_coroutine_rejected_in_debug_mode(loop):
    loop.set_debug(True)

    async def coro():
        pass

    with pytest.raises(TypeError, match=r"coroutines cannot be used with call_soon\(\)"):
        loop.call_soon(coro)
    c = coro()
    with pytest.raises(TypeError, match=r"coroutines cannot be used with call_soon\(\)"):
        loop.call_soon(c)
    c.close()
    with pytest.raises(TypeError, match=r"coroutines cannot be used with call_at\(\)"):
        loop.call_later(0.1, coro)


def test_coroutine_function_reported_when_run_outside_debug(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    async def coro():
        pass

    with pytest.warns(RuntimeWarning, match="never awaited"):
        loop.call_soon(coro)        # calling it only creates a coroutine
        loop.call_soon(loop.stop)
        loop.run_forever()
        gc.collect()
    assert contexts == []


def test_wrong_argument_types(loop):
    with pytest.raises(TypeError):
        loop.call_soon()
    with pytest.raises(TypeError):
        loop.call_soon(print, foo=1)
    with pytest.raises(TypeError):
        loop.call_soon_threadsafe()


def test_closed_loop_refuses(loop):
    loop.close()
    for call in (lambda: loop.call_soon(print),
                 lambda: loop.call_soon_threadsafe(print),
                 lambda: loop.call_later(1, print),
                 lambda: loop.call_at(1, print),
                 lambda: loop.run_forever()):
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            call()
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.run_until_complete(coro)
    coro.close()


def test_debug_mode_refuses_other_threads(loop):
    loop.set_debug(True)
    errors = []

    def in_thread():
        for call in (lambda: loop.call_soon(print), lambda: loop.call_later(1, print)):
            try:
                call()
            except RuntimeError as exc:
                errors.append(str(exc))
        loop.call_soon_threadsafe(loop.stop)   # this one is allowed

    loop.call_soon(lambda: threading.Thread(target=in_thread).start())
    loop.run_forever()
    assert errors == ["Non-thread-safe operation invoked on an event loop other "
                      "than the current one"] * 2


def test_call_soon_threadsafe_wakes_sleeping_loop(loop):
    # nothing else is scheduled: only the threadsafe call can end the poll
    results = []

    def worker():
        time.sleep(0.05)
        loop.call_soon_threadsafe(results.append, threading.get_ident())
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=worker)
    t0 = time.monotonic()
    t.start()
    loop.run_forever()
    t.join()
    assert results == [t.ident]
    assert time.monotonic() - t0 < 2


def test_call_soon_threadsafe_keeps_order_with_call_soon(loop):
    order = []
    loop.call_soon(order.append, 1)
    loop.call_soon_threadsafe(order.append, 2)
    loop.call_soon(order.append, 3)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert order == [1, 2, 3]


def test_many_threads_call_soon_threadsafe(loop):
    n_threads, per_thread = 8, 500
    got = []
    done = threading.Barrier(n_threads + 1)

    def worker(i):
        for j in range(per_thread):
            loop.call_soon_threadsafe(got.append, (i, j))
        done.wait()

    def start():
        for i in range(n_threads):
            threading.Thread(target=worker, args=(i,)).start()

        def waiter():
            done.wait()
            loop.call_soon_threadsafe(loop.stop)

        threading.Thread(target=waiter).start()

    loop.call_soon(start)
    loop.run_forever()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(got) == n_threads * per_thread
    for i in range(n_threads):
        assert [j for (t, j) in got if t == i] == list(range(per_thread))


def test_a_flood_of_threadsafe_callbacks_leaves_timers_on_time(loop):
    """Threads that call call_soon_threadsafe() as fast as they can while
    the loop sleeps: the sleep ends on time, and the callbacks waiting to
    run stay bounded (tonio_loop makes producers wait for a loop that falls
    behind; asyncio's are slow enough on their own). Sampled by a timer."""
    n_threads = 4
    produced = [0] * n_threads
    ran = [0]
    backlog = []
    stop = threading.Event()

    def callback():
        ran[0] += 1

    def producer(i):
        while not stop.is_set():
            loop.call_soon_threadsafe(callback)
            produced[i] += 1

    def sample():
        backlog.append(sum(produced) - ran[0])
        loop.call_later(0.01, sample)

    async def main():
        threads = [threading.Thread(target=producer, args=(i,)) for i in range(n_threads)]
        for t in threads:
            t.start()
        sample()
        t0 = time.monotonic()
        try:
            await asyncio.sleep(0.2)
            return time.monotonic() - t0
        finally:
            stop.set()
            for t in threads:
                t.join()

    late = loop.run_until_complete(main()) - 0.2
    assert late < 0.5, late
    assert len(backlog) >= 5
    assert max(backlog) < 50_000, max(backlog)


def test_a_producer_that_the_loop_waits_for_is_not_held_up(loop):
    """A callback blocks the loop until a thread has queued 5000 callbacks:
    the thread must not wait for a loop that cannot take them (tonio_loop's
    producers wait for a loop that falls behind, not for a stuck one)."""
    ran = []

    def produce():
        for i in range(5000):
            loop.call_soon_threadsafe(ran.append, i)

    def blocking_callback():
        t = threading.Thread(target=produce)
        t0 = time.monotonic()
        t.start()
        t.join(10)
        ran.append(("joined", not t.is_alive(), time.monotonic() - t0 < 2))

    loop.call_soon(blocking_callback)
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran[0] == ("joined", True, True)
    assert ran[1:] == list(range(5000))


threadsafe_lock = pytest.mark.skipif(
    sys.version_info < (3, 14), reason="3.14 gave call_soon_threadsafe() handles a lock")


@threadsafe_lock
@pytest.mark.parametrize("ask", ["cancel", "cancelled"])
def test_threadsafe_handle_waits_for_a_running_callback(loop, ask):
    """cancel() or cancelled() from another thread while the callback of a
    call_soon_threadsafe() handle runs: it waits until the callback is over."""
    started, release, finished = threading.Event(), threading.Event(), threading.Event()
    seen = []

    def callback():
        started.set()
        release.wait(5)
        time.sleep(0.05)        # the other thread is blocked in cancel() by now
        finished.set()
        loop.stop()

    def other():
        handle = loop.call_soon_threadsafe(callback)
        started.wait(5)
        release.set()
        getattr(handle, ask)()
        seen.append(finished.is_set())

    t = threading.Thread(target=other)
    t.start()
    loop.run_forever()
    t.join(5)
    assert seen == [True]


@threadsafe_lock
def test_threadsafe_handle_cancelled_by_its_own_callback(loop):
    """The callback cancels its own handle (same thread): no deadlock, it
    runs to its end."""
    done = []
    holder = []

    def callback():
        holder[0].cancel()
        done.append(holder[0].cancelled())
        loop.stop()

    holder.append(loop.call_soon_threadsafe(callback))
    loop.run_forever()
    assert done == [True]


@threadsafe_lock
def test_threadsafe_handle_cancelled_before_it_runs(loop):
    ran = []
    blocker = threading.Event()
    loop.call_soon(blocker.wait, 5)
    cancelled = []

    def other():
        handle = loop.call_soon_threadsafe(ran.append, 1)
        handle.cancel()
        cancelled.append(handle.cancelled())
        blocker.set()
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=other)
    t.start()
    loop.run_forever()
    t.join(5)
    assert cancelled == [True] and ran == []


def test_handle_repr_debug_has_source(loop):
    loop.set_debug(True)

    def cb():
        pass

    h = loop.call_soon(cb)
    assert "created at" in repr(h)
    assert __file__.rstrip("c") in repr(h)
    assert h._source_traceback[-1][0] == __file__.rstrip("c")
    h.cancel()
    # a cancelled debug handle keeps its repr (for "Executing ..." logs)
    assert "cb()" in repr(h) and "cancelled" in repr(h)


def test_slow_callback_warning_in_debug_mode(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01

    def slow():
        time.sleep(0.03)

    loop.call_soon(slow)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_forever()
    msgs = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("Executing <Handle") and "slow()" in m and "took" in m
               for m in msgs), msgs


def test_handle_cycle_is_collected(loop):
    class Holder:
        pass

    obj = Holder()
    obj.handle = loop.call_later(100, lambda o=obj: None)
    ref = weakref.ref(obj)
    obj.handle.cancel()
    del obj
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("how", ["ran", "cancelled", "timer_ran", "timer_cancelled"])
def test_cycles_through_handles_are_collected(loop, how):
    class Holder:
        def cb(self):
            pass

    obj = Holder()
    if how.startswith("timer"):
        obj.handle = loop.call_later(0, obj.cb)
    else:
        obj.handle = loop.call_soon(obj.cb)
    if how.endswith("cancelled"):
        obj.handle.cancel()
    ref = weakref.ref(obj)
    del obj
    loop.call_later(0.001, loop.stop)
    loop.run_forever()
    gc.collect()
    assert ref() is None


def test_unclosed_loop_with_pending_callbacks_is_collected(loop_name):
    from tests.conftest import LOOP_FACTORIES

    loop = LOOP_FACTORIES[loop_name]()

    class Holder:
        pass

    obj = Holder()
    obj.loop = loop
    loop.call_soon(lambda o=obj: o)
    loop.call_later(100, lambda o=obj: o)
    ref = weakref.ref(obj)
    with pytest.warns(ResourceWarning, match="unclosed event loop"):
        del loop, obj
        gc.collect()
    gc.collect()
    assert ref() is None
