"""Run CPython's own test.test_asyncio suites against tonio_loop.

    python -m tests.conformance [--quiet] [--verbose] [suite ...] [-k PATTERN]

asyncio's test suites are the specification of its semantics. This runner
loads the suites that ship with the running interpreter, points every loop
they create at tonio_loop (the event loop policy, plus a tonio variant of
each test class that builds its loop by hand), runs them, and prints
"N passed, N failed" per suite.

A test counts only if it actually ran on a tonio_loop loop: tests of
asyncio's own classes (its Handle, its BaseEventLoop with mocked selectors)
that never touch our loop are reported as "not ours" instead.

Every test we do not pass is in SKIPS below with the reason. Anything else
that fails makes the run fail.
"""

import argparse
import asyncio
import fnmatch
import functools
import importlib
import io
import os
import sys
import time
import unittest
import warnings

import tonio_loop
from tonio_loop import _loop as _tonio_loop_module

V = sys.version_info[:2]

# --------------------------------------------------------------------------
# Which classes of each suite run, and how they get a tonio loop.
#
# "create": the class builds its loop in create_event_loop(): we subclass it
#           and return tonio_loop's.
# "setup":  the class builds `self.loop` by hand in setUp(): our subclass
#           replaces it with a tonio loop right after.
# "policy": the class asks asyncio (new_event_loop, run, Runner) for a loop;
#           the tonio policy answers.
# --------------------------------------------------------------------------


def _events_classes(mod):
    from test.test_asyncio import utils as test_utils

    class TonioEventLoopTests(mod.EventLoopTestsMixin, mod.SubprocessTestsMixin,
                              test_utils.TestCase):
        def create_event_loop(self):
            return tonio_loop.new_event_loop()

    return {
        "TonioEventLoopTests": TonioEventLoopTests,
        "HandleTests": mod.HandleTests,
        "TimerTests": mod.TimerTests,
        "AbstractEventLoopTests": mod.AbstractEventLoopTests,
        "PolicyTests": mod.PolicyTests,
        "TestPyGetEventLoop": mod.TestPyGetEventLoop,
        "TestCGetEventLoop": getattr(mod, "TestCGetEventLoop", None),
        "TestServer": mod.TestServer,
    }


def _setup_variant(cls):
    """A subclass whose setUp swaps the hand-built loop for a tonio one."""

    class Variant(cls):
        def setUp(self):
            super().setUp()
            self.loop = tonio_loop.new_event_loop()
            self.set_event_loop(self.loop)

    Variant.__name__ = Variant.__qualname__ = "Tonio" + cls.__name__
    return Variant


def _base_events_classes(mod):
    return {
        "TonioBaseEventLoopTests": _setup_variant(mod.BaseEventLoopTests),
        "TonioBaseEventLoopWithSelectorTests":
            _setup_variant(mod.BaseEventLoopWithSelectorTests),
        "RunningLoopTests": mod.RunningLoopTests,
        "BaseEventTests": mod.BaseEventTests,
    }


def _on_tonio_loop(cls, name):
    """A variant whose test loop (new_test_loop, asyncio's fake-clock TestLoop)
    is a real tonio loop instead; tests that read the fake clock are in
    SKIPS."""

    class Variant(cls):
        def new_test_loop(self, gen=None):
            loop = tonio_loop.new_event_loop()
            self.set_event_loop(loop)
            return loop

    Variant.__name__ = Variant.__qualname__ = name
    return Variant


def _ours(cls):
    """Mark a class whose Future/Task classes are tonio_loop's: its tests run
    our code even on asyncio's TestLoop."""
    cls._tonio_types = True
    return cls


