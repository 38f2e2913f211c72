"""The availability report, built from real control cycles of the demo site on synthetic
snapshots: it validates against its schema, its figures follow from the record, and the
schedule sends it every period and at once on a change of state."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from edgectl.config.load import load_site
from edgectl.config.site import Site
from edgectl.control.cycle import Controller, CycleRecord
from edgectl.control.snapshot import DeviceHealth, RackView, Snapshot, SourceView
from edgectl.control.states import State
from edgectl.devicemaps.readings import Reading
from edgectl.uplink.availability import (
    REPORT_SCHEMA,
    ReportSchedule,
    build_report,
    iso_utc,
    lease_headroom,
    observe,
    renewable_rating_w,
)
from edgectl.uplink.forecast import HORIZON_S, STEPS, Forecaster

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "edgectl" / "sim" / "sites" / "demo_site.toml"
SCHEMA = json.loads((ROOT / "schemas" / "availability-report.v1.json").read_text("utf-8"))
WALL0 = 1_750_500_000.0
SOC_RESERVE = 0.1 + 300e3 * 300 / 3600 / 1.2e6  # soc_min + full power for ride_through_s


def validate(report: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    # Through JSON first: what the scheduler receives.
    jsonschema.Draft202012Validator(SCHEMA).validate(json.loads(json.dumps(report)))


@dataclass
class Picture:
    """What the synthetic devices say; every reading fresh at the cycle's time."""

    pv_w: float = 200_000.0
    wind_w: float = 150_000.0
    soc: dict[str, float | None] = field(default_factory=lambda: {"bess-1": 0.6, "bess-2": 0.6})
    battery_p_w: float = 0.0
    grid_w: float = 0.0
    rack_w: float = 40_000.0
    silent: set[str] = field(default_factory=set)


def snapshot_of(site: Site, pic: Picture) -> Callable[[float], Snapshot]:
    def take(now: float) -> Snapshot:
        missing = Reading.invalid("not in the device map", "W", now)
        sources: dict[str, SourceView] = {}
        for s in site.sources:
            p = available = soc = missing
            if s.id in pic.silent:
                p = available = soc = Reading.invalid("no answer", "W", now)
            elif s.kind == "pv":
                p = available = Reading.ok(pic.pv_w, "W", now)
            elif s.kind == "wind":
                p = available = Reading.ok(pic.wind_w, "W", now)
            elif s.kind == "bess":
                value = pic.soc[s.id]
                if value is not None:
                    soc = Reading.ok(value, "", now)
                    p = Reading.ok(pic.battery_p_w, "W", now)
                else:
                    soc = Reading.invalid("no answer", "", now)
            else:
                p = Reading.ok(pic.grid_w, "W", now)
            health = DeviceHealth(answered_t_s=now)
            volts = Reading.ok(800.0, "V", now)
            sources[s.id] = SourceView(
                s.id, s.kind, s.device, health, p, available, missing, soc, volts
            )
        racks = {
            r.id: RackView(
                r.id,
                r.device,
                DeviceHealth(answered_t_s=now),
                Reading.ok(pic.rack_w, "W", now),
                Reading.ok(60_000.0, "W", now),
            )
            for r in site.racks
        }
        return Snapshot(now, sources, racks)

    return take


def cycles(pic: Picture, n: int = 3, site: Site | None = None) -> tuple[Site, CycleRecord]:
    """n cycles of the demo site on the picture; the last record."""
    site = site or load_site(DEMO)
    controller = Controller(
        site,
        started_s=0.0,
        snapshot_source=snapshot_of(site, pic),
        all_answered=lambda: True,
        write=lambda _: None,
        publish=lambda _: None,
        watchdog=lambda _: None,
    )
    record = None
    for t in range(1, n + 1):
        record = controller.run_cycle(float(t), WALL0 + t)
    assert record is not None
    return site, record


def learned_forecaster(level_w: float) -> Forecaster:
    f = Forecaster(2_000_000.0)
    for i in range(200):
        f.update(WALL0 - (200 - i) * 60.0, level_w + (5_000.0 if i % 2 else -5_000.0))
    return f


def report(site: Site, record: CycleRecord, **kw: Any) -> dict[str, Any]:
    forecaster = kw.pop("forecaster", None) or learned_forecaster(350_000.0)
    args: dict[str, Any] = {
        "seq": 7,
        "wall_s": record.wall_s,
        "forecast": forecaster.forecast(record.wall_s, battery_w=kw.pop("battery_w", 0.0)),
        "leases_committed_w": 0.0,
        "green_share": 0.93,
    }
    args.update(kw)
    return build_report(site, record, **args)


