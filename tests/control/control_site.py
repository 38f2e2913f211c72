"""A small site for the control tests, and Snapshots of it built by hand."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from edgectl.config.load import validate_site_dict
from edgectl.config.site import Site
from edgectl.control.snapshot import NO_DEVICE, DeviceHealth, RackView, Snapshot, SourceView
from edgectl.devicemaps.readings import STALE, Reading

NOT_IN_MAP = "not in the device map"
V_NOMINAL_V = 800.0

# pv-1, pv-2 and wind-1 are instrumented (1 MW of renewables), pv-3 has no device; two
# batteries and an import-only grid tie hold the bus; racks r1-r3 have a BMC, r4 has none.
SITE: dict[str, Any] = {
    "site": {"id": "unit-small", "v_nominal_v": V_NOMINAL_V},
    "control": {
        "period_s": 1.0,
        "grid_import_max_w": 150_000.0,
        "green_share_min": 0.8,
        "ride_through_s": 300.0,
        "rack_min_off_s": 30.0,
    },
    "daemon": {"recover_s": 10.0, "startup_s": 10.0},
    "bus": [{"id": "main"}, {"id": "pv"}, {"id": "bess"}, {"id": "row-a"}, {"id": "row-b"}],
    "line": [
        {"id": "l-pv", "from": "pv", "to": "main", "r_ohm": 0.002, "i_max_a": 3000.0},
        {"id": "l-bess", "from": "bess", "to": "main", "r_ohm": 0.002, "i_max_a": 3000.0},
        {"id": "l-a", "from": "main", "to": "row-a", "r_ohm": 0.004, "i_max_a": 2000.0},
        {"id": "l-b", "from": "main", "to": "row-b", "r_ohm": 0.004, "i_max_a": 2000.0},
    ],
    "source": [
        {"id": "pv-1", "kind": "pv", "bus": "pv", "p_max_w": 400_000.0, "device": "pv-1"},
        {"id": "pv-2", "kind": "pv", "bus": "pv", "p_max_w": 400_000.0, "device": "pv-2"},
        {"id": "pv-3", "kind": "pv", "bus": "pv", "p_max_w": 100_000.0},
        {"id": "wind-1", "kind": "wind", "bus": "main", "p_max_w": 200_000.0, "device": "wind-1"},
        *(
            {
                "id": f"bess-{k}",
                "kind": "bess",
                "bus": "bess",
                "p_max_w": 500_000.0,
                "p_charge_max_w": 500_000.0,
                "capacity_wh": 2_000_000.0,
                "soc_min": 0.1,
                "soc_max": 0.95,
                "v_ref_v": 800.0,
                "droop_r_ohm": 0.032,
                "i_max_a": 690.0,
                "device": f"bess-{k}",
            }
            for k in (1, 2)
        ),
        {
            "id": "grid",
            "kind": "grid",
            "bus": "main",
            "p_max_w": 150_000.0,
            "p_export_max_w": 0.0,
            "v_ref_v": 780.0,
            "droop_r_ohm": 0.16,
            "i_max_a": 206.0,
        },
    ],
    "rack": [
        {
            "id": rid,
            "bus": bus,
            "p_min_w": 36_000.0,
            "p_max_w": 120_000.0,
            "tier": tier,
            "ramp_w_per_s": 24_000.0,
            **({"device": rid} if rid != "r4" else {}),
        }
        for rid, bus, tier in (
            ("r1", "row-a", 0),
            ("r2", "row-a", 3),
            ("r3", "row-b", 1),
            ("r4", "row-b", 2),
        )
    ],
    "device": [
        *(
            {
                "id": d,
                "protocol": "modbus-tcp",
                "endpoint": "127.0.0.1:15020",
                "unit": u,
                "profile": "sunspec-pv",
            }
            for u, d in enumerate(("pv-1", "pv-2", "bess-1", "bess-2"), start=1)
        ),
        {
            "id": "wind-1",
            "protocol": "opcua",
            "endpoint": "127.0.0.1:14840",
            "profile": "opcua-wind",
            "security": "none",
        },
        *(
            {
                "id": r,
                "protocol": "redfish",
                "endpoint": f"127.0.0.1:1808{i}",
                "profile": "redfish-rack",
            }
            for i, r in enumerate(("r1", "r2", "r3"))
        ),
    ],
}

RENEWABLES = ("pv-1", "pv-2", "pv-3", "wind-1")  # the kernel's order: site order of pv, wind
BATTERIES = ("bess-1", "bess-2")
RACKS = ("r1", "r2", "r3", "r4")


def small_site(*, drop_racks: tuple[str, ...] = (), **tables: Any) -> Site:
    """The site above, less `drop_racks`; each keyword replaces keys of one table."""
    data = copy.deepcopy(SITE)
    data["rack"] = [r for r in data["rack"] if r["id"] not in drop_racks]
    for name, keys in tables.items():
        data[name] = {**data.get(name, {}), **keys}
    return validate_site_dict(data, "<test>")


def ok(value: float, t_s: float, unit: str = "W") -> Reading:
    return Reading.ok(value, unit, t_s)


def stale(t_s: float, unit: str = "W", value: float | None = None) -> Reading:
    """A reading of a device whose last poll failed, as take_snapshot marks it."""
    return Reading.invalid(f"{STALE}: no answer", unit, t_s, value)


def _absent(reason: str, t_s: float, unit: str = "W") -> Reading:
    return Reading.invalid(reason, unit, t_s)


def source_view(site: Site, sid: str, t_s: float, **readings: Reading | float) -> SourceView:
    """One source: given readings (a number is a valid reading at t_s), the rest absent."""
    src = next(s for s in site.sources if s.id == sid)
    default = NOT_IN_MAP if src.device else NO_DEVICE
    values: dict[str, Reading] = {}
    for name, unit in (
        ("p_w", "W"),
        ("available_w", "W"),
        ("limit_w", "W"),
        ("soc", ""),
        ("v_v", "V"),
    ):
        given = readings.get(name)
        if isinstance(given, Reading):
            values[name] = given
        elif given is not None:
            values[name] = ok(float(given), t_s, unit)
        else:
            values[name] = _absent(default, t_s, unit)
    return SourceView(
        id=sid,
        kind=src.kind,
        device=src.device,
        health=DeviceHealth(answered_t_s=t_s if src.device else None),
        **values,
    )


def rack_view(
    site: Site,
    rid: str,
    t_s: float,
    p_w: Reading | float | None,
    limit_w: Reading | float | None = None,
) -> RackView:
    """One rack: its draw and the cap its BMC holds (numbers are valid readings at t_s)."""
    rack = next(r for r in site.racks if r.id == rid)
    if rack.device is None:
        nothing = _absent(NO_DEVICE, t_s)
        return RackView(id=rid, device=None, health=DeviceHealth(), p_w=nothing, limit_w=nothing)

    def as_reading(x: Reading | float | None) -> Reading:
        if isinstance(x, Reading):
            return x
        return _absent(NOT_IN_MAP, t_s) if x is None else ok(float(x), t_s)

    return RackView(
        id=rid,
        device=rid,
        health=DeviceHealth(answered_t_s=t_s),
        p_w=as_reading(p_w),
        limit_w=as_reading(limit_w),
    )


def snapshot(
    site: Site,
    t_s: float,
    *,
    sources: Mapping[str, Mapping[str, Reading | float]] | None = None,
    racks: Mapping[str, Reading | float | None] | None = None,
    limits: Mapping[str, Reading | float | None] | None = None,
) -> Snapshot:
    """A healthy site at t_s, the given readings replacing the defaults below."""
    # Defaults: pv-1 and pv-2 produce and could produce 300 kW, wind-1 150 kW, each battery
    # is at soc 0.6, idle, and measures its bus at 800 V, each instrumented rack draws
    # 50 kW under a 120 kW cap.
    defaults: dict[str, dict[str, Reading | float]] = {
        "pv-1": {"p_w": 300_000.0, "available_w": 300_000.0, "limit_w": 400_000.0},
        "pv-2": {"p_w": 300_000.0, "available_w": 300_000.0, "limit_w": 400_000.0},
        "pv-3": {},
        "wind-1": {"p_w": 150_000.0, "available_w": 150_000.0, "limit_w": 200_000.0},
        "bess-1": {"p_w": 0.0, "soc": 0.6, "v_v": V_NOMINAL_V},
        "bess-2": {"p_w": 0.0, "soc": 0.6, "v_v": V_NOMINAL_V},
        "grid": {},
    }
    for sid, given in (sources or {}).items():
        defaults[sid] = {**defaults[sid], **given}
    draws: dict[str, Reading | float | None] = {"r1": 50_000.0, "r2": 50_000.0, "r3": 50_000.0}
    draws.update(racks or {})
    caps: dict[str, Reading | float | None] = dict.fromkeys(("r1", "r2", "r3"), 120_000.0)
    caps.update(limits or {})
    return Snapshot(
        t_s=t_s,
        sources={s.id: source_view(site, s.id, t_s, **defaults[s.id]) for s in site.sources},
        racks={
            r.id: rack_view(site, r.id, t_s, draws.get(r.id), caps.get(r.id)) for r in site.racks
        },
    )