def _futures_classes(mod):
    from test.test_asyncio import utils as test_utils

    F = tonio_loop.Future

    class SubFuture(F):
        pass

    @_ours
    class TonioFutureTests(mod.BaseFutureTests, test_utils.TestCase):
        cls = F
        # the C Future's own extra checks
        test_future_del_segfault = mod.CFutureTests.test_future_del_segfault

    @_ours
    class TonioSubFutureTests(mod.BaseFutureTests, test_utils.TestCase):
        cls = SubFuture

    @_ours
    class TonioFutureDoneCallbackTests(mod.BaseFutureDoneCallbackTests, test_utils.TestCase):
        def _new_future(self):
            return F(loop=self.loop)

    @_ours
    class TonioSubFutureDoneCallbackTests(mod.BaseFutureDoneCallbackTests,
                                          test_utils.TestCase):
        def _new_future(self):
            return SubFuture(loop=self.loop)

    @_ours
    class TonioFutureInheritanceTests(mod.BaseFutureInheritanceTests, test_utils.TestCase):
        def _get_future_cls(self):
            return F

    classes = {c.__name__: c for c in (
        TonioFutureTests, TonioSubFutureTests, TonioFutureDoneCallbackTests,
        TonioSubFutureDoneCallbackTests, TonioFutureInheritanceTests)}
    for c in list(classes.values()):
        name = c.__name__.replace("Tonio", "TonioLoop", 1)
        classes[name] = _on_tonio_loop(c, name)
    classes["DuckTests"] = mod.DuckTests
    return classes


def _tasks_classes(mod):
    from asyncio import futures, tasks
    from test.test_asyncio import utils as test_utils

    T, F = tonio_loop.Task, tonio_loop.Future
    # 3.14's BaseTaskTests asks the class for all_tasks()/current_task():
    # asyncio's C ones see C Tasks and their subclasses (ours), the Python
    # ones the Python Task's registry
    c_registry = {
        "all_tasks": staticmethod(getattr(tasks, "_c_all_tasks", None) or asyncio.all_tasks),
        "current_task": staticmethod(getattr(tasks, "_c_current_task", None)
                                     or asyncio.current_task),
    }
    py_registry = {
        "all_tasks": staticmethod(getattr(tasks, "_py_all_tasks", asyncio.all_tasks)),
        "current_task": staticmethod(getattr(tasks, "_py_current_task", asyncio.current_task)),
    }

    def registry(cls, which=c_registry):
        for name, fn in which.items():
            setattr(cls, name, fn)
        return cls

    @registry
    @_ours
    class TonioTask_TonioFuture_Tests(mod.BaseTaskTests, mod.SetMethodsTest,
                                      test_utils.TestCase):
        Task = T
        Future = F
        test_del__log_destroy_pending_segfault = (
            mod.CTask_CFuture_Tests.test_del__log_destroy_pending_segfault)

    @registry
    @_ours
    @mod.add_subclass_tests
    class TonioTask_TonioFuture_SubclassTests(mod.BaseTaskTests, test_utils.TestCase):
        Task = T
        Future = F

    # our Task awaiting asyncio's futures, asyncio's Tasks awaiting ours
    @registry
    @_ours
    class TonioTask_CFuture_Tests(mod.BaseTaskTests, test_utils.TestCase):
        Task = T
        Future = futures._CFuture

    @registry
    @_ours
    class TonioTask_PyFuture_Tests(mod.BaseTaskTests, test_utils.TestCase):
        Task = T
        Future = futures._PyFuture

    @registry
    @_ours
    class CTask_TonioFuture_Tests(mod.BaseTaskTests, test_utils.TestCase):
        Task = tasks._CTask
        Future = F

    @functools.partial(registry, which=py_registry)
    @_ours
    class PyTask_TonioFuture_Tests(mod.BaseTaskTests, test_utils.TestCase):
        Task = tasks._PyTask
        Future = F

    class TonioCurrentLoopTests(mod.BaseCurrentLoopTests, test_utils.TestCase):
        current_task = staticmethod(asyncio.current_task)

        def new_task(self, coro):
            return T(coro, loop=self.loop)

    classes = {c.__name__: c for c in (
        TonioTask_TonioFuture_Tests, TonioTask_TonioFuture_SubclassTests,
        TonioTask_CFuture_Tests, TonioTask_PyFuture_Tests, CTask_TonioFuture_Tests,
        PyTask_TonioFuture_Tests, TonioCurrentLoopTests)}
    classes["TonioLoop_TonioTask_Tests"] = _on_tonio_loop(
        TonioTask_TonioFuture_Tests, "TonioLoop_TonioTask_Tests")

    # gather on a tonio loop: its futures and tasks are ours
    def gather_variant(cls):
        Variant = _on_tonio_loop(cls, "TonioLoop" + cls.__name__)

        def _run_loop(self, loop):
            # asyncio's version polls TestLoop._ready; let a few iterations run
            for _ in range(10):
                test_utils.run_briefly(loop)

        Variant._run_loop = _run_loop
        return Variant

    for c in (mod.FutureGatherTests, mod.CoroutineGatherTests):
        v = gather_variant(c)
        classes[v.__name__] = v
    # these build their loop with asyncio.new_event_loop(): the policy's
    for name in ("RunCoroutineThreadsafeTests", "SleepTests", "CompatibilityTests"):
        classes[name] = getattr(mod, name)
    return classes


