"""The benchmark runner: `python -m bench [--quick | --full] [options]`.

It finds the workloads registered under bench/workloads/ (bench.registry),
and measures each one on every implementation (asyncio, uvloop, tonio_loop,
rloop when installed) several times, each measurement in a fresh
interpreter (bench.worker). The order of the implementations rotates from
one repetition to the next, so that slow drift of the machine (other
processes, thermal state) hits every implementation alike. Ratios are
computed per repetition, between measurements taken side by side, and then
summarised by their median.

It prints progress while it runs, then a table, and writes JSON, the table
and PNG charts under bench/results/<date>-<mode>/ (bench/results/latest
points at the newest).
"""

import argparse
import fnmatch
import importlib
import importlib.metadata
import importlib.util
import json
import os
import pkgutil
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from bench import registry
from bench.worker import FLOOR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
SUBJECT = "tonio_loop"
IMPLEMENTATIONS = ("asyncio", "uvloop", SUBJECT, "rloop")
REPEATS = {"quick": 3, "full": 5, "tiny": 1}


# ---- what runs --------------------------------------------------------------

def available_implementations():
    return [impl for impl in IMPLEMENTATIONS
            if impl == "asyncio" or importlib.util.find_spec(impl) is not None]


def discover():
    """Import every workload module; returns (workloads, import errors)."""
    import bench.workloads

    errors = {}
    for info in sorted(pkgutil.iter_modules(bench.workloads.__path__), key=lambda m: m.name):
        module = f"bench.workloads.{info.name}"
        try:
            importlib.import_module(module)
        except Exception as exc:  # one broken module must not stop the others
            errors[module] = f"{type(exc).__name__}: {exc}"
    return list(registry.WORKLOADS.values()), errors


def select(workloads, mode, only):
    if only:
        patterns = [p.strip() for p in only.split(",") if p.strip()]

        def wanted(wl):
            keys = (wl.name, wl.group, wl.module.rsplit(".", 1)[-1])
            return any(fnmatch.fnmatch(k, p) for k in keys for p in patterns)

        return [wl for wl in workloads if wanted(wl)]
    if mode == "full":
        return list(workloads)
    return [wl for wl in workloads if wl.quick]


def plan(workloads, impls, repeats):
    """(workload, repetition, implementation) in the order they run."""
    steps = []
    for wl in workloads:
        these = list(impls) + ([FLOOR] if wl.options.get("floor") else [])
        for rep in range(repeats):
            k = rep % len(these)
            for impl in these[k:] + these[:k]:
                steps.append((wl, rep, impl))
    return steps


# ---- the machine ------------------------------------------------------------

def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(impl):
    if impl == "asyncio":
        return platform.python_version()
    try:
        return importlib.metadata.version(impl)
    except importlib.metadata.PackageNotFoundError:
        return getattr(importlib.import_module(impl), "__version__", "?")


