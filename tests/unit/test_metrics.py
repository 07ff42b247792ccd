"""The Prometheus exporter's counting, fed events by hand, and the `metrics_address` setting."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aioclock import AioClock, Event
from aioclock.ext.prometheus import BUCKETS, metrics_of
from aioclock.settings import Settings, from_environ


def value(metrics, name: str, **labels) -> float | None:
    return metrics.registry.get_sample_value(name, labels or None)


def test_each_event_counts_where_it_belongs():
    app = AioClock()
    metrics = metrics_of(app)
    assert metrics_of(app) is metrics  # one per app
    for event in [
        Event("run_started", "m:a", 10.0, 10.0, worker=0),
        Event("run_succeeded", "m:a", 10.0, 10.0003, 10.5, "ok"),
        Event("run_failed", "m:a", 11.0, 11.0, 11.1, "crashed", "worker 0 died"),
        Event("run_timed_out", "m:a", 12.0, 12.0, 13.0, "timeout", "ran past 1 s"),
        Event("run_missed", "m:a", 13.0, 14.5, 14.5, error="busy", count=3),
        Event("worker_replaced", None, None, 14.0, 14.0, worker=0),
        Event("task_paused", "m:a", None, 15.0, 15.0),
    ]:
        metrics.observe(event)
    assert value(metrics, "aioclock_runs_total", task="m:a") == 3
    assert value(metrics, "aioclock_failures_total", task="m:a") == 1
    assert value(metrics, "aioclock_timeouts_total", task="m:a") == 1
    assert value(metrics, "aioclock_missed_total", task="m:a") == 3
    assert value(metrics, "aioclock_worker_replacements_total") == 1
    bucket = "aioclock_start_lateness_seconds_bucket"
    assert value(metrics, bucket, task="m:a", le="0.0001") == 2  # two on time
    assert value(metrics, bucket, task="m:a", le="0.0005") == 3  # 0.3 ms late
    assert value(metrics, "aioclock_run_duration_seconds_sum", task="m:a") == pytest.approx(1.5997)


def test_the_buckets_start_at_a_tenth_of_a_ms_and_the_text_parses():
    assert BUCKETS[0] == 0.0001 and BUCKETS == tuple(sorted(BUCKETS))
    app = AioClock()
    metrics_of(app).observe(Event("run_succeeded", "m:a", 1.0, 1.0, 1.0, "ok"))
    text = generate_latest(metrics_of(app).registry).decode()
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"aioclock_runs", "aioclock_start_lateness_seconds"} <= names


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("127.0.0.1:9100", "127.0.0.1:9100"),
        ("[::1]:0", "[::1]:0"),
        (":9100", ":9100"),
        (None, None),
    ],
)
def test_a_metrics_address_is_host_and_port(given, expected):
    assert Settings(metrics_address=given).metrics_address == expected


@pytest.mark.parametrize("given", ["9100", "host:port", "host:70000", 9100])
def test_a_bad_metrics_address_is_refused_naming_it(given):
    with pytest.raises(ValueError, match=f"metrics_address must be .*got {given!r}"):
        AioClock(metrics_address=given)


def test_the_variable_none_turns_metrics_off():
    assert from_environ({"AIOCLOCK_METRICS_ADDRESS": "none"}) == {"metrics_address": None}
    assert from_environ({"AIOCLOCK_METRICS_ADDRESS": "0.0.0.0:9100"}) == {
        "metrics_address": "0.0.0.0:9100"
    }
