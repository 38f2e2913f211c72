"""Role drivers: a device's map points offered as the capabilities of its role, in SI units.

A role driver wraps a PointDevice and does what a device map cannot: percentages of a
rating turned into watts and back, a state of charge in percent turned into a fraction,
setpoints clamped to what the device accepts, a heartbeat counted, revert timers written.
`update()` polls (the fast group every time, the slow group every `slow_period_s`, the once
group until it reads valid); every capability method then answers from that poll without
I/O. A value that cannot be converted (an input invalid, a rating unknown) is an invalid
Reading naming the input and its reason, never an exception; only a device that does not
answer raises (a DeviceError).

Which points each role uses, by name (the maps in firmware_configs/ follow them):

    pv, wind  p_w, available_w (optional), p_rated_w (optional), and the limit either as
              limit_w (W) or as limit_pct (% of p_rated_w) with limit_enable, plus
              limit_revert_s (optional, the device's fallback timer) and heartbeat (optional)
    bess      p_w, soc (%), p_charge_max_w, p_discharge_max_w, heartbeat, and the SunSpec 124
              setpoints: charge_limit_w (WChaMax), storage_mode (StorCtl_Mod),
              charge_rate_pct (InWRte, % of WChaMax), discharge_rate_pct (OutWRte, % of
              WDisChaRteMax), rate_revert_s
    rack      p_w, limit_w, limit_min_w and limit_max_w (optional: the site's rack entry or
              the map's range bound the limit otherwise)
    meter     p_w
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import ClassVar

from edgectl.devicemaps.readings import NOT_A_NUMBER, Reading, Value
from edgectl.devicemaps.schema import DeviceMap, Point
from edgectl.drivers.freeze import FreezeWatch
from edgectl.drivers.points import PointDevice

__all__ = [
    "CURTAILED",
    "DEFAULT_REVERT_S",
    "NOT_IN_MAP",
    "NOT_READ",
    "BatteryDriver",
    "MeterDriver",
    "PvDriver",
    "RackDriver",
    "RoleDriver",
    "SourceDriver",
    "WindDriver",
    "role_driver",
]

# The device falls back to its own defaults this long after the controller's last write.
DEFAULT_REVERT_S = 60.0
DEFAULT_SLOW_PERIOD_S = 10.0

NOT_READ = "not read yet"
NOT_IN_MAP = "not in the device map"
CURTAILED = "curtailed: only a lower bound is known"

# StorCtl_Mod bits (model 124): which of InWRte / OutWRte is in force.
_CHARGE_BIT, _DISCHARGE_BIT = 1, 2
# Below the limit by more than this share of the rating, a source is not held by it.
_LIMIT_MARGIN = 0.02


class RoleDriver:
    """What every role driver shares: the PointDevice, the last poll, writes with read-back."""

    role: ClassVar[str] = ""

    def __init__(
        self,
        points: PointDevice,
        *,
        clock: Callable[[], float] = time.monotonic,
        revert_s: float = DEFAULT_REVERT_S,
        slow_period_s: float = DEFAULT_SLOW_PERIOD_S,
    ) -> None:
        if not revert_s >= 0 or not slow_period_s > 0:
            raise ValueError("revert_s must be >= 0 and slow_period_s > 0")
        self.points = points
        self.revert_s = revert_s
        self._clock = clock
        self._slow_period_s = slow_period_s
        self._last_slow_s = -math.inf
        self._readings: dict[str, Reading] = {}
        # Built for the map in use; the map can change when open() identifies the device.
        self._freeze: FreezeWatch | None = None
        self._freeze_map: DeviceMap | None = None

    @property
    def device_id(self) -> str:
        return self.points.device_id

    @property
    def device_map(self) -> DeviceMap:
        """The map in use, or before `open()` the first the device may match."""
        return self.points.device_map or self.points.maps[0]

    async def open(self) -> None:
        await self.points.open()

    async def update(self) -> Mapping[str, Reading]:
        now = self._clock()
        groups = {"fast"}
        if now - self._last_slow_s >= self._slow_period_s:
            groups.add("slow")
        once = [n for n, p in self.device_map.points.items() if p.poll == "once"]
        if any(not self.reading(n).valid for n in once):
            groups.add("once")
        if self._freeze is None or self._freeze_map is not self.device_map:
            self._freeze_map = self.device_map
            self._freeze = FreezeWatch.for_map(self.device_map)
        fresh = self._freeze.check(await self.points.poll(groups), now)
        if "slow" in groups:
            self._last_slow_s = now
        self._readings |= fresh
        return fresh

    def readings(self) -> Mapping[str, Reading]:
        return dict(self._readings)

    def reading(self, point: str) -> Reading:
        """A point as last read; invalid when it never was or the map has no such point."""
        found = self._readings.get(point)
        if found is not None:
            return found
        spec = self._point(point)
        reason = NOT_IN_MAP if spec is None else NOT_READ
        return Reading.invalid(reason, spec.unit if spec else "", self._clock())

    async def close(self) -> None:
        await self.points.close()

    def has(self, point: str) -> bool:
        return self._point(point) is not None

    async def _write(self, point: str, value: Value) -> Reading:
        back = await self.points.write(point, value)
        self._readings[point] = back
        return back

    async def _write_revert(self, point: str) -> None:
        """Set the device's fallback timer, unless it already holds `revert_s`."""
        if not self.has(point):
            return
        spec = self._point(point)
        seconds = _clamp(self.revert_s, spec.range if spec else None)
        if _number(self.reading(point)) != round(seconds):
            await self._write(point, round(seconds))

    def _point(self, point: str) -> Point | None:
        return self.device_map.points.get(point)

    def _unusable(self, reason: str, unit: str = "W") -> Reading:
        return Reading.invalid(reason, unit, self._clock())


