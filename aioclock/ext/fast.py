"""A FastAPI router over `aioclock.api`: `GET /tasks` lists tasks, `POST /task/{id}` runs one now.

Requires the extra: `pip install 'aioclock[fastapi]'`.
"""

from __future__ import annotations

from typing import Union

from aioclock.api import TaskMetadata, get_metadata_of_all_tasks, run_specific_task
from aioclock.app import AioClock
from aioclock.exceptions import TaskIdNotFound

try:
    from fastapi import APIRouter, HTTPException
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("aioclock.ext.fast needs FastAPI: pip install 'aioclock[fastapi]'") from error


def make_fastapi_router(aioclock: AioClock, router: Union[APIRouter, None] = None) -> APIRouter:
    """Add `GET /tasks` and `POST /task/{task_id}` for `aioclock` to `router` (or a new one).

    `task_id` is a task's stable UUID (or its `module:qualname` name). Running an unknown task
    answers 404.

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
            await run_specific_task(task_id, aioclock)
        except TaskIdNotFound as missing:
            raise HTTPException(status_code=404, detail=str(missing)) from None

    return router
