"""Shared by the FastAPI router tests, in-process and with workers: an HTTP client for an app's
router, and a custom trigger with a field of its own (worker processes import it by name)."""

import asyncio
import contextlib
from typing import Literal

import httpx
from fastapi import FastAPI

from aioclock import AioClock
from aioclock.ext.fast import make_fastapi_router
from aioclock.triggers import BaseTrigger

HANG_GUARD = 30


class AtMinute(BaseTrigger[Literal["AT_MINUTE"]]):
    """A custom trigger with a field of its own: due at minute `minute` of every hour."""

    type_: Literal["AT_MINUTE"] = "AT_MINUTE"
    minute: int = 7

    def next_due(self, now: float, previous: float | None) -> float | None:
        after = now if previous is None else previous
        due = after // 3600 * 3600 + self.minute * 60
        return due if due > after else due + 3600


@contextlib.asynccontextmanager
async def client_of(app: AioClock, *, serve: bool):
    """An HTTP client for the router of `app`; with `serve`, `app.serve()` runs meanwhile."""
    api = FastAPI()
    api.include_router(make_fastapi_router(app))
    serving = asyncio.create_task(app.serve()) if serve else None
    try:
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
    finally:
        if serving is not None:
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(serving, HANG_GUARD)


async def get_tasks(client: httpx.AsyncClient) -> dict[str, dict]:
    response = await asyncio.wait_for(client.get("/tasks"), HANG_GUARD)
    assert response.status_code == 200
    return {entry["task_name"]: entry for entry in response.json()}


async def post(client: httpx.AsyncClient, task: str) -> httpx.Response:
    return await asyncio.wait_for(client.post(f"/task/{task}"), HANG_GUARD)
