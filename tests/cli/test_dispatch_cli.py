"""`edgectl dispatch`: a decision from a site file and a snapshot, and refused snapshots."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgectl.cli import main
from edgectl.errors import EXIT_INPUT

# One bus, 150 kW of renewables at most, a battery and a capped grid tie; ramps never bind.
SITE = """
[site]
id = "cli-test"
v_nominal_v = 800.0

[control]
period_s = 1.0
green_share_min = 0.8
grid_import_max_w = 50000.0
ride_through_s = 0.0
rack_on_margin = 0.2
rack_min_off_s = 30.0

[[bus]]
id = "main"

[[source]]
id = "pv-1"
kind = "pv"
bus = "main"
p_max_w = 200000.0

[[source]]
id = "wind-1"
kind = "wind"
bus = "main"
p_max_w = 100000.0

[[source]]
id = "bess-1"
kind = "bess"
bus = "main"
p_max_w = 100000.0
p_charge_max_w = 100000.0
capacity_wh = 400000.0
soc_min = 0.1
soc_max = 0.9
v_ref_v = 800.0
droop_r_ohm = 0.05
i_max_a = 150.0

[[source]]
id = "grid"
kind = "grid"
bus = "main"
p_max_w = 50000.0
v_ref_v = 800.0
droop_r_ohm = 0.2
i_max_a = 70.0

[[rack]]
id = "r01"
bus = "main"
p_min_w = 20000.0
p_max_w = 100000.0
tier = 0
ramp_w_per_s = 100000.0

[[rack]]
id = "r02"
bus = "main"
p_min_w = 20000.0
p_max_w = 100000.0
tier = 1
ramp_w_per_s = 100000.0

