"""At and Cron: wall-clock schedules in a time zone, across weekdays and daylight-saving changes.

Expected times are written as local ISO strings: the UTC offset shows which side of a change
(or which pass of a repeated hour) a run falls on.

2026 changes used here:
- Europe/Berlin: spring 03-29 02:00 CET -> 03:00 CEST (01:00 UTC),
  autumn 10-25 03:00 CEST -> 02:00 CET (01:00 UTC).
- America/New_York: spring 03-08 02:00 EST -> 03:00 EDT (07:00 UTC),
  autumn 11-01 02:00 EDT -> 01:00 EST (06:00 UTC).
"""

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from aioclock.triggers import At, BaseTrigger, Cron

BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


def local(instant: float, tz: str) -> str:
    return datetime.fromtimestamp(instant, ZoneInfo(tz)).isoformat()


def run(trigger: BaseTrigger, now: float, count: int) -> list[float]:
    """The next `count` dues, as the engine consumes them (from a task's fresh schedule)."""
    schedule = trigger._new_schedule()
    dues = [schedule.advance(now) for _ in range(count)]
    assert None not in dues
    return dues  # type: ignore[return-value]


def run_local(trigger: BaseTrigger, now: float, count: int, tz: str) -> list[str]:
    return [local(due, tz) for due in run(trigger, now, count)]


# --- At: weekdays -------------------------------------------------------------------------------

WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
MONDAY = date(2026, 1, 5)


@pytest.mark.parametrize("start", range(7), ids=WEEKDAYS)
@pytest.mark.parametrize("target", range(7), ids=WEEKDAYS)
@pytest.mark.parametrize("hour_now", [9, 14, 20], ids=["before", "at", "after"])
def test_at_weekday_from_every_weekday(start: int, target: int, hour_now: int) -> None:
    """The next `every <target>` 14:00 from any weekday and time of day (at 14:00 exactly: next)."""
    trigger = At(hour=14, at=f"every {WEEKDAYS[target]}", tz="UTC")
    today = MONDAY + timedelta(days=start)
    now = utc(today.year, today.month, today.day, hour_now)
    days_ahead = (target - start) % 7
    if days_ahead == 0 and hour_now >= 14:
        days_ahead = 7
    expected = datetime.combine(today + timedelta(days=days_ahead), datetime.min.time())
    expected = expected.replace(hour=14, tzinfo=timezone.utc)
    assert trigger.next_due(now, None) == expected.timestamp()


def test_at_sunday_to_saturday_is_six_days() -> None:
    trigger = At(hour=14, at="every saturday", tz="UTC")
    sunday = utc(2026, 1, 11, 14)
    assert trigger.next_due(sunday, None) == sunday + 6 * 86400


@pytest.mark.parametrize(
    ("kwargs", "now", "previous", "expected"),
    [
        # every day, first run strictly after now
        ({"hour": 12}, utc(2026, 1, 1, 11, 59, 59), None, "2026-01-01T12:00:00+00:00"),
        ({"hour": 12}, utc(2026, 1, 1, 12), None, "2026-01-02T12:00:00+00:00"),
        ({"hour": 12}, utc(2026, 1, 1, 12, 0, 1), None, "2026-01-02T12:00:00+00:00"),
        (
            {"hour": 23, "minute": 59, "second": 59},
            utc(2026, 12, 31),
            None,
            "2026-12-31T23:59:59+00:00",
        ),
        ({}, utc(2026, 12, 31, 1), None, "2027-01-01T00:00:00+00:00"),
        # later runs come strictly after the previous one, whatever `now` says
        ({"hour": 12}, utc(2026, 1, 5), utc(2026, 1, 1, 12), "2026-01-02T12:00:00+00:00"),
        ({"hour": 12}, utc(2026, 1, 1), utc(2026, 1, 1, 12), "2026-01-02T12:00:00+00:00"),
        (
            {"hour": 12, "at": "every friday"},
            utc(2026, 1, 2),
            utc(2026, 1, 2, 12),
            "2026-01-09T12:00:00+00:00",
        ),
        # 29 February: a leap day is just a day
        ({"hour": 6, "at": "every sunday"}, utc(2032, 2, 28), None, "2032-02-29T06:00:00+00:00"),
    ],
)
def test_at_table_utc(kwargs: dict, now: float, previous: float | None, expected: str) -> None:
    trigger = At(tz="UTC", **kwargs)
    assert local(trigger.next_due(now, previous), "UTC") == expected  # type: ignore[arg-type]