def _eager_classes(mod):
    from test.test_asyncio import utils as test_utils

    T = tonio_loop.Task

    class TonioEagerTaskFactoryLoopTests(mod.EagerTaskFactoryLoopTests, test_utils.TestCase):
        Task = T

    class TonioNonEagerTests(mod.BaseNonEagerTaskFactoryTests, test_utils.TestCase):
        Task = T

    class TonioEagerTests(mod.BaseEagerTaskFactoryTests, test_utils.TestCase):
        Task = T

    classes = {c.__name__: c for c in (
        TonioEagerTaskFactoryLoopTests, TonioNonEagerTests, TonioEagerTests)}
    # asyncio's own Task on our loop, eagerly started
    classes["EagerTests"] = mod.EagerTests
    classes["NonEagerTests"] = mod.NonEagerTests
    return classes


def _module_classes(mod):
    """Every TestCase class of the module (they get loops from the policy,
    or from a loop_factory that names asyncio.EventLoop: see
    _tonio_loop_factory)."""
    import inspect

    return {name: _tonio_loop_factory(obj) for name, obj in vars(mod).items()
            if inspect.isclass(obj) and issubclass(obj, unittest.TestCase)
            and obj.__module__ == mod.__name__}


def _tonio_loop_factory(cls):
    """An IsolatedAsyncioTestCase whose loop_factory makes asyncio's
    EventLoop (3.14's test_taskgroups pins it so, the policy being
    deprecated) gets tonio's loop from it instead: asyncio.EventLoop itself,
    or a function that calls it (the eager-task variant), which sees
    tonio_loop's while it runs."""
    factory = getattr(cls, "loop_factory", None)
    event_loop = getattr(asyncio, "EventLoop", None)
    if factory is None or event_loop is None:
        return cls
    if factory is event_loop:
        tonio_factory = tonio_loop.new_event_loop
    else:
        def tonio_factory():
            asyncio.EventLoop = tonio_loop.new_event_loop
            try:
                return factory()
            finally:
                asyncio.EventLoop = event_loop
    return type(cls.__name__, (cls,), {"loop_factory": staticmethod(tonio_factory),
                                       "__module__": cls.__module__})


def _pep492_classes(mod):
    classes = _module_classes(mod)
    # BaseTest builds asyncio.BaseEventLoop() with a mocked selector by hand
    return {"Tonio" + name: _setup_variant(cls) for name, cls in classes.items()
            if issubclass(cls, mod.BaseTest) and cls is not mod.BaseTest}


def _runners_classes(mod):
    classes = _module_classes(mod)

    def new_loop(self):
        # BaseTest.new_loop builds asyncio.BaseEventLoop with a mocked
        # selector; the same instrumentation on a tonio loop
        loop = tonio_loop.new_event_loop()
        loop.shutdown_ag_run = False

        async def shutdown_asyncgens():
            loop.shutdown_ag_run = True
        loop.shutdown_asyncgens = shutdown_asyncgens
        return loop

    out = {}
    for name, cls in classes.items():
        if issubclass(cls, mod.BaseTest) and cls is not mod.BaseTest:
            variant = type("Tonio" + name, (cls,), {"new_loop": new_loop})
            out[variant.__name__] = variant
        elif not issubclass(cls, mod.BaseTest):
            out[name] = cls
    return out