def test_a_normal_report_validates_and_adds_up() -> None:
    site, record = cycles(Picture())
    assert record.state is State.NORMAL
    doc = report(site, record)
    validate(doc)
    assert doc["schema"] == REPORT_SCHEMA and doc["site"] == "demo" and doc["seq"] == 7
    assert doc["timestamp"] == iso_utc(record.wall_s) and doc["timestamp"].endswith("Z")
    assert doc["renewable_w"] == pytest.approx(3 * 200e3 + 2 * 150e3)
    # Both batteries at 0.6: far more than an hour at their full 300 kW above the reserve.
    assert doc["battery_w"] == pytest.approx(600e3)
    assert doc["green_w"] == pytest.approx(doc["renewable_w"] + doc["battery_w"])
    on = record.rack_on.astype(bool)
    caps = float(record.caps_w[on].sum())
    assert doc["racks_committed_w"] == pytest.approx(caps)
    assert doc["committed_w"] == pytest.approx(caps + record.estimate.fixed_load_w)
    assert doc["available_w"] == pytest.approx(doc["green_w"] - doc["committed_w"])
    # Every rack runs below its rating, so each may take its room.
    assert len(doc["racks"]) == 12
    for entry in doc["racks"]:
        i = [r.id for r in site.racks].index(entry["id"])
        assert entry["room_w"] == pytest.approx(120e3 - float(record.caps_w[i]))
        assert entry["can_take_w"] == pytest.approx(min(entry["room_w"], doc["available_w"]))
    rooms = [sum(e["room_w"] for e in doc["racks"] if e["tier"] == t) for t in range(4)]
    assert doc["headroom_w"] == pytest.approx([min(r, doc["available_w"]) for r in rooms])
    assert doc["green_share"] == {"rolling": 0.93, "min": 0.8, "window_s": 86_400.0}
    assert doc["grid"]["import_w"] == 0.0 and doc["grid"]["import_max_w"] == 150e3


def test_batteries_soc_and_ride_through() -> None:
    pic = Picture(soc={"bess-1": 0.5, "bess-2": 0.3}, battery_p_w=100_000.0)
    site, record = cycles(pic)
    doc = report(site, record)
    validate(doc)
    b = doc["batteries"]
    one, two = b["units"]
    assert (one["soc"], two["soc"]) == (0.5, 0.3)
    assert b["soc"] == pytest.approx(0.4)  # equal capacities
    assert one["energy_above_soc_min_wh"] == pytest.approx(0.4 * 1.2e6)
    assert one["ride_through_s"] == pytest.approx(0.4 * 1.2e6 * 3600 / 100e3)
    assert two["energy_above_reserve_wh"] == pytest.approx((0.3 - SOC_RESERVE) * 1.2e6)
    # bess-2 sustains its energy above the reserve over the hour, below its 300 kW.
    assert two["sustain_w"] == pytest.approx((0.3 - SOC_RESERVE) * 1.2e6 * 3600 / HORIZON_S)
    assert b["sustain_w"] == pytest.approx(300e3 + two["sustain_w"]) == doc["battery_w"]
    energy = (0.4 + 0.2) * 1.2e6
    assert b["ride_through_s"] == pytest.approx(energy * 3600 / 200e3)
    # Full load (12 racks x 120 kW) is more than the batteries give: at their 600 kW.
    assert b["ride_through_full_load_s"] == pytest.approx(energy * 3600 / 600e3)


def test_a_lost_battery_counts_nothing_and_degrades() -> None:
    site, record = cycles(Picture(soc={"bess-1": 0.6, "bess-2": None}))
    assert record.state is State.DEGRADED
    doc = report(site, record)
    validate(doc)
    lost = doc["batteries"]["units"][1]
    assert lost["lost"] and lost["soc"] is None and lost["sustain_w"] == 0.0
    assert doc["battery_w"] == pytest.approx(300e3)
    assert doc["accepting"]


def test_headroom_is_limited_by_what_is_available() -> None:
    # No wind, low batteries: 142 kW of green power beyond the racks' caps.
    pic = Picture(pv_w=200_000.0, wind_w=0.0, soc={"bess-1": 0.15, "bess-2": 0.15})
    site, record = cycles(pic)
    doc = report(site, record)
    validate(doc)
    assert doc["available_w"] == pytest.approx(doc["green_w"] - doc["committed_w"])
    assert 0.0 < doc["available_w"] < 2 * 76_000.0
    # Tier 1 has four racks with 76 kW of room each: more than is available.
    assert doc["headroom_w"] == pytest.approx([doc["available_w"]] * 4)
    assert all(
        e["can_take_w"] == pytest.approx(min(e["room_w"], doc["available_w"])) for e in doc["racks"]
    )


def test_racks_switched_off_this_cycle_are_not_offered() -> None:
    # Batteries at their reserve and little sun: the floors do not fit, tier 3 and 2 are shed.
    pic = Picture(pv_w=100_000.0, wind_w=0.0, soc={"bess-1": 0.12, "bess-2": 0.12})
    site, record = cycles(pic, n=1)
    shed = [r.id for i, r in enumerate(site.racks) if not record.rack_on[i]]
    assert shed and all(site.racks[i].tier >= 2 for i in np.flatnonzero(~record.rack_on))
    doc = report(site, record)
    validate(doc)
    assert doc["available_w"] == 0.0
    assert doc["racks"] == [] and doc["headroom_w"] == [0.0] * 4