def _git_revision():
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return rev + ("+changes" if rev and dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info(impls):
    return {
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "versions": {impl: _version(impl) for impl in impls},
        "git": _git_revision(),
        "loadavg_start": list(os.getloadavg()),
    }


# ---- one measurement --------------------------------------------------------

def measure(wl, impl, *, quick, tiny, timeout, prefix=(), env_extra=None,
            keep_output=False):
    """Run one measurement in a fresh interpreter; returns its result.

    prefix goes before the interpreter (valgrind), env_extra into its
    environment; keep_output keeps what it printed in result["output"]."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    for name in (registry.TINY_ENV, registry.SCALE_ENV):
        env.pop(name, None)
    if tiny:
        env[registry.TINY_ENV] = "1"
    env.update(env_extra or {})
    with tempfile.TemporaryDirectory(prefix="tonio-bench-") as tmp:
        out = os.path.join(tmp, "result.json")
        log_path = os.path.join(tmp, "log")
        cmd = [*prefix, sys.executable, "-m", "bench.worker", wl.module, wl.name, impl, out]
        if quick:
            cmd.append("--quick")
        t0 = time.monotonic()
        with open(log_path, "w+") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = None
            finally:
                _kill_leftovers(proc.pid)
            log.seek(0)
            output = log.read()
        wall = time.monotonic() - t0
        if rc is None:
            result = {"status": "error", "reason": f"timed out after {timeout:.0f} s"}
        elif os.path.exists(out):
            with open(out) as f:
                result = json.load(f)
        elif rc < 0:
            result = {"status": "error",
                      "reason": f"worker killed by {signal.Signals(-rc).name}"}
        else:
            result = {"status": "error", "reason": f"worker exited with status {rc}"}
    if keep_output:
        result["output"] = output
    elif result["status"] == "error" and output.strip():
        result["output"] = output[-4000:]
    result["wall_seconds"] = round(wall, 3)
    return result


def _kill_leftovers(pgid):
    """A measurement's helper processes (servers, load) end with it."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ---- instruction counts -----------------------------------------------------

CALLGRIND_SCALES = (0.05, 0.15)


def callgrind(wl, impl, *, timeout):
    """Instructions per operation under valgrind's callgrind: two runs at two
    sizes, whose difference cancels start-up, imports and loop creation. It
    counts user-space instructions only (a system call costs one), so it
    complements the wall-clock figures; it does not replace them."""
    points = []
    for factor in CALLGRIND_SCALES:
        r = measure(wl, impl, quick=True, tiny=False, timeout=timeout,
                    prefix=["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"],
                    env_extra={registry.SCALE_ENV: str(factor)}, keep_output=True)
        output = r.pop("output", "")
        if r["status"] != "ok":
            if r["status"] == "error":
                r["output"] = output[-4000:]
            return r
        m = re.search(r"Collected\s*:\s*(\d+)", output)
        if m is None:
            return {"status": "error", "reason": "no instruction count from valgrind",
                    "output": output[-4000:]}
        points.append((r.get("total_ops", r["ops"]), int(m.group(1))))
    (ops1, ir1), (ops2, ir2) = points
    if ops2 <= ops1:
        return {"status": "error", "reason": "the workload does not grow with scale()"}
    return {"status": "ok", "ir_per_op": (ir2 - ir1) / (ops2 - ops1)}


def render_callgrind_table(report):
    impls = report["implementations"]
    others = [i for i in impls if i != SUBJECT] if SUBJECT in impls else []
    head = ["workload"] + impls + [f"vs {o}" for o in others]
    rows, notes = [], []
    for e in report["workloads"]:
        res = e["callgrind"]
        row = [e["name"]]
        for impl in impls:
            r = res.get(impl, {})
            if r.get("status") == "ok":
                row.append(f"{r['ir_per_op']:.0f}")
            else:
                notes.append(f"{impl}, {e['name']}: {r.get('status')}: {r.get('reason')}")
                row.append(f"{'n/a' if r.get('status') == 'unavailable' else 'error'} "
                           f"[{len(notes)}]")
        mine = res.get(SUBJECT, {})
        for o in others:
            r = res.get(o, {})
            ok = mine.get("status") == "ok" and r.get("status") == "ok"
            row.append(f"{r['ir_per_op'] / mine['ir_per_op']:.2f}x" if ok else "-")
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    text = "\n".join(lines)
    if notes:
        text += "\n\n" + "\n".join(f"[{i + 1}] {n}" for i, n in enumerate(notes))
    return text


def run_callgrind(args, selected, impls, report):
    import shutil

    if shutil.which("valgrind") is None:
        print("--callgrind needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    selected = [wl for wl in selected if args.only or wl.options.get("callgrind")]
    if not selected:
        print("no workload selected", file=sys.stderr)
        return 2
    report["mode"] = "callgrind"
    print(f"instruction counts under callgrind: {len(selected)} workloads x "
          f"{len(impls)} loops, two sizes each (slow: valgrind runs ~50x slower)\n",
          flush=True)
    steps = [(wl, impl) for wl in selected for impl in impls]
    for i, (wl, impl) in enumerate(steps, 1):
        if i == 1 or steps[i - 2][0] is not wl:
            entry = {"name": wl.name, "group": wl.group, "module": wl.module,
                     "description": wl.description, "callgrind": {}}
            report["workloads"].append(entry)
        print(f"[{i}/{len(steps)}] {wl.name}  {impl:<10} ... ", end="", flush=True)
        r = callgrind(wl, impl, timeout=args.timeout or 900)
        entry["callgrind"][impl] = r
        print(f"{r['ir_per_op']:.0f} instructions/op" if r["status"] == "ok"
              else f"{r['status']}: {r['reason']}", flush=True)
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    table = render_callgrind_table(report)
    header = (f"tonio_loop instruction counts (callgrind), {report['started']}\n"
              f"python:  {report['machine']['python']}; "
              + ", ".join(f"{k} {v}" for k, v in report["machine"]["versions"].items()
                          if k != "asyncio")
              + "\nfigures: user-space instructions per operation (lower is better); "
              "'vs X' is X's count / tonio_loop's (higher is better for tonio_loop).")
    print("\n" + header + "\n\n" + table)
    out_dir = args.out or os.path.join(RESULTS, time.strftime("%Y%m%d-%H%M%S") + "-callgrind")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out_dir, "table.txt"), "w") as f:
        f.write(header + "\n\n" + table + "\n")
    print(f"\nresults: {out_dir}/results.json, table.txt")
    return 0