def _create_variant(cls, *bases):
    """A subclass whose create_event_loop() returns a tonio loop."""

    class Variant(cls, *bases):
        def create_event_loop(self):
            return tonio_loop.new_event_loop()

    name = cls.__name__.replace("Mixin", "").replace("Base", "")
    Variant.__name__ = Variant.__qualname__ = "Tonio" + name
    return Variant


def _new_loop_variant(cls):
    """A subclass whose new_loop() (functional tests) returns a tonio loop."""

    class Variant(cls):
        def new_loop(self):
            return tonio_loop.new_event_loop()

    Variant.__name__ = Variant.__qualname__ = "Tonio" + cls.__name__
    return Variant


def _streams_classes(mod):
    return {"StreamTests": mod.StreamTests}


def _server_classes(mod):
    return {
        "TonioSelectorStartServerTests": _new_loop_variant(mod.SelectorStartServerTests),
        "TestServer2": getattr(mod, "TestServer2", None),
        "UnixServerCleanupTests": getattr(mod, "UnixServerCleanupTests", None),
    }


def _sock_lowlevel_classes(mod):
    from test.test_asyncio import utils as test_utils
    return {"TonioSockTests": _create_variant(mod.BaseSockTestsMixin, test_utils.TestCase)}


def _sendfile_classes(mod):
    from test.test_asyncio import utils as test_utils
    return {"TonioSendfileTests": _create_variant(mod.SendfileTestsBase, test_utils.TestCase)}


def _buffered_proto_classes(mod):
    return {"TonioBufferedProtocolTests":
            _new_loop_variant(mod.BufferedProtocolSelectorTests)}


def _unix_events_classes(mod):
    return {
        "TonioSelectorEventLoopSignalTests": _setup_variant(mod.SelectorEventLoopSignalTests),
        "TonioSelectorEventLoopUnixSocketTests":
            _setup_variant(mod.SelectorEventLoopUnixSocketTests),
        "SelectorEventLoopUnixSockSendfileTests": mod.SelectorEventLoopUnixSockSendfileTests,
    }


def _subprocess_classes(mod):
    from test.test_asyncio import utils as test_utils

    class TonioSubprocessTests(mod.SubprocessMixin, test_utils.TestCase):
        # SubprocessWatcherMixin without a child watcher: tonio_loop reaps
        # its children itself
        def setUp(self):
            super().setUp()
            self.loop = tonio_loop.new_event_loop()
            self.set_event_loop(self.loop)

    return {
        "TonioSubprocessTests": TonioSubprocessTests,
        "SubprocessTransportTests": mod.SubprocessTransportTests,
        "GenericWatcherTests": getattr(mod, "GenericWatcherTests", None),
    }


def _protocols_classes(mod):
    return {"ProtocolsAbsTests": mod.ProtocolsAbsTests}


def _ssl_classes(mod):
    # TestSSL asks the policy for its loop
    return {"TestSSL": mod.TestSSL}


def _sslproto_classes(mod):
    return {
        # asyncio's own SSLProtocol over mocked transports, on our loop
        "SslProtoHandshakeTests": mod.SslProtoHandshakeTests,
        "TonioSelectorStartTLSTests": _new_loop_variant(mod.SelectorStartTLSTests),
    }


SUITES = {
    "test_events": _events_classes,
    "test_base_events": _base_events_classes,
    "test_futures": _futures_classes,
    "test_tasks": _tasks_classes,
    "test_taskgroups": _module_classes,
    "test_timeouts": _module_classes,
    "test_waitfor": _module_classes,
    "test_locks": _module_classes,
    "test_queues": _module_classes,
    "test_context": _module_classes,
    "test_pep492": _pep492_classes,
    "test_runners": _runners_classes,
    "test_streams": _streams_classes,
    "test_server": _server_classes,
    "test_sock_lowlevel": _sock_lowlevel_classes,
    "test_sendfile": _sendfile_classes,
    "test_buffered_proto": _buffered_proto_classes,
    "test_protocols": _protocols_classes,
    "test_unix_events": _unix_events_classes,
    "test_ssl": _ssl_classes,
    "test_sslproto": _sslproto_classes,
    "test_subprocess": _subprocess_classes,
}
if V >= (3, 12):
    SUITES["test_eager_task_factory"] = _eager_classes

