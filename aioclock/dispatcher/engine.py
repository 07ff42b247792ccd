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

Each task's scheduling policy (`Rules`: overlap, misfire grace, catch-up, start/end window,
jitter) is applied here, where the time of each decision is known. The heap holds the planned
time of each occurrence (its due time plus its jitter); `Fire.due` is the nominal due time, which
names the occurrence; lateness and the misfire grace are measured from the planned time.
"""

from __future__ import annotations

import enum
import heapq
import logging
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NamedTuple

from aioclock._policy import DEFAULT_RULES, Policy, Rules, jitter_offset
from aioclock._protocol import Done, Fire, TaskStats
from aioclock._schedule import COINCIDENT, Earliest, FixedRate, Schedule
from aioclock.dispatcher.claims import ClaimBook, ClusterPlan
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


class TaskProgress(NamedTuple):
    """One task's state as a checkpoint carries it to another dispatcher: where its schedule
    is (`Schedule.progress`), the due it had armed, its control state and its counters."""

    schedule: tuple[Any, ...] | None
    next_due: float | None
    paused: bool
    ended: bool
    removed: bool
    runs: int
    failures: int
    timeouts: int
    missed: int
    last_error: str | None
    lateness_max: float | None
    dues: int
    lost: int
    # Which runs the counters include: every run numbered up to `counted_through` but those
    # in `in_flight` (they had not ended).
    counted_through: int
    in_flight: tuple[int, ...]


@dataclass(frozen=True)
class ScheduledTask:
    """What the engine needs to know of a task: no function, only its id and schedule."""

    task_id: str
    trigger: BaseTrigger[Any]
    max_instances: int = 1  # without `rules`: overlap "allow" with this many
    paused: bool = False  # registered paused (`app.pause` while the app did not serve)
    rules: Rules = DEFAULT_RULES

    def __post_init__(self) -> None:
        if self.max_instances != 1 and self.rules == DEFAULT_RULES:
            object.__setattr__(self, "rules", Rules(overlap="allow", limit=self.max_instances))


def spec_of(task: Task, paused: bool = False, defaults: Policy | None = None) -> ScheduledTask:
    """What the engine needs of `task`: its policy resolved over the app's `defaults`."""
    rules = task.policy.over(defaults).rules()
    return ScheduledTask(task.name, task.trigger, rules.limit, paused, rules)


