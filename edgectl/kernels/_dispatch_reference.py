"""NumPy reference of the dispatch kernel: the fallback when it is not built, and its oracle.

The rules are those of `edgectl.kernels.dispatch`, written plainly. Sums whose comparison
switches a rack on or off run left to right through `_seqsum`, as in the compiled loop
(np.sum adds pairwise and rounds differently), so both implementations switch the same
racks even when a sum lands on a boundary.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from edgectl.kernels.dispatch import (
    TIERS,
    DispatchInput,
    DispatchParams,
    DispatchResult,
    FloatArray,
    TierArray,
)

# Bisection halvings when Newton needs more passes than allowed: 2**-64 of [0, 1].
BISECTION_ITER = 64


def _seqsum(x: FloatArray) -> float:
    """Left-to-right sum, rounded like a C loop."""
    return float(np.cumsum(x)[-1]) if x.shape[0] else 0.0


def supply_limits(
    params: DispatchParams, inputs: DispatchInput, grid_available_w: FloatArray, budget_w: float
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, float]:
    """Rule 1: renewable availability, battery discharge and charge limits, grid caps and limit."""
    available = np.minimum(np.maximum(inputs.renewable_available_w, 0.0), params.renewable_p_max_w)
    cap_wh = params.battery_capacity_wh
    reserve = params.battery_soc_min + (
        params.battery_p_max_w * params.ride_through_s / 3600.0 / cap_wh
    )
    headroom = np.maximum(inputs.battery_soc - reserve, 0.0)
    discharge = np.minimum(params.battery_p_max_w, headroom * cap_wh * 3600.0 / params.period_s)
    room = np.maximum(params.battery_soc_max - inputs.battery_soc, 0.0)
    charge = np.minimum(params.battery_p_charge_max_w, room * cap_wh * 3600.0 / params.period_s)
    grid_caps = np.minimum(np.maximum(grid_available_w, 0.0), params.grid_p_max_w)
    grid_cap = min(_seqsum(grid_caps), params.grid_import_max_w)
    if math.isnan(budget_w):
        g = params.green_share_min
        if g <= 0.0:
            budget_w = math.inf
        elif g >= 1.0:
            budget_w = 0.0
        else:
            budget_w = (1.0 - g) / g * (_seqsum(available) + _seqsum(discharge))
    else:
        budget_w = max(budget_w, 0.0)
    return available, discharge, charge, grid_caps, min(grid_cap, budget_w)


def equal_fraction(lo: FloatArray, want: FloatArray, target_w: float, max_iter: int) -> float:
    """The f in [0, 1] with sum(max(lo, f * want)) == target_w, by Newton from f = 1."""
    f = 1.0
    count_prev = -1
    for _ in range(max_iter):
        x = f * want
        active = x > lo
        count = int(np.count_nonzero(active))
        g = float(np.sum(np.where(active, x, lo)))
        # Same active set as the previous pass: the step was on g's linear piece, exact.
        if g <= target_w or count == count_prev:
            return f
        slope = float(np.sum(want[active]))
        if slope <= 0.0:
            return f
        f_next = max(f - (g - target_w) / slope, 0.0)
        if not f_next < f:
            return f
        f = f_next
        count_prev = count
    low, high = 0.0, f
    for _ in range(BISECTION_ITER):
        mid = 0.5 * (low + high)
        if float(np.sum(np.maximum(lo, mid * want))) > target_w:
            high = mid
        else:
            low = mid
    return high


class _SheddingOrder:
    """The order in which rules 3 and 4 shed, one cursor for both: the racks that were on
    with a floor, tier 3 first, then 2, 1, 0; within a tier the largest lo first, ties by
    lower index. Sorted on first use, as most cycles shed nothing."""

    def __init__(self, candidates: npt.NDArray[np.bool_], lo: FloatArray, tier: TierArray):
        self._candidates = candidates
        self._lo = lo
        self._tier = tier
        self._order: npt.NDArray[np.intp] | None = None
        self._pos = 0

    def remaining(self, above: int) -> npt.NDArray[np.intp]:
        """The racks not shed yet whose tier is above `above`, in shedding order."""
        if above >= TIERS - 1:
            return np.empty(0, dtype=np.intp)
        if self._order is None:
            idx = np.flatnonzero(self._candidates)
            tier = self._tier[idx].astype(np.intp)
            self._order = idx[np.lexsort((idx, -self._lo[idx], -tier))]
        rest = self._order[self._pos :]
        # Tiers fall along the order, so those above `above` come first.
        return rest[: int(np.count_nonzero(self._tier[rest] > above))]

    def take(self, k: int) -> None:
        """Mark the next k racks of the order as shed."""
        self._pos += k


def _shed_count(running: FloatArray, done: npt.NDArray[np.bool_]) -> int:
    """How many racks to shed: running[k] is the running sum after k racks, done[k] whether
    it stops there; all of them when it never does."""
    return int(np.argmax(done)) if bool(done.any()) else running.shape[0] - 1


def decide_reference(
    params: DispatchParams,
    inputs: DispatchInput,
    grid_available_w: FloatArray,
    budget_w: float,
    fixed_load_w: float,
    newton_max_iter: int,
) -> DispatchResult:
    """The whole decision of one cycle, rules 1-7, on validated arrays."""
    available, discharge, charge, grid_caps, grid_limit = supply_limits(
        params, inputs, grid_available_w, budget_w
    )
    r_w = _seqsum(available)
    d_w = _seqsum(discharge)
    c_w = _seqsum(charge)
    # The fixed load comes first out of the stack; S < 0 sheds every rack with a floor.
    supply_w = r_w + d_w + grid_limit - fixed_load_w

    # Rule 2: bounds of the racks that are on.
    tier = params.rack_tier
    demand = inputs.rack_demand_w
    was_on = inputs.rack_on != 0
    on = was_on.copy()
    step = params.rack_ramp_w_per_s * params.period_s
    lo = np.minimum(params.rack_p_max_w, np.maximum(params.rack_p_min_w, inputs.rack_cap_w - step))
    hi = np.minimum(params.rack_p_max_w, inputs.rack_cap_w + step)
    want = np.maximum(lo, np.minimum(hi, demand))

    shedding = _SheddingOrder(was_on & (lo > 0.0), lo, tier)
    shed = 0

    # Rule 3: shed until the floors fit. The running sums go left to right like the
    # compiled loop's (np.cumsum is sequential), one lo per rack.
    floors = _seqsum(lo[on])
    if floors > supply_w:
        victims = shedding.remaining(above=-1)
        running = np.cumsum(np.concatenate(([floors], -lo[victims])))
        k = _shed_count(running, running <= supply_w)
        on[victims[:k]] = False
        floors = float(running[k])
        shedding.take(k)
        shed += k

    # Rule 4: serve tier by tier from what is left above the floors, shedding racks of
    # later tiers while a tier's extra does not fit.
    spare = supply_w - floors
    cap = np.zeros(params.n_racks, dtype=np.float64)
    for t in range(TIERS):
        mine = on & (tier == t)
        extra = _seqsum((want - lo)[mine])
        if extra > spare:
            victims = shedding.remaining(above=t)
            running = np.cumsum(np.concatenate(([spare], lo[victims])))
            k = _shed_count(running, extra <= running)
            on[victims[:k]] = False
            spare = float(running[k])
            shedding.take(k)
            shed += k
        if extra <= spare:
            cap[mine] = want[mine]
            spare -= extra
        elif spare <= 0.0:
            cap[mine] = lo[mine]
        else:
            target = _seqsum(lo[mine]) + spare
            f = equal_fraction(lo[mine], want[mine], target, newton_max_iter)
            cap[mine] = np.maximum(lo[mine], f * want[mine])
            spare = 0.0

    # Rule 5: start racks that were off before this cycle (never one shed above), by tier
    # then index, with hysteresis.
    started = 0
    if spare > 0.0:
        start_cap = np.where(
            params.rack_p_min_w > 0.0,
            params.rack_p_min_w,
            np.minimum(np.minimum(demand, params.rack_p_max_w), step),
        )
        ready = (
            ~was_on
            & (inputs.rack_off_s >= params.rack_min_off_s)
            & (demand > 0.0)
            & (start_cap > 0.0)
        )
        for t in range(TIERS):
            for i in np.flatnonzero(ready & (tier == t)):
                c0 = float(start_cap[i])
                if spare >= (1.0 + params.rack_on_margin) * c0:
                    on[i] = True
                    cap[i] = c0
                    spare -= c0
                    started += 1

    # Rule 7: served power, per tier.
    served = np.where(on, np.minimum(demand, cap), 0.0)
    demand_by_tier = np.array([_seqsum(demand[tier == t]) for t in range(TIERS)])
    served_by_tier = np.array([_seqsum(served[tier == t]) for t in range(TIERS)])
    unserved_by_tier = np.maximum(demand_by_tier - served_by_tier, 0.0)

    # Rule 6: renewables first, then batteries, then the grid; surplus charges, then curtails.
    # The sources deliver for the fixed load too, and no more than their limits when S < 0.
    need = _seqsum(cap) + fixed_load_w
    used_r = min(need, r_w)
    rest = need - used_r
    used_d = min(rest, d_w)
    used_g = min(max(rest - used_d, 0.0), grid_limit)
    charged = min(r_w - used_r, c_w)
    fraction = min((used_r + charged) / r_w, 1.0) if r_w > 0.0 else 0.0
    renewable_p = available * fraction
    if used_d > 0.0:
        battery_p = discharge * (used_d / d_w)
    elif charged > 0.0:
        battery_p = -(charge * (charged / c_w))
    else:
        battery_p = np.zeros(params.n_batteries, dtype=np.float64)
    if used_g > 0.0:
        grid_p = grid_caps * (used_g / _seqsum(grid_caps))
    else:
        grid_p = np.zeros(params.n_grids, dtype=np.float64)

    return DispatchResult(
        rack_cap_w=cap,
        rack_on=on.astype(np.uint8),
        renewable_p_w=renewable_p,
        renewable_curtailed_w=available - renewable_p,
        battery_p_w=battery_p,
        grid_p_w=grid_p,
        demand_w_by_tier=demand_by_tier,
        served_w_by_tier=served_by_tier,
        unserved_w_by_tier=unserved_by_tier,
        served_w=float(
            served_by_tier[0] + served_by_tier[1] + served_by_tier[2] + served_by_tier[3]
        ),
        shed=shed,
        started=started,
        supply_w=supply_w,
        compiled=False,
    )
