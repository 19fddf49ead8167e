"""Synchronization primitives that are safe across threads and loops.

asyncio's Lock, Event, Condition, Semaphore and Queue assume one thread:
with ``Loop(threads=N)`` tasks of one loop run on several threads at once,
and these are what they can share. The interfaces are asyncio's (same
methods, messages and exceptions); they work in both modes, between tasks
of different loops, and from plain threads through the ``*_blocking``
variants (``acquire_blocking``, ``wait_blocking``, ``put_blocking``,
``get_blocking``), which block the calling thread with the GIL released.

A waiter is either a future of the waiting task's loop (a tonio_loop Future
is set from any thread; another loop's future is set through its
``call_soon_threadsafe``) or, for a blocked thread, one of the Event core's
events (``tonio_loop._core.Event``). State changes happen under one short
``threading.Lock`` per primitive; wake-ups happen after it is released.
"""

import asyncio
import collections
import heapq
import threading
import time
import types

from . import _core

__all__ = ("Lock", "Event", "Condition", "Semaphore", "BoundedSemaphore",
           "Queue", "LifoQueue", "PriorityQueue", "QueueEmpty", "QueueFull")

QueueEmpty = asyncio.QueueEmpty
QueueFull = asyncio.QueueFull


def _set_result(fut):
    if not fut.done():
        fut.set_result(True)


class _Waiter:
    """One task or thread waiting; `woken` is decided under the owner's
    mutex, so a cancelled task knows whether the wake-up was already its."""

    __slots__ = ("fut", "loop", "event", "woken")

    def __init__(self, loop):
        self.loop = loop
        self.woken = False
        if loop is None:
            self.fut = None
            self.event = _core.Event()
        else:
            self.fut = loop.create_future()
            self.event = None

    def cancelled(self):
        return self.fut is not None and self.fut.cancelled()

    def wake(self):
        """Call after the owner's mutex is released."""
        if self.event is not None:
            self.event.set()
        elif isinstance(self.loop, _core.Loop) or asyncio._get_running_loop() is self.loop:
            try:
                _set_result(self.fut)
            except asyncio.InvalidStateError:
                pass    # cancelled meanwhile: its task hands the wake-up on
        else:
            try:
                self.loop.call_soon_threadsafe(_set_result, self.fut)
            except RuntimeError:
                pass    # that loop is closed: nobody waits there any more

    def wait_thread(self, timeout):
        return self.event.wait(timeout)


def _wake_all(woken):
    for w in woken:
        w.wake()


def _line_up(waiters, loop):
    """A new waiter at the end of the line (the primitive's mutex held)."""
    w = _Waiter(loop)
    waiters.append(w)
    return w


def _hand_to_first(waiters):
    """What is being released goes straight to the first live waiter (the
    primitive's mutex held): (waiter,) to wake, or () when none is left."""
    while waiters:
        w = waiters.popleft()
        if w.cancelled():
            continue
        w.woken = True
        return (w,)
    return ()


class _Primitive:
    def __init__(self):
        self._mutex = threading.Lock()
        self._waiters = collections.deque()

    def _wait_list(self):
        return len(self._waiters)


    async def _wait(self, waiter, on_cancel):
        """Await `waiter`; on cancellation (or any error) drop it, or call
        on_cancel() under the mutex when the wake-up was already given to it
        (which returns the waiters to wake instead)."""
        try:
            await waiter.fut
        except BaseException:
            with self._mutex:
                if waiter.woken:
                    woken = on_cancel()
                else:
                    woken = ()
                    try:
                        self._waiters.remove(waiter)
                    except ValueError:
                        pass
            _wake_all(woken)
            raise

    def _wait_blocking(self, waiter, timeout, on_timeout):
        """Block until woken; False (after on_timeout logic) on timeout."""
        if waiter.wait_thread(timeout):
            return True
        with self._mutex:
            if waiter.woken:
                return True     # woken just as the time ran out: keep it
            try:
                self._waiters.remove(waiter)
            except ValueError:
                pass
        return False


