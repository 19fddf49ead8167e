"""Loop(threads=N): the guarantees of the multi-threaded mode.

Each scenario runs on asyncio's loop and on a tonio_loop loop with worker
threads: the outcomes (counts, orders, which task is current) must be the
same. Checks that only make sense with threads (work really spreads over
several threads) are made on tonio_loop only.
"""

import asyncio
import os
import signal
import socket
import sys
import threading
import time

import pytest

import tonio_loop
from tonio_loop import sync

from .tlsutil import make_certs

THREADS = 4

FACTORIES = {
    "asyncio": asyncio.new_event_loop,
    "tonio-threads": lambda: tonio_loop.new_event_loop(threads=THREADS),
}


@pytest.fixture(params=list(FACTORIES))
def tloop(request):
    loop = FACTORIES[request.param]()
    yield loop
    if not loop.is_closed():
        loop.close()


def threaded(loop):
    return isinstance(loop, tonio_loop.Loop)


# ---- the API ------------------------------------------------------------


def test_threads_attribute():
    for n in (0, 1, 3):
        loop = tonio_loop.new_event_loop(threads=n)
        try:
            assert loop.threads == n
        finally:
            loop.close()
    loop = tonio_loop.Loop(threads=2)
    assert loop.threads == 2
    loop.close()
    loop = tonio_loop.new_event_loop()
    assert loop.threads == 0
    loop.close()


@pytest.mark.parametrize("bad, exc", [(-1, ValueError), ("2", TypeError), (2.0, TypeError),
                                       (True, TypeError), (10**30, ValueError),
                                       (100000, ValueError)])
def test_threads_bad_values(bad, exc):
    with pytest.raises(exc):
        tonio_loop.new_event_loop(threads=bad)


def test_threads_fixed_once_made():
    loop = tonio_loop.Loop(threads=2)
    try:
        with pytest.raises(RuntimeError):
            loop.__init__(threads=3)
        loop.__init__(threads=2)   # the same number is no change
        assert loop.threads == 2
    finally:
        loop.close()


def test_run_with_threads():
    async def main():
        loop = asyncio.get_running_loop()
        return loop.threads, asyncio.current_task() is not None

    assert tonio_loop.run(main(), threads=2) == (2, True)


# ---- tasks on workers ----------------------------------------------------


def test_tasks_spread_over_workers(tloop):
    """Steps that block (and let the GIL go) run side by side."""
    async def work():
        await asyncio.sleep(0)
        time.sleep(0.02)
        return threading.get_ident()

    async def main():
        return await asyncio.gather(*[work() for _ in range(16)])

    idents = tloop.run_until_complete(main())
    assert len(idents) == 16
    if threaded(tloop):
        assert len(set(idents)) > 1
        assert threading.get_ident() not in idents
    else:
        assert set(idents) == {threading.get_ident()}


def test_running_loop_and_current_task_on_workers(tloop):
    seen = []

    async def work(i):
        me = asyncio.current_task()
        for _ in range(5):
            assert asyncio.get_running_loop() is tloop
            assert asyncio.current_task() is me
            time.sleep(0.001)
            await asyncio.sleep(0)
        seen.append((i, asyncio.current_task() is me, me.get_name()))

    async def main():
        tasks = [asyncio.create_task(work(i), name=f"w{i}") for i in range(20)]
        await asyncio.gather(*tasks)
        return asyncio.current_task()

    main_task = tloop.run_until_complete(main())
    assert main_task is not None
    assert sorted(seen) == [(i, True, f"w{i}") for i in range(20)]