# --------------------------------------------------------------------------
# What we do not pass, and why. Keys are fnmatch patterns on
# "<Class>.<test>"; values are the reason.
# --------------------------------------------------------------------------

_CHILD_WATCHER = ("sets an asyncio child watcher (deprecated in 3.12, gone in 3.14): "
                  "tonio_loop reaps its children itself (a pidfd on its poll) and, "
                  "like uvloop, its policy has no child watchers")
_INTERNALS = "inspects asyncio.BaseEventLoop internals that tonio_loop keeps in C"
_SELECTOR = "drives a mocked asyncio selector; tonio_loop polls with libev"
_MOCKED_SIGNAL = ("patches asyncio.unix_events.signal, which only asyncio's own loop uses; "
                  "tonio_loop calls the signal module from C (real-signal parity tests "
                  "in tests/test_signals.py)")
_OWN_HANDLES = ("checks isinstance(handle, asyncio.Handle): tonio_loop's Handle and "
                "TimerHandle are C types of their own with the same API (as uvloop's)")

_MOCK_SOCKET = ("patches the socket module so the transport gets a MagicMock for a socket; "
                "tonio_loop's transports are C and need a real file descriptor")

_TASK_NOT_OUR_FUTURE = ("calls Future.set_result/set_exception unbound on a Task: "
                        "tonio_loop.Task derives from asyncio.Task (so isinstance() "
                        "holds for asyncio's classes), not from tonio_loop.Future, whose "
                        "methods then refuse it (TypeError); the C layouts of asyncio's "
                        "Task and our Future cannot be merged in one class")
_FAKE_CLOCK = ("reads asyncio's fake-clock TestLoop (loop.time() starting at 0, "
               "advance_time()); the same test passes with tonio_loop's Task and Future "
               "on TestLoop (TonioTask_TonioFuture_Tests)")
_BORROWED = ("patches asyncio.BaseEventLoop.call_exception_handler; tonio_loop.Loop "
             "binds asyncio's function at class creation, so the class patch is not seen")

