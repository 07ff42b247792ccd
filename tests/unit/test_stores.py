"""The stores: what they keep, their lease and fencing token, the schema version, the setting."""

from __future__ import annotations

import doctest
import re
import sqlite3

import pytest

import aioclock.stores
from aioclock import AioClock
from aioclock.settings import from_environ
from aioclock.stores import (
    SCHEMA_VERSION,
    MemoryStore,
    Run,
    Saved,
    StoreVersionError,
    check_store,
    open_store,
)
from aioclock.stores.redis import RedisStore
from aioclock.stores.sqlite import SqliteStore
from tests.redis_server import LOCAL_URL


def test_the_module_examples_hold():
    failed, attempted = doctest.testmod(aioclock.stores)
    assert attempted and not failed


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "memory":
        made = MemoryStore()
    elif request.param == "sqlite":
        made = SqliteStore(tmp_path / "app.db")
    else:
        made = RedisStore(LOCAL_URL, prefix=request.getfixturevalue("redis_prefix"), cluster=False)
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
        ("mysql://db/app", "store 'mysql://db/app': unknown kind of store; supported:"),
        ("app.db", "store must be a URL ('memory://', 'sqlite:///PATH', 'redis://HOST:PORT/DB'"),
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
    assert from_environ({"AIOCLOCK_STORE": "redis://h"}) == {"store": "redis://h"}
    with pytest.raises(ValueError, match="AIOCLOCK_STORE='redis://h:x': store 'redis://h:x'"):
        from_environ({"AIOCLOCK_STORE": "redis://h:x"})
    store = MemoryStore()
    assert AioClock(store=store).store is store


def test_the_run_history_keeps_the_last_runs(store, monkeypatch):
    from aioclock import stores
    from aioclock.stores import Run

    monkeypatch.setattr(stores, "HISTORY_LIMIT", 3)
    if isinstance(store, SqliteStore):
        monkeypatch.setattr("aioclock.stores.sqlite.HISTORY_LIMIT", 3)
    elif isinstance(store, RedisStore):
        monkeypatch.setattr("aioclock.stores.redis.HISTORY_LIMIT", 3)
    else:
        store = MemoryStore()  # (its bound is taken when made)
    token = store.acquire("a", ttl=5)
    runs = [Run(f"m:{i % 2}", float(i), i + 0.1, i + 0.5, "ok", None, "h:1:a", i) for i in range(5)]
    runs[4] = runs[4]._replace(outcome="failed", error="ValueError: boom", worker=None)
    assert store.save({}, 0, "a", token, runs=runs[:2])
    assert store.save({}, 0, "a", token, runs=runs[2:])
    assert store.history() == runs[2:]  # oldest first, the last 3
    assert store.history("m:0", limit=1) == [runs[4]]


def test_serving_from_a_newer_store_or_a_path_that_cannot_open_fails_at_once(tmp_path, unused_port):
    import asyncio

    import redis

    from aioclock import Every

    path = tmp_path / "app.db"
    SqliteStore(path).load()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE aioclock_meta SET value = 99 WHERE key = 'schema_version'")
    for url, error, message in [
        (f"sqlite:///{path}", StoreVersionError, "schema version 99"),
        (f"sqlite:///{tmp_path}/missing/app.db", sqlite3.OperationalError, "unable to open"),
        (f"redis://127.0.0.1:{unused_port}/0", redis.ConnectionError, str(unused_port)),
    ]:
        app = AioClock(store=url)
        app.task(trigger=Every(seconds=1))(noop)
        with pytest.raises(error, match=message):
            asyncio.run(asyncio.wait_for(app.serve(), 10))


async def noop():
    pass


# -- the Redis store (on 127.0.0.1:6379, under a prefix of each test's own) -----------------


def test_a_redis_store_keeps_every_key_under_its_prefix(redis_url, redis_prefix):
    import redis

    store = open_store(redis_url + "&mode=single")
    assert isinstance(store, RedisStore) and store.prefix == redis_prefix
    assert not store.cluster
    token = store.acquire("a", ttl=5)
    assert store.save(
        {"m:x": (1,)}, 4, "a", token, {"m:y": b"def"}, [Run("m:x", 1, 1, 2, "ok", None)]
    )
    store.close()
    client = redis.Redis.from_url(LOCAL_URL)
    keys = {key.decode() for key in client.scan_iter(match=f"{redis_prefix}:*")}
    client.close()
    assert keys == {
        f"{redis_prefix}:{name}"
        for name in ("version", "progress", "added", "last_seq", "runs", "lease", "token")
    }
    again = open_store(
        redis_url + "&mode=single"
    )  # a new connection (another process) reads the same
    assert again.load() == Saved({"m:x": (1,)}, 4, {"m:y": b"def"})
    assert again.acquire("b", ttl=5) is None  # the lease outlives the client that took it
    again.close()


