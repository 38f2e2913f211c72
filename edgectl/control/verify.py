"""Verify: the proposed operating point through the DC power flow, racks reduced until it holds.

The operating point is the worst the decision allows: every rack that is on at its cap,
every fixed load at its assumed draw, renewables at their dispatched output, a battery held
at a setpoint pinned there, the other batteries and the grid tie holding the bus by droop.
It must keep every bus within [v_min_pu, v_max_pu] and every line within i_max_a.

When it does not, the racks that cause it are reduced, and the point is solved again, at
most MAX_PASSES times. Which racks: the linearised network says how much one watt drawn at
each rack's bus lowers the violated bus voltage, or adds to the overloaded line's current
(dV = Z dI with Z the inverse of the conductance matrix, lines plus the droop converters
not at a limit, and a rack's current P / V). Tier 3 racks are reduced first, then 2, 1, 0;
within a tier the most effective rack first, down to its floor (its p_min_w, or what its
ramp allows). Too much voltage is not the racks' doing; it is reported and left to
curtailment and the batteries, and so is a surplus that nothing absorbs (no operating
point: it is not verified, and no rack is cut for it). A converter at its current limit is
within its limits (it then supplies a constant current and the other converters hold the
bus); it is noted, and the voltages say whether the point holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import splu

from edgectl.config.site import Site
from edgectl.kernels.powerflow import FloatArray, PowerFlowResult, Status, bus_sum
from edgectl.model.network import SiteNetwork, build_network

MAX_PASSES = 6
# Aim this far past a limit, so that the next solve lands inside it.
MARGIN = 1.10
V_MARGIN_V = 0.5
I_MARGIN_A = 1.0


@dataclass
class Verification:
    """The verified caps and how they were reached."""

    rack_cap_w: FloatArray  # the caps after reductions, W (0 for racks not decided here)
    converged: bool
    verified: bool  # the final point holds every limit that racks can fix
    passes: int
    collapse_margin: float
    v_min_v: float
    v_max_v: float
    losses_w: float
    violations: list[str] = field(default_factory=list)  # of the final point
    notes: list[str] = field(default_factory=list)  # converters at a limit, and the like
    reduced_w: float = 0.0  # taken off the caps by verification
    reductions: dict[str, float] = field(default_factory=dict)  # rack id -> W taken off
    parked: np.ndarray | None = None  # bool per rack: parked by verification (switched off)

    def as_dict(self) -> dict[str, object]:
        return {
            "converged": self.converged,
            "verified": self.verified,
            "iterations": self.passes,
            "collapse_margin": self.collapse_margin,
            "v_min_v": self.v_min_v,
            "v_max_v": self.v_max_v,
            "losses_w": self.losses_w,
            "violations": self.violations,
            "notes": self.notes,
            "reduced_w": self.reduced_w,
            "reductions": self.reductions,
        }


class Verifier:
    """Power-flow verification of one site; networks are cached per set of pinned batteries."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self._networks: dict[frozenset[str], SiteNetwork] = {}
        self._rack_tier = np.array([r.tier for r in site.racks], dtype=np.int8)
        self._rack_min = np.array([r.p_min_w for r in site.racks])
        bus_index = {b.id: i for i, b in enumerate(site.buses)}
        self._rack_bus = np.array([bus_index[r.bus] for r in site.racks], dtype=np.intp)
        self._line_i_max = np.array([ln.i_max_a for ln in site.lines])
        self._line_ids = [ln.id for ln in site.lines]
        self._bus_ids = [b.id for b in site.buses]
        v_nom = np.array([site.bus_v_nominal_v(b) for b in site.buses])
        self._v_lo = site.control.v_min_pu * v_nom
        self._v_hi = site.control.v_max_pu * v_nom

    def network(self, pinned: frozenset[str]) -> SiteNetwork:
        net = self._networks.get(pinned)
        if net is None:
            net = build_network(self.site, pinned=dict.fromkeys(pinned, 0.0))
            self._networks[pinned] = net
        return net

    def verify(
        self,
        rack_cap_w: FloatArray,
        reducible: np.ndarray,
        source_p_w: Mapping[str, float],
        pinned: frozenset[str],
        *,
        floor_w: FloatArray | None = None,
    ) -> Verification:
        """Solve the point; reduce `reducible` racks (bool mask) until it holds.

        `rack_cap_w` holds each rack's draw in the point: its cap, or for a fixed load its
        assumed draw. `source_p_w` gives pv and wind outputs and pinned batteries' setpoints.
        A reducible rack goes no lower than `floor_w` (default: its p_min_w).
        """
        net = self.network(pinned)
        caps = rack_cap_w.astype(np.float64, copy=True)
        lowest = self._rack_min if floor_w is None else floor_w
        floor = np.where(reducible, np.minimum(lowest, caps), caps)
        park = np.where(reducible, np.minimum(self._rack_min, caps), caps)
        fixed_inj = np.zeros(len(self._bus_ids))
        for src in net.fixed_sources:
            fixed_inj[net.bus_index[src.bus]] += source_p_w.get(src.id, 0.0)
        reductions: dict[str, float] = {}
        result = None
        messages: list[str] = []
        notes: list[str] = []
        for passes in range(1, MAX_PASSES + 1):
            s = fixed_inj - np.bincount(self._rack_bus, caps, len(self._bus_ids))
            result = net.powerflow.solve(s)
            messages, targets, notes = self._check(net, result)
            if result.converged and not targets:
                return self._done(
                    caps, floor, rack_cap_w, result, passes, messages, notes, reductions, True
                )
            if result.status is Status.SURPLUS:
                # More injected than anything absorbs: fewer racks only make it worse. Not
                # verified; curtailment and the batteries are what can fix it.
                break
            if not result.converged:
                # No stable point: scale the reducible load down to what the network carried.
                share = 0.9 * (result.loadability or 0.5)
                cut = (caps - floor) * (1.0 - share)
            else:
                cut = self._cuts(net, result, targets, caps, floor, park)
            if not np.any(cut > 0):
                break
            caps -= cut
            for i in np.flatnonzero(cut > 0):
                rid = self.site.racks[int(i)].id
                reductions[rid] = reductions.get(rid, 0.0) + float(cut[i])
        assert result is not None
        return self._done(
            caps, floor, rack_cap_w, result, MAX_PASSES, messages, notes, reductions, False
        )

    def _done(
        self,
        caps: FloatArray,
        floor: FloatArray,
        proposed: FloatArray,
        result: PowerFlowResult,
        passes: int,
        messages: list[str],
        notes: list[str],
        reductions: dict[str, float],
        ok: bool,
    ) -> Verification:
        v = result.v_v
        parked = caps < floor - 1e-6
        return Verification(
            rack_cap_w=caps,
            converged=result.converged,
            verified=ok,
            passes=passes,
            collapse_margin=float(result.collapse_margin),
            v_min_v=float(v.min()) if result.converged else 0.0,
            v_max_v=float(v.max()) if result.converged else 0.0,
            losses_w=result.losses_w if result.converged else 0.0,
            violations=messages if result.converged else [result.message],
            notes=notes,
            reduced_w=float((proposed - caps).sum()),
            reductions=reductions,
            parked=parked,
        )

    def _check(
        self, net: SiteNetwork, result: PowerFlowResult
    ) -> tuple[list[str], list[tuple[str, int, float]], list[str]]:
        """Violations as messages, those racks can fix as (kind, index, amount), and notes."""
        if not result.converged:
            return [result.message], [], []
        v = result.v_v
        notes: list[str] = []
        messages: list[str] = []
        targets: list[tuple[str, int, float]] = []
        for k in np.flatnonzero(v < self._v_lo):
            messages.append(f"bus {self._bus_ids[k]} at {v[k]:.1f} V, below {self._v_lo[k]:.1f} V")
            targets.append(("v", int(k), float(self._v_lo[k] - v[k]) + V_MARGIN_V))
        for k in np.flatnonzero(v > self._v_hi):
            messages.append(f"bus {self._bus_ids[k]} at {v[k]:.1f} V, above {self._v_hi[k]:.1f} V")
        over = np.abs(result.line_i_a) - self._line_i_max
        for k in np.flatnonzero(over > 0):
            messages.append(
                f"line {self._line_ids[k]} carries {abs(result.line_i_a[k]):.0f} A, "
                f"above {self._line_i_max[k]:g} A"
            )
            targets.append(("i", int(k), float(over[k]) + I_MARGIN_A))
        for d in np.flatnonzero(result.droop_saturated):
            src = net.droop_sources[int(d)]
            current = float(result.droop_i_a[d])
            # At its current limit a converter is a current source and the others hold the
            # bus: within its limits, and the voltage check above says whether that holds.
            if current != 0.0:
                side = "supplying" if current > 0 else "absorbing"
                notes.append(f"{src.kind} {src.id} {side} at its current limit")
        return messages, targets, notes

    def _cuts(
        self,
        net: SiteNetwork,
        result: PowerFlowResult,
        targets: list[tuple[str, int, float]],
        caps: FloatArray,
        floor: FloatArray,
        park: FloatArray,
    ) -> FloatArray:
        """How much to take off each rack so that every target is met, to first order.

        Within a tier, caps come down to their floor first; if that is not enough, racks of
        the tier are parked (cap p_min_w, switched off for dispatch), most effective first,
        before the next tier is touched: tiers are a strict priority here as in dispatch.
        """
        z = _ZSolver(net, result)
        room = np.maximum(caps - floor, 0.0)
        park_room = np.maximum(caps - park, 0.0)
        cut = np.zeros_like(caps)
        v_rack = result.v_v[self._rack_bus]
        for kind, index, amount in targets:
            rhs = np.zeros(len(self._bus_ids))
            if kind == "v":
                rhs[index] = 1.0
            else:
                line_from = net.powerflow.topology.line_from[index]
                line_to = net.powerflow.topology.line_to[index]
                r = float(net.powerflow.topology.line_r_ohm[index])
                sign = 1.0 if result.line_i_a[index] >= 0 else -1.0
                # Less drawn at a rack raises the voltage nearest it most: the current
                # falls by (Z[to, b] - Z[from, b]) / r per ampere injected at bus b.
                rhs[line_from], rhs[line_to] = -sign / r, sign / r
            x = z.solve(rhs)
            # Per watt less at rack j: the voltage rises (or the current falls) by this much.
            effect = x[self._rack_bus] / v_rack
            remaining = amount * MARGIN
            # What is left below this is round-off of the takes, not a need to go on.
            done = 1e-9 * remaining
            for tier in (3, 2, 1, 0):
                if remaining <= done:
                    break
                idx = np.flatnonzero((self._rack_tier == tier) & (room - cut > 0) & (effect > 0))
                for i in idx[np.argsort(-effect[idx], kind="stable")]:
                    take = min(float(room[i] - cut[i]), remaining / float(effect[i]))
                    cut[i] += take
                    remaining -= take * float(effect[i])
                    if remaining <= done:
                        break
                if remaining <= done:
                    break
                tier_racks = (self._rack_tier == tier) & (effect > 0) & (park_room > cut)
                idx = np.flatnonzero(tier_racks)
                freed = (park_room - cut)[idx] * effect[idx]
                for i in idx[np.argsort(-freed, kind="stable")]:
                    remaining -= float(park_room[i] - cut[i]) * float(effect[i])
                    cut[i] = park_room[i]
                    if remaining <= done:
                        break
        return cut


class _ZSolver:
    """Solves G x = b for the linearised network at a solved point."""

    def __init__(self, net: SiteNetwork, result: PowerFlowResult) -> None:
        topo = net.powerflow.topology
        n = topo.n_bus
        g = 1.0 / topo.line_r_ohm
        active = ~result.droop_saturated
        diag = bus_sum(topo.line_from, g, n) + bus_sum(topo.line_to, g, n)
        diag += bus_sum(topo.droop_bus[active], 1.0 / topo.droop_r_ohm[active], n)
        # A network whose every converter is at a limit floats: a tiny conductance to
        # ground keeps the matrix regular, and the racks then all look alike.
        diag += 1e-9 * max(float(diag.max()), 1.0)
        rows = np.concatenate([topo.line_from, topo.line_to, np.arange(n)])
        cols = np.concatenate([topo.line_to, topo.line_from, np.arange(n)])
        vals = np.concatenate([-g, -g, diag])
        self._lu = splu(sp.csc_matrix((vals, (rows, cols)), shape=(n, n)))

    def solve(self, rhs: FloatArray) -> FloatArray:
        x: FloatArray = self._lu.solve(rhs)
        return x
