"""The schedule as the dispatcher process receives it: equal built-in triggers sent once."""

import pickle

from aioclock.dispatcher.engine import ScheduledTask
from aioclock.dispatcher.payload import pack_schedule, unpack_schedule
from aioclock.triggers import BaseTrigger, Cron, Every, OrTrigger


class Counting(BaseTrigger):
    """A trigger of the app's own: it may keep state, so it is never shared."""

    type_: str = "Counting"

    def next_due(self, now, previous):
        return now + 1


def test_equal_triggers_of_aioclock_are_sent_once_and_every_task_keeps_its_options():
    schedule = [
        ScheduledTask("m:a", Every(hours=1), 1, False),
        ScheduledTask("m:b", Every(hours=1), 3, True),
        ScheduledTask("m:c", Every(hours=2), 1, False),
        ScheduledTask("m:d", Cron(cron="0 3 * * *", tz="UTC"), 1, False),
    ]
    unpacked = unpack_schedule(pack_schedule(schedule))
    assert unpacked == schedule
    a, b, c, d = (spec.trigger for spec in unpacked)
    assert a is b
    assert c is not a and d is not a


def test_triggers_of_other_classes_or_with_unhashable_fields_are_sent_one_by_one():
    both = [Every(hours=1), Every(hours=2)]
    schedule = [
        ScheduledTask("m:a", Counting(), 1, False),
        ScheduledTask("m:b", Counting(), 1, False),
        ScheduledTask("m:c", OrTrigger(triggers=both), 1, False),
        ScheduledTask("m:d", OrTrigger(triggers=both), 1, False),
    ]
    a, b, c, d = (spec.trigger for spec in unpack_schedule(pack_schedule(schedule)))
    assert a is not b and a == b
    assert c is not d and c == d


def test_sharing_makes_a_large_schedule_small():
    schedule = [ScheduledTask(f"m:t{i}", Every(hours=1)) for i in range(1000)]
    assert len(pack_schedule(schedule)) < len(pickle.dumps(schedule)) / 3


def test_the_tasks_of_an_app_pack_as_their_schedule_would():
    from aioclock import AioClock
    from aioclock.dispatcher.engine import schedule_of
    from aioclock.dispatcher.payload import pack_tasks

    app = AioClock()
    app.task(trigger=Every(hours=1), max_instances=2)(a_job)
    app.task(trigger=Every(hours=1))(another_job)
    tasks = app._task_table()
    paused = {next(iter(tasks))}
    assert unpack_schedule(pack_tasks(tasks, paused)) == schedule_of(tasks, paused)


def a_job(): ...


def another_job(): ...


def test_the_schedule_built_from_the_inherited_tasks_is_the_schedule_and_shares_the_rules():
    from aioclock import AioClock, Policy
    from aioclock.dispatcher.engine import schedule_of
    from aioclock.dispatcher.payload import schedule_of_tasks

    app = AioClock(workers=1, policy=Policy(misfire_grace=5))

    async def plain():
        pass

    async def allowed():
        pass

    async def paused():
        pass

    app.task(trigger=Every(seconds=1))(plain)
    app.task(trigger=Every(seconds=2), max_instances=3)(allowed)
    app.task(trigger=Every(seconds=3))(paused)
    table = app._task_table()
    names = {task.func.__name__: name for name, task in table.items()}
    built = schedule_of_tasks(table, {names["paused"]}, app.policy)
    assert built == schedule_of(table, {names["paused"]}, app.policy)
    assert unpack_schedule(built) is built  # a schedule built here is used as it is
    by_function = dict(zip(names, built, strict=True))
    assert by_function["plain"].rules is by_function["paused"].rules  # one object, resolved once
    assert by_function["allowed"].rules.limit == 3
    assert by_function["plain"].rules.misfire_grace == 5.0
    assert [spec.paused for spec in built] == [False, False, True]


def test_tasks_declared_without_a_policy_share_one_policy_object():
    from aioclock import AioClock

    app = AioClock()

    async def one():
        pass

    async def two():
        pass

    app.task(trigger=Every(seconds=1))(one)
    app.task(trigger=Every(seconds=1))(two)
    first, second = app._tasks
    assert first.policy is second.policy
    assert (first.max_instances, second.max_instances) == (1, 1)
