"""Every (fixed rate), Once, Forever, OnStartUp, OnShutDown and the loop counter."""

import time

import pytest

from aioclock._schedule import FixedRate
from aioclock.triggers import (
    At,
    BaseTrigger,
    Cron,
    Every,
    Forever,
    Once,
    OnShutDown,
    OnStartUp,
    OrTrigger,
)

START = 1_767_225_600.123  # 2026-01-01 00:00:00.123 UTC


@pytest.mark.parametrize(
    ("kwargs", "seconds"),
    [
        ({"seconds": 3}, 3),
        ({"seconds": 0.25}, 0.25),
        ({"minutes": 1.5}, 90),
        ({"hours": 2}, 7200),
        ({"days": 1}, 86400),
        ({"weeks": 1}, 604800),
        ({"weeks": 1, "days": 1, "hours": 1, "minutes": 1, "seconds": 1}, 694861),
        ({"seconds": 0}, 0),
    ],
)
def test_every_to_seconds(kwargs: dict, seconds: float) -> None:
    assert Every(**kwargs).to_seconds == seconds


@pytest.mark.parametrize(
    ("kwargs", "now", "previous", "expected"),
    [
        ({"seconds": 10}, 100.0, None, 110.0),  # wait: one period after start
        ({"seconds": 10, "first_run_strategy": "immediate"}, 100.0, None, 100.0),
        ({"seconds": 10}, 100.0, 110.0, 120.0),  # then previous + period
        ({"seconds": 10}, 135.0, 110.0, 120.0),  # even when late: fixed rate, no drift
        ({"seconds": 10}, 101.0, 110.0, 120.0),  # even when early
        ({"minutes": 1}, 0.0, None, 60.0),
        ({"seconds": 0}, 100.0, None, 100.0),  # period 0: due when asked (end of last run)
        ({"seconds": 0}, 250.0, 100.0, 250.0),
    ],
)
def test_every_table(kwargs: dict, now: float, previous: float | None, expected: float) -> None:
    assert Every(**kwargs).next_due(now, previous) == expected


@pytest.mark.parametrize("period", [0.1, 1 / 3, 7.3, 90.0, 86400.0])
@pytest.mark.parametrize("strategy", ["immediate", "wait"])
def test_every_fixed_rate_grid_has_no_drift(period: float, strategy: str) -> None:
    """Run k is due at exactly start + k * period over 10k runs, however late the engine asks."""
    schedule = Every(seconds=period, first_run_strategy=strategy)._new_schedule()
    assert isinstance(schedule, FixedRate)
    first_k = 0 if strategy == "immediate" else 1
    now = START
    for k in range(first_k, first_k + 10_000):
        due = schedule.advance(now)
        assert due == START + k * period
        now = due + 0.37 * period  # runs cost time; the grid does not move


def test_every_wait_and_immediate_with_engine() -> None:
    wait = Every(seconds=5)._new_schedule()
    immediate = Every(seconds=5, first_run_strategy="immediate")._new_schedule()
    assert [wait.advance(t) for t in (100.0, 105.2, 110.9)] == [105.0, 110.0, 115.0]
    assert [immediate.advance(t) for t in (100.0, 100.3, 105.1)] == [100.0, 105.0, 110.0]


def test_every_zero_period_waits_for_completion() -> None:
    trigger = Every(seconds=0, max_loop_count=3)
    assert trigger.waits_for_completion
    assert not Every(seconds=1).waits_for_completion
    assert [trigger._advance(t) for t in (1.0, 4.5, 4.6, 9.0)] == [1.0, 4.5, 4.6, None]


@pytest.mark.parametrize("trigger", [Every(seconds=0), Forever()])
def test_waits_for_completion_triggers(trigger: BaseTrigger) -> None:
    assert trigger.waits_for_completion
    assert [trigger._advance(t) for t in (10.0, 12.5, 12.5, 40.0)] == [10.0, 12.5, 12.5, 40.0]


def test_every_max_loop_count() -> None:
    schedule = Every(seconds=1, max_loop_count=3)._new_schedule()
    assert [schedule.advance(0.0) for _ in range(5)] == [1.0, 2.0, 3.0, None, None]
    assert schedule.count == 3
    assert not schedule.alive()
    assert schedule.peek(10.0) is None


def test_every_max_loop_count_upstream_methods() -> None:
    trigger = Every(seconds=1, max_loop_count=3)
    assert [trigger._advance(0.0) for _ in range(5)] == [1.0, 2.0, 3.0, None, None]
    assert trigger._current_loop_count == 3
    assert not trigger.should_trigger()
    assert trigger._peek(10.0) is None


def test_every_next_due_is_pure() -> None:
    """`next_due` holds no state: one period after the previous it is given."""
    trigger = Every(seconds=10)
    trigger._advance(0.0)
    assert trigger.next_due(50.0, 33.3) == pytest.approx(43.3)
    assert trigger.next_due(50.0, None) == 60.0


def test_one_trigger_many_schedules() -> None:
    """Each task's schedule of one trigger is its own: anchor, grid and count."""
    trigger = Every(seconds=10, max_loop_count=3)
    first, second = trigger._new_schedule(), trigger._new_schedule()
    assert [first.advance(0.0), first.advance(10.0)] == [10.0, 20.0]
    assert [second.advance(5.0) for _ in range(4)] == [15.0, 25.0, 35.0, None]
    assert [first.advance(20.0), first.advance(30.0)] == [30.0, None]
    assert trigger._current_loop_count == 0 and trigger.should_trigger()


