"""The dispatch problem as a HiGHS LP, with every rack's on/off state held as given.

An independent statement of rules 1, 2 and the serving part of rule 4 for given on/off
states (edgectl/kernels/dispatch.py): one column per rack that is on (its cap, between
lo and want), per renewable (used, up to its availability), per battery (discharge
and charge, up to their limits) and per grid source (import, up to its cap); one
balance row (racks + charge + the fixed load = renewables + discharge + grid), the grid
import limit, and the grid budget (a fixed budget, or the green-share rule grid <= k *
(renewables + discharge - charge)). Racks that are off stay at 0: no shedding, no
starting. A fixed load the sources cannot cover makes the LP infeasible. Tests use the
lexicographic solve as the oracle of the kernel's per-tier served power; `edgectl bench`
times the single weighted solve as the baseline.

HiGHS runs with presolve off: on this structure (one dense row, n singleton columns)
presolve costs far more than the solve (notes/numerics.md, section 4).
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

import highspy
import numpy as np
import numpy.typing as npt

from edgectl.kernels.dispatch import TIERS, DispatchInput, DispatchParams, FloatArray

# Weights of the single weighted solve: each tier outranks the next by a factor 10.
TIER_WEIGHTS = (1000.0, 100.0, 10.0, 1.0)


_banner_shown = False


def _new_highs() -> Any:
    """A HiGHS instance; the first one of a process prints a banner on the C-level
    stdout, which would corrupt `edgectl bench --json`, so that one is built with
    file descriptor 1 pointed at /dev/null."""
    global _banner_shown
    if _banner_shown:
        return highspy.Highs()  # type: ignore[no-untyped-call]  # no hints in highspy
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        h = highspy.Highs()  # type: ignore[no-untyped-call]
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
    _banner_shown = True
    return h


class _Lp:
    """A built model and what is needed to read served power back from its columns."""

    def __init__(self, params: DispatchParams, inputs: DispatchInput) -> None:
        on = np.flatnonzero(inputs.rack_on != 0)
        step = params.rack_ramp_w_per_s[on] * params.period_s
        cap_prev = inputs.rack_cap_w[on]
        p_max = params.rack_p_max_w[on]
        lo = np.minimum(p_max, np.maximum(params.rack_p_min_w[on], cap_prev - step))
        hi = np.minimum(p_max, cap_prev + step)
        want = np.maximum(lo, np.minimum(hi, inputs.rack_demand_w[on]))

        renewable = np.clip(inputs.renewable_available_w, 0.0, params.renewable_p_max_w)
        cap_wh = params.battery_capacity_wh
        energy_s = cap_wh * 3600.0 / params.period_s  # W per unit of soc within one cycle
        reserve = params.battery_soc_min + (
            params.battery_p_max_w * params.ride_through_s / 3600.0 / cap_wh
        )
        discharge = np.minimum(
            params.battery_p_max_w, np.maximum(inputs.battery_soc - reserve, 0.0) * energy_s
        )
        charge = np.minimum(
            params.battery_p_charge_max_w,
            np.maximum(params.battery_soc_max - inputs.battery_soc, 0.0) * energy_s,
        )
        grid_available = (
            params.grid_p_max_w if inputs.grid_available_w is None else inputs.grid_available_w
        )
        grid = np.clip(grid_available, 0.0, params.grid_p_max_w)

        # Columns in this order: racks, renewables, discharge, charge, grid.
        lower = np.concatenate([lo, np.zeros(renewable.size + 2 * discharge.size + grid.size)])
        upper = np.concatenate([want, renewable, discharge, charge, grid])
        fixed_w = float(inputs.fixed_load_w)
        # Work in units of the largest bound, so HiGHS's absolute tolerances fit every size.
        self.scale = max(1.0, fixed_w, float(upper.max()) if upper.size else 0.0)
        self.fixed_w = fixed_w
        self.on = on
        self.tier = params.rack_tier[on]
        self.demand = inputs.rack_demand_w[on]
        n, m, b, g = on.size, renewable.size, discharge.size, grid.size
        self.n_cols = n + m + 2 * b + g
        r0, g0 = n, n + m + 2 * b  # first renewable column, first grid column

        h = _new_highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("presolve", "off")
        h.changeObjectiveSense(highspy.ObjSense.kMaximize)
        h.addCols(
            self.n_cols,
            np.zeros(self.n_cols),
            lower / self.scale,
            upper / self.scale,
            0,
            np.empty(0, np.int32),
            np.empty(0, np.int32),
            np.empty(0),
        )

        rows: list[tuple[float, float, npt.NDArray[np.int32], FloatArray]] = []
        # Balance: racks + charge - renewables - discharge - grid = -fixed load.
        cols = np.arange(self.n_cols, dtype=np.int32)
        coef = np.concatenate([np.ones(n), -np.ones(m + b), np.ones(b), -np.ones(g)])
        rows.append((-fixed_w / self.scale, -fixed_w / self.scale, cols, coef))
        grid_cols = np.arange(g0, g0 + g, dtype=np.int32)
        rows.append((-math.inf, params.grid_import_max_w / self.scale, grid_cols, np.ones(g)))
        budget = inputs.grid_budget_w
        if not math.isnan(budget):
            rows.append((-math.inf, max(budget, 0.0) / self.scale, grid_cols, np.ones(g)))
        elif params.green_share_min >= 1.0:
            rows.append((-math.inf, 0.0, grid_cols, np.ones(g)))
        elif params.green_share_min > 0.0:
            k = (1.0 - params.green_share_min) / params.green_share_min
            green = np.arange(r0, g0, dtype=np.int32)
            sign = np.concatenate([np.ones(m + b), -np.ones(b)])
            rows.append(
                (
                    -math.inf,
                    0.0,
                    np.concatenate([grid_cols, green]),
                    np.concatenate([np.ones(g), -k * sign]),
                )
            )
        for low, up, idx, val in rows:
            h.addRow(low, up, idx.size, idx, val)
        self.h = h

    def maximise(self, cost: FloatArray) -> float:
        """Solve with this objective on the rack columns; return the objective in W."""
        h = self.h
        n = self.on.size
        h.changeColsCost(n, np.arange(n, dtype=np.int32), cost)
        h.run()
        status = h.getModelStatus()
        if status == highspy.HighsModelStatus.kModelEmpty:
            if self.fixed_w > 0.0:
                raise ValueError("dispatch LP: no source for the fixed load")
            return 0.0  # no rack on and no source: nothing to choose
        if status != highspy.HighsModelStatus.kOptimal:
            raise ValueError(
                f"dispatch LP: {h.modelStatusToString(status)} (the floors of the racks "
                "that are on and the fixed load may exceed the supply)"
            )
        return float(h.getInfo().objective_function_value) * self.scale

    def served_by_tier(self) -> FloatArray:
        """Per-tier served power of the current solution: min(demand, cap) summed."""
        if self.on.size == 0:
            return np.zeros(TIERS)
        cap = np.asarray(self.h.getSolution().col_value[: self.on.size]) * self.scale
        served = np.minimum(self.demand, cap)
        return np.array([float(served[self.tier == t].sum()) for t in range(TIERS)])


def solve_lexicographic(params: DispatchParams, inputs: DispatchInput) -> FloatArray:
    """Served power per tier when tier 0's caps are maximised, fixed, then tier 1's, ..."""
    lp = _Lp(params, inputs)
    for t in range(TIERS):
        mine = (lp.tier == t).astype(np.float64)
        best = lp.maximise(mine)
        idx = np.flatnonzero(mine).astype(np.int32)
        if idx.size:
            # Hold this tier at its optimum (less a rounding allowance) for the next ones.
            floor = (best - 1e-9 * max(1.0, abs(best))) / lp.scale
            lp.h.addRow(floor, math.inf, idx.size, idx, np.ones(idx.size))
    return lp.served_by_tier()


def solve_weighted(params: DispatchParams, inputs: DispatchInput) -> FloatArray:
    """Served power per tier from one LP solve with the weights TIER_WEIGHTS."""
    lp = _Lp(params, inputs)
    lp.maximise(np.asarray(TIER_WEIGHTS, dtype=np.float64)[lp.tier])
    return lp.served_by_tier()
