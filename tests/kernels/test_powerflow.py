"""DC power flow: compiled kernel against the SciPy reference, physics, and edge cases."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgectl import kernels
from edgectl.bench.networks import synthetic_case
from edgectl.kernels.powerflow import PowerFlow, PowerFlowResult, Status, Topology

IMPLEMENTATIONS = ["compiled", "reference"]


def test_compiled_kernel_is_built() -> None:
    # CI builds the extension; a missing build must fail here, not silently test the fallback.
    assert kernels._powerflow_ext is not None, kernels.BUILD_HINT


def kcl_mismatch(topo: Topology, s: np.ndarray, res: PowerFlowResult) -> np.ndarray:
    """Per-bus current mismatch computed independently of both solvers, relative."""
    n = topo.n_bus
    v = res.v_v
    line_out = np.zeros(n)
    np.add.at(line_out, topo.line_from, res.line_i_a)
    np.add.at(line_out, topo.line_to, -res.line_i_a)
    # The line currents must themselves follow Ohm's law from the voltages.
    ohm = (v[topo.line_from] - v[topo.line_to]) / topo.line_r_ohm
    np.testing.assert_allclose(res.line_i_a, ohm, rtol=1e-12, atol=1e-9)
    droop_in = np.zeros(n)
    np.add.at(droop_in, topo.droop_bus, res.droop_i_a)
    injected = s / v + droop_in
    # Relative to the current through the network; a 1 A floor for a near-idle one.
    scale = np.abs(s / v).sum() + np.abs(res.droop_i_a).sum() + 1.0
    return np.asarray(np.abs(injected - line_out) / scale)


def check_physics(topo: Topology, s: np.ndarray, res: PowerFlowResult) -> None:
    assert res.converged, res.message
    assert np.all(kcl_mismatch(topo, s, res) < 1e-6)
    # Droop converters obey their law and limits.
    raw = (topo.droop_v_ref_v - res.v_v[topo.droop_bus]) / topo.droop_r_ohm
    np.testing.assert_allclose(
        res.droop_i_a, np.clip(raw, topo.droop_i_min_a, topo.droop_i_max_a), rtol=1e-9, atol=1e-6
    )
    # Power balance: everything injected = loads + line losses; losses are non-negative.
    injected = float(s.sum() + res.droop_p_w.sum())
    assert res.losses_w >= 0.0
    assert injected == pytest.approx(res.losses_w, rel=1e-6, abs=1e-6 * np.abs(s).sum() + 1e-3)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("n", [1, 2, 10, 100, 1000])
def test_synthetic_networks_obey_kirchhoff(n: int, implementation: str) -> None:
    case = synthetic_case(n, seed=n)
    res = PowerFlow(case.topology, implementation=implementation).solve(case.s_bus_w)  # type: ignore[arg-type]
    check_physics(case.topology, case.s_bus_w, res)
    assert 0.0 < res.collapse_margin <= 1.0
    assert res.v_v.min() < 800.0  # loaded: voltages sag below the droop reference


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 300),
    seed=st.integers(0, 2**31),
    mesh=st.floats(0.0, 0.5),
    load=st.floats(0.0, 3.0),
    global_ties=st.booleans(),
)
def test_compiled_matches_reference(
    n: int, seed: int, mesh: float, load: float, global_ties: bool
) -> None:
    case = synthetic_case(n, seed, mesh=mesh, tie_span=n if global_ties else 20)
    s = case.s_bus_w * load
    a = PowerFlow(case.topology, implementation="compiled").solve(s)
    b = PowerFlow(case.topology, implementation="reference").solve(s)
    assert a.status == b.status
    if a.converged:
        # Failed solves may wander differently in round-off; converged ones must not.
        assert a.iterations == b.iterations
        np.testing.assert_allclose(a.v_v, b.v_v, rtol=1e-9)
        np.testing.assert_allclose(a.line_i_a, b.line_i_a, rtol=1e-6, atol=1e-6)
        assert a.collapse_margin == pytest.approx(b.collapse_margin, rel=1e-6, abs=1e-9)
        check_physics(case.topology, s, a)


def test_radial_feeder_of_ten_thousand_buses_stays_sparse() -> None:
    n = 10_000
    # A single chain, the worst radial case; converters rated well above their share.
    case = synthetic_case(n, seed=7, mesh=0.0, reach=1, headroom=10.0)
    pf = PowerFlow(case.topology, implementation="compiled")
    # Zero fill on a tree: L has exactly one off-diagonal per non-root column.
    assert pf._solver.lnz_total == n - 1  # type: ignore[attr-defined]
    res = pf.solve(case.s_bus_w)
    check_physics(case.topology, case.s_bus_w, res)
    ref = PowerFlow(case.topology, implementation="reference").solve(case.s_bus_w)
    np.testing.assert_allclose(res.v_v, ref.v_v, rtol=1e-9)


def test_meshed_network_of_ten_thousand_buses() -> None:
    case = synthetic_case(10_000, seed=3, mesh=0.2)
    pf = PowerFlow(case.topology, implementation="compiled")
    assert pf._solver.lnz_total < 20 * 10_000  # type: ignore[attr-defined]
    check_physics(case.topology, case.s_bus_w, pf.solve(case.s_bus_w))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_every_source_off_the_droop_converters_carry_the_racks(implementation: str) -> None:
    case = synthetic_case(50, seed=1)
    s = -np.bincount(case.load_bus, case.load_w, 50)  # no PV at all
    res = PowerFlow(case.topology, implementation=implementation).solve(s)  # type: ignore[arg-type]
    check_physics(case.topology, s, res)
    assert res.droop_p_w.sum() > -s.sum()  # they also cover the losses


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_no_racks_surplus_flows_into_the_droop_converters(implementation: str) -> None:
    case = synthetic_case(50, seed=2)
    s = np.bincount(case.pv_bus, case.pv_w, 50)
    res = PowerFlow(case.topology, implementation=implementation).solve(s)  # type: ignore[arg-type]
    check_physics(case.topology, s, res)
    assert np.all(res.droop_i_a <= 0.0)  # absorbing (a battery charging)
    assert res.v_v.max() > 800.0


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_zero_injection_is_the_open_circuit_voltage(implementation: str) -> None:
    case = synthetic_case(30, seed=4)
    res = PowerFlow(case.topology, implementation=implementation).solve(np.zeros(30))  # type: ignore[arg-type]
    assert res.converged
    np.testing.assert_allclose(res.v_v, 800.0, rtol=1e-12)
    assert res.collapse_margin == pytest.approx(1.0)
    assert res.losses_w == pytest.approx(0.0, abs=1e-9)


def nose_of(topo: Topology, s: np.ndarray) -> float:
    """Largest load multiplier with a stable solution, by bisection on the reference."""
    lo, hi = 0.0, 64.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        ok = PowerFlow(topo, implementation="reference").solve(s * mid).converged
        lo, hi = (mid, hi) if ok else (lo, mid)
    return lo


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_collapse_is_told_apart_and_never_reported_converged(implementation: str) -> None:
    case = synthetic_case(40, seed=5, headroom=1e6)  # current limits out of the way
    topo, s = case.topology, case.s_bus_w
    k = nose_of(topo, s)
    assert 1.0 < k < 64.0
    pf = PowerFlow(topo, implementation=implementation)  # type: ignore[arg-type]
    near = pf.solve(s * k * 0.995, warm=False)
    assert near.converged
    check_physics(topo, s * k * 0.995, near)
    # Near the nose the margin falls towards zero, far from it it is close to one.
    assert near.collapse_margin < 0.25
    assert pf.solve(s * 0.1, warm=False).collapse_margin > 0.9
    beyond = pf.solve(s * k * 1.05, warm=False)
    assert not beyond.converged
    assert beyond.status is Status.COLLAPSE
    assert "voltage-collapse" in beyond.message


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_demand_beyond_converter_current_limits_has_no_solution(implementation: str) -> None:
    case = synthetic_case(40, seed=6, headroom=1.2)
    res = PowerFlow(case.topology, implementation=implementation).solve(case.s_bus_w * 3)  # type: ignore[arg-type]
    assert res.status is Status.COLLAPSE
    assert "current limits" in res.message


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("absorb_a", [0.0, 50.0])
def test_a_surplus_beyond_what_the_converters_absorb_has_no_solution(
    implementation: str, absorb_a: float
) -> None:
    # Every converter can take at most absorb_a (0: import-only ties): a PV surplus above
    # that has no operating point, however far the voltage goes (where P / V vanishes).
    case = synthetic_case(20, seed=3)
    topo = dataclasses.replace(
        case.topology, droop_i_min_a=np.full_like(case.topology.droop_i_min_a, -absorb_a)
    )
    pf = PowerFlow(topo, implementation=implementation)  # type: ignore[arg-type]
    surplus = topo.droop_absorb_w + 90_000.0
    s = np.zeros(20)
    s[5] = surplus
    res = pf.solve(s)
    assert res.status is Status.SURPLUS and not res.converged
    assert f"a surplus of {surplus / 1e3:.1f} kW" in res.message
    # Within what they absorb it solves, in the band's neighbourhood.
    s[5] = 0.5 * topo.droop_absorb_w
    within = pf.solve(s)
    if absorb_a > 0:
        check_physics(topo, s, within)
        assert within.v_v.max() < 1.2 * 800.0


def test_low_voltage_branch_is_not_reported_as_converged() -> None:
    # Two buses: a stiff droop source and a constant-power load. Both branches of the
    # quadratic solve the equations; starting on the low branch must not be accepted.
    r_line, v0, p = 0.1, 800.0, 1.2e6
    topo = Topology(
        v_nominal_v=np.array([800.0, 800.0]),
        line_from=np.array([0], dtype=np.intp),
        line_to=np.array([1], dtype=np.intp),
        line_r_ohm=np.array([r_line]),
        droop_bus=np.array([0], dtype=np.intp),
        droop_r_ohm=np.array([1e-4]),
        droop_v_ref_v=np.array([v0]),
        droop_i_min_a=np.array([-1e9]),
        droop_i_max_a=np.array([1e9]),
    )
    s = np.array([0.0, -p])
    r = r_line + 1e-4  # the droop's virtual resistance is in series with the line
    low = (v0 - np.sqrt(v0**2 - 4 * r * p)) / 2
    high = (v0 + np.sqrt(v0**2 - 4 * r * p)) / 2
    for impl in IMPLEMENTATIONS:
        pf = PowerFlow(topo, implementation=impl)  # type: ignore[arg-type]
        # Started on the low branch, the solver still ends on the stable high one.
        from_low = pf.solve(s, v_start=np.array([v0, low]))
        assert from_low.converged
        assert from_low.v_v[1] == pytest.approx(high, rel=1e-9)
        res = pf.solve(s, warm=False)
        assert res.converged
        assert res.v_v[1] == pytest.approx(high, rel=1e-9)
    # The kernel alone, started on the low branch, converges there and must flag it.

    pf = PowerFlow(topo, implementation="compiled")
    raw = pf._solver.solve(s, np.array([v0, low]), 1e-6, 30, 80.0)  # type: ignore[attr-defined]
    assert raw[1] == Status.COLLAPSE
    assert pf._solver.v_out[1] == pytest.approx(low, rel=1e-6)  # type: ignore[attr-defined]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_warm_start_reaches_the_same_solution_in_fewer_iterations(implementation: str) -> None:
    case = synthetic_case(500, seed=8)
    pf = PowerFlow(case.topology, implementation=implementation)  # type: ignore[arg-type]
    cold = pf.solve(case.s_bus_w, warm=False)
    warm = pf.solve(case.s_bus_w * 1.01)
    again = PowerFlow(case.topology, implementation=implementation).solve(  # type: ignore[arg-type]
        case.s_bus_w * 1.01, warm=False
    )
    np.testing.assert_allclose(warm.v_v, again.v_v, rtol=1e-9)
    assert warm.iterations <= cold.iterations


def test_current_limited_droop_converter_acts_as_a_current_source() -> None:
    case = synthetic_case(20, seed=9, droop_fraction=0.1, headroom=3.0)
    topo = dataclasses.replace(
        case.topology,
        droop_i_max_a=case.topology.droop_i_max_a * np.r_[0.2, np.ones(1)],
    )
    res = PowerFlow(topo).solve(case.s_bus_w)
    assert res.converged
    assert res.droop_saturated[0]
    assert res.droop_i_a[0] == pytest.approx(topo.droop_i_max_a[0])
    check_physics(topo, case.s_bus_w, res)


def test_parallel_lines_add_conductance() -> None:
    base = synthetic_case(2, seed=0)
    t = base.topology
    doubled = dataclasses.replace(
        t,
        line_from=np.r_[t.line_from, t.line_from],
        line_to=np.r_[t.line_to, t.line_to],
        line_r_ohm=np.r_[t.line_r_ohm, t.line_r_ohm] * 2,
    )
    a = PowerFlow(t).solve(base.s_bus_w)
    b = PowerFlow(doubled).solve(base.s_bus_w)
    np.testing.assert_allclose(a.v_v, b.v_v, rtol=1e-12)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {
                "droop_bus": np.zeros(0, dtype=np.intp),
                "droop_r_ohm": np.zeros(0),
                "droop_v_ref_v": np.zeros(0),
                "droop_i_min_a": np.zeros(0),
                "droop_i_max_a": np.zeros(0),
            },
            "nothing holds the bus",
        ),
        ({"line_r_ohm": np.array([0.0])}, "positive"),
        ({"line_to": np.array([1], dtype=np.intp)}, "itself"),
        ({"line_to": np.array([5], dtype=np.intp)}, "out of range"),
    ],
)
def test_invalid_topology_is_refused(change: dict[str, np.ndarray], message: str) -> None:
    topo = dataclasses.replace(synthetic_case(2, seed=0).topology, **change)
    with pytest.raises(ValueError, match=message):
        PowerFlow(topo)


def test_conductance_pattern_is_symmetric_matrix_of_the_network() -> None:
    case = synthetic_case(60, seed=11, mesh=0.3)
    t = case.topology
    pf = PowerFlow(t, implementation="reference")
    g = pf._solver.g_bus.toarray()  # type: ignore[attr-defined]
    dense = np.zeros((60, 60))
    for f, to, r in zip(t.line_from, t.line_to, t.line_r_ohm, strict=True):
        dense[f, f] += 1 / r
        dense[to, to] += 1 / r
        dense[f, to] -= 1 / r
        dense[to, f] -= 1 / r
    np.testing.assert_allclose(g, dense, rtol=1e-12)
    assert sp.issparse(pf._solver.g_bus)  # type: ignore[attr-defined]
