"""The control core: every scheduling decision of both runtimes, with no I/O and no clock.

`ControlCore.handle(now, event)` takes the time and one event (a frame from a worker or from the
supervisor, a stop, an abort) and returns what to send; `tick(now)` fires what is due;
`next_wakeup()` says when to call `tick` next. The dispatcher process drives it from a `select`
loop over pipes, the in-process runtime (`workers=0`) from its event loop with one in-memory
"worker", so both runtimes stop, grace, run now, lose workers and report stats the same way by
construction, and every behaviour is a table test on a fake clock.

Example, one task every second and one worker:

    >>> from aioclock import Every
    >>> from aioclock._protocol import Done, Ready
    >>> from aioclock.dispatcher.engine import ScheduledTask
    >>> core = ControlCore([ScheduledTask("mod:tick", Every(seconds=1))], workers=[0])
    >>> core.handle(100.0, Ready(0, pid=1))
    [ToControl(frame=Ready(worker=0, pid=1))]
    >>> core.next_wakeup()
    101.0
    >>> core.tick(101.0)
    [ToWorker(worker=0, frame=Fire(task='mod:tick', seq=2, due=101.0, reply=False), sync=False)]
"""

from __future__ import annotations

import heapq
import logging
import pickle
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple, Union

from aioclock._protocol import (
    CANCEL_ANSWER_WAIT,
    Barrier,
    BarrierPassed,
    Cancel,
    Checkpoint,
    Claims,
    ClaimVerdicts,
    ControlReply,
    Done,
    EventItem,
    Events,
    Finished,
    Fire,
    Frame,
    InFlight,
    LearnTask,
    PauseTask,
    Ping,
    Pong,
    Ready,
    Refusal,
    Rejoin,
    RemoveTask,
    ResumeTask,
    RunNow,
    RunNowDone,
    Stats,
    StatsRequest,
    Stop,
    TaskStats,
    WorkerGone,
    WorkerJoined,
)
from aioclock.dispatcher.claims import ClusterPlan
from aioclock.dispatcher.engine import (
    DeadlineEngine,
    Phase,
    ScheduledTask,
    control_refusal,
    joining_progress,
    reschedule_refusal,
    trigger_refusal,
)
from aioclock.dispatcher.router import Router, WorkerLink
from aioclock.triggers import BaseTrigger

logger = logging.getLogger(__name__)

__all__ = ["CANCEL_ANSWER_WAIT", "ControlCore", "Event", "Send", "ToControl", "ToWorker"]


class ToWorker(NamedTuple):  # a tuple: one is built per fire, on the hot path
    """Send `frame` to worker `worker`; `sync` marks a fire that will occupy a thread there."""

    worker: int
    frame: Union[Fire, Cancel, Stop, LearnTask, Barrier, Rejoin]
    sync: bool = False


class ToControl(NamedTuple):
    """Send `frame` to whoever controls the app: the supervisor, or the in-process API."""

    frame: Frame


Send = Union[ToWorker, ToControl]


@dataclass(frozen=True)
class Abort:
    """Stop at once: cancel every run, run no shut-down task."""


@dataclass(frozen=True)
class ExternalDue:
    """A trigger written for aioclock 0.3, driven outside the core, says `task` is due now."""

    task: str


@dataclass(frozen=True)
class ExternalEnded:
    """Such a trigger's loop ended: `task` will not fire again."""

    task: str


@dataclass(frozen=True)
class ClockSet:
    """The wall clock was set by `seconds` (negative: back) since the driver last looked."""

    seconds: float


@dataclass(frozen=True)
class WorkerClosed:
    """Worker `worker`'s pipe closed: send it nothing more (its `WorkerGone` follows)."""

    worker: int


@dataclass(frozen=True)
class Reschedule:
    """Give `task` a new trigger (`RescheduleTask` once the driver has unpickled it)."""

    request: int
    task: str
    trigger: BaseTrigger[Any]


@dataclass(frozen=True)
class NewTask:
    """Register a task while the app serves (`AddTask` once the driver has unpickled it).

    `code`: what a worker process needs to run it (a pickled `Task`), sent to every worker
    ahead of its first fire; None in-process, where the runner already has it.
    """

    request: int
    spec: ScheduledTask
    sync: bool = False
    code: Union[bytes, None] = None


Control = Union[PauseTask, ResumeTask, RemoveTask, Reschedule, NewTask]

