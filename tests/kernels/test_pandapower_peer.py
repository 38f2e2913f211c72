"""pandapower, a solver no one here wrote, agrees with the DC power flow.

pandapower's own DC elements go through its FACTS/VSC Newton path, which silently returns
flat voltages in several set-ups (notes/numerics.md, section 2). The exact cross-check
is its AC Newton on a zero-reactance network: with the bus voltage as the base, the
per-unit equations are the DC ones. A droop converter I = (v_ref - V) / r is a stiff
source at v_ref behind r: an ext_grid on a bus of its own, joined by a line of r ohms.
A converter at its current limit enters as the power it injects there (pandapower's
constant-current ZIP loads did not reproduce an exact constant current): the check is
then that every other bus and converter satisfies its equations given that injection;
the limit law itself is checked in test_powerflow.py.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgectl.bench.networks import synthetic_case
from edgectl.kernels.powerflow import PowerFlow, Topology

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import pandapower as pp

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def pandapower_voltages(
    topo: Topology, s_bus_w: np.ndarray, saturated_p_w: dict[int, float] | None = None
) -> np.ndarray:
    """Bus voltages from pandapower; droop converters listed in saturated_p_w (index ->
    power injected at its current limit) enter as that fixed injection."""
    saturated_p_w = saturated_p_w or {}
    net = pp.create_empty_network(sn_mva=1.0)
    vn_kv = topo.v_nominal_v / 1e3
    buses = [pp.create_bus(net, vn_kv=float(v)) for v in vn_kv]
    for f, t, r in zip(topo.line_from, topo.line_to, topo.line_r_ohm, strict=True):
        pp.create_line_from_parameters(
            net,
            buses[f],
            buses[t],
            length_km=1.0,
            r_ohm_per_km=float(r),
            x_ohm_per_km=0.0,
            c_nf_per_km=0.0,
            max_i_ka=1e6,
        )
    for k, s in enumerate(s_bus_w):
        if s != 0.0:
            pp.create_load(net, buses[k], p_mw=float(-s) / 1e6, q_mvar=0.0)
    for j, (b, r, v_ref) in enumerate(
        zip(topo.droop_bus, topo.droop_r_ohm, topo.droop_v_ref_v, strict=True)
    ):
        if j in saturated_p_w:
            pp.create_sgen(net, buses[b], p_mw=saturated_p_w[j] / 1e6, q_mvar=0.0)
            continue
        source = pp.create_bus(net, vn_kv=float(vn_kv[b]))
        pp.create_ext_grid(net, source, vm_pu=float(v_ref / topo.v_nominal_v[b]), va_degree=0.0)
        pp.create_line_from_parameters(
            net,
            source,
            buses[b],
            length_km=1.0,
            r_ohm_per_km=float(r),
            x_ohm_per_km=0.0,
            c_nf_per_km=0.0,
            max_i_ka=1e6,
        )
    # init="flat": the default DC pre-solve divides by the zero reactance.
    pp.runpp(net, init="flat", tolerance_mva=1e-10, max_iteration=50, numba=False)
    assert net.converged
    vm = net.res_bus.vm_pu.to_numpy()[: len(buses)]
    assert np.all(np.abs(net.res_bus.va_degree.to_numpy()) < 1e-9)  # a DC network stays DC
    return np.asarray(vm * topo.v_nominal_v)


@pytest.mark.parametrize("seed", range(20))
def test_random_networks_agree_with_pandapower(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 150))
    case = synthetic_case(n, seed, mesh=float(rng.uniform(0, 0.4)), headroom=1e3)
    res = PowerFlow(case.topology).solve(case.s_bus_w)
    assert res.converged
    assert not res.droop_saturated.any()
    expected = pandapower_voltages(case.topology, case.s_bus_w)
    np.testing.assert_allclose(res.v_v, expected, rtol=1e-7)
    # The loads are real: the check would catch a solver that returned flat voltages.
    assert expected.min() < 0.99 * case.topology.v_nominal_v.min()


@pytest.mark.parametrize("site_file", ["small_site.toml", "reference_site.toml"])
def test_example_sites_agree_with_pandapower(site_file: str) -> None:
    from edgectl.config.load import load_site
    from edgectl.model.network import build_network, default_operating_point

    site = load_site(EXAMPLES / site_file)
    net = build_network(site)
    sources, racks = default_operating_point(site)
    s = net.injections(sources, racks)
    res = net.powerflow.solve(s)
    assert res.converged, res.message
    saturated = {j: float(res.droop_p_w[j]) for j in np.flatnonzero(res.droop_saturated)}
    assert len(saturated) < len(res.droop_i_a)  # something still holds the bus
    expected = pandapower_voltages(net.powerflow.topology, s, saturated)
    np.testing.assert_allclose(res.v_v, expected, rtol=1e-7)


def test_current_limited_converters_agree_with_pandapower() -> None:
    case = synthetic_case(80, seed=21, droop_fraction=0.1, headroom=1e3)
    free = PowerFlow(case.topology).solve(case.s_bus_w)
    # Limit the busiest converter to 60 % of what it carries unconstrained.
    busiest = int(np.argmax(free.droop_i_a))
    i_max = case.topology.droop_i_max_a.copy()
    i_max[busiest] = 0.6 * free.droop_i_a[busiest]
    topo = dataclasses.replace(case.topology, droop_i_max_a=i_max)
    res = PowerFlow(topo).solve(case.s_bus_w)
    assert res.converged
    saturated = {j: float(res.droop_p_w[j]) for j in np.flatnonzero(res.droop_saturated)}
    assert list(saturated) == [busiest]
    expected = pandapower_voltages(topo, case.s_bus_w, saturated)
    np.testing.assert_allclose(res.v_v, expected, rtol=1e-7)
