"""A node of a cluster, for tests/integration/test_cluster.py: each run appends
"start|end TASK DUE TOKEN PID TIME" to CLUSTER_TEST_LOG (one file per node).

`python -m tests.integration.cluster_app` serves it on CLUSTER_TEST_STORE with
CLUSTER_TEST_WORKERS workers."""

import asyncio
import os
import time

from aioclock import AioClock, CurrentRun, Depends, Every, current_run

THIS_RUN = Depends(current_run)

app = AioClock(
    store=os.environ.get("CLUSTER_TEST_STORE"),
    workers=int(os.environ.get("CLUSTER_TEST_WORKERS", "2")),
    shutdown_timeout=1.0,
)


def note(what: str, run: CurrentRun) -> None:
    with open(os.environ["CLUSTER_TEST_LOG"], "a") as log:
        log.write(f"{what} {run.task} {run.due!r} {run.token} {os.getpid()} {time.time()!r}\n")


@app.task(trigger=Every(seconds=0.1))
async def light(run: CurrentRun = THIS_RUN) -> None:
    note("start", run)
    note("end", run)


@app.task(trigger=Every(seconds=0.5))
def crunch(run: CurrentRun = THIS_RUN) -> None:
    """CPU-bound: its runs go to the nodes with free workers."""
    note("start", run)
    deadline = time.perf_counter() + 0.15
    while time.perf_counter() < deadline:
        pass
    note("end", run)


@app.task(trigger=Every(seconds=0.2), overlap="allow")
async def sleepy(run: CurrentRun = THIS_RUN) -> None:
    """Ten runs at a time across the cluster: a node killed has some going."""
    note("start", run)
    await asyncio.sleep(2.0)
    note("end", run)


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO)
    asyncio.run(app.serve())
