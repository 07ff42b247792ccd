"""What a worker process cannot import is refused, before any process starts, saying why."""

import pytest

from aioclock import Once
from aioclock._task import Task
from aioclock.exceptions import TaskNotReachableError
from tests.integration import method_tasks


def check(func, start_method="spawn"):
    Task(func=func, trigger=Once()).check_reachable(start_method)


def test_a_partial_is_refused_naming_the_function_it_wraps_and_the_fix():
    with pytest.raises(TaskNotReachableError) as error:
        check(method_tasks.greet_ada)
    message = str(error.value)
    assert "functools.partial of tests.integration.method_tasks.greet" in message
    assert "register a module-level function that calls it" in message
    assert "has no attribute ''" not in message


def test_a_method_bound_to_an_instance_is_refused_naming_its_class_and_the_fix():
    with pytest.raises(TaskNotReachableError) as error:
        check(method_tasks.jobs.run)
    message = str(error.value)
    assert "a method bound to a Jobs instance" in message
    assert "register a module-level function that calls it" in message
    assert "decorated twice" not in message


def test_a_callable_object_is_refused_naming_its_type():
    with pytest.raises(TaskNotReachableError, match="it is a Jobs object, not a function"):
        check(method_tasks.jobs)


def test_a_classmethod_is_found_by_its_class():
    check(method_tasks.Jobs.sweep)
