"""A FastAPI router over `aioclock.api`: `GET /tasks` lists tasks, `POST /task/{id}` runs one now,
and verbs pause, resume, remove and reschedule a task while the app serves.

Requires the extra: `pip install 'aioclock[fastapi]'`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Union

from aioclock.api import TaskMetadata, find_task, get_metadata_of_all_tasks, run_specific_task
from aioclock.app import AioClock
from aioclock.exceptions import (
    AppStoppedError,
    TaskIdNotFound,
    TaskRunError,
    TaskStateError,
    TaskTimeoutError,
)
from aioclock.triggers import TriggerT

try:
    from fastapi import APIRouter, HTTPException
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("aioclock.ext.fast needs FastAPI: pip install 'aioclock[fastapi]'") from error

logger = logging.getLogger(__name__)


def make_fastapi_router(aioclock: AioClock, router: Union[APIRouter, None] = None) -> APIRouter:
    """Add the routes below for `aioclock` to `router` (or a new one).

    `task_id` is a task's stable UUID (or its `module:qualname` name). `GET /tasks` lists the
    tasks with their statistics. `POST /task/{task_id}` runs the task now (in a worker process
    when `workers >= 1`) and answers when the run ended: 200 if it succeeded, 404 for an unknown
    id, 504 if it ran past its timeout and 500 if it failed; the error's `detail` names the task
    and what went wrong.

    Runtime control (as `AioClock.pause`, `resume`, `remove`, `reschedule`), each answering 200
    once the change is applied: `POST /task/{task_id}/pause`, `POST /task/{task_id}/resume`
    (both idempotent: pausing a paused task is a 200 too), `DELETE /task/{task_id}`, and
    `PUT /task/{task_id}/trigger` with a built-in trigger as JSON in the body (as `GET /tasks`
    shows it, e.g. `{"type_": "EVERY", "seconds": 30}`). Errors: 404 unknown task, 409 the
    task's state forbids it (a start-up task cannot be paused; a task whose trigger ended cannot
    be paused), 422 a trigger that does not parse or has no schedule, 503 the app is stopping.

    Example:
        ```python
        import asyncio
        from contextlib import asynccontextmanager

        from fastapi import FastAPI

        from aioclock import AioClock, Every
        from aioclock.ext.fast import make_fastapi_router

        clock_app = AioClock()

        @clock_app.task(trigger=Every(seconds=3600))
        async def foo():
            print("Foo is processing...")

        @asynccontextmanager
        async def lifespan(app: FastAPI):
            task = asyncio.create_task(clock_app.serve())
            yield
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

        app = FastAPI(lifespan=lifespan)
        app.include_router(make_fastapi_router(clock_app))
        ```
    """
    router = router or APIRouter()

    @router.get("/tasks")
    async def get_tasks() -> list[TaskMetadata]:
        return await get_metadata_of_all_tasks(aioclock)

    @router.post("/task/{task_id}")
    async def run_task(task_id: str) -> None:
        try:
            task = find_task(aioclock, task_id)
        except TaskIdNotFound as missing:
            raise HTTPException(status_code=404, detail=str(missing)) from None
        try:
            await run_specific_task(task.id, aioclock)
        except TaskTimeoutError as timeout:
            raise HTTPException(status_code=504, detail=str(timeout)) from None
        except TaskRunError as failure:  # failed in a worker process, which logged it
            raise HTTPException(status_code=500, detail=str(failure)) from None
        except Exception as failure:  # the task's own exception, raised in this process
            logger.exception("task %s failed when run through the API", task.name)
            detail = f"task {task.name!r} failed: {type(failure).__name__}: {failure}"
            raise HTTPException(status_code=500, detail=detail) from None

    @router.post("/task/{task_id}/pause")
    async def pause_task(task_id: str) -> None:
        await _answer(aioclock.pause(task_id))

    @router.post("/task/{task_id}/resume")
    async def resume_task(task_id: str) -> None:
        await _answer(aioclock.resume(task_id))

    @router.delete("/task/{task_id}")
    async def remove_task(task_id: str) -> None:
        await _answer(aioclock.remove(task_id))

    @router.put("/task/{task_id}/trigger")
    async def reschedule_task(task_id: str, trigger: TriggerT) -> None:
        await _answer(aioclock.reschedule(task_id, trigger))

    return router


async def _answer(change: Awaitable[None]) -> None:
    """Apply a control verb; its refusals as HTTP errors."""
    try:
        await change
    except TaskIdNotFound as missing:
        raise HTTPException(status_code=404, detail=str(missing)) from None
    except TaskStateError as conflict:
        raise HTTPException(status_code=409, detail=str(conflict)) from None
    except AppStoppedError as stopped:
        raise HTTPException(status_code=503, detail=str(stopped)) from None
    except ValueError as invalid:
        raise HTTPException(status_code=422, detail=str(invalid)) from None
