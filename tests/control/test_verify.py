"""The verifier on small networks: what it leaves, reduces (in which order) or reports."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edgectl.config.load import validate_site_dict
from edgectl.config.site import Site
from edgectl.control.verify import Verification, Verifier

P_MIN_W = 36_000.0
P_MAX_W = 120_000.0
STEP_W = 24_000.0  # one ramp step at 1 s
V_MIN_V = 0.95 * 800.0

Racks = list[tuple[str, str, int]]  # (id, bus, tier)
FEEDERS: Racks = [("a0", "a", 0), ("a3", "a", 3), ("b0", "b", 0), ("b3", "b", 3)]


def battery(
    sid: str = "bess",
    *,
    i_max_a: float = 2_000.0,
    droop_r_ohm: float = 0.01,
    v_ref_v: float = 800.0,
    bus: str = "main",
) -> dict[str, Any]:
    return {
        "id": sid,
        "kind": "bess",
        "bus": bus,
        "p_max_w": 1e6,
        "p_charge_max_w": 1e6,
        "capacity_wh": 4e6,
        "soc_min": 0.1,
        "soc_max": 0.95,
        "v_ref_v": v_ref_v,
        "droop_r_ohm": droop_r_ohm,
        "i_max_a": i_max_a,
    }


def network(
    racks: Racks = FEEDERS,
    *,
    i_a_a: float = 2_000.0,
    r_far_ohm: float = 0.004,
    sources: list[dict[str, Any]] | None = None,
    pv_bus: str = "main",
) -> Site:
    """main (battery, pv) feeds buses a and b; bus far hangs off a. Racks as given."""
    data = {
        "site": {"id": "verify", "v_nominal_v": 800.0},
        "control": {"grid_import_max_w": 0.0},
        "bus": [{"id": "main"}, {"id": "a"}, {"id": "b"}, {"id": "far"}],
        "line": [
            {"id": "l-a", "from": "main", "to": "a", "r_ohm": 0.004, "i_max_a": i_a_a},
            {"id": "l-b", "from": "main", "to": "b", "r_ohm": 0.004, "i_max_a": 2_000.0},
            {"id": "l-far", "from": "a", "to": "far", "r_ohm": r_far_ohm, "i_max_a": 2_000.0},
        ],
        "source": [
            *(sources if sources is not None else [battery()]),
            {"id": "pv", "kind": "pv", "bus": pv_bus, "p_max_w": 1e6},
        ],
        "rack": [
            {
                "id": r,
                "bus": b,
                "p_min_w": P_MIN_W,
                "p_max_w": P_MAX_W,
                "tier": t,
                "ramp_w_per_s": STEP_W,
            }
            for r, b, t in racks
        ],
    }
    return validate_site_dict(data, "<verify test>")


def verify(
    site: Site,
    caps_w: list[float],
    *,
    reducible: list[bool] | None = None,
    pv_w: float = 0.0,
    floor_w: list[float] | None = None,
) -> Verification:
    caps = np.array(caps_w, dtype=np.float64)
    mask = np.ones(len(caps), dtype=bool) if reducible is None else np.array(reducible)
    floor = None if floor_w is None else np.array(floor_w, dtype=np.float64)
    return Verifier(site).verify(caps, mask, {"pv": pv_w}, frozenset(), floor_w=floor)


def caps_of(site: Site, v: Verification) -> dict[str, float]:
    return {r.id: float(v.rack_cap_w[i]) for i, r in enumerate(site.racks)}


def test_a_point_inside_the_limits_verifies_in_one_pass_unchanged() -> None:
    site = network()
    v = verify(site, [P_MAX_W] * 4)
    assert v.converged and v.verified
    assert v.passes == 1
    assert v.reduced_w == 0.0 and v.reductions == {}
    assert v.rack_cap_w.tolist() == [P_MAX_W] * 4
    assert v.violations == [] and v.notes == []
    assert V_MIN_V < v.v_min_v <= v.v_max_v < 800.0
    assert v.losses_w > 0.0
    assert v.parked is not None and not v.parked.any()


def test_an_overloaded_line_reduces_the_racks_behind_it_only() -> None:
    # 240 kW behind l-a at about 794 V is 302 A, on a line rated 250 A.
    site = network(i_a_a=250.0)
    before = verify(site, [P_MAX_W] * 4, reducible=[False] * 4)
    assert not before.verified and any("line l-a" in m for m in before.violations)
    v = verify(site, [P_MAX_W] * 4)
    assert v.verified and v.violations == []
    caps = caps_of(site, v)
    assert caps["b0"] == caps["b3"] == P_MAX_W  # the other feeder is not touched
    assert caps["a0"] + caps["a3"] < 2 * P_MAX_W
    assert set(v.reductions) <= {"a0", "a3"} and v.reductions
    assert v.reduced_w == pytest.approx(sum(v.reductions.values()))


def test_an_undervoltage_at_a_far_bus_is_fixed_at_that_bus_first() -> None:
    racks: Racks = [("a1", "a", 1), ("f1", "far", 1), ("b1", "b", 1)]
    site = network(racks, r_far_ohm=0.4)
    before = verify(site, [P_MAX_W] * 3, reducible=[False] * 3)
    assert any(m.startswith("bus far at") and "below" in m for m in before.violations)
    v = verify(site, [P_MAX_W] * 3)
    assert v.verified
    assert v.v_min_v >= V_MIN_V
    assert list(v.reductions) == ["f1"]  # the rack there, not the racks nearer the source
    assert caps_of(site, v)["a1"] == caps_of(site, v)["b1"] == P_MAX_W


def test_tier_3_is_reduced_then_parked_before_tier_0_is_touched() -> None:
    # About 47 kW must go behind l-a: more than tier 3's ramp room (24 kW).
    site = network(i_a_a=250.0)
    caps = [P_MAX_W] * 4
    v = verify(site, caps, floor_w=[c - STEP_W for c in caps])
    assert v.verified
    got = caps_of(site, v)
    assert got["a0"] == P_MAX_W
    assert got["a3"] == P_MIN_W
    assert v.parked is not None and v.parked.tolist() == [False, True, False, False]


def test_tier_0_is_cut_only_once_tier_3_is_at_its_lowest() -> None:
    # About 130 kW must go behind l-a: a3 alone (84 kW to p_min_w) is not enough.
    site = network(i_a_a=150.0)
    v = verify(site, [P_MAX_W] * 4)
    assert v.verified
    got = caps_of(site, v)
    assert got["a3"] == P_MIN_W
    assert P_MIN_W <= got["a0"] < P_MAX_W
    assert got["b0"] == got["b3"] == P_MAX_W


def test_reductions_stay_at_or_above_the_ramp_floor_when_that_suffices() -> None:
    racks: Racks = [("a3", "a", 3), ("a3b", "a", 3), ("b0", "b", 0)]
    site = network(racks, i_a_a=266.0)
    caps = [P_MAX_W] * 3
    floor = [c - STEP_W for c in caps]
    v = verify(site, caps, floor_w=floor)
    assert v.verified
    assert v.reduced_w > STEP_W  # more than one rack's room: both were reduced
    assert (v.rack_cap_w >= np.array(floor) - 1e-6).all()
    assert v.parked is not None and not v.parked.any()


def test_a_non_reducible_rack_is_never_reduced() -> None:
    site = network(i_a_a=250.0)
    v = verify(site, [P_MAX_W] * 4, reducible=[True, False, True, True])
    assert caps_of(site, v)["a3"] == P_MAX_W
    assert caps_of(site, v)["a0"] < P_MAX_W
    assert "a3" not in v.reductions


def test_a_cut_within_the_ramp_room_never_parks_the_rack() -> None:
    caps = [P_MAX_W] * 4
    floor = [c - STEP_W for c in caps]
    parked_at = []
    for i_a_a in range(285, 303):  # 240 kW behind l-a is ~303 A: 1-18 A over, < 24 kW to cut
        site = network(i_a_a=float(i_a_a))
        v = verify(site, caps, floor_w=floor)
        assert v.verified
        if caps_of(site, v)["a3"] < P_MAX_W - STEP_W - 1e-6:
            parked_at.append(i_a_a)
    assert parked_at == []


def test_no_stable_solution_scales_the_reducible_racks_down_until_it_holds() -> None:
    # One battery at 300 A (240 kW) holds the bus; the racks ask for 480 kW.
    site = network(sources=[battery(i_max_a=300.0)])
    before = verify(site, [P_MAX_W] * 4, reducible=[False] * 4)
    assert not before.converged and not before.verified
    assert "no stable operating point" in before.violations[0]
    v = verify(site, [P_MAX_W] * 4)
    assert v.converged and v.verified
    assert v.passes > 1
    # Scaled, not cut rack by rack: equal racks stay equal, tier 0 included.
    assert v.rack_cap_w == pytest.approx([v.rack_cap_w[0]] * 4)
    assert P_MIN_W < v.rack_cap_w[0] < 240_000.0 / 4


def test_no_stable_solution_leaves_the_fixed_loads_and_reports_it() -> None:
    # 160 kW of converter for 120 kW of fixed load and three racks of at least 36 kW each.
    site = network(sources=[battery(i_max_a=200.0)])
    v = verify(site, [P_MAX_W] * 4, reducible=[True, True, True, False])
    caps = caps_of(site, v)
    assert caps["b3"] == P_MAX_W  # not reducible: a fixed load
    assert all(P_MIN_W <= caps[r] < 0.5 * P_MAX_W for r in ("a0", "a3", "b0"))
    assert set(v.reductions) == {"a0", "a3", "b0"}
    assert not v.verified
    assert "no stable operating point" in v.violations[0]


def test_overvoltage_is_reported_but_not_fixed_by_cutting_racks() -> None:
    # 1 MW of PV at the far bus, racks nearly idle: the far bus rises above 840 V.
    site = network(r_far_ohm=0.04, pv_bus="far")
    caps = [P_MIN_W] * 4
    v = verify(site, caps, pv_w=1e6)
    assert v.converged
    assert any(m.startswith("bus far at") and "above 840.0 V" in m for m in v.violations)
    assert v.verified  # nothing the racks could fix
    assert v.reductions == {} and v.rack_cap_w.tolist() == caps
    assert v.passes == 1


def test_a_converter_at_its_current_limit_is_a_note_not_a_violation() -> None:
    small = battery("bess", i_max_a=100.0)
    grid = {
        "id": "grid",
        "kind": "grid",
        "bus": "main",
        "p_max_w": 1e6,
        "v_ref_v": 800.0,
        "droop_r_ohm": 0.01,
        "i_max_a": 2_000.0,
    }
    site = network(sources=[small, grid])
    v = verify(site, [P_MAX_W] * 4)
    assert v.verified and v.violations == []
    assert v.notes == ["bess bess supplying at its current limit"]
    assert v.reductions == {}


def import_only_tie() -> Site:
    """One feeder behind an import-only grid tie, the only converter holding the bus."""
    data = {
        "site": {"id": "verify-tie", "v_nominal_v": 800.0},
        "control": {"grid_import_max_w": 150_000.0},
        "bus": [{"id": "main"}, {"id": "a"}],
        "line": [{"id": "l-a", "from": "main", "to": "a", "r_ohm": 0.004, "i_max_a": 2_000.0}],
        "source": [
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
            {"id": "pv", "kind": "pv", "bus": "main", "p_max_w": 1e6},
        ],
        "rack": [
            {
                "id": "r",
                "bus": "a",
                "p_min_w": P_MIN_W,
                "p_max_w": P_MAX_W,
                "tier": 0,
                "ramp_w_per_s": STEP_W,
            }
        ],
    }
    return validate_site_dict(data, "<verify test>")


def test_a_surplus_nothing_can_absorb_is_not_fixed_by_cutting_racks() -> None:
    site = import_only_tie()
    v = verify(site, [P_MAX_W], pv_w=200_000.0)
    assert not v.verified
    assert v.reductions == {}
    assert v.rack_cap_w.tolist() == [P_MAX_W]


def test_a_point_is_never_verified_with_the_bus_far_outside_the_band() -> None:
    site = import_only_tie()
    v = verify(site, [P_MIN_W], reducible=[False], pv_w=130_000.0)
    assert not (v.verified and v.v_max_v > 2 * 800.0), (v.verified, v.v_max_v)