def schedule_of(
    tasks: Mapping[str, Task],
    paused: Collection[str] = frozenset(),
    defaults: Policy | None = None,
) -> list[ScheduledTask]:
    """What the engine needs of each task: its name, trigger, policy (over the app's
    `defaults`), and whether it starts paused (its name is in `paused`)."""
    return [spec_of(task, name in paused, defaults) for name, task in tasks.items()]


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
    next_due: float | None = None  # nominal (the heap holds the planned time)
    # Overlap "queue_one": the occurrence waiting for its turn (due, planned, fencing token).
    queued: tuple[float, float, int] | None = None
    rules: Rules = DEFAULT_RULES  # `spec.rules`, read once per fire
    armed: int = 0  # the sequence number of its live heap entry, 0 if none
    ended: bool = False
    paused: bool = False
    removed: bool = False  # `remove`d: ended, no longer registered, its counters kept
    runs: int = 0
    failures: int = 0
    timeouts: int = 0
    missed: int = 0
    dues: int = 0  # occurrences that fell due: fired, or skipped and counted in `missed`
    lost: int = 0  # runs whose worker died under them (also in `failures`)
    last_error: str | None = None
    # Made at the first run: an empty deque is ~600 bytes, 60 MB for 100,000 idle tasks.
    lateness: deque[float] | None = None
    lateness_max: float | None = None
    missed_logged_at: float | None = None
    missed_unlogged: int = 0

    @property
    def trigger(self) -> BaseTrigger[Any]:
        return self.spec.trigger

    def __post_init__(self) -> None:
        self.rules = self.spec.rules

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
        self._planned: dict[int, float] = {}  # seq -> planned time, for jittered runs only
        self._replacing: set[int] = set()  # runs cancelled by overlap "replace", not yet done
        self._to_cancel: list[int] = []  # ... that the core has not been told of yet
        self._startup_runs: set[int] = set()  # the start-up runs the schedule waits for
        self._seq = 0
        self.phase = Phase.STARTUP
        self._changed: set[str] = set()  # tasks whose progress changed since `take_progress`
        # Taking over from a dispatcher that died (`restore`): what its workers say they
        # started and ended, and which of those runs its checkpoints counted.
        self._resumed = False
        self._started_there: dict[str, float] = {}
        self._counted_there: dict[str, tuple[int, frozenset[int]]] = {}
        self._dues_run_there: dict[str, set[float]] = {}
        self._recounted: set[int] = set()
        self._restarted = False  # restored from a store (`restore(takeover=False)`)
        # In a cluster (`join_cluster`): the claims of this node, and the cluster's epoch, where
        # every node anchors the grids of its fixed-rate tasks.
        self._claims: ClaimBook | None = None
        self._epoch: float | None = None
        # ... and the tasks whose last fire another node claimed: that node writes their
        # progress (all nodes would write the same place in the schedule).
        self._elsewhere: set[str] = set()
        #: Told of every skipped occurrence: (task, count, now, first skipped due, why).
        self.on_missed: Callable[[str, int, float, float | None, str], None] | None = None

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
        if self._resumed:
            return self._go_on_running(now)
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
        if self._restarted:  # from a store: each task where the instance that ended left it
            self._restarted = False
            self._count_lost_there(now, "lost with the instance that ended (it did not finish)")
            self._rearm_all_restored(now)
            return self._advance_phase(now)
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
        wall clock puts them. In a cluster the grids stay where they are: they are the
        cluster's, anchored at its epoch in wall-clock time, and every node must name the same
        fires (a node whose clock was stepped catches up by each task's policy)."""
        if self._epoch is not None:
            return
        shifted: set[str] = set()
        for task_id, state in self._states.items():
            schedule = state.schedule
            if isinstance(schedule, FixedRate) and schedule.period > 0:
                schedule.shift(seconds)
                moves = True
            elif isinstance(schedule, Earliest):
                moves = schedule.shift_inner_grids(seconds, state.next_due)
            else:
                continue
            self._changed.add(task_id)
            if moves:
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
        first = self._heap[0][0] if self._heap else None
        if self._claims is not None:
            claims_next = self._claims.next_time()
            if claims_next is not None and (first is None or claims_next < first):
                return claims_next
        return first

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
            nominal = state.next_due
            assert nominal is not None
            state.next_due = None
            state.dues += 1
            rules = state.rules
            if state.waits:
                fire = self._fire_if_may(state, nominal, due, now)
            else:
                if rules.start is None and rules.end is None:
                    following = state.schedule.advance(now)  # type: ignore[union-attr]
                else:
                    following = self._next(state, now)
                if following is not None and (
                    following < now
                    if not rules.jitter
                    else self._planned_time(state, following) < now
                ):
                    nominal, due, following = self._catch_up(state, nominal, due, following, now)
                if self._claims is None:
                    fire = self._fire_if_may(state, nominal, due, now)
                else:
                    fire = self._claimed(state, nominal, due, now)
                self._push(state, following)
            if fire is not None:
                fires.append(fire)
        if not heap:
            fires += self._advance_phase(now)
        return fires

    def _arm(self, state: _TaskState, now: float) -> None:
        self._push(state, self._next(state, now))

    def _next(self, state: _TaskState, now: float) -> float | None:
        """The task's next due time, within its `start`/`end` window; None: never again."""
        schedule = state.schedule
        assert schedule is not None  # only scheduled tasks are armed
        rules = state.rules
        start = rules.start
        if self._epoch is not None and type(schedule) is FixedRate and schedule.anchor is None:
            due = self._on_cluster_grid(schedule, start, now)
        else:
            due = schedule.advance(now if start is None or now >= start else start)
        end = rules.end
        if due is not None and end is not None and due > end:
            schedule.ended = True
            return None
        return due

    def _on_cluster_grid(
        self, schedule: FixedRate, start: float | None, now: float
    ) -> float | None:
        """In a cluster, a fixed-rate schedule starts on the grid anchored at the cluster's
        epoch (or its `start`, if later), at the first occurrence from `now` on: every node
        names the same fires whenever it starts, pauses or resumes."""
        epoch = self._epoch
        assert epoch is not None
        if schedule.period <= 0:
            return schedule.advance(now)
        due = schedule.advance(epoch if start is None or epoch >= start else start)
        return due if due is None or due >= now else schedule.skip_to(now)

    def _planned_time(self, state: _TaskState, due: float) -> float:
        jitter = state.rules.jitter
        return due + jitter_offset(state.spec.task_id, due, jitter) if jitter else due

    def _push(self, state: _TaskState, due: float | None) -> None:
        """Arm the task for `due` (its planned time goes on the heap), or end it."""
        if state.spec.task_id not in self._elsewhere:  # (else the node that ran it writes it)
            self._changed.add(state.spec.task_id)
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
        planned = self._planned_time(state, due) if state.rules.jitter else due
        heapq.heappush(self._heap, (planned, self._seq, state.spec.task_id))
        if self._claims is not None and not state.waits:
            self._claims.plan(planned, state.spec.task_id, due, self._seq)

    def _disarm(self, state: _TaskState) -> None:
        """Forget the task's next due: its heap entry goes stale (skipped when it surfaces)."""
        self._changed.add(state.spec.task_id)
        if self._claims is not None and state.next_due is not None:
            self._claims.forget(state.spec.task_id, state.next_due)
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

    def _catch_up(
        self, state: _TaskState, due: float, planned: float, following: float | None, now: float
    ) -> tuple[float, float, float | None]:
        """The engine fell behind (a stall, a suspended machine): rather than firing a burst of
        runs that are all late, run one of the occurrences already past and count the others as
        missed. `catch_up="skip"` runs the first (`due`), "latest" the last. Returns the
        occurrence to run (due, planned) and the first one still to come."""
        latest = state.rules.catch_up == "latest"
        skipped = 0
        first: float | None = due if latest else None  # the first occurrence skipped
        while following is not None:
            following_planned = self._planned_time(state, following)
            if following_planned >= now:
                break
            skipped += 1
            if first is None:
                first = following
            if latest:
                due, planned = following, following_planned
            following = self._next(state, now)
        state.dues += skipped
        why = "they were already past due when re-armed"
        self._count_missed(state, skipped, now, why, first)
        return due, planned, following

    def _count_missed(
        self, state: _TaskState, count: int, now: float, reason: str, due: float | None = None
    ) -> None:
        """Count skipped occurrences (the first due at `due`); log the first at once, then a
        summary at most every MISSED_LOG_INTERVAL seconds per task (an overloaded app must not
        flood its log)."""
        state.missed += count
        if self.on_missed is not None:
            self.on_missed(state.spec.task_id, count, now, due, reason)
        state.missed_unlogged += count
        self._changed.add(state.spec.task_id)
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

    def _fire_if_may(
        self, state: _TaskState, due: float, planned: float, now: float, token: int = 0
    ) -> Fire | None:
        """Fire the occurrence due at `due` (planned at `planned`), unless its policy says
        otherwise: too late for `misfire_grace`, or a run still going (`overlap`)."""
        rules = state.rules
        grace = rules.misfire_grace
        if grace is not None and now - planned > grace:
            self._count_missed(state, 1, now, "it could not start within its misfire_grace", due)
            return None
        if state.running >= rules.limit:
            overlap = rules.overlap
            if overlap == "queue_one":
                if state.queued is not None:
                    why = "a newer occurrence took its place in queue"
                    self._count_missed(state, 1, now, why, state.queued[0])
                state.queued = (due, planned, token)
                return None
            if overlap != "replace":
                self._count_missed(state, 1, now, "its previous run was still in progress", due)
                return None
            self._replace_runs(state.spec.task_id)
        return self._fire(state.spec.task_id, due, planned=planned, token=token)

    def _replace_runs(self, task_id: str) -> None:
        """Overlap "replace": the runs of `task_id` in flight are to be cancelled (the core
        sends the `Cancel`s: `take_replaced`); each still counts until its `Done`."""
        for seq, (task, _) in self._in_flight.items():
            if task == task_id and seq not in self._replacing:
                self._replacing.add(seq)
                self._to_cancel.append(seq)

    def take_replaced(self) -> list[int]:
        """The runs that overlap "replace" cancelled since the last call (usually none)."""
        if not self._to_cancel:
            return []
        seqs, self._to_cancel = self._to_cancel, []
        return seqs

    def _fire(
        self,
        task_id: str,
        due: float,
        reply: bool = False,
        planned: float | None = None,
        token: int = 0,
    ) -> Fire:
        self._seq += 1
        self._in_flight[self._seq] = (task_id, due)
        if planned is not None and planned != due:
            self._planned[self._seq] = planned
        self._states[task_id].running += 1
        if token:
            return Fire(task_id, self._seq, due, reply, token)
        return Fire(task_id, self._seq, due, reply)

    # -- outside events -----------------------------------------------------------------------

    def on_done(self, done: Done, now: float) -> list[Fire]:
        """Record a finished run; re-arm a task that waits for completion; move the phases on."""
        flight = self._in_flight.pop(done.seq, None)
        if flight is None:
            if self._resumed and self.phase is Phase.STARTUP:
                # A run the dispatcher that died had sent, ended before this one took over:
                # counted from its worker's account (`recount`).
                self._seq = max(self._seq, done.seq)
                return []
            logger.warning("ignored Done for unknown run %d of %s", done.seq, done.task)
            return []
        task_id, due = flight
        state = self._states[task_id]
        state.running -= 1
        if self._planned:
            due = self._planned.pop(done.seq, due)
        if self._replacing:
            self._replacing.discard(done.seq)
        self._record(state, done, due)
        queued: list[Fire] = []
        if state.queued is not None:  # overlap "queue_one": its turn, unless the task stopped
            queued = self._fire_queued(state, now)
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
        if queued:
            return queued + self._advance_phase(now)
        return self._advance_phase(now)

    def _fire_queued(self, state: _TaskState, now: float) -> list[Fire]:
        queued = state.queued
        assert queued is not None
        state.queued = None
        if self.phase is not Phase.RUNNING or state.paused or state.ended:
            self._count_missed(state, 1, now, "it was queued when the task stopped", queued[0])
            return []
        fire = self._fire_if_may(state, queued[0], queued[1], now, queued[2])
        return [] if fire is None else [fire]

    def _record(self, state: _TaskState, done: Done, due: float | None) -> None:
        self._changed.add(state.spec.task_id)
        state.runs += 1
        if done.outcome == "timeout":
            state.timeouts += 1
        elif done.outcome != "ok":
            state.failures += 1
            if done.outcome == "crashed":
                state.lost += 1
        if done.error is not None:
            state.last_error = done.error
        if due is None:  # its due is not known here
            return
        lateness = done.started - due
        if state.lateness is None:
            state.lateness = deque(maxlen=LATENESS_WINDOW)
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
        state = self._states[task_id]
        if state.paused:  # not counted as missed: nobody was meant to run it
            return []
        rules = state.rules  # outside its start/end window: not meant to run either
        if (rules.start is not None and now < rules.start) or (
            rules.end is not None and now > rules.end
        ):
            return []
        state.dues += 1
        fire = self._fire_if_may(state, now, now, now)
        return [] if fire is None else [fire]

    def external_ended(self, task_id: str, now: float) -> list[Fire]:
        """A legacy trigger's loop ended: it will not fire again."""
        self._external.discard(task_id)
        self._paused.discard(task_id)
        self._states[task_id].ended = True
        self._changed.add(task_id)
        return self._advance_phase(now)

    # -- runtime control ----------------------------------------------------------------------
    # The core checks first (registered, not refused by `control_refusal`, not stopping).

    def ended(self, task_id: str) -> bool:
        return self._states[task_id].ended

    def trigger_of(self, task_id: str) -> BaseTrigger[Any]:
        return self._states[task_id].spec.trigger

    def forget(self, seq: int, now: float, why: str) -> None:
        """Run `seq` was fired but will never be sent (its task was paused or removed, or it
        waited past its misfire_grace): its occurrence is missed."""
        flight = self._in_flight.pop(seq, None)
        if flight is not None:
            state = self._states[flight[0]]
            state.running -= 1
            self._count_missed(state, 1, now, why, flight[1])
            self._planned.pop(seq, None)
            self._replacing.discard(seq)

    def drop_misfired(self, fires: list[Fire], now: float) -> tuple[list[Fire], list[Fire]]:
        """Of `fires` that waited for a worker, those past their task's `misfire_grace` are
        dropped and counted as missed (a run-now never is). Returns (the fires to send, the
        fires that dropping them brings: shut-down tasks when nothing else can fire)."""
        kept: list[Fire] = []
        dropped = False
        for fire in fires:
            flight = self._in_flight.get(fire.seq)
            grace = None if flight is None else self._states[flight[0]].rules.misfire_grace
            if grace is None or fire.reply:
                kept.append(fire)
                continue
            if now - self._planned.get(fire.seq, fire.due) <= grace:
                kept.append(fire)
                continue
            self.forget(fire.seq, now, "it waited for a worker longer than misfire_grace")
            dropped = True
        return kept, (self._advance_phase(now) if dropped else [])

    def pause(self, task_id: str, now: float) -> None:
        """No further occurrence until `resume`; runs in flight go on. The occurrences that fall
        while it is paused are not counted as missed."""
        state = self._states[task_id]
        if state.paused:
            return
        self._changed.add(task_id)
        state.paused = True
        self._drop_queued(state, now)
        self._paused.add(task_id)
        self._disarm(state)

    def resume(self, task_id: str, now: float) -> list[Fire]:
        """Arm a paused task again: its schedule starts from `now`, as at a start, keeping the
        count of occurrences it had (`max_loop_count`)."""
        state = self._states[task_id]
        if not state.paused:
            return []
        self._changed.add(task_id)
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
        self._drop_queued(state, now)
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
        self._drop_queued(state, now)
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
        self._changed.add(spec.task_id)
        state = self._states.get(spec.task_id)
        if state is None:
            state = self._states[spec.task_id] = _TaskState(spec)
        else:
            state.spec = spec
            state.rules = spec.rules
            state.schedule = None
            state.waits = state.ended = state.removed = False
        self._classify(state)
        self._arm_if_running(state, now)
        return self._advance_phase(now)

    def _drop_queued(self, state: _TaskState, now: float) -> None:
        """Overlap "queue_one": the occurrence waiting for its turn will not run (missed)."""
        queued = state.queued
        if queued is not None:
            state.queued = None
            self._count_missed(state, 1, now, "the task stopped while it was queued", queued[0])

    def _arm_if_running(self, state: _TaskState, now: float) -> None:
        """Arm a scheduled task unless the schedule has not started (it is armed then) or it
        waits for the end of a run in flight (it is armed then)."""
        if self.phase is Phase.RUNNING and state.scheduled and not (state.waits and state.running):
            self._arm(state, now)

    # -- in a cluster ---------------------------------------------------------------------------

    def join_cluster(self, plan: ClusterPlan) -> None:
        """Before `start`: run only the fires this node claims (`take_asks`, `on_verdicts`),
        on grids anchored at the cluster's epoch. Tasks that wait for the end of their previous
        run, start-up and shut-down tasks and legacy-driven ones run on every node."""
        self._claims = ClaimBook(plan.horizon, plan.wait)
        self._epoch = plan.epoch

    def take_asks(self, now: float) -> list[tuple[str, float]]:
        """The fires to claim now, ahead of their deadlines."""
        claims = self._claims
        if claims is None:
            return []
        states = self._states

        def still_armed(task_id: str, due: float, armed: int) -> bool:
            state = states.get(task_id)
            return state is not None and state.armed == armed

        return claims.take_asks(now, still_armed)

    def on_verdicts(self, verdicts: Iterable[tuple[str, float, int]], now: float) -> list[Fire]:
        """The answers to `take_asks`: the fires held for theirs go now (or never)."""
        claims = self._claims
        if claims is None:
            return []
        fires: list[Fire] = []
        for task_id, due, verdict in verdicts:
            state = self._states.get(task_id)
            if state is None:
                continue
            planned = claims.release(task_id, due)
            if planned is not None:
                if self.phase is not Phase.RUNNING or state.paused or state.ended:
                    why = "the task stopped before its claim was answered"
                    held = 0 if verdict == 0 else -1  # (ours, or unknown: missed)
                    self._on_verdict(state, due, planned, held, now, why)
                    continue
                fire = self._on_verdict(state, due, planned, verdict, now)
                if fire is not None:
                    fires.append(fire)
            elif state.next_due == due:  # answered ahead of its deadline: kept until then
                claims.answer(task_id, due, verdict)
        return fires

    def give_up_unclaimed(self, now: float) -> None:
        """Fires whose claim was not answered `wait` after their deadline: missed."""
        claims = self._claims
        if claims is None:
            return
        for task_id, due in claims.expired(now):
            state = self._states.get(task_id)
            if state is not None:
                why = "its claim was not answered in time (the store did not answer)"
                self._count_missed(state, 1, now, why, due)

    def _claimed(self, state: _TaskState, due: float, planned: float, now: float) -> Fire | None:
        """At a fire's deadline, in a cluster: run it if this node holds its claim."""
        claims = self._claims
        assert claims is not None
        task_id = state.spec.task_id
        verdict = claims.verdict_of(task_id, due)
        if verdict is None:  # asked late, never asked (a catch-up), or the store is slow
            claims.hold(task_id, due, planned)
            claims.ask_now(task_id, due)  # (asking twice is harmless: a claim is once)
            return None
        return self._on_verdict(state, due, planned, verdict, now)

    def _on_verdict(
        self,
        state: _TaskState,
        due: float,
        planned: float,
        verdict: int,
        now: float,
        why: str = "it could not be claimed (the store did not answer): this node fails closed",
    ) -> Fire | None:
        if verdict == 0:  # another node runs it: not one of this node's dues
            state.dues -= 1
            self._elsewhere.add(state.spec.task_id)
            return None
        self._elsewhere.discard(state.spec.task_id)
        if verdict < 0:
            self._count_missed(state, 1, now, why, due)
            return None
        return self._fire_if_may(state, due, planned, now, verdict)

    # -- checkpoints, and taking over from a dispatcher that died -----------------------------

    @property
    def last_seq(self) -> int:
        return self._seq

    def has_progress(self) -> bool:
        """Whether some task changed since the last `take_progress`."""
        return bool(self._changed)

    def take_progress(
        self, limit: int | None = None, only: str | None = None
    ) -> dict[str, tuple[Any, ...]]:
        """The progress (`TaskProgress` fields, as a plain tuple: pickled 4x faster) of the
        tasks that changed since they were last taken, `limit` of them at most; `only`: of
        that task alone (if it changed)."""
        states = self._states
        changed = self._changed
        if only is not None:
            if only not in changed:
                return {}
            changed.discard(only)
            taken = [only]
        elif limit is None or limit >= len(changed):
            taken = list(changed)
            changed.clear()
        else:
            taken = [changed.pop() for _ in range(limit)]
        running: dict[str, list[int]] = {}
        if any(states[task_id].running for task_id in taken):  # (which runs: rarely needed)
            for seq, (task_id, _) in self._in_flight.items():
                running.setdefault(task_id, []).append(seq)
        last = self._seq
        return {
            task_id: _progress_of(states[task_id], last, tuple(running.get(task_id, ())))
            for task_id in taken
        }

    def restore(
        self, progress: Mapping[str, tuple[Any, ...]], last_seq: int, *, takeover: bool = True
    ) -> None:
        """Before `start`: continue from a checkpoint of a dispatcher that died (`takeover`):
        `start` then skips the start-up tasks (they ran) and re-arms each task where it was.
        Or, `takeover=False`, from what a store kept of an instance that ended: the start-up
        tasks run again, then each task is re-armed where it was (the occurrences that fell
        due meanwhile are caught up by its policy and counted as missed)."""
        for task_id, fields in progress.items():
            saved = TaskProgress(*fields)
            state = self._states.get(task_id)
            if state is None:  # removed and forgotten since: nothing to continue
                continue
            if saved.removed and not takeover:  # registered again by the code: starts afresh
                continue
            if saved.schedule is not None and state.schedule is not None:
                try:
                    state.schedule.restore(saved.schedule)
                except (ValueError, TypeError):
                    logger.warning("%s: its schedule changed kind; it starts afresh", task_id)
                    continue
                state.next_due = saved.next_due
            state.ended = saved.ended
            state.removed = saved.removed
            state.paused = saved.paused
            if saved.paused and not saved.ended:
                self._paused.add(task_id)
            else:
                self._paused.discard(task_id)
            state.runs, state.failures, state.timeouts = saved.runs, saved.failures, saved.timeouts
            state.missed, state.last_error = saved.missed, saved.last_error
            state.lateness_max = saved.lateness_max
            state.dues, state.lost = saved.dues, saved.lost
            self._counted_there[task_id] = (saved.counted_through, frozenset(saved.in_flight))
        self._seq = max(self._seq, last_seq)
        if takeover:
            self._resumed = True
        else:
            self._restarted = True

    def adopt(self, runs: Iterable[tuple[int, str, float]]) -> None:
        """Runs a dispatcher that died had sent, still going in a worker: wait for their end."""
        for seq, task_id, due in runs:
            state = self._states.get(task_id)
            if state is None or seq in self._in_flight:
                continue
            self._in_flight[seq] = (task_id, due)
            state.running += 1
            self._seq = max(self._seq, seq)
            self._dues_run_there.setdefault(task_id, set()).add(due)

    def recount(self, ended: Iterable[tuple[int, str, float, str, bool]]) -> None:
        """Runs that ended for the dispatcher that died, as their worker tells (seq, task, due,
        outcome, scheduled): counted unless its checkpoint counted them already."""
        for seq, task_id, due, outcome, scheduled in ended:
            self._seq = max(self._seq, seq)
            state = self._states.get(task_id)
            if state is None:
                continue
            if scheduled:
                self._dues_run_there.setdefault(task_id, set()).add(due)
            through, running = self._counted_there.get(task_id, (0, frozenset()))
            if (seq <= through and seq not in running) or seq in self._recounted:
                continue
            self._recounted.add(seq)
            self._record(state, Done(task_id, seq, due, due, outcome), None)  # type: ignore[arg-type]

    def started_there(self, last_dues: Iterable[tuple[str, float]]) -> None:
        """The latest due of each task that a worker started for the dispatcher that died."""
        known = self._started_there
        for task_id, due in last_dues:
            if due > known.get(task_id, float("-inf")):
                known[task_id] = due

    def _go_on_running(self, now: float) -> list[Fire]:
        """Re-arm every task where the dispatcher that died left it: an occurrence it fired
        is not fired again; those that fell due while no dispatcher ran are caught up by each
        task's policy at the next tick, as after any stall."""
        self.phase = Phase.RUNNING
        self._count_lost_there(now)
        self._rearm_all_restored(now)
        self._started_there.clear()
        self._dues_run_there.clear()
        return self._advance_phase(now)

    def _count_lost_there(
        self,
        now: float,
        error: str = "lost with the dispatcher that died (its worker did not report it)",
    ) -> None:
        """Runs the last checkpoint saw in flight that no worker has going or says it ended
        (their worker died meanwhile, or they never left the dispatcher): lost, and counted."""
        for task_id, (_, in_flight) in self._counted_there.items():
            state = self._states[task_id]
            for seq in in_flight:
                if seq in self._in_flight or seq in self._recounted:
                    continue
                self._recounted.add(seq)
                self._record(state, Done(task_id, seq, now, now, "crashed", error), None)

    def _rearm_all_restored(self, now: float) -> None:
        for state in self._states.values():
            if state.scheduled and not state.paused and not state.ended:
                self._rearm_restored(state, now)

    def _rearm_restored(self, state: _TaskState, now: float) -> None:
        due = state.next_due  # armed, not yet fired when the checkpoint was taken
        if due is None:
            if state.waits and state.running:  # its run's end arms it
                return
            due = self._next(state, now)
        task_id = state.spec.task_id
        started = self._started_there.get(task_id)
        ran = self._dues_run_there.get(task_id, set())
        while due is not None and started is not None and due <= started + COINCIDENT:
            # Fell due after the checkpoint, for the one that died: it ran, or was skipped.
            state.dues += 1
            if due not in ran:
                self._count_missed(state, 1, now, "the dispatcher that died skipped it", due)
            due = self._next(state, now)
        self._push(state, due)

    # -- reporting ----------------------------------------------------------------------------

    def stats(self, task_ids: Iterable[str] | None = None) -> list[TaskStats]:
        """The statistics of every task (or of `task_ids`, those still known)."""
        if task_ids is None:
            return [_snapshot(state) for state in self._states.values()]
        states = self._states
        return [_snapshot(states[task_id]) for task_id in task_ids if task_id in states]

    def in_flight(self) -> dict[int, tuple[str, float]]:
        """Runs fired and not yet done: sequence number -> (task id, due time)."""
        return dict(self._in_flight)

    def flight(self, seq: int) -> tuple[str, float] | None:
        """(task id, due time) of run `seq` while it is in flight, else None."""
        return self._in_flight.get(seq)


def joining_progress(progress: Mapping[str, tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    """What a node that joins a serving cluster takes of the saved progress: each task's pause
    and end (the app's state), not its schedule's position nor another node's counters."""
    joined: dict[str, tuple[Any, ...]] = {}
    for task_id, fields in progress.items():
        saved = TaskProgress(*fields)
        joined[task_id] = TaskProgress(
            None,
            None,
            saved.paused,
            saved.ended,
            saved.removed,
            0,
            0,
            0,
            0,
            None,
            None,
            0,
            0,
            0,
            (),
        )
    return joined


def _progress_of(state: _TaskState, last_seq: int, in_flight: tuple[int, ...]) -> tuple[Any, ...]:
    schedule = state.schedule
    return (  # TaskProgress's fields, in its order
        None if schedule is None else schedule.progress(),
        state.next_due,
        state.paused,
        state.ended,
        state.removed,
        state.runs,
        state.failures,
        state.timeouts,
        state.missed,
        state.last_error,
        state.lateness_max,
        state.dues,
        state.lost,
        last_seq,
        in_flight,
    )


def _snapshot(state: _TaskState) -> TaskStats:
    samples = sorted(state.lateness or ())
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
        dues=state.dues,
        lost=state.lost,
        running=state.running,
    )


def _percentile(sorted_samples: list[float], fraction: float) -> float | None:
    if not sorted_samples:
        return None
    index = min(len(sorted_samples) - 1, round(fraction * (len(sorted_samples) - 1)))
    return sorted_samples[index]