SKIPS = {
    "test_sslproto": {
        "TonioSelectorStartTLSTests.test_create_connection_ssl_failed_certificate_no_cycles":
            "collects the transports by patching sslproto.SSLProtocol.connection_made; "
            "tonio_loop's TLS transport is C (loop/tls.c) and makes no SSLProtocol",
    },
    "test_ssl": {
        "TestSSL.test_remote_shutdown_receives_trailing_data_on_slow_socket":
            "patches _SelectorSocketTransport internals (_sock, _read_ready_cb); "
            "tonio_loop's socket transport is C",
        "TestSSL.test_create_connection_memory_leak":
            "asserts the SSLContext is freed by reference counting alone while the protocol "
            "still holds its transport: asyncio's second close() drops "
            "_SSLProtocolTransport._ssl_protocol to break that cycle; tonio_loop's TLS "
            "transport is also the TLS protocol (one object, include/tl_tls.h), so the cycle "
            "protocol <-> transport is freed by the cyclic GC instead (tests/test_tls.py::"
            "test_no_garbage_left). Passes on 3.11, where wait_for() runs the loop a few "
            "iterations longer and connection_lost() breaks the cycle first",
    },
    "test_events": {
        "TonioEventLoopTests.test_internal_fds": _INTERNALS,
        # 3.14
        "TonioEventLoopTests.test_call_soon_threadsafe_handle_*":
            "asserts isinstance(handle, asyncio.events._ThreadSafeHandle): tonio_loop's "
            "handles are C types of their own; its call_soon_threadsafe() handle keeps the "
            "same lock (cancel() waits for a running callback: "
            "tests/test_call_soon.py::test_threadsafe_handle_*)",
        # OS surface
        "TonioEventLoopTests.test_timeout_rounding":
            "counts Python-level _run_once calls and reads loop._selector; "
            "tonio_loop iterates in C",
    },
    "test_streams": {
        "StreamTests.test_read_all_from_pipe_reader": _CHILD_WATCHER,
    },
    "test_subprocess": {
        "GenericWatcherTests.test_create_subprocess_fails_with_inactive_watcher":
            _CHILD_WATCHER + "; an inactive one cannot stop it",
        "GenericWatcherTests.test_create_subprocess_with_pidfd":
            _CHILD_WATCHER + " (a loop in another thread spawning children is in "
            "tests/test_subprocess.py)",
    },
    "test_unix_events": {
        "SelectorEventLoopUnixSockSendfileTests.test_sock_sendfile_cancel*":
            "drives asyncio's _sock_sendfile_native_impl() and loop._selector; "
            "tonio_loop's sendfile loop is C (loop/sendfile.c)",
        "SelectorEventLoopUnixSockSendfileTests.test_sock_sendfile_blocking_error":
            "drives asyncio's _sock_sendfile_native_impl() and loop._selector",
        "SelectorEventLoopUnixSockSendfileTests.test_sock_sendfile_os_error_*":
            "drives asyncio's _sock_sendfile_native_impl() with a mocked os.sendfile",
        "SelectorEventLoopUnixSockSendfileTests.test_sock_sendfile_exception":
            "drives asyncio's _sock_sendfile_native_impl() with a mocked os.sendfile",
        "SelectorEventLoopUnixSockSendfileTests.test_sock_sendfile_not_available":
            "mocks asyncio.unix_events.os; tonio_loop calls sendfile(2) from C",
        "TonioSelectorEventLoopSignalTests.test_add_signal_handler": _OWN_HANDLES,
        "TonioSelectorEventLoopSignalTests.test_add_signal_handler_install_error*": _MOCKED_SIGNAL,
        "TonioSelectorEventLoopSignalTests.test_add_signal_handler_setup_error": _MOCKED_SIGNAL,
        "TonioSelectorEventLoopSignalTests.test_remove_signal_handler*": _MOCKED_SIGNAL,
        "TonioSelectorEventLoopSignalTests.test_close": _MOCKED_SIGNAL,
        "TonioSelectorEventLoopSignalTests.test_close_on_finalizing":
            _MOCKED_SIGNAL + " and sys.is_finalizing (tests/test_signals.py covers close())",
    },
    "test_base_events": {
        "TonioBaseEventLoopWithSelectorTests.test_create_connection_transport_error_closes_sock":
            _MOCK_SOCKET + " (and a numeric host connects in C: the patched "
            "sock_connect is not called)",
        "TonioBaseEventLoopTests.test__add_callback_*": _INTERNALS + " (_add_callback, _ready)",
        "TonioBaseEventLoopTests.test__run_once": _INTERNALS + " (_scheduled, _timer_handle_cancelled)",
        "TonioBaseEventLoopTests.test__run_once_*": _INTERNALS + " (_scheduled, _timer_cancelled_count)",
        "TonioBaseEventLoopTests.test_call_later": _OWN_HANDLES,
        "TonioBaseEventLoopTests.test_call_soon": _OWN_HANDLES,
        "TonioBaseEventLoopTests.test_not_implemented":
            "expects the NotImplementedError stubs of asyncio.BaseEventLoop",
        "TonioBaseEventLoopTests.test_run_forever_pre_stopped": _SELECTOR,
        "TonioBaseEventLoopTests.test_single_selecter_event_callback_after_stopping": _SELECTOR,
        "TonioBaseEventLoopTests.test_custom_run_forever_integration":
            _SELECTOR + " (counts _process_events calls; the setup/run/cleanup part passes)",
        "TonioBaseEventLoopWithSelectorTests.test_accept_connection_*":
            _INTERNALS + " (_accept_connection, the selector's accept loop)",
        "TonioBaseEventLoopWithSelectorTests.test_create_connection_ip_addr": _MOCK_SOCKET,
        "TonioBaseEventLoopWithSelectorTests.test_create_connection_ipv6_scope": _MOCK_SOCKET,
        "TonioBaseEventLoopWithSelectorTests.test_create_connection_no_inet_pton": _MOCK_SOCKET,
        "TonioBaseEventLoopWithSelectorTests.test_create_connection_service_name": _MOCK_SOCKET,
        "TonioBaseEventLoopWithSelectorTests.test_create_datagram_endpoint_ip_addr": _MOCK_SOCKET,
        "TonioBaseEventLoopWithSelectorTests.test_create_connection_timeout":
            "mocks loop.sock_connect with an instance attribute; tonio_loop's "
            "create_connection of a numeric address connects in C",
    },
    "test_tasks": {
        "TonioLoop_TonioTask_Tests.test_as_completed": _FAKE_CLOCK,
        "TonioLoop_TonioTask_Tests.test_as_completed_reverse_wait": _FAKE_CLOCK,
        "TonioLoop_TonioTask_Tests.test_as_completed_with_timeout": _FAKE_CLOCK,
        "TonioLoop_TonioTask_Tests.test_sleep": _FAKE_CLOCK,
        "TonioLoop_TonioTask_Tests.test_stop_while_run_in_complete": _FAKE_CLOCK,
        "TonioLoop_TonioTask_Tests.test_task_cancel_sleeping_task": _FAKE_CLOCK,
        "TonioLoop_TonioTask_Tests.test_wait": _FAKE_CLOCK,
        "TonioLoop_TonioTask_Tests.test_wait_concurrent_complete": _FAKE_CLOCK,
        "TonioLoop_TonioTask_Tests.test_wait_first_completed": _FAKE_CLOCK,
        "TonioLoop_TonioTask_Tests.test_wait_first_exception": _FAKE_CLOCK,
        "TonioLoop_TonioTask_Tests.test_wait_first_exception_in_wait": _FAKE_CLOCK,
        "TonioLoop_TonioTask_Tests.test_wait_with_exception": _FAKE_CLOCK,
        "TonioLoop_TonioTask_Tests.test_wait_with_iterator_of_tasks": _FAKE_CLOCK,
        "TonioLoop_TonioTask_Tests.test_wait_with_timeout": _FAKE_CLOCK,
        "TonioLoop_TonioTask_Tests.test_set_*_causes_invalid_state": _TASK_NOT_OUR_FUTURE,
        "TonioTask_TonioFuture_Tests.test_set_*_causes_invalid_state": _TASK_NOT_OUR_FUTURE,
        "TonioLoop_TonioTask_Tests.test_log_destroyed_pending_task":
            _INTERNALS + " (asserts len(loop._ready) == 0; passes on TestLoop with our Task)",
        "TonioLoopCoroutineGatherTests.test_issue46672": _BORROWED,
    },
}


