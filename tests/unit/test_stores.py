"""The stores: what they keep, their lease and fencing token, the schema version, the setting."""

from __future__ import annotations

import doctest
import sqlite3

import pytest

import aioclock.stores
from aioclock import AioClock
from aioclock.settings import from_environ
from aioclock.stores import SCHEMA_VERSION, MemoryStore, StoreVersionError, open_store
from aioclock.stores.sqlite import SqliteStore


def test_the_module_examples_hold():
    failed, attempted = doctest.testmod(aioclock.stores)
    assert attempted and not failed


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    made = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "app.db")
    yield made
    made.close()


def test_progress_is_merged_per_task_and_kept(store):
    token = store.acquire("a", ttl=5)
    assert token == 1
    assert store.save({"m:x": (1, None), "m:y": (2, None)}, 10, "a", token)
    assert store.save({"m:x": (3, "later")}, 12, "a", token)
    saved = store.load()
    assert saved.progress == {"m:x": (3, "later"), "m:y": (2, None)}
    assert saved.last_seq == 12


def test_one_holder_at_a_time_and_a_new_token_at_each_acquisition(store):
    first = store.acquire("a", ttl=5)
    assert store.acquire("b", ttl=5) is None  # held
    assert store.renew("a", first, ttl=5)
    store.release("a", first)
    second = store.acquire("b", ttl=5)
    assert second == first + 1
    assert not store.renew("a", first, ttl=5)  # a stale holder cannot renew ...
    assert not store.save({"m:x": (0,)}, 1, "a", first)  # ... nor write (fencing)
    assert store.load().progress == {}


def test_an_expired_lease_is_taken(store):
    first = store.acquire("a", ttl=0.0)
    assert store.acquire("b", ttl=5) == first + 1


def test_an_sqlite_file_survives_the_process_that_wrote_it(tmp_path):
    path = tmp_path / "app.db"
    writer = SqliteStore(path)
    token = writer.acquire("a", ttl=5)
    writer.save({"m:x": (("anchor", 1.0), 2.0)}, 3, "a", token)
    writer.close()
    reader = open_store(f"sqlite:///{path}")
    assert reader.load().progress == {"m:x": (("anchor", 1.0), 2.0)}
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone() == ("wal",)
    reader.close()


def test_a_store_written_by_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "app.db"
    SqliteStore(path).load()
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE aioclock_meta SET value = ? WHERE key = 'schema_version'",
            (SCHEMA_VERSION + 1,),
        )
    with pytest.raises(StoreVersionError, match=f"schema version {SCHEMA_VERSION + 1}, written"):
        SqliteStore(path).load()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("redis://localhost:6379/0", "the Redis store is not available yet"),
        ("mysql://db/app", "store 'mysql://db/app': unknown kind of store; supported:"),
        ("app.db", "store must be a URL ('memory://', 'sqlite:///PATH'), got 'app.db'"),
        ("sqlite://app.db", "an SQLite store is 'sqlite:///PATH'"),
        (42, "store must be a URL string or a Store, got 42"),
    ],
)
def test_a_bad_store_setting_names_the_setting_and_value(value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        AioClock(store=value)


def test_the_store_setting_from_the_environment(tmp_path):
    url = f"sqlite:///{tmp_path}/app.db"
    assert from_environ({"AIOCLOCK_STORE": url}) == {"store": url}
    assert from_environ({"AIOCLOCK_STORE": "none"}) == {"store": None}
    with pytest.raises(ValueError, match="AIOCLOCK_STORE='redis://h': store 'redis://h'"):
        from_environ({"AIOCLOCK_STORE": "redis://h"})
    store = MemoryStore()
    assert AioClock(store=store).store is store


def test_the_run_history_keeps_the_last_runs(store, monkeypatch):
    from aioclock import stores
    from aioclock.stores import Run

    monkeypatch.setattr(stores, "HISTORY_LIMIT", 3)
    if isinstance(store, SqliteStore):
        monkeypatch.setattr("aioclock.stores.sqlite.HISTORY_LIMIT", 3)
    else:
        store = MemoryStore()  # (its bound is taken when made)
    token = store.acquire("a", ttl=5)
    runs = [Run(f"m:{i % 2}", float(i), i + 0.1, i + 0.5, "ok", None) for i in range(5)]
    runs[4] = runs[4]._replace(outcome="failed", error="ValueError: boom")
    assert store.save({}, 0, "a", token, runs=runs[:2])
    assert store.save({}, 0, "a", token, runs=runs[2:])
    assert store.history() == runs[2:]  # oldest first, the last 3
    assert store.history("m:0", limit=1) == [runs[4]]


def test_serving_from_a_newer_store_or_a_path_that_cannot_open_fails_at_once(tmp_path):
    import asyncio

    from aioclock import Every

    path = tmp_path / "app.db"
    SqliteStore(path).load()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE aioclock_meta SET value = 99 WHERE key = 'schema_version'")
    for url, error, message in [
        (f"sqlite:///{path}", StoreVersionError, "schema version 99"),
        (f"sqlite:///{tmp_path}/missing/app.db", sqlite3.OperationalError, "unable to open"),
    ]:
        app = AioClock(store=url)
        app.task(trigger=Every(seconds=1))(noop)
        with pytest.raises(error, match=message):
            asyncio.run(asyncio.wait_for(app.serve(), 10))


async def noop():
    pass
