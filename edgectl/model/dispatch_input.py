"""From a site and a snapshot to the arrays of the dispatch kernel, refusing bad snapshots.

A snapshot (JSON) holds one cycle's view of the site:

    {"sources": {"pv-1": {"available_w": 512000.0}, "bess-1": {"soc": 0.63}, ...},
     "racks": {"r01": {"demand_w": 98000.0, "cap_w": 96000.0, "on": true},
               "r02": {"demand_w": 0.0, "cap_w": 0.0, "on": false, "off_s": 120.0}, ...},
     "grid_budget_w": 50000.0,
     "fixed_load_w": 96000.0}

Every pv, wind and bess source and every rack must appear; a grid source may (its
available_w defaults to its p_max_w). off_s is how long an off rack has been off
(absent or null: unknown, as if forever). grid_budget_w is optional (absent or null:
the green-share rule sets the grid budget). fixed_load_w is optional (absent or null:
0): a power in W >= 0 drawn by racks that cannot be capped this cycle, served before
tier 0 (rule 1 of edgectl/kernels/dispatch.py); such racks are listed as off with
demand_w 0. Every problem is collected, then all are raised together as one InputError.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from edgectl.config.site import RENEWABLE_KINDS, Site
from edgectl.errors import InputError, Problem
from edgectl.kernels.dispatch import DispatchInput, DispatchParams, FloatArray

# Keys of a rack entry: required ones and optional ones.
RACK_REQUIRED = ("demand_w", "cap_w", "on")
RACK_OPTIONAL = ("off_s",)
TOP_KEYS = ("sources", "racks", "grid_budget_w", "fixed_load_w")


def params_from_site(site: Site) -> DispatchParams:
    """The per-site constants of the kernel, racks and sources in site order."""
    control = site.control
    renewables = site.sources_of(*RENEWABLE_KINDS)
    batteries = site.sources_of("bess")
    grids = site.sources_of("grid")

    def floats(values: list[float]) -> FloatArray:
        return np.array(values, dtype=np.float64)

    return DispatchParams(
        period_s=control.period_s,
        green_share_min=control.green_share_min,
        ride_through_s=control.ride_through_s,
        rack_on_margin=control.rack_on_margin,
        rack_min_off_s=control.rack_min_off_s,
        grid_import_max_w=control.grid_import_max_w,
        rack_tier=np.array([r.tier for r in site.racks], dtype=np.int8),
        rack_p_min_w=floats([r.p_min_w for r in site.racks]),
        rack_p_max_w=floats([r.p_max_w for r in site.racks]),
        rack_ramp_w_per_s=floats([r.ramp_w_per_s for r in site.racks]),
        renewable_p_max_w=floats([s.p_max_w for s in renewables]),
        # A bess source has these keys by construction of Source; 0.0 only satisfies mypy.
        battery_p_max_w=floats([s.p_max_w for s in batteries]),
        battery_p_charge_max_w=floats([s.p_charge_max_w or 0.0 for s in batteries]),
        battery_capacity_wh=floats([s.capacity_wh or 0.0 for s in batteries]),
        battery_soc_min=floats([s.soc_min or 0.0 for s in batteries]),
        battery_soc_max=floats([s.soc_max or 0.0 for s in batteries]),
        grid_p_max_w=floats([s.p_max_w for s in grids]),
        rack_ids=tuple(r.id for r in site.racks),
        renewable_ids=tuple(s.id for s in renewables),
        battery_ids=tuple(s.id for s in batteries),
        grid_ids=tuple(s.id for s in grids),
    )


def kind_name(value: object) -> str:
    """What a parsed JSON value is, for problem messages: "a string", "null", ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


