"""The availability report: how much green compute the site can take now and in the next hour.

Built from the last CycleRecord when a report is due (`ReportSchedule`), never per cycle.
The schema is schemas/availability-report.v1.json; docs/scheduler.md explains it to
scheduler authors. Powers in W, energies in Wh, times in s, shares 0..1.

What the figures mean, decided once here:

    renewable_w     what the renewables can give now (the estimate's availability; a source
                    held back by its limit counts its probed lower bound, a silent one 0 W)
    battery_w       what the batteries sustain above their reserve (soc_min plus the
                    ride-through at full power) for the next hour, each capped by its
                    discharge limit now: the same horizon as the forecast, so that the
                    scheduler can count it at every step at once
    green_w         renewable_w + battery_w; the grid is never counted (the report is about
                    green compute, and the grid is a capped backup for what is committed)
    committed_w     the caps in force of the racks that are on, plus the fixed loads (racks
                    that cannot be capped, parked racks' draw at their floor)
    leases_pending_w  leased power not yet inside the caps (granted since the cycle ran)
    available_w     green_w - committed_w - leases_pending_w, at least 0; 0 in STARTING,
                    SAFE and STOPPING, when the site takes no new work
    headroom_w[t]   what racks of tier t could still take: the sum of their room (p_max_w -
                    cap for a rack on, p_max_w - its parked draw for a parked rack that may
                    start), limited by available_w
    ride-through    energy above soc_min / the batteries' discharge now (null when they do
                    not discharge), and at full load: / min(every rack at p_max_w, their
                    discharge limits)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from edgectl.config.site import RENEWABLE_KINDS, Site
from edgectl.control.cycle import CycleRecord
from edgectl.control.estimate import reserve_soc
from edgectl.control.states import State
from edgectl.kernels.dispatch import TIERS
from edgectl.model.dispatch_input import params_from_site
from edgectl.uplink.forecast import HORIZON_S, METHOD, Forecaster, Step, battery_sustain_w

REPORT_SCHEMA = "edgectl/availability-report/1"
# The states in which the site takes new work and grants leases.
ACCEPTING_STATES = frozenset({State.NORMAL, State.DEGRADED})
# Below this a rack's room, a discharge or a grant is noise, W.
MIN_POWER_W = 1.0


def iso_utc(wall_s: float) -> str:
    """Unix time as ISO 8601 UTC with milliseconds: 2025-06-21T10:00:00.000Z."""
    text = datetime.fromtimestamp(wall_s, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def renewable_rating_w(site: Site) -> float:
    """The rating of the renewables the controller can see (those with a device), W."""
    return sum(s.p_max_w for s in site.sources_of(*RENEWABLE_KINDS) if s.device is not None)


def observe(forecaster: Forecaster, site: Site, record: CycleRecord) -> None:
    """Feed one cycle's renewable availability to the forecaster (call every cycle)."""
    est = record.estimate
    complete = True
    if est.problems:
        renewables = {s.id for s in site.sources_of(*RENEWABLE_KINDS)}
        complete = not any(p.element in renewables for p in est.problems)
    forecaster.update(record.wall_s, float(est.renewable_available_w.sum()), complete=complete)


def battery_sustain_now_w(site: Site, record: CycleRecord) -> float:
    """What the batteries sustain above their reserve for the forecast's horizon, W."""
    est = record.estimate
    return battery_sustain_w(params_from_site(site), est.battery_soc, est.battery_p_max_w)


@dataclass(frozen=True)
class Headroom:
    """What the lease book grants from: the state and the green power free for leases."""

    state: State
    # green_w - committed_w, with every live lease's power counted as free again (the part
    # of it inside the caps given back): the book takes the other leases off itself.
    green_w: float


@dataclass(frozen=True)
class _Picture:
    """The powers of one cycle the report and the lease book share, W."""

    renewable_w: float
    battery_w: float
    racks_w: float  # caps in force of the racks that are on
    fixed_w: float
    leases_inside_w: float  # leased power the caps already hold
    leases_pending_w: float  # leased power not yet inside the caps

    @property
    def green_w(self) -> float:
        return self.renewable_w + self.battery_w

    @property
    def committed_w(self) -> float:
        return self.racks_w + self.fixed_w


