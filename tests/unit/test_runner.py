"""The task runner on its own: one `Done` per fire, however the run ends."""

import asyncio

from fast_depends import Provider

from aioclock import Once
from aioclock._protocol import MAX_FRAME_BYTES, Fire, FrameReader, encode
from aioclock._task import Task
from aioclock.workers.runner import TaskRunner


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
