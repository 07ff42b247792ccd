"""A dispatcher that takes over from one that died continues its schedule exactly: from the
last checkpoint, corrected by what the workers say they started; nothing fires twice, the
occurrences that fell due while no dispatcher ran are missed and counted, the grid is kept."""

from __future__ import annotations

import pickle

import pytest

from aioclock import Every, Forever
from aioclock._policy import Rules
from aioclock._protocol import Done, Fire, InFlight, Ready, Rejoin
from aioclock.dispatcher.core import ControlCore, Resume, ToControl, ToWorker
from aioclock.dispatcher.engine import ScheduledTask

PERIOD = 0.1
RUN_TIME = 0.25  # longer than the period: runs overlap the death (max_instances=3)


class Supervisor:
    """What the supervisor keeps of a dispatcher: its checkpoints, merged."""

    def __init__(self) -> None:
        self.progress: dict = {}
        self.last_seq = 0
        self.ends_seen_since = 0  # runs ended after the last checkpoint taken

    def keep(self, sends) -> None:
        self.ends_seen_since = 0
        for send in sends:
            if isinstance(send, ToControl) and type(send.frame).__name__ == "Checkpoint":
                self.progress.update(pickle.loads(send.frame.progress))
                self.last_seq = max(self.last_seq, send.frame.seq)


class Worker:
    """Runs each fire for RUN_TIME; remembers what it started, as a worker process does."""

    def __init__(self) -> None:
        self.running: dict[int, Fire] = {}
        self.ends: list[tuple[float, Done]] = []
        self.last_due: dict[str, float] = {}
        self.ended: list[tuple[int, str, float, str, bool]] = []

    def take(self, sends, now: float) -> list[Fire]:
        fires = [s.frame for s in sends if isinstance(s, ToWorker) and isinstance(s.frame, Fire)]
        for fire in fires:
            self.running[fire.seq] = fire
            self.last_due[fire.task] = fire.due
            end = now + RUN_TIME
            self.ends.append((end, Done(fire.task, fire.seq, now, end, "ok")))
        return fires

    def ended_by(self, now: float) -> list[Done]:
        ended = [done for end, done in self.ends if end <= now]
        self.ends = [(end, done) for end, done in self.ends if end > now]
        for done in ended:
            fire = self.running.pop(done.seq)
            self.ended.append((done.seq, done.task, fire.due, done.outcome, True))
        return ended


def schedule(max_instances=3, misfire_grace=0.05):
    """The probe; with a misfire grace shorter than the restart, every occurrence of the gap
    is missed (without one, catch-up "skip" runs the first of them late)."""
    rules = Rules(overlap="allow", limit=max_instances, misfire_grace=misfire_grace)
    return [ScheduledTask("m:probe", Every(seconds=PERIOD), max_instances, rules=rules)]


def drive(core, worker, supervisor, start, end, checkpoint_every, fired):
    """Run `core` from `start` to `end` in steps of 10 ms; checkpoints every so often."""
    now, next_checkpoint = start, start + checkpoint_every
    while now < end:
        for done in worker.ended_by(now):
            core.handle(now, done)
            supervisor.ends_seen_since += 1
        fired += [fire.due for fire in worker.take(core.tick(now), now)]
        if now >= next_checkpoint:
            supervisor.keep([ToControl(frame) for frame in core.checkpoints(pages=1)])
            next_checkpoint += checkpoint_every
        now = round(now + 0.01, 6)


@pytest.mark.parametrize("dies_at", [101.005, 101.04, 101.101, 101.333, 101.499])
@pytest.mark.parametrize("checkpoint_every", [0.05, 0.35])
@pytest.mark.parametrize("max_instances", [3, 2], ids=["all run", "some skipped"])
def test_a_takeover_fires_nothing_twice_and_counts_every_due_once(
    dies_at, checkpoint_every, max_instances
):
    worker, supervisor, fired = Worker(), Supervisor(), []
    first = ControlCore(schedule(max_instances), workers=[0])
    supervisor.keep(first.handle(100.0, Ready(0, pid=1)))
    drive(first, worker, supervisor, 100.0, dies_at, checkpoint_every, fired)
    fired_before = len(fired)
    (before,) = first.engine.stats()
    # The dispatcher dies; the next one starts 0.3 s later and asks the worker what it runs.
    restart = round(dies_at + 0.3, 6)
    second = ControlCore(
        schedule(max_instances),
        workers=[0],
        resume=Resume(supervisor.progress, supervisor.last_seq),
    )
    assert second.opening() == [ToWorker(0, Rejoin())]
    for done in worker.ended_by(restart):  # ended while no dispatcher ran: unknown runs
        second.handle(restart, done)
    runs = [(f.seq, f.task, f.due) for f in worker.running.values()]
    answer = InFlight(0, 1, runs, sorted(worker.last_due.items()), worker.ended)
    fired += [f.due for f in worker.take(second.handle(restart, answer), restart)]
    drive(second, worker, supervisor, restart, restart + 1.0, checkpoint_every, fired)

    assert len(fired) == len(set(fired)), "an occurrence fired twice"
    grid = [round((due - 100.0) / PERIOD, 6) for due in fired]
    assert all(step == int(step) for step in grid), "the grid moved"
    last_before = max(fired[:fired_before])
    gap = [k for k in range(1, 40) if last_before < 100.0 + k * PERIOD < restart]
    (stats,) = second.engine.stats()
    missed_in_gap = sorted(set(gap) - {int(step) for step in grid})
    assert missed_in_gap and stats.missed - before.missed >= len(missed_in_gap)
    assert not any(last_before < due < restart for due in fired[fired_before:])
    for done in worker.ended_by(restart + 5):  # runs adopted from the first are waited for
        second.handle(restart + 5, done)
    (stats,) = second.engine.stats()
    assert stats.runs == len(fired)  # every run counted once: before, across and after
    assert stats.dues == stats.runs + stats.missed  # every due counted once: ran or missed
    assert stats.dues == round((stats.next_due - 100.0) / PERIOD) - 1  # all grid points so far