Event = Union[
    Done,
    Ready,
    Stop,
    Abort,
    RunNow,
    StatsRequest,
    WorkerGone,
    WorkerJoined,
    WorkerClosed,
    ClockSet,
    Ping,
    ExternalDue,
    ExternalEnded,
    PauseTask,
    ResumeTask,
    RemoveTask,
    Reschedule,
    NewTask,
    BarrierPassed,
    InFlight,
    ClaimVerdicts,
]

_VERBS = {
    PauseTask: "pause",
    ResumeTask: "resume",
    RemoveTask: "remove",
    Reschedule: "reschedule",
    NewTask: "add",
}
_PAST = {"pause": "paused", "resume": "resumed", "remove": "removed", "reschedule": "rescheduled"}


_STOPPING = (Phase.DRAINING, Phase.SHUTDOWN, Phase.FINISHED)

#: A checkpoint frame carries the progress of at most this many tasks (a frame stays small).
CHECKPOINT_PAGE = 500

#: A `Claims` frame asks for this many fires at most (a frame stays far below its limit).
CLAIMS_PAGE = 2000

#: The statistics of this many tasks are gathered in one step (a few ms): an answer for more
#: tasks is gathered over several steps, with the fires that fall due in between.
STATS_CHUNK = 2000


@dataclass(frozen=True)
class Resume:
    """Where the schedule was left: the checkpoints of a dispatcher that died, merged
    (`takeover`: its workers still run what it sent), or what a store kept of an instance that
    ended (`takeover=False`: a fresh start that goes on with each task's schedule, pause and
    counters; the start-up tasks run again and no worker has runs to report)."""

    progress: dict[str, tuple[Any, ...]]  # TaskProgress fields per task
    last_seq: int
    takeover: bool = True


#: The event that reports a run's end, by its outcome (see `aioclock.events.Event`).
_END_KINDS = {
    "ok": "run_succeeded",
    "failed": "run_failed",
    "crashed": "run_failed",
    "timeout": "run_timed_out",
    "cancelled": "run_cancelled",
}
_CONTROL_KINDS = {
    PauseTask: "task_paused",
    ResumeTask: "task_resumed",
    RemoveTask: "task_removed",
    Reschedule: "task_rescheduled",
    NewTask: "task_added",
}


