"""Fixtures of real Redis servers (tests/redis_server.py), for the unit and integration tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tests.redis_server import LOCAL_URL, RedisServer, delete_prefix, unique_prefix


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own on the server at 127.0.0.1:6379 (`LOCAL_URL`); every
    key under it is deleted at teardown."""
    prefix = unique_prefix()
    yield prefix
    alive = store_threads_alive()  # (one that still writes would put keys back)
    delete_prefix(prefix, LOCAL_URL)
    assert not alive, f"a store's thread outlived the test: {alive}"


def store_threads_alive(timeout: float = 5.0) -> list[str]:
    """The threads of stores and cluster members still running after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    ours = ("aioclock-store", "aioclock-cluster")  # (a cluster member's threads: 3)
    for thread in threading.enumerate():
        if thread.name.startswith(ours):
            thread.join(max(0.0, deadline - time.monotonic()))
    return [t.name for t in threading.enumerate() if t.name.startswith(ours) and t.is_alive()]


@pytest.fixture
def redis_url(redis_prefix: str) -> str:
    """The store URL of this test's prefix on 127.0.0.1:6379."""
    return f"{LOCAL_URL}?prefix={redis_prefix}"


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A `redis-server` of this test's own on a free port (`.url`, `.pid`, `.kill()`,
    `.pause()`, `.resume()`, `.restart()`), ended by its PID at teardown."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()
