"""Faults a simulated device can be told to show, consulted by every protocol server.

A server checks its device's DeviceFaults on each request: `offline` drops or refuses
the request (no answer, as a dead device), `latency_s` delays the answer, `timeout`
never answers (the client's timeout fires), `garbage` answers with random raw data,
`not_implemented` answers with the protocol's "not implemented" value (SunSpec sentinels,
an OPC UA Bad status, a Redfish null), `stuck` freezes every value at what it was when
the fault began, `ignore_setpoints` acknowledges and serves back every write but does not
act on it (a rack whose jobs override its BMC's cap). A reboot (clearing written
setpoints) and a firmware change are events on the device model, not standing faults.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DeviceFaults:
    offline: bool = False
    latency_s: float = 0.0
    timeout: bool = False
    garbage: bool = False
    not_implemented: bool = False
    stuck: bool = False
    ignore_setpoints: bool = False
    # Points the faults apply to; empty means every point of the device.
    points: set[str] = field(default_factory=set)

    def applies_to(self, point: str) -> bool:
        return not self.points or point in self.points

    def clear(self) -> None:
        self.offline = self.timeout = self.garbage = self.not_implemented = self.stuck = False
        self.ignore_setpoints = False
        self.latency_s = 0.0
        self.points.clear()
