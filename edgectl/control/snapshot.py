"""The frozen picture one cycle decides on: every source's and rack's readings, by site id.

Pollers refresh the role drivers asynchronously; `take_snapshot` copies what they hold at
one instant, through the drivers' capability methods (no I/O), into immutable views. From
then on the cycle never looks at a driver again: a value cannot change under a decision,
and every value may be invalid (never read, stale, out of range, frozen, not in the map),
so each reader below says what an invalid value means to it.

Signs are the devices' natural positives (edgectl.drivers.capabilities): a source's p_w
>= 0 is output, a battery's p_w > 0 discharging, a rack's p_w >= 0 draw.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from edgectl.config.site import Site
from edgectl.devicemaps.readings import STALE, Reading
from edgectl.drivers.capabilities import Battery, Curtailable, Meter, PowerSource, Rack
from edgectl.drivers.roles import RoleDriver

NO_DEVICE = "no device"
NOT_ANSWERING = "device not answering"


@dataclass(frozen=True, slots=True)
class DeviceHealth:
    """What the poller of one device knows about it, apart from the readings."""

    answered_t_s: float | None = None  # the last poll that got an answer
    error: str = ""  # the last poll's error; empty when it answered


@dataclass(frozen=True, slots=True)
class SourceView:
    """One source as the cycle sees it. Readings a role has no use for are invalid."""

    id: str
    kind: str
    device: str | None
    health: DeviceHealth
    p_w: Reading
    available_w: Reading  # pv, wind: what it could produce now; invalid with a lower
    # bound as value when the limit holds it back
    limit_w: Reading  # pv, wind: the curtailment limit in force
    soc: Reading  # bess: 0..1
    v_v: Reading  # the voltage of the source's bus, where the device measures it


@dataclass(frozen=True, slots=True)
class RackView:
    """One rack: its draw and the cap its BMC holds."""

    id: str
    device: str | None
    health: DeviceHealth
    p_w: Reading
    limit_w: Reading


@dataclass(frozen=True)
class Snapshot:
    """Every source and rack at `t_s` (the daemon's clock), in site order."""

    t_s: float
    sources: Mapping[str, SourceView]
    racks: Mapping[str, RackView]


def _missing(reason: str, unit: str, now_s: float) -> Reading:
    return Reading.invalid(reason, unit, now_s)


def _stale_if_silent(reading: Reading, health: DeviceHealth) -> Reading:
    """A reading of a device whose last poll failed keeps its value and age but says why."""
    if not health.error or not reading.valid:
        return reading
    return Reading.invalid(f"{STALE}: {health.error}", reading.unit, reading.t_s, reading.value)


@dataclass(frozen=True, slots=True)
class _Roles:
    """Which capabilities a driver class has; isinstance on a Protocol is slow, so once."""

    meter: bool
    source: bool
    curtailable: bool
    battery: bool
    rack: bool


_ROLES: dict[type, _Roles] = {}


def _roles(driver: object) -> _Roles:
    kind = type(driver)
    found = _ROLES.get(kind)
    if found is None:
        found = _Roles(
            meter=isinstance(driver, Meter),
            source=isinstance(driver, PowerSource),
            curtailable=isinstance(driver, Curtailable),
            battery=isinstance(driver, Battery),
            rack=isinstance(driver, Rack),
        )
        _ROLES[kind] = found
    return found


_UNINSTRUMENTED: dict[str, RackView] = {}


def _uninstrumented(rack_id: str) -> RackView:
    missing = Reading.invalid(NO_DEVICE, "W", 0.0)
    return RackView(id=rack_id, device=None, health=DeviceHealth(), p_w=missing, limit_w=missing)


def take_snapshot(
    site: Site,
    drivers: Mapping[str, RoleDriver],
    health: Mapping[str, DeviceHealth],
    now_s: float,
) -> Snapshot:
    """Copy what the drivers hold now into a Snapshot; sources and racks without a
    device get invalid readings saying so."""
    sources: dict[str, SourceView] = {}
    for src in site.sources:
        driver = drivers.get(src.device) if src.device else None
        h = health.get(src.device, DeviceHealth()) if src.device else DeviceHealth()
        nothing = _missing(NO_DEVICE if driver is None else "not in the device map", "W", now_s)
        p_w = available = limit = soc = v_v = nothing
        if driver is not None:
            roles = _roles(driver)
            if roles.meter:
                p_w = driver.p_w()  # type: ignore[attr-defined]
            if roles.source:
                available = driver.available_w()  # type: ignore[attr-defined]
            if roles.curtailable:
                limit = driver.limit_w()  # type: ignore[attr-defined]
            if roles.battery:
                soc = driver.soc()  # type: ignore[attr-defined]
            if driver.has("v_v"):
                v_v = driver.reading("v_v")
        sources[src.id] = SourceView(
            id=src.id,
            kind=src.kind,
            device=src.device,
            health=h,
            p_w=_stale_if_silent(p_w, h),
            available_w=_stale_if_silent(available, h),
            limit_w=_stale_if_silent(limit, h),
            soc=_stale_if_silent(soc, h),
            v_v=_stale_if_silent(v_v, h),
        )
    racks: dict[str, RackView] = {}
    for rack in site.racks:
        if rack.device is None:
            # Nothing about it changes from cycle to cycle: one view for them all.
            racks[rack.id] = _UNINSTRUMENTED.setdefault(rack.id, _uninstrumented(rack.id))
            continue
        driver = drivers.get(rack.device) if rack.device else None
        h = health.get(rack.device, DeviceHealth()) if rack.device else DeviceHealth()
        if driver is not None and _roles(driver).rack:
            p_w, limit = driver.p_w(), driver.limit_w()  # type: ignore[attr-defined]
        else:
            p_w = limit = _missing(NO_DEVICE, "W", now_s)
        racks[rack.id] = RackView(
            id=rack.id,
            device=rack.device,
            health=h,
            p_w=_stale_if_silent(p_w, h),
            limit_w=_stale_if_silent(limit, h),
        )
    return Snapshot(t_s=now_s, sources=sources, racks=racks)
