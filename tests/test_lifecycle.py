"""run_forever, run_until_complete, stop, close, debug mode and friends."""

import asyncio
import concurrent.futures
import gc
import logging
import sys
import threading
import time
import warnings

import pytest


def test_repr_and_state(loop):
    name = type(loop).__name__
    assert repr(loop) == f"<{name} running=False closed=False debug=False>"
    assert not loop.is_running() and not loop.is_closed()
    seen = []
    loop.call_soon(lambda: seen.append((loop.is_running(), repr(loop))))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == [(True, f"<{name} running=True closed=False debug=False>")]
    loop.close()
    assert loop.is_closed() and not loop.is_running()
    loop.close()   # idempotent


def test_stop_before_run_forever_runs_one_iteration(loop):
    calls = []
    loop.call_soon(calls.append, 1)
    loop.stop()
    loop.run_forever()
    assert calls == [1]
    # and the loop can run again
    loop.call_soon(calls.append, 2)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == [1, 2]


def test_running_loop_is_set_while_running(loop):
    seen = []

    def cb():
        seen.append(asyncio.get_running_loop())
        seen.append(asyncio.get_event_loop())
        loop.stop()

    loop.call_soon(cb)
    loop.run_forever()
    assert seen == [loop, loop]
    with pytest.raises(RuntimeError, match="no running event loop"):
        asyncio.get_running_loop()


def test_run_until_complete_coroutine(loop):
    async def coro(x):
        await asyncio.sleep(0)
        return x * 2

    assert loop.run_until_complete(coro(21)) == 42


def test_run_until_complete_future(loop):
    fut = loop.create_future()
    loop.call_later(0.01, fut.set_result, "done")
    assert loop.run_until_complete(fut) == "done"


def test_run_until_complete_exception(loop):
    async def coro():
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        loop.run_until_complete(coro())


def test_run_until_complete_keyboard_interrupt(loop):
    async def coro():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        loop.run_until_complete(coro())
    assert not loop.is_running()
    # the loop is still usable afterwards
    assert loop.run_until_complete(asyncio.sleep(0, "again")) == "again"


def test_run_until_complete_stopped_early(loop):
    async def coro():
        loop.stop()
        await asyncio.sleep(0.1)

    task = loop.create_task(coro())
    with pytest.raises(RuntimeError, match="Event loop stopped before Future completed."):
        loop.run_until_complete(task)
    task.cancel()
    loop.run_until_complete(asyncio.sleep(0))


def test_run_until_complete_not_a_future(loop):
    with pytest.raises(TypeError):
        loop.run_until_complete("not a coroutine")


def test_run_until_complete_foreign_loop_future(make_loop):
    loop, other = make_loop(), make_loop()
    fut = other.create_future()
    with pytest.raises(ValueError, match="The future belongs to a different loop"):
        loop.run_until_complete(fut)


def test_nested_run_is_refused(loop):
    errors = []

    async def outer():
        coro = asyncio.sleep(0)
        try:
            loop.run_until_complete(coro)
        except RuntimeError as exc:
            errors.append(str(exc))
        finally:
            coro.close()
        try:
            loop.run_forever()
        except RuntimeError as exc:
            errors.append(str(exc))

    loop.run_until_complete(outer())
    assert errors == ["This event loop is already running"] * 2


def test_other_loop_running_in_thread_is_refused(make_loop):
    loop, other = make_loop(), make_loop()
    errors = []

    def cb():
        try:
            other.run_forever()
        except RuntimeError as exc:
            errors.append(str(exc))
        loop.stop()

    loop.call_soon(cb)
    loop.run_forever()
    assert errors == ["Cannot run the event loop while another loop is running"]


def test_close_running_loop_is_refused(loop):
    errors = []

    def cb():
        try:
            loop.close()
        except RuntimeError as exc:
            errors.append(str(exc))
        loop.stop()

    loop.call_soon(cb)
    loop.run_forever()
    assert errors == ["Cannot close a running event loop"]


def test_close_drops_pending_callbacks(loop):
    calls = []
    loop.call_soon(calls.append, 1)
    loop.call_later(0.01, calls.append, 2)
    loop.close()
    assert calls == []


def test_unclosed_loop_resource_warning(loop_name):
    from tests.conftest import LOOP_FACTORIES

    loop = LOOP_FACTORIES[loop_name]()
    with pytest.warns(ResourceWarning, match="unclosed event loop"):
        del loop
        gc.collect()


def test_debug_mode_toggle(loop):
    assert loop.get_debug() is False
    loop.set_debug(True)
    assert loop.get_debug() is True
    assert "debug=True" in repr(loop)
    loop.set_debug(False)
    assert loop.get_debug() is False


def test_debug_mode_enables_coroutine_origin_tracking(loop):
    loop.set_debug(True)
    depths = []
    loop.call_soon(lambda: depths.append(sys.get_coroutine_origin_tracking_depth()))
    loop.call_soon(loop.stop)
    before = sys.get_coroutine_origin_tracking_depth()
    loop.run_forever()
    assert depths[0] > 0
    assert sys.get_coroutine_origin_tracking_depth() == before


def test_pythonasynciodebug_env(monkeypatch, make_loop):
    monkeypatch.setenv("PYTHONASYNCIODEBUG", "1")
    assert make_loop().get_debug() is True


def test_asyncgen_hooks_installed_while_running(loop):
    seen = []
    before = sys.get_asyncgen_hooks()

    def cb():
        hooks = sys.get_asyncgen_hooks()
        seen.append((hooks.firstiter.__self__ is loop, hooks.finalizer.__self__ is loop))
        loop.stop()

    loop.call_soon(cb)
    loop.run_forever()
    assert seen == [(True, True)]
    assert sys.get_asyncgen_hooks() == before


