"""The deadline engine: a heap of (due time, task) and the rules that turn it into `Fire` frames.

It performs no I/O and never reads the clock: every method takes `now` and returns the fires to
send. The in-process runtime drives it from an event loop; the dispatcher process drives it from a
`select` loop. Both feed it the `Done` frames their runners send back.

Phases: start-up tasks run first (all at once); when every one of them is done the scheduled tasks
are armed; when no trigger can fire again, or a stop is requested, the engine waits for the runs in
flight, then fires the shut-down tasks, then reports `finished`.

Runtime control (`pause`, `resume`, `remove`, `reschedule`, `add`) changes one task's state; a
paused task keeps no heap entry (its entry is left in the heap, marked stale, and skipped), and it
keeps the app serving: it may be resumed.
"""

from __future__ import annotations

import enum
import heapq
import logging
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from aioclock._protocol import Done, Fire, TaskStats
from aioclock._schedule import FixedRate, Schedule
from aioclock.triggers import BaseTrigger, OnShutDown, OnStartUp

if TYPE_CHECKING:
    from aioclock._task import Task

logger = logging.getLogger(__name__)

#: Skipped occurrences of one task are logged at most this often (seconds), as a summary.
MISSED_LOG_INTERVAL = 5.0

#: How many recent lateness samples each task keeps for its percentiles.
LATENESS_WINDOW = 2048

#: The heap is rebuilt without its stale entries once there are more than this many of them and
#: they are more than half of it.
STALE_COMPACT_AT = 1024


@dataclass(frozen=True)
class ScheduledTask:
    """What the engine needs to know of a task: no function, only its id and schedule."""

    task_id: str
    trigger: BaseTrigger[Any]
    max_instances: int = 1
    paused: bool = False  # registered paused (`app.pause` while the app did not serve)


def schedule_of(
    tasks: Mapping[str, Task], paused: Collection[str] = frozenset()
) -> list[ScheduledTask]:
    """What the engine needs of each task: its name, trigger, `max_instances`, and whether it
    starts paused (its name is in `paused`)."""
    return [
        ScheduledTask(name, task.trigger, task.max_instances, name in paused)
        for name, task in tasks.items()
    ]


def control_refusal(verb: str, task_id: str, trigger: BaseTrigger[Any]) -> str | None:
    """Why `verb` ("pause", "resume", "reschedule") cannot change a task with this trigger, or
    None. Start-up and shut-down tasks have no schedule; a trigger written for aioclock 0.3 keeps
    its schedule in itself, so it can be paused but not replaced."""
    if isinstance(trigger, (OnStartUp, OnShutDown)):
        when = "start-up" if isinstance(trigger, OnStartUp) else "shut-down"
        return f"task {task_id!r} runs at {when}, outside the schedule: it cannot be {verb}d"
    if verb == "reschedule" and trigger._is_legacy():
        return (
            f"task {task_id!r} uses {type(trigger).__name__}, which implements trigger_next, "
            "not next_due: it cannot be rescheduled (remove it and add it again)"
        )
    return None


def reschedule_refusal(trigger: object) -> str | None:
    """Why `trigger` cannot replace a task's trigger, or None: it must have a schedule."""
    if not isinstance(trigger, BaseTrigger):
        return f"trigger must be a BaseTrigger instance, got {trigger!r}"
    if isinstance(trigger, (OnStartUp, OnShutDown)):
        return f"a task cannot be rescheduled to {type(trigger).__name__}(): it has no schedule"
    if trigger._is_legacy():
        return (
            f"a task cannot be rescheduled to {type(trigger).__name__}: it implements "
            "trigger_next, not next_due"
        )
    return None