def test_a_closed_redis_store_opens_again_on_its_next_call(redis_prefix):
    store = RedisStore(LOCAL_URL, prefix=redis_prefix, cluster=False)
    token = store.acquire("a", ttl=5)
    store.close()
    assert store.renew("a", token, ttl=5)
    store.close()


def test_a_redis_store_in_use_pickles_without_its_connections(redis_prefix):
    import pickle

    store = RedisStore(LOCAL_URL, prefix=redis_prefix)
    token = store.acquire("a", ttl=5)
    copy = pickle.loads(pickle.dumps(store))
    assert copy.url == store.url and copy.renew("a", token, ttl=5)
    store.close()
    copy.close()


def test_a_redis_lease_expires_by_the_servers_clock(redis_prefix):
    import time

    store = RedisStore(LOCAL_URL, prefix=redis_prefix, cluster=False)
    first = store.acquire("a", ttl=0.05)
    assert store.acquire("b", ttl=5) is None
    time.sleep(0.1)  # (the lease's own length: a few server milliseconds, no wall clock)
    assert store.acquire("b", ttl=5) == first + 1
    assert not store.renew("a", first, ttl=5)
    store.close()


def test_the_redis_history_of_one_task_reads_past_other_tasks_runs(redis_prefix, monkeypatch):
    monkeypatch.setattr("aioclock.stores.redis._HISTORY_CHUNK", 4)  # many steps of the script
    store = RedisStore(LOCAL_URL, prefix=redis_prefix, cluster=False)
    token = store.acquire("a", ttl=5)
    runs = [
        Run("m:rare" if i % 10 == 0 else "m:busy", float(i), i + 0.5, i + 1.0, "ok", None)
        for i in range(50)
    ]
    runs[-10] = runs[-10]._replace(outcome="failed", error="KeyError: 'é\\x00'")
    assert store.save({}, 0, "a", token, runs=runs)
    assert store.history("m:rare", limit=3) == [runs[20], runs[30], runs[40]]
    assert store.history("m:rare", limit=100) == runs[::10]
    assert store.history("m:none") == []
    assert store.history(limit=0) == []
    assert store.history(limit=2) == runs[-2:]
    store.close()


def test_a_redis_store_written_by_a_newer_version_is_refused(redis_prefix):
    import redis

    client = redis.Redis.from_url(LOCAL_URL)
    client.set(f"{redis_prefix}:version", SCHEMA_VERSION + 1)
    client.close()
    store = RedisStore(LOCAL_URL, prefix=redis_prefix, cluster=False)
    with pytest.raises(StoreVersionError, match=f"schema version {SCHEMA_VERSION + 1}, written"):
        store.load()
    with pytest.raises(StoreVersionError):  # (checked again: nothing was opened)
        store.acquire("a", ttl=5)


def test_a_redis_server_that_is_not_there_fails_a_call_at_once(unused_port):
    import time

    import redis

    store = open_store(f"redis://127.0.0.1:{unused_port}/0")
    began = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        store.acquire("a", ttl=5)
    assert time.monotonic() - began < 10  # (a guard against a hang, not a bound)
    store.close()


