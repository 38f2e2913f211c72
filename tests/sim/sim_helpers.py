"""Helpers shared by the simulator tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from edgectl.devicemaps.readings import Reading


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    """Wait until `check()` holds; fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s")
        await asyncio.sleep(0.02)


def value(reading: Reading) -> float:
    """A valid numeric reading's value."""
    assert reading.valid, reading.reason
    assert isinstance(reading.value, int | float)
    return float(reading.value)
