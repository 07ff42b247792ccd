"""Schedule state: how far one task has got through its trigger's occurrences.

A trigger is a declaration ("every 10 s, 3 times"); it holds no progress. The engine asks each
trigger for a fresh `Schedule` per task (`trigger._new_schedule()`) and advances that one, so a
trigger object shared by several tasks gives each task its whole schedule. A `Schedule` keeps the
previous due time, the count of occurrences, whether it ended, and what its kind needs besides
(`FixedRate`: the anchor of its grid; `Earliest`: the pending due of each inner schedule).

These are plain slotted objects: the dispatcher advances one per fire, so reading and writing
their state must cost no more than an attribute access.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any, Protocol

__all__ = ["COINCIDENT", "Earliest", "FixedRate", "NextDue", "Schedule"]

#: Inner dues of an `Earliest` schedule this close (seconds) are one occurrence.
COINCIDENT = 1e-6


class NextDue(Protocol):
    """What a schedule needs of its trigger: the pure next-due maths."""

    def next_due(self, now: float, previous: float | None) -> float | None: ...


class Schedule:
    """The occurrences of one trigger consumed so far; asks `trigger.next_due(now, previous)`.

    Args:
        trigger: Whose `next_due` is asked.
        limit: How many occurrences at most (`max_loop_count`); None for no limit.
        gate: Asked before each occurrence where a trigger overrides `should_trigger`;
            False means no occurrence now.
    """

    __slots__ = ("trigger", "limit", "gate", "previous", "count", "ended")

    def __init__(
        self,
        trigger: NextDue,
        limit: int | None = None,
        gate: Callable[[], bool] | None = None,
    ) -> None:
        self.trigger = trigger
        self.limit = limit
        self.gate = gate
        self.previous: float | None = None  # due time of the last occurrence consumed
        self.count = 0  # occurrences consumed (and upstream's `_increment_loop_counter` calls)
        self.ended = False  # the trigger said never again

    def alive(self) -> bool:
        """Whether another occurrence may come (the trigger may still say never)."""
        limit = self.limit
        return not self.ended and (limit is None or self.count < limit)

    def advance(self, now: float) -> float | None:
        """Consume the next occurrence and return its due time; None when there is none."""
        if not self.alive() or (self.gate is not None and not self.gate()):
            return None
        due = self._next(now)
        if due is None:
            self.ended = True
            return None
        self._consume(now, due)
        return due

    def peek(self, now: float) -> float | None:
        """The due time `advance(now)` would return, consuming nothing."""
        if not self.alive() or (self.gate is not None and not self.gate()):
            return None
        return self._next(now)

    def _next(self, now: float) -> float | None:
        return self.trigger.next_due(now, self.previous)

    def _consume(self, now: float, due: float) -> None:
        self.previous = due
        self.count += 1

    def progress(self) -> tuple[Any, ...]:
        """Where this schedule is, without its trigger: `restore` on a fresh schedule of the same
        trigger (in another process, say) continues from here.

        >>> from aioclock import Every
        >>> schedule = Every(seconds=10)._new_schedule()
        >>> schedule.advance(100.0), schedule.advance(100.0)
        (110.0, 120.0)
        >>> copy = Every(seconds=10)._new_schedule()
        >>> copy.restore(schedule.progress())
        >>> copy.advance(200.0)
        130.0
        """
        return _read_moving(type(self))(self)

    def restore(self, progress: tuple[Any, ...]) -> None:
        """Continue from `progress` (see `progress`); ValueError if it is another kind's."""
        self._restore_slots(_moving(type(self)), progress)

    def _restore_slots(self, names: list[str], values: tuple[Any, ...]) -> None:
        if len(values) != len(names):
            raise ValueError(f"the progress of another kind of schedule than {type(self).__name__}")
        for name, value in zip(names, values, strict=True):
            setattr(self, name, value)

    def __eq__(self, other: object) -> bool:
        """Same kind, same progress (the trigger itself is not compared)."""
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in _progress(type(self)))

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        state = ", ".join(f"{name}={getattr(self, name)!r}" for name in _progress(type(self)))
        return f"{type(self).__name__}({state})"


class FixedRate(Schedule):
    """`Every`'s schedule: occurrence k is due at anchor + k * period, the anchor being the time
    the schedule was first advanced; a period of 0 is due whenever asked (after each run)."""

    __slots__ = ("period", "immediate", "anchor", "step")

    def __init__(self, trigger: NextDue, limit: int | None, period: float, immediate: bool):
        super().__init__(trigger, limit)
        self.period = period
        self.immediate = immediate
        self.anchor: float | None = None
        self.step = 0  # the grid index of the previous occurrence

    def advance(self, now: float) -> float | None:
        # The dispatcher's path for every fire of an `Every`: inlined, attribute reads only.
        limit = self.limit
        if self.ended or (limit is not None and self.count >= limit):
            return None
        period = self.period
        anchor = self.anchor
        if period == 0:
            due = now
        elif anchor is None:
            self.anchor = now
            self.step = step = 0 if self.immediate else 1
            due = now + step * period
        else:
            self.step = step = self.step + 1
            due = anchor + step * period
        self.previous = due
        self.count += 1
        return due

    def shift(self, seconds: float) -> None:
        """Move the grid by `seconds` (the wall clock was set): the period between runs stays."""
        if self.anchor is not None:
            self.anchor += seconds
        if self.previous is not None:
            self.previous += seconds

    def skip_to(self, now: float) -> float | None:
        """Consume the occurrences before `now` (counted, not fired) and return the first from
        `now` on; None if `max_loop_count` ends it first. (A node joining a cluster: the grid
        is the cluster's, the occurrences before it joined were the others'.)"""
        assert self.anchor is not None and self.period > 0
        previous = self.previous if self.previous is not None else self.anchor
        steps = math.ceil((now - previous) / self.period - COINCIDENT)
        if steps <= 0:  # the last one consumed is from `now` on already
            return previous
        limit = self.limit
        if limit is not None and self.count + steps > limit:
            self.ended = True
            return None
        self.step += steps
        self.count += steps
        due = self.previous = self.anchor + self.step * self.period
        return due

    def _next(self, now: float) -> float | None:
        period = self.period
        if period == 0:
            return now
        if self.anchor is None:
            return now if self.immediate else now + period
        return self.anchor + (self.step + 1) * period


