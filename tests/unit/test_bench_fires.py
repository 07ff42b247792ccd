"""The cluster benchmark's accounting: fires expected, duplicates, misses, lateness, tokens."""

from __future__ import annotations

import math

import pytest

from benchmarks._fires import Planned, account, token_violations, unfinished, with_dues
from benchmarks._records import FireRun

P = 0.1
T0 = 1000.0
PLAN = {"light": Planned(P, "light"), "cpu": Planned(0.5, "cpu")}


def run(task: str, k: int, *, late: float = 0.001, slot: str = "n0", token: int = -1) -> FireRun:
    due = T0 + k * PLAN[task].period
    return FireRun(task, due, due + late, due + late + 0.01, slot, slot, token, pid=1)


def every_fire(task: str, count: int, **kwargs: object) -> list[FireRun]:
    return [run(task, k, **kwargs) for k in range(count)]  # type: ignore[arg-type]


def test_every_fire_once_is_all_expected_none_missing_none_duplicated() -> None:
    runs = every_fire("light", 20) + every_fire("cpu", 4, slot="n1")
    metrics, raw = account(runs, [], PLAN, (T0, T0 + 2.0))
    assert (metrics["expected"], metrics["runs"], metrics["fires_run"]) == (24, 24, 24)
    assert metrics["duplicates"] == metrics["missing"] == 0
    assert metrics["light_p50_ms"] == pytest.approx(1.0)
    assert metrics["cpu_runs_by_slot"] == {"n1": 4}
    assert len(raw["light_lateness_ms"]) == 20


def test_a_fire_run_on_two_nodes_is_one_duplicate() -> None:
    runs = every_fire("light", 10) + [run("light", 3, slot="n2")]
    metrics, _ = account(runs, [], {"light": PLAN["light"]}, (T0, T0 + 1.0))
    assert (metrics["duplicates"], metrics["fires_duplicated"], metrics["runs"]) == (1, 1, 11)


def test_misses_inside_a_fault_window_are_explained_the_others_not() -> None:
    runs = [r for r in every_fire("light", 20) if r.due not in (T0 + 0.5, T0 + 1.5)]
    metrics, _ = account(runs, [], {"light": PLAN["light"]}, (T0, T0 + 2.0), [(T0 + 1.2, T0 + 1.6)])
    assert (metrics["missing_explained"], metrics["missing_other"]) == (1, 1)


def test_lateness_inside_a_fault_window_is_left_out_of_the_percentiles() -> None:
    runs = every_fire("light", 10) + [run("light", 10, late=2.0)]
    metrics, _ = account(
        runs, [], {"light": PLAN["light"]}, (T0, T0 + 1.1), [(T0 + 0.95, T0 + 1.05)]
    )
    assert metrics["light_max_ms"] == pytest.approx(1.0)
    assert metrics["late_max_all_ms"] == pytest.approx(2000.0)


def test_a_task_that_never_ran_misses_every_fire_in_the_window() -> None:
    metrics, _ = account(every_fire("light", 10), [], PLAN, (T0, T0 + 1.0))
    assert metrics["expected"] == 12
    assert metrics["missing_other"] == 2


def test_unknown_dues_are_laid_on_each_nodes_grid() -> None:
    plan = {"light": PLAN["light"]}
    a = [
        FireRun("light", math.nan, T0 + k * P + 0.002, T0 + k * P + 0.003, "n0", "n0/1", -1, 1)
        for k in range(10)
    ]
    b = [
        FireRun("light", math.nan, T0 + k * P + 0.031, T0 + k * P + 0.032, "n1", "n1/2", -1, 2)
        for k in range(10)
    ]
    dues = sorted(r.due for r in with_dues(a + b, plan) if r.node == "n1/2")
    assert dues[0] == pytest.approx(T0 + 0.031)
    metrics, _ = account(a + b, [], plan, (T0, T0 + 1.0))
    assert metrics["dues_inferred"] == 20
    assert metrics["duplicates"] == 10  # the same fires, run by both nodes


def test_tokens_must_grow_from_one_fire_of_a_task_to_the_next() -> None:
    runs = [run("light", k, token=t) for k, t in enumerate([1, 2, 3, 3, 5, 4])]
    assert token_violations(runs) == (1, 2)
    assert token_violations(every_fire("light", 5)) == (0, 0)  # no tokens: nothing to check


def test_a_run_that_began_and_never_ended_is_unfinished() -> None:
    ended = every_fire("cpu", 3)
    began = [*ended, run("cpu", 3)]
    assert unfinished(began, ended) == [run("cpu", 3)]
