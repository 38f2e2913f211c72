"""The status document (GET /v1/status) and the flight recorder (GET /v1/cycles).

Both are built from CycleRecords only when asked for: the cycle keeps its arrays and the
JSON is made on request, so that a site of thousands of racks does not pay for a status
nobody reads. Units are in the key names; times t_s are on the daemon's monotonic clock.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np

from edgectl import __version__
from edgectl.app.pollers import Poller
from edgectl.app.writers import DeviceWriter
from edgectl.config.site import RENEWABLE_KINDS, Site
from edgectl.control.cycle import BatterySetpoint, CycleRecord
from edgectl.control.estimate import default_stale_s
from edgectl.control.states import StateMachine
from edgectl.devicemaps.readings import Reading
from edgectl.kernels.dispatch import DispatchParams
from edgectl.model.dispatch_output import overrides, report

RECORDER_FORMAT = "edgectl-cycles/1"
# Cycle times kept for the percentiles of the status document.
TIMING_WINDOW = 600


def _value(reading: Reading) -> float | None:
    v = reading.value
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


class CycleTimes:
    """Compute times of the last cycles, and the overruns."""

    def __init__(self) -> None:
        self.times_s: deque[float] = deque(maxlen=TIMING_WINDOW)
        self.overruns = 0
        self.max_s = 0.0

    def add(self, compute_s: float) -> None:
        self.times_s.append(compute_s)
        self.max_s = max(self.max_s, compute_s)

    def as_dict(self, count: int, period_s: float) -> dict[str, Any]:
        times = np.array(self.times_s) * 1e3
        return {
            "count": count,
            "period_s": period_s,
            "last_ms": float(times[-1]) if times.size else None,
            "p50_ms": float(np.percentile(times, 50)) if times.size else None,
            "p99_ms": float(np.percentile(times, 99)) if times.size else None,
            "max_ms": self.max_s * 1e3,
            "overruns": self.overruns,
        }


def status_document(
    site: Site,
    record: CycleRecord | None,
    *,
    states: StateMachine,
    times: CycleTimes,
    pollers: Mapping[str, Poller],
    writers: Mapping[str, DeviceWriter],
    green_share: float | None,
    energy_wh: Mapping[str, float],
    uptime_s: float,
    now_s: float,
) -> dict[str, Any]:
    """GET /v1/status: the state, cycle statistics, every source and rack, the decision."""
    doc: dict[str, Any] = {
        "site": site.site.id,
        "version": __version__,
        "state": states.state.name,
        "state_reason": states.reason,
        "state_since_s": states.since_s,
        "state_age_s": now_s - states.since_s,
        "uptime_s": uptime_s,
        "transitions": [t.as_dict() for t in states.history[-20:]],
        "cycle": times.as_dict(record.cycle if record else 0, site.control.period_s),
        "bus": {"v_min_v": None, "v_max_v": None, "v_min_pu": None, "v_max_pu": None},
        "sources": {},
        "racks": {},
        "devices": {},
        "green": {
            "share_rolling": green_share,
            "window_s": site.control.green_window_s,
            "green_share_min": site.control.green_share_min,
            "grid_budget_w": None,
            "energy_wh": dict(energy_wh),
        },
        "decision": None,
    }
    for device_id, poller in pollers.items():
        writer = writers.get(device_id)
        doc["devices"][device_id] = {
            "answered_age_s": None
            if poller.health.answered_t_s is None
            else now_s - poller.health.answered_t_s,
            "error": poller.health.error,
            "polls": poller.polls,
            "poll_errors": poller.errors,
            "writes": writer.status.writes if writer else 0,
            "write_errors": writer.status.failures if writer else 0,
            "write_error": writer.status.error if writer else "",
        }
    if record is None:
        return doc
    est, result = record.estimate, record.result
    v_nom = site.site.v_nominal_v
    measured = est.bus_v_min_v is not None
    doc["bus"] = {
        "v_min_v": est.bus_v_min_v,
        "v_max_v": est.bus_v_max_v,
        "v_min_pu": est.bus_v_min_v / v_nom if est.bus_v_min_v is not None else None,
        "v_max_pu": est.bus_v_max_v / v_nom if est.bus_v_max_v is not None else None,
        "measured": measured,
        "verified_v_min_v": record.verification.v_min_v or None,
        "verified_v_max_v": record.verification.v_max_v or None,
    }
    doc["green"]["grid_budget_w"] = _finite(record.grid_budget_w)
    doc["green"]["grid_w"] = record.grid_w
    renewables = [s for s in site.sources if s.kind in RENEWABLE_KINDS]
    ren_index = {s.id: i for i, s in enumerate(renewables)}
    bat_index = {s.id: i for i, s in enumerate(site.sources_of("bess"))}
    setpoints = record.setpoints
    for src in site.sources:
        view = record.snapshot.sources[src.id]
        reading = view.soc if src.kind == "bess" else view.p_w
        entry: dict[str, Any] = {
            "kind": src.kind,
            "device": src.device,
            "valid": reading.usable(record.t_s, default_stale_s(site)),
            "reason": reading.reason,
            "age_s": record.t_s - reading.t_s if reading.valid else None,
            "p_w": _value(view.p_w),
        }
        if src.id in ren_index:
            i = ren_index[src.id]
            entry["available_w"] = float(est.renewable_available_w[i])
            entry["limit_w"] = _value(view.limit_w)
            entry["curtailed_w"] = float(result.renewable_curtailed_w[i])
            entry["planned_w"] = float(result.renewable_p_w[i])
        if src.id in bat_index:
            k = bat_index[src.id]
            entry["soc"] = _value(view.soc)
            entry["planned_w"] = float(result.battery_p_w[k])
            sp = setpoints.batteries.get(src.id) if setpoints else None
            entry["mode"] = sp.mode if isinstance(sp, BatterySetpoint) else None
            entry["charge_limit_w"] = sp.charge_limit_w if sp else None
        doc["sources"][src.id] = entry
    for i, rack in enumerate(site.racks):
        rview = record.snapshot.racks[rack.id]
        on = bool(record.rack_on[i]) if est.rack_controllable[i] else None
        cap = float(record.caps_w[i])
        demand = float(est.rack_demand_w[i])
        doc["racks"][rack.id] = {
            "tier": rack.tier,
            "device": rack.device,
            "valid": rview.p_w.usable(record.t_s, default_stale_s(site)),
            "reason": rview.p_w.reason,
            "age_s": record.t_s - rview.p_w.t_s if rview.p_w.valid else None,
            "p_w": _value(rview.p_w),
            "cap_w": cap if est.rack_controllable[i] else None,
            "demand_w": demand if est.rack_controllable[i] else None,
            "fixed_w": float(est.rack_fixed_w[i]) or None,
            "on": on,
            "capped": bool(on and cap < demand - 1.0),
            "p_max_w": rack.p_max_w,
        }
    doc["decision"] = {
        "cycle": record.cycle,
        "t_s": record.t_s,
        "supply_w": float(result.supply_w),
        "served_w": float(result.served_w),
        "fixed_load_w": est.fixed_load_w,
        "shed": int(result.shed),
        "started": int(result.started),
        "reasons": record.reasons,
        "problems": [str(p) for p in est.problems],
        "notes": [str(p) for p in est.notes[:20]],
        "verify": record.verification.as_dict(),
        "compute_ms": record.compute_s * 1e3,
    }
    return doc


def snapshot_json(record: CycleRecord) -> dict[str, Any]:
    """The kernel inputs of a cycle in the format `edgectl dispatch --snapshot` reads."""
    params, inputs = record.params, record.inputs
    sources: dict[str, Any] = {}
    for i, sid in enumerate(params.renewable_ids):
        sources[sid] = {"available_w": float(inputs.renewable_available_w[i])}
    for k, sid in enumerate(params.battery_ids):
        sources[sid] = {"soc": float(inputs.battery_soc[k])}
    racks: dict[str, Any] = {}
    for i, rid in enumerate(params.rack_ids):
        off = float(inputs.rack_off_s[i])
        racks[rid] = {
            "demand_w": float(inputs.rack_demand_w[i]),
            "cap_w": float(inputs.rack_cap_w[i]),
            "on": bool(inputs.rack_on[i]),
            "off_s": off if math.isfinite(off) else None,
        }
    budget = float(inputs.grid_budget_w)
    return {
        "sources": sources,
        "racks": racks,
        "grid_budget_w": budget if math.isfinite(budget) else None,
        "fixed_load_w": float(inputs.fixed_load_w),
    }


def cycle_json(site: Site, record: CycleRecord, base_params: DispatchParams) -> dict[str, Any]:
    """One flight-recorder entry: what the cycle saw, what dispatch and verify decided."""
    out: dict[str, Any] = {
        "cycle": record.cycle,
        "t_s": record.t_s,
        "wall_s": record.wall_s,
        "state": record.state.name,
        "snapshot": snapshot_json(record),
        "dispatch": report(site, record.params, record.inputs, record.result),
        "verified": {
            **record.verification.as_dict(),
            "racks": {
                r.id: float(record.caps_w[i])
                for i, r in enumerate(site.racks)
                if record.estimate.rack_controllable[i]
            },
        },
        "reasons": record.reasons,
    }
    changed = overrides(record.params, base_params)
    if changed is not None:
        out["params"] = changed
    return out


def recorder_document(
    site: Site, records: list[CycleRecord], base_params: DispatchParams
) -> dict[str, Any]:
    return {
        "format": RECORDER_FORMAT,
        "site": site.site.id,
        "cycles": [cycle_json(site, r, base_params) for r in records],
    }