# ---- statistics -------------------------------------------------------------

def rate(run):
    return run["ops"] / run["seconds"]


def cpu_per_op(run):
    cpu = run.get("cpu_seconds")
    return cpu / run["ops"] if cpu is not None and run["ops"] else None


def spread(values):
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def summarize(entry, impls, subject=SUBJECT):
    """Medians per implementation and per-repetition ratios of the subject."""
    runs = entry["runs"]
    summary, status = {}, {}
    for impl, results in runs.items():
        ok = [r for r in results if r["status"] == "ok"]
        if ok:
            summary[impl] = {"rate": spread([rate(r) for r in ok])}
            cpus = [c for c in (cpu_per_op(r) for r in ok) if c is not None]
            if cpus:
                summary[impl]["cpu_per_op"] = spread(cpus)
            for key in entry.get("figures", {}):
                values = [r[key] for r in ok if r.get(key) is not None]
                if values:
                    summary[impl][key] = spread(values)
            failed = [r for r in results if r["status"] != "ok"]
            if failed:
                status[impl] = f"{len(failed)} of {len(results)} runs failed: {failed[0]['reason']}"
        elif results:
            first = next((r for r in results if r["status"] == "unavailable"), results[0])
            status[impl] = first["status"] + ": " + first["reason"]
    ratios = {}
    mine = runs.get(subject, [])
    for other in impls:
        if other == subject or other not in runs:
            continue
        per_rep, per_rep_cpu = [], []
        for a, b in zip(mine, runs[other]):
            if a["status"] == "ok" and b["status"] == "ok":
                per_rep.append(rate(a) / rate(b))
                ca, cb = cpu_per_op(a), cpu_per_op(b)
                if ca and cb:
                    per_rep_cpu.append(cb / ca)
        if per_rep:
            ratios[other] = {"rate": spread(per_rep)}
            if per_rep_cpu:
                ratios[other]["cpu_per_op"] = spread(per_rep_cpu)
            for key in entry.get("figures", {}):
                # lower is better: X's figure / tonio_loop's, like CPU time
                per_rep_fig = [b[key] / a[key] for a, b in zip(mine, runs[other])
                               if a["status"] == "ok" and b["status"] == "ok"
                               and a.get(key) and b.get(key) is not None]
                if per_rep_fig:
                    ratios[other][key] = spread(per_rep_fig)
    entry["summary"], entry["status"], entry["ratios"] = summary, status, ratios
    return entry


