"""PNG charts of a benchmark report (matplotlib, no display needed).

- summary.png: tonio_loop's speed relative to each other loop, per workload
  (median of the per-run ratios, min-max as error bars; 1x is parity);
- <group>.png: every loop's speed per workload relative to asyncio's median,
  so that workloads of different units share one axis.
"""

import os
import re

COLORS = {"asyncio": "#8c8c8c", "uvloop": "#4c72b0", "tonio_loop": "#dd8452",
          "rloop": "#55a868", "c-floor": "#222222"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _subtitle(report):
    m = report["machine"]
    return (f"{m['cpu']}, {m['cpus']} CPUs; {m['python']}; {report['mode']} run, "
            f"median of {report['repeats']}; {report['started']}")


def _slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "group"


def _bars(ax, ys, xs, lo, hi, height, color, label, fmt):
    """Horizontal bars with min-max error bars, each labelled past its bar."""
    ax.barh(ys, xs, height=height * 0.9, xerr=[lo, hi], capsize=2, color=color,
            label=label, error_kw={"linewidth": 0.8})
    for y, x, h in zip(ys, xs, hi):
        ax.text(x + h, y, " " + fmt.format(x), va="center", fontsize=7)


def _legend(ax):
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)


def draw(report, out_dir):
    """Write the charts; returns their paths."""
    plt = _plt()
    files = []
    path = _summary(plt, report, out_dir)
    if path:
        files.append(path)
    groups = []
    for e in report["workloads"]:
        if e["group"] not in groups:
            groups.append(e["group"])
    for group in groups:
        path = _group(plt, report, group, out_dir)
        if path:
            files.append(path)
    return files


def _summary(plt, report, out_dir):
    subject = report["subject"]
    others = [i for i in report["implementations"] if i != subject]
    entries = [e for e in report["workloads"] if e["ratios"]]
    if not entries or not others:
        return None
    height = 0.8 / len(others)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.45 * len(entries) * len(others)))
    for k, other in enumerate(others):
        ys, xs, lo, hi = [], [], [], []
        for j, e in enumerate(entries):
            r = e["ratios"].get(other)
            if not r:
                continue
            s = r["rate"]
            ys.append(j + (k - (len(others) - 1) / 2) * height)
            xs.append(s["median"])
            lo.append(s["median"] - s["min"])
            hi.append(s["max"] - s["median"])
        _bars(ax, ys, xs, lo, hi, height, COLORS.get(other), f"vs {other}", "{:.2f}x")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(entries)), [e["name"] for e in entries])
    ax.invert_yaxis()
    ax.set_xlabel(f"{subject} speed relative to the other loop (higher is better; 1x = same)")
    ax.set_title(f"{subject} against the others\n{_subtitle(report)}", fontsize=9)
    missing = [e["name"] for e in report["workloads"] if not e["ratios"]]
    if missing:
        fig.text(0.01, 0.01, f"not measured on {subject} yet: " + ", ".join(missing),
                 fontsize=7)
    _legend(ax)
    fig.tight_layout(rect=(0, 0.03 if missing else 0, 1, 1))
    path = os.path.join(out_dir, "summary.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _group(plt, report, group, out_dir):
    entries = [e for e in report["workloads"] if e["group"] == group and e["summary"]]
    if not entries:
        return None
    impls = [i for i in report["implementations"] + ["c-floor"]
             if any(i in e["summary"] or i in e["status"] for e in entries)]
    base = "asyncio"
    height = 0.8 / len(impls)
    fig, ax = plt.subplots(figsize=(9, 1.4 + 0.3 * len(entries) * len(impls)))
    for k, impl in enumerate(impls):
        ys, xs, lo, hi = [], [], [], []
        for j, e in enumerate(entries):
            s = e["summary"].get(impl)
            ref = e["summary"].get(base)
            if not s or not ref:
                continue
            norm = ref["rate"]["median"]
            r = s["rate"]
            ys.append(j + (k - (len(impls) - 1) / 2) * height)
            xs.append(r["median"] / norm)
            lo.append((r["median"] - r["min"]) / norm)
            hi.append((r["max"] - r["median"]) / norm)
        _bars(ax, ys, xs, lo, hi, height, COLORS.get(impl), impl, "{:.2f}")
        for j, e in enumerate(entries):
            if impl not in e["summary"] and impl in e["status"]:
                y = j + (k - (len(impls) - 1) / 2) * height
                ax.text(0.01, y, f"{impl}: {e['status'][impl]}", va="center", fontsize=7,
                        transform=ax.get_yaxis_transform())
    ax.set_yticks(range(len(entries)), [f"{e['name']}\n({e['unit']})" for e in entries],
                  fontsize=8)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel(f"speed relative to {base} (higher is better)")
    ax.set_title(f"{group}\n{_subtitle(report)}", fontsize=9)
    _legend(ax)
    fig.tight_layout()
    path = os.path.join(out_dir, f"{_slug(group)}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
