"""tonio_loop.Loop: the C core plus the cold parts asyncio itself writes in Python.

The hot paths (scheduling, timers, the run loop, I/O) live in ``_core.Loop``.
What asyncio implements in Python and runs rarely - executors, async generator
shutdown, exception handler plumbing - is taken from the running Python's own
``asyncio.BaseEventLoop``, so its semantics match that version exactly.
"""

import asyncio
import functools
import io
import os
import socket
import inspect
import threading
import time
import types
import weakref

try:
    import ssl
except ImportError:  # pragma: no cover
    ssl = None
from asyncio import base_events, constants, exceptions, selector_events, unix_events
from asyncio.log import logger

from . import _core

def _reaping_child_watcher():
    """asyncio's FastChildWatcher when the policy has one (3.11-3.13): it
    reaps every child of the process with waitpid(-1), ours too, so the exit
    status must come from it. The other watchers wait for their own pids and
    leave ours alone; the loop then watches its children itself."""
    if not hasattr(asyncio, "FastChildWatcher"):
        return None
    policy = asyncio.events._event_loop_policy
    watcher = getattr(policy, "_watcher", None)
    return watcher if isinstance(watcher, asyncio.FastChildWatcher) else None


_Base = base_events.BaseEventLoop
_Selector = selector_events.BaseSelectorEventLoop
_Unix = unix_events._UnixSelectorEventLoop


