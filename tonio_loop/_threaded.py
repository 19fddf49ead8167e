"""The threaded side of tonio_loop.Loop (Loop(threads=N)): asyncio's objects
that are written in Python and whose state a threaded loop changes from
several threads, in kinds whose state changes hold the loop lock.

Each kind is asyncio's class with some methods wrapped (run under the loop
lock, coroutines one step at a time under it, never across an await) and
keeps asyncio's name in reprs. A threaded loop swaps them in where asyncio
makes the object: its Server (create_server), its subprocess transport, and
the stream readers and flow-control protocols of streams and subprocesses.
Classic loops (threads=0) never see them.
"""

import asyncio
import inspect
import types
from asyncio import base_events, unix_events


class _LoopLock:
    __slots__ = ("loop", "taken")

    def __init__(self, loop):
        self.loop = loop

    def __enter__(self):
        self.taken = self.loop._lock_acquire()

    def __exit__(self, *exc):
        self.loop._lock_release(self.taken)


@types.coroutine
def _stepped_locked(loop, coro):
    """Drive coro with every step under the loop lock."""
    lock = _LoopLock(loop)
    value, exc = None, None
    while True:
        with lock:
            try:
                yielded = coro.send(value) if exc is None else coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        value, exc = None, None
        try:
            value = yield yielded
        except BaseException as e:
            exc = e


def _locked_method(cls, name):
    base = getattr(cls, name)
    # a subprocess transport drops its loop once finished: nothing to guard then
    if inspect.iscoroutinefunction(base):
        async def method(self, *args, **kwargs):
            loop = self._loop
            if loop is None:
                return await base(self, *args, **kwargs)
            return await _stepped_locked(loop, base(self, *args, **kwargs))
    else:
        def method(self, *args, **kwargs):
            loop = self._loop
            if loop is None:
                return base(self, *args, **kwargs)
            with _LoopLock(loop):
                return base(self, *args, **kwargs)
    method.__name__ = method.__qualname__ = name
    method.__doc__ = base.__doc__
    return method


class _ThreadedServer(base_events.Server):
    """asyncio.Server whose state changes hold the loop lock: its
    transports call _attach/_detach from the loop thread while tasks call
    close()/wait_closed() from workers. Named as asyncio's in reprs."""

for _name in ("_attach", "_detach", "_wakeup", "close", "close_clients", "abort_clients",
              "_start_serving", "start_serving", "serve_forever", "wait_closed"):
    if hasattr(base_events.Server, _name):
        setattr(_ThreadedServer, _name, _locked_method(base_events.Server, _name))
del _name
_ThreadedServer.__name__ = _ThreadedServer.__qualname__ = "Server"


class _ThreadedSubprocessTransport(unix_events._UnixSubprocessTransport):
    """asyncio's subprocess transport whose state changes hold the loop
    lock: its pipes' protocols report from the loop thread (pipe data, pipe
    lost) while the exit (_process_exited, a callback) and close() come from
    workers; _try_finish must see one consistent state. Named as asyncio's
    in reprs."""

class _SubprocessWaitsForTheEnd(unix_events._UnixSubprocessTransport):
    async def _wait(self):
        # Workers run the exit callback and _call_connection_lost() (queued
        # behind it once the pipes are done too) while the task steps: a
        # wait() between the two would return with the process still held
        # (kill() then does not raise ProcessLookupError). On asyncio's one
        # thread a task woken by the exit runs after that call: so here too.
        if self._returncode is None:
            waiter = self._loop.create_future()
            waiters = self._exit_waiters
            if isinstance(waiters, list):       # up to 3.13
                waiters.append(waiter)
                await waiter
            else:                               # 3.14: a set, left when cancelled
                waiters.add(waiter)
                try:
                    await waiter
                finally:
                    if self._exit_waiters is not None:
                        self._exit_waiters.discard(waiter)
        if self._finished and self._proc is not None:
            lost = self._loop.create_future()
            self.__dict__.setdefault("_tonio_lost_waiters", []).append(lost)
            await lost
        return self._returncode

    def _call_connection_lost(self, exc):
        try:
            unix_events._UnixSubprocessTransport._call_connection_lost(self, exc)
        finally:
            for lost in self.__dict__.pop("_tonio_lost_waiters", ()):
                if not lost.done():
                    lost.set_result(None)


