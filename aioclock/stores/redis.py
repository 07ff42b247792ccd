"""The Redis store: the same things as the SQLite store, kept in a Redis server (redis-py).

It uses redis-py's synchronous client on purpose: every method of a `Store` is called from the
store's own thread (`aioclock.stores.keeper.StoreKeeper`), never on the event loop, so a blocking
call with a short socket timeout is the simplest correct thing there; the keeper retries what
fails. A dead server fails a call at once (connection refused), one that does not answer (paused,
or cut off) within `TIMEOUT`, and nothing is retried inside redis-py.

Keys, all under `PREFIX:` (`aioclock` unless told; `?prefix=NAME` in the URL):

- `PREFIX:version`: the schema version (an integer);
- `PREFIX:progress`: a hash, task id -> its pickled `TaskProgress` fields;
- `PREFIX:added`: a hash, task id -> the pickled definition of a task added while serving;
- `PREFIX:last_seq`: the last run number (an integer, only raised);
- `PREFIX:runs`: a list, the run history, oldest first, trimmed to the last HISTORY_LIMIT
  (each entry `task NUL json([due, start, end, outcome, error])`);
- `PREFIX:lease`: `"TOKEN:OWNER"` of the holder, expiring by Redis's own clock (`PX`), so no
  client's wall clock decides who holds it;
- `PREFIX:token`: the last fencing token given (`INCR`, never expires).

A save and the check that its writer still holds the lease (owner and token) run as one Lua
script, so a writer that lost its lease never overwrites the progress of the one that took it.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from aioclock.stores import (
    HISTORY_LIMIT,
    SCHEMA_VERSION,
    Run,
    Saved,
    Store,
    StoreVersionError,
    _without_password,
)

if TYPE_CHECKING:
    from aioclock.stores.cluster import ClusterMember

__all__ = ["TIMEOUT", "RedisStore"]

#: Seconds to connect, and to wait for an answer, before a call fails. Short: the keeper
#: renews the lease every 0.5 s and gives up 1.2 s after its last renewal (1.5 s before the lease
#: ends), and it only looks at the time between two calls; with 0.25 s, a server that stopped
#: answering is noticed ~1.25 s after the last renewal, before the lease can pass to another.
TIMEOUT = 0.25

#: How many history entries the history script reads per step (from the newest).
_HISTORY_CHUNK = 500

_ACQUIRE = """
local held = redis.call('GET', KEYS[1])
if held then
    local colon = string.find(held, ':', 1, true)
    if string.sub(held, colon + 1) ~= ARGV[1] then
        return false
    end
end
redis.call('SET', KEYS[3], ARGV[3], 'NX')  -- (a server that restarted empty)
local token = redis.call('INCR', KEYS[2])
local ttl = tonumber(ARGV[2])
if ttl > 0 then
    redis.call('SET', KEYS[1], token .. ':' .. ARGV[1], 'PX', ttl)
else
    redis.call('DEL', KEYS[1])
end
return token
"""

_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
    redis.call('PEXPIRE', KEYS[1], ttl)
else
    redis.call('DEL', KEYS[1])
end
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: lease, progress, last_seq, added, runs
# ARGV: holder, last_seq, history limit, #progress, #added, #removed, #runs, then the
# progress pairs, the added pairs, the removed ids, the runs.
_SAVE = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
local last_seq = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local i = 8
for _ = 1, tonumber(ARGV[4]) do
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    i = i + 2
end
for _ = 1, tonumber(ARGV[5]) do
    redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
    i = i + 2
end
for _ = 1, tonumber(ARGV[6]) do
    redis.call('HDEL', KEYS[4], ARGV[i])
    i = i + 1
end
local runs = tonumber(ARGV[7])
if runs > 0 then
    for _ = 1, runs do
        redis.call('RPUSH', KEYS[5], ARGV[i])
        i = i + 1
    end
    redis.call('LTRIM', KEYS[5], -limit, -1)
end
if last_seq > tonumber(redis.call('GET', KEYS[3]) or '0') then
    redis.call('SET', KEYS[3], ARGV[2])
end
return 1
"""

