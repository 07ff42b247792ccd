"""OrTrigger: the earliest of its inner triggers, each keeping its own schedule."""

from datetime import datetime, timezone
from typing import Literal

import pytest

from aioclock._schedule import Earliest, Schedule
from aioclock.triggers import At, BaseTrigger, Cron, Every, Once, OrTrigger


def drain(trigger: BaseTrigger | Schedule, count: int) -> list[float | None]:
    """Consume `count` occurrences of a task's schedule (a fresh one for a trigger), the engine
    asking each time at the due time it was given."""
    schedule = trigger._new_schedule() if isinstance(trigger, BaseTrigger) else trigger
    dues: list[float | None] = []
    now = 0.0
    for _ in range(count):
        due = schedule.advance(now)
        dues.append(due)
        now = due if due is not None else now
    return dues


class EveryThirteen(BaseTrigger[Literal["THIRTEEN"]]):
    """A custom trigger (next_due only): due at multiples of 13 seconds."""

    type_: Literal["THIRTEEN"] = "THIRTEEN"
    label: str = "custom"

    def next_due(self, now: float, previous: float | None) -> float | None:
        after = now if previous is None else previous
        return (after // 13 + 1) * 13


def test_earliest_inner_wins() -> None:
    trigger = OrTrigger(triggers=[Every(seconds=10), Every(seconds=3)])
    assert drain(trigger, 8) == [3.0, 6.0, 9.0, 10.0, 12.0, 15.0, 18.0, 20.0]


def test_coincident_dues_fire_once_and_advance_both() -> None:
    schedule = OrTrigger(triggers=[Every(seconds=2), Every(seconds=3)])._new_schedule()
    assert isinstance(schedule, Earliest)
    assert drain(schedule, 8) == [2.0, 3.0, 4.0, 6.0, 8.0, 9.0, 10.0, 12.0]
    assert [inner.count for inner in schedule.inners] == [6, 4]


def test_coincident_within_float_error() -> None:
    """3 * 0.1 != 0.3 in floating point; still one occurrence."""
    trigger = OrTrigger(triggers=[Every(seconds=0.1), Every(seconds=0.3)])
    dues = drain(trigger, 6)
    assert dues == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])


def test_inner_schedules_are_anchored() -> None:
    """A slow inner trigger is not pushed back by a fast one."""
    schedule = OrTrigger(triggers=[Every(seconds=1), Every(seconds=10)])._new_schedule()
    assert isinstance(schedule, Earliest)
    dues = drain(schedule, 22)
    assert dues[:12] == [float(i) for i in range(1, 11)] + [11.0, 12.0]
    assert schedule.inners[1].count == 3  # 10, 20 and the armed 30


def test_per_inner_max_loop_count_and_end() -> None:
    schedule = OrTrigger(
        triggers=[Every(seconds=2, max_loop_count=2), Every(seconds=3, max_loop_count=1)]
    )._new_schedule()
    assert drain(schedule, 5) == [2.0, 3.0, 4.0, None, None]
    assert not schedule.alive()


def test_upstream_example_twenty_runs() -> None:
    trigger = OrTrigger(
        triggers=[Every(seconds=3, max_loop_count=10), Every(seconds=7, max_loop_count=10)]
    )
    dues = drain(trigger, 21)
    assert dues[19:] == [None, None]
    assert len(set(dues[:19])) == 19  # 10 + 10 runs, but 21 is due for both: one occurrence


def test_own_max_loop_count() -> None:
    schedule = OrTrigger(
        triggers=[Every(seconds=1), Every(seconds=5)], max_loop_count=3
    )._new_schedule()
    assert drain(schedule, 5) == [1.0, 2.0, 3.0, None, None]
    assert schedule.count == 3


def test_once_inside() -> None:
    trigger = OrTrigger(triggers=[Once(), Every(seconds=5)])
    assert drain(trigger, 3) == [0.0, 5.0, 10.0]


def test_calendar_inners() -> None:
    midnight = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
    trigger = OrTrigger(triggers=[Every(hours=6), At(hour=12, tz="UTC"), Cron(cron="0 15 * * *")])
    schedule = trigger._new_schedule()
    dues = [schedule.advance(midnight) for _ in range(5)]
    hours = [(due - midnight) / 3600 for due in dues]  # type: ignore[operator]
    assert hours == [6, 12, 15, 18, 24]  # Every and At coincide at 12:00


def test_custom_inner_is_kept() -> None:
    trigger = OrTrigger(triggers=[EveryThirteen(label="mine"), Every(seconds=20)])
    assert isinstance(trigger.triggers[0], EveryThirteen)
    assert drain(trigger, 4) == [13.0, 20.0, 26.0, 39.0]
    dumped = trigger.model_dump()
    assert dumped["triggers"][0]["label"] == "mine"
    assert dumped["triggers"][1]["seconds"] == 20


def test_nested() -> None:
    inner = OrTrigger(triggers=[Every(seconds=4), Every(seconds=6)])
    trigger = OrTrigger(triggers=[inner, Every(seconds=5)])
    assert drain(trigger, 6) == [4.0, 5.0, 6.0, 8.0, 10.0, 12.0]


def test_peek_consumes_nothing() -> None:
    trigger = OrTrigger(triggers=[Every(seconds=2), Every(seconds=3)])
    schedule = trigger._new_schedule()
    assert isinstance(schedule, Earliest)
    assert schedule.peek(0.0) == schedule.peek(0.0) == 2.0
    assert trigger.next_due(0.0, None) == 2.0
    assert [inner.count for inner in schedule.inners] == [0, 0]
    assert schedule.advance(0.0) == 2.0


def test_one_trigger_many_schedules() -> None:
    """Each schedule of one OrTrigger keeps its own inner schedules."""
    trigger = OrTrigger(triggers=[Every(seconds=2), Every(seconds=3)], max_loop_count=4)
    first, second = trigger._new_schedule(), trigger._new_schedule()
    assert drain(first, 2) == [2.0, 3.0]
    assert drain(second, 5) == [2.0, 3.0, 4.0, 6.0, None]
    assert drain(first, 3) == [4.0, 6.0, None]  # on from its own progress
    assert trigger._current_loop_count == 0  # the trigger's own schedule: untouched


def test_upstream_methods_keep_their_own_schedule() -> None:
    trigger = OrTrigger(triggers=[Every(seconds=2), Every(seconds=3, max_loop_count=1)])
    assert [trigger._advance(now) for now in (0.0, 2.0, 3.0)] == [2.0, 3.0, 4.0]
    assert trigger._current_loop_count == 3
    assert trigger.should_trigger()
    assert drain(trigger, 3) == [2.0, 3.0, 4.0]  # a task's schedule starts afresh


def test_from_dicts() -> None:
    trigger = OrTrigger(
        triggers=[{"type_": "EVERY", "seconds": 2}, {"type_": "CRON", "cron": "* * * * *"}]
    )
    assert [type(inner) for inner in trigger.triggers] == [Every, Cron]
    assert OrTrigger.model_validate(trigger.model_dump()).model_dump() == trigger.model_dump()
