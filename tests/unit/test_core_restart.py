"""A start from what a store kept of an instance that ended (`Resume(takeover=False)`): a fresh
start (the start-up tasks run again, no worker is asked what it runs) that goes on with each
task's schedule: `Every` keeps its grid, the loop count goes on, paused tasks stay paused, and
the occurrences that fell due while nothing ran are caught up by the task's policy and counted
as missed. A takeover (`Resume()`, the default) still skips the start-up tasks and rejoins."""

from __future__ import annotations

import pickle

import pytest

from aioclock import Every, OnStartUp
from aioclock._policy import Rules
from aioclock._protocol import Done, Fire, PauseTask, Ready, Rejoin
from aioclock.dispatcher.core import ControlCore, Resume, Stop, ToControl, ToWorker
from aioclock.dispatcher.engine import ScheduledTask

T0 = 1_000.0


def fires_of(sends) -> list[Fire]:
    return [s.frame for s in sends if isinstance(s, ToWorker) and isinstance(s.frame, Fire)]


def checkpoints_of(sends) -> dict:
    progress: dict = {}
    for send in sends:
        if isinstance(send, ToControl) and type(send.frame).__name__ == "Checkpoint":
            progress.update(pickle.loads(send.frame.progress))
    return progress


def done(fire: Fire, now: float) -> Done:
    return Done(fire.task, fire.seq, now, now, "ok")


def schedule(catch_up="skip", paused=False, limit=None):
    rules = Rules(catch_up=catch_up)
    tick = Every(seconds=10, max_loop_count=limit)
    return [
        ScheduledTask("mod:boot", OnStartUp()),
        ScheduledTask("mod:tick", tick, paused=paused, rules=rules),
    ]


def first_instance(runs: int, **kwargs):
    """Serve `runs` fires of mod:tick from T0 (every 10 s), then stop; what a store keeps."""
    core = ControlCore(schedule(**kwargs), workers=[0], checkpointing=True)
    kept: dict = {}
    (boot,) = fires_of(core.handle(T0, Ready(0, pid=1)))
    core.handle(T0, done(boot, T0))
    now = T0
    for _ in range(runs):
        now = core.next_wakeup()
        (fire,) = fires_of(core.tick(now))
        core.handle(now, done(fire, now))
    kept.update(core.engine.take_progress())
    sends = core.handle(now, Stop(grace=1.0))
    kept.update(checkpoints_of(sends))
    return kept, core.engine.last_seq, now


def restarted(kept, last_seq, now, **kwargs) -> tuple[ControlCore, list]:
    core = ControlCore(
        schedule(**kwargs),
        workers=[0],
        checkpointing=True,
        resume=Resume(kept, last_seq, takeover=False),
    )
    assert core.opening() == []  # no worker has runs to report: no Rejoin
    sends = core.handle(now, Ready(0, pid=2))
    return core, fires_of(sends)


def stats_of(core: ControlCore, task: str = "mod:tick"):
    return next(s for s in core.engine.stats() if s.task == task)


def test_start_up_tasks_run_again_and_the_grid_is_kept():
    kept, last_seq, stopped = first_instance(runs=2)  # fired at T0+10, T0+20; armed T0+30
    core, fires = restarted(kept, last_seq, stopped + 5)  # back at T0+25
    assert [f.task for f in fires] == ["mod:boot"]
    assert fires[0].seq > last_seq  # run numbers go on
    core.handle(stopped + 5, done(fires[0], stopped + 5))
    assert core.next_wakeup() == T0 + 30  # not T0+35: the grid of the first instance
    (fire,) = fires_of(core.tick(T0 + 30))
    assert fire.due == T0 + 30
    assert stats_of(core).runs == 2  # the counters go on, the missed stays 0
    assert stats_of(core).missed == 0


@pytest.mark.parametrize(("catch_up", "ran"), [("skip", T0 + 30), ("latest", T0 + 60)])
def test_the_downtime_is_caught_up_by_policy_and_counted_missed(catch_up, ran):
    kept, last_seq, _ = first_instance(runs=2, catch_up=catch_up)  # armed T0+30
    back = T0 + 65  # down from T0+20: T0+30..T0+60 fell due meanwhile (4 occurrences)
    core, (boot,) = restarted(kept, last_seq, back, catch_up=catch_up)
    fires = fires_of(core.handle(back, done(boot, back)))
    fires += fires_of(core.tick(back))
    assert [f.due for f in fires] == [ran]  # one run, not a burst
    tick = stats_of(core)
    assert tick.missed == 3
    assert tick.dues == 2 + 4
    assert core.next_wakeup() == T0 + 70  # still on the grid


def test_a_paused_task_stays_paused():
    core = ControlCore(schedule(), workers=[0], checkpointing=True)
    (boot,) = fires_of(core.handle(T0, Ready(0, pid=1)))
    core.handle(T0, done(boot, T0))
    kept = checkpoints_of(core.handle(T0 + 1, PauseTask(1, "mod:tick")))
    assert kept["mod:tick"][2] is True  # the pause is kept before it is answered
    core, (boot,) = restarted(kept, core.engine.last_seq, T0 + 100)
    core.handle(T0 + 100, done(boot, T0 + 100))
    assert stats_of(core).paused
    assert core.next_wakeup() is None
    assert stats_of(core).missed == 0  # a paused task misses nothing


def test_the_loop_count_goes_on():
    kept, last_seq, stopped = first_instance(runs=2, limit=3)
    core, (boot,) = restarted(kept, last_seq, stopped, limit=3)
    core.handle(stopped, done(boot, stopped))
    (fire,) = fires_of(core.tick(core.next_wakeup()))
    core.handle(fire.due, done(fire, fire.due))
    assert core.next_wakeup() is None  # the third of max_loop_count=3 was the last
    assert stats_of(core).runs == 3


def test_a_run_in_flight_when_the_instance_died_is_counted_lost():
    core = ControlCore(schedule(), workers=[0], checkpointing=True)
    (boot,) = fires_of(core.handle(T0, Ready(0, pid=1)))
    core.handle(T0, done(boot, T0))
    fires_of(core.tick(T0 + 10))  # never answered: the instance is killed
    kept = core.engine.take_progress()
    core, (boot,) = restarted(kept, core.engine.last_seq, T0 + 12)
    core.handle(T0 + 12, done(boot, T0 + 12))
    tick = stats_of(core)
    assert (tick.runs, tick.lost) == (1, 1)
    assert "instance that ended" in (tick.last_error or "")


def test_a_takeover_still_rejoins_and_skips_the_start_up_tasks():
    kept, last_seq, now = first_instance(runs=1)
    core = ControlCore(schedule(), workers=[0], resume=Resume(kept, last_seq))
    assert core.opening() == [ToWorker(0, Rejoin())]
