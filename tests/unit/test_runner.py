"""The task runner on its own: one `Done` per fire, however the run ends."""

import asyncio
import sys
import time

import pytest
from fast_depends import Provider

from aioclock import Once
from aioclock._protocol import MAX_FRAME_BYTES, Fire, FrameReader, encode
from aioclock._task import Task
from aioclock.exceptions import TaskTimeoutError
from aioclock.workers.runner import (
    TaskRunner,
    _DeadlineExpired,
    _within_scope,
    _within_wait_for,
)


async def quick() -> None:
    await asyncio.sleep(0)


async def test_a_run_cancelled_before_its_first_step_still_reports_done():
    task = Task(func=quick, trigger=Once())
    reports = []
    runner = TaskRunner({task.name: task}, Provider(), reports.append)
    runner.start(Fire(task.name, 1, 0.0))
    runner.cancel(1)  # a Cancel read in the same chunk as its Fire
    runner.start(Fire(task.name, 2, 0.0))
    await asyncio.wait(runner.running_tasks())
    await asyncio.sleep(0)  # done callbacks run one loop step after the task ends
    assert sorted((done.seq, done.outcome) for done in reports) == [(1, "cancelled"), (2, "ok")]
    assert runner.running_tasks() == []


async def raises_a_huge_error() -> None:
    raise ValueError("x" * (2 * MAX_FRAME_BYTES))


async def test_a_huge_error_message_is_cut_so_that_its_done_frame_can_be_sent():
    task = Task(func=raises_a_huge_error, trigger=Once())
    reports = []
    runner = TaskRunner({task.name: task}, Provider(), reports.append)
    runner.start(Fire(task.name, 1, 0.0))
    await asyncio.wait(runner.running_tasks())
    (done,) = reports
    assert done.outcome == "failed"
    assert done.error.startswith("ValueError: xxx")
    assert done.error.endswith("(2097164 characters)")
    assert FrameReader().feed(encode(done)) == [done]


async def raises_upstream_timeout() -> None:
    raise TimeoutError("upstream")


def raises_upstream_timeout_in_a_thread() -> None:
    raise TimeoutError("upstream")


async def raises_a_nested_runs_timeout() -> None:
    raise TaskTimeoutError("other:task", 1.0)  # as run_specific_task of another task would


async def overruns() -> None:
    await asyncio.sleep(5)


def overruns_in_a_thread() -> None:
    time.sleep(0.3)


async def run_once(func, timeout):
    """Run `func` once through a TaskRunner; return its Done and the tasks whose thread overran."""
    task = Task(func=func, trigger=Once(), timeout=timeout)
    reports, overran = [], []
    runner = TaskRunner(
        {task.name: task}, Provider(), reports.append, on_sync_timeout=overran.append
    )
    runner.start(Fire(task.name, 1, 0.0))
    await asyncio.wait_for(asyncio.wait(runner.running_tasks()), 5)
    (done,) = reports
    return done, overran


@pytest.mark.parametrize(
    ("func", "error"),
    [
        (raises_upstream_timeout, "TimeoutError: upstream"),
        (raises_upstream_timeout_in_a_thread, "TimeoutError: upstream"),
        (raises_a_nested_runs_timeout, "exceeded its timeout of 1 s"),
    ],
)
async def test_a_timeout_error_raised_by_the_task_is_a_failure_not_a_timeout(func, error):
    done, overran = await run_once(func, timeout=5)
    assert done.outcome == "failed"
    assert error in done.error
    assert overran == []  # a sync task's own TimeoutError does not replace its worker


@pytest.mark.parametrize(("func", "overran"), [(overruns, []), (overruns_in_a_thread, [True])])
async def test_only_the_runners_own_deadline_is_a_timeout(func, overran):
    done, replaced = await run_once(func, timeout=0.05)
    assert (done.outcome, done.error) == (
        "timeout",
        f"task {done.task!r} exceeded its timeout of 0.05 s",
    )
    assert [task.func is func for task in replaced] == overran


async def test_run_inline_raises_the_tasks_own_timeout_error_as_it_is():
    task = Task(func=raises_upstream_timeout, trigger=Once(), timeout=5)
    runner = TaskRunner({task.name: task}, Provider(), lambda done: None)
    with pytest.raises(TimeoutError, match="upstream") as raised:
        await runner.run_inline(task)
    assert not isinstance(raised.value, TaskTimeoutError)
    slow = Task(func=overruns, trigger=Once(), timeout=0.05)
    with pytest.raises(TaskTimeoutError, match="exceeded its timeout of 0.05 s"):
        await runner.run_inline(slow)


@pytest.mark.parametrize("within", [_within_scope, _within_wait_for], ids=["3.11+", "3.10"])
async def test_each_deadline_tells_its_own_expiry_from_a_tasks_timeout_error(within):
    with pytest.raises(TimeoutError, match="upstream"):
        await within(raises_upstream_timeout(), 5)
    with pytest.raises(_DeadlineExpired):
        await within(overruns(), 0.01)
    assert await within(asyncio.sleep(0, "result"), 5) == "result"


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


async def raises_an_unprintable_error() -> None:
    raise UnprintableError


async def raises_a_lone_surrogate() -> None:
    raise ValueError("bad \ud800 text")


def raises_a_lone_surrogate_in_a_thread() -> None:
    raise ValueError("\udcff")


async def exits_3() -> None:
    sys.exit(3)


def exits_3_in_a_thread() -> None:
    sys.exit(3)


@pytest.mark.parametrize(
    ("func", "error"),
    [
        (
            raises_an_unprintable_error,
            "UnprintableError: <str() raised RuntimeError: no text for you>",
        ),
        (raises_a_lone_surrogate, "ValueError: bad \\ud800 text"),
        (raises_a_lone_surrogate_in_a_thread, "ValueError: \\udcff"),
        (exits_3, "SystemExit: 3"),
        (exits_3_in_a_thread, "SystemExit: 3"),
    ],
)
async def test_every_failure_is_a_failed_run_whose_done_frame_can_be_sent(func, error):
    """An exception whose str() raises, an error text that is not valid UTF-8, sys.exit() in a
    task: each is a failed run, never a success, and its Done encodes."""
    done, _ = await run_once(func, timeout=None)
    assert (done.outcome, done.error) == ("failed", error)
    assert FrameReader().feed(encode(done)) == [done]
