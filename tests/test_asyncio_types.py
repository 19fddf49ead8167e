"""tonio_loop's Future and Task are asyncio's Future and Task to their callers:
isinstance(), the private attributes libraries read, and what anyio decides
from them (a cancel that must not drop a value already handed over). Parity
tests: each runs on asyncio's loop and on tonio_loop."""

import asyncio
import gc
import sys

import anyio
import pytest

import tonio_loop

from tests.conftest import one_thread_only

PY312 = sys.version_info >= (3, 12)


async def _value(v):
    return v


async def test_future_and_task_are_asyncios():
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    task = loop.create_task(_value(1))
    assert isinstance(fut, asyncio.Future)
    assert isinstance(task, asyncio.Task) and isinstance(task, asyncio.Future)
    assert asyncio.isfuture(fut) and asyncio.isfuture(task)
    assert issubclass(type(fut), asyncio.Future) and issubclass(type(task), asyncio.Task)
    assert await task == 1
    fut.cancel()


def test_tonio_classes_subclass_asyncios():
    assert issubclass(tonio_loop.Future, asyncio.Future)
    assert issubclass(tonio_loop.Task, asyncio.Task)
    assert not issubclass(tonio_loop.Future, asyncio.Task)


async def test_task_factory_tasks_are_asyncio_tasks():
    """A task factory that makes the loop's own kind of task (as
    asyncio.eager_task_factory and frameworks' factories do)."""
    loop = asyncio.get_running_loop()
    probe = loop.create_task(_value(0))
    own_task = type(probe)
    made = []

    def factory(loop, coro, **kwargs):
        made.append(own_task(coro, loop=loop, **kwargs))
        return made[-1]

    loop.set_task_factory(factory)
    try:
        task = loop.create_task(_value(1), name="by-factory")
        future = asyncio.ensure_future(_value(2))
    finally:
        loop.set_task_factory(None)
    assert made == [task, future]
    assert isinstance(task, asyncio.Task) and isinstance(future, asyncio.Task)
    assert task.get_name() == "by-factory"
    assert await asyncio.gather(probe, task, future) == [0, 1, 2]


class _MyTask(asyncio.Task):
    """A subclass of asyncio's Task, as frameworks make for a task factory."""

    steps = 0

    def __init__(self, coro, *, loop=None, **kwargs):
        super().__init__(coro, loop=loop, **kwargs)
        self.tag = "mine"


async def test_asyncio_task_subclass_as_task_factory():
    loop = asyncio.get_running_loop()
    loop.set_task_factory(lambda loop, coro, **kw: _MyTask(coro, loop=loop, **kw))
    try:
        task = asyncio.ensure_future(_value(7))
        inner = loop.create_task(_value(8), name="named")
    finally:
        loop.set_task_factory(None)
    assert type(task) is _MyTask and task.tag == "mine"
    assert inner.get_name() == "named"
    assert isinstance(task, asyncio.Task)
    assert await task == 7 and await inner == 8


@pytest.mark.skipif(not PY312, reason="eager tasks are 3.12+")
async def test_eager_tasks_are_asyncio_tasks():
    loop = asyncio.get_running_loop()
    loop.set_task_factory(asyncio.eager_task_factory)
    try:
        done = loop.create_task(_value(3))           # finishes in its first step
        waiting = loop.create_task(asyncio.sleep(0, "x"))
    finally:
        loop.set_task_factory(None)
    assert isinstance(done, asyncio.Task) and isinstance(waiting, asyncio.Task)
    assert done.done() and done.result() == 3
    assert not waiting.done()
    assert await waiting == "x"


