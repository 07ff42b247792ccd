"""`Group(limiter=...)` and `AioClock(limiter=...)` bound the sync tasks running in threads."""

import asyncio
import pickle
import threading
import time

import anyio
import pytest

from aioclock import AioClock, Every, Group, Once
from aioclock.api import run_specific_task
from aioclock.exceptions import TaskTimeoutError

HANG_GUARD = 10


class Concurrency:
    """Counts the sync tasks inside `work()` at once, from any thread."""

    def __init__(self, hold=None) -> None:
        self._hold = hold or (lambda: None)
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.runs = 0

    def work(self) -> None:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            self._hold()
        finally:
            with self._lock:
                self.now -= 1
                self.runs += 1


seen = Concurrency()  # replaced before each test


def job_1() -> None:
    seen.work()


def job_2() -> None:
    seen.work()


def job_3() -> None:
    seen.work()


def job_4() -> None:
    seen.work()


JOBS = [job_1, job_2, job_3, job_4]


def counting(hold) -> None:
    global seen
    seen = Concurrency(hold)


def app_with_limited_jobs(where: str, tokens: int) -> AioClock:
    limiter = anyio.CapacityLimiter(tokens)
    if where == "app":
        app = AioClock(limiter=limiter)
        for job in JOBS:
            app.task(trigger=Once())(job)
        return app
    group = Group(limiter=limiter)
    for job in JOBS:
        group.task(trigger=Once())(job)
    app = AioClock()
    app.include_group(group)
    return app


@pytest.mark.parametrize("where", ["group", "app"])
async def test_a_limiter_of_one_runs_sync_tasks_one_at_a_time(where):
    counting(hold=lambda: time.sleep(0.2))
    app = app_with_limited_jobs(where, tokens=1)
    await asyncio.wait_for(app.serve(), HANG_GUARD)
    assert seen.runs == 4
    assert seen.peak == 1


@pytest.mark.parametrize("where", ["group", "app"])
async def test_a_limiter_of_two_lets_two_run_together_never_three(where):
    counting(hold=threading.Barrier(2, timeout=HANG_GUARD).wait)  # lets two through at once
    app = app_with_limited_jobs(where, tokens=2)
    await asyncio.wait_for(app.serve(), HANG_GUARD)
    assert seen.runs == 4
    assert seen.peak == 2


async def test_without_a_limiter_sync_tasks_run_together():
    counting(hold=threading.Barrier(4, timeout=HANG_GUARD).wait)  # only all four at once
    app = AioClock()
    for job in JOBS:
        app.task(trigger=Once())(job)
    await asyncio.wait_for(app.serve(), HANG_GUARD)
    assert seen.peak == 4


gate = threading.Event()  # both replaced per test (fixture `gated`)
started = threading.Event()


def holder() -> None:
    started.set()
    gate.wait(HANG_GUARD)


def quick() -> str:
    return "quick"


@pytest.fixture
def gated():
    global gate, started
    gate, started = threading.Event(), threading.Event()
    yield
    gate.set()  # never leave a thread waiting


async def test_waiting_for_a_thread_slot_is_not_part_of_the_timeout(gated):
    limiter = anyio.CapacityLimiter(1)
    group = Group(limiter=limiter)
    group.task(trigger=Every(hours=1))(holder)
    group.task(trigger=Every(hours=1), timeout=0.05)(quick)
    app = AioClock()
    app.include_group(group)
    holding = asyncio.create_task(run_specific_task(app._tasks[0].id, app))
    await asyncio.wait_for(asyncio.to_thread(started.wait, HANG_GUARD), HANG_GUARD)
    waiting = asyncio.create_task(run_specific_task(app._tasks[1].id, app))
    await asyncio.sleep(0.2)  # well past quick's timeout, while it waits for the slot
    assert not waiting.done()
    gate.set()
    assert await asyncio.wait_for(waiting, HANG_GUARD) == "quick"
    await asyncio.wait_for(holding, HANG_GUARD)


async def test_a_sync_run_past_its_timeout_keeps_its_slot_until_its_thread_ends(gated):
    limiter = anyio.CapacityLimiter(1)
    group = Group(limiter=limiter)
    group.task(trigger=Every(hours=1), timeout=0.05)(holder)
    app = AioClock()
    app.include_group(group)
    with pytest.raises(TaskTimeoutError):
        await asyncio.wait_for(run_specific_task(app._tasks[0].id, app), HANG_GUARD)
    assert limiter.borrowed_tokens == 1  # the thread still runs
    gate.set()
    borrower = object()  # the slot was given back when the thread ended:
    await asyncio.wait_for(limiter.acquire_on_behalf_of(borrower), HANG_GUARD)
    limiter.release_on_behalf_of(borrower)


def test_group_and_app_pickle_without_their_limiter():
    limiter = anyio.CapacityLimiter(2)
    group = Group(limiter=limiter, timeout=3)
    group.task(trigger=Every(seconds=5))(job_1)
    app = AioClock(limiter=limiter)
    app.task(trigger=Once())(job_2)
    app.include_group(group)

    copy = pickle.loads(pickle.dumps(app))

    (group_copy,) = copy._groups
    assert group_copy._limiter is None and copy._limiter is None
    assert copy._app_group._limiter is None
    assert [task.limiter for task in copy._tasks] == [None, None]
    assert [(t.name, t.id, t.timeout, t.func) for t in copy._tasks] == [
        (t.name, t.id, t.timeout, t.func) for t in app._tasks
    ]
    assert copy._tasks[0].trigger == app._tasks[0].trigger
    # the originals keep theirs
    assert group._limiter is limiter and app._limiter is limiter
    assert [task.limiter for task in app._tasks] == [limiter, limiter]


@pytest.mark.parametrize("make", [Group, AioClock], ids=["Group", "AioClock"])
def test_a_limiter_must_be_a_capacity_limiter(make):
    with pytest.raises(TypeError, match=r"limiter must be an anyio.CapacityLimiter or None, got 3"):
        make(limiter=3)
