"""Estimate, rule by rule of its module docstring, on Snapshots of a small site built by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from control_site import (
    BATTERIES,
    RACKS,
    RENEWABLES,
    V_NOMINAL_V,
    ok,
    small_site,
    snapshot,
    stale,
)

from edgectl.config.site import Site
from edgectl.control.estimate import (
    DEMAND_MARGIN,
    DEMAND_WINDOW_S,
    NONCOMPLIANT_CYCLES,
    PROBE_SHARE,
    Estimate,
    Memory,
    RackMemory,
    estimate,
)
from edgectl.control.snapshot import Snapshot
from edgectl.devicemaps.readings import Reading
from edgectl.drivers.roles import CURTAILED
from edgectl.model.dispatch_input import params_from_site

STALE_S = 3.0
T0 = 1_000.0
P_MAX_W = 120_000.0
P_MIN_W = 36_000.0
RAMP_W = 24_000.0  # per 1 s period


@pytest.fixture(scope="module")
def site() -> Site:
    return small_site()


def run(site: Site, snap: Snapshot, memory: Memory | None = None) -> Estimate:
    return estimate(site, params_from_site(site), snap, memory or Memory(), stale_s=STALE_S)


def step(site: Site, snap: Snapshot, memory: Memory) -> Estimate:
    """One cycle's estimate, then the time the controller's `remember` would record."""
    out = run(site, snap, memory)
    memory.last_t_s = snap.t_s
    return out


def renewable(e: Estimate, sid: str) -> float:
    return float(e.renewable_available_w[RENEWABLES.index(sid)])


def problem_of(e: Estimate, element: str) -> str:
    found = [p.reason for p in e.problems if p.element == element]
    assert len(found) == 1, (element, e.problems)
    return found[0]


def test_a_healthy_site_has_no_problem_and_counts_what_is_measured(site: Site) -> None:
    e = run(site, snapshot(site, T0))
    assert e.problems == [] and e.safe_reasons == []
    assert e.renewable_available_w.tolist() == [300_000.0, 300_000.0, 0.0, 150_000.0]
    assert not e.renewable_held.any()
    assert e.battery_soc.tolist() == [0.6, 0.6]
    assert e.battery_lost == [False, False]
    assert e.bus_measured and e.bus_v_min_v == e.bus_v_max_v == V_NOMINAL_V


@pytest.mark.parametrize(
    "p_w",
    [
        stale(T0, value=300_000.0),
        Reading.ok(300_000.0, "W", T0 - STALE_S - 0.5),  # valid, but older than stale_s
        Reading.invalid("out of range", "W", T0, 9e9),
    ],
    ids=["silent", "too-old", "invalid"],
)
def test_a_source_not_answering_counts_as_nothing_with_a_problem(site: Site, p_w: Reading) -> None:
    e = run(site, snapshot(site, T0, sources={"pv-1": {"p_w": p_w}}))
    assert renewable(e, "pv-1") == 0.0
    assert renewable(e, "pv-2") == 300_000.0
    assert problem_of(e, "pv-1").endswith("counts as 0 W")
    assert e.safe_reasons == []  # 400 of 1000 kW lost is not "most"


def test_a_source_without_device_counts_as_nothing_with_a_note(site: Site) -> None:
    e = run(site, snapshot(site, T0))
    assert renewable(e, "pv-3") == 0.0
    assert [p.element for p in e.notes] == ["pv-3", "r4"]
    assert all(p.element not in ("pv-3", "r4") for p in e.problems)


def test_a_curtailed_source_is_its_lower_bound_plus_a_probe(site: Site) -> None:
    held = Reading.invalid(CURTAILED, "W", T0, 200_000.0)
    e = run(site, snapshot(site, T0, sources={"pv-1": {"p_w": 200_000.0, "available_w": held}}))
    assert renewable(e, "pv-1") == pytest.approx(200_000.0 + PROBE_SHARE * 400_000.0)
    assert e.renewable_held.tolist() == [True, False, False, False]
    assert e.problems == []  # curtailment is the controller's own doing


def test_the_probe_never_offers_more_than_the_rating(site: Site) -> None:
    held = Reading.invalid(CURTAILED, "W", T0, 395_000.0)
    e = run(site, snapshot(site, T0, sources={"pv-1": {"p_w": 395_000.0, "available_w": held}}))
    assert renewable(e, "pv-1") == 400_000.0


def test_an_invalid_availability_not_curtailed_is_what_it_produces(site: Site) -> None:
    unknown = Reading.invalid("not a number", "W", T0)
    e = run(site, snapshot(site, T0, sources={"pv-1": {"p_w": 250_000.0, "available_w": unknown}}))
    assert renewable(e, "pv-1") == 250_000.0
    assert not e.renewable_held[0]


@pytest.mark.parametrize(
    ("v_v", "held"), [(1.05 * V_NOMINAL_V + 5.0, True), (1.05 * V_NOMINAL_V - 5.0, False)]
)
def test_a_source_on_a_bus_above_v_max_is_treated_as_held(
    site: Site, v_v: float, held: bool
) -> None:
    readings = {"p_w": 280_000.0, "available_w": 280_000.0, "v_v": v_v}
    e = run(site, snapshot(site, T0, sources={"pv-1": readings}))
    assert bool(e.renewable_held[0]) is held
    expected = 280_000.0 + (PROBE_SHARE * 400_000.0 if held else 0.0)
    assert renewable(e, "pv-1") == pytest.approx(expected)


def test_a_lost_battery_counts_at_soc_min_with_zero_limits(site: Site) -> None:
    e = run(site, snapshot(site, T0, sources={"bess-1": {"soc": stale(T0, "", 0.6)}}))
    assert e.battery_lost == [True, False]
    assert e.battery_soc.tolist() == [0.1, 0.6]
    assert e.battery_p_max_w.tolist() == [0.0, 500_000.0]
    assert e.battery_p_charge_max_w.tolist() == [0.0, 500_000.0]
    assert "no charge or discharge planned" in problem_of(e, "bess-1")
    assert e.safe_reasons == []


def test_a_lost_battery_keeps_its_last_good_charge_in_memory(site: Site) -> None:
    memory = Memory()
    step(site, snapshot(site, T0, sources={"bess-1": {"soc": 0.42}}), memory)
    step(site, snapshot(site, T0 + 1, sources={"bess-1": {"soc": stale(T0, "", 0.42)}}), memory)
    mem = memory.batteries["bess-1"]
    assert (mem.soc, mem.t_s) == (0.42, T0)


def test_every_battery_lost_is_a_safe_reason(site: Site) -> None:
    lost = {b: {"soc": stale(T0, "", 0.6)} for b in BATTERIES}
    e = run(site, snapshot(site, T0, sources=lost))
    assert e.battery_lost == [True, True]
    assert e.safe_reasons == ["every battery lost"]


def test_bus_voltage_lost_is_a_safe_reason(site: Site) -> None:
    lost = {b: {"v_v": stale(T0, "V", V_NOMINAL_V)} for b in BATTERIES}
    e = run(site, snapshot(site, T0, sources=lost))
    assert e.bus_measured
    assert e.bus_v_min_v is None and e.bus_v_max_v is None
    assert e.safe_reasons == ["bus voltage measurement lost"]


def test_one_voltage_left_keeps_the_bus_measured(site: Site) -> None:
    e = run(
        site,
        snapshot(site, T0, sources={"bess-1": {"v_v": stale(T0, "V")}, "bess-2": {"v_v": 790.0}}),
    )
    assert e.safe_reasons == []
    assert e.bus_v_min_v == e.bus_v_max_v == 790.0


def test_a_site_whose_devices_do_not_measure_the_bus_is_not_unsafe(site: Site) -> None:
    absent = Reading.invalid("not in the device map", "V", T0)
    e = run(site, snapshot(site, T0, sources={b: {"v_v": absent} for b in BATTERIES}))
    assert not e.bus_measured
    assert e.safe_reasons == []


def test_most_renewables_lost_is_a_safe_reason(site: Site) -> None:
    lost = {s: {"p_w": stale(T0)} for s in ("pv-1", "pv-2")}
    e = run(site, snapshot(site, T0, sources=lost))
    assert len(e.safe_reasons) == 1
    assert e.safe_reasons[0].startswith("most renewable sources lost (800 of 1,000 kW silent)")


def test_racks_without_device_are_a_fixed_load_at_p_max_with_a_note(site: Site) -> None:
    e = run(site, snapshot(site, T0))
    i = RACKS.index("r4")
    assert e.rack_fixed_w.tolist() == [0.0, 0.0, 0.0, P_MAX_W]
    assert not e.rack_controllable[i]
    assert e.rack_draw_w[i] == P_MAX_W
    assert any(n.element == "r4" and "p_max_w" in n.reason for n in e.notes)
    assert e.fixed_load_w == P_MAX_W


def test_a_silent_rack_is_fixed_at_the_cap_it_was_given(site: Site) -> None:
    memory = Memory(racks={"r2": RackMemory(cap_w=90_000.0, on=True, ceiling_w=90_000.0)})
    e = run(site, snapshot(site, T0, racks={"r2": stale(T0, value=50_000.0)}), memory)
    i = RACKS.index("r2")
    assert e.rack_fixed_w[i] == e.rack_draw_w[i] == 90_000.0
    assert not e.rack_controllable[i]
    assert "counts as drawing its cap 90.0 kW" in problem_of(e, "r2")


def test_a_rack_silent_from_the_start_counts_as_drawing_p_max(site: Site) -> None:
    silent = stale(T0, value=50_000.0)
    e = run(site, snapshot(site, T0, racks={"r2": silent}, limits={"r2": stale(T0)}))
    assert e.rack_fixed_w[RACKS.index("r2")] == P_MAX_W


def test_a_silent_rack_ceiling_falls_no_faster_than_its_ramp(site: Site) -> None:
    memory = Memory(racks={"r2": RackMemory(cap_w=P_MAX_W, on=True)})
    step(site, snapshot(site, T0), memory)
    memory.racks["r2"].cap_w = 40_000.0  # the cycle lowered its cap, then the rack fell silent
    fixed = []
    for k in range(1, 6):
        e = step(site, snapshot(site, T0 + k, racks={"r2": stale(T0)}), memory)
        fixed.append(float(e.rack_fixed_w[RACKS.index("r2")]))
    assert fixed == [96_000.0, 72_000.0, 48_000.0, 40_000.0, 40_000.0]


def test_a_rack_above_its_ceiling_for_n_cycles_is_fixed_at_p_max_until_it_complies(
    site: Site,
) -> None:
    site_recover_s = site.daemon.recover_s
    i = RACKS.index("r3")
    memory = Memory(racks={"r3": RackMemory(cap_w=50_000.0, on=True, ceiling_w=50_000.0)})
    # Above 50 kW x 1.05 + 2 kW slack + one ramp step of lag: 78.5 kW.
    rows: list[tuple[float, float, bool]] = []  # (t, draw, expected to count as ignoring)
    rows += [(T0 + k, 100_000.0, k >= NONCOMPLIANT_CYCLES - 1) for k in range(5)]
    rows += [(T0 + 5 + k, 48_000.0, True) for k in range(int(site_recover_s))]
    rows += [(T0 + 5 + site_recover_s, 48_000.0, False)]
    for t, draw, ignoring in rows:
        e = step(site, snapshot(site, t, racks={"r3": draw}), memory)
        assert bool(e.rack_fixed_w[i] == P_MAX_W) is ignoring, (t, draw)
        assert bool(e.rack_controllable[i]) is not ignoring, (t, draw)
        assert any(p.element == "r3" for p in e.problems) is ignoring, (t, draw)
        text = " ".join(p.reason for p in e.problems if p.element == "r3")
        if ignoring and draw > 50_000.0:
            assert "draws 100.0 kW above its cap 50.0 kW" in text, text
        elif ignoring:  # complying again: the text must not say it draws above its cap
            kept = t - (T0 + 5)
            assert text == (
                f"ignored its cap, within it again for {kept:,.0f} of {site_recover_s:g} s: "
                "counts as drawing p_max_w until then"
            ), text


def test_a_rack_just_within_the_allowed_lag_is_not_taken_as_ignoring(site: Site) -> None:
    memory = Memory(racks={"r3": RackMemory(cap_w=50_000.0, on=True, ceiling_w=50_000.0)})
    for k in range(10):
        e = step(site, snapshot(site, T0 + k, racks={"r3": 78_000.0}), memory)
        assert e.rack_controllable[RACKS.index("r3")]
    assert e.problems == []


def test_one_good_cycle_does_not_restart_the_noncompliance_count(site: Site) -> None:
    memory = Memory(racks={"r3": RackMemory(cap_w=50_000.0, on=True, ceiling_w=50_000.0)})
    draws = [100_000.0, 100_000.0, 48_000.0, 100_000.0, 100_000.0]
    flags = []
    for k, draw in enumerate(draws):
        e = step(site, snapshot(site, T0 + k, racks={"r3": draw}), memory)
        flags.append(not bool(e.rack_controllable[RACKS.index("r3")]))
    assert flags == [False] * 5  # never NONCOMPLIANT_CYCLES in a row


def test_demand_is_p_max_when_the_cap_holds_the_rack(site: Site) -> None:
    memory = Memory(racks={"r1": RackMemory(cap_w=60_000.0, on=True, ceiling_w=60_000.0)})
    e = step(site, snapshot(site, T0, racks={"r1": 59_000.0}), memory)
    assert e.rack_demand_w[RACKS.index("r1")] == P_MAX_W


def test_demand_is_the_peak_over_the_window_times_the_margin(site: Site) -> None:
    memory = Memory()
    draws = [80_000.0] + [50_000.0] * 12
    demand = []
    for k, draw in enumerate(draws):
        e = step(site, snapshot(site, T0 + k, racks={"r1": draw}), memory)
        demand.append(float(e.rack_demand_w[RACKS.index("r1")]))
    window = int(DEMAND_WINDOW_S)
    assert demand[: window + 1] == pytest.approx([80_000.0 * DEMAND_MARGIN] * (window + 1))
    assert demand[window + 1 :] == pytest.approx([50_000.0 * DEMAND_MARGIN] * 2)


def test_a_steady_draw_given_its_demand_as_cap_does_not_flip_flop(site: Site) -> None:
    memory = Memory()
    demand = []
    for k in range(30):
        e = step(site, snapshot(site, T0 + k, racks={"r1": 50_000.0}), memory)
        i = RACKS.index("r1")
        demand.append(float(e.rack_demand_w[i]))
        # Dispatch gives it what it asked for, one ramp step at a time.
        rmem = memory.racks["r1"]
        rmem.cap_w = max(float(e.rack_demand_w[i]), rmem.cap_w - RAMP_W)
    assert demand == pytest.approx([50_000.0 * DEMAND_MARGIN] * 30)


def test_a_parked_rack_is_a_fixed_load_at_its_draw_up_to_p_min(site: Site) -> None:
    for draw, fixed in [(50_000.0, P_MIN_W), (20_000.0, 20_000.0)]:
        memory = Memory(
            racks={"r2": RackMemory(cap_w=0.0, on=False, off_since_s=T0 - 12.0)},
            last_t_s=T0 - 1.0,
        )
        e = run(site, snapshot(site, T0, racks={"r2": draw}, limits={"r2": P_MIN_W}), memory)
        i = RACKS.index("r2")
        assert e.rack_fixed_w[i] == fixed
        assert e.rack_on[i] == 0 and e.rack_cap_w[i] == 0.0
        assert e.rack_controllable[i]  # it can be started again
        assert e.rack_off_s[i] == 12.0


def test_a_rack_seen_the_first_time_starts_from_its_bmc_cap(site: Site) -> None:
    memory = Memory()
    e = run(
        site, snapshot(site, T0, limits={"r1": 70_000.0, "r2": 10_000.0, "r3": stale(T0)}), memory
    )
    assert e.rack_cap_w[:3].tolist() == [70_000.0, P_MIN_W, P_MAX_W]
    assert all(memory.racks[r].on for r in ("r1", "r2", "r3"))


def test_green_available_counts_renewables_and_battery_discharge(site: Site) -> None:
    e = run(site, snapshot(site, T0))
    assert e.green_available_w == pytest.approx(750_000.0 + 2 * 500_000.0)
    lost = run(site, snapshot(site, T0, sources={"bess-1": {"soc": stale(T0, "")}}))
    assert lost.green_available_w == pytest.approx(750_000.0 + 500_000.0)


def test_estimate_never_returns_nan_for_a_nan_reading(site: Site) -> None:
    nan = ok(math.nan, T0)
    e = run(site, snapshot(site, T0, sources={"pv-1": {"p_w": nan}}, racks={"r1": nan}))
    assert np.isfinite(e.renewable_available_w).all()
    assert np.isfinite(e.rack_fixed_w).all() and np.isfinite(e.rack_demand_w).all()
    assert renewable(e, "pv-1") == 0.0
    assert not e.rack_controllable[RACKS.index("r1")]
