"""What the public API may ask of a running runtime, whichever of the two it is."""

from __future__ import annotations

from typing import Any, Protocol

from aioclock._protocol import TaskStats
from aioclock._task import Task


class Runtime(Protocol):
    async def serve(self) -> None: ...

    async def run_now(self, task: Task) -> Any:
        """Run `task` now, outside its schedule."""

    async def stats(self) -> list[TaskStats]:
        """Per-task statistics."""

    def request_stop(self) -> None:
        """Stop firing and shut down gracefully."""
