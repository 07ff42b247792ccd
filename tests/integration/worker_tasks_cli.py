"""Apps the command-line tests name (`aioclock run tests.integration.worker_tasks_cli:app`).

Built with the default settings (workers=0): the tests choose them on the command line or in
`AIOCLOCK_*` variables. Tasks record their events as in `worker_tasks`.
"""

from aioclock import AioClock, At, Cron, Every, OnShutDown, OnStartUp
from tests.integration.worker_tasks import failing_lifespan, record

app = AioClock()


@app.task(trigger=OnStartUp())
async def started() -> None:
    record("started")


@app.task(trigger=Every(seconds=0.1))
async def tick() -> None:
    record("tick")


@app.task(trigger=Cron(cron="0 3 * * *", tz="Europe/Berlin"))
async def nightly() -> None:
    record("nightly")


@app.task(trigger=At(hour=12, minute=30, at="every monday", tz="Asia/Kolkata"))
async def weekly() -> None:
    record("weekly")


@app.task(trigger=OnShutDown())
async def stopped() -> None:
    record("stopped")


async def never_runs() -> None:
    record("never_runs")


#: Its lifespan raises in every worker: `serve()` raises `WorkerProcessError`.
broken = AioClock(lifespan=failing_lifespan)
broken.task(trigger=Every(seconds=1))(never_runs)
