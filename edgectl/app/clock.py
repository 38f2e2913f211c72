"""The daemon's clocks: monotonic time for the cycle, wall time for the energy accounts.

A test bench whose simulator runs N times faster than real time runs the daemon with the
same time scale (`edgectl run --time-scale N`), so that control periods, staleness limits
and revert timers mean the same seconds on both sides. In production the scale is 1.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable


class Clock:
    """Monotonic and wall time, both running `scale` times faster than the real ones.

    With a `source`, monotonic time is what the source says (a simulator's clock in the
    same process), and `scale` is only how fast it is expected to run.
    """

    def __init__(self, scale: float = 1.0, *, source: Callable[[], float] | None = None) -> None:
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"time scale must be a positive number, got {scale}")
        self.scale = scale
        self._source = source
        self._mono0 = time.monotonic()
        self._wall0 = time.time()
        self._source0 = source() if source is not None else 0.0

    def monotonic(self) -> float:
        """Seconds since the clock was made (scaled), or the source's time."""
        if self._source is not None:
            return self._source()
        return (time.monotonic() - self._mono0) * self.scale

    def wall(self) -> float:
        """Unix time, advancing with monotonic()."""
        return self._wall0 + self.monotonic() - self._source0

    async def sleep_until(self, t_s: float) -> None:
        """Sleep until monotonic() reaches t_s."""
        while (ahead := t_s - self.monotonic()) > 0:
            await asyncio.sleep(ahead / self.scale)
            if self._source is None:
                return

    def real_s(self, clock_s: float) -> float:
        """A duration on this clock in real seconds (for I/O timeouts)."""
        return clock_s / self.scale