def test_at_in_time_zone() -> None:
    trigger = At(hour=12, minute=30, tz="Asia/Kolkata")  # UTC+05:30
    assert run_local(trigger, utc(2026, 1, 1, 6), 2, "UTC") == [
        "2026-01-01T07:00:00+00:00",
        "2026-01-02T07:00:00+00:00",
    ]


def test_at_is_pure() -> None:
    trigger = At(hour=3, tz=BERLIN)
    first = trigger.next_due(utc(2026, 1, 1), None)
    assert trigger.next_due(utc(2026, 1, 1), None) == first
    assert trigger._current_loop_count == 0


# --- At across daylight-saving changes ----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "tz", "now", "expected"),
    [
        pytest.param(
            {"hour": 2, "minute": 30},
            BERLIN,
            utc(2026, 3, 27, 12),
            [
                "2026-03-28T02:30:00+01:00",
                "2026-03-29T03:00:00+02:00",  # 02:30 does not exist: once, right after the jump
                "2026-03-30T02:30:00+02:00",
                "2026-03-31T02:30:00+02:00",
            ],
            id="berlin-spring-gap",
        ),
        pytest.param(
            {"hour": 2, "minute": 30},
            NEW_YORK,
            utc(2026, 3, 6, 12),
            [
                "2026-03-07T02:30:00-05:00",
                "2026-03-08T03:00:00-04:00",
                "2026-03-09T02:30:00-04:00",
                "2026-03-10T02:30:00-04:00",
            ],
            id="new-york-spring-gap",
        ),
        pytest.param(
            {"hour": 2, "minute": 30},
            BERLIN,
            utc(2026, 10, 23, 12),
            [
                "2026-10-24T02:30:00+02:00",
                "2026-10-25T02:30:00+02:00",  # the repeated hour: first pass only
                "2026-10-26T02:30:00+01:00",
                "2026-10-27T02:30:00+01:00",
            ],
            id="berlin-autumn-repeat",
        ),
        pytest.param(
            {"hour": 1, "minute": 30},
            NEW_YORK,
            utc(2026, 10, 30, 12),
            [
                "2026-10-31T01:30:00-04:00",
                "2026-11-01T01:30:00-04:00",
                "2026-11-02T01:30:00-05:00",
                "2026-11-03T01:30:00-05:00",
            ],
            id="new-york-autumn-repeat",
        ),
        pytest.param(
            {"hour": 2, "minute": 30, "at": "every sunday"},
            BERLIN,
            utc(2026, 3, 20),
            ["2026-03-22T02:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-04-05T02:30:00+02:00"],
            id="berlin-weekly-on-spring-day",
        ),
        pytest.param(
            {"hour": 2, "at": "every sunday"},
            BERLIN,
            utc(2026, 10, 20),
            ["2026-10-25T02:00:00+02:00", "2026-11-01T02:00:00+01:00"],
            id="berlin-weekly-on-autumn-day",
        ),
        pytest.param(
            {"hour": 12},
            NEW_YORK,
            utc(2026, 3, 7),
            ["2026-03-07T12:00:00-05:00", "2026-03-08T12:00:00-04:00", "2026-03-09T12:00:00-04:00"],
            id="new-york-noon-unaffected",
        ),
        pytest.param(
            {"hour": 2, "minute": 30},
            BERLIN,
            utc(2026, 3, 29, 0, 59, 59),  # 01:59:59 CET, one second before the jump
            ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"],
            id="berlin-armed-just-before-jump",
        ),
        pytest.param(
            {"hour": 2, "minute": 30},
            BERLIN,
            utc(2026, 10, 25, 0, 10),  # 02:10 CEST, first pass
            ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"],
            id="berlin-armed-in-first-pass",
        ),
        pytest.param(
            {"hour": 2, "minute": 30},
            BERLIN,
            utc(2026, 10, 25, 1, 10),  # 02:10 CET, second pass: 02:30 already came today
            ["2026-10-26T02:30:00+01:00"],
            id="berlin-armed-in-second-pass",
        ),
    ],
)
def test_at_across_dst(kwargs: dict, tz: str, now: float, expected: list[str]) -> None:
    assert run_local(At(tz=tz, **kwargs), now, len(expected), tz) == expected


@pytest.mark.parametrize("tz", [BERLIN, NEW_YORK])
@pytest.mark.parametrize("hour", range(24))
def test_at_runs_once_a_day_around_both_changes(tz: str, hour: int) -> None:
    """Every hour of the day, through both changes: exactly one run per local day, none skipped."""
    for start in (utc(2026, 3, 5), utc(2026, 10, 22)):
        trigger = At(hour=hour, minute=30, tz=tz)
        dues = run(trigger, start, 14)
        assert dues == sorted(set(dues))
        days = [datetime.fromtimestamp(due, ZoneInfo(tz)).date() for due in dues]
        assert days == [days[0] + timedelta(days=i) for i in range(14)]


