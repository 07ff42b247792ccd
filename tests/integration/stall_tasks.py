"""Async tasks that hold their worker's event loop: worker processes import them by name."""

import re
import time

from .worker_tasks import record


async def sleep_on_the_loop() -> None:
    record("stall")
    time.sleep(60)  # noqa: ASYNC251  (the fault under test: blocks the loop, frees the GIL)


async def hold_the_gil() -> None:
    record("stall")
    # Catastrophic backtracking: one C call that keeps the GIL for far longer than the test.
    re.match(r"(a+)+$", "a" * 64 + "b")
