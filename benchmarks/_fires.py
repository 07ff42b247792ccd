"""The cluster benchmark's accounting, pure: runs of fires in; duplicates, misses, lateness out.

A fire is a task and a nominal due. Each system records the due of every run where it can say
it (AioClock's ``current_run``, arq's job id); where it cannot (AioClock before the cluster),
each node's starts of a task are laid on that node's fixed-rate grid (``_stats.lay_on_grid``,
lateness against the best phase, as in the jitter benchmark). Fires are then numbered per task
on one grid, k = round((due - first due) / period), so that the same fire run on two nodes
counts as a duplicate even when the two dues differ by a little.

Times are seconds (``time.time()``); lateness is in milliseconds.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any

from ._records import FireRun
from ._stats import lay_on_grid, percentile

Window = tuple[float, float]
MISSING_KEPT = 2000  # missing fires listed in the raw samples (task, due, explained), at most


@dataclass(frozen=True)
class Planned:
    """A task of the schedule: its period and its kind ("light", "cpu" or "noop")."""

    period: float
    kind: str


def with_dues(runs: Sequence[FireRun], plan: Mapping[str, Planned]) -> list[FireRun]:
    """The runs, those without a due given the due of their point on their node's grid."""
    known = [run for run in runs if not math.isnan(run.due)]
    unknown: dict[tuple[str, str], list[FireRun]] = {}
    for run in runs:
        if math.isnan(run.due):
            unknown.setdefault((run.task, run.node), []).append(run)
    for (task, _), group in unknown.items():
        group.sort(key=lambda run: run.start)
        grid = lay_on_grid([run.start for run in group], plan[task].period)
        for run, k in zip(group, grid.steps, strict=True):
            known.append(replace(run, due=grid.anchor + k * grid.period))
    return known


def _inside(t: float, windows: Iterable[Window]) -> bool:
    return any(start <= t <= end for start, end in windows)


def _late(samples: Sequence[float]) -> dict[str, float | None]:
    return {
        "p50": percentile(samples, 50),
        "p99": percentile(samples, 99),
        "max": max(samples) if samples else None,
    }


def token_violations(runs: Sequence[FireRun]) -> tuple[int, int]:
    """How many tasks carry fencing tokens, and how many times a task's token did not grow
    from one fire to the next (runs in the order of their dues, the order they were claimed)."""
    by_task: dict[str, list[FireRun]] = {}
    for run in runs:
        if run.token > 0:
            by_task.setdefault(run.task, []).append(run)
    violations = 0
    for task_runs in by_task.values():
        task_runs.sort(key=lambda run: (run.due, run.start))
        violations += sum(1 for a, b in pairwise(task_runs) if b.token <= a.token)
    return len(by_task), violations


def unfinished(began: Sequence[FireRun], ended: Sequence[FireRun]) -> list[FireRun]:
    """Runs that began and never ended (their process died under them), by the records."""

    def key(run: FireRun) -> tuple[int, str, float]:
        return run.pid, run.task, run.start if math.isnan(run.due) else run.due

    done = {key(run) for run in ended}
    return [run for run in began if key(run) not in done]


def account(
    ended: Sequence[FireRun],
    began: Sequence[FireRun],
    plan: Mapping[str, Planned],
    window: Window,
    explained: Sequence[Window] = (),
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fires expected over ``window`` (nominal dues in [start, end)), run, run more than once,
    missed (split by whether the due fell in one of the ``explained`` windows: a paused
    server, a killed node), lateness by kind outside those windows, CPU-bound runs per node
    slot, fencing-token order, and runs that began but never ended. Returns metrics and raw
    samples."""
    start, end = window
    runs = with_dues(ended, plan)
    first_due: dict[str, float] = {}
    for run in runs:
        first_due[run.task] = min(first_due.get(run.task, run.due), run.due)

    def fire(task: str, due: float) -> int:
        return round((due - first_due[task]) / plan[task].period)

    inside = [run for run in runs if start <= run.due < end]
    counts = Counter((run.task, fire(run.task, run.due)) for run in inside)
    expected = 0
    missing_explained = missing_other = 0
    missed: list[tuple[str, float, bool]] = []  # task, due, explained
    for task, planned in plan.items():
        if task not in first_due:  # never ran: every fire in the window is missing
            count = math.ceil((end - start) / planned.period)
            expected += count
            missing_other += count
            continue
        origin, period = first_due[task], planned.period
        ks = range(
            math.ceil((start - origin) / period - 1e-9), math.ceil((end - origin) / period - 1e-9)
        )
        expected += len(ks)
        for k in ks:
            if (task, k) not in counts:
                due = origin + k * period
                why = _inside(due, explained)
                missed.append((task, round(due, 6), why))
                if why:
                    missing_explained += 1
                else:
                    missing_other += 1
    late: dict[str, list[float]] = {"light": [], "cpu": []}
    late_all: list[float] = []
    for run in inside:
        lateness = (run.start - run.due) * 1000
        late_all.append(lateness)
        kind = "cpu" if plan[run.task].kind == "cpu" else "light"
        if not _inside(run.due, explained):
            late[kind].append(lateness)
    spread = Counter(run.slot for run in inside if plan[run.task].kind == "cpu")
    tasks_with_tokens, violations = token_violations(inside)
    lost = [run for run in unfinished(began, ended) if start <= run.start < end]
    light, cpu = _late(late["light"]), _late(late["cpu"])
    metrics = {
        "expected": expected,
        "runs": len(inside),
        "fires_run": len(counts),
        "duplicates": sum(c - 1 for c in counts.values()),
        "fires_duplicated": sum(1 for c in counts.values() if c > 1),
        "missing": missing_explained + missing_other,
        "missing_explained": missing_explained,
        "missing_other": missing_other,
        "unfinished": len(lost),
        "light_p50_ms": light["p50"],
        "light_p99_ms": light["p99"],
        "light_max_ms": light["max"],
        "cpu_p50_ms": cpu["p50"],
        "cpu_p99_ms": cpu["p99"],
        "cpu_max_ms": cpu["max"],
        "late_max_all_ms": max(late_all) if late_all else None,
        "cpu_runs_by_slot": dict(sorted(spread.items())),
        "token_tasks": tasks_with_tokens,
        "token_violations": violations if tasks_with_tokens else None,
        "dues_inferred": sum(1 for run in ended if math.isnan(run.due)),
    }
    raw = {
        "window": list(window),
        "explained_windows": [list(w) for w in explained],
        "light_lateness_ms": [round(x, 4) for x in late["light"]],
        "cpu_lateness_ms": [round(x, 4) for x in late["cpu"]],
        "unfinished": [[r.task, r.due, r.start, r.slot, r.node, r.token] for r in lost],
        "missing": sorted(missed, key=lambda m: m[1])[:MISSING_KEPT],
    }
    return metrics, raw