# --- Cron ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "now", "previous", "expected"),
    [
        ("0 12 * * *", utc(2026, 1, 1), None, "2026-01-01T12:00:00+00:00"),
        ("0 12 * * *", utc(2026, 1, 1, 12), None, "2026-01-02T12:00:00+00:00"),  # strictly after
        ("*/15 * * * *", utc(2026, 1, 1, 12, 5), None, "2026-01-01T12:15:00+00:00"),
        ("0 9 * * 1", utc(2026, 1, 1), None, "2026-01-05T09:00:00+00:00"),  # next Monday
        ("0 0 1 * *", utc(2026, 1, 15), None, "2026-02-01T00:00:00+00:00"),
        ("0 0 29 2 *", utc(2026, 3, 1), None, "2028-02-29T00:00:00+00:00"),
        ("@daily", utc(2026, 1, 1, 5), None, "2026-01-02T00:00:00+00:00"),
        ("@hourly", utc(2026, 1, 1, 5, 1), None, "2026-01-01T06:00:00+00:00"),
        # later runs: strictly after the previous one, even when `now` is past it
        ("0 * * * *", utc(2026, 1, 1, 10, 30), utc(2026, 1, 1, 8), "2026-01-01T09:00:00+00:00"),
        ("0 * * * *", utc(2026, 1, 1, 7), utc(2026, 1, 1, 8), "2026-01-01T09:00:00+00:00"),
    ],
)
def test_cron_table_utc(cron: str, now: float, previous: float | None, expected: str) -> None:
    trigger = Cron(cron=cron)  # tz defaults to UTC
    assert local(trigger.next_due(now, previous), "UTC") == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cron", "now", "expected"),
    [
        # six fields: seconds is the LAST field
        (
            "* * * * * */20",
            utc(2026, 1, 1, 12, 0, 5),
            ["12:00:20", "12:00:40", "12:01:00", "12:01:20"],
        ),
        ("30 12 * * * 15", utc(2026, 1, 1), ["12:30:15", "12:30:15"]),
        # every second of 12:00, said so: `0 12 * * * *` is refused as ambiguous (below)
        ("0 12 * * * 0-59", utc(2026, 1, 1, 11, 59, 58), ["12:00:00", "12:00:01", "12:00:02"]),
        ("* * * * * *", utc(2026, 1, 1, 11, 59, 58), ["11:59:59", "12:00:00", "12:00:01"]),
        # seconds first it would not be valid (hour 31): one reading only, not ambiguous
        ("59 23 31 12 * *", utc(2026, 12, 31, 23, 58), ["23:59:00", "23:59:01"]),
    ],
)
def test_cron_six_fields_seconds_last(cron: str, now: float, expected: list[str]) -> None:
    dues = run(Cron(cron=cron), now, len(expected))
    assert [datetime.fromtimestamp(d, timezone.utc).strftime("%H:%M:%S") for d in dues] == expected


@pytest.mark.parametrize(
    ("cron", "now", "expected"),
    [
        # Quartz and Spring order: second minute hour day month weekday
        ("0 3 * * * *", utc(2026, 1, 1), ["00:03:00", "01:03:00", "02:03:00"]),
        ("*/20 * * * * *", utc(2026, 1, 1, 12, 0, 5), ["12:00:20", "12:00:40", "12:01:00"]),
        ("15 30 12 * * *", utc(2026, 1, 1), ["12:30:15", "12:30:15"]),  # one a day
        ("0 0 12 * * MON", utc(2026, 1, 1), ["12:00:00"]),  # 2026-01-05, a Monday
        ("0 0 12 ? * MON-FRI", utc(2026, 1, 1), ["12:00:00", "12:00:00"]),
    ],
)
def test_cron_six_fields_seconds_first(cron: str, now: float, expected: list[str]) -> None:
    dues = run(Cron(cron=cron, seconds_first=True), now, len(expected))
    assert [datetime.fromtimestamp(d, timezone.utc).strftime("%H:%M:%S") for d in dues] == expected