class _ContextManagerMixin:
    """acquire()/release() and `async with`, over the subclass's
    _try_acquire(loop) (None: taken at once, else a waiter) and _pass_on()"""

    async def acquire(self):
        w = self._try_acquire(_loop())
        if w is not None:
            await self._wait(w, self._pass_on)
        return True

    def acquire_blocking(self, timeout=None):
        """Acquire from a plain thread; False when timeout passed first."""
        w = self._try_acquire(None)
        return w is None or self._wait_blocking(w, timeout, None)

    async def __aenter__(self):
        await self.acquire()
        return None

    async def __aexit__(self, exc_type, exc, tb):
        self.release()


def _loop():
    return asyncio.get_running_loop()


class Lock(_ContextManagerMixin, _Primitive):
    """asyncio.Lock's interface; FIFO; release() from any thread."""

    def __init__(self):
        super().__init__()
        self._locked = False

    def __repr__(self):
        res = super().__repr__()
        extra = "locked" if self._locked else "unlocked"
        if self._waiters:
            extra = f"{extra}, waiters:{len(self._waiters)}"
        return f"<{res[1:-1]} [{extra}]>"

    def locked(self):
        return self._locked

    def _try_acquire(self, loop):
        with self._mutex:
            if not self._locked and not self._waiters:
                self._locked = True
                return None
            return _line_up(self._waiters, loop)

    def _pass_on(self):
        # we were given the lock but leave: give it to the next
        return self._release_locked()

    def _release_locked(self):
        woken = _hand_to_first(self._waiters)   # the lock goes straight to it
        if not woken:
            self._locked = False
        return woken

    def release(self):
        with self._mutex:
            if not self._locked:
                raise RuntimeError("Lock is not acquired.")
            woken = self._release_locked()
        _wake_all(woken)


class Event(_Primitive):
    """asyncio.Event's interface; set() from any thread or loop."""

    def __init__(self):
        super().__init__()
        self._value = False

    def __repr__(self):
        res = super().__repr__()
        extra = "set" if self._value else "unset"
        if self._waiters:
            extra = f"{extra}, waiters:{len(self._waiters)}"
        return f"<{res[1:-1]} [{extra}]>"

    def is_set(self):
        return self._value

    def set(self):
        with self._mutex:
            if self._value:
                return
            self._value = True
            woken = list(self._waiters)
            self._waiters.clear()
            for w in woken:
                w.woken = True
        _wake_all(woken)

    def clear(self):
        with self._mutex:
            self._value = False

    def _enqueue(self, loop):
        with self._mutex:
            if self._value:
                return None
            return _line_up(self._waiters, loop)

    async def wait(self):
        w = self._enqueue(_loop())
        if w is not None:
            await self._wait(w, tuple)
        return True

    def wait_blocking(self, timeout=None):
        """Wait from a plain thread; False when timeout passed first."""
        w = self._enqueue(None)
        return w is None or self._wait_blocking(w, timeout, None)


