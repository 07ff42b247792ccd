"""Drives a trigger written against aioclock 0.3's interface (it overrides `trigger_next`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from aioclock.triggers import BaseTrigger

logger = logging.getLogger(__name__)


async def drive_legacy_trigger(trigger: BaseTrigger[Any], due_now: Callable[[], None]) -> None:
    """Upstream's loop: ask the waiting time, await `trigger_next()`, then say the task is due.

    Such a trigger keeps its schedule in itself, as upstream's did (its `trigger_next` counts in
    it): the schedule starts afresh each time an app serves, and tasks sharing the trigger share it.
    """
    trigger._reset()
    while trigger.should_trigger():
        waiting = await trigger.get_waiting_time_till_next_trigger()
        if waiting is not None:
            trigger.expected_trigger_time = datetime.now(timezone.utc) + timedelta(seconds=waiting)
        await trigger.trigger_next()
        logger.debug("legacy trigger %s due at %.6f", type(trigger).__name__, time.time())
        due_now()
    trigger.expected_trigger_time = None