class _Reader:
    """Collects problems while reading values out of a snapshot."""

    def __init__(self, file: str, at: str = "") -> None:
        self.file = file
        self.at = at  # key path of the snapshot within its file; empty: the whole file
        self.problems: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        where = f"{self.at}.{path}" if self.at and path else self.at or path
        self.problems.append(Problem(self.file, where, message))

    def number(self, path: str, value: object, what: str, *, upper: float = math.inf) -> float:
        """A finite number in [0, upper]; NaN (after adding a problem) when it is not."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.add(path, f"expected {what}, found {kind_name(value)}")
            return math.nan
        x = float(value)
        if not math.isfinite(x):
            self.add(path, f"expected {what}, found {value!r} (must be finite)")
            return math.nan
        if x < 0.0 or x > upper:
            self.add(path, f"expected {what}, found {value!r}")
            return math.nan
        return x

    def entry(
        self, path: str, value: object, allowed: tuple[str, ...]
    ) -> Mapping[str, object] | None:
        """An object, its unknown keys reported; None (after a problem) when not an object."""
        if not isinstance(value, Mapping):
            self.add(
                path, f"expected an object with {', '.join(allowed)}, found {kind_name(value)}"
            )
            return None
        for key in value:
            if key not in allowed:
                self.add(f"{path}.{key}", f"unknown key; expected one of: {', '.join(allowed)}")
        return value

    def section(
        self, data: Mapping[str, object], key: str, needed: list[str], what: str
    ) -> Mapping[str, object] | None:
        """A top-level object keyed by id; None when absent or not an object (reported)."""
        if key not in data:
            if needed:
                self.add(
                    key, f"missing; expected an object with an entry per {what} ({listed(needed)})"
                )
            return None
        value = data[key]
        if not isinstance(value, Mapping):
            self.add(key, f"expected an object keyed by {what} id, found {kind_name(value)}")
            return None
        return value


def listed(ids: list[str], limit: int = 5) -> str:
    """The first few ids, and how many there are when that is not all of them."""
    shown = ", ".join(ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def input_from_snapshot(
    site: Site, params: DispatchParams, data: object, file: str, *, at: str = ""
) -> DispatchInput:
    """Validate a parsed snapshot against the site and turn it into kernel arrays."""
    # `at`: the key path of the snapshot within its file, prefixed to every problem's.
    rd = _Reader(file, at)
    if not isinstance(data, Mapping):
        rd.add("", f"expected a JSON object with sources and racks, found {kind_name(data)}")
        raise InputError(rd.problems)
    for key in data:
        if key not in TOP_KEYS:
            rd.add(str(key), f"unknown key; expected one of: {', '.join(TOP_KEYS)}")

    kinds = {s.id: s.kind for s in site.sources}
    needed_sources = [s.id for s in site.sources if s.kind != "grid"]
    sources = rd.section(data, "sources", needed_sources, "source")
    available = np.zeros(params.n_renewables, dtype=np.float64)
    soc = np.zeros(params.n_batteries, dtype=np.float64)
    grid = params.grid_p_max_w.copy()
    for sid, raw in (sources or {}).items():
        path = f"sources.{sid}"
        if sid not in kinds:
            rd.add(path, f"unknown source; the site has: {listed(list(kinds))}")
            continue
        group, index = params.source_index[sid]
        key = "soc" if group == "battery" else "available_w"
        entry = rd.entry(path, raw, (key,))
        if entry is None:
            continue
        if key not in entry:
            what = "a state of charge 0..1" if key == "soc" else "a power in W >= 0"
            rd.add(f"{path}.{key}", f"missing; expected {what} for {kinds[sid]} source {sid}")
            continue
        if group == "battery":
            soc[index] = rd.number(f"{path}.soc", entry[key], "a state of charge 0..1", upper=1.0)
        elif group == "renewable":
            available[index] = rd.number(f"{path}.available_w", entry[key], "a power in W >= 0")
        else:
            grid[index] = rd.number(f"{path}.available_w", entry[key], "a power in W >= 0")
    for sid in needed_sources:
        if sources is not None and sid not in sources:
            key = "soc" if kinds[sid] == "bess" else "available_w"
            rd.add(
                f"sources.{sid}", f"missing; every {kinds[sid]} source needs an entry with {key}"
            )

    rack_ids = list(params.rack_ids)
    racks = rd.section(data, "racks", rack_ids, "rack")
    n = params.n_racks
    demand = np.zeros(n, dtype=np.float64)
    cap = np.zeros(n, dtype=np.float64)
    on = np.zeros(n, dtype=np.uint8)
    off_s = np.full(n, math.inf, dtype=np.float64)
    allowed = RACK_REQUIRED + RACK_OPTIONAL
    for rid, raw in (racks or {}).items():
        path = f"racks.{rid}"
        if rid not in params.rack_index:
            rd.add(path, f"unknown rack; the site has: {listed(rack_ids)}")
            continue
        i = params.rack_index[rid]
        entry = rd.entry(path, raw, allowed)
        if entry is None:
            continue
        for key in RACK_REQUIRED:
            if key not in entry:
                what = "true or false" if key == "on" else "a power in W >= 0"
                rd.add(f"{path}.{key}", f"missing; expected {what}")
        if "demand_w" in entry:
            demand[i] = rd.number(f"{path}.demand_w", entry["demand_w"], "a power in W >= 0")
        if "cap_w" in entry:
            cap[i] = rd.number(f"{path}.cap_w", entry["cap_w"], "a power in W >= 0")
        if "on" in entry:
            value = entry["on"]
            if isinstance(value, bool):
                on[i] = 1 if value else 0
            else:
                rd.add(f"{path}.on", f"expected true or false, found {kind_name(value)}")
        if entry.get("off_s") is not None:
            off_s[i] = rd.number(
                f"{path}.off_s", entry["off_s"], "seconds >= 0 (or null when unknown)"
            )
    if racks is not None:
        for rid in rack_ids:
            if rid not in racks:
                rd.add(
                    f"racks.{rid}", "missing; every rack needs an entry with demand_w, cap_w and on"
                )

    budget = math.nan
    if data.get("grid_budget_w") is not None:
        budget = rd.number(
            "grid_budget_w",
            data["grid_budget_w"],
            "a power in W >= 0 (or null for the green-share rule)",
        )
    fixed_load = 0.0
    if data.get("fixed_load_w") is not None:
        fixed_load = rd.number(
            "fixed_load_w", data["fixed_load_w"], "a power in W >= 0 (or null for none)"
        )

    if rd.problems:
        raise InputError(rd.problems)
    return DispatchInput(
        renewable_available_w=available,
        battery_soc=soc,
        rack_demand_w=demand,
        rack_cap_w=cap,
        rack_on=on,
        rack_off_s=off_s,
        grid_available_w=grid,
        grid_budget_w=budget,
        fixed_load_w=fixed_load,
    )
