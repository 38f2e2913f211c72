"""The example sites: the generator reproduces the committed file, and both sites are sane."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from edgectl.config import Site
from edgectl.config.load import load_site
from edgectl.model.network import build_network, report

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
GENERATOR = EXAMPLES / "make_reference_site.py"
REFERENCE = EXAMPLES / "reference_site.toml"
SMALL = EXAMPLES / "small_site.toml"


@pytest.fixture(scope="module")
def reference() -> Site:
    return load_site(REFERENCE)


@pytest.fixture(scope="module")
def small() -> Site:
    return load_site(SMALL)


def test_generator_reproduces_the_committed_file_on_stdout() -> None:
    run = subprocess.run(
        [sys.executable, str(GENERATOR)], capture_output=True, check=True, timeout=120
    )
    assert run.stdout == REFERENCE.read_bytes(), (
        "examples/reference_site.toml is stale: "
        "python examples/make_reference_site.py > examples/reference_site.toml"
    )


def test_generator_writes_the_same_bytes_to_a_path(tmp_path: Path) -> None:
    out = tmp_path / "site.toml"
    subprocess.run([sys.executable, str(GENERATOR), str(out)], check=True, timeout=120)
    assert out.read_bytes() == REFERENCE.read_bytes()


def test_reference_scale(reference: Site) -> None:
    pv = reference.sources_of("pv")
    wind = reference.sources_of("wind")
    bess = reference.sources_of("bess")
    grid = reference.sources_of("grid")
    assert len(pv) == 40
    assert {s.p_max_w for s in pv} == {2.5e6}
    assert sum(s.p_max_w for s in pv) == pytest.approx(100e6, rel=0.03)
    assert len(wind) == 8
    assert all(s.p_max_w == pytest.approx(4e6, rel=0.1) for s in wind)
    assert len(bess) == 4
    assert all(s.p_max_w == 25e6 and s.capacity_wh == 50e6 for s in bess)
    assert len(grid) == 1

    racks = reference.racks
    rack_load_w = sum(r.p_max_w for r in racks)
    assert len(racks) == 800
    assert {r.p_max_w for r in racks} == {120e3}
    assert rack_load_w == pytest.approx(96e6)
    # The grid tie is capped at 10 % of the rack load, in the source and in the control.
    assert grid[0].p_max_w == pytest.approx(0.1 * rack_load_w)
    assert reference.control.grid_import_max_w == pytest.approx(0.1 * rack_load_w)

    tiers = Counter(r.tier for r in racks)
    assert {t: n / len(racks) for t, n in tiers.items()} == {0: 0.1, 1: 0.3, 2: 0.4, 3: 0.2}


def test_reference_topology(reference: Site) -> None:
    assert 300 <= len(reference.buses) <= 1200
    # 40 rows of 20 racks, each rack on its own bus.
    rows = Counter(r.id.split("-")[0] for r in reference.racks)
    assert len(rows) == 40
    assert set(rows.values()) == {20}
    assert len({r.bus for r in reference.racks}) == 800
    # Meshed, not a tree: a connected network with at least as many lines as buses.
    assert len(reference.lines) >= len(reference.buses)


def _assert_sane(site: Site, rack_share: float, pv_share: float, wind_share: float) -> None:
    """At this operating point: a stable solution inside the band and every line's ampacity,
    with no converter at its current limit. The power flow is checked against pandapower
    in tests/kernels/test_pandapower_peer.py."""
    share = {"pv": pv_share, "wind": wind_share}
    sources = {s.id: share[s.kind] * s.p_max_w for s in site.sources if not s.is_droop}
    racks = {r.id: rack_share * r.p_max_w for r in site.racks}
    net = build_network(site)
    res = net.powerflow.solve(net.injections(sources, racks))
    assert res.converged, res.message
    out = report(net, res, sources, racks)
    assert out["violations"] == []
    # The violations above are what the CLI reports; check the raw numbers too.
    v_pu = res.v_v / site.site.v_nominal_v
    assert site.control.v_min_pu <= v_pu.min()
    assert v_pu.max() <= site.control.v_max_pu
    ampacity = np.array([ln.i_max_a for ln in site.lines])
    assert np.all(np.abs(res.line_i_a) <= ampacity)


@pytest.mark.parametrize(
    ("pv_share", "wind_share"),
    [
        (1.0, 0.0),  # PV alone carries most of the racks
        (0.5, 0.5),  # PV and wind share it
        (0.4, 0.0),  # batteries near their limit, the grid tie importing
        (1.0, 1.0),  # every source at p_max_w: the batteries charge
    ],
)
def test_small_site_full_load_is_within_band_and_ampacity(
    small: Site, pv_share: float, wind_share: float
) -> None:
    _assert_sane(small, 1.0, pv_share, wind_share)


@pytest.mark.parametrize(
    ("rack_share", "pv_share", "wind_share"),
    [
        (1.0, 1.0, 1.0),  # every source at p_max_w, the batteries take the surplus
        (1.0, 0.0, 0.0),  # night and calm: batteries and grid carry the racks
        (1.0, 0.5, 0.3),
        (0.4, 1.0, 1.0),  # racks low in full sun and wind: batteries charge near their limit
    ],
)
def test_reference_site_is_within_band_and_ampacity(
    reference: Site, rack_share: float, pv_share: float, wind_share: float
) -> None:
    _assert_sane(reference, rack_share, pv_share, wind_share)
