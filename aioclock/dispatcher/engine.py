"""The deadline engine: a heap of (due time, task) and the rules that turn it into `Fire` frames.

It performs no I/O and never reads the clock: every method takes `now` and returns the fires to
send. The in-process runtime drives it from an event loop; the dispatcher process drives it from a
`select` loop. Both feed it the `Done` frames their runners send back.

Phases: start-up tasks run first (all at once); when every one of them is done the scheduled tasks
are armed; when no trigger can fire again, or a stop is requested, the engine waits for the runs in
flight, then fires the shut-down tasks, then reports `finished`.
"""

from __future__ import annotations

import enum
import heapq
import logging
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from aioclock._protocol import Done, Fire, TaskStats
from aioclock._schedule import Schedule
from aioclock.triggers import BaseTrigger, OnShutDown, OnStartUp

if TYPE_CHECKING:
    from aioclock._task import Task

logger = logging.getLogger(__name__)

#: Skipped occurrences of one task are logged at most this often (seconds), as a summary.
MISSED_LOG_INTERVAL = 5.0

#: How many recent lateness samples each task keeps for its percentiles.
LATENESS_WINDOW = 2048


@dataclass(frozen=True)
class ScheduledTask:
    """What the engine needs to know of a task: no function, only its id and schedule."""

    task_id: str
    trigger: BaseTrigger[Any]
    max_instances: int = 1


def schedule_of(tasks: Mapping[str, Task]) -> list[ScheduledTask]:
    """What the engine needs of each task: its name, trigger and `max_instances`."""
    return [ScheduledTask(name, task.trigger, task.max_instances) for name, task in tasks.items()]


@dataclass(slots=True)
class _TaskState:
    """One task in the engine: its schedule state (the trigger holds none) and its counters."""

    spec: ScheduledTask
    # Where the task is in its trigger's schedule; None for the tasks the engine does not arm
    # (start-up, shut-down, and legacy triggers, which keep upstream's state in the trigger).
    schedule: Schedule | None = None
    waits: bool = False  # the trigger computes its next due from the end of the previous run
    running: int = 0
    next_due: float | None = None
    ended: bool = False
    runs: int = 0
    failures: int = 0
    timeouts: int = 0
    missed: int = 0
    last_error: str | None = None
    lateness: deque[float] = field(default_factory=lambda: deque(maxlen=LATENESS_WINDOW))
    lateness_max: float | None = None
    missed_logged_at: float | None = None
    missed_unlogged: int = 0

    @property
    def trigger(self) -> BaseTrigger[Any]:
        return self.spec.trigger

    @property
    def scheduled(self) -> bool:
        """Armed by the engine (not a lifecycle or legacy-driven task)."""
        return self.schedule is not None


class Phase(enum.Enum):
    STARTUP = "startup"
    RUNNING = "running"
    DRAINING = "draining"
    SHUTDOWN = "shutdown"
    FINISHED = "finished"


