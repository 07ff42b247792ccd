"""The app's settings: one validated object behind `AioClock(...)`, the command line and the
`AIOCLOCK_*` environment variables.

Each setting is validated once, here, with a message that names it and the value. The command
line has one option per setting (`workers` is `--workers`, and `AIOCLOCK_WORKERS` when the
option is not given), parsed from text by `OPTIONS`: adding a field adds the option.

>>> Settings(workers=2).workers
2
>>> Settings(workers=-1)
Traceback (most recent call last):
ValueError: workers must be an integer >= 0, got -1
>>> base = Settings(workers=4)
>>> base.layered(environ={"AIOCLOCK_WORKERS": "2", "AIOCLOCK_SHUTDOWN_TIMEOUT": "3"},
...              given={"workers": 1})
Settings(workers=1, start_method='forkserver', shutdown_timeout=3.0, sync_task_priority='idle', \
scheduling_cpus=None, loop_stall_timeout=10.0, metrics_address=None, store=None)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from aioclock.group import check_int

if TYPE_CHECKING:
    from aioclock.app import AioClock

__all__ = ["ENV_PREFIX", "OPTIONS", "Option", "Settings", "StartMethod", "SyncTaskPriority"]

StartMethod = Literal["spawn", "forkserver", "fork"]
SyncTaskPriority = Literal["idle", "low", "normal"]

#: `AIOCLOCK_WORKERS` is the fallback of `--workers`, and so on for every setting.
ENV_PREFIX = "AIOCLOCK_"


def _workers(value: Any) -> int:
    return check_int("workers", value, 0)


def _start_method(value: Any) -> StartMethod:
    if value not in ("spawn", "forkserver", "fork"):
        raise ValueError(f"start_method must be 'spawn', 'forkserver' or 'fork', got {value!r}")
    return value  # type: ignore[no-any-return]  # one of the three


def _shutdown_timeout(value: Any) -> float:
    if not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"shutdown_timeout must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


def _loop_stall_timeout(value: Any) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValueError(
            f"loop_stall_timeout must be a finite number of seconds > 0, or None, got {value!r}"
        )
    return float(value)


def _sync_task_priority(value: Any) -> SyncTaskPriority:
    if value not in ("idle", "low", "normal"):
        raise ValueError(f"sync_task_priority must be 'idle', 'low' or 'normal', got {value!r}")
    return value  # type: ignore[no-any-return]  # one of the three


def _scheduling_cpus(value: Any) -> int | None:
    return None if value is None else check_int("scheduling_cpus", value, 0)


def split_address(address: str) -> tuple[str, int]:
    """("host", port) of "HOST:PORT" ("[::1]:9100" for IPv6; an empty host: every interface).

    >>> split_address("127.0.0.1:9100")
    ('127.0.0.1', 9100)
    >>> split_address("9100")
    Traceback (most recent call last):
    ValueError: metrics_address must be 'HOST:PORT' with a port from 0 to 65535, got '9100'
    """
    host, colon, port = address.rpartition(":")
    problem = f"metrics_address must be 'HOST:PORT' with a port from 0 to 65535, got {address!r}"
    if not colon or not port.isdigit() or int(port) > 65535:
        raise ValueError(problem)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _metrics_address(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"metrics_address must be a 'HOST:PORT' string, got {value!r}")
    split_address(value.strip())
    return value.strip()


def _store(value: Any) -> Any:
    from aioclock.stores import check_store

    return check_store(value)


@dataclass(frozen=True)
class Settings:
    """How an app runs (see `AioClock` for what each setting does); validated when built."""

    workers: int = 0
    start_method: StartMethod = "forkserver"
    shutdown_timeout: float = 10.0
    sync_task_priority: SyncTaskPriority = "idle"
    scheduling_cpus: int | None = None
    loop_stall_timeout: float | None = 10.0
    metrics_address: str | None = None
    store: Any = None  # a URL (str), a `Store`, or None

    def __post_init__(self) -> None:
        for option in OPTIONS:
            object.__setattr__(self, option.name, option.check(getattr(self, option.name)))

    @classmethod
    def of(cls, app: AioClock) -> Settings:
        """The settings `app` runs with now."""
        return cls(**{option.name: getattr(app, option.name) for option in OPTIONS})

    def apply(self, app: AioClock) -> None:
        """Make `app` run with these settings (before it serves)."""
        for option in OPTIONS:
            setattr(app, option.name, getattr(self, option.name))

    def layered(
        self, environ: Mapping[str, str], given: Mapping[str, Any] | None = None
    ) -> Settings:
        """These settings, under the `AIOCLOCK_*` variables of `environ`, under `given` (the
        command line's options, already parsed): option > variable > these."""
        return dataclasses.replace(self, **{**from_environ(environ), **(given or {})})


def from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings that `AIOCLOCK_*` variables set (an empty variable counts as unset).

    Raises ValueError naming the variable and its value.
    """
    found: dict[str, Any] = {}
    for option in OPTIONS:
        text = environ.get(option.env_var, "")
        if not text.strip():
            continue
        try:
            found[option.name] = option.parse(text)
        except ValueError as error:
            raise ValueError(f"{option.env_var}={text!r}: {error}") from None
    return found


def _integer(name: str, minimum: int) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {text!r}") from None

    return parse


def _seconds(name: str, rule: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if "or None" in rule and text.strip().lower() == "none":
            return None
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{name} must be {rule}, got {text!r}") from None

    return parse


def _cpus(text: str) -> Any:
    return None if text.strip().lower() == "none" else _integer("scheduling_cpus", 0)(text)


def _word(text: str) -> Any:
    return text.strip()


def _address(text: str) -> Any:
    return None if text.strip().lower() == "none" else text.strip()


@dataclass(frozen=True)
class Option:
    """One setting as the command line and the environment give it: text to a valid value."""

    name: str
    check: Callable[[Any], Any]  # a value of any source to the valid value, or ValueError
    from_text: Callable[[str], Any]  # text to a value for `check`, or ValueError
    metavar: str
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def parse(self, text: str) -> Any:
        """The valid value that `text` (an option's or a variable's) stands for."""
        return self.check(self.from_text(text))


OPTIONS: tuple[Option, ...] = (
    Option(
        "workers",
        _workers,
        _integer("workers", 0),
        "N",
        "worker processes that run the tasks; 0 runs everything in this process's event loop",
    ),
    Option(
        "start_method",
        _start_method,
        _word,
        "{spawn,forkserver,fork}",
        "how worker processes start",
    ),
    Option(
        "shutdown_timeout",
        _shutdown_timeout,
        _seconds("shutdown_timeout", "a finite number of seconds >= 0"),
        "S",
        "seconds a stop waits for running tasks (and for each shut-down task) before "
        "cancelling them",
    ),
    Option(
        "sync_task_priority",
        _sync_task_priority,
        _word,
        "{idle,low,normal}",
        "CPU priority of the threads that run sync tasks in workers (Linux)",
    ),
    Option(
        "scheduling_cpus",
        _scheduling_cpus,
        _cpus,
        "K",
        "CPUs kept for the dispatcher and the workers' event loops (Linux); 0: no affinity; "
        "'none': chosen from sync_task_priority",
    ),
    Option(
        "loop_stall_timeout",
        _loop_stall_timeout,
        _seconds("loop_stall_timeout", "a finite number of seconds > 0, or None"),
        "S",
        "a worker whose event loop has not turned for S seconds is replaced, and the stack "
        "that held it logged; 'none': never",
    ),
    Option(
        "metrics_address",
        _metrics_address,
        _address,
        "HOST:PORT",
        "serve Prometheus metrics over HTTP there (needs aioclock[prometheus]); 'none': off",
    ),
    Option(
        "store",
        _store,
        _address,
        "URL",
        "keep the schedule's state across restarts, one instance at a time: "
        "'sqlite:///PATH', 'redis://HOST:PORT/DB[?prefix=NAME]' or 'memory://'; "
        "'none': keep nothing",
    ),
)