def _picture(
    site: Site, record: CycleRecord, floors: Mapping[str, float] | None, leased_w: float
) -> _Picture:
    est = record.estimate
    on = record.rack_on.astype(bool)
    caps = record.caps_w
    inside = 0.0
    pending = leased_w
    if floors is not None:
        pending = 0.0
        for i, rack in enumerate(site.racks):
            floor = min(floors.get(rack.id, 0.0), rack.p_max_w)
            if floor <= 0.0:
                continue
            held = float(caps[i]) if on[i] else 0.0
            inside += min(floor, held)
            pending += max(0.0, floor - held)
    return _Picture(
        renewable_w=float(est.renewable_available_w.sum()),
        battery_w=battery_sustain_now_w(site, record),
        racks_w=float(caps[on].sum()),
        fixed_w=est.fixed_load_w,
        leases_inside_w=inside,
        leases_pending_w=pending,
    )


def lease_headroom(site: Site, record: CycleRecord, floors: Mapping[str, float]) -> Headroom:
    """What a lease request is granted from, given the live leases' floors by rack."""
    pic = _picture(site, record, floors, 0.0)
    return Headroom(record.state, pic.green_w - pic.committed_w + pic.leases_inside_w)


def _racks_with_room(
    site: Site, record: CycleRecord, available_w: float
) -> tuple[list[dict[str, Any]], list[float]]:
    """The racks able to take more work now, and the room per tier before available_w."""
    est = record.estimate
    on = record.rack_on.astype(bool)
    room_by_tier = [0.0] * TIERS
    out: list[dict[str, Any]] = []
    control = site.control
    for i, rack in enumerate(site.racks):
        # A rack the power flow cut this cycle cannot take more until the network allows.
        if not est.rack_controllable[i] or record.verification.reductions.get(rack.id, 0.0) > 0:
            continue
        if on[i]:
            cap = float(record.caps_w[i])
            room = rack.p_max_w - cap
        else:
            # Parked: it starts once off long enough (shed this cycle: just now) and the
            # spare supply covers its floor with the start margin, as dispatch starts racks.
            off_s = 0.0 if est.rack_on[i] else float(est.rack_off_s[i])
            if off_s < control.rack_min_off_s:
                continue
            if available_w < (1.0 + control.rack_on_margin) * rack.p_min_w:
                continue
            cap = 0.0
            room = rack.p_max_w - float(est.rack_fixed_w[i])
        if room < MIN_POWER_W:
            continue
        room_by_tier[rack.tier] += room
        take = min(room, available_w)
        if take < MIN_POWER_W:
            continue
        out.append(
            {
                "id": rack.id,
                "tier": rack.tier,
                "on": bool(on[i]),
                "cap_w": cap,
                "p_max_w": rack.p_max_w,
                "room_w": room,
                "can_take_w": take,
            }
        )
    return out, room_by_tier


def _batteries(site: Site, record: CycleRecord) -> dict[str, Any]:
    est = record.estimate
    params = params_from_site(site)
    reserve = reserve_soc(params)
    units: list[dict[str, Any]] = []
    energy_min = energy_reserve = capacity_known = soc_weighted = discharge = limits = 0.0
    sustain = 0.0
    measured: list[float] = []
    for k, src in enumerate(site.sources_of("bess")):
        lost = bool(est.battery_lost[k])
        capacity = float(params.battery_capacity_wh[k])
        soc = float(est.battery_soc[k])
        soc_min = float(params.battery_soc_min[k])
        above_min = 0.0 if lost else max(0.0, soc - soc_min) * capacity
        above_reserve = 0.0 if lost else max(0.0, soc - float(reserve[k])) * capacity
        limit = float(est.battery_p_max_w[k])
        p = _finite(float(est.battery_p_w[k]))
        unit_sustain = min(limit, above_reserve * 3600.0 / HORIZON_S)
        units.append(
            {
                "id": src.id,
                "lost": lost,
                "soc": None if lost else soc,
                "soc_min": soc_min,
                "reserve_soc": float(reserve[k]),
                "energy_above_soc_min_wh": above_min,
                "energy_above_reserve_wh": above_reserve,
                "p_w": p,
                "discharge_limit_w": limit,
                "sustain_w": unit_sustain,
                "ride_through_s": above_min * 3600.0 / p
                if p is not None and p > MIN_POWER_W
                else None,
                "ride_through_full_load_s": above_min * 3600.0 / limit
                if limit > MIN_POWER_W
                else None,
            }
        )
        energy_min += above_min
        energy_reserve += above_reserve
        sustain += unit_sustain
        limits += limit
        if not lost:
            capacity_known += capacity
            soc_weighted += soc * capacity
        if p is not None:
            measured.append(p)
            discharge += max(p, 0.0)
    full_load = min(sum(r.p_max_w for r in site.racks), limits)
    return {
        "soc": soc_weighted / capacity_known if capacity_known > 0 else None,
        "energy_above_soc_min_wh": energy_min,
        "energy_above_reserve_wh": energy_reserve,
        "p_w": sum(measured) if measured else None,
        "discharge_limit_w": limits,
        "sustain_w": sustain,
        "ride_through_s": energy_min * 3600.0 / discharge if discharge > MIN_POWER_W else None,
        "ride_through_full_load_s": energy_min * 3600.0 / full_load
        if full_load > MIN_POWER_W
        else None,
        "units": units,
    }


