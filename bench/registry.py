"""How benchmark workloads declare themselves.

Each module under bench/workloads/ registers functions with @workload:

    from bench.registry import workload, scale

    @workload("call_soon", group="loop core", unit="callbacks/s", quick=True)
    def call_soon(new_loop, quick):
        loop = new_loop()
        n = scale(100_000 if quick else 1_000_000)
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

Each (workload, loop) measurement runs in a fresh interpreter, so a workload
may change process-wide state (CPU affinity, signal handlers) freely.

More, all optional:
- The first line of the function's docstring is the workload's description
  in the report.
- `scale(n)` and `duration(seconds)` size a run: they return their argument,
  except in the test suite's smoke run (`python -m bench --tiny`), where they
  shrink it so that every workload finishes in a moment. Use them for every
  count and time a workload spends.
- Raise `Unavailable("why")` when the implementation under test lacks what
  the workload needs (an API not written yet, a tool not installed): the
  table shows "n/a" with the reason instead of a number. NotImplementedError
  is read the same way; any other exception shows as an error. Neither stops
  the run.
- Options of @workload that the runner reads:
    floor=True        also measure the workload with new_loop=None: the
                      function then measures the physical floor instead
                      (bench.net's plain C epoll server), shown in the
                      table's "C floor" column;
    timeout=SECONDS   limit of one measurement (default 120 s quick, 300 s
                      full);
    figures={"key": "unit"}  more figures the function returns, each shown
                      on a row of its own under the rate (median; lower
                      is better, so 'vs X' is X's figure / tonio_loop's);
    callgrind=True    a CPU-bound workload whose instruction count per
                      operation `python -m bench --callgrind` can compare
                      (it runs it at two scale() factors under valgrind and
                      takes the difference; return "total_ops" as well when
                      a warm-up runs operations that "ops" leaves out).
"""

import os
from dataclasses import dataclass, field
from typing import Callable, Dict

TINY_ENV = "TONIO_BENCH_TINY"
SCALE_ENV = "TONIO_BENCH_SCALE"  # a factor on every scale() count (--callgrind)


@dataclass
class Workload:
    name: str
    group: str
    unit: str
    quick: bool
    fn: Callable
    options: Dict = field(default_factory=dict)
    module: str = ""

    @property
    def description(self):
        doc = (self.fn.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


WORKLOADS: Dict[str, Workload] = {}


class Unavailable(Exception):
    """The implementation under test cannot run this workload (yet)."""


def workload(name, *, group, unit, quick=False, **options):
    """Register a benchmark workload (see the module docstring)."""

    def register(fn):
        if name in WORKLOADS:
            raise ValueError(f"workload {name!r} registered twice")
        WORKLOADS[name] = Workload(name, group, unit, quick, fn, options,
                                   module=fn.__module__)
        return fn

    return register


def tiny():
    """True in the smoke run, where every workload only checks that it works."""
    return os.environ.get(TINY_ENV) == "1"


def scale(n):
    """An operation count for this run: n, or a small fraction of it when tiny."""
    if tiny():
        return max(1, n // 500)
    factor = float(os.environ.get(SCALE_ENV, "1"))
    return max(1, round(n * factor))


def duration(seconds):
    """A time span for this run: seconds, or a fraction of one when tiny."""
    return min(seconds, 0.2) if tiny() else seconds
