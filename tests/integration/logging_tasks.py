"""Module-level tasks that log, for the logging tests: worker processes import them by name."""

import logging
import os

logger = logging.getLogger("tests.x")


async def say_hello() -> None:
    logger.info("hello from pid %d", os.getpid())
    logger.debug("below the main process's level")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("it broke in pid %d", os.getpid())


async def say_alone() -> None:
    logging.getLogger("tests.alone").warning("alone from pid %d", os.getpid())
