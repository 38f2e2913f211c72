"""The controller's cycle as tables: inputs -> time leap -> what it wrote and recorded."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from control_site import BATTERIES, RACKS, small_site, snapshot, stale

from edgectl.config.site import Site
from edgectl.control.cycle import (
    HOLD_RAMP_SHARE,
    RESERVE_RELEASE_SOC,
    Controller,
    CycleRecord,
    Setpoints,
)
from edgectl.control.estimate import reserve_soc
from edgectl.control.snapshot import Snapshot
from edgectl.control.states import State
from edgectl.control.verify import Verification, Verifier
from edgectl.devicemaps.readings import Reading

WALL0 = 1_700_000_000.0
STEP_W = 24_000.0  # ramp_w_per_s x period_s of every rack
P_MAX_W = 120_000.0
P_MIN_W = 36_000.0
INSTRUMENTED = ("r1", "r2", "r3")


class FakePlant:
    """A fake of the site behind the snapshot source; readings are what the test sets."""

    # Racks draw what their jobs want, up to the cap last written to them.

    def __init__(self, site: Site) -> None:
        self.site = site
        self.want_w = dict.fromkeys(INSTRUMENTED, 50_000.0)
        self.bmc_cap_w = dict.fromkeys(INSTRUMENTED, P_MAX_W)
        self.sources: dict[str, dict[str, Reading | float]] = {}
        self.silent_racks: set[str] = set()
        self.answered = True
        self.fail_next = False

    def snapshot(self, now_s: float) -> Snapshot:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("snapshot source failed")
        draws: dict[str, Reading | float | None] = {}
        for rid in self.want_w:
            if rid in self.silent_racks:
                draws[rid] = stale(now_s - 5.0)
            else:
                draws[rid] = min(self.want_w[rid], self.bmc_cap_w[rid])
        limits: dict[str, Reading | float | None] = dict(self.bmc_cap_w)
        return snapshot(self.site, now_s, sources=self.sources, racks=draws, limits=limits)


class Harness:
    """A Controller wired to the fake plant, with write/publish/watchdog recorders."""

    def __init__(self, site: Site | None = None, *, started_s: float = 0.0) -> None:
        self.site = site or small_site()
        self.plant = FakePlant(self.site)
        self.writes: list[Setpoints] = []
        self.records: list[CycleRecord] = []
        self.kicks: list[CycleRecord] = []
        self.controller = self.make(self.site, started_s)
        self.t_s = started_s

    def make(self, site: Site, started_s: float) -> Controller:
        return Controller(
            site,
            started_s=started_s,
            snapshot_source=self.plant.snapshot,
            all_answered=lambda: self.plant.answered,
            write=self.write,
            publish=self.records.append,
            watchdog=self.kicks.append,
        )

    def write(self, setpoints: Setpoints) -> None:
        self.writes.append(setpoints)
        for rid, cap in setpoints.racks.items():
            self.plant.bmc_cap_w[rid] = cap

    def cycle(self) -> CycleRecord:
        record = self.controller.run_cycle(self.t_s, WALL0 + self.t_s)
        self.t_s += self.site.control.period_s
        return record

    def cycles(self, n: int) -> list[CycleRecord]:
        return [self.cycle() for _ in range(n)]


def caps(record: CycleRecord) -> dict[str, float]:
    return {r: float(record.caps_w[RACKS.index(r)]) for r in INSTRUMENTED}


def test_starting_writes_nothing_then_normal_writes_instrumented_racks_only() -> None:
    h = Harness()
    h.plant.answered = False
    starting = h.cycles(3)
    assert [r.state for r in starting] == [State.STARTING] * 3
    assert h.writes == []
    assert all(r.setpoints is None for r in starting)
    assert len(h.records) == len(h.kicks) == 3  # published and kicked all the same
    h.plant.answered = True
    first = h.cycle()
    assert first.state is State.NORMAL
    assert first.transition is not None and first.transition.after is State.NORMAL
    assert len(h.writes) == 1 and h.writes[0] is first.setpoints
    assert set(h.writes[0].racks) == set(INSTRUMENTED)  # not r4: it has no device
    assert set(h.writes[0].sources) == {"pv-1", "pv-2", "wind-1"}  # not pv-3
    assert set(h.writes[0].batteries) == set(BATTERIES)


def test_a_silent_rack_gets_no_setpoint() -> None:
    h = Harness()
    h.cycles(3)
    h.plant.silent_racks.add("r2")
    record = h.cycle()
    assert record.state is State.DEGRADED
    assert record.setpoints is not None
    assert set(record.setpoints.racks) == {"r1", "r3"}


def test_caps_move_at_most_one_ramp_step_per_cycle_for_racks_that_stay_on() -> None:
    h = Harness()
    plant = h.plant
    # (time the change happens, change): demand up, a cloud, batteries silent, recovery.
    events: dict[int, Callable[[], None]] = {
        5: lambda: plant.want_w.update(dict.fromkeys(INSTRUMENTED, P_MAX_W)),
        15: lambda: plant.sources.update(
            {s: {"p_w": 20_000.0, "available_w": 20_000.0} for s in ("pv-1", "pv-2", "wind-1")}
        ),
        18: lambda: plant.sources.update({b: {"soc": 0.13} for b in BATTERIES}),
        30: lambda: plant.sources.clear(),
        40: lambda: plant.want_w.update({"r1": 40_000.0, "r2": P_MAX_W, "r3": 60_000.0}),
    }
    records = []
    for k in range(60):
        if k in events:
            events[k]()
        records.append(h.cycle())
    moved = []
    for before, after in itertools.pairwise(records):
        if after.setpoints is None:
            continue
        for i, rid in enumerate(RACKS):
            if rid in INSTRUMENTED and before.rack_on[i] and after.rack_on[i]:
                step = abs(float(after.caps_w[i] - before.caps_w[i]))
                assert step <= STEP_W + 1e-6, (after.cycle, rid, step)
                moved.append(step)
    # The table did make the caps move, up and down, at the full step.
    assert max(moved) == pytest.approx(STEP_W)
    ups = [float(b.caps_w[0] - a.caps_w[0]) for a, b in itertools.pairwise(records)]
    assert max(ups) == pytest.approx(STEP_W) and min(ups) == pytest.approx(-STEP_W)


class FailingVerifier:
    """A fake verifier: the real one's result, but not verified and with every cap at p_max."""

    def __init__(self, real: Verifier) -> None:
        self.real = real

    def verify(self, *args: Any, **kwargs: Any) -> Verification:
        result = self.real.verify(*args, **kwargs)
        return dataclasses.replace(
            result, verified=False, rack_cap_w=np.full_like(result.rack_cap_w, P_MAX_W)
        )


