"""Triggers decide when a task is due. They are pure: given the time, they say when next, or never.

A trigger is a pydantic model validated at construction: an unknown field, or a bool given for a
number, fails there, naming the field. It answers `next_due(now, previous)`, in POSIX seconds
(`time.time()`), and holds no schedule state: the engine keeps each task's progress (previous due,
count, anchor, ...) in a `Schedule` of its own (`aioclock._schedule`), so one trigger object may
serve several tasks. Triggers never sleep and never read the clock, except in the methods kept for
upstream compatibility (`should_trigger`, `trigger_next`, `get_waiting_time_till_next_trigger`),
which advance a schedule the trigger keeps for those callers alone.

Kinds of schedule:

- fixed-rate: `Every` (run k is due at start + k * period, whatever the runs cost);
- calendar: `At`, `Cron` (wall-clock times in a time zone, right across daylight-saving changes);
- after the previous run: `Forever`, `Every` with a period of 0 (`waits_for_completion`);
- once: `Once`, `OnStartUp`, `OnShutDown`; and `OrTrigger`, the earliest of several.
"""

import asyncio
import difflib
import functools
import math
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone, tzinfo
from datetime import time as wall_time
from enum import Enum
from typing import Annotated, Any, Generic, Literal, TypeVar, Union

from croniter import CroniterBadDateError, croniter
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveInt,
    SerializeAsAny,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)

from aioclock._calendar import load_zone, next_instant
from aioclock._schedule import Earliest, FixedRate, Schedule

__all__ = [
    "At",
    "BaseTrigger",
    "Cron",
    "Every",
    "Forever",
    "LoopController",
    "OnShutDown",
    "OnStartUp",
    "Once",
    "OrTrigger",
    "TriggerT",
    "Triggers",
]

TriggerTypeT = TypeVar("TriggerTypeT")


class Triggers(str, Enum):
    """The `type_` of each built-in trigger (upstream's names and values)."""

    CRON = "CRON"
    EVERY = "EVERY"
    ONCE = "ONCE"
    FOREVER = "FOREVER"
    ON_START_UP = "ON_START_UP"
    ON_SHUT_DOWN = "ON_SHUT_DOWN"
    AT = "AT"
    OR = "OR"

    def __str__(self) -> str:
        return self.value


