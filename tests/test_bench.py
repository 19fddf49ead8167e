"""The benchmark suite runs end to end (tiny sizes, no timing assertions).

Timings belong to bench/, never to tests: these only check that every
workload module imports, that `python -m bench` measures every workload on
asyncio and tonio_loop, and that it writes its table, JSON and charts.
"""

import json
import os
import subprocess
import sys

import pytest

from bench import registry, runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_workload_module_imports_and_registers():
    workloads, errors = runner.discover()
    assert errors == {}
    assert len({wl.name for wl in workloads}) == len(workloads)
    core = {wl.name for wl in workloads if wl.module == "bench.workloads.core"}
    assert {"call_soon", "call_soon_chain", "timers", "timer_cancel",
            "call_soon_threadsafe"} <= core
    for wl in workloads:
        assert wl.group and wl.unit and wl.description, wl.name


def test_ratios_are_taken_within_each_run():
    def run(rate):
        return {"status": "ok", "ops": rate, "seconds": 1.0}

    entry = {"runs": {
        "uvloop": [run(100), run(200), run(50)],
        "tonio_loop": [run(200), run(300), run(150)],
        "asyncio": [run(10), {"status": "unavailable", "reason": "x"}, run(10)],
    }}
    runner.summarize(entry, ["asyncio", "uvloop", "tonio_loop"])
    # per run: 2.0, 1.5, 3.0 (not the ratio of the medians, 250/100)
    assert entry["ratios"]["uvloop"]["rate"] == {"median": 2.0, "min": 1.5, "max": 3.0, "n": 3}
    # runs where one side failed are left out of the ratio
    assert entry["ratios"]["asyncio"]["rate"]["n"] == 2
    assert entry["summary"]["tonio_loop"]["rate"]["median"] == 200
    assert entry["status"]["asyncio"].startswith("1 of 3 runs failed")


def test_plan_rotates_the_loops_between_repetitions():
    wl = registry.Workload("w", "g", "ops/s", True, lambda new_loop, quick: None)
    order = [impl for _, _, impl in runner.plan([wl], ["a", "b", "c"], 3)]
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]


@pytest.mark.timeout(600)
def test_bench_runs_end_to_end(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--only", "*",
         "--loops", "asyncio,tonio_loop", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=590,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # progress, then the table
    assert "run 1/1  asyncio" in proc.stdout
    assert "vs asyncio" in proc.stdout

    report = json.loads((out / "results.json").read_text())
    assert report["implementations"] == ["asyncio", "tonio_loop"]
    assert report["machine"]["cpu"] and report["machine"]["python"]
    workloads, _ = runner.discover()
    measured = {e["name"]: e for e in report["workloads"]}
    assert set(measured) == {wl.name for wl in workloads}
    for name, entry in measured.items():
        for impl in ("asyncio", "tonio_loop"):
            [result] = entry["runs"][impl]
            # asyncio runs everything; tonio_loop may lack an API still
            allowed = ("ok",) if impl == "asyncio" else ("ok", "unavailable")
            assert result["status"] in allowed, (name, impl, result)
            if result["status"] == "ok":
                assert result["ops"] > 0 and result["seconds"] > 0
    for name in ("call_soon", "timers", "timer_cancel"):
        assert measured[name]["ratios"]["asyncio"]["rate"]["n"] == 1
    assert (out / "table.txt").read_text().startswith("tonio_loop benchmark (tiny)")
    assert (out / "summary.png").stat().st_size > 0
    assert (out / "loop-core.png").stat().st_size > 0


@pytest.mark.timeout(300)
def test_threads_bench_runs(tmp_path):
    """bench.threads (Loop(threads=N)): every workload at two thread counts."""
    out = tmp_path / "threads.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.threads", "--threads", "0,2", "--duration", "0.3",
         "--repeat", "1", "--coroutines", "20000", "--conns", "4", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=290,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.startswith("Python ")
    report = json.loads(out.read_text())
    got = {(r["threads"], r["workload"]) for r in report["results"]}
    assert got == {(t, w) for t in (0, 2) for w in ("echo", "http", "api", "coros")}
    for r in report["results"]:
        assert (r["coroutines_per_s"] if r["workload"] == "coros" else r["rps"]) > 0
