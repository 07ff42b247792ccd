"""What a task can know of the run it is in, through dependency injection: `current_run`.

    >>> from aioclock import AioClock, CurrentRun, Depends, Every, current_run
    >>> app = AioClock()
    >>> @app.task(trigger=Every(seconds=10))
    ... def write_report(run: CurrentRun = Depends(current_run)) -> None:
    ...     print(run.task, run.due, run.token)

In a cluster (`AioClock(store="redis://...")`), `token` is the fencing token of the claim the
node holds on this fire: it grows with each fire of the task across the cluster, so a task that
writes to another system can hand it over, and that system can refuse a writer whose token is
older than one it has seen. Outside a cluster it is 0.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, NamedTuple, Union

if TYPE_CHECKING:
    from aioclock._protocol import Fire

__all__ = ["CurrentRun", "current_run"]


class CurrentRun(NamedTuple):
    """The run a task is in: its task id, nominal due (for a run-now or a lifecycle task, the
    time it was asked for), its run number in this app, and its fencing token (0 outside a
    cluster)."""

    task: str
    due: Union[float, None]
    seq: int
    token: int


#: The fire of the run being executed (the runner sets it per run: no object is built for a
#: task that does not ask for it).
_current: ContextVar[Union[Fire, None]] = ContextVar("aioclock_current_run", default=None)


def current_run() -> CurrentRun:
    """The run being executed, for `Depends(current_run)`; LookupError outside a run."""
    fire = _current.get()
    if fire is None:
        raise LookupError("current_run() is only known inside a run of a task")
    return CurrentRun(fire.task, fire.due, fire.seq, fire.token)