# KEYS: runs; ARGV: the prefix of a task's entries (task NUL), limit, chunk.
# The last `limit` entries of the task, newest first, read from the end in chunks.
_HISTORY = """
local prefix, limit, chunk = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local size = #prefix
local found = {}
local stop = -1
local length = redis.call('LLEN', KEYS[1])
while #found < limit and -stop <= length do
    local entries = redis.call('LRANGE', KEYS[1], stop - chunk + 1, stop)
    for j = #entries, 1, -1 do
        if string.sub(entries[j], 1, size) == prefix then
            found[#found + 1] = entries[j]
            if #found >= limit then
                break
            end
        end
    end
    stop = stop - chunk
end
return found
"""


def _encode(run: Run) -> bytes:
    fields = json.dumps([*run[1:]])  # due, start, end, outcome, error, node, worker
    return run.task.encode() + b"\0" + fields.encode()


def _decode(entry: bytes) -> Run:
    task, _, fields = entry.partition(b"\0")
    return Run(task.decode(), *json.loads(fields))  # (5 fields if written by version 1)


def _ms(ttl: float) -> int:
    return max(0, round(ttl * 1000))


class RedisStore(Store):
    """A store in the Redis server at `url` (`redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`, or
    `rediss://` for TLS), every key under `prefix + ":"`; `options` go to redis-py's
    `Redis.from_url` (TLS certificates, a client name, other timeouts).

    The connection pool is made on first use and closed by `close` (a later call opens it
    again), so one object serves several `serve()` in turn, as `MemoryStore` does.

    `cluster` (the URL's `?mode=cluster`, the default): every instance that serves the same
    app on this store and prefix serves with the others, and each fire runs on one of them
    (`aioclock.stores.cluster`); there is no lease. `cluster=False` (`?mode=single`): one
    instance at a time holds the lease and serves; the others stand by, as on SQLite.
    """

    def __init__(
        self, url: str, prefix: str = "aioclock", *, cluster: bool = True, **options: Any
    ) -> None:
        self.client_url = url
        self.prefix = prefix
        self.cluster = cluster
        self._given_options = options  # (the cluster's member connects with them too)
        query = "&".join(
            ([] if prefix == "aioclock" else [f"prefix={prefix}"])
            + ([] if cluster else ["mode=single"])
        )
        self.url = _without_password(url) + (f"?{query}" if query else "")
        self._options: dict[str, Any] = {
            "socket_connect_timeout": TIMEOUT,
            "socket_timeout": TIMEOUT,
            "retry": Retry(NoBackoff(), 0),  # the keeper retries; redis-py must not wait
            **options,
        }
        self._version = f"{prefix}:version"
        self._progress = f"{prefix}:progress"
        self._added = f"{prefix}:added"
        self._last_seq = f"{prefix}:last_seq"
        self._runs = f"{prefix}:runs"
        self._lease = f"{prefix}:lease"
        self._token = f"{prefix}:token"
        self._client: redis.Redis | None = None
        self._scripts: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r})"

    def __getstate__(self) -> dict[str, Any]:
        """Without its connections (an app, and its store, may be pickled for a worker)."""
        state = self.__dict__.copy()
        state["_client"], state["_scripts"] = None, {}
        return state

    def _redis(self) -> redis.Redis:
        """The client, the schema version checked (and written, for a new store) once."""
        if self._client is None:
            client = redis.Redis.from_url(self.client_url, **self._options)
            try:
                client.set(self._version, SCHEMA_VERSION, nx=True)
                found = int(cast(bytes, client.get(self._version)) or SCHEMA_VERSION)
                if found > SCHEMA_VERSION:
                    raise StoreVersionError(self.url, found)
                if found < SCHEMA_VERSION:  # 1: its history entries are read as they are
                    client.set(self._version, SCHEMA_VERSION)
            except BaseException:
                client.close()
                raise
            self._scripts = {
                name: client.register_script(text)
                for name, text in [
                    ("acquire", _ACQUIRE),
                    ("renew", _RENEW),
                    ("release", _RELEASE),
                    ("save", _SAVE),
                    ("history", _HISTORY),
                ]
            }
            self._client = client
        return self._client

    def _holder(self, owner: str, token: int) -> str:
        return "" if self.cluster else f"{token}:{owner}"  # (a cluster has no lease)

    def load(self) -> Saved:
        pipe = self._redis().pipeline(transaction=True)
        pipe.hgetall(self._progress)
        pipe.get(self._last_seq)
        pipe.hgetall(self._added)
        progress, last_seq, added = pipe.execute()
        return Saved(
            {task.decode(): tuple(pickle.loads(data)) for task, data in progress.items()},
            int(last_seq or 0),
            {task.decode(): definition for task, definition in added.items()},
        )

    def save(
        self,
        progress: Mapping[str, tuple[Any, ...]],
        last_seq: int,
        owner: str,
        token: int,
        added: Mapping[str, bytes | None] | None = None,
        runs: Sequence[Run] = (),
    ) -> bool:
        client = self._redis()
        kept = [(task, d) for task, d in (added or {}).items() if d is not None]
        removed = [task for task, d in (added or {}).items() if d is None]
        args: list[Any] = [
            self._holder(owner, token),
            last_seq,
            HISTORY_LIMIT,
            len(progress),
            len(kept),
            len(removed),
            len(runs),
        ]
        for task, fields in progress.items():
            args += (task, pickle.dumps(fields, protocol=5))
        for task, definition in kept:
            args += (task, definition)
        args += removed
        args += [_encode(run) for run in runs]
        keys = [self._lease, self._progress, self._last_seq, self._added, self._runs]
        return bool(self._scripts["save"](keys, args, client))

    def history(self, task: str | None = None, limit: int = 100) -> list[Run]:
        if limit <= 0:
            return []
        client = self._redis()
        if task is None:
            entries = cast(list[bytes], client.lrange(self._runs, -limit, -1))
        else:
            prefix = task.encode() + b"\0"
            newest = self._scripts["history"]([self._runs], [prefix, limit, _HISTORY_CHUNK], client)
            entries = list(reversed(newest))
        return [_decode(entry) for entry in entries]

    def acquire(self, owner: str, ttl: float) -> int | None:
        client = self._redis()
        if self.cluster:  # every node serves: the fires are claimed one by one instead
            return 1
        keys = [self._lease, self._token, self._version]
        token = self._scripts["acquire"](keys, [owner, _ms(ttl), SCHEMA_VERSION], client)
        return None if token is None else int(token)

    def renew(self, owner: str, token: int, ttl: float) -> bool:
        if self.cluster:
            return True
        client = self._redis()
        holder = self._holder(owner, token)
        return bool(self._scripts["renew"]([self._lease], [holder, _ms(ttl)], client))

    def release(self, owner: str, token: int) -> None:
        if self.cluster:
            return
        client = self._redis()
        self._scripts["release"]([self._lease], [self._holder(owner, token)], client)

    def cluster_member(
        self,
        workers: int,
        sticky: Iterable[str],
        cpu_bound: Iterable[str] = (),
        node: str | None = None,
        tasks: Iterable[str] | None = None,
    ) -> ClusterMember:
        if not self.cluster:
            return super().cluster_member(workers, sticky, cpu_bound, node, tasks)
        from aioclock.stores.cluster import ClusterMember

        return ClusterMember(
            self.client_url,
            self.prefix,
            workers=workers,
            sticky=sticky,
            cpu_bound=cpu_bound,
            node=node,
            options=self._given_options,
            tasks=tasks,
        )

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
            client.connection_pool.disconnect()
