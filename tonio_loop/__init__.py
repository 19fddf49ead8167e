"""tonio_loop: a drop-in replacement for asyncio's event loop, written in C over libev.

    import tonio_loop
    tonio_loop.run(main())

    asyncio.run(main(), loop_factory=tonio_loop.new_event_loop)   # 3.12+
"""

import asyncio as _asyncio
import os as _os
import sys as _sys
import warnings as _warnings

from . import _core
from ._core import Future, Handle, Task, TimerHandle
from ._loop import Loop, new_event_loop

__version__ = "0.1.0"

if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_core._after_fork_child)

__all__ = (
    "Loop",
    "Future",
    "Task",
    "Handle",
    "TimerHandle",
    "new_event_loop",
    "run",
    "EventLoopPolicy",
    "install",
)

# asyncio deprecates its policy system in 3.14; ours follows it.
_POLICIES_DEPRECATED = _sys.version_info >= (3, 14)
_BasePolicy = getattr(
    _asyncio.events, "_BaseDefaultEventLoopPolicy", None
) or _asyncio.events.BaseDefaultEventLoopPolicy


def _warn_policy(what, stacklevel):
    _warnings.warn(
        f"{what} is deprecated and slated for removal in Python 3.16",
        DeprecationWarning,
        stacklevel=stacklevel + 1,
    )


class EventLoopPolicy(_BasePolicy):
    """An asyncio event loop policy whose loops are tonio_loop loops.

        asyncio.set_event_loop_policy(tonio_loop.EventLoopPolicy())

    Deprecated with asyncio's policy system from Python 3.14: pass
    ``loop_factory=tonio_loop.new_event_loop`` to ``asyncio.run()`` or
    ``asyncio.Runner`` instead.
    """

    def __init__(self):
        if _POLICIES_DEPRECATED:
            _warn_policy("tonio_loop.EventLoopPolicy", 2)
        super().__init__()

    def _loop_factory(self):
        return new_event_loop()

    def __repr__(self):
        return f"<{type(self).__module__}.{type(self).__qualname__}>"


def install():
    """Make tonio_loop the loop of asyncio's policy (the classic way).

    Deprecated with asyncio's policy system from Python 3.14: use
    ``asyncio.run(main(), loop_factory=tonio_loop.new_event_loop)``,
    ``asyncio.Runner(loop_factory=tonio_loop.new_event_loop)`` or
    ``tonio_loop.run(main())`` instead."""
    if _POLICIES_DEPRECATED:
        _warn_policy("tonio_loop.install()", 2)
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore", DeprecationWarning)
            _asyncio.set_event_loop_policy(EventLoopPolicy())
    else:
        _asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main, *, debug=None, loop_factory=new_event_loop, **kwargs):
    """Run a coroutine on a new tonio_loop loop, like asyncio.run().

    Keyword arguments other than debug and loop_factory go to the loop
    factory (for example ``threads=4``). The factory must make tonio_loop
    loops: anything else is a TypeError.
    """

    def factory():
        loop = loop_factory(**kwargs)
        if not isinstance(loop, Loop):
            loop.close()
            raise TypeError(
                f"tonio_loop.run() uses a non-tonio_loop event loop: {loop!r}"
            )
        return loop

    if _sys.version_info >= (3, 12):
        return _asyncio.run(main, debug=debug, loop_factory=factory)
    if _asyncio.events._get_running_loop() is not None:
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    with _asyncio.Runner(debug=debug, loop_factory=factory) as runner:
        return runner.run(main)
