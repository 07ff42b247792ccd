"""The Prometheus exporter: scraped over HTTP at the app's `metrics_address` (both runtimes, and
from the command line), mounted as an ASGI app, and readable after `serve()` returns."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import time

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from aioclock import AioClock, Every, Once
from aioclock.ext.prometheus import metrics_asgi_app, metrics_of

from . import control_tasks, event_tasks
from .test_cli import serving as serving_command

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]
HANG_GUARD = 30


def families(text: str) -> dict:
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(family, name: str, task_suffix: str) -> list:
    return [
        s
        for s in family.samples
        if s.name == name and s.labels.get("task", "").endswith(task_suffix)
    ]


async def scrape_until(url: str, ready) -> dict:
    """Scrape `url` until `ready(families)` holds."""
    deadline = time.monotonic() + HANG_GUARD
    async with httpx.AsyncClient() as client:
        while True:
            response = await client.get(url)
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            found = families(response.text)
            if ready(found) or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.05)


def ran_twice(found: dict) -> bool:
    runs = found.get("aioclock_runs")
    return runs is not None and any(
        s.value >= 2 for s in samples(runs, "aioclock_runs_total", ":fine")
    )


@pytest.mark.parametrize(
    "workers", [pytest.param(0, id="in-process"), pytest.param(1, id="workers")]
)
async def test_an_app_serves_its_metrics_at_its_address_with_the_lateness_histogram(
    events, workers
):
    app = AioClock(workers=workers, handle_signals=False, metrics_address="127.0.0.1:0")
    app.task(trigger=Every(seconds=0.05))(event_tasks.fine)
    app.task(trigger=Once())(event_tasks.fails)
    serving = asyncio.create_task(app.serve())
    try:
        metrics = metrics_of(app)
        while metrics.address is None:
            assert not serving.done(), serving
            await asyncio.sleep(0.01)
        host, port = metrics.address
        found = await scrape_until(f"http://{host}:{port}/metrics", ran_twice)
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
    lateness = found["aioclock_start_lateness_seconds"]
    assert lateness.type == "histogram"
    buckets = samples(lateness, "aioclock_start_lateness_seconds_bucket", ":fine")
    assert buckets[0].labels["le"] == "0.0001"  # from 0.1 ms up
    assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value >= 2
    assert found["aioclock_run_duration_seconds"].type == "histogram"
    (failures,) = samples(found["aioclock_failures"], "aioclock_failures_total", ":fails")
    assert failures.value == 1
    name = "aioclock_next_due_timestamp_seconds"
    (next_due,) = samples(found[name], name, ":fine")
    assert next_due.value > time.time() - 60
    assert "aioclock_worker_replacements" in found
    assert metrics.address is None  # the server stopped with serve()


async def test_metrics_mounted_beside_the_router_stay_readable_after_serve_returns(events):
    clock = AioClock(handle_signals=False)
    clock.task(trigger=Every(seconds=0.01, max_loop_count=3))(event_tasks.fine)
    api = FastAPI()
    api.mount("/metrics", metrics_asgi_app(clock))
    await asyncio.wait_for(clock.serve(), HANG_GUARD)
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/metrics/")
    assert response.status_code == 200
    found = families(response.text)
    (runs,) = samples(found["aioclock_runs"], "aioclock_runs_total", ":fine")
    assert runs.value == 3
    assert not found["aioclock_next_due_timestamp_seconds"].samples  # not serving: none due


def test_a_metrics_address_in_use_is_refused_naming_the_setting():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = AioClock(metrics_address=f"127.0.0.1:{port}", handle_signals=False)
        app.task(trigger=Every(hours=1))(control_tasks.keeps_serving)
        with pytest.raises(OSError, match=f"metrics_address '127.0.0.1:{port}'"):
            asyncio.run(app.serve())


def test_the_command_line_serves_metrics_at_the_address_given(events):
    with socket.socket() as probe:  # a free port (the server binds it a moment later)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "aioclock", "run", "tests.integration.worker_tasks_cli:app"]
    command += ["--metrics-address", f"127.0.0.1:{port}", "--log-level", "warning"]
    with serving_command(command) as process:
        deadline = time.monotonic() + HANG_GUARD
        text = ""
        while 'aioclock_runs_total{task="tests.integration.worker_tasks_cli:tick"}' not in text:
            assert time.monotonic() < deadline, text
            assert process.poll() is None, process.communicate()[1][-2000:]
            with contextlib.suppress(httpx.TransportError):
                text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=HANG_GUARD)
    assert process.returncode == 0, err[-2000:]
    found = families(text)
    assert samples(found["aioclock_runs"], "aioclock_runs_total", "worker_tasks_cli:tick")
