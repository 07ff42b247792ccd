"""Events across processes (`workers >= 1`): the dispatcher's events reach listeners in the main
process over the control channel; the supervisor adds the replacement of a dead worker."""

from __future__ import annotations

import asyncio
import threading

import pytest

from aioclock import AioClock, Event, Every, Once

from . import control_tasks, event_tasks

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]
HANG_GUARD = 30


def by_task(events: list[Event], name: str) -> list[Event]:
    return [event for event in events if event.task and event.task.endswith(f":{name}")]


async def test_listeners_in_the_main_process_see_every_run_of_the_workers(events):
    app = AioClock(workers=2, handle_signals=False)
    app.task(trigger=Every(seconds=0.05, max_loop_count=3))(event_tasks.fine)
    app.task(trigger=Once())(event_tasks.fails)
    app.task(trigger=Once(), timeout=0.2)(event_tasks.too_slow)
    synced: list[Event] = []
    threads = set()
    awaited: list[Event] = []

    @app.on()
    def every_event(event: Event) -> None:
        threads.add(threading.current_thread().name)
        synced.append(event)

    @app.on("run_failed", "run_timed_out")
    async def trouble(event: Event) -> None:
        awaited.append(event)

    await asyncio.wait_for(app.serve(), HANG_GUARD)

    fine = by_task(synced, "fine")
    assert [e.kind for e in fine] == ["run_started", "run_succeeded"] * 3
    for started, ended in zip(fine[::2], fine[1::2], strict=True):
        assert started.worker in (0, 1) and started.due == ended.due
        assert ended.outcome == "ok" and ended.start <= ended.end and ended.error is None
        assert ended.lateness >= 0
    (failed,) = [e for e in by_task(synced, "fails") if e.kind != "run_started"]
    assert (failed.kind, failed.outcome, failed.error) == (
        "run_failed",
        "failed",
        "ValueError: boom",
    )
    (slow,) = [e for e in by_task(synced, "too_slow") if e.kind != "run_started"]
    assert (slow.kind, slow.outcome) == ("run_timed_out", "timeout")
    assert threads == {"aioclock-listeners"}  # one thread for every sync listener
    assert sorted(e.kind for e in awaited) == ["run_failed", "run_timed_out"]


async def test_control_verbs_and_a_worker_replacement_reach_the_listeners(events):
    app = AioClock(workers=1, handle_signals=False)
    app.task(trigger=Every(hours=1))(control_tasks.keeps_serving)
    app.task(trigger=Every(seconds=0.1))(event_tasks.dies_once)
    seen: list[Event] = []
    app.on("worker_replaced", "task_paused", "task_resumed", "run_failed")(seen.append)
    serving = asyncio.create_task(app.serve())
    try:
        await events.wait_for(lambda e: any(x["name"] == "dies_once:survived" for x in e))
        await app.pause(event_tasks.dies_once)
        await app.resume(event_tasks.dies_once)
        for _ in range(HANG_GUARD * 50):
            if [e.kind for e in seen].count("task_resumed"):
                break
            await asyncio.sleep(0.02)
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
    kinds = [e.kind for e in seen]
    assert kinds.index("run_failed") < kinds.index("task_paused") < kinds.index("task_resumed")
    (crashed,) = [e for e in seen if e.kind == "run_failed"]
    assert crashed.outcome == "crashed" and crashed.task.endswith(":dies_once")
    (replaced,) = [e for e in seen if e.kind == "worker_replaced"]
    assert (replaced.worker, replaced.task) == (0, None)
    assert replaced.error == "worker 0 died with exit code 3"
