"""The PNG figures, drawn with matplotlib when it is installed (it is not a project dependency)."""

from __future__ import annotations

import importlib.util
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

FLOOR_MS = 0.01  # values below 10 us (the earliest start is 0) are drawn at 10 us


def available() -> bool:
    """Whether matplotlib can be imported (else the PNG is skipped with a note)."""
    if importlib.util.find_spec("matplotlib") is None:
        print("[plot] matplotlib is not installed: no PNG (pip install matplotlib)")
        return False
    return True


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def lateness_cdf(
    path: Path, samples: Mapping[str, Mapping[str, Sequence[float]]], title: str
) -> bool:
    """One panel per case: the CDF of start lateness of each system, log x."""
    if not available():
        return False
    plt = _pyplot()
    cases = list(samples)
    fig, axes = plt.subplots(1, len(cases), figsize=(6.5 * len(cases), 4.6), squeeze=False)
    for ax, case in zip(axes[0], cases, strict=True):
        for system, values in samples[case].items():
            if not values:
                continue
            xs = sorted(max(v, FLOOR_MS) for v in values)
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            ax.step(xs, ys, where="post", label=f"{system} (n={len(xs)})")
        ax.set_xscale("log")
        ax.set_xlabel("start lateness vs fixed-rate grid (ms, log)")
        ax.set_ylabel("fraction of runs")
        ax.set_title(f"case: {case}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small", loc="upper left")
    _finish(fig, plt, path, title)
    return True


def bars(
    path: Path, values: Mapping[str, Mapping[str, Sequence[float]]], ylabel: str, title: str
) -> bool:
    """One panel per case, one bar per system (median of its repetitions, each drawn as a dot)."""
    if not available():
        return False
    plt = _pyplot()
    cases = list(values)
    width = max(5.0, 1.2 * max((len(v) for v in values.values()), default=1))
    fig, axes = plt.subplots(1, len(cases), figsize=(width * len(cases), 4.8), squeeze=False)
    for ax, case in zip(axes[0], cases, strict=True):
        names = list(values[case])
        for i, name in enumerate(names):
            reps = sorted(values[case][name])
            median = reps[len(reps) // 2]
            ax.bar(i, median, color=f"C{i}", alpha=0.75)
            ax.plot([i] * len(reps), reps, "k.", markersize=4)
            ax.annotate(f"{median:,.0f}", (i, median), ha="center", va="bottom", fontsize="small")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=20, ha="right", fontsize="small")
        ax.set_ylabel(ylabel)
        ax.set_title(f"case: {case}")
        ax.grid(True, axis="y", alpha=0.3)
    _finish(fig, plt, path, title)
    return True


def by_size(
    path: Path,
    rows: Sequence[Mapping[str, Any]],
    panels: Sequence[tuple[str, str]],
    title: str,
) -> bool:
    """One panel per (metric key, axis label): a line per system against the task count."""
    if not available():
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), squeeze=False)
    systems = list(dict.fromkeys(r["system"] for r in rows))
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        for system in systems:
            points = [
                (r["tasks"], r[key]) for r in rows if r["system"] == system and r[key] is not None
            ]
            if points:
                xs, ys = zip(*sorted(points), strict=True)
                ax.plot(xs, [max(y, FLOOR_MS) for y in ys], "o-", label=system)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("registered tasks")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    _finish(fig, plt, path, title)
    return True


def _finish(fig: Any, plt: Any, path: Path, title: str) -> None:
    width = max(60, int(fig.get_figwidth() * 16))
    lines = [textwrap.fill(line, width) for line in title.splitlines()]
    fig.suptitle("\n".join(lines), fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cluster(path: Path, runs: Sequence[Mapping[str, Any]], title: str) -> bool:
    """The cluster benchmark: start lateness CDFs (light tasks, CPU-bound jobs) per case, the
    CPU-bound runs per node of each case, and the capacity steps (offered and run fires/s)."""
    if not available():
        return False
    plt = _pyplot()
    ok = [run for run in runs if run["status"] == "ok"]
    cases = [run for run in ok if not run["case"].startswith("capacity")]
    steps = [run for run in ok if run["case"].startswith("capacity")]
    panels = 3 + bool(steps)
    fig, axes = plt.subplots(1, panels, figsize=(5.6 * panels, 4.6), squeeze=False)
    for ax, key, what in (
        (axes[0][0], "light_lateness_ms", "light async tasks"),
        (axes[0][1], "cpu_lateness_ms", "CPU-bound sync jobs"),
    ):
        for run in cases:
            values = run["raw"].get(key) or []
            if values:
                xs = sorted(max(v, FLOOR_MS) for v in values)
                ys = [(i + 1) / len(xs) for i in range(len(xs))]
                ax.step(xs, ys, where="post", label=f"{run['case']} (n={len(xs)})")
        ax.set_xscale("log")
        ax.set_xlabel("start - nominal due (ms, log), outside fault windows")
        ax.set_ylabel("fraction of runs")
        ax.set_title(f"lateness: {what}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small", loc="upper left")
    ax = axes[0][2]
    for i, run in enumerate(cases):
        spread = run["metrics"].get("cpu_runs_by_slot") or {}
        width = 0.8 / max(1, len(spread))
        for j, (slot, count) in enumerate(spread.items()):
            x = i - 0.4 + width * (j + 0.5)
            ax.bar(x, count, width=width * 0.9, color=f"C{i}", alpha=0.5 + 0.5 * j / len(spread))
            ax.annotate(slot, (x, count), ha="center", va="bottom", fontsize="x-small")
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([run["case"] for run in cases], fontsize="small")
    ax.set_ylabel("CPU-bound runs in the window")
    ax.set_title("CPU-bound runs per node")
    ax.grid(True, axis="y", alpha=0.3)
    if steps:
        ax = axes[0][3]
        offered = [run["metrics"]["offered_per_s"] for run in steps]
        done = [run["metrics"]["fires_per_s"] for run in steps]
        ax.plot(offered, offered, "k:", label="offered")
        ax.plot(offered, done, "o-", label="fires run / s")
        ax.set_xlabel("offered fires/s (no-op tasks / period)")
        ax.set_ylabel("fires run per second, cluster-wide")
        ax.set_title("capacity")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    _finish(fig, plt, path, title)
    return True