def test_current_task_beside_asyncios_own_tasks(tloop):
    """asyncio.Task(coro, loop=loop) makes asyncio's own task, not ours
    (aiohttp's server does, with eager_start on 3.12+). Up to 3.13 asyncio
    files it as current under the loop object itself, where every worker's
    current_task() would find it first: its steps run alone on a threaded
    loop, and our tasks beside it still see themselves (3,000 checks each
    used to give asyncio's task 8,994-8,997 times of 9,000)."""
    mine = []
    wrong = []

    async def asyncio_task(depth):
        for _ in range(20):
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 0.0005:   # long enough to be preempted
                pass
            await asyncio.sleep(0)
        if depth and sys.version_info >= (3, 12):
            # eager, from inside one of asyncio's task steps (as aiohttp's
            # request handlers start from its connection task)
            await asyncio.Task(asyncio_task(depth - 1), loop=tloop, eager_start=True)

    async def ours(i):
        await asyncio.sleep(0)
        for _ in range(500):
            if asyncio.current_task() is not mine[i]:
                wrong.append(i)
            await asyncio.sleep(0)

    async def main():
        natives = [asyncio.Task(asyncio_task(1), loop=tloop) for _ in range(4)]
        mine.extend(asyncio.create_task(ours(i)) for i in range(3))
        await asyncio.gather(*mine, *natives)
        return [type(t).__module__ for t in natives]

    assert tloop.run_until_complete(main()) == ["_asyncio"] * 4
    assert wrong == []


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager_start is 3.12+")
@pytest.mark.parametrize("where", ["callback", "connection_made"])
def test_current_task_beside_eager_asyncio_tasks(tloop, where):
    """asyncio.Task(coro, loop=loop, eager_start=True) runs its first step
    inside whatever made it (aiohttp: its protocol's connection_made, which
    holds the transport's locks), under the loop's entry in asyncio's table
    like its later steps. Our tasks beside it still see themselves (the same
    3,000 checks gave the eager task 2-9,000 wrong answers on 3.13)."""
    mine = []
    wrong = []
    natives = []

    async def asyncio_task():
        for step in range(5):
            t0 = time.perf_counter()
            # the eager step outlasts the GIL's switch interval (5 ms)
            while time.perf_counter() - t0 < (0.01 if step == 0 else 0.001):
                pass
            await asyncio.sleep(0)

    def start_native():
        natives.append(asyncio.Task(asyncio_task(), loop=tloop, eager_start=True))

    class Starts(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            start_native()

    async def ours(i):
        await asyncio.sleep(0)
        checks = 0
        while checks < 1000 or len(natives) < 4 or not all(t.done() for t in natives):
            if asyncio.current_task() is not mine[i]:
                wrong.append(i)
            checks += 1
            await asyncio.sleep(0)

    async def main():
        mine.extend(asyncio.create_task(ours(i)) for i in range(3))
        if where == "callback":
            for _ in range(4):
                tloop.call_soon(start_native)
        else:
            server = await tloop.create_server(Starts, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            clients = [await tloop.create_connection(asyncio.Protocol, "127.0.0.1", port)
                       for _ in range(4)]
        await asyncio.gather(*mine)
        while len(natives) < 4:
            await asyncio.sleep(0.01)
        await asyncio.gather(*natives)
        if where != "callback":
            for transport, _ in clients:
                transport.close()
            server.close()
            await server.wait_closed()
        return [type(t).__module__ for t in natives]

    assert tloop.run_until_complete(main()) == ["_asyncio"] * 4
    assert wrong == []


def test_callback_a_step_queued_runs_before_its_next_step(tloop):
    """asyncio's FIFO: what a step queued with call_soon() runs before the
    step after a bare yield (sleep(0)). anyio's cancel scope with a deadline
    in the past cancels at the first checkpoint so. With workers the
    callback may wait on the loop's strand (here behind a chain of this
    task's callbacks, each waiting for the step to end): the next step went
    first in 5-6 runs of 10 before."""
    log = []

    def chain(k):
        if k:
            tloop.call_soon(chain, k - 1)

    async def one():
        tloop.call_soon(chain, 5)
        await asyncio.sleep(0)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.0005:    # the chain's next link waits
            pass
        tloop.call_soon(log.append, "callback")
        await asyncio.sleep(0)
        log.append("step")

    async def main():
        for _ in range(200):
            await one()

    tloop.run_until_complete(main())
    assert log == ["callback", "step"] * 200


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager_start is 3.12+")
def test_eager_asyncio_tasks_started_at_once_from_two_places(tloop):
    """Two items start an eager asyncio task at the same moment, as aiohttp's
    server does: a connection's connection_made() (it holds the loop lock)
    and a request task's step whose eager first step writes to a transport
    (it wants that lock). On 3.12/3.13 threaded loops both ask to run alone;
    the one that lost waited holding the lock the winner wanted, and the
    loop hung: this test 7 runs of 30 on 3.12, aiohttp's suite under a
    10 us switch interval 1 run in 70."""
    payload = b"x" * 64
    conns, writes = 100, 10
    got = {"server": 0, "client": 0}
    want = {"server": conns * writes * len(payload), "client": conns * len(payload)}
    done = tloop.create_future()

    async def answer(transport):
        transport.write(payload)

    def count(side, n):
        got[side] += n
        if got == want and not done.done():
            done.set_result(None)

    class Server(asyncio.Protocol):
        def connection_made(self, transport):
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 0.0002:    # aiohttp sets up meanwhile
                pass
            asyncio.Task(answer(transport), loop=tloop, eager_start=True)

        def data_received(self, data):
            count("server", len(data))

    class Client(asyncio.Protocol):
        def data_received(self, data):
            count("client", len(data))

    async def one(port):
        transport, _ = await tloop.create_connection(Client, "127.0.0.1", port)
        for _ in range(writes):
            # an eager asyncio task started from our task's step, writing at once
            await asyncio.Task(answer(transport), loop=tloop, eager_start=True)
        return transport

    async def main():
        server = await tloop.create_server(Server, "127.0.0.1", 0, backlog=conns)
        port = server.sockets[0].getsockname()[1]
        transports = await asyncio.gather(*[one(port) for _ in range(conns)])
        await asyncio.wait_for(done, 20)
        for transport in transports:
            transport.close()
        server.close()
        await server.wait_closed()
        return got

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)     # threads take turns often: the race shows
    try:
        assert tloop.run_until_complete(main()) == want
    finally:
        sys.setswitchinterval(old)


@pytest.mark.parametrize("factory", ["asyncio", "tonio", "tonio-threads"])
def test_current_task_with_loops_on_several_threads(factory):
    """Loops of each kind stepping tasks at once on four threads: they share
    the interpreter's current-task table, and (without the GIL) change it at
    the same moment. Each step must still find its own task there, and no
    step may be refused as if another task were running."""
    make = {"asyncio": asyncio.new_event_loop, "tonio": tonio_loop.new_event_loop,
            "tonio-threads": lambda: tonio_loop.new_event_loop(threads=2)}[factory]
    results = []
    errors = []

    async def work():
        me = asyncio.current_task()
        for _ in range(300):
            await asyncio.sleep(0)
            if asyncio.current_task() is not me:
                return False
        return True

    async def main():
        return await asyncio.gather(*[work() for _ in range(10)])

    def run_loop():
        loop = make()
        loop.set_exception_handler(lambda lp, ctx: errors.append(ctx.get("message")))
        try:
            results.append(loop.run_until_complete(asyncio.wait_for(main(), 30)))
        finally:
            loop.close()

    threads = [threading.Thread(target=run_loop, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert results == [[True] * 10] * 4


def test_task_never_on_two_threads(tloop):
    """One task hands futures to another, which sets them at once from its
    own worker: the wake-up often comes while the waiting task's step is
    still finishing on its thread. The task must not step twice at once
    (the coroutine would raise 'already executing', steps would overlap)."""
    rounds = 500
    inside = []
    overlaps = []

    async def ping(box):
        loop = asyncio.get_running_loop()
        got = []
        for i in range(rounds):
            if inside:
                overlaps.append(i)
            inside.append(i)
            fut = loop.create_future()
            box.append(fut)
            inside.pop()
            got.append(await fut)
        return got

    async def pong(box):
        for i in range(rounds):
            while not box:
                await asyncio.sleep(0)
            box.pop(0).set_result(i)
        return rounds

    async def main():
        box = []
        return await asyncio.gather(ping(box), pong(box))

    got, n = tloop.run_until_complete(asyncio.wait_for(main(), 30))
    assert got == list(range(rounds)) and n == rounds
    assert overlaps == []


def test_futures_across_workers_counts(tloop):
    """Many tasks set and await each other's futures: nothing lost, nothing
    doubled."""
    n = 500
    got = []

    async def main():
        loop = asyncio.get_running_loop()
        futs = [loop.create_future() for _ in range(n)]

        async def setter(i):
            await asyncio.sleep(0)
            futs[i].set_result(i)

        async def waiter(i):
            got.append(await futs[i])

        tasks = [asyncio.create_task(waiter(i)) for i in range(n)]
        tasks += [asyncio.create_task(setter(i)) for i in range(n)]
        await asyncio.gather(*tasks)

    tloop.run_until_complete(asyncio.wait_for(main(), 30))
    assert sorted(got) == list(range(n))


def test_gather_from_many_workers(tloop):
    """Tasks on all workers await gather()s (asyncio's own, not thread-safe,
    future) whose children finish on other workers: every gather wakes its
    task, once."""
    n = 200

    async def leaf(i):
        await asyncio.sleep(0)
        return i

    async def branch(i):
        return sum(await asyncio.gather(leaf(i), leaf(i), leaf(i)))

    async def main():
        return await asyncio.gather(*[branch(i) for i in range(n)])

    got = tloop.run_until_complete(asyncio.wait_for(main(), 30))
    assert got == [3 * i for i in range(n)]


def test_cancel_storm(tloop):
    n = 400

    async def sleeper():
        await asyncio.sleep(3600)

    async def main():
        tasks = [asyncio.create_task(sleeper()) for _ in range(n)]
        await asyncio.sleep(0)

        async def cancel_some(part):
            for t in part:
                t.cancel()
                await asyncio.sleep(0)

        await asyncio.gather(*[cancel_some(tasks[i::4]) for i in range(4)])
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return [type(r) for r in results]

    kinds = tloop.run_until_complete(asyncio.wait_for(main(), 30))
    assert kinds == [asyncio.CancelledError] * n


# ---- callbacks -----------------------------------------------------------


def test_call_soon_from_workers(tloop):
    """call_soon from many tasks at once: every callback runs once; each
    task's callbacks run in the order it scheduled them."""
    runs = []
    active = []
    overlap = []

    def cb(task_no, i):
        if active:
            overlap.append((task_no, i))
        active.append(1)
        runs.append((task_no, i))
        active.pop()

    async def scheduler(task_no):
        loop = asyncio.get_running_loop()
        for i in range(100):
            loop.call_soon(cb, task_no, i)
            if i % 10 == 0:
                await asyncio.sleep(0)

    async def main():
        await asyncio.gather(*[scheduler(k) for k in range(8)])
        await asyncio.sleep(0.05)

    tloop.run_until_complete(main())
    assert sorted(runs) == [(k, i) for k in range(8) for i in range(100)]
    for k in range(8):
        assert [i for kk, i in runs if kk == k] == list(range(100))
    # plain callbacks keep asyncio's promise: one at a time
    assert overlap == []


def test_call_soon_threadsafe_from_plain_threads(tloop):
    got = []

    async def main():
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        total = 4 * 200

        def cb(x):
            got.append(x)
            if len(got) == total and not done.done():
                done.set_result(None)

        def feeder(k):
            for i in range(200):
                loop.call_soon_threadsafe(cb, (k, i))

        threads = [threading.Thread(target=feeder, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        await asyncio.wait_for(done, 20)
        for t in threads:
            t.join()

    tloop.run_until_complete(main())
    assert sorted(got) == [(k, i) for k in range(4) for i in range(200)]
    for k in range(4):
        assert [i for kk, i in got if kk == k] == list(range(200))


def test_timers_on_threaded_loop(tloop):
    order = []

    async def main():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for d in (0.03, 0.01, 0.02):
            loop.call_later(d, order.append, d)
        h = loop.call_later(0.015, order.append, "cancelled")
        h.cancel()
        await asyncio.sleep(0.06)
        return loop.time() - t0

    elapsed = tloop.run_until_complete(main())
    assert order == [0.01, 0.02, 0.03]
    assert elapsed >= 0.06


def test_stop_and_run_again(tloop):
    got = []
    tloop.call_soon(got.append, 1)
    tloop.call_soon(tloop.stop)
    tloop.call_soon(got.append, 2)
    tloop.run_forever()
    assert got == [1, 2]
    tloop.call_soon(got.append, 3)
    tloop.call_soon(tloop.stop)
    tloop.run_forever()
    assert got == [1, 2, 3]


@pytest.mark.parametrize("name", list(FACTORIES))
def test_loop_dropped_without_close_is_freed(name):
    """A loop that ran and is dropped without close() is freed, with
    asyncio's ResourceWarning: its workers, their threads and fds go with
    it (they held it as their running loop, where gc cannot see)."""
    import gc
    import weakref

    def tasks_and_fds():
        return len(os.listdir("/proc/self/task")), len(os.listdir("/proc/self/fd"))

    async def work():
        await asyncio.gather(*(asyncio.sleep(0) for _ in range(20)))

    before = tasks_and_fds()
    refs = []
    with pytest.warns(ResourceWarning, match="unclosed event loop"):
        for _ in range(5):
            loop = FACTORIES[name]()
            loop.run_until_complete(work())
            refs.append(weakref.ref(loop))
            del loop
            gc.collect()
    assert [r() for r in refs] == [None] * 5
    assert tasks_and_fds() == before


def test_stop_queued_before_run_until_complete(tloop):
    """call_soon(stop) and then run_until_complete(): asyncio's iteration
    runs the stop callback and the task's first step together, and a
    coroutine done in one step completes."""
    async def one():
        return 42

    for _ in range(10):
        tloop.call_soon(tloop.stop)
        assert tloop.run_until_complete(one()) == 42


def test_work_queued_before_stop_runs_before_the_loop_stops(tloop):
    """What was queued when stop() came (or its callback ran) runs in that
    run: a task created before call_soon(stop) or stop(), and a task's
    KeyboardInterrupt reaches run_forever()'s caller."""
    got = []

    async def note(what):
        got.append(what)

    tloop.create_task(note("before call_soon(stop)"))
    tloop.call_soon(tloop.stop)
    tloop.run_forever()
    tloop.create_task(note("before stop()"))
    tloop.stop()
    tloop.run_forever()
    assert got == ["before call_soon(stop)", "before stop()"]

    async def interrupted():
        raise KeyboardInterrupt

    task = tloop.create_task(interrupted())
    tloop.call_soon(tloop.stop)
    with pytest.raises(KeyboardInterrupt):
        tloop.run_forever()
    assert task.done()


def test_exception_in_callback_goes_to_handler(tloop):
    caught = []
    tloop.set_exception_handler(lambda loop, ctx: caught.append(type(ctx["exception"])))

    def boom():
        raise ZeroDivisionError

    async def main():
        asyncio.get_running_loop().call_soon(boom)
        await asyncio.sleep(0.01)

    tloop.run_until_complete(main())
    assert caught == [ZeroDivisionError]


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs SIGUSR1")
def test_signal_handler_from_main_task(tloop):
    """main() runs on a worker; signal handlers still go to the main thread."""
    async def main():
        loop = asyncio.get_running_loop()
        got = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR1, got.set_result, "usr1")
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            return await asyncio.wait_for(got, 10)
        finally:
            assert loop.remove_signal_handler(signal.SIGUSR1)

    assert tloop.run_until_complete(main()) == "usr1"


# ---- transports ------------------------------------------------------------


class Checked(asyncio.Protocol):
    """Records callbacks; flags any that overlap or come out of order."""

    def __init__(self, echo=False):
        self.events = []
        self.busy = False
        self.overlaps = 0
        self.data = bytearray()
        self.echo = echo
        self.lost = asyncio.get_running_loop().create_future()

    def _enter(self):
        if self.busy:
            self.overlaps += 1
        self.busy = True

    def connection_made(self, transport):
        self._enter()
        self.transport = transport
        self.events.append("made")
        self.busy = False

    def data_received(self, data):
        self._enter()
        time.sleep(0)   # let another thread in, if any could come
        self.data += data
        if self.echo:
            self.transport.write(data)
        if self.events[-1] != "data":
            self.events.append("data")
        self.busy = False

    def eof_received(self):
        self._enter()
        self.events.append("eof")
        self.busy = False

    def connection_lost(self, exc):
        self._enter()
        self.events.append("lost")
        self.busy = False
        if not self.lost.done():
            self.lost.set_result(exc)


def test_protocol_callbacks_in_order_never_concurrent(tloop):
    nconn = 16
    payload = b"x" * 5000
    protos = []

    async def main():
        loop = asyncio.get_running_loop()

        def factory():
            p = Checked(echo=True)
            protos.append(p)
            return p

        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        async def client(k):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(payload)
            got = await r.readexactly(len(payload))
            w.write_eof()
            rest = await r.read()
            w.close()
            await w.wait_closed()
            return got + rest

        results = await asyncio.gather(*[client(k) for k in range(nconn)])
        await asyncio.wait_for(asyncio.gather(*[p.lost for p in protos]), 10)
        server.close()
        await server.wait_closed()
        return results

    results = tloop.run_until_complete(asyncio.wait_for(main(), 30))
    assert results == [payload] * nconn
    assert len(protos) == nconn
    for p in protos:
        assert p.overlaps == 0
        assert bytes(p.data) == payload
        assert p.events == ["made", "data", "eof", "lost"]


class WindowedEvent(asyncio.Event):
    """asyncio.Event with a thread switch where one costs a wake-up: between
    wait()'s look at the flag and its waiter going on the list (asyncio's
    code otherwise). A set() from another thread in that window is lost."""

    async def wait(self):
        if self._value:
            return True
        time.sleep(0.001)
        fut = self._get_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
            return True
        finally:
            self._waiters.remove(fut)


class EventStreamProtocol(asyncio.Protocol):
    """anyio's StreamProtocol (httpx's transport): data_received() and the
    flow-control callbacks talk to the consuming task through events."""

    def __init__(self):
        self.queue = []
        self.read_event = WindowedEvent()
        self.write_event = WindowedEvent()
        self.write_event.set()
        self.closed = False

    def connection_made(self, transport):
        self.transport = transport
        transport.pause_reading()

    def data_received(self, data):
        self.queue.append(data)
        self.read_event.set()

    def eof_received(self):
        self.closed = True
        self.read_event.set()

    def connection_lost(self, exc):
        self.closed = True
        self.read_event.set()
        self.write_event.set()

    def pause_writing(self):
        self.write_event.clear()

    def resume_writing(self):
        self.write_event.set()

    async def receive(self):
        """anyio's SocketStream.receive(), with a window before the clear()"""
        if not self.read_event.is_set() and not self.closed:
            self.transport.resume_reading()
            await self.read_event.wait()
            self.transport.pause_reading()
        if not self.queue:
            return b""
        chunk = self.queue.pop(0)
        time.sleep(0.0002)
        if not self.queue:
            self.read_event.clear()
        return chunk

    async def send(self, data):
        self.transport.write(data)
        if not self.write_event.is_set():
            await self.write_event.wait()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(str(tmp_path_factory.mktemp("certs")))


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_protocol_and_consuming_task_share_events(tloop, tls, request):
    """The consuming task and its transport's protocol callbacks hand data
    and flow control over through asyncio.Event, as anyio (httpx) does: no
    wake-up is lost and nothing read goes missing. On a threaded loop the
    protocol's callbacks never run beside the steps of the task that paused
    or resumed the transport (its home task)."""
    nmsg, big = 200, 2 * 1024 * 1024

    async def main():
        loop = asyncio.get_running_loop()
        served = loop.create_future()

        async def serve(r, w):
            w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            for i in range(nmsg):
                w.write(b"%05d;" % i)
                await asyncio.sleep(0.0005 if i % 4 == 0 else 0)
            await w.drain()
            got = 0
            while got < big:     # slowly at first: the client's writes pause it
                chunk = await r.read(65536)
                assert chunk
                got += len(chunk)
                if got < big // 4:
                    await asyncio.sleep(0.001)
            w.write(b"done")
            await w.drain()
            w.close()
            served.set_result(got)

        certs = request.getfixturevalue("certs") if tls else None
        server = await asyncio.start_server(serve, "127.0.0.1", 0,
                                            ssl=certs and certs.server_context())
        port = server.sockets[0].getsockname()[1]
        _, p = await loop.create_connection(EventStreamProtocol, "127.0.0.1", port,
                                            ssl=certs and certs.client_context(),
                                            server_hostname="localhost" if tls else None)
        p.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                                          16384)
        p.transport.set_write_buffer_limits(high=65536)
        received = bytearray()
        while len(received) < nmsg * 6:
            chunk = await asyncio.wait_for(p.receive(), 10)
            assert chunk, "the connection closed early"
            received += chunk
        for _ in range(big // 65536):
            await asyncio.wait_for(p.send(b"y" * 65536), 10)
        while not received.endswith(b"done"):
            chunk = await asyncio.wait_for(p.receive(), 10)
            assert chunk, "the connection closed early"
            received += chunk
        p.transport.close()
        server.close()
        await server.wait_closed()
        return bytes(received), await served

    received, served = tloop.run_until_complete(asyncio.wait_for(main(), 60))
    assert received == b"".join(b"%05d;" % i for i in range(nmsg)) + b"done"
    assert served == big


def test_protocol_and_the_task_it_created_share_an_event(tloop):
    """uvicorn's pattern: data_received() starts the request's task and hands
    it the body through an asyncio.Event it sets; the task never touches the
    transport before it answers. The task a protocol callback created is its
    transport's home task on a threaded loop."""
    nchunks = 100

    class Receiver(asyncio.Protocol):
        def __init__(self):
            self.body = bytearray()
            self.more = WindowedEvent()
            self.task = None

        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.body += data
            if self.task is None:
                self.task = asyncio.get_running_loop().create_task(self.handle())
            self.more.set()

        async def handle(self):
            got = bytearray()
            while not got.endswith(b"."):
                await self.more.wait()
                self.more.clear()
                got += self.body
                self.body.clear()
            self.transport.write(b"%d" % len(got))
            self.transport.close()

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Receiver, "127.0.0.1", 0)
        r, w = await asyncio.open_connection(*server.sockets[0].getsockname())
        for i in range(nchunks):
            w.write(b"z" * 100)
            await w.drain()
            await asyncio.sleep(0.0005 if i % 3 == 0 else 0)
        w.write(b".")
        answer = await asyncio.wait_for(r.read(), 10)
        w.close()
        server.close()
        await server.wait_closed()
        return answer

    answer = tloop.run_until_complete(asyncio.wait_for(main(), 60))
    assert answer == b"%d" % (nchunks * 100 + 1)


def test_protocols_that_read_for_themselves_run_on_workers(tloop, certs):
    """datagram_received(), BufferedProtocol's get_buffer()/buffer_updated()
    and a TLS transport's application protocol run where the other protocol
    callbacks do: on workers with threads (the transport's strand, so they
    keep its home task's guarantee), never on the thread that polls."""
    loop_thread = threading.get_ident()
    seen = {}

    def note(kind):
        seen.setdefault(kind, set()).add(threading.get_ident())

    class Buffered(asyncio.BufferedProtocol):
        def __init__(self):
            self.buf = bytearray(1024)
            self.got = asyncio.get_running_loop().create_future()

        def get_buffer(self, hint):
            note("buffered")
            return self.buf

        def buffer_updated(self, n):
            note("buffered")
            if not self.got.done():
                self.got.set_result(bytes(self.buf[:n]))

    class Plain(asyncio.Protocol):
        def __init__(self):
            self.got = asyncio.get_running_loop().create_future()

        def data_received(self, data):
            note("tls" if self.transport.get_extra_info("ssl_object") else "tcp")
            if not self.got.done():
                self.got.set_result(data)

        def connection_made(self, transport):
            self.transport = transport

    class Dgram(asyncio.DatagramProtocol):
        def __init__(self):
            self.got = asyncio.get_running_loop().create_future()

        def datagram_received(self, data, addr):
            note("udp")
            if not self.got.done():
                self.got.set_result(data)

    async def send_to(factory, **kwargs):
        loop = asyncio.get_running_loop()
        protos = []
        server = await loop.create_server(lambda: protos.append(factory()) or protos[-1],
                                          "127.0.0.1", 0, ssl=kwargs.get("ssl"))
        r, w = await asyncio.open_connection(*server.sockets[0].getsockname(),
                                             ssl=kwargs.get("client_ssl"),
                                             server_hostname=kwargs.get("hostname"))
        w.write(b"hello")
        while not protos:
            await asyncio.sleep(0.001)
        got = await asyncio.wait_for(protos[0].got, 10)
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()
        return got

    async def main():
        loop = asyncio.get_running_loop()
        results = [await send_to(Plain), await send_to(Buffered),
                   await send_to(Plain, ssl=certs.server_context(),
                                 client_ssl=certs.client_context(), hostname="localhost")]
        t1, p1 = await loop.create_datagram_endpoint(Dgram, local_addr=("127.0.0.1", 0))
        t2, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=t1.get_extra_info("sockname"))
        t2.sendto(b"hello")
        results.append(await asyncio.wait_for(p1.got, 10))
        t1.close()
        t2.close()
        return results

    assert tloop.run_until_complete(main()) == [b"hello"] * 4
    assert set(seen) == {"tcp", "buffered", "tls", "udp"}
    for kind, threads in seen.items():
        if threaded(tloop):
            assert loop_thread not in threads, kind
        else:
            assert threads == {loop_thread}, kind


def test_eof_waits_while_reading_is_paused(tloop):
    """A protocol pauses reading in data_received(); the peer has already
    sent the rest and its EOF. asyncio reads nothing more while paused; a
    threaded loop may have read it all already: either way eof_received()
    comes only after resume_reading() and after every byte."""
    payload = [b"a" * 1000, b"b" * 1000, b"c" * 1000]

    class Pausing(asyncio.Protocol):
        def __init__(self):
            self.events = []
            self.data = bytearray()
            self.eof = asyncio.get_running_loop().create_future()

        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            if not self.data:
                self.transport.pause_reading()
            self.data += data
            self.events.append("data")

        def eof_received(self):
            self.events.append("eof")
            self.eof.set_result(bytes(self.data))

    async def main():
        loop = asyncio.get_running_loop()
        protos = []
        server = await loop.create_server(lambda: protos.append(Pausing()) or protos[-1],
                                          "127.0.0.1", 0)
        r, w = await asyncio.open_connection(*server.sockets[0].getsockname())
        for chunk in payload:
            w.write(chunk)
        w.write_eof()
        await w.drain()
        await asyncio.sleep(0.1)
        p = protos[0]
        seen_while_paused = list(p.events)
        p.transport.resume_reading()
        got = await asyncio.wait_for(p.eof, 10)
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()
        return seen_while_paused, got, p.events

    seen_while_paused, got, events = tloop.run_until_complete(asyncio.wait_for(main(), 30))
    assert "eof" not in seen_while_paused
    assert got == b"".join(payload)
    assert events[-1] == "eof" and events.count("eof") == 1


def test_done_callbacks_run_before_the_task_that_waits(tloop):
    """A future's done callbacks added before a task awaits it run before
    that task resumes, whichever worker completes it (asyncpg's protocol
    clears its timeout in such a callback, then the task arms the next)."""
    rounds = 300

    async def main():
        loop = asyncio.get_running_loop()
        futures = sync.Queue()      # asyncio's is not thread-safe
        seen = []

        async def completer():
            for i in range(rounds):
                (await futures.get()).set_result(i)

        helper = asyncio.create_task(completer())
        for i in range(rounds):
            f = loop.create_future()
            state = []
            f.add_done_callback(lambda _, state=state: state.append("callback"))
            futures.put_nowait(f)
            await f
            seen.append(state == ["callback"])
        await helper
        return seen

    seen = tloop.run_until_complete(asyncio.wait_for(main(), 30))
    assert seen == [True] * rounds


class HeldBack(asyncio.Protocol):
    """At its first data: calls first(), waits a little (a threaded loop's
    reader goes on meanwhile: what first() made the peer send, and its EOF,
    wait behind this call), pauses reading, resumes a little later."""

    def __init__(self, loop, first):
        self.loop = loop
        self.first = first
        self.data = bytearray()
        self.events = []
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if not self.data:
            self.first()
            time.sleep(0.2)
            self.transport.pause_reading()
            self.loop.call_later(0.1, self.transport.resume_reading)
        self.data += data
        self.events.append("data")

    def eof_received(self):
        self.events.append("eof")

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost.set_result(exc)


def test_eof_waits_for_data_held_back_by_pause_reading(tloop):
    # a subprocess's output lost its last bytes this way (communicate())
    payload = os.urandom(1000)
    r, w = os.pipe()
    os.write(w, payload[:983])

    def first():
        os.write(w, payload[983:])
        os.close(w)

    async def main():
        loop = asyncio.get_running_loop()
        p = HeldBack(loop, first)
        await loop.connect_read_pipe(lambda: p, os.fdopen(r, "rb", buffering=0))
        await asyncio.wait_for(p.lost, 10)
        return p

    p = tloop.run_until_complete(main())
    assert bytes(p.data) == payload
    assert p.events == ["data", "data", "eof", "lost"]


def write_from_workers(loop, chunk, nwriters, nchunks, yield_every, sndbuf=None):
    """nwriters tasks write chunk(k, i) for i < nchunks to one transport
    over a socketpair, yielding every yield_every chunks, while this reads
    the other end (pausing now and then when sndbuf makes the socket's
    buffer small); returns what arrived."""

    async def main():
        a, b = socket.socketpair()
        if sndbuf is not None:
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        b.setblocking(False)
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=a)

        async def writer(k):
            for i in range(nchunks):
                transport.write(chunk(k, i))
                if i % yield_every == 0:
                    await asyncio.sleep(0)

        expected = sum(len(chunk(k, i)) for k in range(nwriters) for i in range(nchunks))
        writers = asyncio.gather(*[writer(k) for k in range(nwriters)])
        received = bytearray()
        while len(received) < expected:
            received += await loop.sock_recv(b, 16384)
            if sndbuf is not None and len(received) % 5 == 0:
                await asyncio.sleep(0.001)
        await writers
        transport.close()
        await asyncio.sleep(0)
        b.close()
        return bytes(received)

    return loop.run_until_complete(asyncio.wait_for(main(), 30))


def test_transport_write_from_many_workers(tloop):
    """Eight tasks write numbered chunks to one transport at once: every
    chunk arrives whole, each task's chunks in order."""
    data = write_from_workers(tloop, lambda k, i: b"<%d:%d>" % (k, i), 8, 200, 16)
    check_chunks(data, 8, 200)


def sized_chunk(k, i):
    """Writer k's chunk i: sizes from a few bytes to tens of KiB, so that
    some writes go out whole and some fill the socket's buffer."""
    return b"<%d:%d:%s>" % (k, i, b"x" * ((k * 7919 + i * 104729) % 40000))


def check_sized_chunks(data, nwriters, complete=None):
    """data is whole sized_chunk()s, each writer's in order from 0 (all
    `complete` of them, when given); returns how many of each arrived."""
    assert data[:1] == b"<" and data[-1:] == b">"
    seen = {}
    for c in data[1:-1].split(b"><"):
        k, i, pad = c.split(b":")
        k, i = int(k), int(i)
        assert seen.get(k, -1) == i - 1
        assert b"<%d:%d:%s>" % (k, i, pad) == sized_chunk(k, i)
        seen[k] = i
    if complete is not None:
        assert seen == {k: complete - 1 for k in range(nwriters)}
    return seen


def test_transport_write_while_the_kernel_refuses_some(tloop):
    """Writers on several workers, a reader slower than them on a small
    socket buffer: some writes go out at once, some in part, some only
    into the transport's buffer. Every byte arrives once, in each writer's
    order, no chunk torn or mixed with another."""
    data = write_from_workers(tloop, sized_chunk, 4, 60, 3, sndbuf=8192)
    check_sized_chunks(data, 4, 60)


@pytest.mark.parametrize("how", ["close", "abort", "write_eof"])
def test_transport_closed_while_workers_write(tloop, how):
    """close(), abort() or write_eof() lands while tasks on other workers
    keep writing: what arrives is whole chunks in each writer's order (all
    that was written before close() or write_eof(); a prefix of it after
    abort()), nothing after the end, and the writers that write on are told
    so as asyncio tells them (RuntimeError after write_eof(), nothing for
    close() and abort())."""
    nwriters = 4

    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        b.setblocking(False)
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=a)
        written = {k: 0 for k in range(nwriters)}
        ended = asyncio.Event()
        errors = []

        async def writer(k):
            i = 0
            while not ended.is_set():
                try:
                    transport.write(sized_chunk(k, i))
                except RuntimeError as exc:
                    errors.append(str(exc))
                    return
                i += 1
                written[k] = i
                await asyncio.sleep(0)

        async def ender():
            await asyncio.sleep(0.02)
            getattr(transport, how)()
            ended.set()

        tasks = [asyncio.ensure_future(writer(k)) for k in range(nwriters)]
        end = asyncio.ensure_future(ender())
        received = bytearray()
        while True:
            got = await loop.sock_recv(b, 65536)
            if not got:
                break
            received += got
        await asyncio.gather(end, *tasks)
        b.close()
        return bytes(received), written, errors

    data, written, errors = tloop.run_until_complete(asyncio.wait_for(main(), 30))
    if how == "abort":
        data = data[:data.rfind(b">") + 1]   # the buffer's rest never left: one torn chunk
    seen = check_sized_chunks(data, nwriters) if data else {}
    for k, n in seen.items():
        assert n < written[k]
    if how == "write_eof":
        assert set(errors) <= {"Cannot call write() after write_eof()"}
    else:
        assert errors == []
        if how == "close":
            assert seen and sum(seen.values()) + len(seen) >= 1


