"""Future: parity with asyncio's Future (loop.create_future() on both loops,
and the classes themselves side by side)."""

import asyncio
import contextvars
import gc
import logging
import re
import sys
import types
import weakref

import pytest

import tonio_loop

cvar = contextvars.ContextVar("cvar", default="unset")

FUTURE_CLASSES = {"asyncio": asyncio.Future, "tonio": tonio_loop.Future}


@pytest.fixture(params=list(FUTURE_CLASSES))
def future_cls(request):
    return FUTURE_CLASSES[request.param]


def run(loop, coro):
    return loop.run_until_complete(coro)


def test_create_future_type(loop, is_tonio):
    fut = loop.create_future()
    assert isinstance(fut, tonio_loop.Future if is_tonio else asyncio.Future)
    assert asyncio.isfuture(fut)
    assert not asyncio.isfuture(type(fut))
    assert fut.get_loop() is loop
    assert fut._loop is loop
    fut.cancel()


def test_result_and_states(loop):
    fut = loop.create_future()
    assert (fut.done(), fut.cancelled(), fut._state) == (False, False, "PENDING")
    with pytest.raises(asyncio.InvalidStateError, match="Result is not set"):
        fut.result()
    with pytest.raises(asyncio.InvalidStateError, match="Exception is not set"):
        fut.exception()
    fut.set_result(42)
    assert (fut.done(), fut.cancelled(), fut._state) == (True, False, "FINISHED")
    assert fut.result() == 42
    assert fut.exception() is None
    assert fut._result == 42
    assert fut.cancel() is False


def test_set_result_twice_is_invalid_state(loop):
    fut = loop.create_future()
    fut.set_result(1)
    with pytest.raises(asyncio.InvalidStateError, match="invalid state"):
        fut.set_result(2)
    with pytest.raises(asyncio.InvalidStateError, match="invalid state"):
        fut.set_exception(ValueError())
    assert fut.result() == 1


def test_set_exception_class_and_instance(loop):
    fut = loop.create_future()
    fut.set_exception(ValueError)
    assert isinstance(fut.exception(), ValueError)
    fut2 = loop.create_future()
    err = KeyError("k")
    fut2.set_exception(err)
    with pytest.raises(KeyError) as info:
        fut2.result()
    assert info.value is err
    assert fut2._exception is err


def test_set_exception_rejects_non_exceptions(loop):
    fut = loop.create_future()
    with pytest.raises(TypeError, match="invalid exception object"):
        fut.set_exception(1)
    with pytest.raises(TypeError, match="invalid exception object"):
        fut.set_exception(int)
    assert not fut.done()
    fut.cancel()


def test_set_exception_stop_iteration(loop):
    fut = loop.create_future()
    if sys.version_info >= (3, 13):
        fut.set_exception(StopIteration())
        exc = fut.exception()
        assert isinstance(exc, RuntimeError)
        assert re.search("StopIteration .* cannot be raised", str(exc))
        assert isinstance(exc.__cause__, StopIteration)
    else:
        with pytest.raises(TypeError, match="StopIteration interacts badly"):
            fut.set_exception(StopIteration())
        assert not fut.done()
        fut.cancel()


def test_result_keeps_traceback(loop):
    fut = loop.create_future()
    try:
        raise ValueError("boom")
    except ValueError as e:
        fut.set_exception(e)
    for _ in range(2):
        with pytest.raises(ValueError) as info:
            fut.result()
        frames = [f.name for f in info.traceback]
        assert "test_result_keeps_traceback" in frames


def test_cancel_with_message(loop):
    fut = loop.create_future()
    assert fut._cancel_message is None
    assert fut.cancel(msg="why") is True
    assert fut.cancel("again") is False
    assert fut.cancelled() and fut.done() and fut._state == "CANCELLED"
    assert fut._cancel_message == "why"
    with pytest.raises(asyncio.CancelledError) as info:
        fut.result()
    assert info.value.args == ("why",)
    with pytest.raises(asyncio.CancelledError):
        fut.exception()
    err = fut._make_cancelled_error()
    assert isinstance(err, asyncio.CancelledError) and err.args == ("why",)
    with pytest.raises(asyncio.InvalidStateError):
        fut.set_result(None)


