"""Validation messages, pickling, legacy (upstream-style) triggers, upstream-compat methods."""

import asyncio
import doctest
import math
import pickle
from datetime import datetime, timedelta, timezone
from typing import Literal

import pytest
from pydantic import TypeAdapter, ValidationError

import aioclock.triggers
from aioclock.triggers import (
    At,
    BaseTrigger,
    Cron,
    Every,
    Forever,
    LoopController,
    Once,
    OnShutDown,
    OnStartUp,
    OrTrigger,
    Triggers,
    TriggerT,
)

NOW = datetime(2026, 1, 1, 6, tzinfo=timezone.utc)  # a Thursday


class Legacy(LoopController[Literal["LEGACY"]]):
    """Written against upstream: overrides trigger_next only."""

    type_: Literal["LEGACY"] = "LEGACY"

    async def trigger_next(self) -> None:
        self._increment_loop_counter()


class LegacyFull(BaseTrigger[Literal["LEGACY_FULL"]]):
    """Upstream's documented custom trigger: should_trigger, trigger_next, get_waiting_time."""

    type_: Literal["LEGACY_FULL"] = "LEGACY_FULL"

    def should_trigger(self) -> bool:
        return True

    async def trigger_next(self) -> None:
        return None

    async def get_waiting_time_till_next_trigger(self):  # type: ignore[override]
        return 0


class LegacyWaitOnly(LoopController[Literal["LEGACY_WAIT"]]):
    type_: Literal["LEGACY_WAIT"] = "LEGACY_WAIT"

    async def get_waiting_time_till_next_trigger(self, now=None):  # type: ignore[override]
        return 0


class LegacyEvery(Every):
    async def trigger_next(self) -> None:
        self._increment_loop_counter()


class Modern(BaseTrigger[Literal["MODERN"]]):
    type_: Literal["MODERN"] = "MODERN"

    def next_due(self, now: float, previous: float | None) -> float | None:
        return now + 1


class ModernWithCompat(Modern):
    def next_due(self, now: float, previous: float | None) -> float | None:
        return now + 2

    async def trigger_next(self) -> None:  # both in one class: next_due drives it
        await super().trigger_next()


# --- validation ---------------------------------------------------------------------------------

