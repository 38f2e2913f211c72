"""The kernel against a lexicographic HiGHS LP of the same problem, on/off states held.

The LP holds every rack on or off: it serves the racks but never sheds or starts one. The
kernel may shed (rules 3 and 4), so the LP is solved on the states the kernel chose:
serving those racks is then the whole question, and both must agree on it.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edgectl.kernels._dispatch_lp import solve_lexicographic, solve_weighted
from edgectl.kernels.dispatch import DispatchInput, DispatchParams, dispatch

TIERS = 4


def f64(values: list[float]) -> np.ndarray:
    return np.array(values, dtype=np.float64)


def floors_by_rack(params: DispatchParams, cap_prev: np.ndarray) -> np.ndarray:
    step = params.rack_ramp_w_per_s * params.period_s
    return np.minimum(params.rack_p_max_w, np.maximum(params.rack_p_min_w, cap_prev - step))


def floors_w(params: DispatchParams, inputs: DispatchInput) -> float:
    return float(floors_by_rack(params, inputs.rack_cap_w)[inputs.rack_on != 0].sum())


@st.composite
def held_states(draw: st.DrawFn) -> tuple[DispatchParams, DispatchInput]:
    """Instances where no rack is started: every rack is on, or the off ones have been off
    for less than rack_min_off_s.

    Whether the floors of the racks that are on fit the supply, and whether the supply ends
    inside tier 0, 1 or 2 (where racks of later tiers go off), is up to the draw. A fixed
    load, when drawn, comes on top of the renewables' share, or (at times) beyond every
    source.
    """
    n = draw(st.integers(1, 40))
    m = draw(st.integers(0, 3))
    b = draw(st.integers(0, 2))
    g = draw(st.integers(0, 2))
    period_s = draw(st.sampled_from([0.5, 1.0, 2.0]))
    fixed_w = draw(
        st.one_of(st.just(0.0), st.floats(0.0, 300e3), st.just(0.0), st.floats(1e6, 1e7))
    )
    p_max = draw(st.lists(st.floats(20e3, 150e3), min_size=n, max_size=n))
    p_min = [p * draw(st.sampled_from([0.0, 0.1, 0.3])) for p in p_max]
    ramp = draw(st.lists(st.floats(2e3, 60e3), min_size=n, max_size=n))
    batteries = [
        (
            draw(st.floats(0.0, 60e3)),
            draw(st.floats(0.0, 60e3)),
            draw(st.floats(2e5, 3e6)),
            draw(st.floats(0.0, 0.2)),
            draw(st.floats(0.8, 1.0)),
        )
        for _ in range(b)
    ]
    bat = np.array(batteries, dtype=np.float64).reshape(-1, 5)
    params = DispatchParams(
        period_s=period_s,
        green_share_min=draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.1, 0.9))),
        ride_through_s=draw(st.sampled_from([0.0, 120.0])),
        rack_on_margin=0.2,
        rack_min_off_s=30.0,
        grid_import_max_w=draw(st.one_of(st.just(1e12), st.floats(0.0, 500e3))),
        rack_tier=np.array(
            draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), dtype=np.int8
        ),
        rack_p_min_w=f64(p_min),
        rack_p_max_w=f64(p_max),
        rack_ramp_w_per_s=f64(ramp),
        renewable_p_max_w=f64([sum(p_max) + min(fixed_w, 300e3)] * m),
        battery_p_max_w=np.ascontiguousarray(bat[:, 0]),
        battery_p_charge_max_w=np.ascontiguousarray(bat[:, 1]),
        battery_capacity_wh=np.ascontiguousarray(bat[:, 2]),
        battery_soc_min=np.ascontiguousarray(bat[:, 3]),
        battery_soc_max=np.ascontiguousarray(bat[:, 4]),
        grid_p_max_w=f64(draw(st.lists(st.floats(0.0, 60e3), min_size=g, max_size=g))),
    )
    all_on = draw(st.booleans())
    on = [1] * n if all_on else draw(st.lists(st.sampled_from([0, 1, 1]), min_size=n, max_size=n))
    demand = f64(draw(st.lists(st.floats(0.0, 160e3), min_size=n, max_size=n)))
    cap = f64([draw(st.floats(0.0, p)) for p in p_max])
    rack_on = np.array(on, dtype=np.uint8)
    # Renewables between the floors and the wants of the racks that are on (a little
    # beyond either end too), so that the supply cuts any tier, or none, or the floors.
    lo = floors_by_rack(params, cap)
    want = np.maximum(
        lo,
        np.minimum(
            np.minimum(params.rack_p_max_w, cap + params.rack_ramp_w_per_s * period_s), demand
        ),
    )
    mask = rack_on != 0
    level = lo[mask].sum() + draw(st.floats(-0.1, 1.2)) * (want - lo)[mask].sum()
    weights = [draw(st.floats(0.1, 1.0)) for _ in range(m)]
    # The renewables cover a fixed load up to 300 kW on top; a larger one goes uncovered.
    renewable_w = max(level, 0.0) + min(fixed_w, 300e3)
    inputs = DispatchInput(
        renewable_available_w=f64([renewable_w * w / sum(weights) for w in weights]),
        battery_soc=f64(draw(st.lists(st.floats(0.0, 1.0), min_size=b, max_size=b))),
        rack_demand_w=demand,
        rack_cap_w=cap,
        rack_on=rack_on,
        # Off for less than rack_min_off_s: no rack may start.
        rack_off_s=f64(draw(st.lists(st.floats(0.0, 29.9), min_size=n, max_size=n))),
        grid_available_w=None,
        grid_budget_w=draw(st.one_of(st.just(math.nan), st.floats(0.0, 400e3))),
        fixed_load_w=fixed_w,
    )
    return params, inputs


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(held_states())
def test_served_per_tier_equals_the_lexicographic_lp(
    case: tuple[DispatchParams, DispatchInput],
) -> None:
    params, inputs = case
    res = dispatch(params, inputs)
    floors = floors_w(params, inputs)
    # S may be negative (a fixed load beyond every source): compare against its size.
    level = abs(res.supply_w) + inputs.fixed_load_w
    event(f"fixed load: {'none' if inputs.fixed_load_w == 0.0 else 'some'}")
    if floors - res.supply_w > 1e-9 * level:
        # The floors do not fit: the LP on the states given is infeasible and the kernel
        # sheds every rack it may (when the fixed load alone is not covered, maybe none).
        assert res.shed > 0 or floors == 0.0
        # HiGHS accepts violations within its feasibility tolerance (1e-7 of the scale).
        if floors - res.supply_w > 1e-6 * level + 1.0:
            with pytest.raises(ValueError, match="dispatch LP"):
                solve_lexicographic(params, inputs)
        event("floors do not fit" if res.supply_w >= 0.0 else "fixed load not covered")
        if res.supply_w < 0.0:
            # Even with every rack the kernel left on at 0 W, the balance row cannot hold.
            if -res.supply_w > 1e-6 * level + 1.0:
                held = replace(inputs, rack_on=res.rack_on)
                with pytest.raises(ValueError, match="dispatch LP"):
                    solve_lexicographic(params, held)
            return
    elif floors - res.supply_w > -1e-9 * level:
        return  # on the boundary either answer is right to rounding
    assert res.started == 0
    event(f"racks shed: {min(res.shed, 2)}")
    # The racks the kernel switched off stay off in the LP; its floors fit the supply.
    held = replace(inputs, rack_on=res.rack_on)
    lp = solve_lexicographic(params, held)
    # HiGHS holds constraints to 1e-7 of the LP's largest bound, whatever the demand.
    largest = np.concatenate(
        [
            params.rack_p_max_w,
            params.battery_p_max_w,
            params.battery_p_charge_max_w,
            params.grid_p_max_w,
            inputs.renewable_available_w,
        ]
    ).max()
    total = max(1.0, float(inputs.rack_demand_w.sum()), float(largest), inputs.fixed_load_w)
    np.testing.assert_allclose(res.served_w_by_tier, lp, rtol=1e-6, atol=1e-6 * total)
    np.testing.assert_allclose(solve_weighted(params, held), lp, rtol=1e-6, atol=1e-6 * total)
    step = params.rack_ramp_w_per_s * params.period_s
    hi = np.minimum(params.rack_p_max_w, inputs.rack_cap_w + step)
    want = np.where(res.rack_on != 0, np.minimum(hi, inputs.rack_demand_w), 0.0)
    short = [
        bool(np.any((res.rack_cap_w < want - 1e-6)[params.rack_tier == t])) for t in range(TIERS)
    ]
    first = short.index(True) if any(short) else None
    event(f"first tier cut by supply: {first}")
    if first is not None:
        # Strict priority: no later tier keeps a rack with a floor on.
        floor = floors_by_rack(params, inputs.rack_cap_w)
        later = (params.rack_tier > first) & (res.rack_on != 0)
        assert np.all(floor[later] == 0.0)

    # The grid: never while a battery charges, within each source's cap, the import limit
    # and the budget (given, or the green-share rule on the green power actually used).
    grid = res.grid_p_w
    tol = 1e-9 * total
    if grid.sum() > tol:
        assert not np.any(res.battery_p_w < -tol)
    assert np.all(grid >= 0.0)
    assert np.all(grid <= params.grid_p_max_w * (1 + 1e-12))
    assert grid.sum() <= params.grid_import_max_w * (1 + 1e-9) + tol
    if not math.isnan(inputs.grid_budget_w):
        assert grid.sum() <= inputs.grid_budget_w * (1 + 1e-9) + tol
    elif params.green_share_min > 0.0:
        green = res.renewable_p_w.sum() + np.maximum(res.battery_p_w, 0.0).sum()
        k = (1.0 - params.green_share_min) / params.green_share_min
        assert grid.sum() <= k * green * (1 + 1e-9) + tol


def test_lp_on_a_hand_case() -> None:
    # Tier 0 wants 40 kW above nothing, tier 1 wants 130 kW; 120 kW of PV: tier 1 gets 80.
    params = DispatchParams(
        period_s=1.0,
        green_share_min=0.0,
        ride_through_s=0.0,
        rack_on_margin=0.2,
        rack_min_off_s=30.0,
        grid_import_max_w=0.0,
        rack_tier=np.array([0, 1, 1], dtype=np.int8),
        rack_p_min_w=f64([0.0, 0.0, 0.0]),
        rack_p_max_w=f64([200e3] * 3),
        rack_ramp_w_per_s=f64([1e6] * 3),
        renewable_p_max_w=f64([1e6]),
        battery_p_max_w=f64([]),
        battery_p_charge_max_w=f64([]),
        battery_capacity_wh=f64([]),
        battery_soc_min=f64([]),
        battery_soc_max=f64([]),
        grid_p_max_w=f64([]),
    )
    inputs = DispatchInput(
        renewable_available_w=f64([120e3]),
        battery_soc=f64([]),
        rack_demand_w=f64([40e3, 100e3, 30e3]),
        rack_cap_w=f64([0.0] * 3),
        rack_on=np.ones(3, dtype=np.uint8),
        rack_off_s=f64([math.inf] * 3),
    )
    np.testing.assert_allclose(
        solve_lexicographic(params, inputs), [40e3, 80e3, 0.0, 0.0], rtol=1e-9
    )
    np.testing.assert_allclose(solve_weighted(params, inputs), [40e3, 80e3, 0.0, 0.0], rtol=1e-9)
    # A fixed load of 30 kW in the balance row: tier 1 gets 50 kW, as in the kernel.
    fixed = replace(inputs, fixed_load_w=30e3)
    for served in (solve_lexicographic(params, fixed), solve_weighted(params, fixed)):
        np.testing.assert_allclose(served, [40e3, 50e3, 0.0, 0.0], rtol=1e-9)
    np.testing.assert_allclose(dispatch(params, fixed).served_w_by_tier, [40e3, 50e3, 0, 0])
    # 130 kW, more than the PV: the balance row cannot hold, whatever the racks do.
    with pytest.raises(ValueError, match="dispatch LP"):
        solve_lexicographic(params, replace(inputs, fixed_load_w=130e3))
    off = np.zeros(3, dtype=np.uint8)
    with pytest.raises(ValueError, match="dispatch LP"):
        solve_lexicographic(params, replace(inputs, rack_on=off, fixed_load_w=130e3))