class Condition(_ContextManagerMixin, _Primitive):
    """asyncio.Condition's interface, over a tonio_loop.sync.Lock."""

    def __init__(self, lock=None):
        super().__init__()
        if lock is None:
            lock = Lock()
        elif not isinstance(lock, Lock):
            raise TypeError("lock must be a tonio_loop.sync.Lock")
        self._lock = lock
        self.locked = lock.locked
        self.acquire = lock.acquire
        self.acquire_blocking = lock.acquire_blocking
        self.release = lock.release

    def __repr__(self):
        res = super().__repr__()
        extra = "locked" if self.locked() else "unlocked"
        if self._waiters:
            extra = f"{extra}, waiters:{len(self._waiters)}"
        return f"<{res[1:-1]} [{extra}]>"

    def _enqueue(self, loop, verb):
        if not self.locked():
            raise RuntimeError(f"cannot {verb} on un-acquired lock")
        w = _Waiter(loop)
        with self._mutex:
            self._waiters.append(w)
        self.release()
        return w

    async def wait(self):
        w = self._enqueue(_loop(), "wait")
        try:
            await self._wait(w, self._pass_on)
            return True
        finally:
            # asyncio re-acquires even when cancelled, then re-raises
            err = None
            while True:
                try:
                    await self.acquire()
                    break
                except asyncio.CancelledError as e:
                    err = e
            if err is not None:
                try:
                    raise err
                finally:
                    err = None

    def wait_blocking(self, timeout=None):
        """Wait from a plain thread holding the lock (acquire_blocking)."""
        w = self._enqueue(None, "wait")
        try:
            return self._wait_blocking(w, timeout, None)
        finally:
            self._lock.acquire_blocking()

    def _pass_on(self):
        # notified but cancelled: asyncio lets the notification go
        return ()

    async def wait_for(self, predicate):
        result = predicate()
        while not result:
            await self.wait()
            result = predicate()
        return result

    def wait_for_blocking(self, predicate, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        result = predicate()
        while not result:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            self.wait_blocking(left)
            result = predicate()
        return result

    def notify(self, n=1):
        if not self.locked():
            raise RuntimeError("cannot notify on un-acquired lock")
        woken = []
        with self._mutex:
            while self._waiters and len(woken) < n:
                w = self._waiters.popleft()
                if w.cancelled():
                    continue
                w.woken = True
                woken.append(w)
        _wake_all(woken)

    def notify_all(self):
        self.notify(len(self._waiters))


class Semaphore(_ContextManagerMixin, _Primitive):
    """asyncio.Semaphore's interface; release() from any thread."""

    def __init__(self, value=1):
        if value < 0:
            raise ValueError("Semaphore initial value must be >= 0")
        super().__init__()
        self._value = value

    def __repr__(self):
        res = super().__repr__()
        extra = "locked" if self.locked() else f"unlocked, value:{self._value}"
        if self._waiters:
            extra = f"{extra}, waiters:{len(self._waiters)}"
        return f"<{res[1:-1]} [{extra}]>"

    def locked(self):
        with self._mutex:
            return self._value == 0 or any(not w.cancelled() for w in self._waiters)

    def _try_acquire(self, loop):
        with self._mutex:
            if self._value > 0 and not self._waiters:
                self._value -= 1
                return None
            return _line_up(self._waiters, loop)

    def _pass_on(self):
        return self._give()

    def _give(self):
        # a permit goes straight to the first live waiter, or back
        woken = _hand_to_first(self._waiters)
        if not woken:
            self._value += 1
        return woken

    def _check_release(self):
        pass

    def release(self):
        with self._mutex:
            self._check_release()
            woken = self._give()
        _wake_all(woken)


class BoundedSemaphore(Semaphore):
    def __init__(self, value=1):
        self._bound_value = value
        super().__init__(value)

    def _check_release(self):
        if self._value >= self._bound_value:
            raise ValueError("BoundedSemaphore released too many times")


class Queue(_Primitive):
    """asyncio.Queue's interface; put/get from any task, loop or thread."""

    __class_getitem__ = classmethod(types.GenericAlias)   # Queue[int], as asyncio.Queue

    def __init__(self, maxsize=0):
        super().__init__()
        self._maxsize = maxsize
        self._getters = collections.deque()
        self._putters = collections.deque()
        self._unfinished_tasks = 0
        self._finished = Event()
        self._finished.set()
        self._init(maxsize)

    def _init(self, maxsize):
        self._queue = collections.deque()

    def _get(self):
        return self._queue.popleft()

    def _put(self, item):
        self._queue.append(item)

    def __repr__(self):
        return f"<{type(self).__name__} at {id(self):#x} {self._format()}>"

    def __str__(self):
        return f"<{type(self).__name__} {self._format()}>"

    def _format(self):
        result = f"maxsize={self._maxsize!r}"
        if getattr(self, "_queue", None):
            result += f" _queue={list(self._queue)!r}"
        if self._getters:
            result += f" _getters[{len(self._getters)}]"
        if self._putters:
            result += f" _putters[{len(self._putters)}]"
        if self._unfinished_tasks:
            result += f" tasks={self._unfinished_tasks}"
        return result

    def qsize(self):
        return len(self._queue)

    @property
    def maxsize(self):
        return self._maxsize

    def empty(self):
        return not self._queue

    def full(self):
        if self._maxsize <= 0:
            return False
        return self.qsize() >= self._maxsize

    def _put_locked(self, item):
        self._put(item)
        self._unfinished_tasks += 1
        self._finished.clear()
        return _hand_to_first(self._getters)

    def put_nowait(self, item):
        with self._mutex:
            if self.full():
                raise QueueFull
            woken = self._put_locked(item)
        _wake_all(woken)

    def get_nowait(self):
        with self._mutex:
            if self.empty():
                raise QueueEmpty
            item = self._get()
            woken = _hand_to_first(self._putters)
        _wake_all(woken)
        return item

    def _slot(self, waiters, ready, loop):
        """None when ready() holds now (mutex held by the caller), else a
        waiter queued on `waiters`."""
        if ready():
            return None
        return _line_up(waiters, loop)

    async def _wait_on(self, waiters, ready):
        loop = _loop()
        while True:
            with self._mutex:
                w = self._slot(waiters, ready, loop)
            if w is None:
                return
            try:
                await w.fut
            except BaseException:
                with self._mutex:
                    if w.woken:
                        woken = _hand_to_first(waiters) if ready() else ()
                    else:
                        woken = ()
                        try:
                            waiters.remove(w)
                        except ValueError:
                            pass
                _wake_all(woken)
                raise

    def _wait_on_blocking(self, waiters, ready, deadline):
        while True:
            with self._mutex:
                w = self._slot(waiters, ready, None)
            if w is None:
                return True
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not w.wait_thread(left):
                with self._mutex:
                    if not w.woken:
                        try:
                            waiters.remove(w)
                        except ValueError:
                            pass
                        return False

    async def put(self, item):
        while True:
            await self._wait_on(self._putters, lambda: not self.full())
            try:
                return self.put_nowait(item)
            except QueueFull:
                continue    # another put got the slot first

    async def get(self):
        while True:
            await self._wait_on(self._getters, lambda: not self.empty())
            try:
                return self.get_nowait()
            except QueueEmpty:
                continue

    def put_blocking(self, item, timeout=None):
        """put() from a plain thread; QueueFull when timeout passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if not self._wait_on_blocking(self._putters, lambda: not self.full(), deadline):
                raise QueueFull
            try:
                return self.put_nowait(item)
            except QueueFull:
                continue

    def get_blocking(self, timeout=None):
        """get() from a plain thread; QueueEmpty when timeout passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if not self._wait_on_blocking(self._getters, lambda: not self.empty(), deadline):
                raise QueueEmpty
            try:
                return self.get_nowait()
            except QueueEmpty:
                continue

    def task_done(self):
        with self._mutex:
            if self._unfinished_tasks <= 0:
                raise ValueError("task_done() called too many times")
            self._unfinished_tasks -= 1
            done = self._unfinished_tasks == 0
        if done:
            self._finished.set()

    async def join(self):
        with self._mutex:
            pending = self._unfinished_tasks > 0
        if pending:
            await self._finished.wait()

    def join_blocking(self, timeout=None):
        with self._mutex:
            pending = self._unfinished_tasks > 0
        return not pending or self._finished.wait_blocking(timeout)


class PriorityQueue(Queue):
    def _init(self, maxsize):
        self._queue = []

    def _put(self, item, heappush=heapq.heappush):
        heappush(self._queue, item)

    def _get(self, heappop=heapq.heappop):
        return heappop(self._queue)


class LifoQueue(Queue):
    def _init(self, maxsize):
        self._queue = []

    def _put(self, item):
        self._queue.append(item)

    def _get(self):
        return self._queue.pop()