def test_cancel_message_setter(loop):
    fut = loop.create_future()
    fut.cancel("m")
    fut._cancel_message = "other"
    with pytest.raises(asyncio.CancelledError, match="other"):
        fut.result()
    with pytest.raises(AttributeError):
        del fut._cancel_message


def test_cancel_argument_errors(loop):
    fut = loop.create_future()
    with pytest.raises(TypeError):
        fut.cancel(1, 2)
    with pytest.raises(TypeError):
        fut.cancel(message="x")
    assert not fut.done()
    fut.cancel()


def test_blocking_attribute(loop):
    fut = loop.create_future()
    assert fut._asyncio_future_blocking is False
    fut._asyncio_future_blocking = True
    assert fut._asyncio_future_blocking is True
    fut._asyncio_future_blocking = False
    assert hasattr(type(fut), "_asyncio_future_blocking")
    with pytest.raises(AttributeError):
        del fut._asyncio_future_blocking
    fut.cancel()


def test_log_traceback_attribute(loop):
    fut = loop.create_future()
    fut.set_exception(ValueError())
    assert fut._log_traceback is True
    with pytest.raises(ValueError, match="can only be set to False"):
        fut._log_traceback = True
    fut._log_traceback = False
    assert fut._log_traceback is False
    with pytest.raises(AttributeError):
        del fut._log_traceback


def test_hash_and_weakref(loop):
    fut = loop.create_future()
    assert hash(fut) == hash(fut)
    assert {fut: 1}[fut] == 1
    ref = weakref.ref(fut)
    assert ref() is fut
    fut.cancel()
    del fut
    gc.collect()
    assert ref() is None


def test_class_getitem(future_cls):
    alias = future_cls[int]
    assert isinstance(alias, types.GenericAlias)
    assert alias.__args__ == (int,)


def test_constructor(future_cls, loop):
    fut = future_cls(loop=loop)
    assert fut.get_loop() is loop
    with pytest.raises(TypeError):
        future_cls(loop)
    with pytest.raises(RuntimeError, match="no current event loop|no running event loop"):
        asyncio.set_event_loop(None)
        future_cls()


async def test_constructor_uses_running_loop(future_cls):
    fut = future_cls()
    assert fut.get_loop() is asyncio.get_running_loop()
    fut.cancel()


def test_uninitialized_future(future_cls):
    fut = future_cls.__new__(future_cls)
    assert not fut.done() and not fut.cancelled()
    with pytest.raises(asyncio.InvalidStateError):
        fut.result()
    with pytest.raises(RuntimeError, match="not initialized"):
        fut.get_loop()
    with pytest.raises(RuntimeError, match="not initialized"):
        fut.set_result(1)
    with pytest.raises(RuntimeError):
        fut.add_done_callback(print)
    with pytest.raises(RuntimeError, match="not initialized"):
        iter(fut)
    assert fut._loop is None


def test_subclass(future_cls, loop):
    class MyFuture(future_cls):
        def __init__(self, *, loop):
            super().__init__(loop=loop)
            self.extra = 1

    fut = MyFuture(loop=loop)
    assert asyncio.isfuture(fut) and fut.extra == 1
    loop.call_soon(fut.set_result, "sub")
    assert run(loop, fut) == "sub"
    assert repr(fut) == "<MyFuture finished result='sub'>"


def test_reinit_resets(future_cls, loop):
    """A second __init__ starts the future afresh; asyncio 3.15 refuses it."""
    fut = future_cls(loop=loop)
    fut.add_done_callback(print)
    fut.set_result(1)
    if sys.version_info >= (3, 15):
        with pytest.raises(RuntimeError, match="Future object is already initialized"):
            fut.__init__(loop=loop)
        assert fut.result() == 1
        return
    fut.__init__(loop=loop)
    assert not fut.done()
    assert fut._callbacks is None or fut._callbacks == []
    fut.cancel()


# ---- callbacks --------------------------------------------------------------

