"""A benchmark result as its outputs: markdown tables per metric and problem, the metric-vs-NFE plot, the JSON file."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ..checkpoint import atomic_write_bytes, atomic_write_json
from ..plots import figure, save_figure
from .harness import Benchmark

TITLES = {"error": "endpoint error (mean L2 to the exact PF-ODE endpoint)", "sw2": "sliced W2 to data samples",
          "mmd": "MMD to the data distribution"}
# What a perfect sampler scores (a problem-information field and how the table heading states it).
FLOORS = {"sw2": ("sw2_floor", "SW2 floor {:.4f}"), "mmd": ("mmd_of_data_draw", "a fresh data draw scores MMD {:.2g}")}


def label(row: dict) -> str:
    """``sampler@schedule``: what identifies a run's line in tables and plots."""
    return f"{row['sampler']}@{row['schedule']}"


def fmt(v: float | None) -> str:
    """A table cell: 3 significant digits, n/a for a run that was not made."""
    return "n/a" if v is None else f"{v:.3g}"


def markdown(result: dict, bench: Benchmark, extra: Sequence[str] = ()) -> str:
    """Per metric, a table per problem (rows: sampler@schedule, columns: NFE; the NFE actually run in brackets where
    it differs), then the entry's ``extra`` lines (its target check)."""
    rows, nfes = result["results"], result["protocol"]["nfe"]
    lines = [f"# {bench.title}", "",
             f"Command: `{result['command']}`; commit {result['git_commit']}; {result['device']}; "
             f"torch {result['versions']['torch']}; {result['timestamp']}; {result['seconds']:.0f} s.", "",
             "Protocol (docs/benchmarks.md): " + "; ".join(f"{k}: {v}" for k, v in result["protocol"].items()) + ".",
             ""]
    for metric in bench.metrics:
        lines += [f"## {TITLES[metric]}", ""]
        for problem, info in result["problems"].items():
            floor = f", {FLOORS[metric][1].format(info[FLOORS[metric][0]])}" if metric in FLOORS else ""
            lines += [f"### {problem} (D = {info['dim']}, {info['n_components']} modes, n = {info['n']}{floor})", "",
                      "| sampler | " + " | ".join(f"NFE {k}" for k in nfes) + " |", "|---|" + "---|" * len(nfes)]
            runs = [r for r in rows if r["problem"] == problem and not (metric == "error" and r["stochastic"])]
            for key in dict.fromkeys(label(r) for r in runs):
                by_nfe = {r["nfe"]: r for r in runs if label(r) == key}
                cells = []
                for k in nfes:
                    r = by_nfe[k]
                    cells.append(fmt(r[metric]) if r["nfe_run"] in (None, k) else f"{fmt(r[metric])} ({r['nfe_run']})")
                lines.append(f"| {key} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join([*lines, *extra, ""])


def plot(result: dict, bench: Benchmark, path: Path) -> None:
    """Log-log ``bench.plotted`` metrics vs the NFE run, a panel per (metric, problem), a line per sampler@schedule."""
    from matplotlib import colormaps

    panels = [(metric, problem) for metric in bench.plotted for problem in result["problems"]]
    keys = list(dict.fromkeys(label(r) for r in result["results"]))
    styles = ("-", "--", ":", "-.")
    cols = min(2, len(panels))
    fig, axes = figure(nrows=math.ceil(len(panels) / cols), ncols=cols, squeeze=False, constrained_layout=True,
                       figsize=(6 * cols, 4.5 * math.ceil(len(panels) / cols)))
    colors = colormaps["tab20"].colors
    for ax, (metric, problem) in zip(axes.ravel(), panels, strict=False):
        rows = [r for r in result["results"] if r["problem"] == problem and r[metric] is not None
                and math.isfinite(r[metric]) and r[metric] > 0]
        for j, key in enumerate(keys):
            pts = sorted((r["nfe_run"], r[metric]) for r in rows if label(r) == key)
            if pts:
                ax.loglog(*zip(*pts, strict=True), marker="o", ms=3, color=colors[(2 * j) % 20 + (j >= 10)],
                          linestyle=styles[j % len(styles)], label=key)
        ax.set_title(f"{problem} (D = {result['problems'][problem]['dim']})")
        ax.set_xlabel("NFE")
        ax.set_ylabel(TITLES[metric])
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    lines = {}  # a run's line may be missing from a panel (a zero or infinite value): gather the legend from all
    for ax in axes.ravel():
        lines.update(zip(*ax.get_legend_handles_labels()[::-1], strict=True))
    shown = [key for key in keys if key in lines]
    fig.legend([lines[key] for key in shown], shown, loc="outside right center", fontsize=8)
    save_figure(fig, path)


def write(out: Path, result: dict, bench: Benchmark, extra: Sequence[str] = ()) -> None:
    """``results.json``, ``results.md`` and ``error_vs_nfe.png`` under ``out``."""
    atomic_write_json(out / "results.json", result)
    atomic_write_bytes(out / "results.md", markdown(result, bench, extra).encode())
    plot(result, bench, out / "error_vs_nfe.png")
