"""The dispatch kernel: compiled against reference, properties of a decision, hand cases."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import edgectl.kernels.dispatch as kd
from edgectl.kernels.dispatch import DispatchInput, DispatchParams, DispatchResult, dispatch

IMPLEMENTATIONS = ("compiled", "reference")
ARRAY_FIELDS = (
    "rack_cap_w",
    "renewable_p_w",
    "renewable_curtailed_w",
    "battery_p_w",
    "grid_p_w",
    "demand_w_by_tier",
    "served_w_by_tier",
    "unserved_w_by_tier",
)


def f64(values: Sequence[float]) -> np.ndarray:
    return np.array(values, dtype=np.float64)


def make_params(
    *,
    tier: list[int],
    p_min: list[float],
    p_max: list[float],
    ramp: list[float],
    renewable_p_max: Sequence[float] = (),
    battery: Sequence[tuple[float, float, float, float, float]] = (),
    grid_p_max: Sequence[float] = (),
    period_s: float = 1.0,
    green_share_min: float = 0.0,
    ride_through_s: float = 0.0,
    rack_on_margin: float = 0.2,
    rack_min_off_s: float = 30.0,
    grid_import_max_w: float = 1e12,
) -> DispatchParams:
    """Kernel constants; a battery is (p_max, p_charge_max, capacity_wh, soc_min, soc_max)."""
    bat = np.array(list(battery), dtype=np.float64).reshape(-1, 5)
    return DispatchParams(
        period_s=period_s,
        green_share_min=green_share_min,
        ride_through_s=ride_through_s,
        rack_on_margin=rack_on_margin,
        rack_min_off_s=rack_min_off_s,
        grid_import_max_w=grid_import_max_w,
        rack_tier=np.array(tier, dtype=np.int8),
        rack_p_min_w=f64(p_min),
        rack_p_max_w=f64(p_max),
        rack_ramp_w_per_s=f64(ramp),
        renewable_p_max_w=f64(renewable_p_max),
        battery_p_max_w=np.ascontiguousarray(bat[:, 0]),
        battery_p_charge_max_w=np.ascontiguousarray(bat[:, 1]),
        battery_capacity_wh=np.ascontiguousarray(bat[:, 2]),
        battery_soc_min=np.ascontiguousarray(bat[:, 3]),
        battery_soc_max=np.ascontiguousarray(bat[:, 4]),
        grid_p_max_w=f64(grid_p_max),
    )


def make_input(
    *,
    demand: list[float],
    cap: list[float],
    on: list[int],
    off_s: list[float] | None = None,
    available: Sequence[float] = (),
    soc: Sequence[float] = (),
    grid_available: list[float] | None = None,
    grid_budget_w: float = math.nan,
    fixed_load_w: float = 0.0,
) -> DispatchInput:
    return DispatchInput(
        renewable_available_w=f64(available),
        battery_soc=f64(soc),
        rack_demand_w=f64(demand),
        rack_cap_w=f64(cap),
        rack_on=np.array(on, dtype=np.uint8),
        rack_off_s=f64(off_s if off_s is not None else [math.inf] * len(demand)),
        grid_available_w=None if grid_available is None else f64(grid_available),
        grid_budget_w=grid_budget_w,
        fixed_load_w=fixed_load_w,
    )


# ---- the rules restated plainly, one element at a time, as the tests' own yardstick


@dataclass
class Supply:
    renewable: list[float]  # availability clipped to [0, p_max]
    discharge: list[float]
    charge: list[float]
    reserve: list[float]
    grid_caps: list[float]
    grid_limit: float  # min(Gc, budget)
    stack: float  # R + D + min(Gc, budget): all the sources may deliver
    total: float  # S = stack - fixed load


def supply_of(params: DispatchParams, inputs: DispatchInput) -> Supply:
    renewable = [
        min(max(a, 0.0), p)
        for a, p in zip(inputs.renewable_available_w, params.renewable_p_max_w, strict=True)
    ]
    discharge, charge, reserve = [], [], []
    for k in range(params.n_batteries):
        cap_wh = params.battery_capacity_wh[k]
        p_max = params.battery_p_max_w[k]
        soc = inputs.battery_soc[k]
        res = params.battery_soc_min[k] + p_max * params.ride_through_s / 3600.0 / cap_wh
        reserve.append(res)
        discharge.append(min(p_max, max(0.0, soc - res) * cap_wh * 3600.0 / params.period_s))
        room = max(0.0, params.battery_soc_max[k] - soc)
        charge.append(
            min(params.battery_p_charge_max_w[k], room * cap_wh * 3600.0 / params.period_s)
        )
    grid_available = (
        params.grid_p_max_w if inputs.grid_available_w is None else inputs.grid_available_w
    )
    grid_caps = [
        min(max(a, 0.0), p) for a, p in zip(grid_available, params.grid_p_max_w, strict=True)
    ]
    gc = min(sum(grid_caps), params.grid_import_max_w)
    r, d = sum(renewable), sum(discharge)
    if not math.isnan(inputs.grid_budget_w):
        budget = max(inputs.grid_budget_w, 0.0)
    elif params.green_share_min == 0.0:
        budget = math.inf
    else:
        g = params.green_share_min
        budget = (1.0 - g) / g * (r + d)
    limit = min(gc, budget)
    stack = r + d + limit
    total = stack - inputs.fixed_load_w
    return Supply(renewable, discharge, charge, reserve, grid_caps, limit, stack, total)


def rack_bounds(params: DispatchParams, inputs: DispatchInput) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of every rack as if on; hi is raised to lo where the ramp cannot reach p_min."""
    step = params.rack_ramp_w_per_s * params.period_s
    lo = np.minimum(params.rack_p_max_w, np.maximum(params.rack_p_min_w, inputs.rack_cap_w - step))
    hi = np.maximum(lo, np.minimum(params.rack_p_max_w, inputs.rack_cap_w + step))
    return lo, hi


def scale_of(params: DispatchParams, inputs: DispatchInput) -> float:
    parts = [
        params.rack_p_max_w.sum(),
        inputs.rack_demand_w.sum(),
        params.renewable_p_max_w.sum(),
        params.battery_p_max_w.sum(),
        params.battery_p_charge_max_w.sum(),
        params.grid_p_max_w.sum(),
        inputs.fixed_load_w,
    ]
    return max(1.0, float(sum(parts)))


def assert_same(a: DispatchResult, b: DispatchResult, scale: float) -> None:
    np.testing.assert_array_equal(a.rack_on, b.rack_on)
    assert (a.shed, a.started) == (b.shed, b.started)
    for name in ARRAY_FIELDS:
        np.testing.assert_allclose(
            getattr(a, name), getattr(b, name), rtol=1e-9, atol=1e-9 * scale, err_msg=name
        )
    assert a.served_w == pytest.approx(b.served_w, rel=1e-9, abs=1e-9 * scale)
    assert a.supply_w == pytest.approx(b.supply_w, rel=1e-9, abs=1e-9 * scale)


# ---- random instances that reach every branch: shedding, shortfalls, starts, empty groups

powers = st.one_of(st.just(0.0), st.floats(0.0, 200e3), st.integers(0, 20).map(lambda k: k * 1e4))