def test_callbacks_run_soon_in_order(loop):
    fut = loop.create_future()
    calls = []
    fut.add_done_callback(lambda f: calls.append(("a", f.result())))
    fut.add_done_callback(lambda f: calls.append(("b", f.result())))
    fut.set_result(7)
    assert calls == []          # never inline
    fut.add_done_callback(lambda f: calls.append(("late", f.result())))
    assert calls == []
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == [("a", 7), ("b", 7), ("late", 7)]


def test_callback_context(loop):
    fut = loop.create_future()
    seen = []
    ctx = contextvars.copy_context()
    ctx.run(cvar.set, "explicit")
    token = cvar.set("at add time")
    try:
        fut.add_done_callback(lambda f: seen.append(cvar.get()))
        fut.add_done_callback(lambda f: seen.append(cvar.get()), context=ctx)
    finally:
        cvar.reset(token)
    fut.set_result(None)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["at add time", "explicit"]


def test_add_done_callback_argument_errors(loop):
    fut = loop.create_future()
    with pytest.raises(TypeError):
        fut.add_done_callback(print, 1)
    with pytest.raises(TypeError):
        fut.add_done_callback(print, foo=1)
    with pytest.raises(TypeError):
        fut.add_done_callback()
    assert fut._callbacks in (None, [])
    fut.cancel()


def test_remove_done_callback_counts_equal_ones(loop):
    fut = loop.create_future()
    calls = []

    def a(f):
        calls.append("a")

    def b(f):
        calls.append("b")

    for cb in (a, b, a, b, a):
        fut.add_done_callback(cb)
    assert fut.remove_done_callback(a) == 3
    assert fut.remove_done_callback(a) == 0
    assert [cb for cb, _ in fut._callbacks] == [b, b]
    fut.set_result(None)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == ["b", "b"]


def test_remove_done_callback_uses_equality(loop):
    class Eq:
        def __init__(self, key):
            self.key = key

        def __eq__(self, other):
            return isinstance(other, Eq) and other.key == self.key

        __hash__ = None

        def __call__(self, fut):
            pass

    fut = loop.create_future()
    fut.add_done_callback(Eq(1))
    fut.add_done_callback(Eq(2))
    fut.add_done_callback(Eq(1))
    assert fut.remove_done_callback(Eq(1)) == 2
    assert len(fut._callbacks) == 1
    fut.cancel()


def test_remove_done_callback_mutating_equality(loop):
    # __eq__ that adds and removes callbacks on the same future must not
    # crash or lose callbacks that were not matched
    fut = loop.create_future()
    calls = []

    class Evil:
        def __eq__(self, other):
            fut.add_done_callback(lambda f: calls.append("added"))
            fut.remove_done_callback(print)
            return False

        __hash__ = None

    fut.add_done_callback(lambda f: calls.append("kept"))
    fut.add_done_callback(print)
    assert fut.remove_done_callback(Evil()) == 0
    fut.set_result(None)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls[0] == "kept" and "added" in calls


def test_callbacks_attribute(loop):
    fut = loop.create_future()
    assert not fut._callbacks
    fut.add_done_callback(print)
    (cb, ctx), = fut._callbacks
    assert cb is print and isinstance(ctx, contextvars.Context)
    assert repr(fut) == "<Future pending cb=[print()]>"
    fut.cancel()


def test_callback_error_goes_to_exception_handler(loop):
    fut = loop.create_future()
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    def bad(f):
        raise ZeroDivisionError

    fut.add_done_callback(bad)
    fut.set_result(None)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(contexts) == 1
    assert isinstance(contexts[0]["exception"], ZeroDivisionError)
    assert contexts[0]["message"].startswith("Exception in callback ")


def test_set_result_on_closed_loop_schedules_nothing(loop):
    fut = loop.create_future()
    fut.add_done_callback(print)
    loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        fut.set_result(None)
    assert fut.done()


# ---- await / iter -----------------------------------------------------------

async def test_await_future():
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    loop.call_soon(fut.set_result, ("a", "tuple"))
    assert await fut == ("a", "tuple")
    assert await fut == ("a", "tuple")


async def test_await_exception_and_cancel():
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    loop.call_soon(fut.set_exception, KeyError("k"))
    with pytest.raises(KeyError):
        await fut
    fut2 = loop.create_future()
    loop.call_soon(fut2.cancel, "bye")
    with pytest.raises(asyncio.CancelledError, match="bye"):
        await fut2


