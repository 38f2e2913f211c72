"""End to end, weather: the daemon against the simulated demo site over the real protocols,
ten times faster than real time. Each test also checks the loop's invariants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from e2e_bench import Bench, bench, check_invariants

TIER3 = ("r06", "r12")
TIER0 = ("r01", "r07")


def half_racks(text: str) -> str:
    return (
        text.replace("p_max_w = 120_000.0", "p_max_w = 60_000.0")
        .replace("p_min_w = 36_000.0", "p_min_w = 18_000.0")
        .replace("ramp_w_per_s = 24_000.0", "ramp_w_per_s = 12_000.0")
    )


def caps(b: Bench) -> dict[str, float]:
    rec = b.records[-1]
    return {r.id: float(rec.caps_w[i]) for i, r in enumerate(b.site.racks)}


def renewables_w(b: Bench) -> float:
    return sum(b.sim.source_p_w[s.id] for s in b.site.sources if s.kind in ("pv", "wind"))


def battery_limit_w(b: Bench) -> float:
    return sum(s.p_max_w for s in b.site.sources_of("bess"))


async def test_cloud_caps_tier3_first_and_fits_supply_within_two_cycles(tmp_path: Path) -> None:
    # 09:00: PV gives about half the rack load, wind the rest with the batteries.
    async with bench(tmp_path, start_time_s=9 * 3600.0, speed=5.0) as b:
        await b.run_until(20.0)
        before = caps(b)
        await b.event(kind="cloud", depth=0.7, ramp_s=5.0, duration_s=120.0)
        ramp_end = b.sim.t_s + 5.0
        await b.run_until(ramp_end)
        # Within two cycles of the cloud's full depth, the caps fit what is there.
        await b.run_until(ramp_end + 2 * b.site.control.period_s)
        supply = renewables_w(b) + battery_limit_w(b) + b.site.control.grid_import_max_w
        assert sum(caps(b).values()) <= supply * 1.02
        # Tier 3 gave first: every tier-3 rack lost more (as a share) than any tier-0 rack.
        after = caps(b)
        loss = {r: 1.0 - after[r] / before[r] for r in before}
        assert min(loss[r] for r in TIER3) > max(loss[r] for r in TIER0)
        assert min(loss[r] for r in TIER3) > 0.1
        # And the physical draw follows within the racks' ramp time.
        await b.run_until(b.sim.t_s + 6.0)
        assert b.samples.racks_w[-1] <= renewables_w(b) + battery_limit_w(b) + 150_000.0
        # Bus voltages in the band throughout.
        v_lo = b.site.control.v_min_pu * b.site.site.v_nominal_v
        v_hi = b.site.control.v_max_pu * b.site.site.v_nominal_v
        assert min(b.samples.v_min_v[10:]) >= v_lo
        assert max(b.samples.v_max_v) <= v_hi
        check_invariants(b)


async def test_surplus_charges_the_batteries_then_curtails_pv_never_exports(
    tmp_path: Path,
) -> None:
    # Noon, batteries nearly full, racks of half the size: PV and wind exceed the racks.
    async with bench(tmp_path, start_time_s=12 * 3600.0, initial_soc=0.9, edit=half_racks) as b:
        await b.run_until(15.0)
        batteries = b.site.sources_of("bess")

        def charging_w() -> list[float]:
            return [-b.sim.source_p_w[s.id] for s in batteries]

        def curtailed_w() -> float:
            return float(b.records[-1].result.renewable_curtailed_w.sum())

        # The batteries take the surplus first: PV is curtailed only beyond what they take.
        assert all(p > 10_000.0 for p in charging_w()), charging_w()
        if curtailed_w() > 1_000.0:
            assert all(
                p > 0.9 * (s.p_charge_max_w or 0.0)
                for p, s in zip(charging_w(), batteries, strict=True)
            )
        for battery in b.sim.bess.values():
            battery.soc = 0.9499  # an hour of charging later

        def full_and_curtailed() -> bool:
            limits = [b.sim._limit_of("pv", s) for s in ("pv-1", "pv-2", "pv-3")]
            return max(charging_w()) < 5_000.0 and any(
                limit is not None and limit < 390_000.0 for limit in limits
            )

        await b.wait_for(full_and_curtailed, within_s=15.0, what="full batteries, PV limited")
        assert curtailed_w() > 10_000.0
        assert min(b.samples.grid_w) >= -1.0  # the grid never exports
        assert max(b.samples.grid_w) <= 1.0  # nor imports with this much sun
        check_invariants(b)


async def test_turbine_cutout_sheds_by_tier(tmp_path: Path) -> None:
    async with bench(tmp_path, start_time_s=8 * 3600.0) as b:
        await b.run_until(15.0)
        before = caps(b)
        await b.event(kind="cutout", duration_s=300.0)
        await b.run_until(b.sim.t_s + 20.0)
        assert all(b.sim.source_p_w[w] <= 1_000.0 for w in ("wind-1", "wind-2"))
        after = caps(b)
        supply = renewables_w(b) + battery_limit_w(b) + b.site.control.grid_import_max_w
        assert sum(after.values()) <= supply * 1.02
        tier3_cut = sum(before[r] - after[r] for r in TIER3)
        tier0_cut = sum(before[r] - after[r] for r in TIER0)
        assert tier3_cut > 0.0
        assert tier0_cut <= 0.25 * tier3_cut  # tier 3 gave, tier 0 kept nearly all
        check_invariants(b)


async def test_battery_at_its_reserve_is_held_and_never_below_soc_min(tmp_path: Path) -> None:
    # Night: no PV, some wind, batteries just above their reserve, racks of half the size.
    async with bench(tmp_path, start_time_s=23 * 3600.0, initial_soc=0.122, edit=half_racks) as b:
        await b.run_until(60.0)
        modes = {s["kind"]: s.get("mode") for s in b.status()["sources"].values()}
        assert modes["bess"] == "hold"
        for src in b.site.sources_of("bess"):
            assert min(b.samples.soc[src.id]) >= (src.soc_min or 0.0)
        # The racks run on the wind and the grid (within its cap: check_invariants).
        wind = sum(b.sim.source_p_w[w] for w in ("wind-1", "wind-2"))
        assert float(np.sum(b.records[-1].caps_w)) <= wind + 150_000.0 + 1.0
        check_invariants(b)
