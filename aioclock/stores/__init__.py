"""Stores: what outlives the process, behind one small interface.

A store keeps each task's progress (where its schedule is, its armed due, pause state, loop
count, counters), the last run number, and a lease that lets one instance at a time serve the
schedule it keeps. `MemoryStore` keeps them in this process (today's behaviour; an app without a
store keeps nothing at all); `SqliteStore` in one SQLite file; `RedisStore` in a Redis server.
Every method is synchronous and is called from one background thread
(`aioclock.stores.keeper.StoreKeeper`): never on the path from a deadline to its fire.

    >>> store = open_store("memory://")
    >>> store.acquire("me", ttl=1.5)
    1
    >>> store.save({"mod:tick": ("progress",)}, last_seq=7, owner="me", token=1)
    True
    >>> store.load().last_seq
    7
    >>> open_store("redis://localhost:6379/0?prefix=myapp")
    RedisStore('redis://localhost:6379/0?prefix=myapp')
"""

from __future__ import annotations

import abc
import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from aioclock.exceptions import BaseAioClockException

if TYPE_CHECKING:
    from aioclock.stores.cluster import ClusterMember

__all__ = [
    "SCHEMA_VERSION",
    "LeaseLostError",
    "MemoryStore",
    "Run",
    "Saved",
    "Store",
    "StoreVersionError",
    "check_store",
    "open_store",
]

#: The layout this version writes; a store written with a higher one is refused.
SCHEMA_VERSION = 2  # 2: the run history names each run's node and worker

SUPPORTED = "'memory://', 'sqlite:///PATH', 'redis://HOST:PORT/DB'"

#: The characters of a Redis key prefix (`?prefix=NAME`): no spaces, braces or glob patterns.
_PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,100}")


class StoreVersionError(BaseAioClockException, RuntimeError):
    """The store was written by a newer version of aioclock: this one cannot read it."""

    def __init__(self, where: str, found: int) -> None:
        super().__init__(
            f"store {where!r} has schema version {found}, written by a newer aioclock; "
            f"this one reads up to version {SCHEMA_VERSION}: upgrade aioclock, or use another store"
        )
        self.found = found


#: How many ended runs a store keeps (the oldest go first).
HISTORY_LIMIT = 10_000


class Run(NamedTuple):
    """One ended run, as the run history keeps it (times are POSIX seconds)."""

    task: str
    due: float | None  # its nominal due time (None for a run-now)
    start: float | None
    end: float | None
    outcome: str  # "ok", "failed", "timeout", "crashed", "cancelled"
    error: str | None
    node: str | None = None  # the instance that ran it (host:pid:id); None if written by 1.0
    worker: int | None = None  # the index of its worker process (None in process)


@dataclass
class Saved:
    """What a store kept: progress per task (`TaskProgress` fields), the last run number, and
    the tasks added while an instance served (task id -> its pickled definition: reference,
    trigger, timeout, policy; see `aioclock.app.AioClock.add_task`)."""

    progress: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    last_seq: int = 0
    added: dict[str, bytes] = field(default_factory=dict)


class Store(abc.ABC):
    """The interface of a store; every method is called from one thread, never the loop's."""

    url: str = ""
    #: A store that serves a cluster: every node writes, none holds a lease (`acquire` and
    #: `renew` always succeed), and the fires are claimed through `cluster_member`.
    cluster: bool = False

    @abc.abstractmethod
    def load(self) -> Saved:
        """What was saved (an empty `Saved` for a new store)."""

    @abc.abstractmethod
    def save(
        self,
        progress: Mapping[str, tuple[Any, ...]],
        last_seq: int,
        owner: str,
        token: int,
        added: Mapping[str, bytes | None] | None = None,
        runs: Sequence[Run] = (),
    ) -> bool:
        """Merge `progress` (per task), `last_seq` and `added` (a task's definition, None to
        forget it) in, and append `runs` to the run history (the last HISTORY_LIMIT kept), if
        `owner` still holds the lease with fencing `token`; False (and nothing written) if it
        does not."""

    @abc.abstractmethod
    def history(self, task: str | None = None, limit: int = 100) -> list[Run]:
        """The last `limit` runs that ended (of `task`, or of every task), oldest first."""

    @abc.abstractmethod
    def acquire(self, owner: str, ttl: float) -> int | None:
        """Take the lease for `ttl` seconds if it is free or expired: the new fencing token
        (one more than the last one given), else None."""

    @abc.abstractmethod
    def renew(self, owner: str, token: int, ttl: float) -> bool:
        """Extend the lease by `ttl` seconds from now; False if it is no longer ours."""

    @abc.abstractmethod
    def release(self, owner: str, token: int) -> None:
        """Let the lease go (a standby takes it at once)."""

    def close(self) -> None:  # noqa: B027  # (nothing to close by default)
        """Free what the store holds (a connection)."""

    def cluster_member(
        self,
        workers: int,
        sticky: Iterable[str],
        cpu_bound: Iterable[str] = (),
        node: str | None = None,
        tasks: Iterable[str] | None = None,
    ) -> ClusterMember:
        """This node's member of the cluster the store serves (a `cluster` store only; see
        `aioclock.stores.cluster.ClusterMember` for the arguments)."""
        raise TypeError(f"store {self.url!r} does not serve a cluster")