def test_a_parked_rack_off_long_enough_is_offered() -> None:
    site, record = cycles(Picture())
    i = 5  # r06, tier 3: parked at its floor for a minute, drawing 30 kW there
    record.rack_on[i] = False
    record.estimate.rack_on[i] = 0
    record.estimate.rack_off_s[i] = 60.0
    record.estimate.rack_fixed_w[i] = 30_000.0
    doc = report(site, record)
    validate(doc)
    (entry,) = [e for e in doc["racks"] if e["id"] == "r06"]
    assert entry == {
        "id": "r06",
        "tier": 3,
        "on": False,
        "cap_w": 0.0,
        "p_max_w": 120_000.0,
        "room_w": 90_000.0,
        "can_take_w": 90_000.0,
    }
    record.estimate.rack_off_s[i] = 10.0  # below rack_min_off_s: it may not start yet
    assert "r06" not in {e["id"] for e in report(site, record)["racks"]}


def test_safe_takes_no_work() -> None:
    site, record = cycles(Picture(soc={"bess-1": None, "bess-2": None}))
    assert record.state is State.SAFE
    doc = report(site, record)
    validate(doc)
    assert not doc["accepting"]
    assert doc["available_w"] == 0.0 and doc["headroom_w"] == [0.0] * 4 and doc["racks"] == []
    assert doc["state"] == "SAFE"


def test_the_forecast_counts_green_power_less_the_commitments() -> None:
    site, record = cycles(Picture())
    doc = report(site, record, battery_w=250_000.0)
    validate(doc)
    steps = doc["forecast"]
    assert len(steps) == STEPS and [s["offset_s"] for s in steps][:2] == [300.0, 600.0]
    for s in steps:
        assert s["band"] == "learned"
        assert s["battery_w"] == 250_000.0
        for q in ("p10", "p50", "p90"):
            assert s["green_w"][q] == pytest.approx(s["renewable_w"][q] + 250_000.0)
            assert s["available_w"][q] == pytest.approx(
                max(0.0, s["green_w"][q] - doc["committed_w"])
            )
    fresh = report(site, record, forecaster=Forecaster(2e6))
    validate(fresh)
    assert {s["band"] for s in fresh["forecast"]} == {"default"}


def test_leases_not_yet_in_the_caps_are_taken_off() -> None:
    site, record = cycles(Picture())
    i = 0  # r01
    cap = float(record.caps_w[i])
    floors = {"r01": cap + 30_000.0}
    plain = report(site, record)
    leased = report(site, record, leases_committed_w=floors["r01"], lease_floors_w=floors)
    validate(leased)
    assert leased["leases_w"] == floors["r01"]
    assert leased["leases_pending_w"] == pytest.approx(30_000.0)
    assert leased["available_w"] == pytest.approx(plain["available_w"] - 30_000.0)
    # Without the floors every leased watt counts as pending: the conservative reading.
    blind = report(site, record, leases_committed_w=floors["r01"])
    assert blind["leases_pending_w"] == floors["r01"]
    # The lease book grants from the headroom with every lease's power counted as free.
    room = lease_headroom(site, record, floors)
    assert room.state is State.NORMAL
    assert room.green_w == pytest.approx(plain["available_w"] + cap)


def test_observe_keeps_lost_renewables_out_of_the_history() -> None:
    site, record = cycles(Picture())
    f = Forecaster(renewable_rating_w(site))
    observe(f, site, record)
    assert f.level_w == pytest.approx(900_000.0)
    _, degraded = cycles(Picture(silent={"pv-1"}))
    assert degraded.state is State.DEGRADED
    g = Forecaster(renewable_rating_w(site))
    for k in range(3):
        degraded.wall_s = WALL0 + 60.0 * k
        observe(g, site, degraded)
    assert g.level_w == pytest.approx(700_000.0) and g.history_s == 0.0


def test_schedule_every_period_and_on_state_change() -> None:
    s = ReportSchedule(period_s=5.0)
    assert s.due(0.0, State.NORMAL)  # the first cycle
    assert [s.due(t, State.NORMAL) for t in (1.0, 2.0, 4.9)] == [False, False, False]
    assert s.due(5.0, State.NORMAL)
    assert not s.due(6.0, State.NORMAL)
    assert s.due(10.2, State.NORMAL)  # on the grid of 5 s: next at 15
    assert s.due(12.0, State.DEGRADED)  # at once on a change; the period restarts
    assert not s.due(16.0, State.DEGRADED)
    assert s.due(17.0, State.DEGRADED)
    assert s.due(17.5, State.NORMAL)
    assert s.due(40.0, State.NORMAL)  # after a gap: a period from now, no burst
    assert not s.due(44.0, State.NORMAL)
    assert s.due(45.0, State.NORMAL)
    with pytest.raises(ValueError, match="period_s"):
        ReportSchedule(0.0)


def test_iso_utc() -> None:
    assert iso_utc(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso_utc(1_750_500_000.25) == "2025-06-21T10:00:00.250Z"
    assert np.isclose(WALL0, 1_750_500_000.0)
