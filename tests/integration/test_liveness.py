"""A worker whose event loop stops turning is seen from outside, named, and replaced."""

import logging
import time

import pytest

from aioclock import AioClock, Every, Once
from aioclock.settings import Settings

from . import stall_tasks
from . import worker_tasks as tasks
from .test_workers import runtime_pids, serving, stats_of

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("stall", "frame"),
    [
        (stall_tasks.sleep_on_the_loop, "in sleep_on_the_loop"),
        (stall_tasks.hold_the_gil, "in hold_the_gil"),
    ],
    ids=["time.sleep on the loop", "a C call holding the GIL"],
)
async def test_a_worker_whose_loop_stalls_is_replaced_and_what_held_it_is_logged(
    events, caplog, stall, frame
):
    caplog.set_level(logging.ERROR, logger="aioclock")
    app = AioClock(workers=1, loop_stall_timeout=0.5)
    app.task(trigger=Once())(stall)
    app.task(trigger=Every(seconds=0.05))(tasks.probe)
    async with serving(app):
        first = await events.wait_for(lambda e: any(x["name"] == "stall" for x in e))
        stalled_pid = next(x["pid"] for x in first if x["name"] == "stall")
        # The probe runs again, in the worker that replaced the stalled one.
        await events.wait_for(
            lambda e: any(x["name"] == "probe" and x["pid"] != stalled_pid for x in e)
        )
        stall_stats = await stats_of(app, stall.__name__)
        _, worker_pids = runtime_pids(app)
    assert stalled_pid not in worker_pids
    assert (stall_stats.runs, stall_stats.failures) == (1, 1)
    assert "worker 0 was replaced: its event loop did not turn for" in stall_stats.last_error
    assert frame in stall_stats.last_error  # the run's error names the frame that held the loop
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Its event loop's stack" in logged and frame in logged


async def test_a_loop_that_turns_is_left_alone_however_busy_its_threads(events):
    app = AioClock(workers=1, loop_stall_timeout=0.3)
    app.task(trigger=Once())(tasks.cpu_job)  # a sync task: a thread burns, the loop turns
    app.task(trigger=Every(seconds=0.05))(tasks.probe)
    async with serving(app):
        await events.wait_for(lambda e: any(x["name"] == "cpu_job" for x in e))
        moment = time.time()
        await events.wait_for(lambda e: any(x["name"] == "probe" and x["time"] > moment for x in e))
        _, worker_pids = runtime_pids(app)
    assert {x["pid"] for x in events.read()} == worker_pids  # never replaced


def test_loop_stall_timeout_is_validated_and_none_turns_it_off():
    with pytest.raises(ValueError, match="loop_stall_timeout must be .* got 0"):
        AioClock(loop_stall_timeout=0)
    with pytest.raises(ValueError, match="loop_stall_timeout must be .* got 'soon'"):
        Settings().layered({"AIOCLOCK_LOOP_STALL_TIMEOUT": "soon"})
    assert Settings().layered({"AIOCLOCK_LOOP_STALL_TIMEOUT": "none"}).loop_stall_timeout is None
    assert AioClock(loop_stall_timeout=None).loop_stall_timeout is None
