import asyncio
import contextvars
import sys
from collections.abc import Awaitable, Callable, Coroutine, Generator
from types import FrameType, GenericAlias
from typing import Any, TypeVar

from typing_extensions import disjoint_base

_T = TypeVar("_T")
_T_co = TypeVar("_T_co", covariant=True)

__version__: str
__all__ = ("Loop", "Future", "Task", "Handle", "TimerHandle", "new_event_loop", "run",
           "EventLoopPolicy", "install")

@disjoint_base
class Handle:
    def __class_getitem__(cls, item: Any, /) -> GenericAlias: ...
    def cancel(self) -> None: ...
    def cancelled(self) -> bool: ...
    def get_context(self) -> contextvars.Context: ...
    def _run(self) -> None: ...

@disjoint_base
class TimerHandle(Handle):
    def when(self) -> float: ...
    def __lt__(self, value: TimerHandle, /) -> bool: ...
    def __le__(self, value: TimerHandle, /) -> bool: ...
    def __gt__(self, value: TimerHandle, /) -> bool: ...
    def __ge__(self, value: TimerHandle, /) -> bool: ...

@disjoint_base
class Future(asyncio.Future[_T]):
    """asyncio.Future in C, on tonio_loop's Event/Waiter core: a subclass of
    asyncio's, with every method and attribute its own."""

@disjoint_base
class Task(asyncio.Task[_T_co]):
    """asyncio.Task in C, on tonio_loop's Event/Waiter core; runs on any loop."""

    def __init__(
        self,
        coro: Generator[Any, None, _T_co] | Coroutine[Any, Any, _T_co],
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        name: str | None = None,
        context: contextvars.Context | None = None,
        eager_start: bool = False,
    ) -> None: ...

class Loop(asyncio.BaseEventLoop):
    """asyncio's loop in C; threads=N runs callbacks and task steps on N
    worker threads (the loop's own thread keeps the I/O)."""

    slow_callback_duration: float
    def __init__(self, *, threads: int | None = None) -> None: ...
    @property
    def threads(self) -> int: ...

def new_event_loop(*, threads: int | None = None) -> Loop: ...

if sys.version_info >= (3, 14):
    from asyncio.events import _BaseDefaultEventLoopPolicy as _BasePolicy
else:
    from asyncio.events import BaseDefaultEventLoopPolicy as _BasePolicy

class EventLoopPolicy(_BasePolicy):
    def __init__(self) -> None: ...
    if sys.version_info < (3, 14):
        def get_child_watcher(self) -> asyncio.AbstractChildWatcher: ...
        def set_child_watcher(self, watcher: asyncio.AbstractChildWatcher | None) -> None: ...

def install() -> None: ...
def run(
    main: Coroutine[Any, Any, _T],
    *,
    debug: bool | None = None,
    loop_factory: Callable[..., Loop] = ...,
    threads: int | None = ...,
) -> _T: ...