def test_cron_seconds_first_every_hour_once() -> None:
    """Quartz's `0 3 * * * *`: once an hour, at minute 3 second 0, not 60 times at 03:00."""
    dues = run(Cron(cron="0 3 * * * *", seconds_first=True), utc(2026, 1, 1), 48)
    assert [due - utc(2026, 1, 1) for due in dues] == [3600 * h + 180 for h in range(48)]
    mondays = run(Cron(cron="0 0 12 * * MON", seconds_first=True), utc(2026, 1, 1), 2)
    assert [local(due, "UTC") for due in mondays] == [
        "2026-01-05T12:00:00+00:00",
        "2026-01-12T12:00:00+00:00",
    ]


def test_cron_seconds_first_fixed_hour_in_spring_gap() -> None:
    trigger = Cron(cron="30 0 2 * * *", tz=BERLIN, seconds_first=True)  # 02:00:30, fixed hour
    assert run_local(trigger, utc(2026, 3, 28, 12), 2, BERLIN) == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:00:30+02:00",
    ]


def test_cron_six_fields_in_spring_gap() -> None:
    trigger = Cron(cron="0 2 * * * 30", tz=BERLIN)  # 02:00:30, fixed hour
    assert run_local(trigger, utc(2026, 3, 28, 12), 2, BERLIN) == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:00:30+02:00",
    ]


def test_cron_in_time_zone() -> None:
    trigger = Cron(cron="0 12 * * *", tz="Asia/Kolkata")
    assert local(trigger.next_due(utc(2026, 1, 1), None), "UTC") == "2026-01-01T06:30:00+00:00"


def test_cron_sub_second_now() -> None:
    trigger = Cron(cron="* * * * * *")
    assert trigger.next_due(utc(2026, 1, 1) + 0.999999, None) == utc(2026, 1, 1, 0, 0, 1)
    assert trigger.next_due(utc(2026, 1, 1) + 0.5, None) == utc(2026, 1, 1, 0, 0, 1)


# --- Cron across daylight-saving changes --------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "tz", "now", "expected"),
    [
        pytest.param(
            "*/15 * * * *",
            BERLIN,
            utc(2026, 10, 25, 0, 40),
            [
                "2026-10-25T02:45:00+02:00",
                "2026-10-25T02:00:00+01:00",  # second pass: 15 real minutes later
                "2026-10-25T02:15:00+01:00",
                "2026-10-25T02:30:00+01:00",
                "2026-10-25T02:45:00+01:00",
                "2026-10-25T03:00:00+01:00",
            ],
            id="berlin-quarterly-autumn",
        ),
        pytest.param(
            "*/15 * * * *",
            NEW_YORK,
            utc(2026, 11, 1, 5, 40),
            [
                "2026-11-01T01:45:00-04:00",
                "2026-11-01T01:00:00-05:00",
                "2026-11-01T01:15:00-05:00",
                "2026-11-01T01:30:00-05:00",
                "2026-11-01T01:45:00-05:00",
                "2026-11-01T02:00:00-05:00",
            ],
            id="new-york-quarterly-autumn",
        ),
        pytest.param(
            "0 * * * *",
            BERLIN,
            utc(2026, 10, 24, 22, 30),
            [
                "2026-10-25T01:00:00+02:00",
                "2026-10-25T02:00:00+02:00",
                "2026-10-25T02:00:00+01:00",
                "2026-10-25T03:00:00+01:00",
            ],
            id="berlin-hourly-autumn",
        ),
        pytest.param(
            "0 * * * *",
            NEW_YORK,
            utc(2026, 11, 1, 3, 30),
            [
                "2026-11-01T00:00:00-04:00",
                "2026-11-01T01:00:00-04:00",
                "2026-11-01T01:00:00-05:00",
                "2026-11-01T02:00:00-05:00",
            ],
            id="new-york-hourly-autumn",
        ),
        pytest.param(
            "0 */2 * * *",
            BERLIN,
            utc(2026, 10, 24, 21),
            [
                "2026-10-25T00:00:00+02:00",
                "2026-10-25T02:00:00+02:00",
                "2026-10-25T02:00:00+01:00",  # a stepped hour keeps real time: both passes
                "2026-10-25T04:00:00+01:00",
            ],
            id="berlin-stepped-hour-autumn",
        ),
        pytest.param(
            "30 2 * * *",
            BERLIN,
            utc(2026, 10, 23, 12),
            [
                "2026-10-24T02:30:00+02:00",
                "2026-10-25T02:30:00+02:00",  # fixed hour: first pass only, and it terminates
                "2026-10-26T02:30:00+01:00",
                "2026-10-27T02:30:00+01:00",
            ],
            id="berlin-daily-in-repeated-hour",
        ),
        pytest.param(
            "30 1 * * *",
            NEW_YORK,
            utc(2026, 10, 30, 12),
            [
                "2026-10-31T01:30:00-04:00",
                "2026-11-01T01:30:00-04:00",
                "2026-11-02T01:30:00-05:00",
                "2026-11-03T01:30:00-05:00",
            ],
            id="new-york-daily-in-repeated-hour",
        ),
        pytest.param(
            "30 2 * * *",
            BERLIN,
            utc(2026, 10, 25, 0, 50),  # armed in the first pass, after 02:30
            ["2026-10-26T02:30:00+01:00", "2026-10-27T02:30:00+01:00"],
            id="berlin-daily-armed-in-repeated-hour",
        ),
        pytest.param(
            "30 2 * * *",
            BERLIN,
            utc(2026, 3, 27, 12),
            [
                "2026-03-28T02:30:00+01:00",
                "2026-03-29T03:00:00+02:00",  # in the gap: once, right after the jump
                "2026-03-30T02:30:00+02:00",
            ],
            id="berlin-daily-in-spring-gap",
        ),
        pytest.param(
            "30 2 * * *",
            NEW_YORK,
            utc(2026, 3, 6, 12),
            ["2026-03-07T02:30:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"],
            id="new-york-daily-in-spring-gap",
        ),
        pytest.param(
            "0,30 2 * * *",
            BERLIN,
            utc(2026, 3, 28, 23),
            ["2026-03-29T03:00:00+02:00", "2026-03-30T02:00:00+02:00", "2026-03-30T02:30:00+02:00"],
            id="berlin-two-times-in-gap-run-once",
        ),
        pytest.param(
            "*/15 * * * *",
            BERLIN,
            utc(2026, 3, 29, 0, 40),
            ["2026-03-29T01:45:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T03:15:00+02:00"],
            id="berlin-quarterly-spring",
        ),
        pytest.param(
            "*/15 * * * *",
            NEW_YORK,
            utc(2026, 3, 8, 6, 40),
            ["2026-03-08T01:45:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-08T03:15:00-04:00"],
            id="new-york-quarterly-spring",
        ),
        pytest.param(
            "30 * * * *",
            BERLIN,
            utc(2026, 3, 28, 23, 40),
            ["2026-03-29T01:30:00+01:00", "2026-03-29T03:30:00+02:00"],  # 02:30 does not exist
            id="berlin-hourly-spring",
        ),
    ],
)
def test_cron_across_dst(cron: str, tz: str, now: float, expected: list[str]) -> None:
    assert run_local(Cron(cron=cron, tz=tz), now, len(expected), tz) == expected


