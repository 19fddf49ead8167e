"""Task: parity with asyncio's Task, and the stdlib that drives tasks
(gather, wait, wait_for, shield, TaskGroup, timeout, locks, queues,
contextvars, current_task/all_tasks) on both loops."""

import asyncio
import concurrent.futures
import contextvars
import gc
import io
import re
import sys
import threading
import types

import pytest

import tonio_loop

from tests.conftest import all_tasks_inside_one_thread, one_thread_only

cvar = contextvars.ContextVar("cvar", default="unset")

TASK_CLASSES = {"asyncio": asyncio.Task, "tonio": tonio_loop.Task}
PY312 = sys.version_info >= (3, 12)


@pytest.fixture(params=list(TASK_CLASSES))
def task_cls(request):
    return TASK_CLASSES[request.param]


def run(loop, coro):
    return loop.run_until_complete(coro)


async def _value(v):
    return v


def test_create_task_type(loop, is_tonio):
    task = loop.create_task(_value(1))
    assert isinstance(task, tonio_loop.Task if is_tonio else asyncio.Task)
    assert asyncio.isfuture(task)
    assert run(loop, task) == 1
    assert task.done() and task.result() == 1


def test_task_names(loop):
    t1 = loop.create_task(_value(1))
    t2 = loop.create_task(_value(2), name="custom")
    t3 = loop.create_task(_value(3), name=42)
    n1 = int(re.fullmatch(r"Task-(\d+)", t1.get_name()).group(1))
    assert t2.get_name() == "custom"
    assert t3.get_name() == "42"
    t1.set_name(("a", 1))
    assert t1.get_name() == "('a', 1)"
    t4 = loop.create_task(_value(4))
    n4 = int(re.fullmatch(r"Task-(\d+)", t4.get_name()).group(1))
    assert n4 > n1
    run(loop, asyncio.wait([t1, t2, t3, t4]))


def test_task_repr(loop):
    async def sleeper():
        await asyncio.sleep(10)

    task = loop.create_task(sleeper(), name="T")
    assert re.fullmatch(r"<Task pending name='T' coro=<.*sleeper\(\) running at .*>>",
                        repr(task))
    run(loop, asyncio.sleep(0))
    assert "wait_for=<Future pending cb=[Task.task_wakeup()]>" in repr(task)
    task.cancel()
    assert repr(task).startswith("<Task cancelling name='T'")
    with pytest.raises(asyncio.CancelledError):
        run(loop, task)
    assert repr(task).startswith("<Task cancelled name='T'")


def test_task_constructor(task_cls, loop):
    async def coro():
        return "ok"

    task = task_cls(coro(), loop=loop, name="n", context=contextvars.copy_context())
    assert run(loop, task) == "ok"
    with pytest.raises(TypeError, match="a coroutine was expected, got 1"):
        task_cls(1, loop=loop)
    with pytest.raises(TypeError):
        task_cls(coro, loop=loop)       # a coroutine function is not one
    c = coro()
    with pytest.raises(TypeError):
        task_cls(c, loop, "x")
    with pytest.raises(TypeError):
        task_cls(c, loop=loop, nosuch=1)
    c.close()


def test_task_set_result_refused(loop):
    task = loop.create_task(_value(1))
    with pytest.raises(RuntimeError, match="Task does not support set_result operation"):
        task.set_result(1)
    with pytest.raises(RuntimeError, match="Task does not support set_exception operation"):
        task.set_exception(ValueError())
    run(loop, task)


def test_class_getitem(task_cls):
    alias = task_cls[int]
    assert isinstance(alias, types.GenericAlias) and alias.__args__ == (int,)


def test_task_exception_and_traceback(loop):
    async def fail():
        raise KeyError("k")

    task = loop.create_task(fail())
    with pytest.raises(KeyError):
        run(loop, task)
    assert isinstance(task.exception(), KeyError)
    frames = task.get_stack()
    assert frames and frames[-1].f_code.co_name == "fail"
    out = io.StringIO()
    task.print_stack(file=out)
    assert "Traceback for <Task finished" in out.getvalue()
    assert "KeyError" in out.getvalue()