class Loop(_core.Loop, asyncio.AbstractEventLoop):
    """An asyncio event loop running on libev."""

    def __init__(self, **kwargs):
        # first: close() reads it, also when the C part refuses its arguments
        self._child_pidfds = {}          # pidfd -> pid of children not reaped yet
        super().__init__(**kwargs)
        # a plain attribute, as asyncio's (any value; debug mode compares it)
        self.slow_callback_duration = 0.1
        self._default_executor = None
        self._executor_shutdown_called = False
        self._asyncgens = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._coroutine_origin_tracking_enabled = False
        self._coroutine_origin_tracking_saved_depth = None
        self._clock_resolution = time.get_clock_info('monotonic').resolution
        self._unix_server_sockets = {}   # create_unix_server(cleanup_socket=True)

    # exception handling
    call_exception_handler = _Base.call_exception_handler
    default_exception_handler = _Base.default_exception_handler

    # executors
    run_in_executor = _Base.run_in_executor
    set_default_executor = _Base.set_default_executor
    shutdown_default_executor = _Base.shutdown_default_executor
    _do_shutdown = _Base._do_shutdown
    _check_default_executor = _Base._check_default_executor

    # async generators
    shutdown_asyncgens = _Base.shutdown_asyncgens
    _asyncgen_firstiter_hook = _Base._asyncgen_firstiter_hook
    _asyncgen_finalizer_hook = _Base._asyncgen_finalizer_hook

    # debug mode
    _check_callback = _Base._check_callback
    _set_coroutine_origin_tracking = _Base._set_coroutine_origin_tracking

    # streams and servers: transports, accepting and the socket operations
    # are C (_core); the orchestration around them (address resolution,
    # happy eyeballs, binding, error aggregation) is the running asyncio's
    # own code, so arguments, semantics and messages match its version.
    # create_connection itself is C: numeric addresses without options
    # connect there, everything else comes here.
    _create_connection_general = _Base.create_connection
    _connect_sock = _Base._connect_sock
    _create_connection_transport = _Base._create_connection_transport
    _ensure_resolved = _Base._ensure_resolved
    _getaddrinfo_debug = _Base._getaddrinfo_debug
    @functools.wraps(_Base.create_server)
    async def create_server(self, *args, **kwargs):
        return _server_for(self, await _Base.create_server(self, *args, **kwargs))

    _create_server_getaddrinfo = _Base._create_server_getaddrinfo
    connect_accepted_socket = _Base.connect_accepted_socket
    create_unix_connection = _Unix.create_unix_connection
    @functools.wraps(_Unix.create_unix_server)
    async def create_unix_server(self, *args, **kwargs):
        return _server_for(self, await _Unix.create_unix_server(self, *args, **kwargs))

    _accept_connection2 = _Selector._accept_connection2
    connect_read_pipe = _Base.connect_read_pipe
    # datagrams: the transport is C (_make_datagram_transport)
    create_datagram_endpoint = _Base.create_datagram_endpoint
    connect_write_pipe = _Base.connect_write_pipe

    # subprocesses: the checks and asyncio's own transport (subprocess.Popen
    # and its protocol plumbing) over the C pipe transports
    subprocess_exec = _Base.subprocess_exec
    subprocess_shell = _Base.subprocess_shell
    _log_subprocess = _Base._log_subprocess

    # sendfile: the zero-copy path is C, the checks and fallbacks asyncio's
    sendfile = _Base.sendfile
    _sendfile_fallback = _Base._sendfile_fallback
    sock_sendfile = _Base.sock_sendfile
    _sock_sendfile_fallback = _Base._sock_sendfile_fallback
    _check_sendfile_params = _Base._check_sendfile_params

    async def sock_connect(self, sock, address):
        """Connect sock to a remote address (selector_events.sock_connect)."""
        base_events._check_ssl_socket(sock)
        if self._debug and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        if sock.family == socket.AF_INET or (
                base_events._HAS_IPv6 and sock.family == socket.AF_INET6):
            resolved = await self._ensure_resolved(
                address, family=sock.family, type=sock.type, proto=sock.proto,
                loop=self,
            )
            _, _, _, _, address = resolved[0]
        return await self._sock_connect(sock, address)

    async def getaddrinfo(self, host, port, *, family=0, type=0, proto=0, flags=0):
        # numeric hosts and ports are answered here, without a thread
        if not self._debug:
            infos = self._getaddrinfo_numeric(host, port, family, type, proto, flags)
            if infos is not None:
                return infos
        return await _Base.getaddrinfo(self, host, port, family=family, type=type,
                                       proto=proto, flags=flags)

    async def getnameinfo(self, sockaddr, flags=0):
        info = self._getnameinfo_numeric(sockaddr, flags)
        if info is not None:
            return info
        return await _Base.getnameinfo(self, sockaddr, flags)

    async def _sock_sendfile_native(self, sock, file, offset, count):
        # unix_events._sock_sendfile_native's checks; the sending is C
        try:
            os.sendfile
        except AttributeError:
            raise exceptions.SendfileNotAvailableError(
                "os.sendfile() is not available")
        try:
            fileno = file.fileno()
        except (AttributeError, io.UnsupportedOperation) as err:
            raise exceptions.SendfileNotAvailableError("not a regular file")
        try:
            fsize = os.fstat(fileno).st_size
        except OSError:
            raise exceptions.SendfileNotAvailableError("not a regular file")
        blocksize = count if count else fsize
        if not blocksize:
            return 0  # empty file
        return await self._sock_sendfile_op(sock, fileno, offset, count or 0, blocksize)

    async def _sendfile_native(self, transp, file, offset, count):
        # selector_events._sendfile_native: the socket is sock_sendfile()'s
        # while it runs, not the transport's
        transp._release_fd()
        resume_reading = transp.is_reading()
        transp.pause_reading()
        await transp._make_empty_waiter()
        try:
            return await self.sock_sendfile(transp._sock, file, offset, count,
                                            fallback=False)
        finally:
            transp._reset_empty_waiter()
            if resume_reading:
                transp.resume_reading()
            transp._reclaim_fd()

    async def start_tls(self, transport, protocol, sslcontext, *,
                        server_side=False,
                        server_hostname=None,
                        ssl_handshake_timeout=None,
                        ssl_shutdown_timeout=None):
        """Upgrade transport to TLS (base_events.start_tls with our TLS
        transport, loop/tls.c, in place of asyncio's SSLProtocol)."""
        if ssl is None:
            raise RuntimeError('Python ssl module is not available')
        if not isinstance(sslcontext, ssl.SSLContext):
            raise TypeError(
                f'sslcontext is expected to be an instance of ssl.SSLContext, '
                f'got {sslcontext!r}')
        if not getattr(transport, '_start_tls_compatible', False):
            raise TypeError(
                f'transport {transport!r} is not supported by start_tls()')

        waiter = self.create_future()
        ssl_transport = _core.SSLTransport(
            self, protocol, sslcontext, waiter,
            server_side, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
            call_connection_made=False)

        # Pause early so that the TLS transport's data_received() doesn't
        # have a chance to get called before its connection_made().
        transport.pause_reading()

        transport.set_protocol(ssl_transport)
        conmade_cb = self.call_soon(ssl_transport.connection_made, transport)
        early = _early_handshake_bytes(self, protocol, server_side)
        if early:
            self.call_soon(ssl_transport.data_received, early)
        resume_cb = self.call_soon(transport.resume_reading)

        try:
            await waiter
        except BaseException:
            transport.close()
            conmade_cb.cancel()
            resume_cb.cancel()
            waiter = None       # the exception's traceback holds this frame
            raise

        # None when the connection was lost meanwhile (asyncio returns its
        # SSLProtocol's _app_transport, which connection_lost() drops)
        return ssl_transport._app_transport

    async def _make_subprocess_transport(self, protocol, args, shell,
                                         stdin, stdout, stderr, bufsize,
                                         extra=None, **kwargs):
        # unix_events._make_subprocess_transport without the child watcher:
        # the loop watches its own children (_watch_child)
        watcher = _reaping_child_watcher()
        if watcher is not None:
            # it reaps every child: hold it open while forking, as asyncio
            # does, so that it keeps the status of one that exits at once
            with watcher:
                if not watcher.is_active():
                    raise RuntimeError("asyncio.get_child_watcher() is not activated, "
                                       "subprocess support is not installed.")
                return await self._make_subprocess_transport_watched(
                    protocol, args, shell, stdin, stdout, stderr, bufsize, extra,
                    kwargs, watcher)
        return await self._make_subprocess_transport_watched(
            protocol, args, shell, stdin, stdout, stderr, bufsize, extra, kwargs, None)

    async def _make_subprocess_transport_watched(self, protocol, args, shell, stdin,
                                                 stdout, stderr, bufsize, extra, kwargs,
                                                 watcher):
        waiter = self.create_future()
        transport_type = (_ThreadedSubprocessTransport if self.threads
                          else unix_events._UnixSubprocessTransport)
        transp = transport_type(
            self, protocol, args, shell, stdin, stdout, stderr, bufsize,
            waiter=waiter, extra=extra, **kwargs)
        if watcher is not None:
            watcher.add_child_handler(transp.get_pid(), self._child_watcher_callback, transp)
        else:
            self._watch_child(transp)
        try:
            await waiter
            if self.threads:
                # _connect_pipes queues protocol.connection_made with
                # call_soon, then sets the waiter at once: a task woken on
                # a worker does not wait for the loop's callbacks, so one
                # more pass through them lets connection_made run first
                # (asyncio.subprocess reads the streams it made right after)
                await _after_queued_callbacks(self)
                _lock_stream_readers(protocol)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transp.close()
            await transp._wait()
            raise
        return transp

    def _watch_child(self, transp):
        """Reap transp's child when it exits, and tell the transport.

        A pidfd (Linux >= 5.3) on the loop's poll, an ev_io like any reader:
        no thread, no SIGCHLD handler, and other users of waitpid() (the
        subprocess module) are left alone. Without pidfds, a thread blocks
        in waitpid() for the child (asyncio's ThreadedChildWatcher)."""
        pid = transp.get_pid()
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            threading.Thread(target=self._wait_child_thread, args=(pid, transp),
                             name=f"tonio_loop waitpid-{pid}", daemon=True).start()
            return
        self._child_pidfds[pidfd] = pid
        self._add_reader(pidfd, self._child_ready, pidfd, transp)

    def _child_ready(self, pidfd, transp):
        try:
            # waiting on the pidfd, not the pid: were the child reaped by
            # someone else and its pid reused, this still cannot block
            info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            returncode = None
        else:
            if info is None:
                return      # not exited after all: keep watching
            returncode = info.si_status
            if info.si_code != os.CLD_EXITED:
                returncode = -returncode     # killed (or dumped) by that signal
        pid = self._child_pidfds.pop(pidfd)
        self._remove_reader(pidfd)
        os.close(pidfd)
        self._child_reaped(transp, pid, returncode)

    def _child_watcher_callback(self, pid, returncode, transp):
        # from the watcher's SIGCHLD handler (or its thread)
        self.call_soon_threadsafe(self._child_reaped, transp, pid, returncode)

    def _wait_child_thread(self, pid, transp):
        try:
            _, status = os.waitpid(pid, 0)
            returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            returncode = None
        try:
            self.call_soon_threadsafe(self._child_reaped, transp, pid, returncode)
        except RuntimeError:
            pass    # the loop was closed meanwhile; the child is reaped all the same

    def _child_reaped(self, transp, pid, returncode):
        proc = transp._proc
        if returncode is not None:
            # the subprocess module must not wait for it again (it would take
            # ECHILD for an exit status of 0)
            if proc.returncode is None:
                proc.returncode = returncode
        elif proc.returncode is not None:
            # reaped by the subprocess module first (Popen.poll() from
            # send_signal() or close()), which kept the status: use it
            returncode = proc.returncode
        else:
            returncode = 255
            logger.warning("child process pid %d exit status already read: "
                           " will report returncode 255", pid)
        # asyncio's child watcher callback: the transport hears it next iteration
        self.call_soon(transp._process_exited, returncode)

    def close(self):
        if not self.is_running():
            # children still running are left to the subprocess module
            # (Popen reaps them when it is collected); their pidfds go now
            for pidfd in list(self._child_pidfds):
                del self._child_pidfds[pidfd]
                self._remove_reader(pidfd)
                os.close(pidfd)
        super().close()

    def _stop_serving(self, sock):
        # selector_events._stop_serving, plus unix_events' cleanup of the
        # socket file (3.13's create_unix_server(cleanup_socket=True))
        if sock in self._unix_server_sockets:
            path = sock.getsockname()
        else:
            path = None
        self._remove_reader(sock.fileno())
        sock.close()
        if path is not None:
            prev_ino = self._unix_server_sockets[sock]
            del self._unix_server_sockets[sock]
            try:
                if os.stat(path).st_ino == prev_ino:
                    os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as err:
                logger.error('Unable to clean up listening UNIX socket '
                             '%r: %r', path, err)


