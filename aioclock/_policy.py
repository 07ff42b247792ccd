"""Scheduling policies: what happens when a run overlaps, starts late, or falls in a stall.

A `Policy` is a declaration, validated when it is made. A task's policy is what it sets itself
(keyword arguments of `@app.task`), then what its `Group(policy=...)` sets, then what its
`AioClock(policy=...)` sets, then the defaults below: a field left at None is inherited.
`Rules` is the resolved form the engine reads (plain floats, no None to interpret).

Example:
    >>> from datetime import datetime, timezone
    >>> app_default = Policy(misfire_grace=30)
    >>> own = Policy(overlap="queue_one", start=datetime(2030, 1, 1, tzinfo=timezone.utc))
    >>> rules = own.over(app_default).rules()
    >>> (rules.overlap, rules.limit, rules.misfire_grace, rules.start)
    ('queue_one', 1, 30.0, 1893456000.0)
    >>> Policy(overlap="x")
    Traceback (most recent call last):
    ...
    ValueError: overlap must be one of 'skip', 'queue_one', 'allow', 'replace', got 'x'
"""

from __future__ import annotations

import hashlib
import math
import sys
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal, Optional, get_args

__all__ = ["CatchUp", "Overlap", "Policy", "Rules", "jitter_offset"]

Overlap = Literal["skip", "queue_one", "allow", "replace"]
CatchUp = Literal["skip", "latest"]
_OVERLAPS: tuple[str, ...] = get_args(Overlap)
_CATCH_UPS: tuple[str, ...] = get_args(CatchUp)

#: `overlap="allow"` without `max_instances`: no bound.
UNBOUNDED = sys.maxsize