BAD_INPUT = [
    (Every, {"seconds": -1}, ["seconds must be >= 0, got -1"]),
    (Every, {"minutes": -0.5}, ["minutes must be >= 0, got -0.5"]),
    (Every, {"hours": math.nan}, ["hours must be a finite number, got nan"]),
    (Every, {"days": math.inf}, ["days must be a finite number, got inf"]),
    (Every, {"weeks": -math.inf}, ["weeks must be a finite number, got -inf"]),
    (Every, {"seconds": "soon"}, ["seconds", "soon"]),
    (Every, {}, ["at least one of seconds, minutes, hours, days or weeks"]),
    (Every, {"weeks": 1e308}, ["period of Every must be finite"]),
    (Every, {"seconds": 1, "first_run_strategy": "later"}, ["first_run_strategy", "later"]),
    (Every, {"seconds": 1, "max_loop_count": 0}, ["max_loop_count", "input_value=0"]),
    (Every, {"seconds": 1, "max_loop_count": -3}, ["max_loop_count", "input_value=-3"]),
    (At, {"hour": 24, "tz": "UTC"}, ["hour must be between 0 and 23, got 24"]),
    (At, {"hour": -1, "tz": "UTC"}, ["hour must be between 0 and 23, got -1"]),
    (At, {"minute": 60, "tz": "UTC"}, ["minute must be between 0 and 59, got 60"]),
    (At, {"second": 60, "tz": "UTC"}, ["second must be between 0 and 59, got 60"]),
    (At, {"second": -1, "tz": "UTC"}, ["second must be between 0 and 59, got -1"]),
    (At, {"hour": 1.5, "tz": "UTC"}, ["hour", "1.5"]),
    (At, {"at": "every funday", "tz": "UTC"}, ["at", "every funday"]),
    (At, {"tz": "Mars/Base"}, ["invalid time zone 'Mars/Base'"]),
    (At, {"tz": ""}, ["invalid time zone ''"]),
    (At, {"tz": "America"}, ["invalid time zone 'America'"]),
    (At, {"tz": "/etc/passwd"}, ["invalid time zone '/etc/passwd'"]),
    (At, {}, ["tz", "Field required"]),
    (At, {"tz": "UTC", "max_loop_count": 0}, ["max_loop_count", "input_value=0"]),
    (
        Cron,
        {"cron": "* * * *"},
        ["cron must have 5 fields, or 6 with seconds last, got 4 in '* * * *'"],
    ),
    (Cron, {"cron": "* * * * * * *"}, ["got 7 in '* * * * * * *'"]),
    (Cron, {"cron": ""}, ["got 0 in ''"]),
    (Cron, {"cron": "60 * * * *"}, ["invalid cron expression '60 * * * *'"]),
    (Cron, {"cron": "* 24 * * *"}, ["invalid cron expression '* 24 * * *'"]),
    (Cron, {"cron": "*/0 * * * *"}, ["invalid cron expression '*/0 * * * *'"]),
    (Cron, {"cron": "@reboot"}, ["invalid cron expression '@reboot'"]),
    (Cron, {"cron": "0 0 31 2 *"}, ["cron expression '0 0 31 2 *' never fires"]),
    (Cron, {"cron": "* * * * *", "tz": "Mars/Base"}, ["invalid time zone 'Mars/Base'"]),
    (Cron, {}, ["cron", "Field required"]),
    (Cron, {"cron": "* * * * *", "max_loop_count": 0}, ["max_loop_count", "input_value=0"]),
    (Once, {"max_loop_count": 2}, ["max_loop_count", "input_value=2"]),
    (OnStartUp, {"max_loop_count": 2}, ["max_loop_count", "input_value=2"]),
    (OnShutDown, {"max_loop_count": 2}, ["max_loop_count", "input_value=2"]),
    (OrTrigger, {"triggers": []}, ["triggers of OrTrigger must not be empty, got []"]),
    (OrTrigger, {}, ["triggers", "Field required"]),
    (OrTrigger, {"triggers": ["soon"]}, ["triggers.0", "soon"]),
    (OrTrigger, {"triggers": [OnStartUp()]}, ["OrTrigger cannot contain OnStartUp"]),
    (OrTrigger, {"triggers": [OnShutDown()]}, ["OrTrigger cannot contain OnShutDown"]),
    (
        OrTrigger,
        {"triggers": [Forever()]},
        ["OrTrigger cannot contain Forever(): it waits for the previous run to end"],
    ),
    (
        OrTrigger,
        {"triggers": [Every(seconds=0)]},
        ["OrTrigger cannot contain Every(seconds=0): it waits"],
    ),
    (OrTrigger, {"triggers": [Legacy()]}, ["OrTrigger cannot contain Legacy", "trigger_next"]),
    (
        OrTrigger,
        {"triggers": [Every(seconds=1)], "max_loop_count": 0},
        ["max_loop_count", "input_value=0"],
    ),
    # Misspelt or unknown fields fail, naming the field (and the one meant, where it is close).
    (At, {"hour": 3, "minuts": 30, "tz": "UTC"}, ["no field 'minuts'", "did you mean 'minute'?"]),
    (Cron, {"cron": "0 3 * * *", "timezone": "Europe/Berlin"}, ["no field 'timezone'", "tz"]),
    (
        Every,
        {"seconds": 5, "first_run": "immediate"},
        ["Every has no field 'first_run'", "did you mean 'first_run_strategy'?"],
    ),
    (Once, {"max_loops": 1}, ["Once has no field 'max_loops'", "'max_loop_count'"]),
    (Forever, {"seconds": 1}, ["Forever has no field 'seconds'"]),
    (
        OrTrigger,
        {"triggers": [{"type_": "EVERY", "second": 1}]},
        ["no field 'second'", "did you mean 'seconds'?"],
    ),
    # Six fields whose two readings differ, the seconds-last one firing every second of a minute.
    (
        Cron,
        {"cron": "0 3 * * * *"},
        [
            "cron expression '0 3 * * * *' is ambiguous",
            "minute=0 hour=3 day=* month=* weekday=* second=*",
            "second=0 minute=3 hour=* day=* month=* weekday=*",
            "seconds_first=True",
            "0-59",
        ],
    ),
    (Cron, {"cron": "*/5 * * * * *"}, ["'*/5 * * * * *' is ambiguous", "seconds_first=True"]),
    (Cron, {"cron": "0 0 12 * * *"}, ["'0 0 12 * * *' is ambiguous"]),
    (
        Cron,
        {"cron": "0 0 12 * * MON"},
        ["invalid cron expression '0 0 12 * * MON'", "valid with seconds first", "seconds_first"],
    ),
    (
        Cron,
        {"cron": "*/5 * * * *", "seconds_first": True},
        ["seconds_first=True needs 6 fields", "got 5 in '*/5 * * * *'"],
    ),
    (Cron, {"cron": "@daily", "seconds_first": True}, ["seconds_first=True needs 6 fields"]),
    (Cron, {"cron": "0 61 * * * *", "seconds_first": True}, ["invalid cron expression"]),
    # A bool is not a number, though pydantic reads True as 1.
    (Every, {"seconds": True}, ["seconds must be a number, not a bool, got True"]),
    (Every, {"seconds": 1, "minutes": False}, ["minutes must be a number, not a bool, got False"]),
    (
        Every,
        {"seconds": 1, "max_loop_count": True},
        ["max_loop_count must be a number, not a bool"],
    ),
    (At, {"hour": True, "tz": "UTC"}, ["hour must be a number, not a bool, got True"]),
    (At, {"minute": True, "tz": "UTC"}, ["minute must be a number, not a bool, got True"]),
    (At, {"second": False, "tz": "UTC"}, ["second must be a number, not a bool, got False"]),
    (At, {"tz": "UTC", "max_loop_count": True}, ["max_loop_count must be a number, not a bool"]),
    (Cron, {"cron": "* * * * *", "max_loop_count": True}, ["max_loop_count must be a number"]),
    (Once, {"max_loop_count": True}, ["max_loop_count must be a number, not a bool, got True"]),
    (
        OrTrigger,
        {"triggers": [Once()], "max_loop_count": True},
        ["max_loop_count must be a number, not a bool"],
    ),
]