def check_chunks(data, nwriters, nchunks):
    """data holds every writer's <writer:i> chunks, each once, whole, and
    each writer's in order."""
    chunks = data[1:-1].split(b"><")
    assert len(chunks) == nwriters * nchunks
    seen = {}
    for c in chunks:
        k, i = map(int, c.split(b":"))
        assert seen.get(k, -1) == i - 1
        seen[k] = i
    assert seen == {k: nchunks - 1 for k in range(nwriters)}


# ---- what a step schedules starts after it --------------------------------


def test_step_finishes_before_what_it_schedules(tloop):
    """A task's step runs to its next await before the tasks and callbacks
    it made start, as on asyncio's single thread: asyncio.gather() adds its
    done callbacks to the children it has just created and only then makes
    the future they report to (children finishing first hung it)."""
    rounds = 300

    async def child(i):
        return i

    async def main():
        tloop.set_debug(True)     # slower task creation: the widest window
        try:
            for r in range(rounds):
                assert await asyncio.gather(*[child(r + k) for k in range(4)]) == \
                    [r + k for k in range(4)]
                started = []
                t = asyncio.create_task(child(r))
                t.add_done_callback(lambda _: started.append("child"))
                asyncio.get_running_loop().call_soon(started.append, "callback")
                if r % 10 == 0:
                    time.sleep(0.002)     # other threads may run: none may start them
                assert started == [] and not t.done()
                await t
        finally:
            tloop.set_debug(False)

    import logging
    logging.disable(logging.WARNING)     # debug mode's slow-callback reports
    try:
        tloop.run_until_complete(asyncio.wait_for(main(), 60))
    finally:
        logging.disable(logging.NOTSET)