class MemoryStore(Store):
    """A store in this process's memory: an app that serves again with the same object goes
    on where it stopped (what `SqliteStore` gives across processes)."""

    url = "memory://"

    def __init__(self) -> None:
        self._saved = Saved()
        self._runs: deque[Run] = deque(maxlen=HISTORY_LIMIT)
        self._lease: tuple[str, float, int] | None = None  # owner, expiry (monotonic), token
        self._token = 0

    def load(self) -> Saved:
        saved = self._saved
        return Saved(dict(saved.progress), saved.last_seq, dict(saved.added))

    def save(
        self,
        progress: Mapping[str, tuple[Any, ...]],
        last_seq: int,
        owner: str,
        token: int,
        added: Mapping[str, bytes | None] | None = None,
        runs: Sequence[Run] = (),
    ) -> bool:
        if not self._holds(owner, token):
            return False
        self._runs.extend(runs)
        saved = self._saved
        saved.progress.update(progress)
        saved.last_seq = max(saved.last_seq, last_seq)
        for task_id, definition in (added or {}).items():
            if definition is None:
                saved.added.pop(task_id, None)
            else:
                saved.added[task_id] = definition
        return True

    def history(self, task: str | None = None, limit: int = 100) -> list[Run]:
        runs = [run for run in self._runs if task is None or run.task == task]
        return runs[-limit:] if limit > 0 else []

    def acquire(self, owner: str, ttl: float) -> int | None:
        import time

        lease = self._lease
        now = time.monotonic()
        if lease is not None and lease[0] != owner and lease[1] > now:
            return None
        self._token += 1
        self._lease = (owner, now + ttl, self._token)
        return self._token

    def renew(self, owner: str, token: int, ttl: float) -> bool:
        import time

        if not self._holds(owner, token):
            return False
        self._lease = (owner, time.monotonic() + ttl, token)
        return True

    def release(self, owner: str, token: int) -> None:
        if self._holds(owner, token):
            self._lease = None

    def _holds(self, owner: str, token: int) -> bool:
        lease = self._lease
        return lease is not None and lease[0] == owner and lease[2] == token


def check_store(value: Any) -> str | Store | None:
    """The valid `store` setting: None, a `Store`, or a URL of a supported kind.

    >>> check_store("sqlite:///tmp/app.db")
    'sqlite:///tmp/app.db'
    >>> check_store("redis://:secret@cache:6379/2?prefix=billing")
    'redis://:secret@cache:6379/2?prefix=billing'
    >>> check_store("redis://cache:6379/x")
    Traceback (most recent call last):
    ValueError: store 'redis://cache:6379/x': the database must be an integer >= 0, got 'x'
    >>> check_store("postgres://db/app")
    Traceback (most recent call last):
    ValueError: store 'postgres://db/app': unknown kind of store; supported: 'memory://', \
'sqlite:///PATH', 'redis://HOST:PORT/DB'
    """
    if value is None or isinstance(value, Store):
        return value
    if not isinstance(value, str):
        raise ValueError(f"store must be a URL string or a Store, got {value!r}")
    url = value.strip()
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"store must be a URL ({SUPPORTED}), got {value!r}")
    if scheme == "redis" or scheme == "rediss":
        _redis_parts(value, url)
        return url
    if scheme == "memory":
        return url
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise ValueError(
                f"store {value!r}: an SQLite store is 'sqlite:///PATH' (three slashes, then "
                "the file's path: 'sqlite:////var/lib/app.db' for an absolute one)"
            )
        return url
    raise ValueError(f"store {value!r}: unknown kind of store; supported: {SUPPORTED}")