@pytest.fixture
def unused_port():
    from tests.redis_server import free_port

    return free_port()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("redis://h:x/0", "store 'redis://h:x/0': the port must be an integer from 1 to 65535"),
        ("redis://h:70000", "the port must be an integer from 1 to 65535, got '70000'"),
        ("redis://h:6379/db1", "'redis://h:6379/db1': the database must be an integer >= 0, got"),
        ("redis://:6379/0", "store 'redis://:6379/0': a Redis store is 'redis://[[USER]:PASSWORD@]HOST"),
        ("redis://h/0?db=2", "'redis://h/0?db=2': unknown parameter 'db'; the parameters are"),
        ("redis://h/0?mode=x", "mode must be 'cluster' (every instance serves, each fire runs"),
        ("redis://h/0?prefix=a*", "prefix must be 1 to 100 letters, digits or '_.:-', got 'a*'"),
        ("redis://h/0?prefix=", "prefix must be 1 to 100 letters, digits or '_.:-', got ''"),
        ("rediss://:s3cret@h:x/0", "store 'rediss://:***@h:x/0': the port must be"),
        ("redis://:s3cret@[::1/0", "store 'redis://***@[::1/0': Invalid IPv6 URL"),
        ("redis://h/0#x", "store 'redis://h/0#x': a Redis store URL has no fragment, got 'x'"),
    ],
)  # fmt: skip
def test_a_bad_redis_url_names_the_part_and_its_value(value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        AioClock(store=value)


@pytest.mark.parametrize(
    ("value", "url", "prefix"),
    [
        ("redis://cache", "redis://cache", "aioclock"),
        ("redis://:pw@cache:6380/3?prefix=a.v2", "redis://:***@cache:6380/3?prefix=a.v2", "a.v2"),
        ("rediss://user:pw@[::1]:6379/0", "rediss://user:***@[::1]:6379/0", "aioclock"),
    ],
)  # fmt: skip
def test_a_redis_url_opens_a_store_that_hides_its_password(value, url, prefix):
    store = open_store(value)
    assert isinstance(store, RedisStore)
    assert (store.url, store.prefix) == (url, prefix)
    assert "?" not in store.client_url and ("pw" in store.client_url) == ("pw" in value)


def test_without_redis_py_a_redis_url_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.delitem(sys.modules, "aioclock.stores.redis", raising=False)
    monkeypatch.setitem(sys.modules, "redis", None)  # (import redis fails, as if missing)
    with pytest.raises(ImportError, match=re.escape("pip install 'aioclock[redis]'")):
        open_store("redis://:pw@cache:6379/0")
    assert check_store("redis://cache:6379/0") == "redis://cache:6379/0"  # (checked without it)


def test_a_redis_url_serves_a_cluster_unless_its_mode_is_single(redis_url, redis_prefix):
    store = open_store(redis_url)
    assert isinstance(store, RedisStore) and store.cluster
    # No lease: every node serves (and claims each fire); every node writes its progress.
    assert store.acquire("a", ttl=5) == store.acquire("b", ttl=5) == 1
    assert store.save({"m:x": (1,)}, 4, "b", 1)
    assert store.load().progress == {"m:x": (1,)}
    member = store.cluster_member(workers=2, sticky=["m:x"])
    assert (member.prefix, member.workers, member.sticky) == (redis_prefix, 2, {"m:x"})
    store.close()
    single = open_store(redis_url + "&mode=single")
    assert not single.cluster and single.url.endswith("mode=single")
    with pytest.raises(TypeError, match="does not serve a cluster"):
        single.cluster_member(workers=2, sticky=())
    single.close()


def test_a_version_1_sqlite_store_is_upgraded_and_its_history_kept(tmp_path):
    import sqlite3

    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as db:  # what version 1 wrote
        db.executescript(
            """
            CREATE TABLE aioclock_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
            INSERT INTO aioclock_meta VALUES ('schema_version', 1);
            CREATE TABLE aioclock_runs (id INTEGER PRIMARY KEY AUTOINCREMENT, task TEXT NOT NULL,
                due REAL, start REAL, "end" REAL, outcome TEXT NOT NULL, error TEXT);
            INSERT INTO aioclock_runs (task, due, start, "end", outcome)
                VALUES ('m:x', 1, 1, 2, 'ok');
            """
        )
    db.close()
    store = SqliteStore(path)
    token = store.acquire("a", ttl=5)
    new = Run("m:x", 3.0, 3.0, 4.0, "ok", None, "h:1:a", 2)
    assert store.save({}, 0, "a", token, runs=[new])
    assert store.history() == [Run("m:x", 1.0, 1.0, 2.0, "ok", None), new]
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute(
            "SELECT value FROM aioclock_meta WHERE key = 'schema_version'"
        ).fetchone() == (SCHEMA_VERSION,)
    db.close()


def test_a_version_1_redis_store_is_upgraded_and_its_history_kept(redis_prefix):
    import redis

    client = redis.Redis.from_url(LOCAL_URL)
    client.set(f"{redis_prefix}:version", 1)
    client.rpush(f"{redis_prefix}:runs", b'm:x\0[1.0, 1.0, 2.0, "ok", null]')  # version 1's
    store = RedisStore(LOCAL_URL, prefix=redis_prefix, cluster=False)
    token = store.acquire("a", ttl=5)
    new = Run("m:x", 3.0, 3.0, 4.0, "failed", "E: x", "h:1:a", None)
    assert store.save({}, 0, "a", token, runs=[new])
    assert store.history("m:x") == [Run("m:x", 1.0, 1.0, 2.0, "ok", None), new]
    assert int(client.get(f"{redis_prefix}:version")) == SCHEMA_VERSION
    store.close()
    client.close()