def _quantiles(p10: float, p50: float, p90: float) -> dict[str, float]:
    return {"p10": p10, "p50": p50, "p90": p90}


def _forecast(steps: Sequence[Step], committed_w: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for s in steps:
        out.append(
            {
                "offset_s": s.offset_s,
                "at": iso_utc(s.wall_s),
                "renewable_w": _quantiles(s.renewable_p10_w, s.renewable_p50_w, s.renewable_p90_w),
                "battery_w": s.battery_w,
                "green_w": _quantiles(s.p10_w, s.p50_w, s.p90_w),
                # What more the site could take then, if what is committed now still holds.
                "available_w": _quantiles(
                    max(0.0, s.p10_w - committed_w),
                    max(0.0, s.p50_w - committed_w),
                    max(0.0, s.p90_w - committed_w),
                ),
                "band": "learned" if s.learned else "default",
            }
        )
    return out


def build_report(
    site: Site,
    record: CycleRecord,
    *,
    seq: int,
    wall_s: float,
    forecast: Sequence[Step],
    leases_committed_w: float,
    green_share: float | None,
    lease_floors_w: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The availability report of one cycle (schemas/availability-report.v1.json).

    leases_committed_w is the power of the live leases; with lease_floors_w (LeaseBook.floors)
    the part of it already inside the caps is told apart, without it every leased watt
    counts as not yet committed (the conservative reading).
    """
    pic = _picture(site, record, lease_floors_w, leases_committed_w)
    accepting = record.state in ACCEPTING_STATES
    committed = pic.committed_w + pic.leases_pending_w
    available = max(0.0, pic.green_w - committed) if accepting else 0.0
    racks, room = _racks_with_room(site, record, available) if accepting else ([], [0.0] * TIERS)
    budget = record.grid_budget_w
    return {
        "schema": REPORT_SCHEMA,
        "site": site.site.id,
        "seq": seq,
        "timestamp": iso_utc(wall_s),
        "cycle": record.cycle,
        "cycle_at": iso_utc(record.wall_s),
        "state": record.state.name,
        "accepting": accepting,
        "available_w": available,
        "renewable_w": pic.renewable_w,
        "battery_w": pic.battery_w,
        "green_w": pic.green_w,
        "committed_w": pic.committed_w,
        "racks_committed_w": pic.racks_w,
        "fixed_load_w": pic.fixed_w,
        "leases_w": leases_committed_w,
        "leases_pending_w": pic.leases_pending_w,
        "headroom_w": [min(r, available) for r in room],
        "racks": racks,
        "batteries": _batteries(site, record),
        "green_share": {
            "rolling": green_share,
            "min": site.control.green_share_min,
            "window_s": site.control.green_window_s,
        },
        "grid": {
            "import_w": float(record.grid_w),
            "budget_w": _finite(budget),
            "import_max_w": site.control.grid_import_max_w,
        },
        "forecast_method": METHOD,
        "forecast": _forecast(forecast, committed),
        "reasons": list(record.reasons),
    }


class ReportSchedule:
    """When a report is due: every period_s of the daemon's clock, and at once on every
    change of state (the period then starts again from it)."""

    def __init__(self, period_s: float = 5.0) -> None:
        if not (math.isfinite(period_s) and period_s > 0):
            raise ValueError(f"period_s: expected a number > 0, got {period_s!r}")
        self.period_s = period_s
        self._next_s = -math.inf
        self._state: State | None = None

    def due(self, t_s: float, state: State) -> bool:
        """True when a report is due at t_s; it then counts as sent."""
        changed = state != self._state
        if not changed and t_s < self._next_s:
            return False
        self._state = state
        # On time: the next one a period after this one was due, so reports do not drift;
        # after a state change or a gap of more than a period: a period from now.
        late = t_s - self._next_s >= self.period_s
        self._next_s = t_s + self.period_s if changed or late else self._next_s + self.period_s
        return True
