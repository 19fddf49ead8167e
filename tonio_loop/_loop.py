"""tonio_loop.Loop: the C core plus the cold parts asyncio itself writes in Python.

The hot paths (scheduling, timers, the run loop, I/O) live in ``_core.Loop``.
What asyncio implements in Python and runs rarely - executors, async generator
shutdown, exception handler plumbing - is taken from the running Python's own
``asyncio.BaseEventLoop``, so its semantics match that version exactly.
"""

import asyncio
import time
import weakref
from asyncio import base_events

from . import _core

_Base = base_events.BaseEventLoop


class Loop(_core.Loop, asyncio.AbstractEventLoop):
    """An asyncio event loop running on libev."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._default_executor = None
        self._executor_shutdown_called = False
        self._asyncgens = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._coroutine_origin_tracking_enabled = False
        self._coroutine_origin_tracking_saved_depth = None
        self._clock_resolution = time.get_clock_info('monotonic').resolution

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


def new_event_loop(**kwargs):
    """Return a new tonio_loop event loop."""
    return Loop(**kwargs)