class DeadlineEngine:
    """Keeps every task's next due time and decides what to fire when.

    Example:
        >>> from aioclock import Every
        >>> engine = DeadlineEngine([ScheduledTask("mod:tick", Every(seconds=1))])
        >>> engine.start(now=100.0)
        []
        >>> engine.next_deadline()
        101.0
        >>> [fire.due for fire in engine.pop_due(now=101.0)]
        [101.0]
    """

    def __init__(self, tasks: Iterable[ScheduledTask], *, publish_due_times: bool = True) -> None:
        # In-process, each trigger's `expected_trigger_time` (upstream's field) is kept current;
        # the dispatcher process skips that work, nobody there can read it.
        self._publish_due_times = publish_due_times
        self._states: dict[str, _TaskState] = {}
        self._startup: list[str] = []
        self._shutdown: list[str] = []
        self._external: set[str] = set()
        for spec in tasks:
            if spec.task_id in self._states:
                raise ValueError(f"task id {spec.task_id!r} is registered twice")
            state = self._states[spec.task_id] = _TaskState(spec)
            trigger = spec.trigger
            if isinstance(trigger, OnStartUp):
                self._startup.append(spec.task_id)
            elif isinstance(trigger, OnShutDown):
                self._shutdown.append(spec.task_id)
            elif trigger._is_legacy():
                self._external.add(spec.task_id)
            else:  # each task its own schedule, from the start, every time an app serves
                state.schedule = trigger._new_schedule()
                state.waits = trigger.waits_for_completion
        self._heap: list[tuple[float, int, str]] = []
        self._in_flight: dict[int, tuple[str, float]] = {}
        self._startup_runs: set[int] = set()  # the start-up runs the schedule waits for
        self._seq = 0
        self.phase = Phase.STARTUP

    # -- the phases -------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.phase is Phase.FINISHED

    @property
    def external_tasks(self) -> list[str]:
        """Tasks whose legacy trigger is driven from outside (see `fire_external`)."""
        return sorted(self._external)

    def start(self, now: float) -> list[Fire]:
        """Fire the start-up tasks, or arm the schedule at once when there are none.

        After a stop requested before the start, nothing starts: the stop stands.
        """
        if self.phase is not Phase.STARTUP:
            return []
        if self._startup:
            fires = [self._fire(task_id, now) for task_id in self._startup]
            self._startup_runs = {fire.seq for fire in fires}
            return fires
        return self._enter_running(now)

    def request_stop(self, now: float) -> list[Fire]:
        """Stop firing scheduled tasks; shut-down tasks follow once the runs in flight end."""
        if self.phase in (Phase.SHUTDOWN, Phase.FINISHED):
            return []
        self._heap.clear()
        self._external.clear()
        self.phase = Phase.DRAINING
        return self._advance_phase(now)

    def abort(self) -> None:
        """Stop at once: nothing more fires, not even the shut-down tasks."""
        self._heap.clear()
        self._external.clear()
        self.phase = Phase.FINISHED

    def _enter_running(self, now: float) -> list[Fire]:
        self.phase = Phase.RUNNING
        for state in self._states.values():
            if state.scheduled:
                self._arm(state, now)
        return self._advance_phase(now)

    def _advance_phase(self, now: float) -> list[Fire]:
        idle = not self._heap and not self._external and not self._in_flight
        if self.phase is Phase.RUNNING and idle:
            logger.info("no trigger can fire again")
            self.phase = Phase.DRAINING
        if self.phase is Phase.DRAINING and not self._in_flight:
            self.phase = Phase.SHUTDOWN
            fires = [self._fire(task_id, now) for task_id in self._shutdown]
            if fires:
                return fires
        if self.phase is Phase.SHUTDOWN and not self._in_flight:
            self.phase = Phase.FINISHED
        return []

    # -- deadlines ----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When the engine next has something to fire, or None if only a `Done` can wake it."""
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[Fire]:
        """Every occurrence due at or before `now`: fired, or skipped and counted as missed."""
        fires: list[Fire] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, _, task_id = heapq.heappop(heap)
            state = self._states[task_id]
            state.next_due = None
            fire = self._fire_unless_busy(state, due, now)
            if fire is not None:
                fires.append(fire)
            if not state.waits:
                self._arm(state, now, skip_past=True)
        if not heap:
            fires += self._advance_phase(now)
        return fires

    def _arm(self, state: _TaskState, now: float, skip_past: bool = False) -> None:
        schedule = state.schedule
        assert schedule is not None  # only scheduled tasks are armed
        due = schedule.advance(now)
        if skip_past and due is not None and due < now:
            due = self._skip_past(schedule, state, due, now)
        if due is None:
            state.ended = True
            state.next_due = None
            if self._publish_due_times:
                state.spec.trigger.expected_trigger_time = None
            logger.info("%s: trigger ended, no further runs", state.spec.task_id)
            return
        state.next_due = due
        if self._publish_due_times:  # no validation happens on assignment
            state.spec.trigger.expected_trigger_time = datetime.fromtimestamp(due, timezone.utc)
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, state.spec.task_id))

    def _skip_past(
        self, schedule: Schedule, state: _TaskState, due: float | None, now: float
    ) -> float | None:
        """The engine fell behind (a stall, a suspended machine): rather than firing a burst of
        runs that are all late, skip the occurrences already past and count them as missed."""
        skipped = 0
        while due is not None and due < now:
            skipped += 1
            due = schedule.advance(now)
        self._count_missed(state, skipped, now, "they were already past due when re-armed")
        return due

    def _count_missed(self, state: _TaskState, count: int, now: float, reason: str) -> None:
        """Count skipped occurrences; log the first at once, then a summary at most every
        MISSED_LOG_INTERVAL seconds per task (an overloaded app must not flood its log)."""
        state.missed += count
        state.missed_unlogged += count
        last = state.missed_logged_at
        if last is not None and now - last < MISSED_LOG_INTERVAL:
            return
        logger.warning(
            "skipped %d occurrence(s) of %s: %s (missed runs in all: %d)",
            state.missed_unlogged,
            state.spec.task_id,
            reason,
            state.missed,
        )
        state.missed_logged_at = now
        state.missed_unlogged = 0

    def _fire_unless_busy(self, state: _TaskState, due: float, now: float) -> Fire | None:
        """Fire the occurrence, or skip and count it while `max_instances` runs are going."""
        if state.running >= state.spec.max_instances:
            self._count_missed(state, 1, now, "its previous run was still in progress")
            return None
        return self._fire(state.spec.task_id, due)

    def _fire(self, task_id: str, due: float, reply: bool = False) -> Fire:
        self._seq += 1
        self._in_flight[self._seq] = (task_id, due)
        self._states[task_id].running += 1
        return Fire(task_id, self._seq, due, reply)

    # -- outside events -----------------------------------------------------------------------

    def on_done(self, done: Done, now: float) -> list[Fire]:
        """Record a finished run; re-arm a task that waits for completion; move the phases on."""
        flight = self._in_flight.pop(done.seq, None)
        if flight is None:
            logger.warning("ignored Done for unknown run %d of %s", done.seq, done.task)
            return []
        task_id, due = flight
        state = self._states[task_id]
        state.running -= 1
        self._record(state, done, due)
        if self.phase is Phase.STARTUP:
            # The schedule is armed when the start-up tasks are done (a run-now may overlap).
            if done.seq in self._startup_runs:
                self._startup_runs.discard(done.seq)
                if not self._startup_runs:
                    return self._enter_running(now)
            return []
        if (
            self.phase is Phase.RUNNING
            and state.waits  # only scheduled tasks wait for completion
            and not state.ended
        ):
            self._arm(state, now)
        return self._advance_phase(now)

    def _record(self, state: _TaskState, done: Done, due: float) -> None:
        state.runs += 1
        if done.outcome == "timeout":
            state.timeouts += 1
        elif done.outcome != "ok":
            state.failures += 1
        if done.error is not None:
            state.last_error = done.error
        lateness = done.started - due
        state.lateness.append(lateness)
        if state.lateness_max is None or lateness > state.lateness_max:
            state.lateness_max = lateness

    @property
    def task_ids(self) -> Mapping[str, object]:
        """The registered task ids (a read-only view: `in` is what callers need)."""
        return self._states

    def run_now(self, task_id: str, now: float, *, reply: bool = False) -> Fire:
        """Fire `task_id` at once, outside its schedule (it still counts as a run in progress)."""
        if task_id not in self._states:
            raise KeyError(task_id)
        return self._fire(task_id, now, reply)

    def fire_external(self, task_id: str, now: float) -> list[Fire]:
        """A legacy trigger driven from outside says `task_id` is due now."""
        if task_id not in self._external or self.phase is not Phase.RUNNING:
            return []
        fire = self._fire_unless_busy(self._states[task_id], now, now)
        return [] if fire is None else [fire]

    def external_ended(self, task_id: str, now: float) -> list[Fire]:
        """A legacy trigger's loop ended: it will not fire again."""
        self._external.discard(task_id)
        self._states[task_id].ended = True
        return self._advance_phase(now)

    # -- reporting ----------------------------------------------------------------------------

    def stats(self) -> list[TaskStats]:
        return [_snapshot(state) for state in self._states.values()]

    def in_flight(self) -> dict[int, tuple[str, float]]:
        """Runs fired and not yet done: sequence number -> (task id, due time)."""
        return dict(self._in_flight)

    def flight(self, seq: int) -> tuple[str, float] | None:
        """(task id, due time) of run `seq` while it is in flight, else None."""
        return self._in_flight.get(seq)


def _snapshot(state: _TaskState) -> TaskStats:
    samples = sorted(state.lateness)
    return TaskStats(
        task=state.spec.task_id,
        next_due=state.next_due,
        runs=state.runs,
        failures=state.failures,
        timeouts=state.timeouts,
        missed=state.missed,
        last_error=state.last_error,
        lateness_p50=_percentile(samples, 0.50),
        lateness_p99=_percentile(samples, 0.99),
        lateness_max=state.lateness_max,
    )


def _percentile(sorted_samples: list[float], fraction: float) -> float | None:
    if not sorted_samples:
        return None
    index = min(len(sorted_samples) - 1, round(fraction * (len(sorted_samples) - 1)))
    return sorted_samples[index]