CHANGES = {
    BERLIN: [utc(2026, 3, 29, 1), utc(2026, 10, 25, 1)],
    NEW_YORK: [utc(2026, 3, 8, 7), utc(2026, 11, 1, 6)],
}


@pytest.mark.parametrize("tz", [BERLIN, NEW_YORK])
@pytest.mark.parametrize(("cron", "spacing"), [("*/15 * * * *", 900), ("0 * * * *", 3600)])
def test_cron_wildcard_hour_keeps_real_spacing(tz: str, cron: str, spacing: int) -> None:
    for change in CHANGES[tz]:
        dues = run(Cron(cron=cron, tz=tz), change - 3 * 3600 - 1, 6 * 3600 // spacing)
        assert {later - earlier for earlier, later in zip(dues, dues[1:], strict=False)} == {
            spacing
        }
        assert dues[0] == change - 3 * 3600


@pytest.mark.parametrize("tz", [BERLIN, NEW_YORK])
@pytest.mark.parametrize("hour", range(24))
def test_cron_fixed_hour_once_a_day_around_both_changes(tz: str, hour: int) -> None:
    """A daily cron at any hour: one run per local day over consecutive days, none skipped."""
    for change in CHANGES[tz]:
        trigger = Cron(cron=f"15 {hour} * * *", tz=tz)
        dues = run(trigger, change - 4 * 86400, 8)
        assert dues == sorted(set(dues))
        days = [datetime.fromtimestamp(due, ZoneInfo(tz)).date() for due in dues]
        assert days == [days[0] + timedelta(days=i) for i in range(8)]


@pytest.mark.parametrize("tz", [BERLIN, NEW_YORK])
def test_cron_every_minute_through_autumn_counts_every_real_minute(tz: str) -> None:
    """`* * * * *` across the autumn change: one run per real minute, through both passes."""
    change = CHANGES[tz][1]
    trigger = Cron(cron="* * * * *", tz=tz)
    start = change - 12 * 3600
    dues = run(trigger, start, 25 * 60)
    assert dues == [start + 60 * (i + 1) for i in range(25 * 60)]
