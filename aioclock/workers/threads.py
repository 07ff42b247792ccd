"""A thread pool whose threads never hold the process: the in-process runtime's sync tasks.

A thread cannot be stopped. `ThreadPoolExecutor`'s threads are joined when `asyncio.run()`
ends (its default executor) and when the interpreter exits, so a sync task in an endless loop
kept an app that had stopped from ever exiting. These threads are daemons, and nothing joins
them: a run still going when the app ends is given up (its `Done` said so at the stop) and ends
with the process.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")

_Work = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class DaemonThreadPool(Executor):
    """Runs calls in up to `max_workers` daemon threads, started as the calls need them.

    `shutdown()` lets the idle threads go (and never waits for a busy one); a later call starts
    threads again.

    Example:
        >>> pool = DaemonThreadPool(max_workers=2)
        >>> pool.submit(sum, [1, 2, 3]).result()
        6
        >>> pool.shutdown()
    """

    def __init__(self, max_workers: int | None = None, thread_name_prefix: str = "aioclock-sync"):
        self._max_workers = max_workers or min(32, (os.cpu_count() or 1) + 4)
        self._prefix = thread_name_prefix
        self._lock = threading.Lock()
        self._started = 0
        self._new_generation()

    def _new_generation(self) -> None:
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads = 0

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            self._queue.put((future, fn, args, kwargs))
            if not self._idle.acquire(blocking=False) and self._threads < self._max_workers:
                self._started += 1
                thread = threading.Thread(
                    target=_work,
                    args=(self._queue, self._idle),
                    name=f"{self._prefix}_{self._started}",
                    daemon=True,
                )
                thread.start()
                self._threads += 1
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            work_queue, threads = self._queue, self._threads
            self._new_generation()
        if cancel_futures:
            while True:
                try:
                    work = work_queue.get_nowait()
                except queue.Empty:
                    break
                if work is not None:
                    work[0].cancel()
        for _ in range(threads):
            work_queue.put(None)


def _work(work_queue: queue.SimpleQueue[_Work | None], idle: threading.Semaphore) -> None:
    while True:
        work = work_queue.get()
        if work is None:
            return
        future, fn, args, kwargs = work
        del work
        if future.set_running_or_notify_cancel():
            try:
                result = fn(*args, **kwargs)
            except BaseException as error:  # SystemExit too: it is the call's outcome
                future.set_exception(error)
                del error
            else:
                future.set_result(result)
                del result
        del future, fn, args, kwargs
        idle.release()
