"""Three nodes on one Redis server of the test's own, as real processes: a node is SIGKILLed
and Redis is paused for 2 s; every fire (task + nominal due) ran at most once, fencing tokens
grow with the dues, every run the dead node had going is reported, and the runs spread."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
import redis

from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

PREFIX = "cluster-test"
_SEP = "\x1f"


def start_node(server: RedisServer, log: Path, workers: int = 2) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "CLUSTER_TEST_STORE": f"{server.url}?prefix={PREFIX}",
        "CLUSTER_TEST_LOG": str(log),
        "CLUSTER_TEST_WORKERS": str(workers),
    }
    with open(log.with_suffix(".err"), "wb") as errors:  # the node's log records
        return subprocess.Popen(
            [sys.executable, "-m", "tests.integration.cluster_app"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )


def lines(log: Path) -> list[tuple[str, str, float, int, int, float]]:
    if not log.exists():
        return []
    entries = []
    for line in log.read_text().splitlines():
        what, task, due, token, pid, at = line.split()
        entries.append((what, task, float(due), int(token), int(pid), float(at)))
    return entries


def going(log: Path) -> set[tuple[str, float, int]]:
    """The runs of a node's log that started and did not end."""
    entries = lines(log)
    ended = {(task, due) for what, task, due, *_ in entries if what == "end"}
    return {
        (task, due, token)
        for what, task, due, token, *_ in entries
        if what == "start" and (task, due) not in ended
    }


def wait_until(condition, guard: float = 30.0) -> None:
    deadline = time.monotonic() + guard
    while not condition():
        assert time.monotonic() < deadline, "timed out (a guard against hangs)"
        time.sleep(0.05)


def children_of(pid: int) -> list[int]:
    from benchmarks._proc import child_pids

    return child_pids(pid)


def test_three_nodes_run_each_fire_once_through_a_node_kill_and_a_redis_pause(own_redis, tmp_path):
    logs = [tmp_path / f"node{index}.log" for index in range(3)]
    nodes: list[subprocess.Popen[bytes]] = []
    victim_children: list[int] = []
    try:
        nodes += [start_node(own_redis, log) for log in logs]
        wait_until(lambda: all(any(e[0] == "start" for e in lines(log)) for log in logs))
        wait_until(lambda: going(logs[0]))  # killed while it runs something
        victim = nodes[0]
        victim_children += children_of(victim.pid)
        victim.kill()  # SIGKILL of the node's main process: its children follow by the lifeline
        victim.wait()
        killed_at = time.time()
        reaped = redis.Redis.from_url(own_redis.url)
        try:  # its heartbeat expires (1.5 s), another node reaps it
            wait_until(lambda: reaped.llen(f"{PREFIX}:reaped") > 0)
        finally:
            reaped.close()
        own_redis.pause()
        time.sleep(2.0)
        own_redis.resume()
        resumed_at = time.time()
        wait_until(lambda: any(e[5] > resumed_at + 1.0 for log in logs[1:] for e in lines(log)))
        for node in nodes[1:]:
            node.send_signal(signal.SIGTERM)
        codes = [node.wait(timeout=30) for node in nodes[1:]]
        assert codes == [0, 0], [log.with_suffix(".err").read_text() for log in logs[1:]]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
        if not wait_until_gone(victim_children):  # (their lifeline failed: the test says so)
            for pid in victim_children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    runs = [(index, *entry) for index, log in enumerate(logs) for entry in lines(log)]
    starts = [run for run in runs if run[1] == "start"]
    # Each fire ran at most once in the cluster.
    fires = defaultdict(list)
    for index, _, task, due, token, pid, _ in starts:
        fires[(task, due)].append((index, token, pid))
    twice = {fire: where for fire, where in fires.items() if len(where) > 1}
    assert not twice, f"fires run more than once: {twice}"
    # Fencing tokens grow with the dues, per task.
    for task in {task for task, _ in fires}:
        tokens = [fires[fire][0][1] for fire in sorted(f for f in fires if f[0] == task)]
        assert all(token > 0 for token in tokens)
        assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens), task
    # Every run the killed node had going is reported (lost, or missed if it had not told
    # Redis it started), with its fencing token.
    lost = going(logs[0])
    assert lost, "the killed node had runs going"
    client = redis.Redis.from_url(own_redis.url, decode_responses=True)
    try:
        reported = set()
        for entry in client.lrange(f"{PREFIX}:reaped", 0, -1):
            _, _, task, due, token, _ = entry.split(_SEP)
            reported.add((task, float(due), int(token)))
        assert lost <= reported, f"runs of the killed node not reported: {lost - reported}"
        assert not client.smembers(f"{PREFIX}:members"), "the nodes that stopped left"
    finally:
        client.close()
    # The runs spread over the nodes; the killed node's children are gone.
    sleepy = "tests.integration.cluster_app:sleepy"  # (crunch has too few runs to tell)
    assert len({i for i, _, name, *_ in starts if name == sleepy and i > 0}) == 2
    assert wait_until_gone(victim_children), "the killed node's children outlived it"
    assert any(run[6] > killed_at for run in starts)


def wait_until_gone(pids: list[int], guard: float = 10.0) -> bool:
    """Whether every one of `pids` has exited within `guard` seconds."""
    deadline = time.monotonic() + guard
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