class _HeartbeatMixin(RoleDriver):
    """The controller's heartbeat: a counter rewritten every cycle, wrapping at the top of
    the point's range; a device that sees it stop leaves remote control."""

    _beat: int | None = None

    async def heartbeat(self) -> Reading:
        if not self.has("heartbeat"):
            return self._unusable(f"heartbeat: {NOT_IN_MAP}", "")
        spec = self._point("heartbeat")
        top = int(spec.range[1]) if spec is not None and spec.range is not None else 0xFFFF
        if self._beat is None:
            last = _number(self.reading("heartbeat"))
            self._beat = int(last) if last is not None else 0
        self._beat = (self._beat + 1) % (top + 1)
        return await self._write("heartbeat", self._beat)


class SourceDriver(RoleDriver):
    """A renewable source (PowerSource, Curtailable). Its limit is either a point in W
    (`limit_w`) or a percentage of the rating (`limit_pct` of `p_rated_w`) that acts only
    while `limit_enable` is 1, as SunSpec model 123's WMaxLimPct and WMaxLim_Ena."""

    @property
    def limit_in_percent(self) -> bool:
        return self.has("limit_pct")

    def p_w(self) -> Reading:
        return self.reading("p_w")

    def rating_w(self) -> Reading:
        """The source's rating: `p_rated_w`, else the top of the limit's range."""
        if self.has("p_rated_w"):
            return self.reading("p_rated_w")
        spec = self._point("limit_w")
        if spec is not None and spec.range is not None:
            return Reading.ok(spec.range[1], "W", self._clock())
        return self._unusable(f"p_rated_w: {NOT_IN_MAP}")

    def limit_w(self) -> Reading:
        if not self.limit_in_percent:
            return self.reading("limit_w")
        enable = self.reading("limit_enable")
        if not enable.valid:
            return _derived_invalid("limit_enable", enable, "W")
        rating = self.rating_w()
        if enable.value == 0:
            return _relabel(rating, "p_rated_w", "W")  # no limit in force: the rating
        return _product(self.reading("limit_pct"), "limit_pct", rating, "p_rated_w", 0.01, "W")

    def available_w(self) -> Reading:
        if self.has("available_w"):
            return self.reading("available_w")
        produced = self.p_w()
        p = _number(produced)
        if p is None:
            return produced
        limit_reading, rating_reading = self.limit_w(), self.rating_w()
        limit, rating = _number(limit_reading), _number(rating_reading)
        if limit is None:
            return _derived_invalid("limit", limit_reading, "W", value=p)
        if rating is None:
            return _derived_invalid("p_rated_w", rating_reading, "W", value=p)
        if limit >= rating or p < limit - _LIMIT_MARGIN * rating:
            return produced  # the limit does not hold the source back
        return Reading.invalid(CURTAILED, "W", produced.t_s, p)

    async def set_limit_w(self, limit_w: float) -> Reading:
        rating = self.rating_w()
        top = _positive(rating)
        if top is None:
            return _derived_invalid("p_rated_w", rating, "W", "cannot convert the limit: ")
        target = min(max(limit_w, 0.0), top) if math.isfinite(limit_w) else top
        await self._write_revert("limit_revert_s")
        if not self.limit_in_percent:
            spec = self._point("limit_w")
            return await self._write("limit_w", _clamp(target, spec.range if spec else None))
        spec = self._point("limit_pct")
        pct = _clamp(100.0 * target / top, spec.range if spec else (0.0, 100.0))
        back = await self._write("limit_pct", pct)
        await self._write("limit_enable", 1)
        return _product(back, "limit_pct", rating, "p_rated_w", 0.01, "W")