@dataclass(frozen=True)
class Policy:
    """How a task's occurrences are turned into runs. Every field left at None is inherited
    (task, then group, then app, then the default named here).

    Args:
        overlap: What an occurrence does while a run of the task is still going.
            "skip" (default): it is skipped and counted as missed. "queue_one": it runs right
            after the current run ends; at most one waits (a newer occurrence takes the place
            of the waiting one, which is counted as missed). "allow": it runs beside the others,
            up to `max_instances` at once (no bound without it). "replace": the running run is
            cancelled (it reports "cancelled") and the new one starts.
        max_instances: With "allow", how many runs may overlap. Given alone, `max_instances=N`
            means `overlap="allow"` with N (as in aioclock 0.3; N=1 behaves as "skip").
        misfire_grace: Seconds. A run that cannot start within this much of its planned time
            is not started: it is counted as missed. None (default): no limit; `math.inf`
            says so explicitly (to lift an inherited grace).
        catch_up: After a stall (a suspended machine, a stopped process, a clock jump) that
            let several occurrences pass: "skip" (default, as in 0.3) runs the first of them
            and skips the others; "latest" runs the latest of them only. The skipped ones are
            counted as missed either way.
        start: No occurrence before this time: the schedule starts here (`Every` counts its
            periods from it). A timezone-aware datetime; a naive one is refused.
        end: No occurrence after this time (one due exactly at `end` runs); then the task
            ends as if its trigger had. Timezone-aware.
        jitter: Seconds. Each run starts a random delay after its due time, uniform in
            [0, jitter), derived from the task id and the due time (reproducible, and the
            same on every node of a cluster). Default 0.
    """

    overlap: Optional[Overlap] = None
    max_instances: Optional[int] = None
    misfire_grace: Optional[float] = None
    catch_up: Optional[CatchUp] = None
    start: Optional[datetime] = None
    end: Optional[datetime] = None
    jitter: Optional[float] = None

    def __post_init__(self) -> None:
        overlap = self.overlap
        if overlap is not None and overlap not in _OVERLAPS:
            raise ValueError(f"overlap must be one of {_quoted(_OVERLAPS)}, got {overlap!r}")
        instances = self.max_instances
        if instances is not None:
            if isinstance(instances, bool) or not isinstance(instances, int) or instances < 1:
                raise ValueError(f"max_instances must be an integer >= 1, got {instances!r}")
            if overlap is None:
                object.__setattr__(self, "overlap", "allow")
            elif overlap != "allow" and instances != 1:
                raise ValueError(
                    f"max_instances={instances} needs overlap='allow', got overlap={overlap!r}"
                )
        grace = self.misfire_grace
        if grace is not None:
            if isinstance(grace, bool) or not isinstance(grace, (int, float)):
                raise TypeError(f"misfire_grace must be a number of seconds or None, got {grace!r}")
            if math.isnan(grace) or grace < 0:
                raise ValueError(f"misfire_grace must be a number of seconds >= 0, got {grace!r}")
            object.__setattr__(self, "misfire_grace", float(grace))
        if self.catch_up is not None and self.catch_up not in _CATCH_UPS:
            raise ValueError(
                f"catch_up must be one of {_quoted(_CATCH_UPS)}, got {self.catch_up!r}"
            )
        for name in ("start", "end"):
            _check_moment(name, getattr(self, name))
        _check_window(self.start, self.end)
        jitter = self.jitter
        if jitter is not None:
            if isinstance(jitter, bool) or not isinstance(jitter, (int, float)):
                raise TypeError(f"jitter must be a number of seconds, got {jitter!r}")
            if not math.isfinite(jitter) or jitter < 0:
                raise ValueError(f"jitter must be a finite number of seconds >= 0, got {jitter!r}")
            object.__setattr__(self, "jitter", float(jitter))

    def over(self, defaults: Policy | None) -> Policy:
        """This policy, with each field it leaves at None taken from `defaults`.

        An `overlap` set here decides `max_instances` too (a task's "replace" is not given the
        app's `max_instances`), except that "allow" over "allow" inherits the bound. Raises
        ValueError when the two windows give `end <= start`.
        """
        if defaults is None:
            return self
        merged: dict[str, Any] = {}
        for spec in fields(self):
            own = getattr(self, spec.name)
            merged[spec.name] = own if own is not None else getattr(defaults, spec.name)
        if self.overlap is not None and not (self.overlap == "allow" == defaults.overlap):
            merged["max_instances"] = self.max_instances
        return Policy(**merged)

    def rules(self) -> Rules:
        """The resolved policy the engine reads."""
        overlap = self.overlap or "skip"
        if overlap == "allow":
            limit = self.max_instances or UNBOUNDED
        else:
            limit = 1
        grace = self.misfire_grace
        return Rules(
            overlap=overlap,
            limit=limit,
            misfire_grace=None if grace is None or math.isinf(grace) else grace,
            catch_up=self.catch_up or "skip",
            start=None if self.start is None else self.start.timestamp(),
            end=None if self.end is None else self.end.timestamp(),
            jitter=self.jitter or 0.0,
        )

    def given(self) -> dict[str, Any]:
        """The fields set (not None), for messages and for `aioclock tasks`."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }


@dataclass(frozen=True)
class Rules:
    """A resolved policy, as the engine reads it: times are POSIX seconds."""

    overlap: Overlap = "skip"
    limit: int = 1  # runs at once before `overlap` applies
    misfire_grace: Optional[float] = None
    catch_up: CatchUp = "skip"
    start: Optional[float] = None
    end: Optional[float] = None
    jitter: float = 0.0


DEFAULT_RULES = Rules()


def jitter_offset(task_id: str, due: float, jitter: float) -> float:
    """The delay of the occurrence of `task_id` due at `due`: uniform in [0, jitter), the same
    in every process and on every node (a hash of the task id and the due time, to the
    microsecond; not Python's `hash`, which differs between processes).

    >>> jitter_offset("mod:tick", 100.0, 10.0) == jitter_offset("mod:tick", 100.0, 10.0)
    True
    >>> 0 <= jitter_offset("mod:tick", 100.0, 10.0) < 10
    True
    """
    if jitter <= 0:
        return 0.0
    key = f"{task_id}|{round(due * 1_000_000)}".encode()
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return jitter * (int.from_bytes(digest, "big") / 2**64)


def _quoted(names: tuple[str, ...]) -> str:
    return ", ".join(repr(name) for name in names)


def _check_moment(name: str, moment: object) -> None:
    if moment is None:
        return
    if not isinstance(moment, datetime):
        raise TypeError(f"{name} must be a timezone-aware datetime or None, got {moment!r}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(
            f"{name} must be a timezone-aware datetime (a naive one names no instant), "
            f"got {moment!r}"
        )


def _check_window(start: datetime | None, end: datetime | None) -> None:
    if start is not None and end is not None and end <= start:
        raise ValueError(f"end must be after start, got start={start!r}, end={end!r}")


#: The fields that place occurrences on the schedule: meaningless for start-up, shut-down tasks.
_SCHEDULE_FIELDS = ("misfire_grace", "catch_up", "start", "end", "jitter")


def check_for_trigger(policy: Policy, trigger: object) -> None:
    """Refuse what a task's own policy sets that its trigger cannot use: a start-up or
    shut-down task runs once, outside the schedule (inherited defaults do not apply to it)."""
    from aioclock.triggers import OnShutDown, OnStartUp

    if not isinstance(trigger, (OnStartUp, OnShutDown)):
        return
    for name in _SCHEDULE_FIELDS:
        value = getattr(policy, name)
        if value is not None:
            raise ValueError(
                f"{name}={value!r} does not apply to a task with {type(trigger).__name__}(): "
                "it runs once, outside the schedule"
            )
