"""Estimate: from a frozen snapshot to what dispatch may count on, conservatively.

What an invalid or missing value means, decided once here:

    pv, wind source   available_w when valid. Held back by its own limit (curtailed), only
                      a lower bound is known: that bound plus a probe of PROBE_SHARE of the
                      rating, so that a curtailed source is offered a little more every
                      cycle and shows what it can give. A source whose bus is above the
                      band is held back the same way (its converter derates on overvoltage).
                      Silent, stale or invalid: 0 W (a source that stops answering counts as
                      producing nothing). No device: 0 W.
    bess              soc when valid. Silent: no discharge and no charge are planned with it.
    rack              peak draw over DEMAND_WINDOW_S as its demand, p_max_w when its cap holds
                      it. A rack the controller cannot cap this cycle is a fixed load:
                      no device: p_max_w; silent: its ceiling (the cap it was given, falling no
                      faster than its ramp, as a BMC follows a lowered limit); drawing above its
                      ceiling for NONCOMPLIANT_CYCLES cycles in a row: p_max_w, until it has
                      complied for recover_s. A rack that is off is parked at its lowest cap
                      and its draw there (at most p_min_w) is a fixed load too.
    bus voltage       min and max over the devices that measure it; none valid while some
                      device measures it means the bus measurement is lost.

Everything here is a function of (site, snapshot, memory, now): the memory is what the
controller carries from one cycle to the next (caps in force, draw history, last good
SOC), and only `remember` changes it, after a cycle's decision.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from edgectl.config.site import RENEWABLE_KINDS, Site
from edgectl.control.snapshot import NO_DEVICE, Snapshot
from edgectl.devicemaps.readings import Reading
from edgectl.kernels.dispatch import DispatchParams, FloatArray

# A curtailed source is offered this share of its rating above what it produces.
PROBE_SHARE = 0.05
# Rack demand: the peak draw over this window (GPU load swings with the training step).
DEMAND_WINDOW_S = 10.0
DEMAND_MARGIN = 1.10
# A rack drawing at least this share of its ceiling is held by its cap: it wants more.
# Above 1 / DEMAND_MARGIN, so that a rack given its margin is not taken as held next cycle.
HELD_SHARE = 0.97
# Above its ceiling by this share plus NONCOMPLIANT_SLACK_W, for this many cycles in a row,
# a rack is taken to ignore its limit.
NONCOMPLIANT_SHARE = 0.05
NONCOMPLIANT_SLACK_W = 2_000.0
NONCOMPLIANT_CYCLES = 3
# More than this share of the renewable rating silent: "most sources lost".
SOURCES_LOST_SHARE = 0.5


def _number(reading: Reading) -> float | None:
    value = reading.value
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _usable(reading: Reading, now_s: float, stale_s: float) -> float | None:
    """The reading's value if it is valid, a number and fresh enough."""
    if not reading.usable(now_s, stale_s):
        return None
    return _number(reading)


@dataclass
class RackMemory:
    """What the controller carries for one rack between cycles."""

    cap_w: float  # the cap decided last (the one written), W
    on: bool
    off_since_s: float | None = None  # None: off since before the daemon knew
    ceiling_w: float = math.inf  # what the rack may still draw while its BMC follows
    net_limit_w: float = math.inf  # the cap the power flow last cut it to, recovering
    # The draws over the demand window: their times and values apart, so that the peak
    # and the mean are C-speed max() and sum() over plain floats.
    draw_t_s: deque[float] = field(default_factory=deque)
    draws: deque[float] = field(default_factory=deque)  # p_w
    over_cycles: int = 0  # consecutive cycles above the ceiling
    noncompliant_since_s: float | None = None
    complied_since_s: float | None = None


@dataclass
class BatteryMemory:
    soc: float | None = None  # last valid state of charge
    t_s: float = -math.inf  # when it was read
    held: bool = False  # pinned at a setpoint because it reached its reserve
    hold_w: float = 0.0  # the setpoint while held, W (ramps down to the target)


@dataclass
class Memory:
    """The controller's state carried across cycles, by site id."""

    racks: dict[str, RackMemory] = field(default_factory=dict)
    batteries: dict[str, BatteryMemory] = field(default_factory=dict)
    last_t_s: float | None = None


