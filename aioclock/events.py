"""Events of an app's runs and tasks, for listeners in the main process: `app.on(...)`.

The control core notes each event (a run started or ended, an occurrence missed, a task paused,
resumed, added, removed or rescheduled) only while someone listens, and sends them in batches
after the fires of the same step: with `workers >= 1` from the dispatcher process over its
control channel, with `workers=0` through the in-process runtime's own delivery. The supervisor
adds `worker_replaced`. In the main process an `EventHub` calls the listeners: async ones as
tasks on the event loop, sync ones one after the other on one dedicated thread. A listener that
raises is logged; one that blocks is logged and holds back only the sync listeners after it,
never a fire.

Example:

    >>> from aioclock import AioClock, Event
    >>> app = AioClock()
    >>> @app.on("run_failed", "run_timed_out")
    ... def alert(event: Event) -> None:
    ...     print(f"{event.task} {event.outcome}: {event.error}")
    >>> event = Event("run_failed", "jobs:sync", due=10.0, start=10.5, end=11.0,
    ...               outcome="failed", error="ValueError: boom")
    >>> alert(event)
    jobs:sync failed: ValueError: boom
    >>> event.lateness, event.duration
    (0.5, 0.5)
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args

from aioclock._protocol import EventItem, Outcome

logger = logging.getLogger(__name__)

__all__ = ["KINDS", "Event", "EventHub", "EventKind", "Listener", "Listeners"]

EventKind = Literal[
    "run_started",
    "run_succeeded",
    "run_failed",
    "run_timed_out",
    "run_cancelled",
    "run_missed",
    "worker_replaced",
    "task_paused",
    "task_resumed",
    "task_added",
    "task_removed",
    "task_rescheduled",
]
KINDS: tuple[EventKind, ...] = get_args(EventKind)

#: A sync listener that has run this long (seconds) is logged as blocked, and again as often.
BLOCKED_AFTER = 1.0
#: Events waiting for the listener thread past this many are dropped (and counted, and logged).
MAX_QUEUED = 100_000
#: How long the end of `serve()` waits for the listeners to take the last events (seconds).
CLOSE_WAIT = 5.0


@dataclass(frozen=True)
class Event:
    """Something that happened to a run, a task or a worker; times are POSIX seconds.

    - `kind`: see `EventKind`. A run's events: `run_started` (handed to a worker), then one of
      `run_succeeded`, `run_failed` (its outcome "failed", or "crashed" when its worker died),
      `run_timed_out`, `run_cancelled`; `run_missed`: `count` occurrences were skipped (the
      previous run was still going, or they were already past when the schedule caught up),
      `error` says why. `task_paused`, `task_resumed`, `task_added`, `task_removed`,
      `task_rescheduled`: a control verb took effect. `worker_replaced`: worker `worker` died
      and a new process took its place (`workers >= 1` only).
    - `task`: the task's name ("module:qualname"); None for `worker_replaced`.
    - `due`: the nominal due time of the run (or of the first missed occurrence).
    - `start`: when the run started (for `run_started`: when it was handed to a worker);
      `end`: when it ended; for the other kinds, when the event happened.
    - `outcome`: "ok", "failed", "timeout", "crashed" or "cancelled" for a run's end.
    - `error`: a one-line summary of what went wrong, or why occurrences were missed.
    - `worker`: the worker a run was handed to, or the worker replaced.
    """

    kind: EventKind
    task: Union[str, None]
    due: Union[float, None] = None
    start: Union[float, None] = None
    end: Union[float, None] = None
    outcome: Union[Outcome, None] = None
    error: Union[str, None] = None
    worker: Union[int, None] = None
    count: int = 1

    @property
    def lateness(self) -> Union[float, None]:
        """How late the run started against its nominal due time (seconds)."""
        if self.start is None or self.due is None:
            return None
        return self.start - self.due

    @property
    def duration(self) -> Union[float, None]:
        """How long the run took (seconds), once it ended."""
        if self.start is None or self.end is None:
            return None
        return self.end - self.start

    @classmethod
    def from_item(cls, item: EventItem) -> Event:
        kind, task, due, start, end, outcome, error, worker, count = item
        return cls(kind, task, due, start, end, outcome, error, worker, count)  # type: ignore[arg-type]

    def as_item(self) -> EventItem:
        return (
            self.kind,
            self.task,
            self.due,
            self.start,
            self.end,
            self.outcome,
            self.error,
            self.worker,
            self.count,
        )


#: A function of one `Event`, sync or async.
Listener = Callable[[Event], Any]


def check_kinds(kinds: Iterable[object]) -> Union[frozenset[str], None]:
    """The kinds a listener wants (None: every kind); ValueError names a kind that is not one."""
    wanted = list(kinds)
    for kind in wanted:
        if kind not in KINDS:
            raise ValueError(f"event kind must be one of {', '.join(KINDS)}; got {kind!r}")
    return frozenset(wanted) if wanted else None  # type: ignore[arg-type]  # checked above


def _is_async(listener: Listener) -> bool:
    return inspect.iscoroutinefunction(listener) or inspect.iscoroutinefunction(
        getattr(listener, "__call__", None)  # noqa: B004  # an object with `async def __call__`
    )


@dataclass(frozen=True)
class _Entry:
    listener: Listener
    kinds: Union[frozenset[str], None]
    is_async: bool


class Listeners:
    """The listeners registered on an app, with the kinds each wants."""

    def __init__(self) -> None:
        self._entries: list[_Entry] = []

    def __bool__(self) -> bool:
        return bool(self._entries)

    def add(self, listener: Listener, kinds: Iterable[object] = ()) -> None:
        if not callable(listener):
            raise TypeError(f"a listener must be a function of one Event, got {listener!r}")
        self._entries.append(_Entry(listener, check_kinds(kinds), _is_async(listener)))

    def remove(self, listener: Listener) -> None:
        """Forget every registration of `listener`; ValueError if it has none."""
        kept = [entry for entry in self._entries if entry.listener is not listener]
        if len(kept) == len(self._entries):
            raise ValueError(f"{listener!r} is not a registered listener")
        self._entries = kept

    def for_kind(self, kind: str) -> list[_Entry]:
        return [e for e in self._entries if e.kinds is None or kind in e.kinds]


class _ListenerThread:
    """One thread that calls the sync listeners, one event after the other, in order."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Union[tuple[Listener, Event], None]] = queue.SimpleQueue()
        self._thread: Union[threading.Thread, None] = None
        self._busy_since: Union[float, None] = None  # monotonic start of the current call
        self._current: Union[Listener, None] = None
        self.dropped = 0

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, listener: Listener, event: Event) -> None:
        if self._queue.qsize() >= MAX_QUEUED:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % MAX_QUEUED == 0:
                logger.error(
                    "%d events dropped: the sync listeners are %d events behind (is %s blocked?)",
                    self.dropped,
                    MAX_QUEUED,
                    _name(self._current),
                )
            return
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="aioclock-listeners", daemon=True
            )
            self._thread.start()
        self._queue.put((listener, event))

    def busy_for(self) -> Union[float, None]:
        since = self._busy_since
        return None if since is None else time.monotonic() - since

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    @property
    def current(self) -> Union[Listener, None]:
        return self._current

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            listener, event = item
            self._current = listener
            self._busy_since = time.monotonic()
            try:
                listener(event)
            except Exception:
                logger.exception("event listener %s failed on %s", _name(listener), event.kind)
            finally:
                self._busy_since = None
                self._current = None


