"""What the README shows, written as a user would, for `mypy --strict`
(tests/test_typing.py): the stubs must accept it without a cast."""

import asyncio
import sys

import tonio_loop
from tonio_loop import sync


async def main() -> int:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[int] = loop.create_future()
    loop.call_soon(fut.set_result, 1)
    task: asyncio.Task[int] = loop.create_task(asyncio.sleep(0, 2))
    queue: sync.Queue[int] = sync.Queue()
    await queue.put(await fut + await task)
    lock = sync.Lock()
    async with lock:
        pass
    event = sync.Event()
    event.set()
    await event.wait()
    cond = sync.Condition(lock)
    async with cond:
        cond.notify_all()
    async with sync.Semaphore(2):
        pass
    return await queue.get()


def run_every_way() -> list[int]:
    results = [tonio_loop.run(main()), tonio_loop.run(main(), threads=2)]
    with asyncio.Runner(loop_factory=tonio_loop.new_event_loop) as runner:
        results.append(runner.run(main()))
    if sys.version_info >= (3, 12):
        results.append(asyncio.run(main(), loop_factory=tonio_loop.new_event_loop))
    loop: tonio_loop.Loop = tonio_loop.new_event_loop(threads=2)
    try:
        results.append(loop.run_until_complete(main()))
        fut: tonio_loop.Future[int] = tonio_loop.Future(loop=loop)
        fut.set_result(3)
        results.append(fut.result())
    finally:
        loop.close()
    tonio_loop.Loop(threads=0).close()
    return results


def the_policy_way() -> None:
    if sys.version_info < (3, 14):
        asyncio.set_event_loop_policy(tonio_loop.EventLoopPolicy())
        tonio_loop.install()
        asyncio.set_event_loop_policy(None)