def test_a_task_that_waits_for_its_run_is_armed_by_the_end_of_the_run_it_adopted():
    worker, supervisor, fired = Worker(), Supervisor(), []
    tasks = [ScheduledTask("m:loop", Forever())]
    first = ControlCore(tasks, workers=[0])
    supervisor.keep(first.handle(100.0, Ready(0, pid=1)))
    drive(first, worker, supervisor, 100.0, 100.1, 0.05, fired)
    assert len(worker.running) == 1  # the death comes mid-run
    second = ControlCore(tasks, workers=[0], resume=Resume(supervisor.progress, 0))
    runs = [(f.seq, f.task, f.due) for f in worker.running.values()]
    sends = second.handle(100.2, InFlight(0, 1, runs, sorted(worker.last_due.items())))
    assert worker.take(sends, 100.2) == []  # not armed while its run goes on
    fired_after = []
    drive(second, worker, supervisor, 100.2, 100.45, 0.05, fired_after)
    assert fired_after == [100.25]  # armed again once the adopted run ended


def test_paused_state_and_counters_survive_the_takeover():
    supervisor = Supervisor()
    tasks = [ScheduledTask("m:a", Every(seconds=1)), ScheduledTask("m:b", Every(seconds=1))]
    first = ControlCore(tasks, workers=[0], checkpointing=True)
    first.handle(100.0, Ready(0, pid=1))
    supervisor.keep([ToControl(frame) for frame in first.checkpoints()])  # written behind
    from aioclock._protocol import PauseTask

    sends = first.handle(100.5, PauseTask(1, "m:b"))  # m:b's progress comes before the reply
    assert [type(s.frame).__name__ for s in sends] == ["Checkpoint", "ControlReply"]
    supervisor.keep(sends)
    second = ControlCore(tasks, workers=[0], resume=Resume(supervisor.progress, 0))
    sends = second.handle(100.6, InFlight(0, 1, [], []))
    assert [s for s in sends if isinstance(s, ToWorker)] == []
    fires = second.tick(101.0)
    assert [s.frame.task for s in fires if isinstance(s, ToWorker)] == ["m:a"]
    paused = {s.task: s.paused for s in second.engine.stats()}
    assert paused == {"m:a": False, "m:b": True}


def test_runs_whose_worker_died_with_the_dispatcher_are_counted_as_lost():
    worker, supervisor, fired = Worker(), Supervisor(), []
    first = ControlCore(schedule(), workers=[0])
    supervisor.keep(first.handle(100.0, Ready(0, pid=1)))
    drive(first, worker, supervisor, 100.0, 100.43, 0.05, fired)
    supervisor.keep([ToControl(frame) for frame in first.checkpoints()])
    assert worker.running  # runs in flight at the last checkpoint...
    # ...and their worker dies too: its replacement has nothing to tell.
    second = ControlCore(
        schedule(), workers=[0], resume=Resume(supervisor.progress, supervisor.last_seq)
    )
    second.handle(100.8, InFlight(0, 2, [], []))
    (stats,) = second.engine.stats()
    assert stats.lost == len(worker.running)
    assert stats.dues == stats.runs + stats.missed + stats.running


@pytest.mark.parametrize("catch_up", ["skip", "latest"])
def test_the_gap_of_a_takeover_is_caught_up_by_the_tasks_policy(catch_up):
    worker, supervisor, fired = Worker(), Supervisor(), []
    rules = Rules(overlap="allow", limit=3, catch_up=catch_up)
    tasks = [ScheduledTask("m:probe", Every(seconds=PERIOD), 3, rules=rules)]
    first = ControlCore(tasks, workers=[0])
    supervisor.keep(first.handle(100.0, Ready(0, pid=1)))
    drive(first, worker, supervisor, 100.0, 101.04, 0.05, fired)
    before = len(fired)
    second = ControlCore(tasks, workers=[0], resume=Resume(supervisor.progress, 0))
    for done in worker.ended_by(101.34):
        second.handle(101.34, done)
    runs = [(f.seq, f.task, f.due) for f in worker.running.values()]
    answer = InFlight(0, 1, runs, sorted(worker.last_due.items()), worker.ended)
    fired += [f.due for f in worker.take(second.handle(101.34, answer), 101.34)]
    drive(second, worker, supervisor, 101.34, 101.5, 0.05, fired)
    in_gap = [due for due in fired[before:] if due < 101.34]
    # The gap held 101.1, 101.2 and 101.3: one of them runs, late; the others are missed.
    assert in_gap == ([101.1] if catch_up == "skip" else [101.3])
    (stats,) = second.engine.stats()
    assert len(fired) == len(set(fired))
    assert stats.dues == stats.runs + stats.missed + stats.running
