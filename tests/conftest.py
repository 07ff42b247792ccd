"""Fixtures of real Redis servers (tests/redis_server.py), for the unit and integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_server import LOCAL_URL, RedisServer, delete_prefix, unique_prefix


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own on the server at 127.0.0.1:6379 (`LOCAL_URL`); every
    key under it is deleted at teardown."""
    prefix = unique_prefix()
    yield prefix
    delete_prefix(prefix, LOCAL_URL)


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