def open_store(value: str | Store) -> Store:
    """The store a `store` setting names (a `Store` is used as it is): a `MemoryStore`, a
    `SqliteStore` or a `RedisStore` (its module imported only then: it needs redis-py)."""
    checked = check_store(value)
    if isinstance(checked, Store):
        return checked
    assert checked is not None
    scheme, _, rest = checked.partition("://")
    if scheme == "memory":
        return MemoryStore()
    if scheme == "sqlite":
        from aioclock.stores.sqlite import SqliteStore

        return SqliteStore(rest[1:])
    client_url, prefix, cluster = _redis_parts(checked, checked)
    try:
        from aioclock.stores.redis import RedisStore
    except ImportError as error:
        if (error.name or "").partition(".")[0] != "redis":
            raise
        raise ImportError(
            f"store {_without_password(checked)!r}: the Redis store needs redis-py: "
            "pip install 'aioclock[redis]'"
        ) from None
    return RedisStore(client_url, prefix, cluster=cluster)


def _redis_parts(value: Any, url: str) -> tuple[str, str, bool]:
    """(the URL for redis-py, the key prefix, whether it serves a cluster) of a valid Redis
    store URL; ValueError naming the part that is wrong."""
    where = f"store {_without_password(str(value))!r}"
    try:
        parts = urlsplit(url)
    except ValueError as error:  # an unclosed '[' of an IPv6 address
        raise ValueError(f"{where}: {error}") from None
    host = parts.netloc.rpartition("@")[2]
    name, port = host, ""
    if host.startswith("["):  # an IPv6 address: [::1]:6379
        name, _, after = host.partition("]")
        port = after[1:] if after.startswith(":") else ""
    elif ":" in host:
        name, _, port = host.rpartition(":")
    if not name.strip("["):
        raise ValueError(
            f"{where}: a Redis store is 'redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]' "
            "(or 'rediss://' for TLS): the host is missing"
        )
    if ":" in host and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"{where}: the port must be an integer from 1 to 65535, got {port!r}")
    db = parts.path[1:]
    if db and not db.isdigit():
        raise ValueError(f"{where}: the database must be an integer >= 0, got {db!r}")
    prefix = "aioclock"
    cluster = True
    for key, text in parse_qsl(parts.query, keep_blank_values=True):
        if key == "mode":
            if text not in _MODES:
                raise ValueError(
                    f"{where}: mode must be 'cluster' (every instance serves, each fire runs "
                    f"once) or 'single' (one instance at a time, the others stand by), "
                    f"got {text!r}"
                )
            cluster = text == "cluster"
            continue
        if key != "prefix":
            raise ValueError(
                f"{where}: unknown parameter {key!r}; the parameters are 'prefix' and 'mode'"
            )
        if not _PREFIX.fullmatch(text):
            raise ValueError(
                f"{where}: prefix must be 1 to 100 letters, digits or '_.:-', got {text!r}"
            )
        prefix = text
    if parts.fragment:
        raise ValueError(f"{where}: a Redis store URL has no fragment, got {parts.fragment!r}")
    return urlunsplit(parts._replace(query="")), prefix, cluster


_MODES = ("cluster", "single")


def _without_password(url: str) -> str:
    """`url` with its password, if any, shown as '***' (for messages and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:  # (not a URL that parses: hide all that comes before a '@')
        scheme, sep, rest = url.partition("://")
        return f"{scheme}{sep}***@{rest.rpartition('@')[2]}" if "@" in rest else url
    user, at, host = parts.netloc.rpartition("@")
    if not at or ":" not in user:
        return url
    return urlunsplit(parts._replace(netloc=f"{user.partition(':')[0]}:***@{host}"))


class LeaseLostError(BaseAioClockException, RuntimeError):
    """This instance could not renew its lease of the store in time: another may serve the
    schedule now, so this one stopped firing."""
