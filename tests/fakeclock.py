"""Run an async test on virtual time: `@fake_time()` above `async def test_...`.

The test body runs on a `FakeTimeLoop` (see aioclock/_clock.py): its time jumps to the next timer
whenever every task is blocked, so `asyncio.sleep(3600)` returns at once, exactly an hour later.
The decorated test is a plain function for pytest (pytest-asyncio leaves it alone); its fixtures
are passed through. Only code that waits on threads or real I/O needs a real loop.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any

from aioclock._clock import FAKE_START, run_with_fake_time

#: A guard against a schedule that never ends, in virtual seconds (real hangs: pytest-timeout).
VIRTUAL_HANG_GUARD = 7 * 24 * 3600.0


def fake_time(
    start: float = FAKE_START,
) -> Callable[[Callable[..., Coroutine[Any, Any, None]]], Callable[..., None]]:
    def decorate(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
        @functools.wraps(test)
        def run(*args: Any, **kwargs: Any) -> None:
            run_with_fake_time(lambda: test(*args, **kwargs), start=start)

        return run

    return decorate
