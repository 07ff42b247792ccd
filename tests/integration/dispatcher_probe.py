"""A trigger that reports, from the process that asks it (the dispatcher), which libraries that
process has imported. Only `aioclock.triggers` is imported here, so that this module adds none."""

import json
import os
import sys
import time

from aioclock.triggers import BaseTrigger

WATCHED = ("fast_depends", "anyio", "tests.integration.worker_tasks")


class ReportingImports(BaseTrigger):
    """Due now, then every 20 ms; the first question records the asking process's imports."""

    type_: str = "ReportingImports"

    def next_due(self, now, previous):
        if previous is None:
            line = json.dumps(
                {
                    "name": "imports",
                    "pid": os.getpid(),
                    "time": time.time(),
                    "loaded": [name for name in WATCHED if name in sys.modules],
                }
            )
            with open(os.environ["AIOCLOCK_TEST_EVENTS"], "a") as events:
                events.write(line + "\n")
            return now
        return previous + 0.02
