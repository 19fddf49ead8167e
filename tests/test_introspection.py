"""What asyncio tells about the tasks of a loop: all_tasks(), current_task(),
eager tasks, and 3.14's call graph (capture_call_graph, format/print,
future_add_to_awaited_by). Parity tests: the same answers on both loops, on
every Python where the API exists."""

import asyncio
import io
import re
import sys

import pytest

from tests.conftest import all_tasks_inside_one_thread, one_thread_only

PY312 = sys.version_info >= (3, 12)
PY314 = sys.version_info >= (3, 14)


async def _value(v):
    return v


@all_tasks_inside_one_thread
async def test_all_tasks_sees_pending_tasks_only():
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    async def wait():
        await fut

    waiting = [loop.create_task(wait(), name=f"w{i}") for i in range(3)]
    not_started = loop.create_task(_value(1), name="not-started")
    me = asyncio.current_task()
    tasks = asyncio.all_tasks()
    assert set(waiting) | {not_started, me} <= tasks
    assert asyncio.all_tasks(loop) == tasks
    await not_started
    await asyncio.sleep(0)
    assert not_started not in asyncio.all_tasks()
    fut.set_result(None)
    await asyncio.gather(*waiting)
    assert not set(waiting) & asyncio.all_tasks()
    assert me in asyncio.all_tasks()


def test_all_tasks_of_a_loop_not_running(loop):
    async def wait_forever():
        await asyncio.Event().wait()

    task = loop.create_task(wait_forever())
    assert asyncio.all_tasks(loop) == {task}
    task.cancel()
    loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
    assert asyncio.all_tasks(loop) == set()


async def test_current_task_in_steps_and_callbacks():
    loop = asyncio.get_running_loop()
    seen = []

    async def child():
        seen.append(asyncio.current_task())
        await asyncio.sleep(0)
        seen.append(asyncio.current_task())

    task = loop.create_task(child())
    loop.call_soon(lambda: seen.append(asyncio.current_task()))
    await task
    assert seen[0] is task and seen[-1] is task
    assert None in seen                         # the plain callback: no task
    assert asyncio.current_task() is not task
    assert asyncio.current_task(loop) is asyncio.current_task()


def test_current_task_outside_any_step(loop):
    assert asyncio.current_task(loop) is None


@pytest.mark.skipif(not PY312, reason="eager tasks are 3.12+")
async def test_eager_task_in_all_tasks_and_current_task():
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    seen = []

    async def body():
        seen.append(asyncio.current_task())
        seen.append(asyncio.current_task() in asyncio.all_tasks())
        await fut
        return "done"

    loop.set_task_factory(asyncio.eager_task_factory)
    try:
        task = loop.create_task(body())
    finally:
        loop.set_task_factory(None)
    assert seen == [task, True]          # ran its first step inside create_task
    assert task in asyncio.all_tasks()  # pending: still listed
    fut.set_result(None)
    assert await task == "done"
    assert task not in asyncio.all_tasks()


pytestmark_graph = pytest.mark.skipif(not PY314, reason="the call graph is 3.14+")


def _graph_text(fut):
    text = asyncio.format_call_graph(fut)
    return re.sub(r"id=0x[0-9a-f]+", "id", text)


async def _leaf(fut):
    await fut


async def _mid(fut):
    await asyncio.gather(_leaf(fut))


@pytestmark_graph
@one_thread_only        # the graph is read while the tasks wait, from one thread
async def test_capture_call_graph_through_gather():
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    task = loop.create_task(_mid(fut), name="mid")
    for _ in range(3):
        await asyncio.sleep(0)
    waiters = fut._asyncio_awaited_by
    assert waiters is not None and len(waiters) == 1
    leaf = next(iter(waiters))
    assert leaf._asyncio_awaited_by == frozenset({task})
    graph = asyncio.capture_call_graph(fut)
    assert graph.future is fut
    assert [e.future for e in graph.awaited_by] == [leaf]
    assert [e.future for e in graph.awaited_by[0].awaited_by] == [task]
    text = _graph_text(fut)
    assert "Task(name='mid', id)" in text and "async _leaf()" in text
    buf = io.StringIO()
    asyncio.print_call_graph(fut, file=buf)
    assert re.sub(r"id=0x[0-9a-f]+", "id", buf.getvalue()) == text + "\n"
    fut.set_result(None)
    await task
    assert fut._asyncio_awaited_by is None


@pytestmark_graph
@one_thread_only
async def test_capture_call_graph_of_the_running_task():
    async def inner():
        return asyncio.capture_call_graph()

    graph = await asyncio.get_running_loop().create_task(inner(), name="runner")
    assert graph.future.get_name() == "runner"
    assert [f.frame.f_code.co_name for f in graph.call_stack][:1] == ["inner"]


@pytestmark_graph
async def test_future_add_to_awaited_by_and_discard():
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    me = asyncio.current_task()
    asyncio.future_add_to_awaited_by(fut, me)
    assert fut._asyncio_awaited_by == frozenset({me})
    asyncio.future_discard_from_awaited_by(fut, me)
    assert fut._asyncio_awaited_by is None
    fut.cancel()


@pytestmark_graph
@one_thread_only
async def test_tasks_awaiting_futures_of_the_other_kind():
    """The loop's task on asyncio's own Future, asyncio's Task on the loop's
    future: both edges are in the graph."""
    loop = asyncio.get_running_loop()
    foreign = asyncio.Future(loop=loop)
    own = loop.create_future()
    t1 = loop.create_task(_leaf(foreign), name="on-foreign")
    t2 = asyncio.Task(_leaf(own), loop=loop, name="asyncio-task")
    await asyncio.sleep(0)
    assert foreign._asyncio_awaited_by == frozenset({t1})
    assert own._asyncio_awaited_by == frozenset({t2})
    foreign.set_result(None)
    own.set_result(None)
    await asyncio.gather(t1, t2)
    assert foreign._asyncio_awaited_by is None and own._asyncio_awaited_by is None
