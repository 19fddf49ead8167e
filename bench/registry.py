"""How benchmark workloads declare themselves.

Each module under bench/workloads/ registers functions with @workload:

    from bench.registry import workload

    @workload("call_soon", group="loop core", unit="callbacks/s", quick=True)
    def call_soon(new_loop, quick):
        loop = new_loop()
        ...                      # set up outside the timed part
        t0 = time.perf_counter()
        ...                      # the measured work: `ops` operations
        elapsed = time.perf_counter() - t0
        loop.close()
        return {"ops": ops, "seconds": elapsed}

`new_loop` makes a loop of the implementation under test (asyncio, uvloop,
tonio_loop, ...); `quick` asks for a short run (the whole quick suite must
stay within about three minutes). The function returns at least "ops" and
"seconds" (the rate is ops/seconds); it may add "cpu_seconds" (server CPU
time spent) and anything else worth printing. The runner repeats each
workload, takes medians and computes the ratios between loops.
"""

from dataclasses import dataclass, field
from typing import Callable, Dict


@dataclass
class Workload:
    name: str
    group: str
    unit: str
    quick: bool
    fn: Callable
    options: Dict = field(default_factory=dict)


WORKLOADS: Dict[str, Workload] = {}


def workload(name, *, group, unit, quick=False, **options):
    """Register a benchmark workload (see the module docstring)."""

    def register(fn):
        if name in WORKLOADS:
            raise ValueError(f"workload {name!r} registered twice")
        WORKLOADS[name] = Workload(name, group, unit, quick, fn, options)
        return fn

    return register
