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
from ._threaded import (
    _ThreadedSubprocessTransport, _lock_stream_readers, _server_for, _thread_safe_protocol)

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


# a threaded loop's transports call it before connection_made() (stream.c)
Loop._thread_safe_protocol = _thread_safe_protocol