def test_a_subclass_that_changes_the_maths_is_asked() -> None:
    class EveryOther(Every):
        def next_due(self, now: float, previous: float | None) -> float | None:
            due = super().next_due(now, previous)
            return None if due is None else due + self.to_seconds

    schedule = EveryOther(seconds=1)._new_schedule()
    assert not isinstance(schedule, FixedRate)
    assert [schedule.advance(0.0) for _ in range(3)] == [2.0, 4.0, 6.0]


@pytest.mark.parametrize(
    ("trigger", "expected"),
    [
        (Once(), [7.0, None, None]),
        (OnStartUp(), [7.0, None, None]),
        (OnShutDown(), [7.0, None, None]),
        (Forever(), [7.0, 7.0, 7.0]),
    ],
    ids=["once", "startup", "shutdown", "forever"],
)
def test_once_like_and_forever(trigger: BaseTrigger, expected: list) -> None:
    assert [trigger._advance(7.0) for _ in expected] == expected


@pytest.mark.parametrize("cls", [Once, OnStartUp, OnShutDown])
def test_once_like_table(cls: type) -> None:
    trigger = cls()
    assert trigger.next_due(5.0, None) == 5.0
    assert trigger.next_due(9.0, 5.0) is None
    assert trigger.max_loop_count == 1
    assert not trigger.waits_for_completion


def test_peek_consumes_nothing() -> None:
    schedule = Every(seconds=10, max_loop_count=1)._new_schedule()
    assert schedule.peek(0.0) == 10.0
    assert schedule.peek(3.0) == 13.0
    assert schedule.count == 0
    assert schedule.advance(3.0) == 13.0
    assert schedule.peek(3.0) is None


def test_counting_is_per_occurrence_produced() -> None:
    """An occurrence counts when `_advance` produces it, whether or not the engine runs it."""
    trigger = Every(seconds=1, max_loop_count=2)
    trigger._advance(0.0)
    assert trigger._current_loop_count == 1
    trigger._increment_loop_counter()  # upstream's counter is the same counter
    assert not trigger.should_trigger()
    assert trigger._advance(0.0) is None


@pytest.mark.parametrize(
    "factory",
    [
        lambda: Every(seconds=2, max_loop_count=2),
        lambda: Once(),
        lambda: At(hour=3, tz="UTC", max_loop_count=2),
        lambda: Cron(cron="*/5 * * * *", max_loop_count=2),
        lambda: OrTrigger(triggers=[Every(seconds=3), Every(seconds=2, max_loop_count=1)]),
    ],
    ids=["every", "once", "at", "cron", "or"],
)
def test_reset_starts_the_schedule_afresh(factory) -> None:
    trigger, fresh = factory(), factory()
    before = [trigger._advance(100.0) for _ in range(3)]
    trigger._reset()
    assert [trigger._advance(100.0) for _ in range(3)] == before
    assert [fresh._advance(100.0) for _ in range(3)] == before


def test_custom_trigger_ended_by_next_due_stays_ended() -> None:
    class Twice(BaseTrigger[str]):
        type_: str = "TWICE"

        def next_due(self, now: float, previous: float | None) -> float | None:
            if previous is None:
                return now + 1
            return previous + 1 if previous < now + 2 else None

    trigger = Twice()
    assert [trigger._advance(10.0) for _ in range(4)] == [11.0, 12.0, None, None]
    assert not trigger.should_trigger()
    trigger._reset()
    assert trigger._advance(10.0) == 11.0


@pytest.mark.parametrize(
    "trigger",
    [
        Every(seconds=5),
        Every(seconds=0),
        Once(),
        Forever(),
        OnStartUp(),
        OnShutDown(),
        At(hour=2, minute=30, tz="Europe/Berlin"),
        Cron(cron="*/15 * * * *", tz="America/New_York"),
        OrTrigger(triggers=[Every(seconds=5), Cron(cron="* * * * *")]),
    ],
    ids=lambda t: type(t).__name__,
)
def test_next_due_never_reads_the_clock(trigger: BaseTrigger, monkeypatch) -> None:
    def no_clock() -> float:
        raise AssertionError("a trigger read the clock")

    monkeypatch.setattr(time, "time", no_clock)
    monkeypatch.setattr(time, "monotonic", no_clock)
    due = trigger._advance(START)
    assert due is not None and due >= START
    trigger._peek(START)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seconds": 1e-9}, r"at least 0.001 s \(or 0\), got 1e-09 seconds"),
        ({"seconds": 0.0009}, r"at least 0.001 s \(or 0\), got 0.0009 seconds"),
        ({"seconds": 1e12}, r"at most 3155760000 s \(100 years\), got 1000000000000.0 seconds"),
        ({"weeks": 10_000}, r"at most 3155760000 s \(100 years\), got 6048000000 seconds"),
    ],
)
def test_every_refuses_a_period_too_short_to_keep_or_too_long_to_date(kwargs, message) -> None:
    """1e-9 s would spin a CPU and starve the loop; 1e12 s lands past the year 9999."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        Every(**kwargs)


@pytest.mark.parametrize("kwargs", [{"seconds": 0}, {"seconds": 0.001}, {"weeks": 5200}])
def test_every_accepts_the_bounds_and_zero(kwargs) -> None:
    assert Every(**kwargs).to_seconds == sum(
        value * {"seconds": 1, "weeks": 604800}[unit] for unit, value in kwargs.items()
    )