async def test_private_attributes_libraries_read():
    """anyio reads _must_cancel, _fut_waiter and _coro; asyncio's own code
    _state, _loop, _callbacks, _result, _exception, _log_traceback."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    async def waits():
        return await fut

    coro = waits()
    task = loop.create_task(coro)
    await asyncio.sleep(0)
    assert task._fut_waiter is fut
    assert task._coro is coro
    assert task._must_cancel is False
    assert task._state == "PENDING" and task._loop is loop
    task.cancel()
    assert fut.cancelled()          # the cancel went to what the task waits on
    assert task._must_cancel is False
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task._fut_waiter is None
    assert task._state == "CANCELLED"

    other = loop.create_future()
    other.set_exception(ValueError("x"))
    assert other._state == "FINISHED" and isinstance(other._exception, ValueError)
    assert other._result is None and other._log_traceback is True
    other._log_traceback = False


async def test_must_cancel_set_while_running():
    loop = asyncio.get_running_loop()
    seen = []

    async def body():
        asyncio.current_task().cancel()
        seen.append(asyncio.current_task()._must_cancel)
        await asyncio.sleep(0)

    task = loop.create_task(body())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == [True]


@one_thread_only     # anyio's cancel scopes are shared by tasks unlocked
async def test_anyio_zero_buffer_stream_cancel_keeps_delivered_items():
    """A consumer waits in receive() on a zero-buffer memory stream inside a
    cancel scope; the producer hands it an item (send_nowait tells it was
    delivered) and cancels the scope in the same step. anyio skips the
    cancellation of a task whose _fut_waiter is an asyncio.Future already
    done, so every item reaches the consumer."""
    rounds = 200
    received = []
    for i in range(rounds):
        send, recv = anyio.create_memory_object_stream(0)
        scopes = []

        async def consumer(*, task_status=anyio.TASK_STATUS_IGNORED):
            with anyio.CancelScope() as scope:
                scopes.append(scope)
                task_status.started()
                received.append(await recv.receive())

        async with anyio.create_task_group() as tg:
            await tg.start(consumer)
            await anyio.sleep(0)
            send.send_nowait(i)
            scopes[0].cancel()
        send.close()
        recv.close()
    assert received == list(range(rounds))


@one_thread_only
async def test_anyio_value_set_then_cancel_in_one_step():
    """The value a waiting task was handed wins over a cancel of its scope
    that comes in the same step."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    out = []

    async def waiter(*, task_status=anyio.TASK_STATUS_IGNORED):
        with anyio.CancelScope() as scope:
            task_status.started(scope)
            out.append(await fut)
        out.append(scope.cancelled_caught)

    async with anyio.create_task_group() as tg:
        scope = await tg.start(waiter)
        fut.set_result("value")
        scope.cancel()
    assert out == ["value", False]


@one_thread_only
async def test_asyncio_and_tonio_objects_mixed():
    """asyncio's own Task and Future classes next to the loop's: each kind
    awaits the other, all_tasks() and current_task() see both."""
    loop = asyncio.get_running_loop()
    own_fut = loop.create_future()
    asyncio_fut = asyncio.Future(loop=loop)
    tonio_fut = tonio_loop.Future(loop=loop)
    seen = {}

    async def wait_for(name, fut):
        seen[name] = asyncio.current_task()
        return await fut

    tasks = {
        "asyncio-on-tonio": asyncio.Task(wait_for("asyncio-on-tonio", tonio_fut), loop=loop),
        "tonio-on-asyncio": tonio_loop.Task(wait_for("tonio-on-asyncio", asyncio_fut), loop=loop),
        "loop-on-own": loop.create_task(wait_for("loop-on-own", own_fut)),
    }
    await asyncio.sleep(0)
    for name, task in tasks.items():
        assert seen[name] is task
    pending = asyncio.all_tasks()
    assert set(tasks.values()) <= pending
    assert asyncio.current_task() in pending
    assert tasks["asyncio-on-tonio"]._fut_waiter is tonio_fut
    assert tasks["tonio-on-asyncio"]._fut_waiter is asyncio_fut
    tonio_fut.set_result(1)
    asyncio_fut.set_result(2)
    own_fut.set_result(3)
    assert await asyncio.gather(*tasks.values()) == [1, 2, 3]
    assert not set(tasks.values()) & asyncio.all_tasks()
    # a task awaiting a task of the other class
    outer = asyncio.Task(_await(tonio_loop.Task(_value(5), loop=loop)), loop=loop)
    assert await outer == 5
    outer = tonio_loop.Task(_await(asyncio.Task(_value(6), loop=loop)), loop=loop)
    assert await outer == 6


async def _await(aw):
    return await aw


def test_futures_and_tasks_are_freed(loop):
    """The part of the object that belongs to asyncio's classes holds no
    reference once the future or task is gone (its instance dict among them)."""
    import weakref

    class Payload:
        pass

    async def body():
        fut = loop.create_future()
        fut.payload = Payload()
        task = loop.create_task(_value(1))
        task.payload = [fut]
        fut.cycle = task
        await task
        fut.set_result(None)
        return weakref.ref(fut), weakref.ref(task), weakref.ref(fut.payload)

    refs = loop.run_until_complete(body())
    gc.collect()
    assert [r() for r in refs] == [None, None, None]