@dataclass(frozen=True)
class Problem:
    """An input the cycle could not trust, and what it assumed instead."""

    element: str
    reason: str

    def __str__(self) -> str:
        return f"{self.element}: {self.reason}"


@dataclass
class Estimate:
    """What dispatch may count on this cycle, in the kernel's array order."""

    renewable_available_w: FloatArray
    renewable_held: np.ndarray  # bool: held back now, its availability a probed lower bound
    battery_soc: FloatArray
    battery_p_w: FloatArray  # measured, > 0 discharging; NaN when not known
    battery_p_max_w: FloatArray  # discharge limit now (0 for a lost battery)
    battery_p_charge_max_w: FloatArray
    battery_lost: list[bool]
    rack_demand_w: FloatArray
    rack_cap_w: FloatArray
    rack_on: np.ndarray
    rack_off_s: FloatArray
    rack_fixed_w: FloatArray  # the fixed load each rack stands for (0 when controllable)
    rack_controllable: np.ndarray  # bool: its cap is decided and written this cycle
    rack_draw_w: FloatArray  # best knowledge of what each rack draws now
    bus_v_min_v: float | None
    bus_v_max_v: float | None
    bus_measured: bool  # some device measures the bus voltage
    problems: list[Problem]  # DEGRADED: inputs lost or distrusted
    safe_reasons: list[str]  # SAFE: the site picture cannot be trusted
    notes: list[Problem]  # permanent facts (no device), not a degradation
    green_available_w: float = 0.0  # R + D: what the green-share budget is a share of

    @property
    def fixed_load_w(self) -> float:
        return float(self.rack_fixed_w.sum())


@functools.lru_cache(maxsize=65_536)
def _note(element: str, reason: str) -> Problem:
    """A permanent fact, made once: every cycle (and its record) shares the one object."""
    return Problem(element, reason)


def default_stale_s(site: Site) -> float:
    if site.daemon.stale_s is not None:
        return site.daemon.stale_s
    return max(3.0 * site.control.period_s, 2.0)