@pytest.mark.parametrize(
    ("cls", "kwargs", "fragments"),
    BAD_INPUT,
    ids=[f"{cls.__name__}-{kwargs}" for cls, kwargs, _ in BAD_INPUT],
)
def test_bad_input_names_field_and_value(cls: type, kwargs: dict, fragments: list[str]) -> None:
    with pytest.raises(ValidationError) as caught:
        cls(**kwargs)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_unknown_fields_fail_when_parsed_from_a_dict() -> None:
    with pytest.raises(ValidationError, match="At has no field 'minuts'"):
        TypeAdapter(TriggerT).validate_python({"type_": "AT", "minuts": 30, "tz": "UTC"})


class WithOwnFields(LoopController[Literal["OWN"]]):
    """A user's trigger with fields of its own."""

    type_: Literal["OWN"] = "OWN"
    offset: float = 0.0
    label: str = ""

    def next_due(self, now: float, previous: float | None) -> float | None:
        return now + 1 + self.offset


@pytest.mark.parametrize(
    "build",
    [
        lambda: Every(seconds=1.5),
        lambda: Every(seconds=2, minutes=0.5, max_loop_count=3),
        lambda: Every(type_="EVERY", seconds=1),
        lambda: Every(type_=Triggers.EVERY, seconds=1, expected_trigger_time=NOW),
        lambda: Once(max_loop_count=1),
        lambda: At(type_="AT", hour=3, minute=30, second=15, tz="UTC"),
        lambda: Cron(type_="CRON", cron="0 3 * * *", tz="Europe/Berlin"),
        lambda: TypeAdapter(TriggerT).validate_python({"type_": "EVERY", "seconds": 5}),
        lambda: TypeAdapter(TriggerT).validate_json('{"type_": "AT", "hour": 3, "tz": "UTC"}'),
        lambda: OrTrigger(triggers=[{"type_": "EVERY", "seconds": 2}, Once()]),
        lambda: WithOwnFields(offset=2.5, label="mine", max_loop_count=2),
    ],
)
def test_upstreams_inputs_still_build(build) -> None:
    trigger = build()
    assert type(trigger).model_validate(trigger.model_dump()) == trigger


def test_or_rejects_the_same_instance_twice() -> None:
    every = Every(seconds=1)
    with pytest.raises(ValidationError, match=r"the same trigger twice: Every\(seconds=1\)"):
        OrTrigger(triggers=[every, every])


