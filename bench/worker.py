"""One measurement in a fresh interpreter, started by the runner:

    python -m bench.worker MODULE WORKLOAD IMPLEMENTATION RESULT_FILE [--quick]

It imports only the workload's own module, runs the workload once on a loop
of the implementation and writes a JSON object to RESULT_FILE: the
workload's figures with "status": "ok", or "status": "unavailable" / "error"
with a one-line "reason" (and the traceback for errors). A fresh process per
measurement keeps one loop's allocations, GC state and threads away from the
next one's.
"""

import gc
import importlib
import json
import sys
import traceback

from bench.registry import WORKLOADS, Unavailable

# the pseudo-implementation that measures bench.net's C server instead of a loop
FLOOR = "c-floor"


def loop_factory(impl):
    """The new_loop callable of an implementation; None for the C floor."""
    if impl == FLOOR:
        return None
    if impl == "asyncio":
        import asyncio

        return asyncio.new_event_loop
    return importlib.import_module(impl).new_event_loop


def _last_line(exc):
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def measure(module, name, impl, quick):
    """Run one workload once; returns the result object (never raises)."""
    try:
        importlib.import_module(module)
        wl = WORKLOADS[name]
        new_loop = loop_factory(impl)
        gc.collect()
        result = wl.fn(new_loop, quick)
        ops, seconds = result["ops"], result["seconds"]
        if not (ops > 0 and seconds > 0):
            raise ValueError(f"workload returned ops={ops!r} seconds={seconds!r}")
        return {"status": "ok", **result}
    except Unavailable as exc:
        return {"status": "unavailable", "reason": str(exc) or "not available"}
    except NotImplementedError as exc:
        # where the failure came from says what is missing (e.g. create_server)
        tb = traceback.extract_tb(exc.__traceback__)
        where = tb[-1].name if tb else ""
        reason = str(exc) or (f"{where}() not implemented" if where else "not implemented")
        return {"status": "unavailable", "reason": reason}
    except BaseException as exc:  # a broken workload must not stop the run
        return {
            "status": "error",
            "reason": _last_line(exc),
            "traceback": traceback.format_exc(),
        }


def main(argv):
    quick = "--quick" in argv
    args = [a for a in argv if not a.startswith("--")]
    if len(args) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    module, name, impl, out = args
    result = measure(module, name, impl, quick)
    with open(out, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
