"""os.fork(): the child can use old and new loops; the parent is untouched."""

import asyncio
import os
import socket
import warnings

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _fork(child):
    """Run child() in a forked process; return its exit status."""
    with warnings.catch_warnings():
        # forking a process with threads warns on 3.12+; this test's
        # children do not rely on other threads
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = child()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_parent_loop_untouched_by_child(loop_name, make_loop, request):
    from tests.conftest import LOOP_FACTORIES

    if loop_name == "asyncio":
        request.applymarker(pytest.mark.xfail(
            reason="asyncio's selector shares its epoll instance with the child: "
                   "closing the loop there unregisters the parent's fds", strict=True))
    loop = make_loop()
    a, b = socket.socketpair()
    request.addfinalizer(a.close)
    request.addfinalizer(b.close)
    a.setblocking(False)
    got = []
    loop.add_reader(a, lambda: (got.append(a.recv(100)), loop.stop()))
    loop.call_soon(loop.stop)
    loop.run_forever()        # the reader is now registered with the kernel

    def child():
        # use the inherited loop, then close it, then make a new one
        loop.run_until_complete(asyncio.sleep(0.001))
        loop.remove_reader(a)
        loop.close()
        fresh = LOOP_FACTORIES[loop_name]()
        try:
            r = fresh.run_until_complete(asyncio.sleep(0.001, "child ok"))
        finally:
            fresh.close()
        return 0 if r == "child ok" else 3

    assert _fork(child) == 0
    # the child removed the reader and closed its copy of the loop: the
    # parent's registration must still be there
    b.send(b"after fork")
    loop.call_later(5, loop.stop)
    loop.run_forever()
    loop.remove_reader(a)
    assert got == [b"after fork"]


def test_child_timers_and_readers_on_new_loop(loop_name):
    from tests.conftest import LOOP_FACTORIES

    def child():
        loop = LOOP_FACTORIES[loop_name]()
        try:
            r, w = socket.socketpair()
            fut = loop.create_future()
            loop.add_reader(r, lambda: fut.set_result(r.recv(10)))
            loop.call_later(0.01, w.send, b"x")
            data = loop.run_until_complete(asyncio.wait_for(fut, 5))
            loop.remove_reader(r)
            r.close()
            w.close()
            return 0 if data == b"x" else 4
        finally:
            loop.close()

    assert _fork(child) == 0


def test_fork_inside_running_loop(loop_name, make_loop):
    loop = make_loop()
    results = []

    def in_callback():
        def child():
            # the child continues inside the parent's run_forever frame;
            # asyncio's own loop also keeps running here
            loop.call_soon(loop.stop)
            return 0

        results.append(_fork(child))
        loop.stop()

    loop.call_soon(in_callback)
    loop.run_forever()
    assert results == [0]
