"""Prometheus metrics of an app, from its events: served over HTTP, or mounted as an ASGI app.

Requires the extra: `pip install 'aioclock[prometheus]'`.

- `aioclock_runs_total`, `aioclock_failures_total`, `aioclock_timeouts_total`,
  `aioclock_missed_total` (counters per `task`): runs ended; those that failed (an error, a
  crashed worker, a cancellation); those that ran past their timeout; occurrences skipped.
- `aioclock_start_lateness_seconds`, `aioclock_run_duration_seconds` (histograms per `task`,
  buckets from 0.1 ms): how late each run started against its due time, and how long it took.
- `aioclock_worker_replacements_total` (counter): worker processes that died and were replaced.
- `aioclock_next_due_timestamp_seconds` (gauge per `task`, POSIX seconds): when each task is
  next due, read from the control core at each scrape while the app serves.

The counters live as long as the app object: they stay readable after `serve()` returns, and
go on counting from there at the next `serve()`.

Example, served at an address of your choice (or `aioclock run app:app --metrics-address ...`):

    ```python
    from aioclock import AioClock, Every

    app = AioClock(metrics_address="127.0.0.1:9100")  # GET http://127.0.0.1:9100/metrics

    @app.task(trigger=Every(seconds=1))
    async def tick(): ...
    ```

or mounted beside the FastAPI router of `aioclock.ext.fast`:

    ```python
    fastapi_app.mount("/metrics", metrics_asgi_app(clock_app))
    ```
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import weakref
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from aioclock.events import Event
from aioclock.settings import split_address

try:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        generate_latest,
    )
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "aioclock.ext.prometheus needs prometheus-client: pip install 'aioclock[prometheus]'"
    ) from error

if TYPE_CHECKING:
    from aioclock.app import AioClock

logger = logging.getLogger(__name__)

__all__ = ["BUCKETS", "AppMetrics", "MetricsServer", "metrics_asgi_app", "metrics_of"]

#: Histogram buckets (seconds) of start lateness and run duration: from 0.1 ms to 5 minutes.
BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, math.inf,
)  # fmt: skip

#: How long a scrape waits for the control core's next due times (seconds).
STATS_WAIT = 5.0
#: A request to the metrics server must arrive whole within this time (seconds).
REQUEST_WAIT = 10.0

_FAILED = frozenset({"failed", "crashed", "cancelled"})
_metrics: MutableMapping[AioClock, AppMetrics] = weakref.WeakKeyDictionary()


class AppMetrics:
    """The metrics of one app, in their own registry (`registry`), fed by its events."""

    def __init__(self, app: AioClock) -> None:
        self._app = weakref.ref(app)
        #: (host, port) of the HTTP server of `metrics_address` while it serves, else None.
        self.address: tuple[str, int] | None = None
        self.registry = CollectorRegistry()
        per_task = {"labelnames": ["task"], "registry": self.registry}
        self.runs = Counter("aioclock_runs", "Runs ended", **per_task)  # type: ignore[arg-type]
        self.failures = Counter(
            "aioclock_failures",
            "Runs that failed: an error, a crashed worker, a cancellation",
            **per_task,  # type: ignore[arg-type]
        )
        self.timeouts = Counter(
            "aioclock_timeouts",
            "Runs that ran past their timeout",
            **per_task,  # type: ignore[arg-type]
        )
        self.missed = Counter(
            "aioclock_missed",
            "Occurrences skipped",
            **per_task,  # type: ignore[arg-type]
        )
        self.lateness = Histogram(
            "aioclock_start_lateness_seconds",
            "How late runs started against their due time",
            buckets=BUCKETS,
            **per_task,  # type: ignore[arg-type]
        )
        self.duration = Histogram(
            "aioclock_run_duration_seconds",
            "How long runs took",
            buckets=BUCKETS,
            **per_task,  # type: ignore[arg-type]
        )
        self.worker_replacements = Counter(
            "aioclock_worker_replacements",
            "Worker processes that died and were replaced",
            registry=self.registry,
        )
        self.next_due = Gauge(
            "aioclock_next_due_timestamp_seconds",
            "When each task is next due (POSIX seconds), while the app serves",
            **per_task,  # type: ignore[arg-type]
        )

    def observe(self, event: Event) -> None:
        """Count one event (called on the event loop for every event of the app)."""
        kind = event.kind
        task = event.task or ""
        if kind == "run_missed":
            self.missed.labels(task).inc(event.count)
            return
        if kind == "worker_replaced":
            self.worker_replacements.inc()
            return
        outcome = event.outcome
        if outcome is None:  # run_started, control verbs
            return
        self.runs.labels(task).inc()
        if outcome == "timeout":
            self.timeouts.labels(task).inc()
        elif outcome in _FAILED:
            self.failures.labels(task).inc()
        lateness = event.lateness
        if lateness is not None:
            self.lateness.labels(task).observe(lateness)
        duration = event.duration
        if duration is not None:
            self.duration.labels(task).observe(duration)

    async def refresh(self) -> None:
        """Read the next due times from the control core (none while the app does not serve)."""
        app = self._app()
        runtime = None if app is None else app._runtime
        if runtime is None:
            self.next_due.clear()
            return
        try:
            stats = await asyncio.wait_for(runtime.stats(), STATS_WAIT)
        except Exception as error:  # stopping, or busy: the gauge keeps its last values
            logger.debug("metrics: no next due times this time: %r", error)
            return
        self.next_due.clear()
        for entry in stats:
            if entry.next_due is not None:
                self.next_due.labels(entry.task).set(entry.next_due)

    async def render(self) -> bytes:
        """The metrics in Prometheus' text format (written in a thread: many tasks make a long
        text, and the event loop may be running tasks)."""
        await self.refresh()
        return await asyncio.to_thread(generate_latest, self.registry)


def metrics_of(app: AioClock) -> AppMetrics:
    """The metrics of `app`, created (and counting its events) at the first call."""
    metrics = _metrics.get(app)
    if metrics is None:
        metrics = _metrics[app] = AppMetrics(app)
        app._add_event_sink(metrics.observe)
    return metrics


ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


def metrics_asgi_app(app: AioClock) -> ASGIApp:
    """An ASGI app that answers every GET with `app`'s metrics, to mount where you like
    (`fastapi_app.mount("/metrics", metrics_asgi_app(clock_app))`)."""
    metrics = metrics_of(app)

    async def asgi(
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].removeprefix("lifespan.")
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        if scope["type"] != "http":
            return
        body = await metrics.render()
        headers = [(b"content-type", CONTENT_TYPE_LATEST.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return asgi


class MetricsServer:
    """A small HTTP server of one app's metrics (GET any path), in the app's event loop."""

    def __init__(self, metrics: AppMetrics, server: asyncio.Server) -> None:
        self._metrics = metrics
        self._server = server

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) it listens on: the port chosen when the address asked for port 0."""
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def close(self) -> None:
        self._metrics.address = None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_WAIT)
            method = head.split(b" ", 1)[0]
            if method not in (b"GET", b"HEAD"):
                writer.write(_response(405, b"text/plain", b"only GET\n", head_only=False))
            else:
                body = await self._metrics.render()
                content_type = CONTENT_TYPE_LATEST.encode()
                writer.write(_response(200, content_type, body, head_only=method == b"HEAD"))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError):
            pass  # not a request we answer
        except ConnectionError:
            pass
        finally:
            writer.close()


def _response(status: int, content_type: bytes, body: bytes, *, head_only: bool) -> bytes:
    reason = b"OK" if status == 200 else b"Method Not Allowed"
    head = (
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % (status, reason, content_type, len(body))
    )
    return head if head_only else head + body


async def serve_metrics(app: AioClock, address: str) -> MetricsServer:
    """Serve `app`'s metrics over HTTP at "HOST:PORT" until `close()` (`serve()` does this
    for `metrics_address`)."""
    host, port = split_address(address)
    metrics = metrics_of(app)
    holder: list[MetricsServer] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await holder[0]._answer(reader, writer)

    try:
        server = await asyncio.start_server(answer, host or None, port)
    except OSError as error:
        raise OSError(error.errno, f"metrics_address {address!r}: {error.strerror}") from error
    holder.append(MetricsServer(metrics, server))
    metrics.address = holder[0].address
    logger.info("serving metrics at http://%s:%d/metrics", *metrics.address)
    return holder[0]