@st.composite
def instances(draw: st.DrawFn) -> tuple[DispatchParams, DispatchInput]:
    n = draw(st.integers(0, 16))
    m = draw(st.integers(0, 3))
    b = draw(st.integers(0, 2))
    g = draw(st.integers(0, 2))
    period_s = draw(st.sampled_from([0.1, 1.0, 5.0]))
    ride_through_s = draw(st.sampled_from([0.0, 60.0, 300.0]))
    green = draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.05, 0.95)))

    tier = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    p_max = draw(st.lists(st.floats(10e3, 150e3), min_size=n, max_size=n))
    p_min_frac = draw(
        st.lists(st.one_of(st.just(0.0), st.floats(0.0, 0.6)), min_size=n, max_size=n)
    )
    ramp = draw(st.lists(st.floats(1e3, 200e3), min_size=n, max_size=n))
    p_min = [f * p for f, p in zip(p_min_frac, p_max, strict=True)]

    batteries, soc = [], []
    for _ in range(b):
        bp = draw(st.floats(10e3, 500e3))
        cap_wh = draw(st.floats(1e5, 4e6))
        soc_min = draw(st.floats(0.0, 0.3))
        soc_max = draw(st.floats(0.75, 1.0))
        batteries.append((bp, draw(st.floats(0.0, 500e3)), cap_wh, soc_min, soc_max))
        reserve = soc_min + bp * ride_through_s / 3600.0 / cap_wh
        soc.append(
            draw(
                st.one_of(
                    st.sampled_from([min(reserve, 1.0), soc_max, soc_min, 0.0, 1.0]),
                    st.floats(0.0, 1.0),
                )
            )
        )
    params = make_params(
        tier=tier,
        p_min=p_min,
        p_max=p_max,
        ramp=ramp,
        renewable_p_max=draw(st.lists(st.floats(0.0, 800e3), min_size=m, max_size=m)),
        battery=batteries,
        grid_p_max=draw(st.lists(st.floats(0.0, 300e3), min_size=g, max_size=g)),
        period_s=period_s,
        green_share_min=green,
        ride_through_s=ride_through_s,
        rack_on_margin=draw(st.sampled_from([0.0, 0.2, 1.0])),
        rack_min_off_s=draw(st.sampled_from([0.0, 30.0])),
        grid_import_max_w=draw(st.one_of(st.just(1e12), st.floats(0.0, 400e3))),
    )
    everything_off = draw(st.booleans()) and draw(st.booleans())
    zero_sources = draw(st.booleans()) and draw(st.booleans())
    inputs = make_input(
        demand=draw(st.lists(powers, min_size=n, max_size=n)),
        cap=draw(st.lists(powers, min_size=n, max_size=n)),
        on=[0] * n
        if everything_off
        else draw(st.lists(st.sampled_from([0, 1, 1, 1]), min_size=n, max_size=n)),
        off_s=draw(st.lists(st.sampled_from([0.0, 10.0, 45.0, math.inf]), min_size=n, max_size=n)),
        available=[0.0] * m
        if zero_sources
        else draw(
            st.lists(st.one_of(st.floats(-1e3, 900e3), st.just(0.0)), min_size=m, max_size=m)
        ),
        soc=soc,
        grid_available=None
        if draw(st.booleans())
        else ([0.0] * g if zero_sources else draw(st.lists(powers, min_size=g, max_size=g))),
        grid_budget_w=draw(st.one_of(st.just(math.nan), st.floats(0.0, 300e3))),
        # None most often; else mostly one that the supply covers, at times one it does not.
        fixed_load_w=draw(
            st.one_of(
                st.just(0.0),
                st.just(0.0),
                st.floats(0.0, 150e3),
                st.integers(0, 6).map(lambda k: k * 25e3),
                st.floats(0.0, 2.5e6),
            )
        ),
    )
    return params, inputs


@st.composite
def shortfall_instances(
    draw: st.DrawFn, all_on: bool = False
) -> tuple[DispatchParams, DispatchInput]:
    """Instances whose floors fit and whose supply ends inside the racks' extra above them,
    where rule 4 switches later tiers off for an earlier one.

    The racks come from `instances()`, mostly on, with fresh demands and often with floors
    from a few values (ties in the shedding order). The supply is one renewable and the
    batteries' discharge, no grid: S = floors + u * (sum of want - lo) over the racks that
    are on, u in [-0.05, 1.05], after the fixed load that `instances()` drew.
    """
    params, inputs = draw(instances())
    n = params.n_racks
    if draw(st.booleans()):
        # Ramps that never bind: lo = p_min (or p_max below it), from a few values.
        p_min = draw(st.lists(st.sampled_from([0.0, 5e3, 10e3, 20e3]), min_size=n, max_size=n))
        params = replace(
            params,
            rack_p_min_w=f64(p_min),
            rack_ramp_w_per_s=np.full(n, 1e6) / params.period_s,
        )
    # Mostly on, and a demand above the floor more often than `instances()` draws one.
    on_draw = (
        [1] * n if all_on else draw(st.lists(st.sampled_from([0, 1, 1, 1]), min_size=n, max_size=n))
    )
    inputs = replace(
        inputs,
        rack_on=np.array(on_draw, dtype=np.uint8),
        rack_demand_w=f64(draw(st.lists(st.floats(0.0, 200e3), min_size=n, max_size=n))),
    )
    params = replace(params, renewable_p_max_w=f64([0.0]), grid_p_max_w=np.zeros(params.n_grids))
    inputs = replace(
        inputs, renewable_available_w=f64([0.0]), grid_available_w=None, grid_budget_w=0.0
    )
    lo, hi = rack_bounds(params, inputs)
    want = np.maximum(lo, np.minimum(hi, inputs.rack_demand_w))
    on = inputs.rack_on != 0
    level = float(lo[on].sum()) + draw(st.floats(-0.05, 1.05)) * float((want - lo)[on].sum())
    # The renewable makes up the rest, with room for more (the monotonicity test adds some).
    r = max(level + inputs.fixed_load_w - sum(supply_of(params, inputs).discharge), 0.0)
    params = replace(params, renewable_p_max_w=f64([r + 500e3]))
    inputs = replace(inputs, renewable_available_w=f64([r]))
    return params, inputs


# ---- parity: compiled against reference (fails, never skips, when the kernel is not built


