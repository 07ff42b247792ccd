"""An app served from a store, for tests/integration/test_stores.py: each beat appends
"TAG time" (STORE_TEST_TAG: which instance) to STORE_TEST_LOG.

`python -m tests.integration.store_app` serves it."""

import asyncio
import os
import time

from aioclock import AioClock, Every

app = AioClock(
    store=os.environ.get("STORE_TEST_URL"),
    workers=int(os.environ.get("STORE_TEST_WORKERS", "0")),
    shutdown_timeout=1.0,
)


@app.task(trigger=Every(seconds=float(os.environ.get("STORE_TEST_PERIOD", "0.1"))))
async def beat():
    with open(os.environ["STORE_TEST_LOG"], "a") as log:  # noqa: ASYNC230  # (a line)
        log.write(f"{os.environ['STORE_TEST_TAG']} {time.time()}\n")


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO)
    asyncio.run(app.serve())
