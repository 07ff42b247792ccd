"""Wall-clock maths for the calendar triggers (`At`, `Cron`): from local times to POSIX instants.

A calendar trigger names wall-clock times in a time zone ("02:30 every day in Europe/Berlin").
`next_instant` turns such naive local times into instants, so that across daylight-saving changes
a job is never skipped, never run twice, and the search always ends:

- a *fixed* time (At, or a cron whose hour is fixed) that falls in the spring-forward gap runs
  once, at the instant of the jump; one in the repeated autumn hour runs once, on the first pass.
- a *periodic* time (a cron with a wildcard or stepped hour) keeps its real spacing: a time in the
  gap does not exist, a time in the repeated hour exists twice.
"""

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from math import floor
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["load_zone", "next_instant"]

Candidates = Callable[[datetime], Iterator[datetime]]
"""Given a naive local time, yield the matching naive local times after it, in increasing order."""

_HOUR = 3600.0
_SECOND = timedelta(seconds=1)
_WINDOW = 27 * _HOUR  # UTC offsets differ by at most 26 hours: look this far around an instant
_MAX_CANDIDATES = 500_000  # a bound on the search; real schedules stay far below it
_EPOCH = datetime(1970, 1, 1)


def load_zone(key: str) -> ZoneInfo:
    """The zone named `key`, or ValueError naming it."""
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"invalid time zone {key!r}") from None


def next_instant(
    zone: ZoneInfo, after: float, candidates: Candidates, *, fixed: bool
) -> float | None:
    """The smallest instant > `after` whose wall time in `zone` is one of `candidates`.

    `fixed` selects the daylight-saving rule (see the module docstring). Returns None when the
    candidates run out.
    """
    wall_after = after + _offset(zone, after)
    local_after = _local(zone, after)
    best = _scan(zone, after, candidates(local_after - _SECOND), None, fixed=fixed)
    # At an autumn change the wall clock runs back: local times before `local_after` come again,
    # but only from that change on, so they matter only when nothing earlier was found.
    rewinds = [
        change
        for change in _changes(zone, after, after + _WINDOW)
        if change + _offset(zone, change) < wall_after
    ]
    if rewinds and (best is None or best > rewinds[0]):
        lowest_wall = min(change + _offset(zone, change) for change in rewinds)
        start = local_after - timedelta(seconds=wall_after - lowest_wall) - _SECOND
        best = _scan(zone, after, candidates(start), best, fixed=fixed)
    return best


def _scan(
    zone: ZoneInfo,
    after: float,
    candidates: Iterator[datetime],
    best: float | None,
    *,
    fixed: bool,
) -> float | None:
    """Improve `best` with the instants of `candidates` that are > `after`."""
    horizon = float("inf") if best is None else _horizon(zone, after, best)
    for count, naive in enumerate(candidates):
        if _wall(naive) > horizon:
            break
        if count >= _MAX_CANDIDATES:
            raise RuntimeError(f"no next time found after {after} in {zone.key} within the bound")
        for instant in _instants(zone, naive, fixed=fixed):
            if instant > after and (best is None or instant < best):
                best = instant
                horizon = _horizon(zone, after, best)
    return best


def _horizon(zone: ZoneInfo, after: float, best: float) -> float:
    """The highest wall time (seconds) shown in (after, best]: later candidates map after best."""
    highest = best + _offset(zone, best)
    for change in _changes(zone, max(after, best - _WINDOW), best):
        highest = max(highest, change + _offset(zone, change - 1))  # just before the change
    return highest


def _instants(zone: ZoneInfo, naive: datetime, *, fixed: bool) -> tuple[float, ...]:
    """The instants at which the wall clock in `zone` shows `naive`: 0, 1 or 2 of them."""
    first = naive.replace(tzinfo=zone, fold=0).timestamp()
    second = naive.replace(tzinfo=zone, fold=1).timestamp()
    if first == second:
        return (first,)
    if first < second:  # the repeated autumn hour: `naive` happens twice
        return (first,) if fixed else (first, second)
    # The spring-forward gap: fold=0 reads it with the old offset (after the jump), fold=1 the new.
    return (_change_in(zone, second, first),) if fixed else ()


def _changes(zone: ZoneInfo, start: float, end: float) -> list[float]:
    """The instants in (start, end] where the UTC offset changes (at most one per hour)."""
    found = []
    low, low_offset = start, _offset(zone, start)
    while low < end:
        high = min(low + _HOUR, end)
        high_offset = _offset(zone, high)
        if high_offset != low_offset:
            found.append(_change_in(zone, low, high))
        low, low_offset = high, high_offset
    return found


def _change_in(zone: ZoneInfo, low: float, high: float) -> float:
    """The first whole second in (low, high] whose UTC offset differs from that at `low`.

    Offsets change on whole seconds, and the offset at `high` differs from that at `low`.
    """
    old = _offset(zone, low)
    low, high = floor(low), floor(high)
    while high - low > 1:
        middle = (low + high) // 2
        if _offset(zone, middle) == old:
            low = middle
        else:
            high = middle
    return float(high)


def _offset(zone: ZoneInfo, instant: float) -> float:
    offset = datetime.fromtimestamp(instant, zone).utcoffset()
    assert offset is not None  # a ZoneInfo always knows its offset
    return offset.total_seconds()


def _local(zone: ZoneInfo, instant: float) -> datetime:
    return datetime.fromtimestamp(instant, zone).replace(tzinfo=None, fold=0)


def _wall(naive: datetime) -> float:
    """A naive local time as seconds, read as if it were UTC (comparable to instant + offset)."""
    return (naive - _EPOCH).total_seconds()