# ---- output -----------------------------------------------------------------

def si(value):
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}"


def fmt_rate(s):
    m = s["median"]
    pm = (s["max"] - s["min"]) / 2 / m * 100 if m and s["n"] > 1 else 0
    return f"{si(m)} ±{pm:.0f}%" if s["n"] > 1 else si(m)


def fmt_us(s):
    us = s["median"] * 1e6
    return f"{us:.3g} µs"


def fmt_ratio(s):
    if s["n"] > 1:
        return f"{s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f})"
    return f"{s['median']:.2f}x"


def _fig(value):
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _step_figure(wl, result):
    if result["status"] != "ok":
        return f"{result['status']}: {result['reason']}"
    text = f"{si(rate(result))} {wl.unit}"
    c = cpu_per_op(result)
    if c is not None:
        text += f", {c * 1e6:.3g} µs CPU/op"
    for key, unit in wl.options.get("figures", {}).items():
        if result.get(key) is not None:
            text += f", {_fig(result[key])} {unit}"
    return text


def render_table(report):
    impls = report["implementations"]
    has_floor = any(FLOOR in e["runs"] for e in report["workloads"])
    columns = impls + ([FLOOR] if has_floor else [])
    others = [i for i in impls if i != SUBJECT]
    subject_present = SUBJECT in impls
    head = ["workload", "unit"] + columns + (
        [f"vs {o}" for o in others] if subject_present else [])
    rows, notes = [], []

    def note(text):
        if text not in notes:
            notes.append(text)
        return f"[{notes.index(text) + 1}]"

    group = None
    for e in report["workloads"]:
        if e["group"] != group:
            group = e["group"]
            rows.append(("group", group))
        line = [e["name"], e["unit"]]
        cpu_line = ["", "µs CPU/op"]
        has_cpu = any("cpu_per_op" in s for s in e["summary"].values())
        for impl in columns:
            s = e["summary"].get(impl)
            if s:
                cell = fmt_rate(s["rate"])
                if impl in e["status"]:
                    cell += " " + note(f"{impl}, {e['name']}: {e['status'][impl]}")
                line.append(cell)
                cpu_line.append(fmt_us(s["cpu_per_op"]) if "cpu_per_op" in s else "")
            elif impl in e["status"]:
                kind = "n/a" if e["status"][impl].startswith("unavailable") else "error"
                line.append(f"{kind} " + note(f"{impl}, {e['name']}: {e['status'][impl]}"))
                cpu_line.append("")
            else:
                line.append("")
                cpu_line.append("")
        if subject_present:
            for o in others:
                r = e["ratios"].get(o)
                line.append(fmt_ratio(r["rate"]) if r else "-")
                cpu_line.append(fmt_ratio(r["cpu_per_op"]) if r and "cpu_per_op" in r else "")
        rows.append(("row", line))
        if has_cpu:
            rows.append(("row", cpu_line))
        for key, unit in e.get("figures", {}).items():
            fig_line = ["", unit]
            for impl in columns:
                s = e["summary"].get(impl, {}).get(key)
                fig_line.append(_fig(s["median"]) if s else "")
            if subject_present:
                for o in others:
                    r = e["ratios"].get(o, {}).get(key)
                    fig_line.append(fmt_ratio(r) if r else "")
            rows.append(("row", fig_line))

    widths = [len(h) for h in head]
    for kind, row in rows:
        if kind == "row":
            widths = [max(w, len(c)) for w, c in zip(widths, row)]
    sep = "  "
    out = [sep.join(h.ljust(w) for h, w in zip(head, widths)).rstrip(),
           sep.join("-" * w for w in widths)]
    for kind, row in rows:
        if kind == "group":
            out.append(f"{row}:")
        else:
            out.append(sep.join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    text = "\n".join(out)
    if notes:
        text += "\n\n" + "\n".join(f"[{i + 1}] {n}" for i, n in enumerate(notes))
    for module, err in report.get("import_errors", {}).items():
        text += f"\n(!) {module} could not be imported, its workloads did not run: {err}"
    return text


def render_header(report):
    m = report["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if k != "asyncio")
    load = ""
    if "loadavg_end" in m:
        load = (f"load average {m['loadavg_start'][0]:.1f} at the start, "
                f"{m['loadavg_end'][0]:.1f} at the end, on {m['cpus']} CPUs")
    lines = [
        f"tonio_loop benchmark ({report['mode']}), {report['started']}",
        f"machine: {m['cpu']}, {m['cpus']} CPUs, {m['kernel']}",
        f"python:  {m['python']}; {versions}" + (f"; tree {m['git']}" if m["git"] else ""),
    ]
    if load:
        lines.append(f"noise:   {load} (other processes share the machine)")
    lines.append(
        f"figures: median of {report['repeats']} runs, each in a fresh process; ± is half "
        "the min-max spread.")
    lines.append(
        f"ratios:  'vs X' is {SUBJECT}'s figure / X's, computed within each run, then the "
        "median (min-max); higher is better for tonio_loop, also on the CPU rows (X's CPU "
        "time per operation / tonio_loop's) and the other rows under a rate (X's figure / "
        "tonio_loop's: ms late, MB).")
    return "\n".join(lines)


def write_results(report, out_dir, charts):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out_dir, "table.txt"), "w") as f:
        f.write(render_header(report) + "\n\n" + render_table(report) + "\n")
    files = []
    if charts:
        from bench import charts as charting

        files = charting.draw(report, out_dir)
    return files