class PvDriver(SourceDriver):
    """A PV converter (SunSpec 103/120/123 or a vendor map)."""

    role = "pv"


class WindDriver(SourceDriver, _HeartbeatMixin):
    """A wind turbine: its possible power is a point of its own (`available_w`)."""

    role = "wind"


class BatteryDriver(_HeartbeatMixin):
    """A battery (Battery, BatteryControl, DroopControl, Heartbeat), SunSpec 802 and 124.

    A setpoint p_w is written as StorCtl_Mod = both bits with InWRte = charge share of
    WChaMax and OutWRte = discharge share of WDisChaRteMax, the other one 0, so that the
    battery neither charges nor discharges beyond what the controller asked.
    """

    role = "bess"

    def p_w(self) -> Reading:
        return self.reading("p_w")

    def soc(self) -> Reading:
        return _scaled(self.reading("soc"), 0.01, "")

    def limits_w(self) -> tuple[Reading, Reading]:
        return self.reading("p_charge_max_w"), self.reading("p_discharge_max_w")

    async def set_power_w(self, p_w: float) -> Reading:
        charge_base = self.reading("charge_limit_w")
        discharge_base = self.reading("p_discharge_max_w")
        needed = [("charge_limit_w", charge_base)] if p_w < 0 else []
        needed += [("p_discharge_max_w", discharge_base)] if p_w > 0 else []
        for name, base in needed:
            if _positive(base) is None:
                return _derived_invalid(name, base, "W", "cannot convert the setpoint: ")
        if not math.isfinite(p_w):
            return self._unusable(f"setpoint {p_w} is not a finite number")
        charge_pct = -100.0 * p_w / (_number(charge_base) or 1.0) if p_w < 0 else 0.0
        discharge_pct = 100.0 * p_w / (_number(discharge_base) or 1.0) if p_w > 0 else 0.0
        await self._write_revert("rate_revert_s")
        back_in = await self._write("charge_rate_pct", _clamp(charge_pct, (0.0, 100.0)))
        back_out = await self._write("discharge_rate_pct", _clamp(discharge_pct, (0.0, 100.0)))
        mode = _CHARGE_BIT | _DISCHARGE_BIT
        if _number(self.reading("storage_mode")) != mode:
            await self._write("storage_mode", mode)
        await self.heartbeat()
        return self._setpoint_w(back_in, back_out, charge_base, discharge_base)

    async def set_droop(self, charge_limit_w: float) -> Reading:
        if not math.isfinite(charge_limit_w):
            return self._unusable(f"charge limit {charge_limit_w} is not a finite number")
        spec = self._point("charge_limit_w")
        top = _positive(self.reading("p_charge_max_w"))
        limit = max(charge_limit_w, 0.0) if top is None else min(max(charge_limit_w, 0.0), top)
        await self._write_revert("rate_revert_s")
        back = await self._write("charge_limit_w", _clamp(limit, spec.range if spec else None))
        if _number(self.reading("storage_mode")) != 0:
            await self._write("storage_mode", 0)
        await self.heartbeat()
        return back

    def _setpoint_w(
        self, back_in: Reading, back_out: Reading, charge_base: Reading, discharge_base: Reading
    ) -> Reading:
        """The setpoint the battery holds, W (> 0 discharging), from the rates read back."""
        charge = _number(back_in)
        discharge = _number(back_out)
        for name, reading, value in (
            ("charge_rate_pct", back_in, charge),
            ("discharge_rate_pct", back_out, discharge),
        ):
            if value is None:
                return _derived_invalid(name, reading, "W")
        assert charge is not None and discharge is not None
        total = 0.0
        t_s = min(back_in.t_s, back_out.t_s)
        if charge:
            base = _number(charge_base)
            if base is None:
                return _derived_invalid("charge_limit_w", charge_base, "W")
            total -= charge / 100.0 * base
        if discharge:
            base = _number(discharge_base)
            if base is None:
                return _derived_invalid("p_discharge_max_w", discharge_base, "W")
            total += discharge / 100.0 * base
        return Reading.ok(total, "W", t_s)


