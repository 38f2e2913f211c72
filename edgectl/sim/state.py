"""The state a simulated device serves: values by logical point, in engineering units.

The physics model writes `values`; a protocol server answers reads from `read()` and
hands client writes to `write()`, which records them for the physics (and for tests)
to pick up. Servers never compute anything: what a device says is decided here and in
the physics, so every protocol serves the same site.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edgectl.devicemaps.readings import Value
from edgectl.devicemaps.schema import DeviceMap
from edgectl.sim.faults import DeviceFaults


@dataclass
class Write:
    value: Value
    t_s: float


@dataclass
class DeviceState:
    """One simulated device: its map, its values, the writes it received, its faults."""

    device_id: str
    device_map: DeviceMap
    values: dict[str, Value | None] = field(default_factory=dict)
    writes: dict[str, Write] = field(default_factory=dict)
    faults: DeviceFaults = field(default_factory=DeviceFaults)
    clock: Callable[[], float] = time.monotonic
    _frozen: dict[str, Value | None] = field(default_factory=dict)

    def read(self, point: str) -> Value | None:
        """The value served for `point` (None: the device does not implement it now)."""
        if self.faults.stuck and self.faults.applies_to(point):
            return self._frozen.setdefault(point, self.values.get(point))
        self._frozen.pop(point, None)
        if self.faults.not_implemented and self.faults.applies_to(point):
            return None
        return self.values.get(point)

    def write(self, point: str, value: Value) -> None:
        """A client wrote `point`: record it and serve it back."""
        self.writes[point] = Write(value, self.clock())
        self.values[point] = value

    def reboot(self) -> None:
        """A reboot clears every written setpoint (the device falls back to its defaults)."""
        for point in self.writes:
            self.values.pop(point, None)
        self.writes.clear()