# --------------------------------------------------------------------------

class _LoopCounter:
    """Counts tonio loops created, to tell which tests ran on ours."""

    def __init__(self):
        self.count = 0
        self._orig = _tonio_loop_module.Loop.__init__
        counter = self

        def __init__(loop, *args, **kwargs):
            counter.count += 1
            counter._orig(loop, *args, **kwargs)

        _tonio_loop_module.Loop.__init__ = __init__


class _Result(unittest.TestResult):
    def __init__(self, counter, skips, verbose):
        super().__init__()
        self.counter = counter
        self.skips = skips
        self.verbose = verbose
        self.outcomes = {}      # id -> (status, detail)
        self._before = 0
        self._t0 = 0.0

    def _key(self, test):
        return f"{type(test).__name__}.{test._testMethodName}"

    def startTest(self, test):
        super().startTest(test)
        self._before = self.counter.count
        self._t0 = time.monotonic()
        if self.verbose:
            print(f"  {self._key(test)} ...", end=" ", flush=True)

    def _record(self, test, status, detail=""):
        key = self._key(test)
        if (status == "pass" and self.counter.count == self._before
                and not getattr(test, "_tonio_types", False)):
            status = "not ours"
        prev = self.outcomes.get(key)
        if prev is None or prev[0] == "pass" or status in ("fail", "error"):
            self.outcomes[key] = (status, detail)
        if self.verbose and prev is None:
            print(f"{status} ({time.monotonic() - self._t0:.2f}s)", flush=True)

    def addSuccess(self, test):
        self._record(test, "pass")

    def addFailure(self, test, err):
        self._record(test, "fail", self._exc_info_to_string(err, test))

    def addError(self, test, err):
        self._record(test, "error", self._exc_info_to_string(err, test))

    def addSkip(self, test, reason):
        self._record(test, "skipped by CPython", reason)

    def addExpectedFailure(self, test, err):
        self._record(test, "pass")

    def addUnexpectedSuccess(self, test):
        self._record(test, "fail", "unexpected success")

    def addSubTest(self, test, subtest, err):
        if err is not None:
            status = "fail" if issubclass(err[0], test.failureException) else "error"
            self._record(test, status, self._exc_info_to_string(err, test))


