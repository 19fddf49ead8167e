"""anyio on tonio_loop, the way its users select a loop:

    anyio.run(main, backend_options={"loop_factory": tonio_loop.new_event_loop})

and, for parity, on asyncio's own loop: task groups, cancel scopes and
deadlines, worker threads both ways, TCP streams, signals and subprocesses.
"""

import asyncio
import os
import signal
import sys
import threading
import time

import pytest

from tests.conftest import LOOP_FACTORIES

anyio = pytest.importorskip("anyio")
from anyio.abc import SocketAttribute  # noqa: E402


@pytest.fixture
def run(loop_name):
    """anyio.run on the parametrized loop; checks that it really ran there."""
    factory = LOOP_FACTORIES[loop_name]
    expected_loop = factory()
    expected = type(expected_loop)
    expected_loop.close()

    def run(func, *args):
        async def main():
            assert type(asyncio.get_running_loop()) is expected
            return await func(*args)

        return anyio.run(main, backend="asyncio", backend_options={"loop_factory": factory})

    return run


def subprocesses_supported(loop_name):
    loop = LOOP_FACTORIES[loop_name]()
    try:
        return type(loop).subprocess_exec is not asyncio.AbstractEventLoop.subprocess_exec
    finally:
        loop.close()


def test_task_group_runs_children_concurrently(run):
    async def main():
        order = []

        async def child(name, delay):
            await anyio.sleep(delay)
            order.append(name)

        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(child, "slow", 0.2)
            tg.start_soon(child, "fast", 0.05)
            tg.start_soon(child, "now", 0)
        return order, anyio.current_time() - start

    order, elapsed = run(main)
    assert order == ["now", "fast", "slow"]
    assert 0.2 <= elapsed < 1.5


def test_failing_child_cancels_its_siblings(run):
    async def main():
        cancelled = []

        async def sleeper(i):
            try:
                await anyio.sleep(10)
            except anyio.get_cancelled_exc_class():
                cancelled.append(i)
                raise

        async def failer():
            await anyio.sleep(0.05)
            raise ValueError("boom")

        with pytest.raises(ExceptionGroup) as info:
            async with anyio.create_task_group() as tg:
                for i in range(3):
                    tg.start_soon(sleeper, i)
                tg.start_soon(failer)
        return info.value, sorted(cancelled)

    group, cancelled = run(main)
    assert cancelled == [0, 1, 2]
    assert [type(e) for e in group.exceptions] == [ValueError]
    assert str(group.exceptions[0]) == "boom"


def test_task_group_start_waits_for_started(run):
    async def main():
        async def server(*, task_status=anyio.TASK_STATUS_IGNORED):
            await anyio.sleep(0.01)
            task_status.started("ready")
            await anyio.sleep(10)

        async with anyio.create_task_group() as tg:
            value = await tg.start(server)
            tg.cancel_scope.cancel()
        return value

    assert run(main) == "ready"


def test_cancel_scopes_and_deadlines(run):
    async def main():
        results = {}
        with anyio.move_on_after(0.05) as scope:
            await anyio.sleep(10)
        results["move_on"] = scope.cancelled_caught

        try:
            with anyio.fail_after(0.05):
                await anyio.sleep(10)
        except TimeoutError:
            results["fail_after"] = "timeout"

        # a shielded scope finishes its work although the outer one is cancelled
        with anyio.CancelScope() as outer:
            outer.cancel()
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.01)
                results["shielded"] = "done"
            await anyio.sleep(10)
        results["outer"] = outer.cancelled_caught

        # a deadline in the past cancels at the first checkpoint
        with anyio.CancelScope(deadline=anyio.current_time() - 1) as past:
            await anyio.sleep(0)
            results["past"] = "not reached"
        results["past"] = past.cancelled_caught
        return results

    assert run(main) == {"move_on": True, "fail_after": "timeout", "shielded": "done",
                         "outer": True, "past": True}


def test_cancelling_a_scope_from_another_task(run):
    async def main():
        scope = anyio.CancelScope()
        reached = anyio.Event()

        async def victim():
            with scope:
                reached.set()
                await anyio.sleep(10)

        async with anyio.create_task_group() as tg:
            tg.start_soon(victim)
            await reached.wait()
            scope.cancel()
        return scope.cancelled_caught

    assert run(main) is True


def test_to_thread_and_back(run):
    async def main():
        loop_thread = threading.get_ident()
        seen = []

        def blocking(x):
            seen.append(threading.get_ident())
            # back into the loop from the worker thread
            now = anyio.from_thread.run(anyio.sleep, 0)
            assert now is None
            return x * 2, anyio.from_thread.run_sync(threading.get_ident)

        results = await asyncio.gather(*[anyio.to_thread.run_sync(blocking, i)
                                         for i in range(5)])
        threaded = getattr(asyncio.get_running_loop(), "threads", 0)
        return loop_thread, seen, results, threaded

    loop_thread, seen, results, threaded = run(main)
    assert [r[0] for r in results] == [0, 2, 4, 6, 8]
    if threaded:
        # back in the loop: on one of its workers, any of them
        assert not {r[1] for r in results} & set(seen)
    else:
        assert {r[1] for r in results} == {loop_thread}
    assert loop_thread not in seen and len(seen) == 5


def test_to_thread_abandoned_on_cancel(run):
    release = threading.Event()

    async def main():
        with anyio.move_on_after(0.1) as scope:
            await anyio.to_thread.run_sync(release.wait, abandon_on_cancel=True)
        return scope.cancelled_caught

    try:
        assert run(main) is True
    finally:
        release.set()


def test_tcp_streams(run):
    async def main():
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(SocketAttribute.local_port)

        async def handle(stream):
            async with stream:
                data = b""
                async for chunk in stream:
                    data += chunk
                await stream.send(data[::-1])

        async def client(i):
            payload = bytes([i]) * 100000 + b"end"
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                await stream.send(payload)
                await stream.send_eof()
                answer = b""
                async for chunk in stream:
                    answer += chunk
            return answer == payload[::-1]

        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, handle)
            ok = await asyncio.gather(*[client(i) for i in range(10)])
            tg.cancel_scope.cancel()
        return ok

    assert run(main) == [True] * 10


def test_signal_receiver(run):
    async def main():
        with anyio.open_signal_receiver(signal.SIGUSR1, signal.SIGUSR2) as signals:
            os.kill(os.getpid(), signal.SIGUSR2)
            os.kill(os.getpid(), signal.SIGUSR1)
            got = set()
            with anyio.fail_after(5):
                async for sig in signals:
                    got.add(sig)
                    if len(got) == 2:
                        break
        return got

    assert run(main) == {signal.SIGUSR1, signal.SIGUSR2}


def test_run_process(run, loop_name, request):
    if not subprocesses_supported(loop_name):
        request.applymarker(pytest.mark.xfail(
            raises=NotImplementedError, strict=True,
            reason="this tonio_loop has no subprocess transports yet "
                   "(loop.subprocess_exec is asyncio.AbstractEventLoop's)"))

    async def main():
        result = await anyio.run_process(
            [sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read().upper())"],
            input=b"hello")
        started = time.monotonic()
        with anyio.move_on_after(0.2):
            await anyio.run_process([sys.executable, "-c", "import time; time.sleep(10)"])
        return result.returncode, result.stdout, time.monotonic() - started

    status, out, elapsed = run(main)
    assert (status, out) == (0, b"HELLO")
    assert elapsed < 5