def test_shutdown_asyncgens(loop):
    closed = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)

    async def main():
        g = agen()
        assert await g.__anext__() == 1
        return g

    g = loop.run_until_complete(main())
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert closed == [True]
    del g


def test_run_in_executor(loop):
    def work(a, b):
        return threading.get_ident(), a + b

    ident, result = loop.run_until_complete(loop.run_in_executor(None, work, 1, 2))
    assert result == 3 and ident != threading.get_ident()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert loop.run_until_complete(loop.run_in_executor(pool, work, 2, 3))[1] == 5
    loop.run_until_complete(loop.shutdown_default_executor())
    with pytest.raises(RuntimeError, match="Executor shutdown has been called"):
        loop.run_in_executor(None, work, 1, 1)


def test_set_default_executor(loop):
    with pytest.raises(TypeError):
        loop.set_default_executor(object())
    pool = concurrent.futures.ThreadPoolExecutor(1)
    loop.set_default_executor(pool)
    assert loop.run_until_complete(loop.run_in_executor(None, lambda: 7)) == 7
    loop.close()   # shuts the executor down without waiting
    with pytest.raises(RuntimeError):
        pool.submit(print)


@pytest.mark.skipif(sys.version_info < (3, 13),
                    reason="before 3.13 the timeout only bounds the final thread join")
def test_shutdown_default_executor_timeout(loop):
    ev = threading.Event()
    loop.run_until_complete(loop.run_in_executor(None, lambda: None))
    fut = loop.run_in_executor(None, ev.wait, 5)
    with pytest.warns(RuntimeWarning, match="did not finishing joining"):
        loop.run_until_complete(loop.shutdown_default_executor(timeout=0.05))
    ev.set()
    loop.run_until_complete(fut)


def test_exception_handler_api(loop):
    assert loop.get_exception_handler() is None
    with pytest.raises(TypeError, match="A callable object or None is expected, got 1"):
        loop.set_exception_handler(1)

    def handler(lp, ctx):
        pass

    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None


def test_default_exception_handler_logs(loop, caplog):
    try:
        raise ValueError("logged")
    except ValueError as exc:
        err = exc
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_exception_handler({"message": "something broke", "exception": err,
                                     "extra": 5})
    rec = caplog.records[-1]
    assert "something broke" in rec.getMessage() and "extra: 5" in rec.getMessage()
    assert rec.exc_info[1] is err


def test_failing_exception_handler_falls_back(loop, caplog):
    def handler(lp, ctx):
        raise RuntimeError("handler broke")

    loop.set_exception_handler(handler)
    loop.call_soon(lambda: 1 / 0)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.run_forever()
    msgs = [r.getMessage() for r in caplog.records]
    assert any("Unhandled error in exception handler" in m for m in msgs), msgs


def test_task_factory(loop):
    with pytest.raises(TypeError, match="task factory must be a callable or None"):
        loop.set_task_factory(1)
    made = []

    def factory(lp, coro, **kwargs):
        t = asyncio.Task(coro, loop=lp, **kwargs)
        made.append(t)
        return t

    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    async def coro():
        return 5

    task = loop.create_task(coro(), name="named")
    assert made == [task] and task.get_name() == "named"
    assert loop.run_until_complete(task) == 5
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None


def test_create_task_name_and_context(loop):
    import contextvars

    var = contextvars.ContextVar("v")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in ctx")

    async def coro():
        return var.get("missing")

    task = loop.create_task(coro(), name="t1", context=ctx)
    assert task.get_name() == "t1"
    assert loop.run_until_complete(task) == "in ctx"
    c = coro()
    with pytest.raises(TypeError):
        loop.create_task(c, bogus=1)
    c.close()


def test_create_task_closed_loop(loop):
    loop.close()

    async def coro():
        pass

    c = coro()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.create_task(c)
    c.close()


def test_loop_is_subclassable_and_takes_attributes(loop):
    cls = type(loop)

    class MyLoop(cls):
        def extra(self):
            return "extra"

    sub = MyLoop()
    try:
        sub.anything = 1
        assert sub.anything == 1 and sub.extra() == "extra"
        assert sub.run_until_complete(asyncio.sleep(0, 3)) == 3
    finally:
        sub.close()
    loop.framework_patch = "ok"
    assert loop.framework_patch == "ok"


def test_abstract_event_loop_instance(loop):
    assert isinstance(loop, asyncio.AbstractEventLoop)


def test_time_spent_polling_releases_gil(loop):
    # a busy thread must progress while the loop sleeps in the poll
    counter = [0]
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            counter[0] += 1

    t = threading.Thread(target=spin)
    t.start()
    loop.call_later(0.2, loop.stop)
    before = counter[0]
    loop.run_forever()
    stop.set()
    t.join()
    assert counter[0] - before > 1000


@pytest.mark.parametrize("kwargs, error", [
    ({"thread": 2}, TypeError), ({"threads": -1}, ValueError), ({"threads": "2"}, TypeError)])
def test_a_loop_refused_at_construction_warns_nothing(kwargs, error):
    """tonio_loop.Loop(thread=2) raises; the half-made loop is not the
    caller's to close, so no "unclosed event loop" ResourceWarning follows
    (asyncio's loops take no such arguments), and its fds go with it."""
    import os

    import tonio_loop

    before = len(os.listdir("/proc/self/fd"))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for make in (tonio_loop.Loop, tonio_loop.new_event_loop):
            with pytest.raises(error):
                make(**kwargs)
        gc.collect()
    assert [w for w in seen if issubclass(w.category, ResourceWarning)] == []
    assert len(os.listdir("/proc/self/fd")) == before
