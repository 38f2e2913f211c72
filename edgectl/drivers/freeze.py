"""Frozen-value detection: a measurement that stops moving is not trusted.

A sensor that died with its last value latched, or a gateway serving a stuck register,
keeps answering with a perfectly plausible number. Real measurements jitter, so a point
whose map sets `frozen_s` becomes invalid ("value frozen") once its value has stayed
bit-identical, and non-zero, for that long. Zero is exempt: a PV block at night or an
idle converter reads exactly 0 for hours.
"""

from __future__ import annotations

from collections.abc import Mapping

from edgectl.devicemaps.readings import FROZEN, Reading, Value
from edgectl.devicemaps.schema import DeviceMap


class FreezeWatch:
    """Tracks, per watched point, the value and when it last changed."""

    def __init__(self, limits_s: Mapping[str, float]) -> None:
        self._limits_s = dict(limits_s)
        self._since: dict[str, tuple[Value, float]] = {}

    @classmethod
    def for_map(cls, device_map: DeviceMap) -> FreezeWatch:
        return cls({n: p.frozen_s for n, p in device_map.points.items() if p.frozen_s})

    def check(self, readings: Mapping[str, Reading], now_s: float) -> dict[str, Reading]:
        """The readings, with watched points that stopped moving marked invalid."""
        out = dict(readings)
        for name, limit_s in self._limits_s.items():
            reading = readings.get(name)
            if reading is None:
                continue
            value = reading.value
            if not reading.valid or not isinstance(value, int | float) or value == 0:
                self._since.pop(name, None)
                continue
            last = self._since.get(name)
            if last is None or last[0] != value:
                self._since[name] = (value, now_s)
                continue
            still_s = now_s - last[1]
            if still_s >= limit_s:
                out[name] = Reading.invalid(
                    f"{FROZEN} at {value:g} for {still_s:.0f} s", reading.unit, reading.t_s, value
                )
        return out