class ControlCore:
    """The deadline engine, the routing of fires to workers, and every policy around them.

    `workers`: the indices of the workers the app starts with; the schedule starts when all of
    them are `Ready`. `sync_tasks`: the tasks that occupy a thread of their worker (routed so
    that light runs avoid such workers). `sync_cancel_ends_worker`: a worker that is told to
    cancel a sync run (overlap "replace") exits, to end the thread (worker processes); in-process
    the thread runs on.
    """

    def __init__(
        self,
        schedule: Iterable[ScheduledTask],
        *,
        workers: Iterable[int],
        sync_tasks: frozenset[str] = frozenset(),
        publish_due_times: bool = False,
        resume: Resume | None = None,
        checkpointing: bool = False,
        sync_cancel_ends_worker: bool = False,
        cluster: ClusterPlan | None = None,
    ) -> None:
        self.engine = DeadlineEngine(schedule, publish_due_times=publish_due_times)
        # In a cluster: each fire is claimed ahead of its deadline (`Claims` to the supervisor,
        # `ClaimVerdicts` back), and runs here only if this node holds its claim.
        self._cluster = cluster is not None
        if cluster is not None:
            self.engine.join_cluster(cluster)
            if resume is not None and cluster.joining and not resume.takeover:
                # Others serve: the schedule's position is theirs; pause and end are the app's.
                resume = Resume(joining_progress(resume.progress), resume.last_seq, False)
        # Someone keeps checkpoints (the supervisor): a control verb's answer follows one.
        self._checkpointing = checkpointing
        self._resuming = resume is not None and resume.takeover
        if resume is not None:
            self.engine.restore(resume.progress, resume.last_seq, takeover=resume.takeover)
        self.router = Router()
        self._sync_tasks = set(sync_tasks)
        self._sync_cancel_ends_worker = sync_cancel_ends_worker
        self._learned: dict[str, bytes] = {}  # tasks added while serving: what workers need
        self._expected_ready: set[int] = set()
        for index in workers:
            self.router.add(index)
            self._expected_ready.add(index)
        self._started = False
        self._stopping = False
        self._grace = 0.0
        self._last_seq_before_stop = 0  # runs fired later get the grace from their start
        self._finished_sent = False
        self._waiting: deque[Fire] = deque()  # fired, but no worker was ready
        self._run_now: dict[int, int] = {}  # seq -> request
        # Runs that a stop gave a grace period: (when to cancel, seq), and when a cancelled
        # run must have answered at the latest.
        self._cancel_at: list[tuple[float, int]] = []
        self._answer_by: dict[int, float] = {}
        # Pauses waiting for workers to pass a barrier: token -> (workers, the answer).
        self._barriers: dict[int, tuple[set[int], ControlReply]] = {}
        # Sync runs replaced (overlap "replace"): seq -> their worker, which takes no fire
        # while it exits to end the thread (it takes them again if the run ended first).
        self._retiring: dict[int, int] = {}
        # Statistics being gathered, a chunk per step: (request, task ids left, gathered).
        self._stats_jobs: deque[tuple[int, list[str], list[TaskStats]]] = deque()
        self._stats_step = 0.0  # when the last chunk was gathered
        # Events noted since the last `handle` or `tick`, sent at its end as one `Events`;
        # None while nobody listens (`want_events`): then none is noted at all.
        self._events: list[EventItem] | None = None

    def want_events(self) -> None:
        """From now on, answer each step with the events it caused (an `Events` frame after
        the other sends): runs started and ended, occurrences missed, control verbs applied."""
        if self._events is None:
            self._events = []
            self.engine.on_missed = self._note_missed

    def _note_missed(
        self, task_id: str, count: int, now: float, due: float | None, why: str
    ) -> None:
        if self._events is not None:
            self._events.append(("run_missed", task_id, due, now, now, None, why, None, count))

    def _with_events(self, sends: list[Send]) -> list[Send]:
        events = self._events
        if events:
            self._events = []
            sends.append(ToControl(Events(events)))
        return sends

    # -- what the driver asks -----------------------------------------------------------------

    def opening(self) -> list[Send]:
        """What to send first: taking over from a dispatcher that died, ask every worker what
        it runs (each answers `InFlight` once it has started what was sent before)."""
        if not self._resuming:
            return []
        return [ToWorker(index, Rejoin()) for index in sorted(self.router.workers)]

    def checkpoints(self, pages: int | None = None) -> list[Checkpoint]:
        """The progress of the tasks that changed since last asked, in frames of at most
        CHECKPOINT_PAGE tasks; `pages` frames at most (None: all)."""
        engine = self.engine
        frames: list[Checkpoint] = []
        while engine.has_progress() and (pages is None or len(frames) < pages):
            frames.append(self._checkpoint(engine.take_progress(CHECKPOINT_PAGE)))
        return frames

    def _checkpoint(self, progress: dict[str, tuple[Any, ...]]) -> Checkpoint:
        engine = self.engine
        running = engine.phase is not Phase.STARTUP
        return Checkpoint(engine.last_seq, running, pickle.dumps(progress, protocol=5))

    @property
    def finished(self) -> bool:
        """Nothing more will be fired or sent: the driver may end."""
        return self._finished_sent

    def next_wakeup(self) -> float | None:
        """When `tick` has something to do next; None if only an event can move things on."""
        wakeup = self.engine.next_deadline() if self._started else None
        if self._cancel_at:
            first = self._cancel_at[0][0]
            wakeup = first if wakeup is None else min(wakeup, first)
        if self._answer_by:
            last_chance = min(self._answer_by.values())
            wakeup = last_chance if wakeup is None else min(wakeup, last_chance)
        if self._stats_jobs:  # at once, after what is due
            return self._stats_step if wakeup is None else min(wakeup, self._stats_step)
        return wakeup

    def tick(self, now: float) -> list[Send]:
        """Fire every occurrence due by `now`; cancel the runs whose grace is over."""
        sends: list[Send] = []
        if self._started:
            if self._cluster:  # before the fires: an ask due with its fire is not dropped
                self._ask_claims(sends, now)
            sends += self._fires(self.engine.pop_due(now), now)
            if self._cluster:
                self._ask_claims(sends, now)
        if self._cancel_at and self._cancel_at[0][0] <= now:
            sends += self._cancel_overdue(now)
        if self._answer_by:
            sends += self._give_up_silent_runs(now)
        if self._stats_jobs:
            sends += self._gather_stats(now)
        if self._events:
            self._with_events(sends)
        if self.engine.phase is Phase.FINISHED:
            sends += self._finish_if_done()
        return sends

    def handle(self, now: float, event: Event) -> list[Send]:
        """What to send in answer to `event`."""
        if isinstance(event, Done):
            sends = self._on_done(event, now)
        elif isinstance(event, Ready):
            sends = self._on_ready(event, now)
        elif isinstance(event, Stop):
            sends = self._on_stop(event, now)
        elif isinstance(event, Abort):
            sends = self._on_abort(now)
        elif isinstance(event, RunNow):
            sends = self._on_run_now(event, now)
        elif isinstance(event, StatsRequest):
            self._stats_jobs.append((event.request, list(self.engine.task_ids), []))
            sends = self._gather_stats(now)
        elif isinstance(event, WorkerGone):
            sends = self._on_worker_gone(event, now)
        elif isinstance(event, WorkerJoined):
            sends = self._on_worker_joined(event, now)
        elif isinstance(event, WorkerClosed):
            link = self.router.workers.get(event.worker)
            if link is not None:
                link.alive = False
            sends = []
        elif isinstance(event, Ping):
            sends = [ToControl(Pong(event.token))]
        elif isinstance(event, ClockSet):
            self._on_clock_set(event.seconds)
            sends = []
        elif isinstance(event, ExternalDue):
            sends = self._fires(self.engine.fire_external(event.task, now), now)
        elif isinstance(event, ExternalEnded):
            sends = self._route(self.engine.external_ended(event.task, now), now)
        elif isinstance(event, BarrierPassed):
            sends = self._on_barrier_passed(event.worker, event.token)
        elif isinstance(event, InFlight):
            sends = self._on_in_flight(event, now)
        elif isinstance(event, ClaimVerdicts):
            sends = self._fires(self.engine.on_verdicts(event.verdicts, now), now)
            self._ask_claims(sends, now)
        elif isinstance(event, (PauseTask, ResumeTask, RemoveTask, Reschedule, NewTask)):
            sends = self._on_control(event, now)
        else:
            logger.warning("the control core ignored %s", type(event).__name__)
            sends = []
        if self._events:
            self._with_events(sends)
        if self.engine.phase is Phase.FINISHED:
            sends += self._finish_if_done()
        return sends

    def _ask_claims(self, sends: list[Send], now: float) -> None:
        """In a cluster: ask for the claims of the fires coming within the horizon, and give
        up the fires whose claim was not answered in time."""
        engine = self.engine
        asks = engine.take_asks(now)
        # (every grid of a cluster is anchored at one epoch: many fires may come at once)
        pages = range(0, len(asks), CLAIMS_PAGE)
        sends.extend(ToControl(Claims(asks[start : start + CLAIMS_PAGE])) for start in pages)
        engine.give_up_unclaimed(now)

    def _gather_stats(self, now: float) -> list[Send]:
        """One chunk of the oldest statistics request; its answer once every task is in."""
        self._stats_step = now  # (the next step is due at once)
        request, left, gathered = self._stats_jobs[0]
        chunk = left[-STATS_CHUNK:]
        del left[-STATS_CHUNK:]
        gathered += self.engine.stats(reversed(chunk))
        if left:
            return []
        self._stats_jobs.popleft()
        gathered.reverse()  # (gathered from the end: in the order of the tasks)
        return [ToControl(Stats(request, gathered))]

    def _on_clock_set(self, seconds: float) -> None:
        """Intervals keep their length when the wall clock is set: the grids of `Every` and the
        grace periods move with it; calendar dues do not."""
        logger.warning(
            "the wall clock was set %+.3f s: fixed-rate schedules and grace periods move with "
            "it, calendar triggers follow the wall clock",
            seconds,
        )
        self.engine.shift_fixed_rate(seconds)
        self._cancel_at = [(at + seconds, seq) for at, seq in self._cancel_at]
        heapq.heapify(self._cancel_at)
        self._answer_by = {seq: at + seconds for seq, at in self._answer_by.items()}

    # -- runs ---------------------------------------------------------------------------------

    def _on_done(self, done: Done, now: float) -> list[Send]:
        self.router.release(done.seq)
        self._answer_by.pop(done.seq, None)
        sends: list[Send] = []
        if self._retiring:
            sends += self._unless_retired(done, now)
        events = self._events
        if events is not None:
            flight = self.engine.flight(done.seq)
            due = None if flight is None else flight[1]
            kind = _END_KINDS.get(done.outcome, "run_failed")
            end = (kind, done.task, due, done.started, done.finished, done.outcome, done.error)
            events.append((*end, None, 1))
        request = self._run_now.pop(done.seq, None)
        if request is not None:
            reply = RunNowDone(request, done.seq, done.outcome, done.error, done.result)
            sends.append(ToControl(reply))
        return sends + self._route(self.engine.on_done(done, now), now)

    def _on_ready(self, ready: Ready, now: float) -> list[Send]:
        link = self.router.workers.get(ready.worker)
        if link is None:
            logger.warning("Ready from unknown worker %d", ready.worker)
            return []
        link.ready = True
        self._expected_ready.discard(ready.worker)
        return [ToControl(ready), *self._start_if_ready(now), *self._route_waiting(now)]

    def _on_in_flight(self, answer: InFlight, now: float) -> list[Send]:
        """A worker's runs for the dispatcher that died: waited for, routed back to it."""
        link = self.router.workers.get(answer.worker)
        if link is None:
            return []
        self.engine.adopt(answer.runs)
        self.engine.started_there(answer.last_dues)
        self.engine.recount(answer.ended)
        for seq, task_id, _ in answer.runs:
            if self.engine.flight(seq) is not None and self.router.owner(seq) is None:
                self.router.assign(link, seq, task_id in self._sync_tasks)
        if not answer.final:
            return []
        return self._on_ready(Ready(answer.worker, answer.pid), now)

    def _start_if_ready(self, now: float) -> list[Send]:
        """Start the schedule once every worker the app started with is ready (or gone)."""
        if self._started or self._expected_ready or not self.router.available():
            return []
        self._started = True
        return self._route(self.engine.start(now), now) + self._route_waiting(now)

    def _on_worker_joined(self, joined: WorkerJoined, now: float) -> list[Send]:
        sends: list[Send] = []
        if joined.worker in self.router.workers:  # its predecessor's loss was not reported
            sends = self._on_worker_gone(WorkerGone(joined.worker, None), now)
        self.router.add(joined.worker)
        # It may have been started before a task was added: teach it first, fires come after.
        lessons = self._learned.items()
        return sends + [ToWorker(joined.worker, LearnTask(t, code)) for t, code in lessons]

    def _on_run_now(self, request: RunNow, now: float) -> list[Send]:
        """Run a task at once, outside its schedule: a run like any other (counted in its
        stats, routed, cancelled at a stop), whose result goes back to the requester."""
        refusal = None
        if self._stopping or self.engine.finished:
            refusal = f"task {request.task!r} was not run: the app is stopping"
        elif not self.engine.registered(request.task):
            refusal = f"no task with id {request.task!r} is registered"
        if refusal is not None:
            return [ToControl(RunNowDone(request.request, 0, "failed", refusal))]
        fire = self.engine.run_now(request.task, now, reply=True)
        self._run_now[fire.seq] = request.request
        return self._route([fire], now)

    # -- runtime control ----------------------------------------------------------------------

    def _on_control(self, event: Control, now: float) -> list[Send]:
        """Apply a control verb and answer it; the answer follows what makes it true (a paused
        task's fires waiting for a worker are dropped, an added task is taught to every worker
        before it can be fired)."""
        task_id = event.spec.task_id if isinstance(event, NewTask) else event.task
        verb = _VERBS[type(event)]
        refused = self._refusal(event, task_id, verb)
        if refused is not None:
            kind, message = refused
            logger.warning("refused to %s %s: %s", verb, task_id, message)
            return [ToControl(ControlReply(event.request, kind, message))]
        engine = self.engine
        sends: list[Send] = []
        fires: list[Fire] = []
        if self._events is not None:
            self._events.append(
                (_CONTROL_KINDS[type(event)], task_id, None, now, now, None, None, None, 1)
            )
        if isinstance(event, PauseTask):
            engine.pause(task_id, now)
            self._drop_waiting(task_id, now, "the task was paused before it could start")
            saved = self._checkpoint_now(task_id)
            return saved + self._answer_once_started(task_id, ControlReply(event.request))
        elif isinstance(event, ResumeTask):
            fires = engine.resume(task_id, now)
        elif isinstance(event, RemoveTask):
            self._learned.pop(task_id, None)
            self._drop_waiting(task_id, now, "the task was removed before it could start")
            fires = engine.remove(task_id, now)
        elif isinstance(event, Reschedule):
            fires = engine.reschedule(task_id, event.trigger, now)
        else:
            if event.sync:
                self._sync_tasks.add(task_id)
            else:
                self._sync_tasks.discard(task_id)
            if event.code is not None:
                self._learned[task_id] = event.code
                lesson = LearnTask(task_id, event.code)
                links = self.router.workers.values()
                sends += [ToWorker(link.index, lesson) for link in links if link.alive]
            fires = engine.add(event.spec, now)
        logger.info("task %s %s", task_id, _PAST.get(verb, "added"))
        routed = self._route(fires, now)
        # Kept by the supervisor before it hears the answer: a dispatcher that takes over
        # knows every change that was confirmed.
        sends += self._checkpoint_now(task_id)
        sends.append(ToControl(ControlReply(event.request)))
        return sends + routed

    def _checkpoint_now(self, task_id: str) -> list[Send]:
        """The progress of `task_id`, which a control verb changed, ahead of the answer (the
        other tasks' go behind the fires, as always)."""
        if not self._checkpointing:
            return []
        progress = self.engine.take_progress(only=task_id)
        return [ToControl(self._checkpoint(progress))] if progress else []

    def _refusal(self, event: Control, task_id: str, verb: str) -> tuple[Refusal, str] | None:
        engine = self.engine
        if self._stopping or engine.phase in _STOPPING:
            done = _PAST.get(verb, "added")
            return "stopping", f"task {task_id!r} was not {done}: the app is stopping"
        if isinstance(event, NewTask):
            if engine.registered(task_id):
                return "conflict", f"task {task_id!r} is already registered"
            problem = trigger_refusal(event.spec.trigger)
            return None if problem is None else ("invalid", problem)
        if not engine.registered(task_id):
            return "unknown", f"no task with id {task_id!r} is registered"
        if isinstance(event, RemoveTask):
            return None
        problem = control_refusal(verb, task_id, engine.trigger_of(task_id))
        if problem is not None:
            return "conflict", problem
        if isinstance(event, Reschedule):
            problem = reschedule_refusal(event.trigger)
            return None if problem is None else ("invalid", problem)
        if isinstance(event, PauseTask) and engine.ended(task_id):
            message = f"task {task_id!r} will not fire again (its trigger ended): reschedule it"
            return "conflict", message
        return None

    def _answer_once_started(self, task_id: str, reply: ControlReply) -> list[Send]:
        """Answer a pause once every run of `task_id` already sent to a worker has started, so
        that none starts after `pause()` returns: each such worker passes a barrier first (it
        reads its pipe in order)."""
        owners = set()
        for seq, (task, _) in self.engine.in_flight().items():
            link = self.router.owner(seq)
            if task == task_id and link is not None and link.alive:
                owners.add(link.index)
        if not owners:
            return [ToControl(reply)]
        self._barriers[reply.request] = (owners, reply)
        return [ToWorker(index, Barrier(reply.request)) for index in sorted(owners)]

    def _on_barrier_passed(self, worker: int, token: int) -> list[Send]:
        pending = self._barriers.get(token)
        if pending is None:
            return []
        waiting_for, reply = pending
        waiting_for.discard(worker)
        if waiting_for:
            return []
        del self._barriers[token]
        return [ToControl(reply)]

    def _drop_waiting(self, task_id: str, now: float, why: str) -> None:
        """Fires of `task_id` that wait for a worker never start (a run-now still does): they
        are missed, for `why`."""
        dropped = [f for f in self._waiting if f.task == task_id and not f.reply]
        if not dropped:
            return
        self._waiting = deque(f for f in self._waiting if f.task != task_id or f.reply)
        for fire in dropped:
            self.engine.forget(fire.seq, now, why)

    # -- overlap "replace" --------------------------------------------------------------------

    def _fires(self, fires: list[Fire], now: float) -> list[Send]:
        """Route scheduled fires, after cancelling the runs they replace (if any)."""
        replaced = self.engine.take_replaced()
        sends = self._cancel_replaced(replaced, now) if replaced else []
        return sends + self._route(fires, now)

    def _cancel_replaced(self, seqs: list[int], now: float) -> list[Send]:
        """Cancel runs that newer runs of their task replace. One still waiting for a worker
        ends at once; a sync one in a worker process ends with its worker (a thread cannot be
        cancelled): that worker takes no fire meanwhile."""
        sends: list[Send] = []
        for seq in seqs:
            flight = self.engine.flight(seq)
            if flight is None:
                continue
            task_id = flight[0]
            logger.info("run %d of %s is replaced by a newer run: cancelling it", seq, task_id)
            waiting = [fire for fire in self._waiting if fire.seq == seq]
            if waiting:
                self._waiting.remove(waiting[0])
                error = "replaced by a newer run before it started"
                sends += self._on_done(Done(task_id, seq, now, now, "cancelled", error), now)
                continue
            link = self.router.owner(seq)
            if link is None or not link.alive:
                continue  # its worker is gone: its WorkerGone ends it
            if self._sync_cancel_ends_worker and link.in_flight.get(seq, False):
                link.ready = False
                self._retiring[seq] = link.index
            self._answer_by[seq] = now + CANCEL_ANSWER_WAIT
            sends.append(ToWorker(link.index, Cancel(seq, replace=True)))
        return sends

    def _unless_retired(self, done: Done, now: float) -> list[Send]:
        """A replaced sync run that ended before its cancellation leaves its worker running:
        it takes fires again."""
        index = self._retiring.pop(done.seq, None)
        if index is None or done.outcome == "cancelled":
            return []
        link = self.router.workers.get(index)
        if link is None or not link.alive:
            return []
        link.ready = True
        return self._route_waiting(now)

    # -- routing ------------------------------------------------------------------------------

    def _route(self, fires: list[Fire], now: float) -> list[Send]:
        """Send new fires to workers (a run-now before every worker is ready waits for the
        start)."""
        if not self._started:
            self._waiting.extend(fires)
            return []
        return self._place(fires, now) if fires else []

    def _place(self, fires: list[Fire], now: float) -> list[Send]:
        """A worker for each fire: light fires first, then the sync ones (marked `sync`).

        Sync fires choose their workers first, so that the light fires of the same batch land
        on workers whose GIL no CPU-bound thread is about to hold.
        """
        sync_fires: list[Fire] = []
        light_fires: list[Fire] = []
        for fire in fires:
            (sync_fires if fire.task in self._sync_tasks else light_fires).append(fire)
        sync = self._assign(sync_fires, True, now)
        sends = self._assign(light_fires, False, now) + sync
        events = self._events
        if events is not None:
            for send in sends:
                placed = send.frame
                if isinstance(send, ToWorker) and isinstance(placed, Fire):
                    started = ("run_started", placed.task, placed.due, now, None, None, None)
                    events.append((*started, send.worker, 1))
        return sends

    def _assign(self, fires: list[Fire], is_sync: bool, now: float) -> list[Send]:
        """Choose a worker per fire; a fire that finds no ready worker waits for one.

        The light fires of one batch share one worker without sync work (one wake-up instead
        of several).
        """
        sends: list[Send] = []
        light_worker: WorkerLink | None = None
        router = self.router
        for fire in fires:
            link = light_worker or router.pick()
            if link is None:
                self._waiting.append(fire)
                continue
            if not is_sync and link.sync_running == 0:
                light_worker = link
            router.assign(link, fire.seq, is_sync)
            sends.append(ToWorker(link.index, fire, is_sync))
            if self._stopping and fire.seq > self._last_seq_before_stop:
                # A run started after a stop (a shut-down task) gets the grace from its start.
                heapq.heappush(self._cancel_at, (now + self._grace, fire.seq))
        return sends

    def _route_waiting(self, now: float) -> list[Send]:
        if not self._started or not self._waiting or not self.router.available():
            return []
        waiting = list(self._waiting)
        self._waiting.clear()
        if self.engine.phase is Phase.RUNNING:  # those too late for their misfire_grace: missed
            waiting, fires = self.engine.drop_misfired(waiting, now)
            return self._place(waiting, now) + self._route(fires, now)
        return self._place(waiting, now)

    # -- stopping -----------------------------------------------------------------------------

    def _on_stop(self, stop: Stop, now: float) -> list[Send]:
        """Stop firing; the runs in flight (and the shut-down tasks) get `stop.grace` seconds,
        then they are cancelled."""
        if self._stopping or self.engine.finished:
            return []
        self._stopping = True
        self._grace = stop.grace
        in_flight = self.engine.in_flight()
        self._last_seq_before_stop = max(in_flight, default=0)
        for seq in in_flight:
            heapq.heappush(self._cancel_at, (now + stop.grace, seq))
        return self._route(self.engine.request_stop(now), now)

    def _on_abort(self, now: float) -> list[Send]:
        self._stopping = True
        in_flight = self.engine.in_flight()
        self.engine.abort()
        self._waiting.clear()
        sends: list[Send] = []
        for seq in in_flight:
            link = self.router.release(seq)
            if link is not None and link.alive:
                sends.append(ToWorker(link.index, Cancel(seq)))
        return sends

    def _cancel_overdue(self, now: float) -> list[Send]:
        """Cancel the runs whose grace is over. Ending a run that never reached a worker may
        fire shut-down tasks, whose own grace may be over too (`shutdown_timeout=0`): repeat."""
        sends: list[Send] = []
        engine = self.engine
        while self._cancel_at and self._cancel_at[0][0] <= now:
            overdue: set[int] = set()
            while self._cancel_at and self._cancel_at[0][0] <= now:
                seq = heapq.heappop(self._cancel_at)[1]
                if engine.flight(seq) is not None:  # else it ended in time
                    overdue.add(seq)
            never_sent = [fire for fire in self._waiting if fire.seq in overdue]
            if never_sent:
                self._waiting = deque(f for f in self._waiting if f.seq not in overdue)
            for fire in never_sent:
                overdue.discard(fire.seq)
                error = "cancelled before it started (shutdown)"
                sends += self._on_done(Done(fire.task, fire.seq, now, now, "cancelled", error), now)
            for seq in sorted(overdue):
                sends += self._cancel(seq, now)
        return sends

    def _cancel(self, seq: int, now: float) -> list[Send]:
        flight = self.engine.flight(seq)
        link = self.router.owner(seq)
        if flight is None or link is None:
            return []
        logger.warning("run %d of %s outlived the grace period: cancelling it", seq, flight[0])
        self._answer_by[seq] = now + CANCEL_ANSWER_WAIT
        return [ToWorker(link.index, Cancel(seq))]

    def _give_up_silent_runs(self, now: float) -> list[Send]:
        """A run that did not answer its cancellation is given up, so that the stop ends."""
        sends: list[Send] = []
        for seq, deadline in list(self._answer_by.items()):
            if deadline > now:
                continue
            del self._answer_by[seq]
            flight = self.engine.flight(seq)
            if flight is None:
                continue
            task_id = flight[0]
            error = f"did not answer its cancellation within {CANCEL_ANSWER_WAIT:g} s"
            logger.error("run %d of %s %s; giving it up", seq, task_id, error)
            sends += self._on_done(Done(task_id, seq, now, now, "cancelled", error), now)
        return sends

    def _finish_if_done(self) -> list[Send]:
        """Once the engine has finished: tell the controller, then stop every worker."""
        if self._finished_sent:
            return []
        self._finished_sent = True
        workers = self.router.workers.values()
        stops = [ToWorker(link.index, Stop()) for link in workers if link.alive]
        # The last progress (a store keeps it for the next start) goes before `Finished`.
        saved = [ToControl(frame) for frame in self.checkpoints()] if self._checkpointing else []
        return [*saved, ToControl(Finished()), *stops]

    # -- workers ------------------------------------------------------------------------------

    def _on_worker_gone(self, gone: WorkerGone, now: float) -> list[Send]:
        """A worker died: its runs failed. Fires sent to it after its last `Done` die with it."""
        link = self.router.remove(gone.worker)
        self._expected_ready.discard(gone.worker)
        sends: list[Send] = []
        for token in list(self._barriers):  # a dead worker starts nothing more
            sends += self._on_barrier_passed(gone.worker, token)
        sends += self._start_if_ready(now)  # it was the last one the start waited for
        if link is None:
            return sends
        if gone.reason is not None:
            error = f"worker {gone.worker} was replaced: {gone.reason}"
        else:
            error = f"worker {gone.worker} died with exit code {gone.exitcode}"
        for seq in list(link.in_flight):
            task_id = (self.engine.flight(seq) or ("?", now))[0]
            logger.error("run %d of %s failed: %s", seq, task_id, error)
            sends += self._on_done(Done(task_id, seq, now, now, "crashed", error), now)
        return sends