def _link_latest(out_dir):
    if os.path.dirname(os.path.abspath(out_dir)) != RESULTS:
        return
    link = os.path.join(RESULTS, "latest")
    tmp = link + ".tmp"
    try:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(os.path.basename(out_dir), tmp)
        os.replace(tmp, link)
    except OSError:
        pass


# ---- main -------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", const="quick", dest="mode",
                      help="the representative workloads, about three minutes (default)")
    mode.add_argument("--full", action="store_const", const="full", dest="mode",
                      help="every workload, more repetitions")
    mode.add_argument("--tiny", action="store_const", const="tiny", dest="mode",
                      help="smoke run: every selected workload at a tiny size, once")
    p.add_argument("--only", metavar="PATTERNS",
                   help="comma-separated glob patterns of workload names, groups or "
                        "modules (e.g. 'core,echo_*'); overrides the mode's selection")
    p.add_argument("--loops", metavar="LIST",
                   help=f"implementations to compare (default: all installed of "
                        f"{', '.join(IMPLEMENTATIONS)})")
    p.add_argument("--repeat", type=int, metavar="N", help="repetitions per measurement")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="limit of one measurement (default: the workload's, or 120/300 s)")
    p.add_argument("--out", metavar="DIR", help="where results go (default: bench/results/<date>-<mode>)")
    p.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    p.add_argument("--callgrind", action="store_true",
                   help="instead of timing, count instructions per operation under valgrind "
                        "(the loop-core workloads; noise-free, slow)")
    p.add_argument("--list", action="store_true", help="list the workloads and exit")
    args = p.parse_args(argv)
    args.mode = args.mode or "quick"
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    workloads, import_errors = discover()
    for module, err in import_errors.items():
        print(f"warning: {module} could not be imported: {err}", file=sys.stderr)
    if args.list:
        for wl in workloads:
            print(f"{wl.name:28} {wl.group:12} {'quick' if wl.quick else 'full ':6} "
                  f"{wl.description}")
        return 0

    impls = available_implementations()
    if args.loops:
        wanted = [i.strip() for i in args.loops.split(",") if i.strip()]
        unknown = [i for i in wanted if i not in impls]
        if unknown:
            print(f"not installed or unknown: {', '.join(unknown)} "
                  f"(available: {', '.join(impls)})", file=sys.stderr)
            return 2
        impls = wanted
    selected = select(workloads, "full" if args.mode == "full" else "quick", args.only)
    if not selected:
        print("no workload selected", file=sys.stderr)
        return 2
    repeats = args.repeat or REPEATS[args.mode]
    quick = args.mode != "full"
    tiny = args.mode == "tiny"

    if not args.callgrind and any(wl.options.get("floor") or wl.group in ("echo", "http")
                                  for wl in selected):
        from bench import net

        try:
            net.build_tools()
        except Exception as exc:  # the workloads report it per measurement
            print(f"warning: building the C load generator failed: {exc}", file=sys.stderr)

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    report = {
        "mode": args.mode, "started": started, "repeats": repeats,
        "implementations": impls, "subject": SUBJECT,
        "machine": machine_info(impls), "import_errors": import_errors,
        "workloads": [],
    }
    if args.callgrind:
        return run_callgrind(args, workloads if not args.only else selected, impls, report)
    steps = plan(selected, impls, repeats)
    print(render_header(report))
    print(f"\n{len(selected)} workloads x {len(impls)} loops x {repeats} runs: "
          f"{len(steps)} measurements\n", flush=True)

    entries = {}
    width = len(str(len(steps)))
    t_start = time.monotonic()
    for i, (wl, rep, impl) in enumerate(steps, 1):
        entry = entries.get(wl.name)
        if entry is None:
            entry = entries[wl.name] = {
                "name": wl.name, "group": wl.group, "unit": wl.unit,
                "module": wl.module, "description": wl.description,
                "figures": dict(wl.options.get("figures", {})), "runs": {}}
            report["workloads"].append(entry)
        timeout = args.timeout or wl.options.get("timeout") or (120 if quick else 300)
        elapsed = time.monotonic() - t_start
        eta = f"  eta {_duration(elapsed / (i - 1) * (len(steps) - i + 1))}" if i > 1 else ""
        print(f"[{i:>{width}}/{len(steps)}] {wl.group} / {wl.name}  run {rep + 1}/{repeats}  "
              f"{impl:<10}{eta} ... ", end="", flush=True)
        result = measure(wl, impl, quick=quick, tiny=tiny, timeout=timeout)
        result["repetition"] = rep
        entry["runs"].setdefault(impl, []).append(result)
        print(_step_figure(wl, result), flush=True)
        last_of_workload = i == len(steps) or steps[i][0] is not wl
        if last_of_workload:
            summarize(entry, impls)
            print(_workload_line(entry), flush=True)

    report["machine"]["loadavg_end"] = list(os.getloadavg())
    report["seconds"] = round(time.monotonic() - t_start, 1)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = args.out or os.path.join(RESULTS, f"{stamp}-{args.mode}")
    print("\n" + render_header(report) + "\n")
    print(render_table(report))
    try:
        files = write_results(report, out_dir, charts=not args.no_charts)
    except Exception as exc:
        print(f"\nwriting the charts failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        files = []
    _link_latest(out_dir)
    shown = os.path.relpath(out_dir)
    shown = out_dir if shown.startswith("..") else shown
    print(f"\nresults: {shown}/results.json, table.txt"
          + "".join(f", {os.path.basename(f)}" for f in files)
          + f"  ({_duration(report['seconds'])})")
    return 0


def _workload_line(entry):
    s = entry["summary"].get(SUBJECT)
    if not s:
        why = entry["status"].get(SUBJECT, "not measured")
        return f"    -> {entry['name']}: {SUBJECT} {why}"
    parts = [f"{o} {fmt_ratio(r['rate'])}" for o, r in entry["ratios"].items()]
    return (f"    -> {entry['name']}: {SUBJECT} {si(s['rate']['median'])} {entry['unit']}"
            + (f"; vs {', '.join(parts)}" if parts else ""))


def _duration(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