def test_iter_protocol(loop):
    fut = loop.create_future()
    it = iter(fut)
    assert next(it) is fut
    assert fut._asyncio_future_blocking is True
    with pytest.raises(RuntimeError, match="await wasn't used with future"):
        next(it)
    fut.set_result(5)
    it = fut.__await__()
    with pytest.raises(StopIteration) as info:
        next(it)
    assert info.value.value == 5
    with pytest.raises(StopIteration):
        next(it)


def test_iter_send_throw_close(loop):
    fut = loop.create_future()
    it = iter(fut)
    assert it.send(None) is fut
    with pytest.raises(ValueError, match="x"):
        it.throw(ValueError("x"))
    it2 = iter(fut)
    with pytest.raises(TypeError):
        it2.throw(list)
    assert it2.close() is None
    fut.set_result(None)


def test_yield_from_future(loop):
    fut = loop.create_future()

    @types.coroutine
    def legacy():
        return (yield from fut)

    async def main():
        loop.call_soon(fut.set_result, "legacy")
        return await legacy()

    assert run(loop, main()) == "legacy"


# ---- logging ---------------------------------------------------------------

def test_exception_never_retrieved_is_logged(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    fut = loop.create_future()
    fut.set_exception(RuntimeError("lost"))
    del fut
    gc.collect()
    assert len(contexts) == 1
    ctx = contexts[0]
    assert ctx["message"] == "Future exception was never retrieved"
    assert isinstance(ctx["exception"], RuntimeError)
    assert asyncio.isfuture(ctx["future"])


def test_retrieved_exception_is_not_logged(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    for consume in (lambda f: f.exception(),
                    lambda f: pytest.raises(RuntimeError, f.result),
                    lambda f: setattr(f, "_log_traceback", False)):
        fut = loop.create_future()
        fut.set_exception(RuntimeError())
        consume(fut)
        del fut
        gc.collect()
    assert contexts == []


def test_default_handler_logs_never_retrieved(loop, caplog):
    fut = loop.create_future()
    fut.set_exception(RuntimeError("lost"))
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        del fut
        gc.collect()
    assert "exception was never retrieved" in caplog.text


def test_source_traceback_in_debug_mode(loop):
    loop.set_debug(True)
    fut = loop.create_future()
    tb = fut._source_traceback
    # asyncio's create_future is Python and shows up as the last frame
    assert "test_source_traceback_in_debug_mode" in [frame[2] for frame in tb[-2:]]
    assert "created at" in repr(fut)
    loop.set_debug(False)
    assert loop.create_future()._source_traceback is None
    fut.cancel()


def test_reprs(loop):
    fut = loop.create_future()
    assert repr(fut) == "<Future pending>"
    fut.set_result([1, 2])
    assert repr(fut) == "<Future finished result=[1, 2]>"
    fut = loop.create_future()
    fut.set_exception(ValueError("v"))
    assert repr(fut) == "<Future finished exception=ValueError('v')>"
    fut.exception()
    fut = loop.create_future()
    fut.cancel()
    assert repr(fut) == "<Future cancelled>"


# ---- foreign loops -----------------------------------------------------------

def test_tonio_future_on_asyncio_loop():
    loop = asyncio.new_event_loop()
    try:
        fut = tonio_loop.Future(loop=loop)
        calls = []
        fut.add_done_callback(lambda f: calls.append(f.result()))
        loop.call_soon(fut.set_result, "x")
        assert loop.run_until_complete(fut) == "x"
        assert calls == ["x"]
    finally:
        loop.close()


def test_asyncio_future_on_tonio_loop():
    loop = tonio_loop.new_event_loop()
    try:
        fut = asyncio.Future(loop=loop)

        async def main():
            loop.call_soon(fut.set_result, "y")
            return await fut

        assert loop.run_until_complete(main()) == "y"
    finally:
        loop.close()


def test_wrap_future(loop):
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        cf = pool.submit(sum, [1, 2, 3])

        async def main():
            return await asyncio.wrap_future(cf)

        assert run(loop, main()) == 6