def test_caps_are_never_written_above_the_last_verified_ones() -> None:
    h = Harness()
    h.cycles(6)  # NORMAL, caps down to the racks' 55 kW demand
    h.plant.want_w.update(dict.fromkeys(INSTRUMENTED, P_MAX_W))  # now they want their rating
    verified = h.controller.last_verified_w.copy()
    h.controller.verifier = FailingVerifier(h.controller.verifier)  # type: ignore[assignment]
    for record in h.cycles(5):
        assert record.setpoints is not None
        for i, rid in enumerate(RACKS):
            if rid in record.setpoints.racks:
                assert record.setpoints.racks[rid] <= verified[i] + 1e-9, (record.cycle, rid)
        assert "power flow did not verify: caps held at the last verified point" in record.reasons
    assert np.array_equal(h.controller.last_verified_w, verified)
    # The real verifier back: the caps climb again, one step at a time.
    h.controller.verifier = h.controller.verifier.real  # type: ignore[attr-defined]
    after = h.cycle()
    assert caps(after)["r1"] == pytest.approx(verified[0] + STEP_W)


def test_written_caps_are_the_verified_caps() -> None:
    h = Harness()
    for record in h.cycles(10):
        if record.setpoints is None:
            continue
        assert record.verification.verified
        for rid, cap in record.setpoints.racks.items():
            i = RACKS.index(rid)
            assert cap <= float(record.verification.rack_cap_w[i]) + 1e-9


