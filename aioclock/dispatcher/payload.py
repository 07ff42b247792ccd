"""What the dispatcher process is started with: the only thing its launcher and it share."""

from __future__ import annotations

import gc
import pickle
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aioclock._child import CpuPlan
from aioclock._logs import ChildLogging
from aioclock._policy import Rules
from aioclock.dispatcher.claims import ClusterPlan
from aioclock.dispatcher.engine import ScheduledTask
from aioclock.triggers import BaseTrigger

if TYPE_CHECKING:
    from aioclock._policy import Policy
    from aioclock._task import Task

#: The dispatcher's process name, in log records and process listings.
DISPATCHER_NAME = "aioclock-dispatcher"


@dataclass(frozen=True)
class DispatcherPayload:
    """What the dispatcher process reads from stdin: descriptors are inherited by number."""

    sys_path: list[str]
    main_path: str | None
    logs: ChildLogging  # its sink is sent as a descriptor number, inherited
    control_fd: int
    links: list[tuple[int, int, int]]  # (worker index, fire write fd, done read fd)
    sync_tasks: frozenset[str]  # with `schedule` None, found where the schedule is
    cpus: CpuPlan  # it runs on `cpus.scheduling`, with the workers' event loops
    # `pack_schedule`, unpacked once sys.path is in place; a dispatcher forked from the worker
    # template is given None, and builds the schedule itself from the tasks of the app it
    # inherited (`schedule_of_tasks`): nothing to pickle, nothing to unpickle.
    schedule: bytes | list[ScheduledTask] | None
    # Pickled `Resume`: where a dispatcher that died left the schedule; None at the start.
    resume: bytes | None = None
    # In a cluster: how this node's schedule joins it (it runs only the fires it claims).
    cluster: ClusterPlan | None = None


#: The module of the trigger classes whose equal instances are sent once (see `pack_schedule`).
_OWN_TRIGGERS = BaseTrigger.__module__


def pack_tasks(
    tasks: Mapping[str, Task],
    paused: Collection[str] = frozenset(),
    defaults: Policy | None = None,
) -> bytes:
    """`pack_schedule(schedule_of(tasks, paused, defaults))`, without building the
    `ScheduledTask`s."""
    rows = ((n, t.trigger, t.policy.over(defaults).rules(), n in paused) for n, t in tasks.items())
    return _pack((n, trigger, rules.limit, paused, rules) for n, trigger, rules, paused in rows)


def schedule_of_tasks(
    tasks: Mapping[str, Task],
    paused: Collection[str] = frozenset(),
    defaults: Policy | None = None,
) -> list[ScheduledTask]:
    """`engine.schedule_of(tasks, paused, defaults)`, with equal policies resolved once and their
    rules shared (100,000 tasks declared alike hold one `Rules`, not 100,000)."""
    resolved: dict[Policy, Rules] = {}
    by_identity: dict[int, Rules] = {}  # tasks declared alike share one `Policy` object
    schedule = []
    collecting = gc.isenabled()
    gc.disable()  # a collection would walk the whole app for each batch of rows made here
    try:
        for name, task in tasks.items():
            policy = task.policy
            rules = by_identity.get(id(policy))
            if rules is None:
                rules = resolved.get(policy)
                if rules is None:
                    rules = resolved[policy] = policy.over(defaults).rules()
                by_identity[id(policy)] = rules
            schedule.append(ScheduledTask(name, task.trigger, rules.limit, name in paused, rules))
        return schedule
    finally:
        if collecting:
            gc.enable()


def pack_schedule(schedule: Iterable[ScheduledTask]) -> bytes:
    """The schedule as the dispatcher receives it, one row per task.

    Trigger objects are immutable declarations, and the engine keeps each task's schedule state
    apart from them: equal triggers of aioclock's own classes are sent as one object, which the
    tasks then share (100,000 `Every(hours=1)` cost one trigger to pickle and to rebuild, not
    100,000; unpickling a pydantic model costs ~10 us). A trigger of another class (it may keep
    state, in `should_trigger` say) or with a field that cannot be hashed is sent as it is.
    """
    return _pack((s.task_id, s.trigger, s.max_instances, s.paused, s.rules) for s in schedule)


def _pack(rows: Iterable[tuple[str, BaseTrigger[Any], int, bool, Rules]]) -> bytes:
    shared: dict[Hashable, BaseTrigger[Any]] = {}
    shared_rules: dict[Rules, Rules] = {}
    packed = []
    collecting = gc.isenabled()
    gc.disable()  # a collection would walk the whole app for each batch of rows made here
    try:
        for task_id, trigger, max_instances, paused, rules in rows:
            key = _sharing_key(trigger)
            if key is not None:
                trigger = shared.setdefault(key, trigger)
            rules = shared_rules.setdefault(rules, rules)  # frozen: equal policies sent once
            packed.append((task_id, trigger, max_instances, paused, rules))
        return pickle.dumps(packed, protocol=pickle.HIGHEST_PROTOCOL)
    finally:
        if collecting:
            gc.enable()


def unpack_schedule(
    data: bytes | list[ScheduledTask] | None, load: Callable[[bytes], Any] = pickle.loads
) -> list[ScheduledTask]:
    """The schedule `pack_schedule` made; `load` unpickles (the dispatcher's may import the
    main script, where a trigger class can be defined). A schedule built in this process
    (`schedule_of_tasks`) is returned as it is."""
    if isinstance(data, list):
        return data
    if data is None:
        raise ValueError("no schedule: only a dispatcher forked from the worker template has one")
    return [ScheduledTask(*row) for row in load(data)]


def _sharing_key(trigger: BaseTrigger[Any]) -> Hashable | None:
    cls = type(trigger)
    if cls.__module__ != _OWN_TRIGGERS:
        return None
    key = (cls, frozenset(trigger.model_fields_set), tuple(trigger.__dict__.items()))
    try:
        hash(key)
    except TypeError:  # a list of triggers (OrTrigger), say
        return None
    return key
