"""The plan of an app: every task, its trigger and its next due times, computed, not waited for.

The due times come from the same pure schedule the engine advances (`trigger._new_schedule()`),
on a simulated clock that reaches each due in turn, as the engine's clock does when it fires.
Nothing reads the clock but the caller, once, for "now": a trigger whose first due counts from
the start (`Every`, `Once`) is planned as if the app started then.

A task's `start` and `end` bound its dues as they bound the engine's; its policy is shown when it
sets one (the due times are nominal: with `jitter`, each run starts up to that much later).

Times are shown in the trigger's time zone: `At` and `Cron` have `tz`; an `OrTrigger` whose
calendar triggers share one zone is shown in it; every other trigger in UTC, which reads the same
on a laptop and on the server it is deployed to.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone, tzinfo
from typing import Any

from pydantic import BaseModel

from aioclock._calendar import load_zone
from aioclock._policy import Rules
from aioclock.app import AioClock
from aioclock.triggers import BaseTrigger, OnShutDown, OnStartUp, OrTrigger

#: Fields every trigger has that say nothing about when it fires.
_NOT_SHOWN = ("type_", "expected_trigger_time")


@dataclass(frozen=True)
class TaskPlan:
    """One task of the plan. `dues` are aware datetimes in `zone`; `note` says what follows
    them, or why there are none."""

    name: str
    id: str
    trigger: str
    zone: str
    dues: list[datetime] = field(default_factory=list)
    note: str | None = None
    failed: bool = False  # its trigger raised: the plan of this task is unknown
    policy: str | None = None  # its scheduling policy, where it sets one


def plan(app: AioClock, now: float, count: int) -> list[TaskPlan]:
    """The next `count` due times of every task of `app`, as if it started at `now`."""
    plans = []
    for task in app._tasks:
        policy = task.policy.over(app.policy)
        planned = plan_task(task.name, str(task.id), task.trigger, now, count, policy.rules())
        given = policy.given()
        if given:
            planned = replace(planned, policy=_describe_policy(given))
        plans.append(planned)
    return plans


def _describe_policy(given: dict[str, Any]) -> str:
    parts = []
    for name, value in given.items():
        if isinstance(value, datetime):
            value = value.isoformat(sep=" ")
        elif name == "jitter":
            value = f"up to {value:g} s after each due time"
        elif name == "misfire_grace":
            value = f"{value:g} s"
        parts.append(f"{name}={value}")
    return ", ".join(parts)


def plan_task(
    name: str,
    task_id: str,
    trigger: BaseTrigger[Any],
    now: float,
    count: int,
    rules: Rules | None = None,
) -> TaskPlan:
    """The next `count` due times of one trigger, as if it started at `now`, within the
    `start`/`end` window of `rules`."""
    zone = zone_of(trigger)
    shown = describe(trigger)
    start = None if rules is None else rules.start
    end = None if rules is None else rules.end
    if isinstance(trigger, OnStartUp):
        return TaskPlan(name, task_id, shown, zone, note="at start-up, before the scheduled tasks")
    if isinstance(trigger, OnShutDown):
        return TaskPlan(name, task_id, shown, zone, note="at shut-down, after the last runs")
    if trigger._is_legacy():
        return TaskPlan(name, task_id, shown, zone, note="(driven by its own trigger_next)")
    tz = load_zone(zone)
    dues: list[datetime] = []
    try:
        schedule = trigger._new_schedule()
        if start is not None:
            now = max(now, start)
        if trigger.waits_for_completion:
            due = schedule.advance(now)
            if due is not None and (end is None or due <= end):
                dues.append(_in(due, tz))
            return TaskPlan(name, task_id, shown, zone, dues, "then again as soon as each run ends")
        clock = now
        for _ in range(count):
            due = schedule.advance(clock)
            if due is None or (end is not None and due > end):
                return TaskPlan(name, task_id, shown, zone, dues, "then never again")
            dues.append(_in(due, tz))
            clock = max(clock, due)
    except Exception as error:
        note = f"its trigger failed: {type(error).__name__}: {error}"
        return TaskPlan(name, task_id, shown, zone, dues, note, failed=True)
    return TaskPlan(name, task_id, shown, zone, dues)


def zone_of(trigger: BaseTrigger[Any]) -> str:
    """The time zone a trigger's due times are shown in (see the module docstring)."""
    zones = set(_calendar_zones(trigger))
    return zones.pop() if len(zones) == 1 else "UTC"


def _calendar_zones(trigger: BaseTrigger[Any]) -> Iterable[str]:
    tz = getattr(trigger, "tz", None)
    if isinstance(tz, str):
        yield tz
    if isinstance(trigger, OrTrigger):
        for inner in trigger.triggers:
            yield from _calendar_zones(inner)


def describe(trigger: BaseModel) -> str:
    """`Cron(cron='0 3 * * *', tz='Europe/Berlin')`: the class and the fields not left at
    their default."""
    parts = []
    for name, info in type(trigger).model_fields.items():
        if name in _NOT_SHOWN:
            continue
        value = getattr(trigger, name)
        if not info.is_required() and value == info.get_default(call_default_factory=True):
            continue
        parts.append(f"{name}={_value(value)}")
    return f"{type(trigger).__name__}({', '.join(parts)})"


def _value(value: Any) -> str:
    if isinstance(value, BaseModel):
        return describe(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    return repr(value)


def _in(due: float, zone: tzinfo) -> datetime:
    return datetime.fromtimestamp(due, timezone.utc).astimezone(zone)


def format_plan(reference: str, plans: list[TaskPlan], now: float) -> str:
    """The plan as `aioclock tasks` prints it."""
    started = _time(datetime.fromtimestamp(now, timezone.utc), "milliseconds")
    count = f"{len(plans)} task" + ("" if len(plans) == 1 else "s")
    lines = [f"{reference}: {count}; due times as if it started now, {started} UTC"]
    for task in plans:
        lines += ["", task.name, f"  id       {task.id}", f"  trigger  {task.trigger}"]
        if task.policy is not None:
            lines.append(f"  policy   {task.policy}")
        precision = "seconds" if all(due.microsecond == 0 for due in task.dues) else "milliseconds"
        entries = [f"{_time(due, precision)} {task.zone}" for due in task.dues]
        if task.note is not None:
            entries.append(task.note)
        for index, entry in enumerate(entries):
            lines.append(f"  {'due' if index == 0 else '':<9}{entry}")
    return "\n".join(lines)


def _time(moment: datetime, precision: str) -> str:
    return moment.isoformat(sep=" ", timespec=precision)