for _name in ("_connect_pipes", "close", "_process_exited", "_pipe_connection_lost",
              "_pipe_data_received"):
    setattr(_ThreadedSubprocessTransport, _name,
            _locked_method(unix_events._UnixSubprocessTransport, _name))
for _name in ("_wait", "_call_connection_lost"):
    setattr(_ThreadedSubprocessTransport, _name, _locked_method(_SubprocessWaitsForTheEnd, _name))
del _name
_ThreadedSubprocessTransport.__name__ = "_UnixSubprocessTransport"
_ThreadedSubprocessTransport.__qualname__ = "_UnixSubprocessTransport"


class _ThreadedStreamReader(asyncio.StreamReader):
    """asyncio's StreamReader with its buffer under the loop lock: the
    protocol feeds it from one thread (a subprocess's pipe data arrives as a
    callback) while a task reads it on another worker, and a bytearray
    resized during a read's memoryview copy loses or repeats data (or
    raises BufferError) without the GIL. The coroutines hold the lock for
    each step, never across an await. Named as asyncio's in reprs."""

for _name in ("feed_data", "feed_eof", "set_exception", "read", "readline", "readuntil",
              "readexactly"):
    setattr(_ThreadedStreamReader, _name, _locked_method(asyncio.StreamReader, _name))
del _name
_ThreadedStreamReader.__name__ = _ThreadedStreamReader.__qualname__ = "StreamReader"


def _locked_drain(cls):
    """cls (an asyncio protocol with FlowControlMixin) whose _drain_helper()
    steps under the loop lock: a writer task on one worker adds and removes
    its waiter in _drain_waiters while resume_writing()/connection_lost()
    (transport callbacks, under the lock) walk that deque on another
    ("deque mutated during iteration" on 3.13t). Named as cls in reprs."""
    locked = type(cls.__name__, (cls,), {
        "_drain_helper": _locked_method(cls, "_drain_helper"),
        "__qualname__": cls.__qualname__, "__module__": cls.__module__})
    return locked


_LOCKED_PROTOCOLS = {cls: _locked_drain(cls) for cls in (
    asyncio.StreamReaderProtocol, asyncio.subprocess.SubprocessStreamProtocol)}


def _thread_safe_protocol(loop, protocol):
    """A threaded loop's transport is about to call connection_made(): an
    asyncio StreamReaderProtocol's reader (open_connection, start_server)
    is fed by data_received() on one worker while tasks read it on others,
    so it becomes the locked kind, as a subprocess's readers do; and so does
    its drain()."""
    reader = getattr(protocol, "_stream_reader", None)
    if type(reader) is asyncio.StreamReader:
        reader.__class__ = _ThreadedStreamReader
    locked = _LOCKED_PROTOCOLS.get(type(protocol))
    if locked is not None:
        protocol.__class__ = locked



def _lock_stream_readers(protocol):
    """asyncio.subprocess's readers (and stdin's drain()) of a threaded
    loop's child: the locked kind."""
    for name in ("stdout", "stderr"):
        reader = getattr(protocol, name, None)
        if type(reader) is asyncio.StreamReader:
            reader.__class__ = _ThreadedStreamReader
    locked = _LOCKED_PROTOCOLS.get(type(protocol))
    if locked is not None:
        protocol.__class__ = locked


def _server_for(loop, server):
    if loop.threads and type(server) is base_events.Server:
        server.__class__ = _ThreadedServer
    return server
