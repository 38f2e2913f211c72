"""What the control layer may ask of a device: small capabilities, one or two methods each.

A controller asks for the capability it needs (`isinstance(driver, Curtailable)`), never for
a vendor, a protocol or a device class. Every quantity is SI and every sign is the device's
natural positive, stated once here:

    source (pv, wind)   p_w >= 0 is output (a little below 0 only while it feeds its own
                        auxiliaries at night or in calm)
    battery             p_w > 0 discharging, p_w < 0 charging
    rack                p_w >= 0 is draw
    meter               p_w > 0 in the direction the meter is installed to count

Readings come from the last `update()`, with no I/O (a controller reads a frozen snapshot);
each may be invalid with a reason, and a controller decides what an invalid value means.
Setpoints are written at once and answer what the device reads back, converted the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from edgectl.devicemaps.readings import Reading

__all__ = [
    "Battery",
    "BatteryControl",
    "Curtailable",
    "DroopControl",
    "Heartbeat",
    "Meter",
    "Polled",
    "PowerSource",
    "Rack",
]


@runtime_checkable
class Polled(Protocol):
    """A device whose readings are refreshed by polling; every role driver is one."""

    async def update(self) -> Mapping[str, Reading]:
        """Poll the device now; the points read, by name (a DeviceError if it did not answer)."""

    def readings(self) -> Mapping[str, Reading]:
        """Every point as of the last update, in the device map's units; no I/O."""


@runtime_checkable
class Meter(Protocol):
    """Active power through the device, W, with its role's sign (see the module docstring)."""

    def p_w(self) -> Reading: ...


@runtime_checkable
class PowerSource(Meter, Protocol):
    """A renewable source: what it produces (`p_w`) and what it could produce now."""

    def available_w(self) -> Reading:
        """Power the source could produce now if nothing limited it, W >= 0."""


@runtime_checkable
class Curtailable(Protocol):
    """A device whose power can be capped: a source's output or a rack's draw."""

    def limit_w(self) -> Reading:
        """The cap in force, W (the rating when none is)."""

    async def set_limit_w(self, limit_w: float) -> Reading:
        """Cap the power at `limit_w` W (clamped to what the device accepts); the cap read back."""


@runtime_checkable
class Battery(Meter, Protocol):
    """A battery's state: charge and how hard it may be driven now."""

    def soc(self) -> Reading:
        """State of charge, a fraction 0..1."""

    def limits_w(self) -> tuple[Reading, Reading]:
        """(most charging power, most discharging power), both W >= 0."""


@runtime_checkable
class BatteryControl(Protocol):
    """A battery that takes a power setpoint."""

    async def set_power_w(self, p_w: float) -> Reading:
        """Charge (p_w < 0) or discharge (p_w > 0) at `p_w` W, clamped to the battery's
        limits; also beats the heartbeat. The setpoint read back, in W."""


@runtime_checkable
class DroopControl(Protocol):
    """A battery that can be left to hold the bus by its droop, its charging capped."""

    async def set_droop(self, charge_limit_w: float) -> Reading:
        """Leave remote power control (the converter's droop holds the bus again) with
        charging capped at `charge_limit_w` W; also beats the heartbeat. The charge limit
        read back, in W."""


@runtime_checkable
class Rack(Meter, Curtailable, Protocol):
    """A GPU rack: its draw, its power cap, and the caps its BMC accepts."""

    def limit_range_w(self) -> tuple[Reading, Reading]:
        """(lowest, highest) cap the rack accepts, W."""


@runtime_checkable
class Heartbeat(Protocol):
    """A device that leaves remote control when the controller's counter stops changing."""

    async def heartbeat(self) -> Reading:
        """Write the next counter value; the value read back."""
