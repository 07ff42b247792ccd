"""A Redis store whose server fails under a serving app (a `redis-server` of each test's own):

- killed: the instance logs the failure once, cannot renew its lease, stops firing and exits
  with `LeaseLostError` (fails closed) within the lease's length; nothing hangs;
- killed and started again (empty): a standby that retried meanwhile takes the lease and
  serves, afresh (the server kept nothing);
- paused (SIGSTOP) for 2 s: the holder's calls time out, it gives the lease up before it can
  expire and exits with `LeaseLostError`; the standby, whose calls timed out too, takes over
  once the server answers again (its lease expired meanwhile, by the server's clock). The two
  never fire at the same time.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.test_stores import (
    HANG_GUARD,
    TAKEOVER_BOUND,
    beats,
    finish,
    start,
    wait_for_beats,
    wait_for_log,
)
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

#: The holder stops firing this long after its last renewal at the latest (1.5 s lease, 0.25 s
#: calls): a guard for the assertion that it stopped, not a measure.
STOPS_WITHIN = 1.5


def single(server) -> str:
    """The URL of a store on `server` that one instance at a time serves (the lease)."""
    return f"{server.url}?mode=single"


def kill_all(*processes) -> None:
    for process in processes:
        if process is not None and process.poll() is None:
            process.kill()
            process.communicate(timeout=HANG_GUARD)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_killed_server_stops_the_instance_which_says_so_once(tmp_path, own_redis, workers):
    process = start(single(own_redis), tmp_path, "only", workers=workers)
    try:
        wait_for_beats(tmp_path, process, 3)
        own_redis.kill()
        killed_at = time.time()
        code, err = finish(process, signal.SIGCONT)  # (no signal: it must end by itself)
        assert code != 0
        assert err.count(f"store {single(own_redis)} failed: ConnectionError") == 1, err[-3000:]
        assert "lost the lease of store" in err and "LeaseLostError" in err
        assert not [at for _, at in beats(tmp_path) if at > killed_at + STOPS_WITHIN]
    finally:
        kill_all(process)


@contextlib.contextmanager
def holder_and_standby(own_redis: RedisServer, tmp_path) -> Iterator[tuple[Any, Any]]:
    """Two instances on one store: the first serves (it has beaten), the second stands by;
    both are ended on the way out."""
    first = start(single(own_redis), tmp_path, "first")
    second = None
    try:
        wait_for_beats(tmp_path, first, 3)
        second = start(single(own_redis), tmp_path, "second")
        wait_for_log(second, "standing by")
        yield first, second
    finally:
        if own_redis._process is not None and own_redis._process.poll() is None:
            own_redis.resume()  # (a paused server would hold the instances' last writes)
        kill_all(first, second)


def test_a_standby_serves_once_a_killed_server_is_back(tmp_path, own_redis: RedisServer):
    with holder_and_standby(own_redis, tmp_path) as (first, second):
        own_redis.kill()
        code, err = finish(first, signal.SIGCONT)
        assert code != 0 and "LeaseLostError" in err
        time.sleep(0.5)  # the standby's tries fail meanwhile
        own_redis.restart()  # empty: it kept nothing
        back_at = time.time()
        took_over = wait_for_beats(tmp_path, second, 2)[0]
        assert took_over - back_at < TAKEOVER_BOUND
        code, err = finish(second)
        assert code == 0, err[-3000:]
        assert err.count(f"store {single(own_redis)}: ConnectionError") == 1, err[-3000:]
        assert "took over the lease" in err


def test_a_paused_server_moves_the_lease_to_the_standby(tmp_path, own_redis: RedisServer):
    with holder_and_standby(own_redis, tmp_path) as (first, second):
        own_redis.pause()
        paused_at = time.time()
        time.sleep(2.0)
        own_redis.resume()
        code, err = finish(first, signal.SIGCONT)  # gave up while the server was paused
        assert code != 0
        assert err.count(f"store {single(own_redis)} failed: TimeoutError") == 1, err[-3000:]
        assert "LeaseLostError" in err
        by_first = [at for tag, at in beats(tmp_path) if tag == first.tag]
        assert max(by_first) < paused_at + STOPS_WITHIN
        took_over = wait_for_beats(tmp_path, second, 2)[0]
        assert max(by_first) < took_over  # never both
        code, err = finish(second)
        assert code == 0, err[-3000:]
        assert "took over the lease" in err