def _skip_reason(skips, key):
    for pattern, reason in skips.items():
        if fnmatch.fnmatchcase(key, pattern):
            return reason
    return None


def _load(suite_name, pattern):
    mod = importlib.import_module(f"test.test_asyncio.{suite_name}")
    classes = SUITES[suite_name](mod)
    loader = unittest.TestLoader()
    skips = SKIPS.get(suite_name, {})
    tests = []
    skipped = {}
    for cname, cls in classes.items():
        if cls is None:
            continue
        for tname in loader.getTestCaseNames(cls):
            key = f"{cname}.{tname}"
            if pattern and not fnmatch.fnmatchcase(key, pattern) and pattern not in key:
                continue
            reason = _skip_reason(skips, key)
            if reason is not None:
                skipped[key] = reason
                continue
            tests.append(cls(tname))
    return tests, skipped


def run_suite(suite_name, counter, args):
    tests, skipped = _load(suite_name, args.k)
    result = _Result(counter, SKIPS.get(suite_name, {}), args.verbose)
    if args.verbose:
        print(f"{suite_name}:")
    policy = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(tonio_loop.EventLoopPolicy())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            unittest.TestSuite(tests).run(result)
    finally:
        asyncio.set_event_loop_policy(policy)
    counts = {}
    for status, _ in result.outcomes.values():
        counts[status] = counts.get(status, 0) + 1
    passed = counts.get("pass", 0)
    failed = counts.get("fail", 0) + counts.get("error", 0)
    line = (f"{suite_name}: {passed} passed, {failed} failed, "
            f"{len(skipped)} in the skip list, "
            f"{counts.get('not ours', 0)} not ours, "
            f"{counts.get('skipped by CPython', 0)} skipped by CPython")
    print(line, flush=True)
    for key, (status, detail) in sorted(result.outcomes.items()):
        if status in ("fail", "error"):
            print(f"  FAILED {key}")
            if not args.quiet:
                print("    " + detail.strip().replace("\n", "\n    "))
    if args.show_skips:
        for key, reason in sorted(skipped.items()):
            print(f"  skip {key}: {reason}")
    return failed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suites", nargs="*", help="suite names (default: all)")
    parser.add_argument("-k", help="only tests whose Class.test matches")
    parser.add_argument("--quiet", action="store_true", help="no tracebacks")
    parser.add_argument("--verbose", action="store_true", help="one line per test")
    parser.add_argument("--show-skips", action="store_true", help="list the skip list")
    args = parser.parse_args(argv)
    names = args.suites or list(SUITES)
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        parser.error(f"unknown suites: {unknown}; known: {list(SUITES)}")
    # CPython's suites print to stderr freely; keep the report readable
    os.environ.setdefault("PYTHONASYNCIODEBUG", "")
    counter = _LoopCounter()
    failed = 0
    for name in names:
        failed += run_suite(name, counter, args)
    print(f"conformance on Python {sys.version.split()[0]}: "
          f"{'OK' if not failed else f'{failed} unexpected failures'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