[[rack]]
id = "r03"
bus = "main"
p_min_w = 20000.0
p_max_w = 100000.0
tier = 3
ramp_w_per_s = 100000.0
"""

# PV 100 kW + wind 50 kW, the battery at soc_min (nothing to give) and a grid budget of 0:
# supply 150 kW. Floors 3 x 20 kW; tier 0 (+40 kW) and tier 1 (+40 kW) are served in
# full; tier 3 gets the last 10 kW above its floor: 30 kW of its 80 kW.
SNAPSHOT: dict[str, Any] = {
    "sources": {
        "pv-1": {"available_w": 100000.0},
        "wind-1": {"available_w": 50000.0},
        "bess-1": {"soc": 0.1},
    },
    "racks": {
        "r01": {"demand_w": 60000.0, "cap_w": 60000.0, "on": True},
        "r02": {"demand_w": 60000.0, "cap_w": 50000.0, "on": True},
        "r03": {"demand_w": 80000.0, "cap_w": 80000.0, "on": True, "off_s": None},
    },
    "grid_budget_w": 0.0,
}


@pytest.fixture
def site_file(tmp_path: Path) -> str:
    path = tmp_path / "site.toml"
    path.write_text(SITE, encoding="utf-8")
    return str(path)


def write_json(tmp_path: Path, data: object, name: str = "snapshot.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def test_json_decision(site_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    snap = write_json(tmp_path, SNAPSHOT)
    assert main(["dispatch", site_file, "--snapshot", snap, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    racks = {r["id"]: r for r in out["racks"]}
    assert [r["id"] for r in out["racks"]] == ["r01", "r02", "r03"]
    assert racks["r01"]["cap_w"] == pytest.approx(60000.0)
    assert racks["r02"]["cap_w"] == pytest.approx(60000.0)
    assert racks["r03"]["cap_w"] == pytest.approx(30000.0)
    assert all(r["on"] is True for r in out["racks"])
    sources = {s["id"]: s for s in out["sources"]}
    assert list(sources) == ["pv-1", "wind-1", "bess-1", "grid"]
    assert sources["pv-1"]["p_w"] == pytest.approx(100000.0)
    assert sources["wind-1"]["p_w"] == pytest.approx(50000.0)
    for sid in ("pv-1", "wind-1", "bess-1", "grid"):
        assert sources[sid]["curtailed_w"] == pytest.approx(0.0, abs=1e-6)
    assert sources["bess-1"]["p_w"] == 0.0 and sources["grid"]["p_w"] == 0.0
    assert out["grid_w"] == 0.0
    assert out["served_w"] == pytest.approx(150000.0)
    assert out["unserved_w_by_tier"] == pytest.approx([0.0, 0.0, 0.0, 50000.0], abs=1e-6)
    assert out["served_w_by_tier"] == pytest.approx([60000.0, 60000.0, 0.0, 30000.0])
    assert out["demand_w_by_tier"] == pytest.approx([60000.0, 60000.0, 0.0, 80000.0])
    assert (out["shed"], out["started"]) == (0, 0)
    assert isinstance(out["compiled"], bool)


def test_green_share_lets_the_grid_top_up(
    site_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No budget given: the grid may add (1 - 0.8) / 0.8 = 1/4 of the 150 kW green power,
    # 37.5 kW, below its 50 kW cap; tier 3 gets it.
    snap = copy.deepcopy(SNAPSHOT)
    del snap["grid_budget_w"]
    path = write_json(tmp_path, snap)
    assert main(["dispatch", site_file, "--snapshot", path, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["grid_w"] == pytest.approx(37500.0)
    assert out["racks"][2]["cap_w"] == pytest.approx(67500.0)


def test_supply_drop_switches_tier_3_off_for_tier_0(
    site_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # PV 60 kW + wind 30 kW: supply 90 kW, floors 60 kW, 30 kW spare against the 40 kW
    # tier 0 wants above its floor. r03 (tier 3) goes off and frees its 20 kW floor: r01
    # gets its 60 kW, tier 1 shares the last 10 kW above its floor (r02 at 30 kW).
    snap = copy.deepcopy(SNAPSHOT)
    snap["sources"]["pv-1"]["available_w"] = 60000.0
    snap["sources"]["wind-1"]["available_w"] = 30000.0
    path = write_json(tmp_path, snap)
    assert main(["dispatch", site_file, "--snapshot", path, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    racks = {r["id"]: r for r in out["racks"]}
    assert [racks[r]["on"] for r in ("r01", "r02", "r03")] == [True, True, False]
    assert racks["r01"]["cap_w"] == pytest.approx(60000.0)
    assert racks["r02"]["cap_w"] == pytest.approx(30000.0)
    assert racks["r03"]["cap_w"] == 0.0
    assert (out["shed"], out["started"]) == (1, 0)
    assert out["served_w_by_tier"] == pytest.approx([60000.0, 30000.0, 0.0, 0.0])
    assert out["unserved_w_by_tier"] == pytest.approx([0.0, 30000.0, 0.0, 80000.0], abs=1e-6)


def test_fixed_load_is_served_first(
    site_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 10 kW of racks that cannot be capped: 140 kW are left for the caps, so tier 3 stays
    # at its 20 kW floor; the renewables deliver their 150 kW, for the racks and that load.
    snap = copy.deepcopy(SNAPSHOT)
    snap["fixed_load_w"] = 10000.0
    path = write_json(tmp_path, snap)
    assert main(["dispatch", site_file, "--snapshot", path, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fixed_load_w"] == 10000.0
    assert out["supply_w"] == pytest.approx(140000.0)
    assert [r["cap_w"] for r in out["racks"]] == pytest.approx([60000.0, 60000.0, 20000.0])
    assert out["served_w_by_tier"] == pytest.approx([60000.0, 60000.0, 0.0, 20000.0])
    sources = {s["id"]: s for s in out["sources"]}
    assert sources["pv-1"]["p_w"] + sources["wind-1"]["p_w"] == pytest.approx(150000.0)
    assert main(["dispatch", site_file, "--snapshot", path]) == 0
    assert "fixed load 10.0 kW, served first" in capsys.readouterr().out


def test_fixed_load_above_the_supply_switches_every_rack_off(
    site_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snap = copy.deepcopy(SNAPSHOT)
    snap["fixed_load_w"] = 200000.0
    path = write_json(tmp_path, snap)
    assert main(["dispatch", site_file, "--snapshot", path, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["supply_w"] == pytest.approx(-50000.0)
    assert [r["on"] for r in out["racks"]] == [False, False, False]
    assert out["shed"] == 3 and out["served_w"] == 0.0
    sources = {s["id"]: s for s in out["sources"]}
    assert sources["pv-1"]["p_w"] == pytest.approx(100000.0)
    assert sources["wind-1"]["p_w"] == pytest.approx(50000.0)
    assert main(["dispatch", site_file, "--snapshot", path]) == 0
    assert "the sources fall 50.0 kW short of it" in capsys.readouterr().out


def test_null_or_absent_fixed_load_is_none(
    site_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = []
    for value in ("absent", None, 0.0):
        snap = copy.deepcopy(SNAPSHOT)
        if value != "absent":
            snap["fixed_load_w"] = value
        path = write_json(tmp_path, snap)
        assert main(["dispatch", site_file, "--snapshot", path, "--json"]) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    assert outputs[0]["fixed_load_w"] == 0.0
    assert outputs[0] == outputs[1] == outputs[2]


def test_text_summary(site_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    snap = write_json(tmp_path, SNAPSHOT)
    assert main(["dispatch", site_file, "--snapshot", snap]) == 0
    text = capsys.readouterr().out
    assert "tier 3: demand" in text and "unserved" in text
    assert "pv-1" in text and "grid" in text
    # r03 is capped below its demand and listed as such; r01 is not.
    capped = text.split("capped below demand")[1]
    assert "r03" in capped and "r01" not in capped


Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: object) -> Mutation:
    def apply(snap: dict[str, Any]) -> None:
        *keys, last = path.split(".")
        node = snap
        for key in keys:
            node = node[key]
        node[last] = value

    return apply


def _drop(path: str) -> Mutation:
    def apply(snap: dict[str, Any]) -> None:
        *keys, last = path.split(".")
        node = snap
        for key in keys:
            node = node[key]
        del node[last]

    return apply


# One case per class of snapshot error: the mutation, then what the message must contain.
ERRORS: dict[str, tuple[Mutation, list[str]]] = {
    "unknown source": (
        _set("sources.pv-9", {"available_w": 1.0}),
        ["sources.pv-9: unknown source"],
    ),
    "unknown rack": (
        _set("racks.r99", {"demand_w": 1.0, "cap_w": 1.0, "on": True}),
        ["racks.r99: unknown rack"],
    ),
    "missing rack entry": (_drop("racks.r02"), ["racks.r02: missing"]),
    "missing source entry": (_drop("sources.bess-1"), ["sources.bess-1: missing", "soc"]),
    "missing value": (_drop("racks.r01.demand_w"), ["racks.r01.demand_w: missing"]),
    "bool is not a number": (
        _set("racks.r01.demand_w", True),
        ["racks.r01.demand_w: expected a power in W", "boolean"],
    ),
    "string is not a number": (
        _set("sources.pv-1.available_w", "100"),
        ["sources.pv-1.available_w: expected a power in W", "string"],
    ),
    "negative demand": (
        _set("racks.r01.demand_w", -5.0),
        ["racks.r01.demand_w: expected a power in W >= 0", "-5.0"],
    ),
    "negative cap": (_set("racks.r02.cap_w", -1.0), ["racks.r02.cap_w: expected"]),
    "negative availability": (
        _set("sources.wind-1.available_w", -1.0),
        ["sources.wind-1.available_w: expected"],
    ),
    "soc above 1": (
        _set("sources.bess-1.soc", 1.5),
        ["sources.bess-1.soc: expected a state of charge 0..1", "1.5"],
    ),
    "on is not a bool": (_set("racks.r01.on", 1), ["racks.r01.on: expected true or false"]),
    "unknown key in an entry": (
        _set("racks.r01.colour", "red"),
        ["racks.r01.colour: unknown key", "demand_w"],
    ),
    "unknown top-level key": (_set("budget", 1.0), ["budget: unknown key"]),
    "entry not an object": (_set("racks.r03", [1, 2]), ["racks.r03: expected an object"]),
    "negative grid budget": (_set("grid_budget_w", -1.0), ["grid_budget_w: expected"]),
    "negative fixed load": (
        _set("fixed_load_w", -1.0),
        ["fixed_load_w: expected a power in W >= 0", "-1.0"],
    ),
    "fixed load not a number": (
        _set("fixed_load_w", "10 kW"),
        ["fixed_load_w: expected a power in W >= 0", "a string"],
    ),
    "fixed load a boolean": (_set("fixed_load_w", True), ["fixed_load_w: expected a power"]),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_snapshot_errors_name_the_entry(
    name: str, site_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mutate, expected = ERRORS[name]
    snap = copy.deepcopy(SNAPSHOT)
    mutate(snap)
    path = write_json(tmp_path, snap)
    assert main(["dispatch", site_file, "--snapshot", path, "--json"]) == EXIT_INPUT
    captured = capsys.readouterr()
    assert captured.out == ""
    for text in expected:
        assert text in captured.err
    assert path in captured.err


def _write_raw(tmp_path: Path, text: str) -> str:
    path = tmp_path / "raw.json"
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"racks": {"r01": {"demand_w": NaN}}}', "racks.r01.demand_w: expected a power in W"),
        ('{"racks": {"r01": {"cap_w": Infinity}}}', "racks.r01.cap_w: expected"),
        ('{"fixed_load_w": NaN}', "fixed_load_w: expected a power in W >= 0"),
        ('{"fixed_load_w": -Infinity}', "fixed_load_w: expected a power in W >= 0"),
        ("[1, 2]", "expected a JSON object"),
        ('{"sources": {}\n  "racks": {}}', "invalid JSON at line 2, column 3"),
    ],
    ids=[
        "nan",
        "inf",
        "fixed load nan",
        "fixed load -inf",
        "top level not an object",
        "invalid json",
    ],
)
def test_unparsable_or_non_finite_snapshots(
    text: str, expected: str, site_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write_raw(tmp_path, text)
    assert main(["dispatch", site_file, "--snapshot", path]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert expected in err and path in err


def test_missing_snapshot_file(
    site_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "nope.json")
    assert main(["dispatch", site_file, "--snapshot", path]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert path in err and "cannot read the snapshot" in err


def test_every_problem_is_reported_at_once(
    site_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snap = copy.deepcopy(SNAPSHOT)
    snap["racks"]["r01"]["demand_w"] = -1.0
    snap["sources"]["bess-1"]["soc"] = 2.0
    del snap["racks"]["r03"]
    path = write_json(tmp_path, snap)
    assert main(["dispatch", site_file, "--snapshot", path]) == EXIT_INPUT
    err = capsys.readouterr().err
    for text in ("racks.r01.demand_w", "sources.bess-1.soc", "racks.r03: missing"):
        assert text in err
