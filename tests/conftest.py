"""Every test runs on both asyncio's own loop and tonio_loop.

Async tests get both through pytest-asyncio's loop-factory hook; synchronous
tests that need a loop take the ``loop`` (or ``make_loop``) fixture, which is
parametrized the same way. A difference in behaviour is a failing test.
"""

import asyncio
import functools
import gc
import os
import signal
import sys

import pytest

import tonio_loop

# A suite started in the background by a non-interactive shell (`make tsan &`,
# nohup) inherits SIGINT ignored, and Python keeps it ignored: the Ctrl-C tests
# (this process and the children it starts) would then wait for an interrupt
# that never comes. Ctrl-C is part of what is tested, so it gets its handler.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# TONIO_THREADS=N runs the whole suite with tonio_loop's worker threads
# (Loop(threads=N)): every parity test then checks the multi-threaded mode.
TONIO_THREADS = int(os.environ.get("TONIO_THREADS", "0") or 0)

LOOP_FACTORIES = {
    "asyncio": asyncio.new_event_loop,
    "tonio": (functools.partial(tonio_loop.new_event_loop, threads=TONIO_THREADS)
              if TONIO_THREADS else tonio_loop.new_event_loop),
}


# Scenarios whose outcome rests on what only one thread gives: the order in
# which two tasks' steps interleave, or asyncio's own Lock/Event/Condition/
# Semaphore (not thread-safe) shared by tasks. Neither is promised with worker
# threads (README, "Not promised"), so they run in the first pass only.
one_thread_only = pytest.mark.skipif(
    TONIO_THREADS > 0, reason="relies on one thread: the interleaving of two tasks' steps, "
    "or asyncio's own primitives shared by tasks (not promised with worker threads)")

# asyncio.all_tasks() called inside a running loop on 3.14+ walks the task
# list of the calling thread only (asyncio registers a task on the thread that
# makes it); a worker sees the tasks made on its own thread (README, "Not
# promised"). From outside the loop (asyncio.run's clean-up, pytest-asyncio's)
# it sees them all.
all_tasks_inside_one_thread = pytest.mark.skipif(
    TONIO_THREADS > 0 and sys.version_info >= (3, 14),
    reason="3.14+: all_tasks() inside a running loop lists the calling thread's tasks only")

# With worker threads the suite has already run on asyncio's loop (make test's
# first pass): only tonio's loops are parametrized then, which halves the pass.
PARAMETRIZED = ["tonio"] if TONIO_THREADS else list(LOOP_FACTORIES)


def pytest_asyncio_loop_factories(config, item):
    return {name: LOOP_FACTORIES[name] for name in PARAMETRIZED}


@pytest.fixture(params=PARAMETRIZED)
def loop_name(request):
    return request.param


@pytest.fixture
def make_loop(loop_name):
    """A factory of loops of the parametrized kind; all closed afterwards."""
    loops = []

    def make():
        loop = LOOP_FACTORIES[loop_name]()
        loops.append(loop)
        return loop

    yield make
    for loop in loops:
        if not loop.is_running() and not loop.is_closed():
            loop.close()


@pytest.fixture
def loop(make_loop):
    """A fresh, not running loop of the parametrized kind."""
    return make_loop()


@pytest.fixture
def is_tonio(loop_name):
    return loop_name == "tonio"


# ThreadSanitizer (make tsan) opens its log_path file at its first report,
# in whichever test that happens: that file is not the test's leak.
_SANITIZER_LOG = next((os.path.abspath(opt.split("=", 1)[1])
                       for opt in os.environ.get("TSAN_OPTIONS", "").split()
                       if opt.startswith("log_path=")), None)


def _open_fds():
    try:
        fds = set(os.listdir("/proc/self/fd"))
    except OSError:
        return set()
    if _SANITIZER_LOG:
        for fd in list(fds):
            try:
                if os.readlink(f"/proc/self/fd/{fd}").startswith(_SANITIZER_LOG):
                    fds.discard(fd)
            except OSError:
                pass
    return fds


@pytest.fixture(autouse=True)
def no_fd_leak(request):
    """A test must leave no file descriptor open behind it."""
    before = _open_fds()
    yield
    if request.node.get_closest_marker("allow_fd_leak"):
        return
    gc.collect()
    leaked = _open_fds() - before
    # the listing itself opens one fd that is gone again by now
    leaked = {fd for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")}
    if leaked:
        targets = sorted(os.readlink(f"/proc/self/fd/{fd}") for fd in leaked
                         if os.path.exists(f"/proc/self/fd/{fd}"))
        pytest.fail(f"file descriptors leaked: {targets}")