# ---- stress: counts checked, bounded in time ------------------------------


def test_stress_futures_ping_pong_across_workers(tloop):
    """Pairs of tasks hand each other futures for many rounds: every value
    arrives exactly once, in order, and the whole thing ends in time."""
    pairs, rounds = 64, 100

    async def main():
        loop = asyncio.get_running_loop()
        received = {}

        async def ping(k, box):
            for i in range(rounds):
                fut = loop.create_future()
                box.append(fut)
                assert await fut == (k, i)

        async def pong(k, box):
            got = []
            for i in range(rounds):
                while not box:
                    await asyncio.sleep(0)
                fut = box.pop()
                got.append(i)
                fut.set_result((k, i))
                await asyncio.sleep(0)
            received[k] = got

        boxes = [[] for _ in range(pairs)]
        await asyncio.gather(*[ping(k, boxes[k]) for k in range(pairs)],
                             *[pong(k, boxes[k]) for k in range(pairs)])
        return received

    received = tloop.run_until_complete(asyncio.wait_for(main(), 60))
    assert received == {k: list(range(rounds)) for k in range(pairs)}


def test_stress_many_connections_written_from_workers(tloop):
    """32 connections, each written by 4 tasks at once: every chunk arrives
    once, each writer's chunks in order, on every connection."""
    nconn, nwriters, nchunks = 32, 4, 100

    async def main():
        loop = asyncio.get_running_loop()
        protos = []

        def factory():
            p = Checked()
            protos.append(p)
            return p

        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conns = [await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
                 for _ in range(nconn)]

        async def writer(c, k):
            tr = conns[c][0]
            for i in range(nchunks):
                tr.write(b"<%d:%d>" % (k, i))
                if i % 8 == 0:
                    await asyncio.sleep(0)

        await asyncio.gather(*[writer(c, k) for c in range(nconn) for k in range(nwriters)])
        for tr, _ in conns:
            tr.close()
        await asyncio.wait_for(asyncio.gather(*[p.lost for p in protos]), 30)
        server.close()
        await server.wait_closed()
        return protos

    protos = tloop.run_until_complete(asyncio.wait_for(main(), 60))
    assert len(protos) == nconn
    for p in protos:
        assert p.overlaps == 0
        check_chunks(bytes(p.data), nwriters, nchunks)


