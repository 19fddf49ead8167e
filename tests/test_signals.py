"""add_signal_handler / remove_signal_handler with real signals."""

import asyncio
import contextvars
import os
import signal
import threading
import time

import pytest

cvar = contextvars.ContextVar("cvar", default="unset")


@pytest.fixture(autouse=True)
def restore_signal_state():
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP,
                                             signal.SIGINT)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)
    signal.set_wakeup_fd(-1)


def test_handler_runs_as_loop_callback(loop):
    calls = []
    token = cvar.set("at registration")
    try:
        loop.add_signal_handler(signal.SIGUSR1, lambda *a: calls.append(
            (a, threading.get_ident(), cvar.get(), loop.is_running())), "arg", 2)
    finally:
        cvar.reset(token)
    loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    # with worker threads (TONIO_THREADS) callbacks run on a worker
    thread = threading.get_ident() if not getattr(loop, "threads", 0) else calls[0][1]
    assert calls == [(("arg", 2), thread, "at registration", True)]
    assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert loop.remove_signal_handler(signal.SIGUSR1) is False
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_signal_wakes_sleeping_loop(loop):
    got = []

    def on_signal():
        got.append(time.monotonic())
        loop.stop()

    loop.add_signal_handler(signal.SIGUSR2, on_signal)
    t = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR2))
    t0 = time.monotonic()
    t.start()
    loop.run_forever()        # nothing else scheduled: asleep in the poll
    t.join()
    assert got and got[0] - t0 < 2
    loop.remove_signal_handler(signal.SIGUSR2)


def test_signal_before_run_is_delivered_on_run(loop):
    calls = []
    loop.add_signal_handler(signal.SIGUSR1, calls.append, "late")
    os.kill(os.getpid(), signal.SIGUSR1)
    assert calls == []
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert calls == ["late"]


def test_replacing_handler(loop):
    calls = []
    loop.add_signal_handler(signal.SIGUSR1, calls.append, 1)
    loop.add_signal_handler(signal.SIGUSR1, calls.append, 2)
    loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert calls == [2]


def test_sigint_handler_replaces_keyboard_interrupt(loop):
    calls = []
    loop.add_signal_handler(signal.SIGINT, calls.append, "sigint")
    loop.call_soon(os.kill, os.getpid(), signal.SIGINT)
    loop.call_later(0.05, loop.stop)
    loop.run_forever()       # no KeyboardInterrupt
    assert calls == ["sigint"]
    assert loop.remove_signal_handler(signal.SIGINT) is True
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_close_removes_handlers(make_loop):
    loop = make_loop()
    loop.add_signal_handler(signal.SIGUSR1, print)
    loop.add_signal_handler(signal.SIGHUP, print)
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
    assert loop._signal_handlers == {}


def test_bad_signals(loop):
    with pytest.raises(TypeError, match="sig must be an int, not '1'"):
        loop.add_signal_handler("1", print)
    with pytest.raises(ValueError, match="invalid signal number"):
        loop.add_signal_handler(signal.NSIG + 1, print)
    with pytest.raises(TypeError):
        loop.remove_signal_handler(None)
    with pytest.raises(ValueError, match="invalid signal number"):
        loop.remove_signal_handler(-1)
    with pytest.raises(RuntimeError, match=f"sig {int(signal.SIGKILL)} cannot be caught"):
        loop.add_signal_handler(signal.SIGKILL, print)
    with pytest.raises(RuntimeError, match=f"sig {int(signal.SIGSTOP)} cannot be caught"):
        loop.add_signal_handler(signal.SIGSTOP, print)
    assert signal.SIGKILL not in loop._signal_handlers


def test_coroutine_callbacks_refused(loop):
    async def coro():
        pass

    with pytest.raises(TypeError, match="coroutines cannot be used with add_signal_handler"):
        loop.add_signal_handler(signal.SIGUSR1, coro)
    c = coro()
    with pytest.raises(TypeError, match="coroutines cannot be used with add_signal_handler"):
        loop.add_signal_handler(signal.SIGUSR1, c)
    c.close()


def test_closed_loop_refuses(loop):
    loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.add_signal_handler(signal.SIGUSR1, print)


def test_other_thread_refused(loop):
    errors = []

    def in_thread():
        try:
            loop.add_signal_handler(signal.SIGUSR1, print)
        except RuntimeError as exc:
            errors.append(str(exc))

    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    assert len(errors) == 1 and "main thread" in errors[0]
    assert signal.SIGUSR1 not in loop._signal_handlers


def test_cancelled_handle_removes_handler(loop):
    calls = []
    loop.add_signal_handler(signal.SIGUSR1, calls.append, 1)
    loop._signal_handlers[signal.SIGUSR1].cancel()
    loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert calls == []
    assert signal.SIGUSR1 not in loop._signal_handlers


def test_handler_exception_goes_to_exception_handler(loop):
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))

    def bad():
        raise ValueError("in signal handler")

    loop.add_signal_handler(signal.SIGUSR1, bad)
    loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert isinstance(errors[0]["exception"], ValueError)


def test_signal_storm_while_callbacks_run(loop):
    received = []
    sent = []
    loop.add_signal_handler(signal.SIGUSR1, lambda: received.append(1))
    stop = threading.Event()

    def storm():
        while not stop.is_set() and len(sent) < 2000:
            os.kill(os.getpid(), signal.SIGUSR1)
            sent.append(1)
            time.sleep(0.0002)

    busy = [0]

    def spin():
        busy[0] += 1
        if not stop.is_set():
            loop.call_soon(spin)

    t = threading.Thread(target=storm)
    loop.call_soon(spin)
    loop.call_soon(t.start)
    loop.call_later(0.3, stop.set)
    loop.call_later(0.4, loop.stop)
    loop.run_forever()
    t.join()
    # signals coalesce, so fewer may arrive, but they do arrive and nothing
    # else is disturbed
    assert 0 < len(received) <= len(sent)
    assert busy[0] > 100


async def test_asyncio_runner_ctrl_c_handler_coexists():
    # asyncio.Runner installs its own SIGINT handler; a loop signal handler on
    # another signal must not disturb it
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR2, fut.set_result, "ok")
    os.kill(os.getpid(), signal.SIGUSR2)
    assert await asyncio.wait_for(fut, 5) == "ok"
    assert loop.remove_signal_handler(signal.SIGUSR2)
