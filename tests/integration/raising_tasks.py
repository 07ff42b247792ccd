"""Module-level tasks that raise a `TimeoutError` of their own, as an HTTP client would."""

from .worker_tasks import record


async def upstream_timeout() -> None:
    record("upstream_timeout")
    raise TimeoutError("upstream")


def upstream_timeout_in_a_thread() -> None:
    record("upstream_timeout_in_a_thread")
    raise TimeoutError("upstream, from a thread")