def test_stress_cancel_storm_racing_completion(tloop):
    """Tasks finishing while other tasks cancel them: each ends exactly once,
    either with its result or cancelled; each done callback runs once;
    cancelled ones ran their cleanup."""
    n = 600

    async def main():
        loop = asyncio.get_running_loop()
        cleanups = []
        callbacks = []

        async def victim(i):
            try:
                for _ in range(i % 5):
                    await asyncio.sleep(0)
                return i
            except asyncio.CancelledError:
                cleanups.append(i)
                raise

        tasks = [asyncio.create_task(victim(i)) for i in range(n)]
        for t in tasks:
            t.add_done_callback(callbacks.append)

        async def canceller(part):
            for t in part:
                t.cancel()
                await asyncio.sleep(0)

        await asyncio.gather(*[canceller(tasks[k::6]) for k in range(6)])
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.01)
        for _ in range(100):              # the done callbacks are callbacks: let them run
            if len(callbacks) == n:
                break
            await asyncio.sleep(0.01)
        return tasks, results, cleanups, callbacks

    tasks, results, cleanups, callbacks = tloop.run_until_complete(asyncio.wait_for(main(), 60))
    assert len(callbacks) == n and len({id(t) for t in callbacks}) == n
    done_ok = [i for i, r in enumerate(results) if r == i]
    cancelled = [i for i, r in enumerate(results) if isinstance(r, asyncio.CancelledError)]
    assert sorted(done_ok + cancelled) == list(range(n))
    assert all(tasks[i].cancelled() for i in cancelled)
    # a task cancelled before its first step never ran its body
    assert set(cleanups) <= set(cancelled) and len(cleanups) == len(set(cleanups))


def test_stress_cancel_lands_while_task_steps(tloop):
    """cancel() from other workers while the victim's step runs: whether it
    lands before, during or after the step, it is never lost. Each victim
    ends waiting for a future nobody completes, so only the cancel ends it:
    a lost one hangs the victim."""
    n = 400

    def finish(f):
        try:
            f.set_result(None)
        except asyncio.InvalidStateError:
            pass                    # a canceller got there first

    async def main():
        loop = asyncio.get_running_loop()

        async def victim(i):
            for _ in range(i % 20):
                f = loop.create_future()
                loop.call_soon(finish, f)
                await f
            await loop.create_future()

        tasks = [asyncio.create_task(victim(i)) for i in range(n)]
        returned = []

        async def canceller(part):
            for k, t in enumerate(part):
                returned.append(t.cancel())
                if k % 3 == 0:
                    await asyncio.sleep(0)

        await asyncio.gather(*[canceller(tasks[k::4]) for k in range(4)])
        done, pending = await asyncio.wait(tasks, timeout=20)
        return tasks, returned, len(pending)

    tasks, returned, pending = tloop.run_until_complete(asyncio.wait_for(main(), 60))
    assert pending == 0
    assert returned == [True] * n
    assert all(t.cancelled() for t in tasks)
