"""Module-level tasks for the multi-process tests: worker processes import them by name.

Each task appends one JSON line per event to the file named by $AIOCLOCK_TEST_EVENTS, so the test
can see what ran, in which process and when.
"""

import asyncio
import contextlib
import json
import os
import time

from aioclock import Depends, Every


def record(name: str, **fields) -> None:
    line = json.dumps({"name": name, "pid": os.getpid(), "time": time.time(), **fields})
    fd = os.open(os.environ["AIOCLOCK_TEST_EVENTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode() + b"\n")
    finally:
        os.close(fd)


def burn(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def probe() -> None:
    record("probe")


def cpu_job() -> None:
    started = time.time()
    burn(0.5)
    record("cpu_job", started=started, finished=time.time())


def cpu_job_2() -> None:
    cpu_job()


def sleeper() -> None:
    record("sleeper")
    time.sleep(30)


async def long_async() -> None:
    record("long_async:start")
    await asyncio.sleep(1.0)
    record("long_async:end")


async def startup() -> None:
    record("startup")


async def shutdown() -> None:
    record("shutdown")


def greeting() -> str:
    return "real"


def fake_greeting() -> str:
    return "overridden"


def uses_greeting(value: str = Depends(greeting)) -> None:
    record("uses_greeting", value=value)


@contextlib.asynccontextmanager
async def lifespan(app):
    record("lifespan:enter")
    yield app
    record("lifespan:exit")


def report_scheduling() -> None:
    """Record the CPU policy and nice value of the thread running this sync task."""
    import threading

    thread = threading.get_native_id()
    record(
        "report_scheduling",
        policy=os.sched_getscheduler(thread),
        nice=os.getpriority(os.PRIO_PROCESS, thread),
    )


def report_cpus() -> None:
    """Record the CPUs the thread running this sync task may use."""
    import threading

    record(
        "report_cpus",
        cpus=sorted(os.sched_getaffinity(threading.get_native_id())),
        loop_cpus=sorted(os.sched_getaffinity(os.getpid())),  # the worker's main thread
    )


async def report_loop_cpus() -> None:
    """Record the CPUs this worker's event loop may use."""
    record("report_loop_cpus", loop_cpus=sorted(os.sched_getaffinity(0)))


@contextlib.asynccontextmanager
async def failing_lifespan(app):
    raise RuntimeError("database unreachable")
    yield


async def answer() -> dict:
    record("answer")
    return {"answer": 42}


async def refuses() -> None:
    raise ValueError("bad input 7")


async def slow_shutdown() -> None:
    record("slow_shutdown:start")
    await asyncio.sleep(30)
    record("slow_shutdown:end")


async def overlapping() -> None:
    record("overlapping")
    await asyncio.sleep(0.35)


async def sleeps_past_timeout() -> None:
    record("sleeps_past_timeout")
    await asyncio.sleep(30)


async def dies_during_stop() -> None:
    """Starts, then dies (as an OOM kill would) a moment after the test asks for a stop."""
    record("dies_during_stop:start")
    await asyncio.sleep(0.6)
    os._exit(3)


def sync_overruns_timeout() -> None:
    record("sync_overruns_timeout:start")
    time.sleep(1.5)


class SlowToLoadEvery(Every):
    """An `Every` that takes 1.5 s to unpickle: a dispatcher loading a large schedule."""

    def __setstate__(self, state) -> None:
        time.sleep(1.5)
        super().__setstate__(state)


async def unpicklable_result():
    return lambda: None


async def huge_result() -> bytes:
    return b"x" * 50_000_000  # 50 MB


async def huge_exception() -> None:
    raise ValueError("x" * 50_000_000)
