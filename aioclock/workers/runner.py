"""The task runner: turns a `Fire` into a call of the user's function and answers a `Done`.

It resolves fast-depends dependencies, runs async tasks on the event loop and sync tasks in a
thread (so the loop keeps answering), enforces each task's timeout and reports how the run went.
The in-process runtime and every worker process use this same class.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from contextlib import AbstractAsyncContextManager, AbstractContextManager, AsyncExitStack
from typing import Any

from fast_depends import Provider, inject

from aioclock._protocol import CANCEL_ANSWER_WAIT, Done, Fire, Outcome
from aioclock._task import Task
from aioclock.context import _current
from aioclock.exceptions import TaskTimeoutError

logger = logging.getLogger("aioclock")

#: Why a run is cancelled, unless told otherwise.
SHUTDOWN = "shutdown"
#: ... when a newer run of its task replaces it (overlap "replace").
REPLACED = "replaced by a newer run"

#: The error a `Done` carries is cut to this many characters (the log keeps it whole), so that
#: every `Done` fits in a frame.
MAX_ERROR_CHARS = 2000


class TaskRunner:
    """Runs fires concurrently and calls `on_done` with one `Done` per fire.

    `on_sync_timeout` is called when a sync task outlives its timeout: a thread cannot be
    cancelled, so a worker process replaces itself there; in-process the thread runs on and
    only the run is reported as timed out. A sync task with a `limiter` (`Task.limiter`) waits
    for one of its tokens before it gets a thread. `now` reads the time a `Done` reports (the
    runtime's clock, so that lateness is measured on the time the deadlines are kept in).
    """

    def __init__(
        self,
        tasks: Mapping[str, Task],
        provider: Provider,
        on_done: Callable[[Done], None],
        *,
        executor: Executor | None = None,
        on_sync_timeout: Callable[[Task], None] | None = None,
        now: Callable[[], float] = time.time,
        injected: dict[str, Callable[..., Any]] | None = None,
    ) -> None:
        """`injected`: the injectors of `tasks`, built already (see `build_injectors`) for this
        runner alone, which then keeps both mappings as they are: copying them would touch every
        task, and so copy the memory that a forked worker shares with its parent."""
        self._tasks = dict(tasks) if injected is None or not isinstance(tasks, dict) else tasks
        self._provider = provider
        self._on_done = on_done
        self._executor = executor
        self._on_sync_timeout = on_sync_timeout
        self._now = now
        self._running: dict[int, asyncio.Task[None]] = {}
        self._sync_runs: set[int] = set()  # runs of sync tasks (a thread runs them)
        self._replies: dict[int, tuple[bool, Any]] = {}  # seq -> (ok, value or exception)
        # Built now, not on the first (timed) run.
        self._injected = injected if injected is not None else build_injectors(tasks, provider)
        self._closing: set[asyncio.Task[None]] = set()  # cancelled: closed if they do not end
        self._closed_past_timeout: set[int] = set()  # runs closed for ignoring their timeout

    def add(self, task: Task) -> None:
        """Run fires of `task` from now on (a task added while the app serves); it replaces a
        task of the same name."""
        self._tasks[task.name] = task
        self._injected.pop(task.name, None)
        self._injector(task)

    def running_tasks(self) -> list[asyncio.Task[None]]:
        return list(self._running.values())

    def cancel(self, seq: int, reason: str = SHUTDOWN) -> bool:
        """Cancel run `seq` if it is still going (it then reports `cancelled`, and why:
        `reason`). True when it is a run of a sync task: its thread cannot be cancelled and
        runs on."""
        run = self._running.get(seq)
        if run is None:
            return False
        self._cancel(run, reason)
        return seq in self._sync_runs

    def _cancel(self, run: asyncio.Task[None], reason: str = SHUTDOWN) -> None:
        """Cancel `run`; should it not end within CANCEL_ANSWER_WAIT, close it (see `_close`)."""
        run.cancel(reason)
        if run not in self._closing:
            self._closing.add(run)
            run.add_done_callback(self._closing.discard)
            asyncio.get_running_loop().call_later(CANCEL_ANSWER_WAIT, self._close_if_running, run)

    def _close_if_running(self, run: asyncio.Task[None]) -> None:
        if run.done():
            return
        logger.error(
            "%s ignored its cancellation for %g s; closing it (a task must let CancelledError "
            "through)",
            run.get_name(),
            CANCEL_ANSWER_WAIT,
        )
        _close(run)

    def start(self, fire: Fire) -> None:
        """Begin the run at once; its `Done` goes to `on_done` when it ends."""
        name = f"aioclock run {fire.seq} of {fire.task}"
        run = asyncio.get_running_loop().create_task(self._run(fire), name=name)
        self._running[fire.seq] = run
        run.add_done_callback(lambda _: self._report_if_never_started(fire))

    def _report_if_never_started(self, fire: Fire) -> None:
        """A run cancelled before its first step never enters `_run` (whose `finally` reports
        and forgets it): report it here, or the dispatcher would wait for it forever."""
        if self._running.pop(fire.seq, None) is not None:
            now = self._now()
            error = "cancelled before it started (shutdown)"
            self._on_done(Done(fire.task, fire.seq, now, now, "cancelled", error))

    def take_reply(self, seq: int) -> tuple[bool, Any] | None:
        """What run `seq` of a `Fire(reply=True)` returned (True, value) or raised (False, exc)."""
        return self._replies.pop(seq, None)

    async def run_inline(self, task: Task) -> Any:
        """Run `task` in the caller's task with its dependencies and timeout; return its result.

        Past its timeout, raise `TaskTimeoutError`; what the task raises (a `TimeoutError` of
        its own included) comes through as it is.
        """
        try:
            return await self._call(task)
        except _DeadlineExpired:
            raise _timeout_error(task) from None

    async def _run(self, fire: Fire) -> None:
        started = self._now()
        task = self._tasks.get(fire.task)
        outcome: Outcome = "ok"
        error: str | None = None
        watch: asyncio.TimerHandle | None = None
        try:
            if task is None:
                raise LookupError(f"no task with id {fire.task!r} is registered in this process")
            # (this run's own context: `_run` is a task of its own)
            _current.set(fire)
            if not task.is_async:
                self._sync_runs.add(fire.seq)
            if task.timeout is not None and task.is_async:
                watch = self._watch_timeout(fire.seq, task)
            value = await self._call(task)
            if fire.reply:
                self._replies[fire.seq] = (True, value)
        except GeneratorExit:  # closed (`_close`): it swallowed its cancellation
            if fire.seq in self._closed_past_timeout:
                self._closed_past_timeout.discard(fire.seq)
                assert task is not None
                outcome, error = "timeout", f"{_timeout_error(task)} and ignored its cancellation"
            else:
                outcome, error = "cancelled", "ignored its cancellation (shutdown)"
            raise
        except _DeadlineExpired:
            assert task is not None
            timeout_error = _timeout_error(task)
            outcome, error = "timeout", str(timeout_error)
            logger.error("%s", timeout_error)
        except asyncio.CancelledError as cancelled:
            reason = cancelled.args[0] if cancelled.args else SHUTDOWN
            outcome, error = "cancelled", f"cancelled while running ({reason})"
            logger.warning("task %s was cancelled while running", fire.task)
            raise
        except (Exception, SystemExit) as failure:
            # sys.exit() in a task ends its run, not the process that runs it: in a worker it
            # would only be replaced, and both runtimes must count it the same way.
            outcome = "failed"
            error = _summary(failure)
            logger.exception("task %s failed", fire.task)
            if fire.reply:
                self._replies[fire.seq] = (False, failure)
        finally:
            if watch is not None:
                watch.cancel()
            self._running.pop(fire.seq, None)
            self._sync_runs.discard(fire.seq)
            self._on_done(Done(fire.task, fire.seq, started, self._now(), outcome, error))

    def _watch_timeout(self, seq: int, task: Task) -> asyncio.TimerHandle:
        """Its timeout cancels the run; should the task swallow that cancellation, close the
        run CANCEL_ANSWER_WAIT later, so that it ends (as a timeout) all the same."""
        assert task.timeout is not None
        run = asyncio.current_task()
        assert run is not None

        def close_if_running() -> None:
            if run.done():
                return
            logger.error(
                "%s exceeded its timeout of %g s and ignored its cancellation for %g s; "
                "closing it (a task must let CancelledError through)",
                run.get_name(),
                task.timeout,
                CANCEL_ANSWER_WAIT,
            )
            self._closed_past_timeout.add(seq)
            _close(run)

        wait = task.timeout + CANCEL_ANSWER_WAIT
        return asyncio.get_running_loop().call_later(wait, close_if_running)

    def _injector(self, task: Task) -> Callable[..., Any]:
        call = self._injected.get(task.name)
        if call is None:
            call = self._injected[task.name] = _injector(task, self._provider)
        return call

    async def _call(self, task: Task) -> Any:
        call = self._injector(task)
        if task.is_async:
            return await _within(call(), task)
        return await self._call_sync(call, task)

    async def _call_sync(self, call: Callable[[], Any], task: Task) -> Any:
        limiter = task.limiter
        if limiter is None:
            return await self._in_thread(call, task)
        # Waiting for a thread slot is not part of the run's timeout. The slot is given back when
        # the thread ends: a thread past its timeout runs on, and still counts against the limiter.
        borrower = object()
        await limiter.acquire_on_behalf_of(borrower)
        return await self._in_thread(call, task, lambda: limiter.release_on_behalf_of(borrower))

    async def _in_thread(
        self, call: Callable[[], Any], task: Task, on_thread_end: Callable[[], None] | None = None
    ) -> Any:
        loop = asyncio.get_running_loop()
        try:
            # In this run's context, as an async task would be: `current_run` reads it.
            context = contextvars.copy_context()
            future = loop.run_in_executor(self._executor, context.run, call)
        except BaseException:
            if on_thread_end is not None:
                on_thread_end()
            raise
        if on_thread_end is not None:
            future.add_done_callback(lambda _: on_thread_end())
        try:
            return await _within(asyncio.shield(future), task)
        except _DeadlineExpired:
            if self._on_sync_timeout is not None:
                self._on_sync_timeout(task)
            raise

    async def cancel_all(self, grace: float) -> None:
        """Wait up to `grace` seconds for the runs in progress, then cancel what is left."""
        pending = list(self._running.values())
        if not pending:
            return
        _, still_running = await asyncio.wait(pending, timeout=grace)
        for run in still_running:
            self._cancel(run)
        if still_running:
            logger.warning(
                "cancelled %d run(s) still going after %.1f s", len(still_running), grace
            )
            # One that swallows its cancellation is closed after CANCEL_ANSWER_WAIT: it ends.
            await asyncio.wait(still_running, timeout=CANCEL_ANSWER_WAIT + 1.0)


def _close(run: asyncio.Task[None]) -> None:
    """End a run that swallows every cancellation: close its coroutine (GeneratorExit where it
    waits), so that neither this stop nor `asyncio.run()`'s own clean-up waits for it forever."""
    with contextlib.suppress(RuntimeError):  # it swallowed GeneratorExit too: nothing else to do
        run.get_coro().close()
    run.cancel()  # its next step finds the coroutine closed, and the task ends
    run.add_done_callback(lambda ended: ended.cancelled() or ended.exception())


def _summary(failure: BaseException) -> str:
    """One line for a `Done`: never raises, at most `MAX_ERROR_CHARS` characters (and a count),
    valid UTF-8 (a lone surrogate is written as its escape), so that the frame always encodes."""
    text = f"{type(failure).__name__}: {_text_of(failure)}"
    if len(text) > MAX_ERROR_CHARS:
        text = f"{text[:MAX_ERROR_CHARS]}... ({len(text)} characters)"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _text_of(failure: BaseException) -> str:
    try:
        return str(failure)
    except Exception as problem:  # its __str__ raised
        try:
            why = str(problem)
        except Exception:
            why = "?"
        return f"<str() raised {type(problem).__name__}: {why}>"


def build_injectors(tasks: Mapping[str, Task], provider: Provider) -> dict[str, Callable[..., Any]]:
    """What runs each task: its function, wrapped by fast-depends where it takes arguments."""
    return {name: _injector(task, provider) for name, task in tasks.items()}


def _injector(task: Task, provider: Provider) -> Callable[..., Any]:
    # A function without parameters has nothing to inject: fast-depends would build a pydantic
    # model for it (milliseconds each, minutes for 100,000 tasks) for nothing.
    if _takes_arguments(task.func):
        return inject(task.func, dependency_provider=provider)
    return task.func


def _takes_arguments(func: Callable[..., Any]) -> bool:
    code = getattr(func, "__code__", None)
    if code is None or not inspect.isfunction(func):  # partials, callables: ask inspect
        return bool(inspect.signature(func).parameters)
    varargs = inspect.CO_VARARGS | inspect.CO_VARKEYWORDS
    return bool(code.co_argcount or code.co_kwonlyargcount or code.co_flags & varargs)


class _DeadlineExpired(Exception):
    """The runner's own timeout of a run expired. Only `_within` raises it, and the runner turns
    it into `TaskTimeoutError`, so that a `TimeoutError` raised by the task's code (an HTTP
    client's, say) is never mistaken for it."""


def _timeout_error(task: Task) -> TaskTimeoutError:
    assert task.timeout is not None
    return TaskTimeoutError(task.name, task.timeout)


async def _within(awaitable: Any, task: Task) -> Any:
    """Await with the task's timeout; past it, cancel and raise `_DeadlineExpired`."""
    if task.timeout is None:
        return await awaitable
    if sys.version_info >= (3, 11):
        return await _within_scope(awaitable, task.timeout)
    return await _within_wait_for(awaitable, task.timeout)


async def _within_scope(awaitable: Any, timeout: float) -> Any:
    assert sys.version_info >= (3, 11)  # asyncio.timeout is new in 3.11
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            return await awaitable
    except TimeoutError:
        if scope.expired():
            raise _DeadlineExpired from None
        raise


async def _within_wait_for(awaitable: Any, timeout: float) -> Any:
    """`_within_scope` for Python 3.10, which has no `asyncio.timeout`: `wait_for` raises the same
    `asyncio.TimeoutError` for its own deadline as a task may raise, so a timer tells them apart
    (it is due no later than `wait_for`'s own, so it has run when that one fires)."""
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True

    timer = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        if expired:
            raise _DeadlineExpired from None
        raise
    finally:
        timer.cancel()


async def enter_lifespan(app: Any, stack: AsyncExitStack) -> None:
    """Enter `app.lifespan(app)`, sync or async, so that `stack` exits it."""
    if app.lifespan is None:
        return
    context = app.lifespan(app)
    if isinstance(context, AbstractAsyncContextManager) or hasattr(context, "__aenter__"):
        await stack.enter_async_context(context)
    elif isinstance(context, AbstractContextManager) or hasattr(context, "__enter__"):
        stack.enter_context(context)
    else:
        raise TypeError(f"lifespan must return a context manager (sync or async), got {context!r}")
