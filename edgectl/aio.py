"""Stopping asyncio tasks for certain, and within a bound.

`task.cancel(); await task` is not enough to stop a task for good. A cancellation can be
lost on its way: on Python 3.11 `asyncio.wait_for` returns the inner result when the inner
future completes in the same loop iteration as the cancel (CPython issue 86296), and library
code that maps its own timer's cancellation to TimeoutError may map ours too. The task then
goes on (a poller sleeps until its next poll), and whoever awaited it waits forever: the
daemon would never stop. So: cancel again until the task is done, and give up after a
bound, leaving the task to the loop's own teardown and saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterable
from typing import Any

# How long stopping a task may take (real seconds) before it is left behind.
STOP_TIMEOUT_S = 1.0
# How often a task that is still running after a cancel is cancelled again.
RECANCEL_EVERY_S = 0.05


async def cancel_and_wait(tasks: Iterable[asyncio.Task[object]], timeout_s: float) -> list[str]:
    """Cancel every task and wait until they are done; the names of those still running
    after `timeout_s` (an empty list when all stopped). Our own cancellation propagates."""
    tasks = list(tasks)
    pending = {t for t in tasks if not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0.0:
            break
        # asyncio.wait neither raises the tasks' exceptions nor swallows our own cancel.
        _done, pending = await asyncio.wait(pending, timeout=min(RECANCEL_EVERY_S, left))
    for task in tasks:
        _retrieve(task)
    return sorted(t.get_name() for t in pending)


def _retrieve(task: asyncio.Task[object]) -> None:
    """Mark a finished task's exception as seen: it was stopped on purpose."""
    if task.done() and not task.cancelled():
        with contextlib.suppress(BaseException):
            task.exception()


async def bounded(coro: Coroutine[Any, Any, object], timeout_s: float) -> bool:
    """Run `coro` for at most `timeout_s`; True if it finished in time. Unlike wait_for, a
    coroutine that ignores its cancellation cannot hold the caller beyond the bound
    (plus STOP_TIMEOUT_S). Its exception, if any, is the caller's."""
    task = asyncio.ensure_future(coro)
    done, _pending = await asyncio.wait({task}, timeout=timeout_s)
    if task in done:
        task.result()
        return True
    await cancel_and_wait([task], STOP_TIMEOUT_S)
    return False


async def cancel_others(timeout_s: float) -> list[str]:
    """Stop every task of this loop but the current one: what asyncio.run's teardown does,
    with a bound. The names of those still running."""
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    return await cancel_and_wait(others, timeout_s)