def _call_sink(sink: Callable[[Event], None], event: Event) -> None:
    try:
        sink(event)
    except Exception:
        logger.exception("event sink %s failed on %s", _name(sink), event.kind)


async def _call_async(listener: Listener, event: Event) -> None:
    try:
        await listener(event)
    except Exception:
        logger.exception("event listener %s failed on %s", _name(listener), event.kind)


def _name(listener: object) -> str:
    return getattr(listener, "__qualname__", None) or repr(listener)


class EventHub:
    """Delivers the events of one `serve()` to the app's listeners and to `sinks` (the metrics,
    plain functions called on the event loop).

    `publish` only queues: the events reach the listeners from a callback of the loop, after
    whatever the caller is doing (starting runs, answering the dispatcher).
    """

    def __init__(self, listeners: Listeners, sinks: Iterable[Callable[[Event], None]] = ()) -> None:
        self._listeners = listeners
        self._sinks = (
            [] if sinks is None else sinks
        )  # the app's own list: a sink added while serving is called too
        self._thread = _ListenerThread()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._undelivered: list[EventItem] = []
        self._loop: Union[asyncio.AbstractEventLoop, None] = None
        self._scheduled = False
        self._watching = False

    @property
    def wanted(self) -> bool:
        """Whether anything listens: otherwise the runtime need not produce events at all."""
        return bool(self._listeners) or bool(self._sinks)

    def publish_items(self, items: Iterable[EventItem]) -> None:
        """Queue events as the core sends them (from the event loop's thread)."""
        self._undelivered += items
        if self._scheduled:
            return
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._scheduled = True
        self._loop.call_soon(self._deliver)

    def publish(self, event: Event) -> None:
        self.publish_items([event.as_item()])

    def _deliver(self) -> None:
        self._scheduled = False
        events, self._undelivered = self._undelivered, []
        loop = self._loop
        assert loop is not None
        for item in events:
            event = Event.from_item(item)
            for sink in self._sinks:
                _call_sink(sink, event)
            for entry in self._listeners.for_kind(event.kind):
                if entry.is_async:
                    self._start(loop, entry.listener, event)
                else:
                    self._thread.submit(entry.listener, event)
        if self._thread.alive and not self._watching:
            self._watching = True
            loop.call_later(BLOCKED_AFTER, self._watch)

    def _start(self, loop: asyncio.AbstractEventLoop, listener: Listener, event: Event) -> None:
        task = loop.create_task(_call_async(listener, event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _watch(self) -> None:
        """Log a sync listener that has been running for BLOCKED_AFTER seconds (again as often)."""
        self._watching = False
        busy = self._thread.busy_for()
        current = self._thread.current
        if busy is not None and busy >= BLOCKED_AFTER and current is not None:
            logger.warning(
                "event listener %s has been running for %.1f s; %d events wait behind it "
                "(fires are not delayed)",
                _name(current),
                busy,
                self._thread.waiting,
            )
        if (busy is not None or self._thread.waiting) and self._loop is not None:
            self._watching = True
            self._loop.call_later(BLOCKED_AFTER, self._watch)

    async def close(self, timeout: float = CLOSE_WAIT) -> None:
        """Deliver what is queued, then wait (up to `timeout` real seconds) for the listeners to
        take it; what still runs then is logged and left (async ones cancelled)."""
        if self._undelivered:
            self._deliver()
        self._thread.stop()
        deadline = time.monotonic() + timeout
        # Real time, polled: on a test's virtual-time loop a timer would not wait for a thread.
        while self._thread.alive and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        if self._thread.alive:
            logger.warning(
                "event listener %s still runs after the app stopped; %d events not delivered",
                _name(self._thread.current),
                self._thread.waiting,
            )
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                logger.warning("event listener %s still runs: cancelled", task.get_coro())
                task.cancel()