@settings(deadline=None, max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_compiled_matches_reference(case: tuple[DispatchParams, DispatchInput]) -> None:
    params, inputs = case
    compiled = dispatch(params, inputs, implementation="compiled")
    reference = dispatch(params, inputs, implementation="reference")
    assert compiled.compiled and not reference.compiled
    assert_same(compiled, reference, scale_of(params, inputs))
    # Which branches the run reached (pytest --hypothesis-show-statistics).
    event(f"shed {min(reference.shed, 2)}, started {min(reference.started, 2)}")
    lo, hi = rack_bounds(params, inputs)
    floors = float(lo[inputs.rack_on != 0].sum())
    event(f"racks shed while the floors fit: {reference.shed > 0 and floors <= reference.supply_w}")
    want = np.maximum(lo, np.minimum(hi, inputs.rack_demand_w))
    cap = reference.rack_cap_w
    shared = (reference.rack_on != 0) & (cap > lo * (1 + 1e-9)) & (cap < want * (1 - 1e-9))
    event(f"a tier shares a shortfall: {bool(shared.any())}")
    event(
        f"grid imports: {bool(reference.grid_p_w.sum() > 0)}, battery charges: "
        f"{bool(reference.battery_p_w.sum() < 0)}"
    )
    fixed = "none" if inputs.fixed_load_w == 0.0 else "covered"
    if reference.supply_w < 0.0:
        fixed = "not covered"
    event(f"fixed load: {fixed}")


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(shortfall_instances())
def test_compiled_matches_reference_when_later_tiers_go_off(
    case: tuple[DispatchParams, DispatchInput],
) -> None:
    params, inputs = case
    compiled = dispatch(params, inputs, implementation="compiled")
    reference = dispatch(params, inputs, implementation="reference")
    assert_same(compiled, reference, scale_of(params, inputs))
    lo, hi = rack_bounds(params, inputs)
    want = np.maximum(lo, np.minimum(hi, inputs.rack_demand_w))
    stayed = (inputs.rack_on != 0) & (reference.rack_on != 0)
    short = [
        bool(np.any(stayed & (params.rack_tier == t) & (reference.rack_cap_w < want)))
        for t in range(kd.TIERS)
    ]
    event(
        f"shed {min(reference.shed, 3)}, first tier short: "
        f"{short.index(True) if any(short) else None}"
    )


@pytest.mark.parametrize("renewables", [0.5, 0.6, 0.3, 0.4, 0.2, 0.1])
@pytest.mark.parametrize("n", [1, 3000])
def test_compiled_matches_reference_at_site_scale(n: int, renewables: float) -> None:
    # Of the racks' total p_max, 0.5: tier 3 shares a shortfall; 0.6: idle racks start;
    # 0.3 and 0.4: the floors fit but tier 0 or 1 falls short, so racks of later tiers go
    # off for it (rule 4); 0.2: the floors do not fit (rule 3), then rule 4 sheds more;
    # 0.1: thousands of racks are shed.
    params, inputs = kd.random_instance(n, seed=n)
    total = float(params.rack_p_max_w.sum())
    inputs = replace(inputs, renewable_available_w=np.full(4, renewables * total / 4))
    compiled = dispatch(params, inputs, implementation="compiled")
    reference = dispatch(params, inputs, implementation="reference")
    assert_same(compiled, reference, scale_of(params, inputs))
    check_properties(params, inputs, compiled)
    if n > 1:
        assert (compiled.shed > 0) == (renewables < 0.5)
        assert (compiled.started > 0) == (renewables == 0.6)
        lo, _ = rack_bounds(params, inputs)
        floors = float(lo[inputs.rack_on != 0].sum())
        assert (floors <= compiled.supply_w) == (renewables >= 0.3)


def edge_cases() -> dict[str, tuple[DispatchParams, DispatchInput]]:
    """One instance per corner the contract names, each small enough to read."""
    racks = {"tier": [0, 1, 2, 3], "p_min": [20e3] * 4, "p_max": [100e3] * 4, "ramp": [50e3] * 4}
    bat = [(100e3, 80e3, 1e6, 0.1, 0.9)]
    state = {"demand": [90e3, 80e3, 70e3, 60e3], "cap": [60e3] * 4, "on": [1] * 4}
    site = make_params(
        **racks,
        renewable_p_max=[300e3],
        battery=bat,
        grid_p_max=[50e3],
        green_share_min=0.5,
        ride_through_s=300.0,
    )
    reserve = 0.1 + 100e3 * 300.0 / 3600.0 / 1e6
    return {
        "no racks": (
            make_params(tier=[], p_min=[], p_max=[], ramp=[], renewable_p_max=[1e5]),
            make_input(demand=[], cap=[], on=[], available=[5e4]),
        ),
        "no renewables": (
            make_params(**racks, battery=bat, grid_p_max=[50e3], ride_through_s=300.0),
            make_input(**state, soc=[0.5]),
        ),
        "every source at 0": (
            site,
            make_input(**state, available=[0.0], soc=[reserve], grid_available=[0.0]),
        ),
        "all racks off": (
            site,
            make_input(
                demand=state["demand"], cap=[0.0] * 4, on=[0] * 4, available=[250e3], soc=[0.5]
            ),
        ),
        "soc at reserve": (site, make_input(**state, available=[100e3], soc=[reserve])),
        "soc at soc_max": (site, make_input(**state, available=[300e3], soc=[0.9])),
        "green share 0": (
            replace(site, green_share_min=0.0),
            make_input(**state, available=[50e3], soc=[0.2]),
        ),
        "green share 1": (
            replace(site, green_share_min=1.0),
            make_input(**state, available=[50e3], soc=[0.2]),
        ),
        "grid budget given": (
            site,
            make_input(**state, available=[50e3], soc=[0.2], grid_budget_w=12e3),
        ),
        "p_min 0": (
            make_params(
                tier=[0, 1, 2, 3],
                p_min=[0.0] * 4,
                p_max=[100e3] * 4,
                ramp=[30e3] * 4,
                renewable_p_max=[400e3],
            ),
            make_input(
                demand=state["demand"],
                cap=[0.0, 10e3, 0.0, 50e3],
                on=[0, 1, 0, 1],
                off_s=[100.0] * 4,
                available=[150e3],
            ),
        ),
        "shedding": (site, make_input(**state, available=[20e3], soc=[0.0])),
        # Floors 80 kW fit 60 kW of PV + a 50 kW grid; tier 0 needs 70 kW above its floor.
        "shedding for tier 0": (site, make_input(**state, available=[60e3], soc=[reserve])),
        "racks starting": (
            site,
            make_input(
                demand=state["demand"],
                cap=[0.0] * 4,
                on=[1, 0, 0, 0],
                off_s=[0.0, 40.0, 40.0, 10.0],
                available=[300e3],
                soc=[0.5],
            ),
        ),
        # Supply 100 + 100 + 50 kW, of which the fixed load takes 90 kW: 160 kW for the
        # floors (80 kW), tier 0's 70 kW above its floor and 10 kW more.
        "fixed load": (
            site,
            make_input(**state, available=[100e3], soc=[0.5], fixed_load_w=90e3),
        ),
        "fixed load equal to the supply": (
            site,
            make_input(**state, available=[100e3], soc=[0.5], fixed_load_w=250e3),
        ),
        "fixed load above the supply": (
            site,
            make_input(**state, available=[100e3], soc=[0.5], fixed_load_w=400e3),
        ),
    }


@pytest.mark.parametrize("name", list(edge_cases()))
def test_compiled_matches_reference_on_edge_cases(name: str) -> None:
    params, inputs = edge_cases()[name]
    compiled = dispatch(params, inputs, implementation="compiled")
    reference = dispatch(params, inputs, implementation="reference")
    assert_same(compiled, reference, scale_of(params, inputs))
    check_properties(params, inputs, compiled)


def test_edge_cases_reach_their_branch() -> None:
    cases = edge_cases()
    shed = dispatch(*cases["shedding"], implementation="reference")
    assert shed.shed > 0
    # 30 kW spare after the floors; tier 3's and then tier 2's rack go off (20 kW each),
    # so tier 0 gets its 70 kW; tier 1 is left at its floor.
    for_tier_0 = dispatch(*cases["shedding for tier 0"], implementation="reference")
    assert for_tier_0.supply_w == pytest.approx(110e3)
    np.testing.assert_array_equal(for_tier_0.rack_on, [1, 1, 0, 0])
    np.testing.assert_allclose(for_tier_0.rack_cap_w, [90e3, 20e3, 0.0, 0.0], rtol=1e-12)
    started = dispatch(*cases["racks starting"], implementation="reference")
    # r1 and r2 have been off long enough and fit; r3 has not (10 s < 30 s).
    assert started.started == 2
    np.testing.assert_array_equal(started.rack_on, [1, 1, 1, 0])
    full = dispatch(*cases["soc at soc_max"], implementation="reference")
    assert full.battery_p_w[0] == 0.0
    green_one = dispatch(*cases["green share 1"], implementation="reference")
    assert green_one.grid_p_w[0] == 0.0
    # Tier 1 wants 60 kW above its floor, 10 kW are left: tier 3's and tier 2's racks go
    # off (20 kW each) and tier 1 gets the 50 kW.
    fixed = dispatch(*cases["fixed load"], implementation="reference")
    assert fixed.supply_w == pytest.approx(160e3, rel=1e-12) and fixed.shed == 2
    np.testing.assert_allclose(fixed.rack_cap_w, [90e3, 70e3, 0.0, 0.0], rtol=1e-12)
    for name in ("fixed load equal to the supply", "fixed load above the supply"):
        # Every rack has a floor, so every rack goes off.
        res = dispatch(*cases[name], implementation="reference")
        np.testing.assert_array_equal(res.rack_on, [0, 0, 0, 0])
        assert res.shed == 4


# ---- properties of every decision


def check_properties(params: DispatchParams, inputs: DispatchInput, res: DispatchResult) -> None:
    sup = supply_of(params, inputs)
    scale = scale_of(params, inputs)
    tol = 1e-9 * scale
    lo, hi = rack_bounds(params, inputs)
    was_on = inputs.rack_on != 0
    now_on = res.rack_on != 0
    cap = res.rack_cap_w

    stayed = was_on & now_on
    assert np.all(cap[stayed] >= lo[stayed] - tol), "a cap fell below its ramp/p_min floor"
    assert np.all(cap[stayed] <= hi[stayed] + tol), "a cap rose above its ramp/p_max ceiling"
    assert np.all(cap[~now_on] == 0.0), "an off rack has a cap"
    assert res.shed == int(np.count_nonzero(was_on & ~now_on))
    assert res.started == int(np.count_nonzero(~was_on & now_on))
    started = ~was_on & now_on
    step = params.rack_ramp_w_per_s * params.period_s
    start_cap = np.where(
        params.rack_p_min_w > 0,
        params.rack_p_min_w,
        np.minimum(np.minimum(inputs.rack_demand_w, params.rack_p_max_w), step),
    )
    np.testing.assert_allclose(cap[started], start_cap[started], rtol=1e-12)
    assert np.all(inputs.rack_off_s[started] >= params.rack_min_off_s)
    assert np.all(inputs.rack_demand_w[started] > 0)

    need = float(cap.sum())
    assert need <= max(sup.total, 0.0) * (1 + 1e-9) + tol, "caps exceed the supply"
    if sup.total < -tol:
        # The stack does not cover the fixed load: every rack with a floor is off.
        assert not np.any(now_on & (lo > 0.0)), "a rack with a floor is on with S < 0"
        assert res.started == 0
        assert np.all(cap == 0.0)

    # Strict priority (rule 4): once a rack of tier t is held below its want, every rack of
    # a later tier that could free anything is off; only racks already on with lo == 0 stay.
    want = np.maximum(lo, np.minimum(hi, inputs.rack_demand_w))
    tier = params.rack_tier
    curtailed = stayed & (cap < want)
    if curtailed.any():
        t = int(tier[curtailed].min())
        later_on = now_on & (tier > t)
        assert np.all(was_on[later_on] & (lo[later_on] == 0.0)), (
            f"tier {t} is curtailed while a later tier keeps a rack with a floor on"
        )

    ren_p = res.renewable_p_w
    assert np.all(ren_p >= -tol) and np.all(res.renewable_curtailed_w >= -tol)
    np.testing.assert_allclose(ren_p + res.renewable_curtailed_w, sup.renewable, atol=tol)
    bat = res.battery_p_w
    discharge = np.maximum(bat, 0.0)
    charge = np.maximum(-bat, 0.0)
    assert np.all(discharge <= np.array(sup.discharge) * (1 + 1e-9) + tol)
    assert np.all(charge <= np.array(sup.charge) * (1 + 1e-9) + tol)
    # SOC limits: one period at this power keeps every battery within [reserve, soc_max].
    for k in range(params.n_batteries):
        soc_next = (
            inputs.battery_soc[k]
            - bat[k] * params.period_s / 3600.0 / (params.battery_capacity_wh[k])
        )
        if bat[k] > 0:
            assert soc_next >= sup.reserve[k] - 1e-9
        if bat[k] < 0:
            assert soc_next <= params.battery_soc_max[k] + 1e-9
    grid = res.grid_p_w
    assert np.all(grid >= 0.0), "the grid exports"
    assert np.all(grid <= np.array(sup.grid_caps) * (1 + 1e-9) + tol)
    assert grid.sum() <= sup.grid_limit * (1 + 1e-9) + tol, "grid above its cap or budget"
    if grid.sum() > tol:
        assert charge.sum() <= tol, "a battery charges while the grid imports"
        assert discharge.sum() == pytest.approx(sum(sup.discharge), rel=1e-9, abs=tol)
        assert ren_p.sum() == pytest.approx(sum(sup.renewable), rel=1e-9, abs=tol)
    # Energy balance: racks + fixed load + charging = renewables + discharging + grid, but
    # for the part of the fixed load that the whole stack does not cover.
    fixed = inputs.fixed_load_w
    unmet = max(need + fixed - sup.stack, 0.0)
    assert need + fixed + charge.sum() - unmet == pytest.approx(
        ren_p.sum() + discharge.sum() + grid.sum(), rel=1e-9, abs=tol
    )
    if unmet > tol:
        # Every source delivers what it can, and nothing more.
        assert sup.total < 0.0
        assert ren_p.sum() == pytest.approx(sum(sup.renewable), rel=1e-9, abs=tol)
        assert discharge.sum() == pytest.approx(sum(sup.discharge), rel=1e-9, abs=tol)
        assert grid.sum() == pytest.approx(sup.grid_limit, rel=1e-9, abs=tol)
    # Curtailment only once the batteries charge as much as they can.
    if res.renewable_curtailed_w.sum() > tol:
        assert charge.sum() == pytest.approx(sum(sup.charge), rel=1e-9, abs=tol)

    served = np.where(now_on, np.minimum(inputs.rack_demand_w, cap), 0.0)
    for t in range(kd.TIERS):
        mine = params.rack_tier == t
        assert res.demand_w_by_tier[t] == pytest.approx(
            inputs.rack_demand_w[mine].sum(), rel=1e-12, abs=tol
        )
        assert res.served_w_by_tier[t] == pytest.approx(served[mine].sum(), rel=1e-12, abs=tol)
    np.testing.assert_allclose(
        res.unserved_w_by_tier, res.demand_w_by_tier - res.served_w_by_tier, atol=tol
    )
    assert res.served_w == pytest.approx(res.served_w_by_tier.sum(), rel=1e-12, abs=tol)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.one_of(instances(), shortfall_instances()))