class Earliest(Schedule):
    """`OrTrigger`'s schedule: the earliest due of its inner schedules, each kept on its own.

    An inner schedule starts when the outer one is first advanced; inner dues that coincide
    (within `COINCIDENT`) are one occurrence. It ends when every inner one has ended.
    """

    __slots__ = ("inners", "pending")

    def __init__(
        self,
        trigger: NextDue,
        limit: int | None,
        inners: Sequence[Schedule],
        gate: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__(trigger, limit, gate)
        self.inners = list(inners)
        self.pending: list[float | None] = [None] * len(self.inners)  # armed due per inner

    def alive(self) -> bool:
        if not super().alive():
            return False
        return any(
            due is not None or inner.alive()
            for inner, due in zip(self.inners, self.pending, strict=True)
        )

    def progress(self) -> tuple[Any, ...]:
        base = _read_moving(Schedule)(self)
        inners = tuple(inner.progress() for inner in self.inners)
        return (*base, tuple(self.pending), inners)

    def restore(self, progress: tuple[Any, ...]) -> None:
        *base, pending, inners = progress
        if len(inners) != len(self.inners) or len(pending) != len(self.inners):
            raise ValueError("the progress of an OrTrigger with other inner triggers")
        for inner, inner_progress in zip(self.inners, inners, strict=True):
            inner.restore(inner_progress)
        self._restore_slots(_moving(Schedule), tuple(base))
        self.pending = list(pending)

    def _next(self, now: float) -> float | None:
        dues = [
            inner.peek(now) if due is None else due
            for inner, due in zip(self.inners, self.pending, strict=True)
        ]
        return min((due for due in dues if due is not None), default=None)

    def shift_inner_grids(self, seconds: float, armed: float | None) -> bool:
        """The wall clock was set: move the grids of its `Every` schedules (and the dues they
        have pending) with it; whether the armed due, if it came from one, moves too."""
        moves = False
        for index, inner in enumerate(self.inners):
            if not isinstance(inner, FixedRate) or inner.period <= 0:
                continue
            if armed is not None and inner.previous is not None:
                moves = moves or abs(inner.previous - armed) <= COINCIDENT  # (this grid's)
            inner.shift(seconds)
            pending = self.pending[index]
            if pending is not None:
                self.pending[index] = pending + seconds
        if moves and self.previous is not None:
            self.previous += seconds
        return moves

    def _consume(self, now: float, due: float) -> None:
        pending = self.pending
        for index, inner in enumerate(self.inners):
            if pending[index] is None:  # arm it: its schedule starts now and is kept from here
                pending[index] = inner.advance(now)
            armed = pending[index]
            if armed is not None and armed - due <= COINCIDENT:
                pending[index] = None
        super()._consume(now, due)


def _progress(cls: type) -> list[str]:
    """The slots of `cls` that hold progress, for equality and repr."""
    names = [name for klass in reversed(cls.__mro__) for name in getattr(klass, "__slots__", ())]
    return [name for name in names if name not in ("trigger", "gate")]


#: Slots that a fresh schedule of the same trigger already holds: a checkpoint leaves them out.
_FROM_THE_TRIGGER = ("limit", "period", "immediate")


def _moving(cls: type) -> list[str]:
    """The slots of `cls` that change as the schedule advances."""
    names = _MOVING.get(cls)
    if names is None:
        names = _MOVING[cls] = [name for name in _progress(cls) if name not in _FROM_THE_TRIGGER]
    return names


_MOVING: dict[type, list[str]] = {}


def _read_moving(cls: type) -> Callable[[Any], tuple[Any, ...]]:
    """What reads the moving slots of a `cls` schedule as a tuple (a checkpoint takes one per
    fired task: an attrgetter is 4x faster than a generator over the names)."""
    reader = _READERS.get(cls)
    if reader is None:
        names = _moving(cls)
        if len(names) == 1:  # (attrgetter of one name returns the value, not a tuple)
            name = names[0]
            reader = _READERS[cls] = lambda schedule: (getattr(schedule, name),)
        else:
            reader = _READERS[cls] = operator.attrgetter(*names)
    return reader


_READERS: dict[type, Callable[[Any], tuple[Any, ...]]] = {}
