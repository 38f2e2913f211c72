"""The site's DC network as the power-flow kernel sees it, and results named by site ids.

Sign convention at this edge: every device reports its natural positive (a source's
output >= 0, a rack's draw >= 0, a battery's p_w > 0 discharging). The solver wants
injections into the bus positive, so racks enter with a minus sign here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgectl.config.site import RENEWABLE_KINDS, Site, Source
from edgectl.kernels.powerflow import (
    FloatArray,
    Implementation,
    PowerFlow,
    PowerFlowResult,
    Topology,
)


@dataclass(frozen=True)
class SiteNetwork:
    """Index maps between site ids and solver arrays, plus the solver itself."""

    site: Site
    bus_index: dict[str, int]
    droop_sources: list[Source]  # in solver order
    fixed_sources: list[Source]  # constant-power sources (pv, wind, or a droop source pinned)
    powerflow: PowerFlow

    def injections(
        self, source_p_w: Mapping[str, float], rack_p_w: Mapping[str, float]
    ) -> FloatArray:
        """Bus injections (W, into the bus) from fixed-source outputs and rack draws."""
        s = np.zeros(len(self.bus_index))
        for src in self.fixed_sources:
            s[self.bus_index[src.bus]] += source_p_w[src.id]
        for rack in self.site.racks:
            s[self.bus_index[rack.bus]] -= rack_p_w[rack.id]
        return s


def build_network(
    site: Site,
    *,
    pinned: Mapping[str, float] | None = None,
    implementation: Implementation | None = None,
) -> SiteNetwork:
    """Network of `site`; droop sources named in `pinned` run at a fixed power instead."""
    pinned = pinned or {}
    bus_index = {bus.id: i for i, bus in enumerate(site.buses)}
    droop = [s for s in site.sources if s.is_droop and s.id not in pinned]
    fixed = [s for s in site.sources if s.kind in RENEWABLE_KINDS or s.id in pinned]
    topology = Topology(
        v_nominal_v=np.array([site.bus_v_nominal_v(b) for b in site.buses]),
        line_from=np.array([bus_index[ln.from_bus] for ln in site.lines], dtype=np.intp),
        line_to=np.array([bus_index[ln.to_bus] for ln in site.lines], dtype=np.intp),
        line_r_ohm=np.array([ln.r_ohm for ln in site.lines], dtype=np.float64),
        droop_bus=np.array([bus_index[s.bus] for s in droop], dtype=np.intp),
        droop_r_ohm=np.array([s.droop_r_ohm for s in droop], dtype=np.float64),
        droop_v_ref_v=np.array([s.v_ref_v for s in droop], dtype=np.float64),
        droop_i_min_a=np.array([s.droop_current_limits_a()[0] for s in droop], dtype=np.float64),
        droop_i_max_a=np.array([s.droop_current_limits_a()[1] for s in droop], dtype=np.float64),
    )
    return SiteNetwork(
        site, bus_index, droop, fixed, PowerFlow(topology, implementation=implementation)
    )


def default_operating_point(site: Site) -> tuple[dict[str, float], dict[str, float]]:
    """Every pv/wind source at p_max_w and every rack drawing p_max_w."""
    sources = {s.id: s.p_max_w for s in site.sources if s.kind in RENEWABLE_KINDS}
    racks = {r.id: r.p_max_w for r in site.racks}
    return sources, racks


def report(
    net: SiteNetwork,
    result: PowerFlowResult,
    source_p_w: Mapping[str, float],
    rack_p_w: Mapping[str, float],
) -> dict[str, Any]:
    """The power-flow result as a JSON-ready dict named by site ids, with its violations."""
    site = net.site
    v_nom = net.powerflow.topology.v_nominal_v
    droop_p = dict(zip((s.id for s in net.droop_sources), result.droop_p_w, strict=True))
    droop_i = dict(zip((s.id for s in net.droop_sources), result.droop_i_a, strict=True))
    saturated = dict(zip((s.id for s in net.droop_sources), result.droop_saturated, strict=True))

    buses = [
        {"id": b.id, "v_v": float(result.v_v[i]), "v_pu": float(result.v_v[i] / v_nom[i])}
        for i, b in enumerate(site.buses)
    ]
    line_loss = result.line_loss_w
    lines = [
        {
            "id": ln.id,
            "from": ln.from_bus,
            "to": ln.to_bus,
            "i_a": float(result.line_i_a[i]),
            "loss_w": float(line_loss[i]),
            "loading": float(abs(result.line_i_a[i]) / ln.i_max_a),
        }
        for i, ln in enumerate(site.lines)
    ]
    sources = []
    for src in site.sources:
        entry: dict[str, Any] = {"id": src.id, "kind": src.kind}
        if src.id in droop_p:
            entry["p_w"] = float(droop_p[src.id]) + 0.0  # + 0.0: no "-0.0" in the output
            entry["i_a"] = float(droop_i[src.id]) + 0.0
            entry["at_current_limit"] = bool(saturated[src.id])
        else:
            entry["p_w"] = float(source_p_w.get(src.id, 0.0))
        sources.append(entry)
    racks = [{"id": r.id, "p_w": float(rack_p_w[r.id])} for r in site.racks]

    out: dict[str, Any] = {
        "site": site.site.id,
        "converged": result.converged,
        "status": result.status.name.lower(),
        "message": result.message,
        "iterations": result.iterations,
        "collapse_margin": result.collapse_margin,
        "losses_w": result.losses_w,
        "buses": buses,
        "lines": lines,
        "sources": sources,
        "racks": racks,
        "violations": violations(site, buses, lines, sources, racks) if result.converged else [],
    }
    return out


def violations(
    site: Site,
    buses: list[dict[str, Any]],
    lines: list[dict[str, Any]],
    sources: list[dict[str, Any]],
    racks: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Voltage band, line ampacity and converter limits broken at a solved operating point."""
    ctl = site.control
    found: list[dict[str, Any]] = []

    def add(kind: str, element: str, value: float, limit: float, message: str) -> None:
        found.append(
            {"kind": kind, "element": element, "value": value, "limit": limit, "message": message}
        )

    for b in buses:
        if b["v_pu"] < ctl.v_min_pu:
            add(
                "voltage",
                b["id"],
                b["v_pu"],
                ctl.v_min_pu,
                f"bus {b['id']} at {b['v_pu']:.4f} pu, below v_min_pu {ctl.v_min_pu}",
            )
        elif b["v_pu"] > ctl.v_max_pu:
            add(
                "voltage",
                b["id"],
                b["v_pu"],
                ctl.v_max_pu,
                f"bus {b['id']} at {b['v_pu']:.4f} pu, above v_max_pu {ctl.v_max_pu}",
            )
    for ln, line in zip(lines, site.lines, strict=True):
        if ln["loading"] > 1.0:
            add(
                "ampacity",
                ln["id"],
                abs(ln["i_a"]),
                line.i_max_a,
                f"line {ln['id']} carries {abs(ln['i_a']):.1f} A, above i_max_a {line.i_max_a:g}",
            )
    by_id = {s.id: s for s in site.sources}
    for entry in sources:
        src = by_id[entry["id"]]
        p = entry["p_w"]
        # At a zero limit (an import-only tie with nothing to import) the converter is
        # idle, not overloaded.
        if entry.get("at_current_limit") and abs(entry["i_a"]) > 0.0:
            add(
                "converter",
                src.id,
                abs(entry["i_a"]),
                src.i_max_a or 0.0,
                f"{src.kind} {src.id} at its current limit i_max_a {src.i_max_a:g}",
            )
        if p > src.p_max_w * (1 + 1e-9):
            add(
                "converter",
                src.id,
                p,
                src.p_max_w,
                f"{src.kind} {src.id} delivers {p / 1e3:.1f} kW, above p_max_w {src.p_max_w:g}",
            )
        charge_max = src.p_charge_max_w if src.kind == "bess" else None
        if charge_max is not None and -p > charge_max * (1 + 1e-9):
            add(
                "converter",
                src.id,
                -p,
                charge_max,
                f"bess {src.id} charges at {-p / 1e3:.1f} kW, above p_charge_max_w {charge_max:g}",
            )
    rack_max = {r.id: r.p_max_w for r in site.racks}
    for r in racks:
        cap = rack_max[r["id"]]
        if r["p_w"] > cap * (1 + 1e-9):
            add(
                "rack",
                r["id"],
                r["p_w"],
                cap,
                f"rack {r['id']} draws {r['p_w'] / 1e3:.1f} kW, above p_max_w {cap:g}",
            )
    return found