def trigger_refusal(trigger: object) -> str | None:
    """Why `trigger` cannot be a task's new schedule while the app serves, or None."""
    if not isinstance(trigger, BaseTrigger):
        return f"trigger must be a BaseTrigger instance, got {trigger!r}"
    if isinstance(trigger, OnStartUp):
        return "the trigger is OnStartUp(): the app has started, such a task would never run"
    return None


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
    armed: int = 0  # the sequence number of its live heap entry, 0 if none
    ended: bool = False
    paused: bool = False
    removed: bool = False  # `remove`d: ended, no longer registered, its counters kept
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
        self._paused: set[str] = set()  # paused and not ended: they keep the app serving
        for spec in tasks:
            if spec.task_id in self._states:
                raise ValueError(f"task id {spec.task_id!r} is registered twice")
            state = self._states[spec.task_id] = _TaskState(spec)
            self._classify(state)
            if spec.paused and control_refusal("pause", spec.task_id, spec.trigger) is None:
                state.paused = True
                self._paused.add(spec.task_id)
        self._heap: list[tuple[float, int, str]] = []
        self._stale = 0  # heap entries left by tasks paused, removed or rescheduled
        self._in_flight: dict[int, tuple[str, float]] = {}
        self._startup_runs: set[int] = set()  # the start-up runs the schedule waits for
        self._seq = 0
        self.phase = Phase.STARTUP

    def _classify(self, state: _TaskState) -> None:
        """Put a task where its trigger says: start-up, shut-down, legacy-driven or scheduled."""
        task_id = state.spec.task_id
        trigger = state.spec.trigger
        if isinstance(trigger, OnStartUp):
            self._startup.append(task_id)
        elif isinstance(trigger, OnShutDown):
            self._shutdown.append(task_id)
        elif trigger._is_legacy():
            self._external.add(task_id)
        else:  # each task its own schedule, from the start, every time an app serves
            state.schedule = trigger._new_schedule()
            state.waits = trigger.waits_for_completion

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
        self._stale = 0
        self._external.clear()
        self.phase = Phase.DRAINING
        return self._advance_phase(now)

    def abort(self) -> None:
        """Stop at once: nothing more fires, not even the shut-down tasks."""
        self._heap.clear()
        self._stale = 0
        self._external.clear()
        self.phase = Phase.FINISHED

    def _enter_running(self, now: float) -> list[Fire]:
        self.phase = Phase.RUNNING
        for state in self._states.values():
            if state.scheduled and not state.paused and not state.ended:
                self._arm(state, now)
        return self._advance_phase(now)

    def _advance_phase(self, now: float) -> list[Fire]:
        if self._stale:
            self._drop_stale_top()
        idle = not self._heap and not self._external and not self._in_flight and not self._paused
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

    def shift_fixed_rate(self, seconds: float) -> None:
        """The wall clock was set by `seconds`: move the grid of every `Every` with it, so that
        it neither stalls (set back) nor bursts (set forward). Calendar dues stay where the
        wall clock puts them."""
        shifted: set[str] = set()
        for task_id, state in self._states.items():
            schedule = state.schedule
            if isinstance(schedule, FixedRate) and schedule.period > 0:
                schedule.shift(seconds)
                shifted.add(task_id)
                if state.next_due is not None:
                    state.next_due += seconds
                    if self._publish_due_times:
                        due = datetime.fromtimestamp(state.next_due, timezone.utc)
                        state.spec.trigger.expected_trigger_time = due
        if shifted:
            self._heap = [
                (due + seconds, seq, task) if task in shifted else (due, seq, task)
                for due, seq, task in self._heap
            ]
            heapq.heapify(self._heap)

    def next_deadline(self) -> float | None:
        """When the engine next has something to fire, or None if only a `Done` can wake it."""
        if self._stale:
            self._drop_stale_top()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[Fire]:
        """Every occurrence due at or before `now`: fired, or skipped and counted as missed."""
        fires: list[Fire] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, seq, task_id = heapq.heappop(heap)
            state = self._states[task_id]
            if state.armed != seq:  # paused, removed or rescheduled since
                self._stale -= 1
                continue
            state.armed = 0
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
        state.armed = self._seq
        heapq.heappush(self._heap, (due, self._seq, state.spec.task_id))

    def _disarm(self, state: _TaskState) -> None:
        """Forget the task's next due: its heap entry goes stale (skipped when it surfaces)."""
        if state.armed:
            state.armed = 0
            self._stale += 1
            if self._stale > STALE_COMPACT_AT and 2 * self._stale > len(self._heap):
                self._compact()
        state.next_due = None
        if self._publish_due_times and state.scheduled:
            state.spec.trigger.expected_trigger_time = None

    def _drop_stale_top(self) -> None:
        heap = self._heap
        states = self._states
        while heap and states[heap[0][2]].armed != heap[0][1]:
            heapq.heappop(heap)
            self._stale -= 1

    def _compact(self) -> None:
        """Rebuild the heap without its stale entries (many pauses of rarely due tasks)."""
        states = self._states
        self._heap = [entry for entry in self._heap if states[entry[2]].armed == entry[1]]
        heapq.heapify(self._heap)
        self._stale = 0

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
            and not state.paused
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
        """The task ids the engine has state for, removed ones included (a read-only view)."""
        return self._states

    def registered(self, task_id: str) -> bool:
        """Known and not removed."""
        state = self._states.get(task_id)
        return state is not None and not state.removed

    def run_now(self, task_id: str, now: float, *, reply: bool = False) -> Fire:
        """Fire `task_id` at once, outside its schedule (it still counts as a run in progress)."""
        if task_id not in self._states:
            raise KeyError(task_id)
        return self._fire(task_id, now, reply)

    def fire_external(self, task_id: str, now: float) -> list[Fire]:
        """A legacy trigger driven from outside says `task_id` is due now."""
        if task_id not in self._external or self.phase is not Phase.RUNNING:
            return []
        if self._states[task_id].paused:  # not counted as missed: nobody was meant to run it
            return []
        fire = self._fire_unless_busy(self._states[task_id], now, now)
        return [] if fire is None else [fire]

    def external_ended(self, task_id: str, now: float) -> list[Fire]:
        """A legacy trigger's loop ended: it will not fire again."""
        self._external.discard(task_id)
        self._paused.discard(task_id)
        self._states[task_id].ended = True
        return self._advance_phase(now)

    # -- runtime control ----------------------------------------------------------------------
    # The core checks first (registered, not refused by `control_refusal`, not stopping).

    def ended(self, task_id: str) -> bool:
        return self._states[task_id].ended

    def trigger_of(self, task_id: str) -> BaseTrigger[Any]:
        return self._states[task_id].spec.trigger

    def forget(self, seq: int) -> None:
        """Run `seq` was fired but will never be sent (its task was paused or removed): it
        neither ran nor was missed."""
        flight = self._in_flight.pop(seq, None)
        if flight is not None:
            self._states[flight[0]].running -= 1

    def pause(self, task_id: str) -> None:
        """No further occurrence until `resume`; runs in flight go on. The occurrences that fall
        while it is paused are not counted as missed."""
        state = self._states[task_id]
        if state.paused:
            return
        state.paused = True
        self._paused.add(task_id)
        self._disarm(state)

    def resume(self, task_id: str, now: float) -> list[Fire]:
        """Arm a paused task again: its schedule starts from `now`, as at a start, keeping the
        count of occurrences it had (`max_loop_count`)."""
        state = self._states[task_id]
        if not state.paused:
            return []
        state.paused = False
        self._paused.discard(task_id)
        schedule = state.schedule
        if schedule is not None:
            fresh = state.spec.trigger._new_schedule()
            fresh.count = schedule.count
            state.schedule = fresh
            self._arm_if_running(state, now)
        return self._advance_phase(now)

    def remove(self, task_id: str, now: float) -> list[Fire]:
        """End the task as if its trigger had ended; its counters stay readable (`stats`)."""
        state = self._states[task_id]
        state.removed = True
        state.ended = True
        state.paused = False
        self._paused.discard(task_id)
        self._disarm(state)
        self._external.discard(task_id)
        for lifecycle in (self._startup, self._shutdown):
            if task_id in lifecycle:
                lifecycle.remove(task_id)
        return self._advance_phase(now)

    def reschedule(self, task_id: str, trigger: BaseTrigger[Any], now: float) -> list[Fire]:
        """Replace the task's trigger; its new schedule starts from `now` (a paused task stays
        paused, an ended one may fire again)."""
        state = self._states[task_id]
        self._disarm(state)
        state.spec = replace(state.spec, trigger=trigger)
        state.schedule = trigger._new_schedule()
        state.waits = trigger.waits_for_completion
        state.ended = False
        if not state.paused:
            self._arm_if_running(state, now)
        return self._advance_phase(now)

    def add(self, spec: ScheduledTask, now: float) -> list[Fire]:
        """Register a task while the app serves (or re-register a removed one, whose counters
        go on); a scheduled one is armed from `now`, a shut-down one runs at the stop."""
        state = self._states.get(spec.task_id)
        if state is None:
            state = self._states[spec.task_id] = _TaskState(spec)
        else:
            state.spec = spec
            state.schedule = None
            state.waits = state.ended = state.removed = False
        self._classify(state)
        self._arm_if_running(state, now)
        return self._advance_phase(now)

    def _arm_if_running(self, state: _TaskState, now: float) -> None:
        """Arm a scheduled task unless the schedule has not started (it is armed then) or it
        waits for the end of a run in flight (it is armed then)."""
        if self.phase is Phase.RUNNING and state.scheduled and not (state.waits and state.running):
            self._arm(state, now)

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
        paused=state.paused,
        removed=state.removed,
    )


def _percentile(sorted_samples: list[float], fraction: float) -> float | None:
    if not sorted_samples:
        return None
    index = min(len(sorted_samples) - 1, round(fraction * (len(sorted_samples) - 1)))
    return sorted_samples[index]