def new_event_loop(**kwargs):
    """Return a new tonio_loop event loop."""
    return Loop(**kwargs)


# asyncio's transports are documented with these
_core.SocketTransport._start_tls_compatible = True
_core.SocketTransport._sendfile_compatible = constants._SendfileMode.TRY_NATIVE


def _introspect_as_coroutines(cls, reference):
    """The C methods that asyncio defines with `async def` answer
    inspect.iscoroutinefunction() as asyncio's do, with asyncio's signature
    (loop/coromethod.c): code that introspects (mock.patch's autospec makes
    an AsyncMock then) sees what it sees on asyncio's loop."""
    for name, method in list(vars(cls).items()):
        like = getattr(reference, name, None)
        if (isinstance(method, types.MethodDescriptorType)
                and inspect.iscoroutinefunction(like)
                and isinstance(like, types.FunctionType)):
            setattr(cls, name, _core.CoroutineMethod(method, like))


_introspect_as_coroutines(_core.Loop, selector_events.BaseSelectorEventLoop)


# ---- threaded loops (Loop(threads=N)) ----------------------------------------

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


Loop._thread_safe_protocol = _thread_safe_protocol


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


def _early_handshake_bytes(loop, protocol, server_side):
    """What the peer's TLS handshake already put in a stream reader's buffer.

    A server's StreamReaderProtocol may hold the client's first handshake
    bytes when start_tls() comes: asyncio 3.14 (gh-142352) hands them to the
    TLS protocol; so do we, on every version (before, the handshake waited
    for bytes that never came again). With worker threads the same can
    happen on either side: the loop thread reads the socket while the task
    that answered "go ahead with TLS" has not yet paused reading, where
    asyncio's single thread never lets them arrive. Once pause_reading()
    has returned nothing more comes there: hand them to the TLS
    transport."""
    if not (loop.threads or (server_side and isinstance(protocol, asyncio.StreamReaderProtocol))):
        return None
    reader = getattr(protocol, "_stream_reader", None)
    buffer = getattr(reader, "_buffer", None)
    if not buffer:
        return None
    data = bytes(buffer)
    buffer.clear()
    return data


async def _after_queued_callbacks(loop):
    """Return once the callbacks queued (call_soon) before the call ran:
    one trip through the loop's strand, which keeps call_soon's order."""
    done = loop.create_future()
    loop.call_soon(_set_result_unless_done, done)
    await done


def _set_result_unless_done(fut):
    if not fut.done():
        fut.set_result(None)


def _server_for(loop, server):
    if loop.threads and type(server) is base_events.Server:
        server.__class__ = _ThreadedServer
    return server