def estimate(
    site: Site, params: DispatchParams, snap: Snapshot, memory: Memory, *, stale_s: float
) -> Estimate:
    """Turn the snapshot into kernel inputs, saying what was lost and what was assumed."""
    now = snap.t_s
    problems: list[Problem] = []
    notes: list[Problem] = []
    safe: list[str] = []

    renewables = [s for s in site.sources if s.kind in RENEWABLE_KINDS]
    available = np.zeros(len(renewables))
    lower_bound = np.zeros(len(renewables), dtype=bool)
    v_high = {b.id: site.control.v_max_pu * site.bus_v_nominal_v(b) for b in site.buses}
    lost_rating = instrumented_rating = 0.0
    for k, src in enumerate(renewables):
        view = snap.sources[src.id]
        if src.device is None:
            notes.append(_note(src.id, f"{NO_DEVICE}: counts as producing nothing"))
            continue
        instrumented_rating += src.p_max_w
        p = _usable(view.p_w, now, stale_s)
        if p is None:
            lost_rating += src.p_max_w
            problems.append(Problem(src.id, f"p_w {view.p_w.reason or 'stale'}: counts as 0 W"))
            continue
        a = _usable(view.available_w, now, stale_s)
        v = _usable(view.v_v, now, stale_s)
        if v is not None and v > v_high[src.bus] and view.available_w.valid:
            a = None  # its converter derates on the overvoltage: held back by the bus
        if a is None:
            lower = _number(view.available_w)
            held = v is not None and v > v_high[src.bus]
            if lower is not None and (held or view.available_w.reason.startswith("curtailed")):
                a = lower + PROBE_SHARE * src.p_max_w
                lower_bound[k] = True
            else:
                a = p  # what it produces now is all that is known
        available[k] = min(max(a, 0.0), src.p_max_w)
    if instrumented_rating > 0 and lost_rating > SOURCES_LOST_SHARE * instrumented_rating:
        safe.append(
            f"most renewable sources lost ({lost_rating / 1e3:,.0f} of "
            f"{instrumented_rating / 1e3:,.0f} kW silent)"
        )

    batteries = site.sources_of("bess")
    soc = np.zeros(len(batteries))
    battery_p = np.full(len(batteries), math.nan)
    p_max = params.battery_p_max_w.copy()
    p_charge = params.battery_p_charge_max_w.copy()
    lost: list[bool] = []
    for k, src in enumerate(batteries):
        view = snap.sources[src.id]
        mem = memory.batteries.setdefault(src.id, BatteryMemory())
        value = _usable(view.soc, now, stale_s)
        if value is None:
            lost.append(True)
            why = NO_DEVICE if src.device is None else (view.soc.reason or "stale")
            problems.append(Problem(src.id, f"soc {why}: no charge or discharge planned"))
            soc[k] = src.soc_min or 0.0
            p_max[k] = p_charge[k] = 0.0
            continue
        lost.append(False)
        soc[k] = min(max(value, 0.0), 1.0)
        measured = _usable(view.p_w, now, stale_s)
        battery_p[k] = math.nan if measured is None else measured
        mem.soc, mem.t_s = soc[k], now
    if batteries and all(lost):
        safe.append("every battery lost")

    v_values = [
        v
        for s in site.sources
        if (v := _usable(snap.sources[s.id].v_v, now, stale_s)) is not None and v > 0
    ]
    measured = any(
        snap.sources[s.id].v_v.reason != NO_DEVICE
        and "not in the device map" not in snap.sources[s.id].v_v.reason
        for s in site.sources
    )
    if measured and not v_values:
        safe.append("bus voltage measurement lost")

    n = params.n_racks
    demand = np.zeros(n)
    cap = np.zeros(n)
    on = np.zeros(n, dtype=np.uint8)
    off_s = np.full(n, math.inf)
    fixed = np.zeros(n)
    controllable = np.zeros(n, dtype=bool)
    draw_now = np.zeros(n)
    dt = 0.0 if memory.last_t_s is None else max(0.0, now - memory.last_t_s)
    for i, rack in enumerate(site.racks):
        rview = snap.racks[rack.id]
        if rack.device is None:
            fixed[i] = draw_now[i] = rack.p_max_w
            notes.append(_note(rack.id, f"{NO_DEVICE}: counts as drawing p_max_w"))
            continue
        rmem = memory.racks.get(rack.id)
        limit = _usable(rview.limit_w, now, stale_s)
        if rmem is None:
            # First sight: the rack runs under whatever cap its BMC holds.
            start = limit if limit is not None else rack.p_max_w
            rmem = RackMemory(cap_w=min(max(start, rack.p_min_w), rack.p_max_w), on=True)
            memory.racks[rack.id] = rmem
        # The ceiling follows a lowered cap no faster than the rack's ramp.
        held_cap = rmem.cap_w if rmem.on else rack.p_min_w
        rmem.ceiling_w = max(held_cap, min(rmem.ceiling_w, rack.p_max_w) - rack.ramp_w_per_s * dt)
        p = _usable(rview.p_w, now, stale_s)
        if p is None:
            fixed[i] = draw_now[i] = rmem.ceiling_w
            problems.append(
                Problem(
                    rack.id,
                    f"p_w {rview.p_w.reason or 'stale'}: counts as drawing its cap "
                    f"{rmem.ceiling_w / 1e3:,.1f} kW",
                )
            )
            continue
        draw_now[i] = p
        rmem.draw_t_s.append(now)
        rmem.draws.append(p)
        while rmem.draw_t_s[0] < now - DEMAND_WINDOW_S:
            rmem.draw_t_s.popleft()
            rmem.draws.popleft()
        # One period of lag allowed: a cap lands a cycle after it is decided.
        lag_w = rack.ramp_w_per_s * site.control.period_s
        if _ignores_limit(rmem, p, lag_w, now, site.daemon.recover_s):
            fixed[i] = rack.p_max_w
            if rmem.complied_since_s is None:
                text = (
                    f"draws {p / 1e3:,.1f} kW above its cap {rmem.cap_w / 1e3:,.1f} kW: "
                    "counts as drawing p_max_w"
                )
            else:  # within its cap again, but not yet for recover_s
                kept = now - rmem.complied_since_s
                text = (
                    f"ignored its cap, within it again for {kept:,.0f} of "
                    f"{site.daemon.recover_s:g} s: counts as drawing p_max_w until then"
                )
            problems.append(Problem(rack.id, text))
            continue
        peak = max(rmem.draws)
        want = rack.p_max_w if peak >= HELD_SHARE * rmem.ceiling_w else peak * DEMAND_MARGIN
        demand[i] = min(want, rack.p_max_w)
        controllable[i] = True
        if rmem.on:
            on[i] = 1
            cap[i] = rmem.cap_w
        else:
            # Parked at its lowest cap: what it draws there once its BMC has followed (the
            # batteries carry the few seconds it takes, as they do for any lowered cap).
            fixed[i] = min(p, rack.p_min_w)
            off_s[i] = math.inf if rmem.off_since_s is None else now - rmem.off_since_s
    return Estimate(
        renewable_available_w=available,
        renewable_held=lower_bound,
        battery_soc=soc,
        battery_p_w=battery_p,
        battery_p_max_w=p_max,
        battery_p_charge_max_w=p_charge,
        battery_lost=lost,
        rack_demand_w=demand,
        rack_cap_w=cap,
        rack_on=on,
        rack_off_s=off_s,
        rack_fixed_w=fixed,
        rack_controllable=controllable,
        rack_draw_w=draw_now,
        bus_v_min_v=min(v_values) if v_values else None,
        bus_v_max_v=max(v_values) if v_values else None,
        bus_measured=measured,
        problems=problems,
        safe_reasons=safe,
        notes=notes,
        green_available_w=float(available.sum())
        + float(discharge_limits_w(params, soc, p_max, params.ride_through_s).sum()),
    )