def test_a_battery_at_its_reserve_is_held_ramping_down_and_released_above_it() -> None:
    h = Harness()
    site = h.site
    reserve = float(reserve_soc(h.controller.base_params)[0])
    step_w = HOLD_RAMP_SHARE * 500_000.0
    h.cycles(3)
    # bess-1 reaches its reserve while delivering 300 kW.
    h.plant.sources["bess-1"] = {"soc": reserve - 0.001, "p_w": 300_000.0}
    held = []
    for record in h.cycles(8):
        assert record.setpoints is not None
        setpoint = record.setpoints.batteries["bess-1"]
        assert setpoint.mode == "hold"
        held.append(setpoint.p_w)
        assert record.setpoints.batteries["bess-2"].mode == "droop"
    assert held[:5] == pytest.approx([300_000.0 - step_w * k for k in range(1, 6)])
    assert all(b >= a - step_w - 1e-6 for a, b in itertools.pairwise(held))
    assert held[-1] <= 0.0  # down to the dispatched charge (none discharging at the reserve)
    # Just above the reserve is not enough to release it...
    h.plant.sources["bess-1"] = {"soc": reserve + RESERVE_RELEASE_SOC / 2, "p_w": 0.0}
    for record in h.cycles(3):
        assert record.setpoints is not None
        assert record.setpoints.batteries["bess-1"].mode == "hold"
    # ...RESERVE_RELEASE_SOC above it is.
    h.plant.sources["bess-1"] = {"soc": reserve + RESERVE_RELEASE_SOC + 0.002, "p_w": 0.0}
    record = h.cycle()
    assert record.setpoints is not None
    assert record.setpoints.batteries["bess-1"].mode == "droop"
    assert site.sources_of("bess")[0].id == "bess-1"


def sustainable_w(soc: float, since_s: float) -> float:
    """One battery's power for ride_through_s, since_s after its charge soc was read."""
    # Discharging at full power since it was read, as the controller assumes.
    soc_now = soc - 500_000.0 * since_s / 3600.0 / 2e6
    return max(0.0, min(500_000.0, (soc_now - 0.1) * 2e6 * 3600.0 / 300.0))


def test_safe_budgets_batteries_sustainable_power_and_the_grid_cap_only() -> None:
    h = Harness()
    h.plant.want_w.update(dict.fromkeys(INSTRUMENTED, P_MAX_W))
    h.plant.sources.update({b: {"soc": 0.135} for b in BATTERIES})
    normal = h.cycles(8)
    assert normal[-1].state is State.NORMAL
    assert all(c == pytest.approx(P_MAX_W) for c in caps(normal[-1]).values())
    last_read_s = normal[-1].t_s
    h.plant.sources.update({b: {"soc": stale(last_read_s, "", 0.135)} for b in BATTERIES})
    records = h.cycles(3)
    h.t_s += 420.0  # a long time in SAFE: the batteries' last charge is worth less and less
    records += h.cycles(6)
    for record in records:
        assert record.state is State.SAFE
        assert "every battery lost" in record.reasons[0]
        sustain_w = sustainable_w(0.135, record.t_s - last_read_s)
        assert record.params.battery_p_max_w == pytest.approx([sustain_w] * 2)
        assert record.params.battery_p_charge_max_w.tolist() == [0.0, 0.0]
        assert record.inputs.grid_budget_w == 150_000.0
        assert not record.inputs.renewable_available_w.any()  # renewables not counted
        budget = 2 * sustain_w + 150_000.0
        assert float(record.result.rack_cap_w.sum()) + record.inputs.fixed_load_w <= budget + 1e-6
        assert record.setpoints is not None
        assert record.setpoints.sources == {}  # and not curtailed either
        assert record.setpoints.batteries == {}  # lost: nothing to write to them
        assert set(record.setpoints.racks) <= set(INSTRUMENTED)
    # At the end the budget, not the racks' 3 x 120 kW demand, sets the caps: tier 3 first.
    last = records[-1]
    assert 2 * sustainable_w(0.135, last.t_s - last_read_s) + 150_000.0 < 480_000.0
    assert caps(last)["r2"] <= min(caps(last)["r1"], caps(last)["r3"])
    assert sum(caps(last).values()) < 3 * P_MAX_W - STEP_W