@pytest.mark.parametrize(
    "build",
    [
        lambda: Every(seconds=0),
        lambda: Every(seconds=0.5, minutes=2, first_run_strategy="immediate"),
        lambda: At(hour=23, minute=59, second=59, at="every sunday", tz="Asia/Kolkata"),
        lambda: Cron(cron="@daily"),
        lambda: Cron(cron="0 12 * * * 30", tz="Europe/Berlin"),
        lambda: Cron(cron="0 3 * * * *", tz="Europe/Berlin", seconds_first=True),
        lambda: OrTrigger(triggers=[Every(seconds=1), Once()]),
    ],
    ids=["every-0", "every-mixed", "at", "cron-alias", "cron-seconds", "cron-quartz", "or"],
)
def test_good_input_builds_and_round_trips(build) -> None:
    trigger: BaseTrigger = build()  # built here: bad input fails this test, not collection
    assert type(trigger).model_validate(trigger.model_dump()) == trigger


def test_type_names_are_upstreams() -> None:
    types = [Every(seconds=1), At(tz="UTC"), Cron(cron="* * * * *"), Once(), Forever()]
    types += [OnStartUp(), OnShutDown(), OrTrigger(triggers=[Once()])]
    assert [t.type_ for t in types] == [
        "EVERY",
        "AT",
        "CRON",
        "ONCE",
        "FOREVER",
        "ON_START_UP",
        "ON_SHUT_DOWN",
        "OR",
    ]
    assert str(Triggers.EVERY) == "EVERY"


# --- state: pickling and dumping ----------------------------------------------------------------


@pytest.mark.parametrize(
    "factory",
    [
        lambda: Every(seconds=0.1, max_loop_count=50),
        lambda: At(hour=2, minute=30, tz="Europe/Berlin", max_loop_count=5),
        lambda: Cron(cron="*/15 * * * *", tz="America/New_York"),
        lambda: OrTrigger(
            triggers=[Every(seconds=2, max_loop_count=3), Modern()], max_loop_count=9
        ),
        lambda: Forever(),
    ],
    ids=["every", "at", "cron", "or", "forever"],
)
def test_pickle_round_trip_keeps_state(factory) -> None:
    original = factory()
    now = NOW.timestamp()
    for _ in range(3):
        original._advance(now)
    copy = pickle.loads(pickle.dumps(original))
    assert copy == original
    assert copy.model_dump() == original.model_dump()
    assert [copy._advance(now) for _ in range(4)] == [original._advance(now) for _ in range(4)]
    assert getattr(copy, "_current_loop_count", None) == getattr(
        original, "_current_loop_count", None
    )


def test_a_shallow_copy_does_not_share_the_upstream_schedule() -> None:
    original = Every(seconds=1, max_loop_count=2)
    original._advance(0.0)
    copy = original.model_copy()
    assert [copy._advance(0.0) for _ in range(3)] == [1.0, 2.0, None]  # its own, afresh
    assert original._current_loop_count == 1


def test_serving_state_is_not_in_the_trigger() -> None:
    """Schedules made for tasks leave the trigger as declared: equal, dumped the same."""
    trigger = OrTrigger(triggers=[Every(seconds=2), Modern()])
    fresh = OrTrigger(triggers=[Every(seconds=2), Modern()])
    schedule = trigger._new_schedule()
    assert [schedule.advance(now) for now in (0.0, 1.0)] == [1.0, 2.0]
    assert trigger == fresh
    assert trigger.model_dump() == fresh.model_dump()
    assert trigger._peek(0.0) == 1.0 and trigger._current_loop_count == 0


def test_expected_trigger_time_is_a_field() -> None:
    trigger = Every(seconds=1)
    assert trigger.expected_trigger_time is None
    trigger.expected_trigger_time = NOW
    assert trigger.model_dump()["expected_trigger_time"] == NOW
    assert pickle.loads(pickle.dumps(trigger)).expected_trigger_time == NOW


# --- legacy triggers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "legacy"),
    [
        (Legacy, True),
        (LegacyFull, True),
        (LegacyWaitOnly, True),
        (LegacyEvery, True),
        (Modern, False),
        (ModernWithCompat, False),
        (Every, False),
        (At, False),
        (Cron, False),
        (Once, False),
        (Forever, False),
        (OnStartUp, False),
        (OnShutDown, False),
        (OrTrigger, False),
    ],
)
def test_is_legacy(cls: type, legacy: bool) -> None:
    assert cls._is_legacy() is legacy


async def test_legacy_trigger_runs_upstreams_loop() -> None:
    trigger = Legacy(max_loop_count=3)
    runs = 0
    while trigger.should_trigger():
        assert await trigger.get_waiting_time_till_next_trigger() == 0
        await trigger.trigger_next()
        runs += 1
    assert runs == 3
    assert await trigger.get_waiting_time_till_next_trigger() is None


