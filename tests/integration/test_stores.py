"""Stores across real processes, each test on SQLite and on Redis: two instances on one store
never both fire, the standby takes over after a SIGKILL, an instance that loses its lease stops
firing; a restart through the supervisor (`workers=1`) keeps the grid and counts the downtime."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aioclock.stores import open_store
from tests.redis_server import LOCAL_URL

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]
HANG_GUARD = 20.0
TAKEOVER_BOUND = 3.0  # the target is 2 s (lease 1.5 s + a poll); this only guards a hang


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path) -> str:
    """The store the instances of a test share: an SQLite file, or a prefix on Redis."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'app.db'}"
    return request.getfixturevalue("redis_url") + "&mode=single"  # (one at a time)


def start(
    store_url: str, tmp_path: Path, tag: str, workers: int = 0, **env_vars: str
) -> subprocess.Popen:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        STORE_TEST_URL=store_url,
        STORE_TEST_LOG=str(tmp_path / "beats.log"),
        STORE_TEST_WORKERS=str(workers),
        STORE_TEST_TAG=tag,
        **env_vars,
    )
    log = tmp_path / f"{tag}.err"
    with open(log, "wb") as errors:  # (a file: the test reads it while the process runs)
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.store_app"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
    process.tag = tag  # type: ignore[attr-defined]
    process.log = log  # type: ignore[attr-defined]
    return process


def log_of(process: subprocess.Popen) -> str:
    return process.log.read_text(errors="replace")  # type: ignore[attr-defined]


def wait_for_log(process: subprocess.Popen, text: str) -> None:
    """Until the process has logged `text` (a standby: "standing by")."""
    deadline = time.monotonic() + HANG_GUARD
    while text not in log_of(process):
        if process.poll() is not None:
            raise AssertionError(f"exited {process.returncode}: {log_of(process)[-3000:]}")
        assert time.monotonic() < deadline, f"pid {process.pid} did not log {text!r}"
        time.sleep(0.02)


def beats(tmp_path: Path) -> list[tuple[str, float]]:
    path = tmp_path / "beats.log"
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        tag, _, at = line.partition(" ")
        if at:
            found.append((tag, float(at)))
    return found


def wait_for_beats(tmp_path: Path, process: subprocess.Popen, count: int) -> list[float]:
    deadline = time.monotonic() + HANG_GUARD
    while time.monotonic() < deadline:
        mine = [at for tag, at in beats(tmp_path) if tag == process.tag]
        if len(mine) >= count:
            return mine
        if process.poll() is not None:
            raise AssertionError(f"exited {process.returncode}: {log_of(process)[-3000:]}")
        time.sleep(0.02)
    raise AssertionError(f"pid {process.pid} did not beat {count} times")


def finish(process: subprocess.Popen, signum: int = signal.SIGTERM) -> tuple[int, str]:
    if process.poll() is None:
        process.send_signal(signum)
    process.wait(timeout=HANG_GUARD)
    return process.returncode, log_of(process)


def saved(store_url: str) -> tuple:
    """The beat task's TaskProgress fields as the store keeps them."""
    store = open_store(store_url)
    try:
        (fields,) = [f for task, f in store.load().progress.items() if task.endswith("beat")]
        return fields
    finally:
        store.close()


def steal_the_lease(store_url: str) -> None:
    """Do what another instance taking the lease does, behind the holder's back."""
    if store_url.startswith("sqlite:"):
        with sqlite3.connect(store_url.removeprefix("sqlite:///")) as db:
            db.execute("UPDATE aioclock_lease SET owner = 'thief', token = token + 1")
        return
    import redis

    prefix = store_url.partition("?prefix=")[2].partition("&")[0]
    client = redis.Redis.from_url(LOCAL_URL)
    token = client.incr(f"{prefix}:token")
    client.set(f"{prefix}:lease", f"{token}:thief", px=60_000)
    client.close()


def test_a_standby_takes_over_after_a_sigkill_and_the_two_never_both_fire(tmp_path, store_url):
    first = start(store_url, tmp_path, "first")
    second = None
    try:
        wait_for_beats(tmp_path, first, 3)
        second = start(store_url, tmp_path, "second")
        wait_for_log(second, "standing by")
        assert second.poll() is None
        assert not [at for tag, at in beats(tmp_path) if tag == second.tag]
        killed_at = time.time()
        first.kill()
        first.communicate(timeout=HANG_GUARD)
        took_over = wait_for_beats(tmp_path, second, 2)[0]
        assert took_over - killed_at < TAKEOVER_BOUND
        by_first = [at for tag, at in beats(tmp_path) if tag == first.tag]
        assert max(by_first) < min(took_over, killed_at)  # never both
        code, err = finish(second)
        assert code == 0, err[-3000:]
        assert err.count("standing by") == 1  # logged once, not at each poll
        assert "took over the lease" in err
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.communicate(timeout=HANG_GUARD)


@pytest.mark.parametrize("workers", [0, 1])
def test_an_instance_that_loses_its_lease_stops_firing(tmp_path, store_url, workers):
    process = start(store_url, tmp_path, "only", workers=workers)
    try:
        wait_for_beats(tmp_path, process, 3)
        steal_the_lease(store_url)  # another instance took it
        stolen_at = time.time()
        code, err = finish(process, signal.SIGCONT)  # (no signal: it must end by itself)
        assert code != 0
        assert "lost the lease of store" in err
        assert "LeaseLostError" in err
        late = [at for tag, at in beats(tmp_path) if at > stolen_at + 1.0]
        assert not late  # it stopped at its next renewal (every 0.5 s)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=HANG_GUARD)


def test_a_restart_with_workers_keeps_the_grid_and_counts_the_downtime(tmp_path, store_url):
    first = start(store_url, tmp_path, "first", workers=1)
    try:
        wait_for_beats(tmp_path, first, 5)
        code, err = finish(first)
        assert code == 0, err[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate(timeout=HANG_GUARD)
    before = saved(store_url)
    anchor = before[0][3]  # FixedRate's progress: (previous, count, ended, anchor, step)
    time.sleep(0.5)  # ~5 occurrences fall due while nothing serves
    second = start(store_url, tmp_path, "second", workers=1)
    try:
        wait_for_beats(tmp_path, second, 3)
        code, err = finish(second)
        assert code == 0, err[-3000:]
    finally:
        if second.poll() is None:
            second.kill()
            second.communicate(timeout=HANG_GUARD)
    after = saved(store_url)
    assert after[0][3] == anchor  # the grid of the first start
    runs, missed = after[5], after[8]
    assert runs == len(beats(tmp_path))
    assert missed >= 3  # the downtime (0.5 s and the start-up: ~5 or more occurrences)
    assert after[0][1] > before[0][1]  # the loop count went on
    store = open_store(store_url)
    history = store.history(limit=1000)  # every run of both instances, ended "ok"
    store.close()
    assert len(history) == runs
    assert {run.outcome for run in history} == {"ok"}
    assert all(run.due is not None and run.end is not None for run in history)