def _ignores_limit(
    mem: RackMemory, p_w: float, lag_w: float, now_s: float, recover_s: float
) -> bool:
    """Track a rack drawing above its ceiling; True while it counts as ignoring its limit."""
    over = p_w > mem.ceiling_w * (1.0 + NONCOMPLIANT_SHARE) + NONCOMPLIANT_SLACK_W + lag_w
    mem.over_cycles = mem.over_cycles + 1 if over else 0
    if mem.over_cycles >= NONCOMPLIANT_CYCLES and mem.noncompliant_since_s is None:
        mem.noncompliant_since_s = now_s
    if mem.noncompliant_since_s is None:
        return False
    if over:
        mem.complied_since_s = None
        return True
    if mem.complied_since_s is None:
        mem.complied_since_s = now_s
    if now_s - mem.complied_since_s >= recover_s:
        mem.noncompliant_since_s = mem.complied_since_s = None
        return False
    return True


def discharge_limits_w(
    params: DispatchParams, soc: FloatArray, p_max_w: FloatArray, ride_through_s: float
) -> FloatArray:
    """Each battery's discharge limit this cycle: rule 1 of the dispatch kernel."""
    capacity = params.battery_capacity_wh
    reserve = params.battery_soc_min + p_max_w * ride_through_s / 3600.0 / capacity
    room = np.maximum(soc - reserve, 0.0) * params.battery_capacity_wh * 3600.0 / params.period_s
    limit: FloatArray = np.minimum(p_max_w, room)
    return limit


def charge_limits_w(params: DispatchParams, soc: FloatArray, p_charge_w: FloatArray) -> FloatArray:
    """Each battery's charge limit this cycle: rule 1 of the dispatch kernel."""
    room = np.maximum(params.battery_soc_max - soc, 0.0) * params.battery_capacity_wh * 3600.0
    limit: FloatArray = np.minimum(p_charge_w, room / params.period_s)
    return limit


def reserve_soc(params: DispatchParams) -> FloatArray:
    """The state of charge below which a battery is held: soc_min plus its ride-through."""
    reserve: FloatArray = (
        params.battery_soc_min
        + params.battery_p_max_w * params.ride_through_s / 3600.0 / params.battery_capacity_wh
    )
    return reserve