def test_get_stack_of_suspended_task(loop):
    async def inner():
        await asyncio.sleep(10)

    task = loop.create_task(inner())
    run(loop, asyncio.sleep(0))
    frames = task.get_stack()
    assert [f.f_code.co_name for f in frames] == ["inner"]
    assert task.get_stack(limit=1)[0].f_code.co_name == "inner"
    out = io.StringIO()
    task.print_stack(limit=1, file=out)
    assert out.getvalue().startswith("Stack for <Task pending")
    with pytest.raises(TypeError):
        task.get_stack(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        run(loop, task)


def test_get_coro_and_context(loop):
    ctx = contextvars.copy_context()
    coro = _value(1)
    task = loop.create_task(coro, context=ctx)
    assert task.get_coro() is coro
    if PY312:
        assert task.get_context() is ctx
    else:
        assert not hasattr(task, "get_context")
    run(loop, task)
    assert task.get_coro() is coro


# ---- cancellation -----------------------------------------------------------

def test_cancel_pending_task_with_message(loop):
    async def sleeper():
        await asyncio.sleep(10)

    task = loop.create_task(sleeper())
    run(loop, asyncio.sleep(0))
    assert task.cancel("stop it") is True
    assert task.cancelling() == 1
    with pytest.raises(asyncio.CancelledError) as info:
        run(loop, task)
    assert info.value.args == ("stop it",)
    assert task.cancelled()
    assert task.cancel() is False


def test_cancel_before_first_step(loop):
    started = []

    async def body():
        started.append(1)

    task = loop.create_task(body())
    task.cancel(msg="early")
    with pytest.raises(asyncio.CancelledError, match="early"):
        run(loop, task)
    assert started == []


def test_cancel_caught_by_coroutine(loop):
    async def stubborn():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError as e:
            return ("caught", e.args, asyncio.current_task().cancelling())

    task = loop.create_task(stubborn())
    run(loop, asyncio.sleep(0))
    task.cancel("m")
    assert run(loop, task) == ("caught", ("m",), 1)
    assert not task.cancelled()


def test_uncancel(loop):
    async def body():
        task = asyncio.current_task()
        task.cancel()
        task.cancel()
        assert task.cancelling() == 2
        assert task.uncancel() == 1
        assert task.uncancel() == 0
        assert task.uncancel() == 0
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            return "cancelled anyway"
        return "not cancelled"

    # 3.13: uncancel() back to zero also withdraws the pending cancellation
    expected = "not cancelled" if sys.version_info >= (3, 13) else "cancelled anyway"
    assert run(loop, body()) == expected


def test_cancel_propagates_to_awaited_task(loop):
    async def inner():
        await asyncio.sleep(10)

    async def outer(t):
        await t

    t_in = loop.create_task(inner())
    t_out = loop.create_task(outer(t_in))
    run(loop, asyncio.sleep(0))
    assert t_out._fut_waiter is t_in
    t_out.cancel("down")
    with pytest.raises(asyncio.CancelledError):
        run(loop, t_out)
    assert t_in.cancelled() and t_out.cancelled()


def test_cancelled_error_chain_is_kept(loop):
    async def body():
        raise asyncio.CancelledError("from inside")

    task = loop.create_task(body())
    with pytest.raises(asyncio.CancelledError) as info:
        run(loop, task)
    assert info.value.args == ("from inside",)
    assert task.cancelled()


def test_must_cancel_attributes(loop):
    task = loop.create_task(_value(1))
    assert task._must_cancel is False and task._fut_waiter is None
    task.cancel()
    assert task._must_cancel is True
    with pytest.raises(asyncio.CancelledError):
        run(loop, task)
    assert task._log_destroy_pending is True
    task._log_destroy_pending = False
    with pytest.raises(AttributeError):
        del task._log_destroy_pending


# ---- what a coroutine may yield ---------------------------------------------

def test_await_task_from_itself(loop):
    async def selfish():
        await asyncio.current_task()

    with pytest.raises(RuntimeError, match="Task cannot await on itself"):
        run(loop, selfish())


def test_bad_yield(loop):
    class Bad:
        def __await__(self):
            yield "nope"

    async def body():
        await Bad()

    with pytest.raises(RuntimeError, match="Task got bad yield: 'nope'"):
        run(loop, body())


def test_yield_instead_of_await(loop):
    @types.coroutine
    def yield_future():
        fut = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(fut.set_result, None)
        yield fut

    async def body():
        await yield_future()

    with pytest.raises(RuntimeError, match="yield was used instead of yield from in task"):
        run(loop, body())


def test_yield_generator(loop):
    @types.coroutine
    def yield_gen():
        yield (x for x in ())

    async def body():
        await yield_gen()

    with pytest.raises(RuntimeError,
                       match="yield was used instead of yield from for generator in task"):
        run(loop, body())


@one_thread_only
def test_bare_yield_gives_one_iteration(loop):
    order = []

    async def a():
        order.append("a1")
        await asyncio.sleep(0)
        order.append("a2")

    async def b():
        order.append("b1")
        await asyncio.sleep(0)
        order.append("b2")

    async def main():
        await asyncio.gather(a(), b())

    run(loop, main())
    assert order == ["a1", "b1", "a2", "b2"]


def test_sleep_zero_result(loop):
    async def body():
        return await asyncio.sleep(0, result="r")

    assert run(loop, body()) == "r"


def test_coroutine_like_object(loop):
    class CoroLike:
        def send(self, value):
            raise StopIteration(42)

        def throw(self, *exc):
            pass

        def close(self):
            pass

        def __await__(self):
            return self

    import collections.abc
    collections.abc.Coroutine.register(CoroLike)
    assert run(loop, loop.create_task(CoroLike())) == 42


# ---- foreign futures, foreign loops --------------------------------------------

def test_task_awaits_foreign_future(loop, is_tonio):
    other_cls = asyncio.Future if is_tonio else tonio_loop.Future

    async def body():
        fut = other_cls(loop=loop)
        loop.call_soon(fut.set_result, "foreign")
        return await fut

    assert run(loop, body()) == "foreign"


def test_task_awaits_foreign_future_cancel(loop, is_tonio):
    other_cls = asyncio.Future if is_tonio else tonio_loop.Future
    fut = other_cls(loop=loop)

    async def body():
        await fut

    task = loop.create_task(body())
    run(loop, asyncio.sleep(0))
    assert task._fut_waiter is fut
    task.cancel("x")
    assert fut.cancelled()
    with pytest.raises(asyncio.CancelledError):
        run(loop, task)


def test_task_of_one_class_awaits_task_of_other(loop, is_tonio):
    other_cls = asyncio.Task if is_tonio else tonio_loop.Task

    async def body():
        inner = other_cls(_value("inner"), loop=loop)
        return await inner

    assert run(loop, body()) == "inner"


def test_tonio_task_on_asyncio_loop():
    loop = asyncio.new_event_loop()
    try:
        async def body():
            fut = loop.create_future()
            loop.call_soon(fut.set_result, 1)
            await fut
            await asyncio.sleep(0)
            assert asyncio.current_task() is task
            return "ran on asyncio"

        task = tonio_loop.Task(body(), loop=loop)
        assert loop.run_until_complete(task) == "ran on asyncio"
        assert asyncio.all_tasks(loop) == set()
    finally:
        loop.close()


def test_await_future_of_other_loop(make_loop):
    loop, other = make_loop(), make_loop()
    fut = other.create_future()

    async def body():
        await fut

    with pytest.raises(RuntimeError, match="got Future .* attached to a different loop"):
        run(loop, body())
    fut.cancel()


# ---- registration: current_task, all_tasks ------------------------------------

def test_current_task(loop):
    assert asyncio.current_task(loop) is None

    async def body():
        return asyncio.current_task()

    task = loop.create_task(body())
    assert run(loop, task) is task
    assert asyncio.current_task(loop) is None


def test_current_task_in_plain_callback_is_none(loop):
    seen = []

    async def body():
        loop.call_soon(lambda: seen.append(asyncio.current_task(loop)))
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    run(loop, body())
    assert seen == [None]


@all_tasks_inside_one_thread
def test_all_tasks(loop):
    async def sleeper():
        await asyncio.sleep(10)

    async def main():
        tasks = {loop.create_task(sleeper()) for _ in range(5)}
        await asyncio.sleep(0)
        everything = asyncio.all_tasks()
        assert tasks <= everything
        assert asyncio.current_task() in everything
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return asyncio.current_task(), asyncio.all_tasks()

    current, remaining = run(loop, main())
    assert remaining == {current}
    assert asyncio.all_tasks(loop) == set()


def test_all_tasks_sees_not_yet_started_task(loop):
    async def main():
        t = loop.create_task(_value(1))
        assert t in asyncio.all_tasks()
        await t
        assert t not in asyncio.all_tasks()

    run(loop, main())


def test_task_destroyed_pending_is_logged(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    async def forever():
        await loop.create_future()

    task = loop.create_task(forever())
    run(loop, asyncio.sleep(0))
    del task
    gc.collect()
    messages = [c["message"] for c in contexts]
    assert "Task was destroyed but it is pending!" in messages


def test_task_exception_never_retrieved_is_logged(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    async def fail():
        raise ValueError("lost")

    task = loop.create_task(fail())
    run(loop, asyncio.sleep(0))
    run(loop, asyncio.sleep(0))
    assert task.done()
    del task
    gc.collect()
    assert [c["message"] for c in contexts] == ["Task exception was never retrieved"]
    assert isinstance(contexts[0]["exception"], ValueError)


def test_keyboard_interrupt_escapes_the_loop(loop):
    async def body():
        raise KeyboardInterrupt

    task = loop.create_task(body())
    with pytest.raises(KeyboardInterrupt):
        run(loop, task)
    assert task.done()
    with pytest.raises(KeyboardInterrupt):
        task.result()


def test_task_steps_in_its_context(loop):
    async def body(tag):
        cvar.set(tag)
        await asyncio.sleep(0)
        return cvar.get()

    async def main():
        cvar.set("outer")
        results = await asyncio.gather(body("a"), body("b"))
        return results, cvar.get()

    assert run(loop, main()) == (["a", "b"], "outer")


def test_task_with_explicit_context(loop):
    ctx = contextvars.Context()
    ctx.run(cvar.set, "explicit")

    async def body():
        value = cvar.get()
        cvar.set("changed")
        return value

    assert run(loop, loop.create_task(body(), context=ctx)) == "explicit"
    assert ctx[cvar] == "changed"


def test_task_factory(loop):
    made = []

    def factory(lp, coro, **kwargs):
        task = asyncio.Task(coro, loop=lp, **kwargs)
        made.append(task)
        return task

    loop.set_task_factory(factory)
    task = loop.create_task(_value(3), name="f")
    assert made == [task] and task.get_name() == "f"
    assert run(loop, task) == 3


@pytest.mark.skipif(not PY312, reason="eager tasks arrived in 3.12")
def test_eager_start(task_cls, loop):
    order = []

    async def body():
        order.append("body starts")
        await asyncio.sleep(0)
        order.append("body resumes")
        return "eager"

    async def main():
        t = task_cls(body(), loop=loop, eager_start=True)
        order.append("constructor returned")
        assert not t.done() and t in asyncio.all_tasks()
        return await t

    assert run(loop, main()) == "eager"
    assert order == ["body starts", "constructor returned", "body resumes"]


@pytest.mark.skipif(not PY312, reason="eager tasks arrived in 3.12")
def test_eager_task_done_in_one_step(task_cls, loop):
    async def main():
        t = task_cls(_value(5), loop=loop, eager_start=True)
        assert t.done() and t.result() == 5
        if task_cls is tonio_loop.Task or sys.version_info >= (3, 13):
            # CPython 3.12.1's C Task crashes here (get_coro() of a task that
            # finished eagerly returns NULL); its Python Task returns None
            assert t.get_coro() is None
        assert t not in asyncio.all_tasks()
        return t

    run(loop, main())


@pytest.mark.skipif(not PY312, reason="eager tasks arrived in 3.12")
def test_eager_task_factories(task_cls, loop):
    seen = []

    async def body():
        seen.append(asyncio.current_task())
        return 1

    for factory in (asyncio.eager_task_factory, asyncio.create_eager_task_factory(task_cls)):
        loop.set_task_factory(factory)

        async def main():
            t = loop.create_task(body())
            assert t.done()
            return t

        t = run(loop, main())
        assert seen[-1] is t and t.result() == 1
    assert type(seen[-1]) is task_cls


# ---- the stdlib on top ------------------------------------------------------

async def test_gather_results_and_errors():
    async def boom():
        raise ValueError("b")

    assert await asyncio.gather(*[_value(i) for i in range(10)]) == list(range(10))
    res = await asyncio.gather(_value(1), boom(), return_exceptions=True)
    assert res[0] == 1 and isinstance(res[1], ValueError)
    with pytest.raises(ValueError):
        await asyncio.gather(_value(1), boom())


async def test_wait_first_completed():
    loop = asyncio.get_running_loop()
    slow = loop.create_task(asyncio.sleep(10))
    fast = loop.create_task(_value("fast"))
    done, pending = await asyncio.wait({slow, fast}, return_when=asyncio.FIRST_COMPLETED)
    assert done == {fast} and pending == {slow}
    slow.cancel()
    done, pending = await asyncio.wait({slow})
    assert slow.cancelled()


async def test_wait_for_and_timeout():
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.sleep(10), 0.01)
    assert await asyncio.wait_for(_value(4), 1) == 4
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await asyncio.sleep(10)


async def test_shield():
    loop = asyncio.get_running_loop()
    inner = loop.create_task(asyncio.sleep(0.01, result="inner"))
    outer = asyncio.ensure_future(asyncio.shield(inner))
    await asyncio.sleep(0)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert await inner == "inner"


async def test_as_completed():
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(asyncio.sleep(d, result=d)) for d in (0.03, 0.01, 0.02)]
    results = [await f for f in asyncio.as_completed(tasks)]
    assert results == [0.01, 0.02, 0.03]


async def test_taskgroup():
    async def fail():
        await asyncio.sleep(0)
        raise KeyError("tg")

    results = []
    async with asyncio.TaskGroup() as tg:
        for i in range(3):
            tg.create_task(_value(i)).add_done_callback(lambda t: results.append(t.result()))
    assert sorted(results) == [0, 1, 2]
    with pytest.raises(ExceptionGroup) as info:
        async with asyncio.TaskGroup() as tg:
            sleeper = tg.create_task(asyncio.sleep(10))
            tg.create_task(fail())
    assert info.group_contains(KeyError) if hasattr(info, "group_contains") else True
    assert sleeper.cancelled()


@one_thread_only
async def test_locks_events_semaphores_conditions():
    lock = asyncio.Lock()
    event = asyncio.Event()
    sem = asyncio.Semaphore(2)
    cond = asyncio.Condition()
    order = []

    async def worker(i):
        async with sem:
            async with lock:
                order.append(i)
                await asyncio.sleep(0)
        await event.wait()
        async with cond:
            await cond.wait()
            order.append(f"notified {i}")

    tasks = [asyncio.ensure_future(worker(i)) for i in range(4)]
    await asyncio.sleep(0.01)
    assert sorted(order) == [0, 1, 2, 3]
    event.set()
    await asyncio.sleep(0.01)
    async with cond:
        cond.notify_all()
    await asyncio.gather(*tasks)
    assert sorted(order[4:]) == [f"notified {i}" for i in range(4)]


@one_thread_only     # asyncio.Queue shared by two tasks (tonio_loop.sync.Queue: test_sync)
async def test_queue_producer_consumer():
    q = asyncio.Queue(maxsize=2)

    async def producer():
        for i in range(100):
            await q.put(i)
        await q.put(None)

    async def consumer():
        got = []
        while (item := await q.get()) is not None:
            got.append(item)
            q.task_done()
        q.task_done()
        return got

    _, got = await asyncio.gather(producer(), consumer())
    assert got == list(range(100))
    await q.join()


def test_run_coroutine_threadsafe(loop):
    results = []

    def from_thread():
        cf = asyncio.run_coroutine_threadsafe(asyncio.sleep(0.01, result="t"), loop)
        results.append(cf.result(timeout=5))
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=from_thread)
    t.start()
    loop.run_forever()
    t.join()
    assert results == ["t"]


def test_future_set_from_threads_via_call_soon_threadsafe(loop):
    n = 200
    futures = [loop.create_future() for _ in range(n)]

    def setter(chunk):
        for i, fut in chunk:
            loop.call_soon_threadsafe(fut.set_result, i)

    async def main():
        threads = [threading.Thread(target=setter, args=(list(enumerate(futures))[k::4],))
                   for k in range(4)]
        for t in threads:
            t.start()
        results = await asyncio.gather(*futures)
        for t in threads:
            t.join()
        return results

    assert run(loop, main()) == list(range(n))


def test_run_in_executor_result_wakes_task(loop):
    def work(x):
        return x * 2

    async def main():
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            return await asyncio.gather(*[loop.run_in_executor(pool, work, i)
                                          for i in range(20)])

    assert run(loop, main()) == [i * 2 for i in range(20)]


def test_asyncio_run_with_tonio_loop_factory():
    async def main():
        task = asyncio.current_task()
        return type(task), await asyncio.gather(_value(1), _value(2))

    task_type, res = tonio_loop.run(main())
    assert task_type is tonio_loop.Task and res == [1, 2]