async def test_legacy_with_waiting_time_only_counts_in_default_trigger_next() -> None:
    trigger = LegacyWaitOnly(max_loop_count=2)
    await trigger.trigger_next()
    await trigger.trigger_next()
    assert not trigger.should_trigger()


def test_legacy_without_next_due_raises_when_driven_by_next_due() -> None:
    with pytest.raises(NotImplementedError, match="LegacyFull must implement next_due"):
        LegacyFull()._advance(0.0)


# --- upstream-compat methods --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trigger", "now", "expected"),
    [
        (Every(seconds=5), NOW, 5.0),
        (Every(seconds=5, first_run_strategy="immediate"), NOW, 0.0),
        (Every(minutes=2), NOW, 120.0),
        (Once(), NOW, 0.0),
        (OnStartUp(), NOW, 0.0),
        (Forever(), NOW, 0.0),
        (At(hour=12, tz="Asia/Kolkata"), NOW, 30 * 60.0),  # 06:00 UTC is 11:30 IST
        (At(hour=12, tz="Asia/Kolkata"), datetime(2026, 1, 1, 11, 30), 30 * 60.0),  # naive: in tz
        (
            At(hour=14, at="every saturday", tz="UTC"),
            datetime(2026, 1, 4, 14, tzinfo=timezone.utc),
            6 * 86400.0,
        ),
        (At(hour=6, tz="UTC"), NOW, 86400.0),  # due now: the next one is tomorrow
        (Cron(cron="*/15 * * * *"), NOW + timedelta(minutes=5), 600.0),
        (Cron(cron="0 9 * * *", tz="Europe/Berlin"), NOW, 2 * 3600.0),
        (OrTrigger(triggers=[Every(seconds=50), Every(seconds=30)]), NOW, 30.0),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseTrigger) else None,
)
async def test_get_waiting_time(trigger: BaseTrigger, now: datetime, expected: float) -> None:
    assert await trigger.get_waiting_time_till_next_trigger(now) == expected
    assert await trigger.get_waiting_time_till_next_trigger(now=now) == expected  # consumed nothing


async def test_get_waiting_time_real_clock() -> None:
    waiting = await Every(seconds=10).get_waiting_time_till_next_trigger()
    assert waiting == pytest.approx(10.0, abs=1.0)


async def test_get_waiting_time_when_ended() -> None:
    trigger = Once()
    await trigger.trigger_next()
    assert await trigger.get_waiting_time_till_next_trigger(NOW) is None
    assert not trigger.should_trigger()


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """Record asyncio.sleep calls from the triggers instead of sleeping."""
    recorded: list[float] = []

    async def fake_sleep(delay: float) -> None:
        recorded.append(delay)

    monkeypatch.setattr(aioclock.triggers.asyncio, "sleep", fake_sleep)
    return recorded


async def test_trigger_next_counts_and_sleeps_until_due(sleeps: list[float]) -> None:
    trigger = Every(seconds=10, max_loop_count=2)
    await trigger.trigger_next()
    await trigger.trigger_next()  # fixed rate: the second is due 20 s after the start
    assert trigger._current_loop_count == 2
    assert sleeps == [pytest.approx(10.0, abs=1.0), pytest.approx(20.0, abs=1.0)]
    assert not trigger.should_trigger()


async def test_trigger_next_without_wait(sleeps: list[float]) -> None:
    for trigger in (Once(), Forever(), Every(seconds=3, first_run_strategy="immediate")):
        await trigger.trigger_next()
    assert sleeps == []


async def test_upstream_task_loop(sleeps: list[float]) -> None:
    """The loop of upstream's Task.run, on a built-in trigger."""
    trigger = At(hour=3, tz="UTC", max_loop_count=3)
    runs = 0
    while trigger.should_trigger():
        waiting = await trigger.get_waiting_time_till_next_trigger()
        assert waiting is not None
        await trigger.trigger_next()
        runs += 1
    assert runs == 3
    assert sleeps[1] - sleeps[0] == pytest.approx(86400.0, abs=1.0)


async def test_trigger_next_really_sleeps() -> None:
    trigger = Every(seconds=0.01, max_loop_count=1)
    await asyncio.wait_for(trigger.trigger_next(), timeout=5)
    assert trigger._current_loop_count == 1


def test_docstring_examples_run() -> None:
    failed, attempted = doctest.testmod(aioclock.triggers)
    assert attempted > 10
    assert failed == 0
