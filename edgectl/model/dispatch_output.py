"""A dispatch decision as plain data, and site constants a recorded cycle changed.

`report` is what `edgectl dispatch --json` prints and what the daemon's flight recorder keeps
for every cycle, so that a replay compares like with like. A cycle the daemon ran with
changed constants (a battery lost: its limits 0; SAFE: the ride-through as its discharge
limit; a lease: the leased rack's floor) records them under "params"; `with_overrides`
applies them for the replay.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from edgectl.config.site import Site
from edgectl.errors import InputError, Problem
from edgectl.kernels.dispatch import DispatchInput, DispatchParams, DispatchResult

OVERRIDE_ARRAYS = ("battery_p_max_w", "battery_p_charge_max_w")


def report(
    site: Site, params: DispatchParams, inputs: DispatchInput, result: DispatchResult
) -> dict[str, Any]:
    """The decision as plain data, entries named by id, sources in site order."""
    sources: list[dict[str, Any]] = []
    for src in site.sources:
        group, i = params.source_index[src.id]
        if group == "renewable":
            p_w, curtailed_w = result.renewable_p_w[i], result.renewable_curtailed_w[i]
        elif group == "battery":
            p_w, curtailed_w = result.battery_p_w[i], 0.0
        else:
            p_w, curtailed_w = result.grid_p_w[i], 0.0
        sources.append(
            {"id": src.id, "kind": src.kind, "p_w": float(p_w), "curtailed_w": float(curtailed_w)}
        )
    racks = [
        {
            "id": rid,
            "tier": int(params.rack_tier[i]),
            "cap_w": float(result.rack_cap_w[i]),
            "on": bool(result.rack_on[i]),
            "demand_w": float(inputs.rack_demand_w[i]),
        }
        for i, rid in enumerate(params.rack_ids)
    ]
    return {
        "racks": racks,
        "sources": sources,
        "grid_w": float(result.grid_p_w.sum()),
        "served_w": result.served_w,
        "unserved_w_by_tier": [float(x) for x in result.unserved_w_by_tier],
        "served_w_by_tier": [float(x) for x in result.served_w_by_tier],
        "demand_w_by_tier": [float(x) for x in result.demand_w_by_tier],
        "supply_w": result.supply_w,
        "fixed_load_w": float(inputs.fixed_load_w),
        "shed": result.shed,
        "started": result.started,
        "compiled": result.compiled,
    }


def overrides(params: DispatchParams, base: DispatchParams) -> dict[str, Any] | None:
    """The constants in which `params` differs from `base`, as a record's "params"."""
    floors = np.flatnonzero(params.rack_p_min_w != base.rack_p_min_w)
    changed = (
        params.ride_through_s != base.ride_through_s
        or floors.size > 0
        or any(
            not np.array_equal(getattr(params, name), getattr(base, name))
            for name in OVERRIDE_ARRAYS
        )
    )
    if not changed:
        return None
    out: dict[str, Any] = {"ride_through_s": params.ride_through_s}
    for name in OVERRIDE_ARRAYS:
        out[name] = dict(zip(params.battery_ids, map(float, getattr(params, name)), strict=True))
    if floors.size:
        # Leased racks only: a lease raises the rack's floor for the cycle.
        out["rack_p_min_w"] = {params.rack_ids[i]: float(params.rack_p_min_w[i]) for i in floors}
    return out


def with_overrides(params: DispatchParams, data: object, file: str, path: str) -> DispatchParams:
    """`params` with a record's "params" applied; InputError naming the key when bad."""
    if data is None:
        return params
    problems: list[Problem] = []
    if not isinstance(data, Mapping):
        raise InputError([Problem(file, path, "expected an object of site constants")])
    changes: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{path}.{key}"
        if key == "ride_through_s":
            if _power(value):
                changes[key] = float(value)
            else:
                problems.append(Problem(file, where, "expected seconds >= 0"))
        elif key in OVERRIDE_ARRAYS:
            if not isinstance(value, Mapping) or set(value) != set(params.battery_ids):
                ids = ", ".join(params.battery_ids)
                problems.append(Problem(file, where, f"expected an entry per battery ({ids})"))
                continue
            bad = [b for b in params.battery_ids if not _power(value[b])]
            if bad:
                problems.append(Problem(file, f"{where}.{bad[0]}", "expected a power in W >= 0"))
                continue
            changes[key] = np.array([float(value[b]) for b in params.battery_ids])
        elif key == "rack_p_min_w":
            if not isinstance(value, Mapping) or not all(
                k in params.rack_index and _power(v) for k, v in value.items()
            ):
                problems.append(Problem(file, where, "expected rack ids and powers in W >= 0"))
                continue
            floors = params.rack_p_min_w.copy()
            for rid, w in value.items():
                floors[params.rack_index[rid]] = float(w)
            changes[key] = floors
        else:
            allowed = ", ".join(("ride_through_s", *OVERRIDE_ARRAYS, "rack_p_min_w"))
            problems.append(Problem(file, where, f"unknown key; expected one of: {allowed}"))
    if problems:
        raise InputError(problems)
    return dataclasses.replace(params, **changes)


def _power(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )
