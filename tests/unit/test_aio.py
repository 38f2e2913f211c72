"""edgectl.aio: a task is stopped even when a cancellation gets lost on its way, and a task
that never stops costs its bound, not the caller's life."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from edgectl.aio import bounded, cancel_and_wait, cancel_others


async def test_a_task_that_swallows_one_cancel_is_cancelled_again() -> None:
    # What CPython 3.11's wait_for does when the inner future completes with the cancel:
    # the cancellation is lost and the task goes on to its next sleep.
    swallowed = 0

    async def poller() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if swallowed == 0:
                    swallowed += 1
                    continue
                raise

    task = asyncio.create_task(poller(), name="poll-x")
    await asyncio.sleep(0.02)
    t0 = time.monotonic()
    assert await cancel_and_wait([task], 2.0) == []
    assert task.cancelled() and swallowed == 1
    assert time.monotonic() - t0 < 1.5
    # The plain way would have waited for good: the same task kind, one cancel only.
    swallowed = 0
    plain = asyncio.create_task(poller())
    await asyncio.sleep(0.02)
    plain.cancel()
    done, _ = await asyncio.wait({plain}, timeout=0.2)
    assert not done
    await cancel_and_wait([plain], 1.0)


async def test_a_task_that_never_stops_is_named_after_the_bound() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.01)

    ok = asyncio.create_task(asyncio.sleep(10.0), name="fine")
    bad = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0.02)  # both running (a task cancelled before its start just ends)
    t0 = time.monotonic()
    assert await cancel_and_wait([ok, bad], 0.3) == ["stubborn"]
    assert 0.25 <= time.monotonic() - t0 < 1.5
    assert ok.cancelled() and not bad.done()
    release.set()
    await bad


async def test_the_callers_own_cancellation_still_propagates() -> None:
    async def stubborn() -> None:
        for _ in range(200):
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.01)

    inner = asyncio.create_task(stubborn())
    await asyncio.sleep(0.02)
    outer = asyncio.create_task(cancel_and_wait([inner], 30.0))
    await asyncio.sleep(0.05)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    inner.cancel()


async def test_a_finished_tasks_exception_is_not_left_unretrieved() -> None:
    async def fails() -> None:
        raise RuntimeError("device bug")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    assert await cancel_and_wait([task], 0.5) == []
    assert task.done() and isinstance(task.exception(), RuntimeError)


async def test_bounded_returns_the_outcome_and_gives_up_on_a_stubborn_coroutine() -> None:
    assert await bounded(asyncio.sleep(0.01), 1.0) is True
    with pytest.raises(ValueError, match="bad frame"):
        await bounded(_raises(ValueError("bad frame")), 1.0)

    async def ignores_cancel() -> None:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.01)

    t0 = time.monotonic()
    assert await bounded(ignores_cancel(), 0.2) is False  # started: it runs for 0.2 s
    # The bound plus the stop timeout, never the coroutine's own 3 s.
    assert time.monotonic() - t0 < 2.5


async def _raises(exc: Exception) -> None:
    raise exc


async def test_cancel_others_spares_the_caller() -> None:
    tasks = [asyncio.create_task(asyncio.sleep(10.0)) for _ in range(3)]
    assert await cancel_others(1.0) == []
    assert all(t.cancelled() for t in tasks)
