"""Module-level tasks that misbehave, for the fault tests: worker processes import them by name."""

import asyncio
import os
import sys
import time

from .worker_tasks import record


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


async def unprintable_error() -> None:
    raise UnprintableError


async def surrogate_error() -> None:
    raise ValueError("\ud800")


async def huge_error() -> None:
    raise ValueError("m" * 2_000_000)


async def exits_3() -> None:
    sys.exit(3)


async def swallows_cancellation() -> None:
    """Carries on when cancelled, as a careless `except BaseException` would."""
    record("swallows_cancellation:start")
    while True:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:  # noqa: PERF203
            record("swallows_cancellation:swallowed")


def endless_sync() -> None:
    record("endless_sync:start")
    while True:
        time.sleep(0.05)


def _result_fd() -> int:
    """The pipe this worker reports its runs on (found as a task with no business there would)."""
    for task in asyncio.all_tasks():
        worker = task.get_coro().cr_frame.f_locals.get("self")
        if type(worker).__name__ == "Worker":
            return worker._done_fd
    raise LookupError("not in a worker process")


async def closes_result_pipe() -> None:
    record("closes_result_pipe")
    os.close(_result_fd())


async def writes_partial_frame() -> None:
    record("writes_partial_frame")
    os.write(_result_fd(), b"\x00\x00\x01\x00ab")  # a header announcing 256 bytes, and 2


async def writes_garbage() -> None:
    record("writes_garbage")
    os.write(_result_fd(), b"hello, dispatcher")


def _refuse_to_load() -> None:
    raise RuntimeError("cannot be loaded here")


class Unloadable:
    """Pickles, but does not unpickle."""

    def __reduce__(self):
        return (_refuse_to_load, ())


async def unloadable_result() -> Unloadable:
    return Unloadable()


class NeedsTwoArguments(Exception):
    def __init__(self, first: str, second: str) -> None:
        super().__init__(f"{first} {second}")


async def raises_unloadable_error() -> None:
    raise NeedsTwoArguments("bad", "input")
