"""End to end, device faults: what the daemon does when devices go silent, slow or rogue."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from e2e_bench import bench, check_invariants


async def test_pv_converter_offline_degrades_and_recovers(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        assert b.state == "NORMAL"
        b.faults("pv-1", offline=True, duration_s=20.0)
        entered = await b.wait_for(lambda: b.state == "DEGRADED", within_s=10.0, what="DEGRADED")
        status = b.status()
        assert "pv-1" in status["state_reason"]
        assert status["sources"]["pv-1"]["valid"] is False
        i = [s.id for s in b.site.sources if s.kind in ("pv", "wind")].index("pv-1")
        assert float(b.records[-1].estimate.renewable_available_w[i]) == 0.0  # counts as nothing
        # Back once it answers again and has for recover_s (5 s here): not before.
        left = await b.wait_for(lambda: b.state == "NORMAL", within_s=40.0, what="NORMAL again")
        assert left - entered >= 20.0 + b.site.daemon.recover_s - 2.0
        names = [(t["from"], t["to"]) for t in b.status()["transitions"]]
        assert ("NORMAL", "DEGRADED") in names and ("DEGRADED", "NORMAL") in names
        check_invariants(b)


async def test_batteries_offline_give_safe_with_racks_within_the_ride_through_budget(
    tmp_path: Path,
) -> None:
    async with bench(tmp_path) as b:
        b.faults("bess-1", offline=True)
        b.faults("bess-2", offline=True)
        await b.wait_for(lambda: b.state == "SAFE", within_s=10.0, what="SAFE")
        await b.run_until(b.sim.t_s + 5.0)
        rec = b.records[-1]
        assert rec.state.name == "SAFE"
        # Caps within what the batteries (from their last known charge) and the grid carry
        # for ride_through_s: here each battery's full power, plus the grid cap.
        budget = sum(s.p_max_w for s in b.site.sources_of("bess")) + 150_000.0
        assert float(np.sum(rec.caps_w)) <= budget + 1.0
        # Tier 3 goes first: no tier-0 rack is below a tier-3 rack's share.
        tiers = np.array([r.tier for r in b.site.racks])
        share = rec.caps_w / np.array([r.p_max_w for r in b.site.racks])
        assert share[tiers == 3].max() <= share[tiers == 0].min() + 1e-9
        assert "every battery lost" in b.status()["state_reason"]
        b.sim.clear_faults("bess-1")
        b.sim.clear_faults("bess-2")
        await b.wait_for(lambda: b.state == "NORMAL", within_s=30.0, what="NORMAL again")
        check_invariants(b)


async def test_slow_redfish_endpoint_does_not_slow_the_cycle(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        # Every rack BMC of row A answers 1.5 s late (15 cycles of simulated time here).
        for rack in ("r01", "r02", "r03", "r04", "r05", "r06"):
            b.faults(rack, latency_s=1.5)
        start = b.records[-1].cycle
        t0 = b.sim.t_s
        await b.run_until(t0 + 20.0)
        cycles = b.records[-1].cycle - start
        assert cycles >= 18  # a cycle per simulated second all the same
        late = [r for r in b.records if r.cycle > start]
        assert max(r.compute_s for r in late) < 0.5
        assert b.daemon.times.overruns <= 1
        # The slow racks go stale and count as drawing their caps: DEGRADED, not stuck.
        assert b.state == "DEGRADED"
        assert "r01" in b.status()["state_reason"] or "r0" in b.status()["state_reason"]
        check_invariants(b)


async def test_rack_that_ignores_its_limit_counts_as_drawing_its_rating(tmp_path: Path) -> None:
    # Afternoon with a cloud: supply is short and racks are capped.
    async with bench(tmp_path, start_time_s=16 * 3600.0) as b:
        await b.event(kind="cutout", duration_s=600.0)
        await b.run_until(25.0)
        b.faults("r12", ignore_setpoints=True)
        await b.wait_for(
            lambda: any("r12" in p for p in b.status()["decision"]["problems"]),
            within_s=20.0,
            what="r12 flagged",
        )
        rec = b.records[-1]
        i = [r.id for r in b.site.racks].index("r12")
        assert rec.estimate.rack_fixed_w[i] == b.site.racks[i].p_max_w
        assert not rec.estimate.rack_controllable[i]
        assert b.state == "DEGRADED"
        # The others are budgeted around it: caps plus its rating fit the supply.
        supply = float(rec.result.supply_w) + float(rec.inputs.fixed_load_w)
        assert float(np.sum(np.where(rec.rack_on, rec.caps_w, 0.0))) <= supply + 1.0
        check_invariants(b)