def test_decision_properties(
    implementation: kd.Implementation, case: tuple[DispatchParams, DispatchInput]
) -> None:
    params, inputs = case
    check_properties(params, inputs, dispatch(params, inputs, implementation=implementation))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@settings(deadline=None, max_examples=60)
@given(case=instances())
def test_same_input_gives_identical_output(
    implementation: kd.Implementation, case: tuple[DispatchParams, DispatchInput]
) -> None:
    params, inputs = case
    a = dispatch(params, inputs, implementation=implementation)
    b = dispatch(params, inputs, implementation=implementation)
    for name in (*ARRAY_FIELDS, "rack_on"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes(), name
    assert (a.served_w, a.shed, a.started, a.supply_w) == (
        b.served_w,
        b.shed,
        b.started,
        b.supply_w,
    )


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@settings(deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=st.one_of(instances(), shortfall_instances(all_on=True)),
    extra=st.floats(0.0, 500e3),
    which=st.integers(0, 2),
)
def test_more_renewables_never_serve_a_tier_less(
    implementation: kd.Implementation,
    case: tuple[DispatchParams, DispatchInput],
    extra: float,
    which: int,
) -> None:
    # All racks on and the floors fit the lower supply. Tier 0 is never shed then and
    # only ever gains from more supply, shedding or not. With nothing shed at the lower
    # supply nothing is shed at the higher one either, and then every tier and every cap
    # can only rise. Across shedding the later tiers are not monotone by design: at a low
    # supply a tier-3 rack goes off and its floor serves tier 2; at a higher one it stays
    # on at its floor, which may serve less of its own demand.
    params, inputs = case
    n = params.n_racks
    inputs = replace(inputs, rack_on=np.ones(n, dtype=np.uint8))
    lo, _ = rack_bounds(params, inputs)
    if params.n_renewables == 0 or lo.sum() > supply_of(params, inputs).total:
        return
    more = inputs.renewable_available_w.copy()
    more[which % params.n_renewables] += extra
    before = dispatch(params, inputs, implementation=implementation)
    after = dispatch(
        params, replace(inputs, renewable_available_w=more), implementation=implementation
    )
    tol = 1e-9 * scale_of(params, inputs)
    tier_0 = params.rack_tier == 0
    assert np.all(before.rack_on[tier_0] == 1) and np.all(after.rack_on[tier_0] == 1)
    assert after.served_w_by_tier[0] >= before.served_w_by_tier[0] - tol
    assert np.all(after.rack_cap_w[tier_0] >= before.rack_cap_w[tier_0] - tol)
    event(f"shed at the lower supply: {before.shed > 0}")
    if before.shed > 0:
        return
    assert after.shed == 0
    assert np.all(after.served_w_by_tier >= before.served_w_by_tier - tol)
    assert np.all(after.rack_cap_w >= before.rack_cap_w - tol)


# ---- hand-built cases


def shortfall_case() -> tuple[DispatchParams, DispatchInput]:
    # Ramp and p_max never bind, so lo = p_min = 10 kW and want = demand.
    params = make_params(
        tier=[0, 1, 1, 1],
        p_min=[10e3] * 4,
        p_max=[200e3] * 4,
        ramp=[1e6] * 4,
        renewable_p_max=[1e6],
    )
    inputs = make_input(
        demand=[40e3, 90e3, 30e3, 12e3], cap=[50e3] * 4, on=[1] * 4, available=[120e3]
    )
    return params, inputs


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_tier_shortfall_is_shared_by_equal_fraction_of_demand(
    implementation: kd.Implementation,
) -> None:
    params, inputs = shortfall_case()
    res = dispatch(params, inputs, implementation=implementation)
    # Tier 0 gets its 40 kW; tier 1 gets the remaining 80 kW. Trying every rack above its
    # floor: f = 80 / 132 = 0.606, but 0.606 * 12 kW < 10 kW, so the 12 kW rack stays at
    # its floor and the others share 80 - 10 = 70 kW of their 120 kW: f = 7/12.
    f = 70e3 / 120e3
    expected = [40e3, f * 90e3, f * 30e3, 10e3]
    np.testing.assert_allclose(res.rack_cap_w, expected, rtol=1e-12)
    # Equal fraction: both racks above their floor run at the same share of their demand.
    assert res.rack_cap_w[1] / 90e3 == pytest.approx(res.rack_cap_w[2] / 30e3, rel=1e-12)
    np.testing.assert_allclose(res.served_w_by_tier, [40e3, 80e3, 0.0, 0.0], rtol=1e-12)
    np.testing.assert_allclose(res.unserved_w_by_tier, [0.0, 52e3, 0.0, 0.0], atol=1e-6)
    assert res.renewable_curtailed_w[0] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("newton_max_iter", [0, 1])
def test_bisection_finishes_when_newton_is_cut_short(
    implementation: kd.Implementation, newton_max_iter: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    params, inputs = shortfall_case()
    monkeypatch.setattr(kd, "NEWTON_MAX_ITER", newton_max_iter)
    res = dispatch(params, inputs, implementation=implementation)
    f = 70e3 / 120e3
    np.testing.assert_allclose(res.rack_cap_w, [40e3, f * 90e3, f * 30e3, 10e3], rtol=1e-12)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_shedding_takes_tier_3_largest_floor_first(
    implementation: kd.Implementation,
) -> None:
    # Floors (cap_prev - ramp step, above p_min): 30, 50, 50 kW in tier 3, 20 kW in tier 0.
    params = make_params(
        tier=[3, 3, 3, 0],
        p_min=[10e3] * 4,
        p_max=[100e3] * 4,
        ramp=[10e3] * 4,
        renewable_p_max=[1e6],
    )
    state = {"demand": [100e3] * 4, "cap": [40e3, 60e3, 60e3, 30e3], "on": [1] * 4}
    # 150 kW of floors against 120 kW: shedding one 50 kW rack suffices; the tie goes to
    # the lower index. The 20 kW left cover tier 0's ramp to 40 kW, so rule 4 sheds no more.
    res = dispatch(params, make_input(**state, available=[120e3]), implementation=implementation)
    np.testing.assert_array_equal(res.rack_on, [1, 0, 1, 1])
    assert res.shed == 1 and res.rack_cap_w[1] == 0.0
    np.testing.assert_allclose(res.rack_cap_w, [30e3, 0.0, 50e3, 40e3], rtol=1e-12)
    # 40 kW: all of tier 3 goes (largest first: 50, 50, 30) and the floors fit at 20 kW.
    res = dispatch(params, make_input(**state, available=[40e3]), implementation=implementation)
    np.testing.assert_array_equal(res.rack_on, [0, 0, 0, 1])
    assert res.shed == 3
    # What is left above the tier-0 floor (40 - 20 kW) covers its ramp up to 40 kW.
    assert res.rack_cap_w[3] == pytest.approx(40e3, rel=1e-12)


def priority_case(available_w: float) -> tuple[DispatchParams, DispatchInput]:
    # Ramps never bind, so lo = p_min and want = demand:
    #   rack  0    1    2    3    4    5    6    7
    #   tier  0    3    3    2    3    2    1    3
    #   lo   20   10   30   25   30   40   15    0  kW  (floors 170 kW)
    #   want 100  50   60   60   60   80   35   40  kW
    params = make_params(
        tier=[0, 3, 3, 2, 3, 2, 1, 3],
        p_min=[20e3, 10e3, 30e3, 25e3, 30e3, 40e3, 15e3, 0.0],
        p_max=[200e3] * 8,
        ramp=[1e6] * 8,
        renewable_p_max=[1e6],
    )
    inputs = make_input(
        demand=[100e3, 50e3, 60e3, 60e3, 60e3, 80e3, 35e3, 40e3],
        cap=[50e3] * 8,
        on=[1] * 8,
        available=[available_w],
    )
    return params, inputs


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_later_tiers_go_off_before_an_earlier_tier_is_curtailed(
    implementation: kd.Implementation,
) -> None:
    # 175 kW: the floors fit with 5 kW to spare, tier 0 needs 80 kW above its floor. Tier 3
    # goes first, largest floor first, the tie at 30 kW to the lower index: rack 2
    # (spare 35), rack 4 (65), rack 1 (75); still short, so tier 2: rack 5 (40 kW, 115).
    # Tier 0 gets its want (35 left), tier 1 its 20 kW (15 left). Tier 2's rack 3 has
    # nothing left to shed below it and shares: 25 + 15 = 40 kW of its 60. Rack 7 (lo 0)
    # frees nothing, stays on and is held at its floor, 0 W.
    res = dispatch(*priority_case(175e3), implementation=implementation)
    np.testing.assert_array_equal(res.rack_on, [1, 0, 0, 1, 0, 0, 1, 1])
    assert res.shed == 4 and res.started == 0
    np.testing.assert_allclose(
        res.rack_cap_w, [100e3, 0.0, 0.0, 40e3, 0.0, 0.0, 35e3, 0.0], rtol=1e-12, atol=1e-6
    )
    np.testing.assert_allclose(res.served_w_by_tier, [100e3, 35e3, 40e3, 0.0], rtol=1e-12)

    # 200 kW: 30 kW spare; racks 2 and 4 go (90), tier 0 is served (10 left). Tier 1 needs
    # 20: the same order goes on with rack 1 (20), tier 1 is served, nothing is left. Tier
    # 2 has no later rack with a floor on: it stays at its floors.
    res = dispatch(*priority_case(200e3), implementation=implementation)
    np.testing.assert_array_equal(res.rack_on, [1, 0, 0, 1, 0, 1, 1, 1])
    assert res.shed == 3
    np.testing.assert_allclose(
        res.rack_cap_w, [100e3, 0.0, 0.0, 25e3, 0.0, 40e3, 35e3, 0.0], rtol=1e-12, atol=1e-6
    )

    # 270 kW: the 100 kW spare serves tiers 0 and 1 (80 + 20 kW) without shedding. Tier 2
    # wants 35 + 40 = 75 kW above its floors with nothing left: every rack of tier 3 with
    # a floor goes (30, 30, 10 kW) and tier 2 shares those 70 kW by an equal fraction.
    res = dispatch(*priority_case(270e3), implementation=implementation)
    np.testing.assert_array_equal(res.rack_on, [1, 0, 0, 1, 0, 1, 1, 1])
    f = (65e3 + 70e3) / 140e3
    np.testing.assert_allclose(
        res.rack_cap_w, [100e3, 0.0, 0.0, f * 60e3, 0.0, f * 80e3, 35e3, 0.0], rtol=1e-12
    )

    # 500 kW, more than the 485 kW of wants: every rack gets its want, nothing goes off.
    res = dispatch(*priority_case(500e3), implementation=implementation)
    assert res.shed == 0
    np.testing.assert_allclose(
        res.rack_cap_w, [100e3, 50e3, 60e3, 60e3, 60e3, 80e3, 35e3, 40e3], rtol=1e-12
    )


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_rack_shed_this_cycle_does_not_start_again(
    implementation: kd.Implementation,
) -> None:
    # No minimum off time and no margin: shedding rack 1 (tier 3, lo 60 kW) for tier 0
    # leaves 50 kW unused, enough for its start cap, yet it stays off this cycle.
    params = make_params(
        tier=[0, 3],
        p_min=[10e3, 30e3],
        p_max=[200e3, 200e3],
        ramp=[10e3, 10e3],
        renewable_p_max=[1e6],
        rack_on_margin=0.0,
        rack_min_off_s=0.0,
    )
    inputs = make_input(
        demand=[100e3, 100e3], cap=[50e3, 70e3], on=[1, 1], off_s=[0.0, 0.0], available=[120e3]
    )
    # The ramp holds both racks 10 kW below their caps: floors 40 + 60 = 100 kW, and each
    # wants 20 kW more. At 120 kW tier 0 is served and tier 3 stays at its floor.
    res = dispatch(params, inputs, implementation=implementation)
    assert res.shed == 0
    np.testing.assert_allclose(res.rack_cap_w, [60e3, 60e3], rtol=1e-12)
    # 105 kW: 5 kW spare < 20 kW: rack 1 goes off (spare 65 kW), tier 0 takes 20 kW and
    # 45 kW are left, more than rack 1's start cap of 30 kW.
    res = dispatch(
        params, replace(inputs, renewable_available_w=f64([105e3])), implementation=implementation
    )
    np.testing.assert_array_equal(res.rack_on, [1, 0])
    assert (res.shed, res.started) == (1, 0)
    np.testing.assert_allclose(res.rack_cap_w, [60e3, 0.0], rtol=1e-12)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_starting_needs_margin_and_minimum_off_time(
    implementation: kd.Implementation,
) -> None:
    params = make_params(
        tier=[2, 0, 1],
        p_min=[20e3, 20e3, 0.0],
        p_max=[100e3] * 3,
        ramp=[15e3] * 3,
        renewable_p_max=[1e6],
        rack_on_margin=0.5,
        rack_min_off_s=30.0,
    )

    def run(available: float, off_s: list[float]) -> DispatchResult:
        inputs = make_input(
            demand=[80e3, 80e3, 50e3], cap=[0.0] * 3, on=[0] * 3, off_s=off_s, available=[available]
        )
        return dispatch(params, inputs, implementation=implementation)

    # Below 1.5 * 15 kW (rack 2's start) and 1.5 * 20 kW: nothing starts.
    assert run(22.4e3, [60.0] * 3).started == 0
    # 29.9 kW: tier 0 (needs 30 kW) must wait; tier 1's rack 2 starts at
    # min(demand, p_max, ramp step) = 15 kW since p_min is 0.
    res = run(29.9e3, [60.0] * 3)
    np.testing.assert_array_equal(res.rack_on, [0, 0, 1])
    np.testing.assert_allclose(res.rack_cap_w, [0.0, 0.0, 15e3])
    # 30 kW: rack 1 (tier 0) starts first at p_min; 10 kW left < 22.5 kW for rack 2.
    res = run(30e3, [60.0] * 3)
    np.testing.assert_array_equal(res.rack_on, [0, 1, 0])
    np.testing.assert_allclose(res.rack_cap_w, [0.0, 20e3, 0.0])
    # 100 kW: tier 0 at 20 kW, then rack 2 (p_min 0) at min(demand, p_max, ramp) = 15 kW,
    # then rack 0 at 20 kW (65 kW left >= 30 kW).
    res = run(100e3, [60.0] * 3)
    np.testing.assert_array_equal(res.rack_on, [1, 1, 1])
    np.testing.assert_allclose(res.rack_cap_w, [20e3, 20e3, 15e3])
    # Off for less than rack_min_off_s: rack 1 stays off whatever the supply.
    res = run(100e3, [60.0, 29.0, 60.0])
    np.testing.assert_array_equal(res.rack_on, [1, 0, 1])


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_supply_stack_order_and_green_share(implementation: kd.Implementation) -> None:
    params = make_params(
        tier=[0, 0],
        p_min=[0.0, 0.0],
        p_max=[500e3, 500e3],
        ramp=[1e6, 1e6],
        renewable_p_max=[300e3, 300e3],
        battery=[(100e3, 50e3, 1e6, 0.1, 0.9)],
        grid_p_max=[200e3, 100e3],
        green_share_min=0.8,
    )
    # Renewables 100 + 50, battery 100: green 250 kW, so the grid may add 250 / 4 = 62.5 kW.
    inputs = make_input(
        demand=[400e3, 400e3], cap=[400e3, 400e3], on=[1, 1], available=[100e3, 50e3], soc=[0.5]
    )
    res = dispatch(params, inputs, implementation=implementation)
    assert res.supply_w == pytest.approx(312.5e3)
    np.testing.assert_allclose(res.renewable_p_w, [100e3, 50e3])
    np.testing.assert_allclose(res.battery_p_w, [100e3])
    # Split in proportion to the grid sources' caps, 2:1.
    np.testing.assert_allclose(res.grid_p_w, [62.5e3 * 2 / 3, 62.5e3 / 3])
    np.testing.assert_allclose(res.rack_cap_w, [156.25e3, 156.25e3])
    # Little demand: renewables in equal fraction, surplus charges (50 kW), rest curtailed.
    inputs = replace(inputs, rack_demand_w=f64([30e3, 20e3]))
    res = dispatch(params, inputs, implementation=implementation)
    np.testing.assert_allclose(res.battery_p_w, [-50e3])
    np.testing.assert_allclose(res.grid_p_w, [0.0, 0.0])
    np.testing.assert_allclose(res.renewable_p_w, [100e3 * 2 / 3, 50e3 * 2 / 3])
    np.testing.assert_allclose(res.renewable_curtailed_w, [100e3 / 3, 50e3 / 3])


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_fixed_load_is_served_before_tier_0(implementation: kd.Implementation) -> None:
    params, inputs = shortfall_case()
    # 120 kW of PV less a fixed load of 20 kW: 100 kW for the caps. Tier 0 gets its
    # 40 kW, tier 1 the remaining 60 kW: its 12 kW rack stays at its 10 kW floor and the
    # others share 50 kW of their 120 kW, f = 5/12.
    res = dispatch(params, replace(inputs, fixed_load_w=20e3), implementation=implementation)
    assert res.supply_w == pytest.approx(100e3, rel=1e-12)
    f = 50e3 / 120e3
    np.testing.assert_allclose(res.rack_cap_w, [40e3, f * 90e3, f * 30e3, 10e3], rtol=1e-12)
    np.testing.assert_allclose(res.served_w_by_tier, [40e3, 60e3, 0.0, 0.0], rtol=1e-12)
    # The PV delivers for the caps and for the fixed load: all of its 120 kW.
    assert res.renewable_p_w[0] == pytest.approx(120e3, rel=1e-12)
    assert res.renewable_curtailed_w[0] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_fixed_load_above_the_supply_sheds_every_rack_with_a_floor(
    implementation: kd.Implementation,
) -> None:
    # Floors of 20 kW (p_min) on racks 0-3, none on rack 4 (p_min 0, cap 0); rack 5 is off
    # and could start. Supply: PV 100 kW, the battery 100 kW and the grid its cap, 50 kW
    # (green share 0.5: budget 200 kW), 250 kW against a fixed load of 300 kW.
    params = make_params(
        tier=[0, 1, 2, 3, 0, 1],
        p_min=[20e3, 20e3, 20e3, 20e3, 0.0, 10e3],
        p_max=[100e3] * 6,
        ramp=[50e3] * 6,
        renewable_p_max=[300e3],
        battery=[(100e3, 80e3, 1e6, 0.1, 0.9)],
        grid_p_max=[50e3],
        green_share_min=0.5,
        rack_min_off_s=0.0,
    )
    inputs = make_input(
        demand=[90e3, 80e3, 70e3, 60e3, 50e3, 40e3],
        cap=[60e3, 60e3, 60e3, 60e3, 0.0, 0.0],
        on=[1, 1, 1, 1, 1, 0],
        available=[100e3],
        soc=[0.5],
        fixed_load_w=300e3,
    )
    res = dispatch(params, inputs, implementation=implementation)
    assert res.supply_w == pytest.approx(-50e3, rel=1e-12)
    # Rack 4 frees nothing by going off: it stays on, at its floor of 0 W; nothing starts.
    np.testing.assert_array_equal(res.rack_on, [0, 0, 0, 0, 1, 0])
    assert (res.shed, res.started) == (4, 0)
    np.testing.assert_array_equal(res.rack_cap_w, np.zeros(6))
    np.testing.assert_array_equal(res.served_w_by_tier, np.zeros(4))
    # Every source delivers its limit for the fixed load, and no more: 50 kW go unmet.
    np.testing.assert_allclose(res.renewable_p_w, [100e3], rtol=1e-12)
    np.testing.assert_allclose(res.battery_p_w, [100e3], rtol=1e-12)
    np.testing.assert_allclose(res.grid_p_w, [50e3], rtol=1e-12)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_fixed_load_leaves_the_grid_budget_and_surplus_rules(
    implementation: kd.Implementation,
) -> None:
    # The site of test_supply_stack_order_and_green_share: renewables 150 kW, battery
    # 100 kW, green share 0.8, so the grid may add (150 + 100) / 4 = 62.5 kW.
    params = make_params(
        tier=[0, 0],
        p_min=[0.0, 0.0],
        p_max=[500e3, 500e3],
        ramp=[1e6, 1e6],
        renewable_p_max=[300e3, 300e3],
        battery=[(100e3, 50e3, 1e6, 0.1, 0.9)],
        grid_p_max=[200e3, 100e3],
        green_share_min=0.8,
    )
    inputs = make_input(
        demand=[400e3, 400e3],
        cap=[400e3, 400e3],
        on=[1, 1],
        available=[100e3, 50e3],
        soc=[0.5],
        fixed_load_w=112.5e3,
    )
    res = dispatch(params, inputs, implementation=implementation)
    # The fixed load does not raise the budget: the grid still adds 62.5 kW, and the caps
    # share what the fixed load leaves of 312.5 kW.
    assert res.supply_w == pytest.approx(200e3, rel=1e-12)
    np.testing.assert_allclose(res.rack_cap_w, [100e3, 100e3], rtol=1e-12)
    np.testing.assert_allclose(res.grid_p_w, [62.5e3 * 2 / 3, 62.5e3 / 3], rtol=1e-12)
    np.testing.assert_allclose(res.battery_p_w, [100e3], rtol=1e-12)
    # Little demand: 50 kW for the racks and 50 kW of fixed load come from the 150 kW of
    # renewables; the 50 kW left charge the battery, and nothing is curtailed.
    little = replace(inputs, rack_demand_w=f64([30e3, 20e3]), fixed_load_w=50e3)
    res = dispatch(params, little, implementation=implementation)
    np.testing.assert_allclose(res.rack_cap_w, [30e3, 20e3], rtol=1e-12)
    np.testing.assert_allclose(res.battery_p_w, [-50e3], rtol=1e-12)
    np.testing.assert_allclose(res.grid_p_w, [0.0, 0.0])
    np.testing.assert_allclose(res.renewable_p_w, [100e3, 50e3], rtol=1e-12)
    np.testing.assert_allclose(res.renewable_curtailed_w, [0.0, 0.0], atol=1e-6)


# Decisions without a fixed load, pinned to 1e-12 so that the fixed load cannot move them:
# random_instance(40, seed=7) with renewables at a share of the racks' p_max, as (share,
# on flags, sum of caps, served per tier, supply, shed, started, battery, grid, renewables).
PINNED_DECISIONS = (
    (0.6, "1111111111111111111111111111110111111111", 3179474.495318849,
     (566347.5845991803, 695474.0377399444, 1341872.1819342934, 573686.5474823479),
     3520507.176830139, 0, 2, 621265.9723817892, 73144.63340990292, 2485063.889527157),
    (0.5, "1111111111111111111111111111110111110101", 3106329.8619089453,
     (566347.5845991803, 659023.3217929183, 1312329.1372752602, 566535.674678504),
     3106329.861908946, 0, 0, 621265.9723817892, 414177.3149211928, 2070886.5746059641),
    (0.3, "1100110011111111111011111111110110110001", 2277975.23206656,
     (566347.5845991803, 659023.3217929183, 1050510.1821113788, 0.0),
     2277975.2320665605, 7, 0, 621265.9723817892, 414177.31492119236, 1242531.9447635785),
    (0.1, "0100100000101110000001011101010110110001", 1294304.109128727,
     (566347.5845991803, 659023.3217929183, 66839.05917354568, 0.0),
     1294304.1091287276, 20, 0, 621265.9723817892, 258860.82182574482, 414177.3149211928),
)  # fmt: skip


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("pinned", PINNED_DECISIONS, ids=lambda p: f"renewables {p[0]}")
def test_no_fixed_load_keeps_the_pinned_decisions(
    implementation: kd.Implementation, pinned: tuple[Any, ...]
) -> None:
    share, on, caps, served, supply, shed, started, battery, grid, renewables = pinned
    params, inputs = kd.random_instance(40, seed=7)
    total = float(params.rack_p_max_w.sum())
    inputs = replace(inputs, renewable_available_w=np.full(4, share * total / 4))
    res = dispatch(params, replace(inputs, fixed_load_w=0.0), implementation=implementation)
    assert "".join(str(int(x)) for x in res.rack_on) == on
    assert (res.shed, res.started) == (shed, started)
    got = (
        float(res.rack_cap_w.sum()),
        *res.served_w_by_tier,
        res.supply_w,
        float(res.battery_p_w.sum()),
        float(res.grid_p_w.sum()),
        float(res.renewable_p_w.sum()),
    )
    expected = (caps, *served, supply, battery, grid, renewables)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-6)
    # And bit for bit what leaving the field out gives.
    default = dispatch(params, inputs, implementation=implementation)
    for name in (*ARRAY_FIELDS, "rack_on"):
        assert getattr(res, name).tobytes() == getattr(default, name).tobytes(), name
    assert res.supply_w == default.supply_w and res.served_w == default.served_w


@pytest.mark.parametrize(
    ("fixed", "tiers_served"), [(0.02, 4), (0.3, 3), (0.5, 2), (0.7, 1), (0.8, 0)]
)
def test_compiled_matches_reference_with_fixed_loads_at_site_scale(
    fixed: float, tiers_served: int
) -> None:
    # The fixed load as a share of the racks' total p_max, against a supply of 0.75 of it:
    # 0.02 deepens tier 3's shortfall, 0.3 switches tier 3 off and cuts into tier 2, 0.5
    # into tier 1, 0.7 into tier 0, and 0.8 is not covered at all.
    params, inputs = kd.random_instance(3000, seed=3)
    total = float(params.rack_p_max_w.sum())
    inputs = replace(inputs, fixed_load_w=fixed * total)
    compiled = dispatch(params, inputs, implementation="compiled")
    reference = dispatch(params, inputs, implementation="reference")
    assert_same(compiled, reference, scale_of(params, inputs))
    check_properties(params, inputs, compiled)
    served = [bool(x > 0.0) for x in compiled.served_w_by_tier]
    assert served == [t < tiers_served for t in range(kd.TIERS)]
    assert (compiled.shed > 0) == (fixed > 0.02)
    assert (compiled.supply_w < 0.0) == (tiers_served == 0)


# ---- validation of the Python face


def test_rejects_wrong_dtype_layout_and_length() -> None:
    params, inputs = shortfall_case()
    with pytest.raises(ValueError, match="rack_demand_w: expected dtype float64"):
        dispatch(params, replace(inputs, rack_demand_w=inputs.rack_demand_w.astype(np.float32)))
    strided = np.zeros(8)[::2]
    with pytest.raises(ValueError, match="rack_cap_w: expected a C-contiguous"):
        dispatch(params, replace(inputs, rack_cap_w=strided))
    with pytest.raises(ValueError, match="rack_on: expected length 4, got 3"):
        dispatch(params, replace(inputs, rack_on=np.ones(3, dtype=np.uint8)))
    with pytest.raises(ValueError, match="rack_on: expected dtype uint8"):
        dispatch(params, replace(inputs, rack_on=np.ones(4, dtype=bool)))
    with pytest.raises(ValueError, match="battery_soc: expected length 0"):
        dispatch(params, replace(inputs, battery_soc=f64([0.5])))
    with pytest.raises(ValueError, match=r"rack_tier: expected values 0\.\.3"):
        replace(params, rack_tier=np.array([0, 1, 4, 1], dtype=np.int8))
    with pytest.raises(ValueError, match="rack_tier: expected dtype int8"):
        replace(params, rack_tier=np.array([0, 1, 2, 1]))
    with pytest.raises(ValueError, match="period_s"):
        replace(params, period_s=0.0)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("value", [-1.0, -1e-300, math.nan, math.inf, -math.inf, "100", None, True])
def test_rejects_a_fixed_load_that_is_not_a_finite_power(
    implementation: kd.Implementation, value: object
) -> None:
    params, inputs = shortfall_case()
    with pytest.raises(ValueError, match="fixed_load_w: expected a finite power in W >= 0"):
        dispatch(params, replace(inputs, fixed_load_w=value), implementation=implementation)


def test_explicit_compiled_request_loads_the_extension() -> None:
    # The parity tests rely on this: when the kernel is not built they fail, not skip.
    assert kd._compiled_module().__name__ == "edgectl._ext.dispatch"