def test_racks_are_served_from_renewables_while_both_batteries_are_held() -> None:
    h = Harness()
    h.plant.want_w.update(dict.fromkeys(INSTRUMENTED, P_MAX_W))
    h.plant.sources.update({b: {"soc": 0.105} for b in BATTERIES})  # below the reserve
    records = h.cycles(30)
    assert all(r.state is State.NORMAL for r in records)
    assert any(r.verification.verified for r in records[-10:])
    assert all(c >= 100_000.0 for c in caps(records[-1]).values())


def test_the_watchdog_is_kicked_once_per_completed_cycle_only() -> None:
    h = Harness()
    done = h.cycles(3)
    assert h.kicks == done
    h.plant.fail_next = True
    with pytest.raises(RuntimeError, match="snapshot source failed"):
        h.cycle()
    assert len(h.kicks) == 3 and len(h.records) == 3
    after = h.cycle()
    assert h.kicks[-1] is after and len(h.kicks) == 4


def test_the_watchdog_is_not_kicked_when_publishing_fails() -> None:
    h = Harness()
    h.cycles(2)

    def broken(record: CycleRecord) -> None:
        raise OSError("disk full")

    h.controller._publish = broken
    with pytest.raises(OSError, match="disk full"):
        h.cycle()
    assert len(h.kicks) == 2


def test_losses_of_the_verified_point_feed_the_next_cycles_fixed_load() -> None:
    h = Harness()
    records = h.cycles(6)
    for before, after in itertools.pairwise(records):
        assert before.verification.converged
        assert before.verification.losses_w > 0.0
        expected = after.estimate.fixed_load_w + before.verification.losses_w
        assert after.inputs.fixed_load_w == pytest.approx(expected)
    assert records[0].inputs.fixed_load_w == records[0].estimate.fixed_load_w


def test_adopt_keeps_memory_state_and_caps_over_a_reload() -> None:
    h = Harness()
    h.plant.want_w.update(dict.fromkeys(INSTRUMENTED, P_MAX_W))
    h.cycles(4)
    h.plant.want_w.update(dict.fromkeys(INSTRUMENTED, 50_000.0))
    last = h.cycles(2)[-1]
    old = h.controller
    new = h.make(small_site(daemon={"recover_s": 4.0}), started_s=h.t_s)
    new.adopt(old)
    assert new.state is State.NORMAL  # not STARTING again
    assert new.states.recover_s == 4.0
    assert new.cycle == old.cycle
    assert new.memory.racks == old.memory.racks
    assert new.memory.batteries == old.memory.batteries
    assert new.memory.last_t_s == last.t_s
    assert np.array_equal(new.last_verified_w, old.last_verified_w)
    h.controller = new
    record = h.cycle()
    assert record.cycle == last.cycle + 1
    assert record.setpoints is not None  # writes at once
    for rid in INSTRUMENTED:
        assert abs(caps(record)[rid] - caps(last)[rid]) <= STEP_W + 1e-6


def test_a_fresh_controller_without_adopt_starts_over() -> None:
    h = Harness()
    h.cycles(4)
    fresh = h.make(h.site, started_s=h.t_s)
    assert fresh.state is State.STARTING and fresh.memory.racks == {}


def test_adopt_drops_the_memory_of_racks_no_longer_in_the_site() -> None:
    h = Harness()
    h.cycles(4)
    old = h.controller
    new = h.make(small_site(drop_racks=("r3",)), started_s=h.t_s)
    new.adopt(old)
    assert set(new.memory.racks) == {"r1", "r2"}
    assert new.memory.racks["r1"] is old.memory.racks["r1"]
    assert new.state is State.NORMAL
    # Other racks: the old verified caps do not apply; they start from the floors.
    assert new.last_verified_w.tolist() == [P_MIN_W] * 3


def test_no_cycle_returns_non_finite_caps() -> None:
    h = Harness()
    h.plant.sources["pv-1"] = {"p_w": math.nan, "available_w": math.nan}
    for record in h.cycles(5):
        assert np.isfinite(record.caps_w).all()