class BaseTrigger(BaseModel, Generic[TriggerTypeT]):
    """Base class of all triggers. A custom trigger implements one pure method, `next_due`.

    `next_due(now, previous)` gets the time now and the due time of the previous occurrence
    (None before the first), both POSIX seconds, and returns the next due time, or None when the
    trigger will never fire again. It must not read the clock, sleep or change the trigger.

    Example, a trigger due at second 13 of every minute:

    >>> from typing import Literal
    >>> from aioclock.triggers import BaseTrigger
    >>> class AtSecond13(BaseTrigger[Literal["AT_SECOND_13"]]):
    ...     type_: Literal["AT_SECOND_13"] = "AT_SECOND_13"
    ...
    ...     def next_due(self, now: float, previous: float | None) -> float | None:
    ...         after = now if previous is None else previous
    ...         due = after // 60 * 60 + 13
    ...         return due if due > after else due + 60
    >>> trigger = AtSecond13()
    >>> trigger.next_due(now=120.0, previous=None), trigger.next_due(now=140.0, previous=133.0)
    (133.0, 193.0)

    Use it like any other: `@app.task(trigger=AtSecond13())`. Subclass `LoopController` instead to
    get `max_loop_count`. A subclass written against upstream's interface (it overrides
    `trigger_next`, and perhaps `get_waiting_time_till_next_trigger`, but not `next_due`) still
    runs: the engine drives it with upstream's loop (see `_is_legacy`).

    A trigger is a declaration: the engine keeps each task's progress through it in a schedule
    of the task's own (`_new_schedule`), so one trigger object may serve several tasks. The
    upstream-compatible methods (`should_trigger`, `trigger_next`, ...) advance a schedule the
    trigger keeps for their callers alone; serving an app never touches it.

    Attributes:
        type_: Name of the trigger, fixed by each subclass.
        expected_trigger_time: When the next run is due (aware UTC); set by the in-process
            runtime, for the API (with one trigger shared by several tasks: the task armed last).
    """

    model_config = ConfigDict(extra="forbid")

    type_: TriggerTypeT
    expected_trigger_time: datetime | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_fields(cls, data: Any) -> Any:
        """Name a misspelt field and the field meant (pydantic only says "extra input")."""
        if isinstance(data, dict) and cls.model_config.get("extra") == "forbid":
            # A dict, asked for every trigger made (`model_fields` is a slower property since
            # pydantic 2.10, which added this; before it, `model_fields` is the dict itself).
            known = getattr(cls, "__pydantic_fields__", None) or cls.model_fields
            for key in data:
                if key not in known:
                    fields = list(known)
                    close = difflib.get_close_matches(str(key), fields, n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise ValueError(
                        f"{cls.__name__} has no field {key!r} (given {data[key]!r}){hint}; "
                        f"its fields are {', '.join(fields)}"
                    )
        return data

    def next_due(self, now: float, previous: float | None) -> float | None:
        """The next due time (POSIX seconds), or None when the trigger will never fire again."""
        raise NotImplementedError(f"{type(self).__name__} must implement next_due(now, previous)")

    @property
    def waits_for_completion(self) -> bool:
        """True when the next occurrence is computed from the end of the previous run."""
        return False

    def should_trigger(self) -> bool:
        """Whether the trigger can still fire (upstream's method: its own schedule's answer)."""
        return self._schedule().alive()

    # Engine-facing: private, but stable.

    def _new_schedule(self) -> Schedule:
        """A fresh schedule of this trigger's occurrences, for one task (the engine's state)."""
        return Schedule(self, self._limit(), self._gate())

    def _limit(self) -> int | None:
        """How many occurrences at most (LoopController's `max_loop_count`)."""
        return None

    def _gate(self) -> Callable[[], bool] | None:
        """`should_trigger`, where a subclass overrides it: asked before each occurrence."""
        if _owner(type(self), "should_trigger") is BaseTrigger:
            return None
        return self.should_trigger

    @classmethod
    def _is_legacy(cls) -> bool:
        """True for a class written against upstream's interface: it overrides `trigger_next` or
        `get_waiting_time_till_next_trigger` below the class that provides `next_due`."""
        return _is_legacy_class(cls)

    def _local_zone(self) -> tzinfo:
        """The zone a naive datetime given to the compat methods is read in."""
        return timezone.utc

    # Upstream compatibility: the trigger's own schedule, for code that calls these directly
    # (and for tests of the schedule maths). These read the real clock and sleep.

    def _schedule(self) -> Schedule:
        """The trigger's own schedule, made on first use (and for a copy, its own afresh)."""
        # Kept in the instance's __dict__ by hand, not as a pydantic private attribute: that
        # would cost every trigger made ~1.5 us (a quarter of `Every(...)`), for methods that
        # serving never calls. pydantic's equality, dumps and repr read the fields only.
        own: Schedule | None = self.__dict__.get("_own")
        if own is None or own.trigger is not self:
            own = self._new_schedule()
            object.__setattr__(self, "_own", own)
        own.limit = self._limit()  # upstream code may change max_loop_count as it goes
        return own

    def _advance(self, now: float) -> float | None:
        """Consume the next occurrence of the trigger's own schedule; None once it has ended."""
        return self._schedule().advance(now)

    def _peek(self, now: float) -> float | None:
        """The due time `_advance(now)` would return, consuming nothing."""
        return self._schedule().peek(now)

    def _reset(self) -> None:
        """Forget the trigger's own consumed occurrences: a fresh copy of its schedule."""
        self.__dict__.pop("_own", None)

    async def trigger_next(self) -> None:
        """Consume the next occurrence (counting it) and sleep until it is due."""
        schedule = self._schedule()
        if _owner(type(self), "next_due") is BaseTrigger:
            wait = await self.get_waiting_time_till_next_trigger()
            now = time.time()
            schedule.previous = now
            schedule.count += 1
        else:
            now = time.time()
            due = schedule.advance(now)
            wait = None if due is None else due - now
        if wait is not None and wait > 0:
            await asyncio.sleep(wait)

    async def get_waiting_time_till_next_trigger(self, now: datetime | None = None) -> float | None:
        """Seconds from `now` (default: the real clock) until the next due; None if never again."""
        if _owner(type(self), "next_due") is BaseTrigger:
            return 0.0 if self.should_trigger() else None  # upstream LoopController's answer
        if now is None:
            instant = time.time()
        elif now.tzinfo is None:
            instant = now.replace(tzinfo=self._local_zone()).timestamp()
        else:
            instant = now.timestamp()
        due = self._peek(instant)
        return None if due is None else max(0.0, due - instant)


def _refuse_bool(value: Any, info: ValidationInfo) -> Any:
    """pydantic reads True as 1: refuse it where a number is meant (`Every(seconds=True)`)."""
    if isinstance(value, bool):
        raise ValueError(f"{info.field_name} must be a number, not a bool, got {value!r}")
    return value


_Count = Annotated[Union[PositiveInt, None], BeforeValidator(_refuse_bool)]
_One = Annotated[Literal[1], BeforeValidator(_refuse_bool)]


class LoopController(BaseTrigger[TriggerTypeT], Generic[TriggerTypeT]):
    """A trigger with `max_loop_count`: it stops after that many occurrences.

    Every occurrence the trigger produces counts, including one the engine skips because the
    previous run still runs.

    >>> from aioclock.triggers import Every
    >>> trigger = Every(seconds=10, max_loop_count=2)
    >>> schedule = trigger._new_schedule()  # what the engine keeps for one task
    >>> [schedule.advance(now) for now in (0.0, 10.0, 20.0)], schedule.alive()
    ([10.0, 20.0, None], False)

    Attributes:
        max_loop_count: How many times it fires at most; None for no limit.
    """

    max_loop_count: _Count = None

    def _limit(self) -> int | None:
        return self.max_loop_count

    @property
    def _current_loop_count(self) -> int:
        """Upstream's counter: occurrences of the trigger's own schedule (not the engine's)."""
        return self._schedule().count

    @_current_loop_count.setter
    def _current_loop_count(self, value: int) -> None:
        self._schedule().count = value

    def _increment_loop_counter(self) -> None:
        self._schedule().count += 1


class Forever(BaseTrigger[Literal[Triggers.FOREVER]]):
    """Runs again as soon as the previous run ended, for as long as the app runs.

    >>> from aioclock.triggers import Forever
    >>> trigger = Forever()
    >>> trigger.waits_for_completion, trigger.next_due(now=50.0, previous=10.0)
    (True, 50.0)

    Usage: `@app.task(trigger=Forever())` instead of a `while True:` loop in the task.
    """

    type_: Literal[Triggers.FOREVER] = Triggers.FOREVER

    @property
    def waits_for_completion(self) -> bool:
        return True

    def next_due(self, now: float, previous: float | None) -> float | None:
        return now


class _OneShot:
    """`next_due` of the triggers that fire once, as soon as they are armed."""

    def next_due(self, now: float, previous: float | None) -> float | None:
        return now if previous is None else None


class Once(_OneShot, LoopController[Literal[Triggers.ONCE]]):
    """Runs once, as soon as the app starts, then never again.

    >>> from aioclock.triggers import Once
    >>> schedule = Once()._new_schedule()
    >>> schedule.advance(5.0), schedule.advance(6.0)
    (5.0, None)
    """

    type_: Literal[Triggers.ONCE] = Triggers.ONCE
    max_loop_count: _One = 1


class OnStartUp(_OneShot, LoopController[Literal[Triggers.ON_START_UP]]):
    """Runs once when the app starts, before the other tasks (the engine recognises it by type).

    >>> from aioclock.triggers import OnStartUp
    >>> OnStartUp().next_due(now=5.0, previous=None)
    5.0
    """

    type_: Literal[Triggers.ON_START_UP] = Triggers.ON_START_UP
    max_loop_count: _One = 1


class OnShutDown(_OneShot, LoopController[Literal[Triggers.ON_SHUT_DOWN]]):
    """Runs once when the app shuts down (the engine recognises it by type).

    >>> from aioclock.triggers import OnShutDown
    >>> OnShutDown().next_due(now=5.0, previous=None)
    5.0
    """

    type_: Literal[Triggers.ON_SHUT_DOWN] = Triggers.ON_SHUT_DOWN
    max_loop_count: _One = 1


def _check_unit(value: float | None, info: ValidationInfo) -> float | None:
    if value is None:
        return None
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{info.field_name} must be a finite number, got {value!r}")
    if value < 0:
        raise ValueError(f"{info.field_name} must be >= 0, got {value!r}")
    return value


_TimeUnit = Annotated[
    Union[int, float, None], BeforeValidator(_refuse_bool), AfterValidator(_check_unit)
]
_UNIT_SECONDS = {"weeks": 604800, "days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}

#: The shortest period of `Every` other than 0: below it a schedule is a busy loop that starves
#: the event loop (aioclock 0.3 accepted any period; 1 ms is what a loop can keep).
MIN_PERIOD = 0.001
#: The longest period of `Every`, 100 years: further dues are past what a date can hold.
MAX_PERIOD = 36525 * 86400


class Every(LoopController[Literal[Triggers.EVERY]]):
    """Runs at a fixed rate: run k is due at start + k * period, however long the runs take.

    With `first_run_strategy="immediate"` the first run is due at start, with `"wait"` (the
    default) one period later. A period of 0 runs again as soon as the previous run ended;
    any other period is between 1 ms (`MIN_PERIOD`) and 100 years (`MAX_PERIOD`).

    >>> from aioclock.triggers import Every
    >>> schedule = Every(minutes=1, first_run_strategy="immediate")._new_schedule()
    >>> [schedule.advance(now) for now in (1000.0, 1000.5, 1077.0)]
    [1000.0, 1060.0, 1120.0]

    Usage: `@app.task(trigger=Every(seconds=3))`.

    Attributes:
        seconds, minutes, hours, days, weeks: The period is their sum; give at least one.
        first_run_strategy: "wait" (first run one period after start) or "immediate".
        max_loop_count: How many times it fires at most; None for no limit.
    """

    type_: Literal[Triggers.EVERY] = Triggers.EVERY
    first_run_strategy: Literal["immediate", "wait"] = "wait"
    seconds: _TimeUnit = None
    minutes: _TimeUnit = None
    hours: _TimeUnit = None
    days: _TimeUnit = None
    weeks: _TimeUnit = None
    max_loop_count: _Count = None

    @model_validator(mode="after")
    def _check_period(self) -> "Every":
        period = self.to_seconds
        if period == 0 and all(getattr(self, unit) is None for unit in _UNIT_SECONDS):
            raise ValueError("Every needs at least one of seconds, minutes, hours, days or weeks")
        if not math.isfinite(period):
            raise ValueError(f"the period of Every must be finite, got {period} seconds")
        bound = None
        if 0 < period < MIN_PERIOD:
            bound = f"at least {MIN_PERIOD:g} s (or 0)"
        elif period > MAX_PERIOD:
            bound = f"at most {MAX_PERIOD} s (100 years)"
        if bound is not None:
            raise ValueError(f"the period of Every must be {bound}, got {period} seconds")
        return self

    @property
    def to_seconds(self) -> float:
        """The period in seconds."""
        # Written out: it is read for every task of a schedule (100,000 at start-up, say).
        return (
            (self.weeks or 0) * 604800
            + (self.days or 0) * 86400
            + (self.hours or 0) * 3600
            + (self.minutes or 0) * 60
            + (self.seconds or 0)
        )

    @property
    def waits_for_completion(self) -> bool:
        return self.to_seconds == 0

    def next_due(self, now: float, previous: float | None) -> float | None:
        """One period after `previous` (the engine's schedule keeps an exact grid instead)."""
        period = self.to_seconds
        if period == 0:
            return now
        if previous is None:
            return now if self.first_run_strategy == "immediate" else now + period
        return previous + period

    def _new_schedule(self) -> Schedule:
        """Run k at anchor + k * period, the anchor being the start: no error accumulates."""
        cls = type(self)
        if cls is not Every and (_owner(cls, "next_due") is not Every or self._gate() is not None):
            return super()._new_schedule()  # a subclass changed the maths: ask it
        immediate = self.first_run_strategy == "immediate"
        return FixedRate(self, self.max_loop_count, self.to_seconds, immediate)


def _check_zone(key: str) -> str:
    load_zone(key)
    return key


def _check_clock_field(value: int, info: ValidationInfo) -> int:
    highest = 23 if info.field_name == "hour" else 59
    if not 0 <= value <= highest:
        raise ValueError(f"{info.field_name} must be between 0 and {highest}, got {value!r}")
    return value


_TimeZone = Annotated[str, AfterValidator(_check_zone)]
_ClockField = Annotated[int, BeforeValidator(_refuse_bool), AfterValidator(_check_clock_field)]
_WEEKDAYS = {
    "every monday": 0,
    "every tuesday": 1,
    "every wednesday": 2,
    "every thursday": 3,
    "every friday": 4,
    "every saturday": 5,
    "every sunday": 6,
}


class At(LoopController[Literal[Triggers.AT]]):
    """Runs at a wall-clock time in a time zone, every day or on one weekday.

    The first run is the first such time after the trigger starts (strictly after `now`). Across
    daylight-saving changes it runs once a day: a time in the spring-forward gap runs at the
    jump, a time in the repeated autumn hour runs on its first pass.

    >>> from datetime import datetime, timezone
    >>> from aioclock.triggers import At
    >>> trigger = At(hour=2, minute=30, tz="Europe/Berlin")
    >>> spring_eve = datetime(2026, 3, 28, 12, tzinfo=timezone.utc).timestamp()
    >>> due = trigger.next_due(now=spring_eve, previous=None)
    >>> datetime.fromtimestamp(due, timezone.utc).isoformat()  # 02:30 does not exist: 03:00 CEST
    '2026-03-29T01:00:00+00:00'

    Usage: `@app.task(trigger=At(hour=12, minute=30, at="every monday", tz="Asia/Kolkata"))`.

    Attributes:
        second, minute, hour: The wall-clock time (hour 0-23).
        at: "every day" or "every monday" ... "every sunday".
        tz: The IANA time zone, e.g. "Europe/Berlin".
        max_loop_count: How many times it fires at most; None for no limit.
    """

    type_: Literal[Triggers.AT] = Triggers.AT
    max_loop_count: _Count = None
    second: _ClockField = 0
    minute: _ClockField = 0
    hour: _ClockField = 0
    at: Literal[
        "every monday",
        "every tuesday",
        "every wednesday",
        "every thursday",
        "every friday",
        "every saturday",
        "every sunday",
        "every day",
    ] = "every day"
    tz: _TimeZone

    def next_due(self, now: float, previous: float | None) -> float | None:
        after = now if previous is None else previous
        return next_instant(load_zone(self.tz), after, self._candidates, fixed=True)

    def _candidates(self, start: datetime) -> Iterator[datetime]:
        clock = wall_time(self.hour, self.minute, self.second)
        weekday = _WEEKDAYS.get(self.at)
        day = start.date()
        while True:
            candidate = datetime.combine(day, clock)
            if candidate > start and (weekday is None or day.weekday() == weekday):
                yield candidate
            day += timedelta(days=1)

    def _local_zone(self) -> tzinfo:
        return load_zone(self.tz)


_SECONDS_LAST = ("minute", "hour", "day", "month", "weekday", "second")  # croniter, aioclock 0.3
_SECONDS_FIRST = ("second", "minute", "hour", "day", "month", "weekday")  # Quartz, Spring


def _seconds_last(fields: list[str]) -> str:
    """A six-field expression written seconds first, in croniter's order (seconds last)."""
    return " ".join(fields[1:] + fields[:1])


def _reading(names: tuple[str, ...], fields: list[str]) -> str:
    return " ".join(f"{name}={field}" for name, field in zip(names, fields, strict=True))


def _check_cron(expression: str, seconds_first: bool) -> None:
    """Refuse an expression croniter cannot read, one that never fires, and six fields whose
    two readings differ where the seconds-last one fires every second of a minute."""
    fields = expression.split()
    six = len(fields) == 6
    if seconds_first:
        if not six:
            raise ValueError(
                "seconds_first=True needs 6 fields (second minute hour day month weekday), "
                f"got {len(fields)} in {expression!r}"
            )
        readable = _seconds_last(fields)
    else:
        alias = len(fields) == 1 and fields[0].startswith("@")  # "@daily" and the like
        if not alias and len(fields) not in (5, 6):
            raise ValueError(
                f"cron must have 5 fields, or 6 with seconds last, got {len(fields)} in "
                f"{expression!r}"
            )
        readable = expression
    quartz_valid = six and not seconds_first and croniter.is_valid(_seconds_last(fields))
    if not croniter.is_valid(readable):
        hint = ""
        if quartz_valid:
            hint = " (it is valid with seconds first, as Quartz and Spring write 6 fields: pass "
            hint += "seconds_first=True)"
        raise ValueError(f"invalid cron expression {expression!r}{hint}")
    if quartz_valid and fields[5] == "*" and len(set(fields)) > 1:
        raise ValueError(
            f"cron expression {expression!r} is ambiguous: read with seconds last (aioclock 0.3, "
            f"croniter) it is {_reading(_SECONDS_LAST, fields)}, every second of each matching "
            f"minute; read with seconds first (Quartz, Spring) it is "
            f"{_reading(_SECONDS_FIRST, fields)}. For the second reading pass "
            "seconds_first=True; for the first, write its seconds field as 0-59"
        )
    try:
        croniter(readable, datetime(2000, 1, 1)).get_next(datetime)
    except CroniterBadDateError:
        raise ValueError(f"cron expression {expression!r} never fires") from None


class Cron(LoopController[Literal[Triggers.CRON]]):
    """Runs on a cron schedule in a time zone, parsed by croniter.

    Five fields (minute hour day month weekday), or six with seconds as the LAST field
    (croniter's default, as upstream); aliases such as "@daily" work too. With
    `seconds_first=True` six fields are read with seconds FIRST, as Quartz and Spring write them
    (second minute hour day month weekday; each field keeps cron's meaning: weekday 0-7 or
    MON-SUN, `?` reads as `*`). Six fields whose two readings differ, where the seconds-last one
    would fire every second of a minute (`"0 3 * * * *"`: 60 runs at 03:00:00-03:00:59, or once
    an hour at minute 3), are refused unless `seconds_first=True` says which is meant; write the
    seconds-last field as `0-59` to mean every second.

    The first run is the first match strictly after `now`. Daylight-saving changes: if the hour
    field is fixed (no `*`, no `/`) the job runs once a day, at the jump for a time in the spring
    gap and on the first pass of the repeated autumn hour; with a wildcard or stepped hour the job
    keeps its real spacing (times in the gap do not exist, times in the repeated hour happen twice).

    >>> from datetime import datetime, timezone
    >>> from aioclock.triggers import Cron
    >>> trigger = Cron(cron="*/15 * * * *", tz="Europe/Berlin")
    >>> autumn = datetime(2026, 10, 25, 0, 40, tzinfo=timezone.utc).timestamp()  # 02:40 CEST
    >>> schedule = trigger._new_schedule()
    >>> dues = [schedule.advance(autumn) for _ in range(3)]
    >>> [datetime.fromtimestamp(due, timezone.utc).strftime("%H:%M") for due in dues]
    ['00:45', '01:00', '01:15']
    >>> hourly = Cron(cron="0 3 * * * *", seconds_first=True)  # Quartz: minute 3 of every hour
    >>> due = hourly.next_due(datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp(), None)
    >>> datetime.fromtimestamp(due, timezone.utc).strftime("%H:%M:%S")
    '00:03:00'

    Usage: `@app.task(trigger=Cron(cron="0 12 * * *", tz="Asia/Kolkata"))`.

    Attributes:
        cron: The cron expression.
        tz: The IANA time zone, e.g. "Europe/Berlin"; "UTC" by default.
        seconds_first: Read six fields with seconds first (Quartz, Spring); False by default:
            seconds last (croniter, aioclock 0.3).
        max_loop_count: How many times it fires at most; None for no limit.
    """

    type_: Literal[Triggers.CRON] = Triggers.CRON
    max_loop_count: _Count = None
    cron: str
    tz: _TimeZone = "UTC"
    seconds_first: bool = False

    @model_validator(mode="after")
    def _check_expression(self) -> "Cron":
        _check_cron(self.cron, self.seconds_first)
        return self

    @property
    def _expression(self) -> str:
        """The expression in croniter's order (seconds last)."""
        return _seconds_last(self.cron.split()) if self.seconds_first else self.cron

    @property
    def _fixed_hour(self) -> bool:
        fields = self._expression.split()
        if len(fields) == 1:  # an alias: only @hourly has a wildcard hour
            return fields[0] != "@hourly"
        return "*" not in fields[1] and "/" not in fields[1]

    def next_due(self, now: float, previous: float | None) -> float | None:
        after = now if previous is None else previous
        zone = load_zone(self.tz)
        return next_instant(zone, after, self._candidates, fixed=self._fixed_hour)

    def _candidates(self, start: datetime) -> Iterator[datetime]:
        matches = croniter(self._expression, start)
        try:
            while True:
                yield matches.get_next(datetime)
        except CroniterBadDateError:  # no match within croniter's search limit
            return

    def _local_zone(self) -> tzinfo:
        return load_zone(self.tz)


class OrTrigger(LoopController[Literal[Triggers.OR]]):
    """Runs whenever any of its inner triggers is due.

    Each inner trigger keeps its own schedule and its own `max_loop_count`; dues that coincide run
    once. It ends when every inner trigger has ended, or at its own `max_loop_count`. Triggers
    without a due time of their own (`Forever`, `Every` with a period of 0, start-up and shut-down
    triggers, triggers written against upstream's interface) cannot be inner triggers.

    >>> from aioclock.triggers import Every, OrTrigger
    >>> trigger = OrTrigger(triggers=[Every(seconds=2), Every(seconds=3, max_loop_count=1)])
    >>> schedule = trigger._new_schedule()
    >>> [schedule.advance(now) for now in (0.0, 2.0, 3.0, 4.0)]
    [2.0, 3.0, 4.0, 6.0]

    Attributes:
        triggers: The inner triggers, any `BaseTrigger` subclasses.
        max_loop_count: How many times it fires at most; None for no limit.
    """

    type_: Literal[Triggers.OR] = Triggers.OR
    triggers: list[SerializeAsAny[BaseTrigger]]  # type: ignore[type-arg]
    max_loop_count: _Count = None

    @field_validator("triggers", mode="before")
    @classmethod
    def _parse_dicts(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [
                _trigger_adapter().validate_python(t) if isinstance(t, dict) else t for t in value
            ]
        return value

    @field_validator("triggers")
    @classmethod
    def _check_inner(cls, triggers: list[BaseTrigger[Any]]) -> list[BaseTrigger[Any]]:
        if not triggers:
            raise ValueError("triggers of OrTrigger must not be empty, got []")
        seen: set[int] = set()
        for inner in triggers:
            name = type(inner).__name__
            if isinstance(inner, (OnStartUp, OnShutDown)):
                raise ValueError(f"OrTrigger cannot contain {name}: it runs outside the schedule")
            if inner.waits_for_completion:
                reason = "it waits for the previous run to end"
                raise ValueError(f"OrTrigger cannot contain {_short(inner)}: {reason}")
            if inner._is_legacy():
                raise ValueError(
                    f"OrTrigger cannot contain {name}: it implements trigger_next, not next_due"
                )
            if id(inner) in seen:
                raise ValueError(
                    f"OrTrigger cannot contain the same trigger twice: {_short(inner)}"
                )
            seen.add(id(inner))
        return triggers

    def next_due(self, now: float, previous: float | None) -> float | None:
        """The earliest inner `next_due(now, previous)`, each inner asked with the same
        `previous`; the engine's schedule keeps each inner schedule on its own instead."""
        dues = (inner.next_due(now, previous) for inner in self.triggers)
        return min((due for due in dues if due is not None), default=None)

    def _new_schedule(self) -> Schedule:
        inners = [inner._new_schedule() for inner in self.triggers]
        return Earliest(self, self.max_loop_count, inners, self._gate())


TriggerT = Annotated[
    Union[Forever, Once, Every, At, OnStartUp, OnShutDown, Cron, OrTrigger],
    Field(discriminator="type_"),
]
"""Any built-in trigger, told apart by `type_` (for parsing a trigger from a dict)."""

_adapter: TypeAdapter[Any] | None = None


def _trigger_adapter() -> TypeAdapter[Any]:
    global _adapter
    if _adapter is None:
        _adapter = TypeAdapter(TriggerT)
    return _adapter


def _short(trigger: BaseTrigger[Any]) -> str:
    """`Every(seconds=0)`: the class and the fields given, for messages."""
    fields = trigger.model_dump(exclude_defaults=True, exclude={"type_"})
    return f"{type(trigger).__name__}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"


@functools.lru_cache(maxsize=1024)
def _is_legacy_class(cls: type) -> bool:
    """`BaseTrigger._is_legacy`, asked for every task of a schedule: cached per class."""
    provider = _owner(cls, "next_due")
    return any(
        owner is not provider and issubclass(owner, provider)
        for owner in (
            _owner(cls, "trigger_next"),
            _owner(cls, "get_waiting_time_till_next_trigger"),
        )
    )


@functools.lru_cache(maxsize=1024)
def _owner(cls: type, name: str) -> type:
    """The class in `cls`'s MRO that defines `name` (asked for every task of a large schedule:
    cached per class)."""
    return next(klass for klass in cls.__mro__ if name in vars(klass))