class RackDriver(RoleDriver):
    """A GPU rack's BMC (Meter, Curtailable, Rack): its draw and its power cap.

    The cap is clamped to what the BMC says it accepts (`limit_min_w`..`limit_max_w`);
    a BMC that does not say (the legacy Power resource) is bounded by `fallback_range_w`
    (the site's p_min_w..p_max_w for the rack), else by the map's range.
    """

    role = "rack"

    def __init__(
        self,
        points: PointDevice,
        *,
        fallback_range_w: tuple[float, float] | None = None,
        clock: Callable[[], float] = time.monotonic,
        revert_s: float = DEFAULT_REVERT_S,
        slow_period_s: float = DEFAULT_SLOW_PERIOD_S,
    ) -> None:
        super().__init__(points, clock=clock, revert_s=revert_s, slow_period_s=slow_period_s)
        self.fallback_range_w = fallback_range_w

    def p_w(self) -> Reading:
        return self.reading("p_w")

    def limit_w(self) -> Reading:
        return self.reading("limit_w")

    def limit_range_w(self) -> tuple[Reading, Reading]:
        bounds = []
        for i, name in enumerate(("limit_min_w", "limit_max_w")):
            if self.has(name):
                bounds.append(self.reading(name))
            elif self.fallback_range_w is not None:
                bounds.append(Reading.ok(self.fallback_range_w[i], "W", self._clock()))
            else:
                bounds.append(self._unusable(f"{name}: {NOT_IN_MAP}"))
        return bounds[0], bounds[1]

    async def set_limit_w(self, limit_w: float) -> Reading:
        spec = self._point("limit_w")
        low, high = spec.range if spec is not None and spec.range is not None else (0.0, math.inf)
        lowest, highest = (_number(r) for r in self.limit_range_w())
        low = max(low, lowest) if lowest is not None else low
        high = min(high, highest) if highest is not None else high
        if not math.isfinite(limit_w):
            return self._unusable(f"limit {limit_w} is not a finite number")
        return await self._write("limit_w", min(max(limit_w, low), high))


class MeterDriver(RoleDriver):
    """A power meter (Meter)."""

    role = "meter"

    def p_w(self) -> Reading:
        return self.reading("p_w")


_ROLES: dict[str, type[RoleDriver]] = {
    cls.role: cls for cls in (PvDriver, WindDriver, BatteryDriver, RackDriver, MeterDriver)
}


def role_driver(
    points: PointDevice,
    *,
    clock: Callable[[], float] = time.monotonic,
    revert_s: float = DEFAULT_REVERT_S,
    rack_range_w: tuple[float, float] | None = None,
) -> RoleDriver:
    """The role driver for a PointDevice, by the role its maps declare."""
    role = points.maps[0].map.role
    cls = _ROLES[role]
    if cls is RackDriver:
        return RackDriver(points, fallback_range_w=rack_range_w, clock=clock, revert_s=revert_s)
    return cls(points, clock=clock, revert_s=revert_s)


def _number(reading: Reading) -> float | None:
    """The reading's value if it is valid and a number."""
    value = reading.value
    if not reading.valid or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _clamp(value: float, bounds: tuple[float, float] | None) -> float:
    if bounds is None:
        return value
    return min(max(value, bounds[0]), bounds[1])


def _scaled(reading: Reading, factor: float, unit: str) -> Reading:
    """`reading` times `factor`, in `unit`; invalid stays invalid with its reason."""
    value = reading.value
    number = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = value * factor
    if not reading.valid:
        return Reading.invalid(reading.reason, unit, reading.t_s, number)
    if number is None:
        return Reading.invalid(NOT_A_NUMBER, unit, reading.t_s)
    return Reading.ok(number, unit, reading.t_s)


def _relabel(reading: Reading, name: str, unit: str) -> Reading:
    """`reading` standing for another quantity: an invalid one names where it came from."""
    value = _number(reading)
    if value is None:
        return _derived_invalid(name, reading, unit)
    return Reading.ok(value, unit, reading.t_s)


def _positive(reading: Reading) -> float | None:
    value = _number(reading)
    return value if value is not None and value > 0 else None


def _derived_invalid(
    name: str, source: Reading, unit: str, prefix: str = "", value: float | None = None
) -> Reading:
    """Invalid because input `name` is: its reason, or what is wrong with its value."""
    if source.valid:
        reason = NOT_A_NUMBER if _number(source) is None else f"is {source.value}"
    else:
        reason = source.reason or NOT_A_NUMBER
    return Reading.invalid(f"{prefix}{name}: {reason}", unit, source.t_s, value)


def _product(a: Reading, a_name: str, b: Reading, b_name: str, factor: float, unit: str) -> Reading:
    """a x b x factor; invalid (naming the input) when either is."""
    t_s = min(a.t_s, b.t_s)
    x, y = _number(a), _number(b)
    if x is None:
        return _derived_invalid(a_name, a, unit)
    if y is None:
        return _derived_invalid(b_name, b, unit)
    return Reading(x * y * factor, unit, t_s, True)
