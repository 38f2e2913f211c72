"""`edgectl dispatch --snapshot` on flight-recorder files: replay, comparison, refusals."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgectl import kernels
from edgectl.cli import main
from edgectl.config.load import load_site
from edgectl.errors import EXIT_INPUT, EXIT_USAGE
from edgectl.kernels.dispatch import dispatch
from edgectl.model.dispatch_input import input_from_snapshot, params_from_site
from edgectl.model.dispatch_output import report

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SITE = str(EXAMPLES / "small_site.toml")
CYCLES = (40, 41, 42, 43, 44)


def snapshots() -> list[dict[str, Any]]:
    """Five cycles of examples/small_site.toml, each exercising another part of the rules."""
    base = json.loads((EXAMPLES / "small_snapshot.json").read_text(encoding="utf-8"))
    uncapped = copy.deepcopy(base)
    # r12's BMC stopped answering: it counts as drawing its last cap, as a fixed load.
    uncapped["fixed_load_w"] = uncapped["racks"]["r12"]["cap_w"]
    uncapped["racks"]["r12"] = {"demand_w": 0.0, "cap_w": 0.0, "on": False}
    uncovered = copy.deepcopy(base)
    uncovered["fixed_load_w"] = 5e6
    no_grid = copy.deepcopy(base)
    no_grid["grid_budget_w"] = 0.0
    sunny = copy.deepcopy(base)
    for sid in ("pv-1", "pv-2", "pv-3"):
        sunny["sources"][sid]["available_w"] *= 4
    return [base, uncapped, uncovered, no_grid, sunny]


def decision(snapshot: dict[str, Any]) -> dict[str, Any]:
    """What the daemon records for a cycle: report() of the kernel's decision."""
    site = load_site(SITE)
    params = params_from_site(site)
    inputs = input_from_snapshot(site, params, snapshot, "recorded")
    return report(site, params, inputs, dispatch(params, inputs))


def recorder_data() -> dict[str, Any]:
    cycles = [
        {
            "cycle": number,
            "t_s": 100.0 + number,
            "state": "NORMAL",
            "snapshot": snap,
            "dispatch": decision(snap),
            "verified": {"ok": True},
            "reasons": [],
            "written_by": "a later recorder",  # unknown keys of a record are ignored
        }
        for number, snap in zip(CYCLES, snapshots(), strict=True)
    ]
    return {"format": "edgectl-cycles/1", "site": "demo-small", "cycles": cycles}


def write_json(tmp_path: Path, data: object, name: str = "cycles.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


@pytest.fixture
def recorder(tmp_path: Path) -> tuple[str, dict[str, Any]]:
    data = recorder_data()
    return write_json(tmp_path, data), data


def replay_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["dispatch", SITE, "--snapshot", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_the_recording_covers_what_it_should() -> None:
    # The fixed load of cycle 41 leaves less for the racks, that of cycle 42 is beyond
    # every source, and cycle 44 has a surplus that charges the batteries.
    data = recorder_data()
    by_cycle = {c["cycle"]: c["dispatch"] for c in data["cycles"]}
    assert 0.0 < by_cycle[41]["supply_w"] < by_cycle[40]["supply_w"]
    assert by_cycle[42]["supply_w"] < 0.0
    assert not any(r["on"] for r in by_cycle[42]["racks"])
    assert any(s["kind"] == "bess" and s["p_w"] < 0.0 for s in by_cycle[44]["sources"])


def test_the_last_cycle_replays_as_recorded(
    recorder: tuple[str, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = recorder
    assert main(["dispatch", SITE, "--snapshot", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{path} cycle 44: served ")
    assert lines[-1] == f"replayed cycle 44 of {path}: same decision as recorded"


def test_replay_json_is_the_decision_and_the_comparison(
    recorder: tuple[str, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, data = recorder
    code, out = replay_json(capsys, path)
    assert code == 0
    assert out.pop("replay") == {"cycle": 44, "matches": True, "differences": []}
    assert out == data["cycles"][-1]["dispatch"]


@pytest.mark.parametrize("cycle", CYCLES)
def test_cycle_selects_the_record(
    cycle: int, recorder: tuple[str, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, data = recorder
    code, out = replay_json(capsys, path, "--cycle", str(cycle))
    assert code == 0
    assert out.pop("replay") == {"cycle": cycle, "matches": True, "differences": []}
    assert out == data["cycles"][CYCLES.index(cycle)]["dispatch"]
    assert out["fixed_load_w"] == data["cycles"][CYCLES.index(cycle)]["snapshot"].get(
        "fixed_load_w", 0.0
    )


def test_a_recording_of_the_compiled_kernel_replays_the_same_on_the_reference(
    recorder: tuple[str, dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The two agree to 1e-9, well inside the replay's 1e-6.
    path, _ = recorder
    monkeypatch.setattr(kernels, "_dispatch_ext", None)
    for cycle in CYCLES:
        code, out = replay_json(capsys, path, "--cycle", str(cycle))
        assert out["compiled"] is False
        assert (code, out["replay"]["matches"]) == (0, True)


def test_an_altered_recording_reports_its_differences(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = recorder_data()
    recorded = data["cycles"][-1]["dispatch"]
    racks = {r["id"]: r for r in recorded["racks"]}
    sources = {s["id"]: s for s in recorded["sources"]}
    cap_r07 = racks["r07"]["cap_w"]
    on_r03 = racks["r03"]["on"]
    grid_w = sources["grid"]["p_w"]
    bess_w = sources["bess-2"]["p_w"]
    racks["r07"]["cap_w"] = cap_r07 - 5000.0
    racks["r03"]["on"] = not on_r03
    sources["bess-2"]["p_w"] = bess_w + 1.0
    sources["grid"]["p_w"] = grid_w * (1 + 5e-7)  # within the tolerance: the same
    path = write_json(tmp_path, data)

    assert main(["dispatch", SITE, "--snapshot", path]) == 1
    out = capsys.readouterr().out
    tail = out[out.index(f"replayed cycle 44 of {path}") :].splitlines()
    was, now = json.dumps(not on_r03), json.dumps(on_r03)
    assert tail == [
        f"replayed cycle 44 of {path}: 3 differences from the decision recorded",
        f"  r03: on {was} recorded, {now} replayed",
        f"  r07: cap_w {cap_r07 - 5000.0} recorded, {cap_r07} replayed",
        f"  bess-2: p_w {bess_w + 1.0} recorded, {bess_w} replayed",
    ]

    code, out_json = replay_json(capsys, path)
    assert code == 1
    assert out_json["replay"] == {
        "cycle": 44,
        "matches": False,
        "differences": [
            {"id": "r03", "key": "on", "recorded": not on_r03, "replayed": on_r03},
            {"id": "r07", "key": "cap_w", "recorded": cap_r07 - 5000.0, "replayed": cap_r07},
            {"id": "bess-2", "key": "p_w", "recorded": bess_w + 1.0, "replayed": bess_w},
        ],
    }


@pytest.mark.parametrize(("shift", "same"), [(5e-7, True), (5e-6, False)])
def test_caps_match_within_a_millionth(
    shift: float, same: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = recorder_data()
    rack = data["cycles"][-1]["dispatch"]["racks"][0]
    rack["cap_w"] *= 1 + shift
    code, out = replay_json(capsys, write_json(tmp_path, data))
    assert (code == 0, out["replay"]["matches"]) == (same, same)


def test_many_differences_are_summarised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = recorder_data()
    for rack in data["cycles"][-1]["dispatch"]["racks"]:
        rack["cap_w"] += 1000.0
    for source in data["cycles"][-1]["dispatch"]["sources"]:
        source["p_w"] += 1000.0
    path = write_json(tmp_path, data)
    assert main(["dispatch", SITE, "--snapshot", path]) == 1
    out = capsys.readouterr().out
    # 12 racks and 8 sources; the first 12 differences are listed.
    assert f"replayed cycle 44 of {path}: 20 differences from the decision recorded" in out
    assert "  ... and 8 more" in out
    assert "  r12: cap_w" in out and "pv-1: p_w" not in out


def test_cycle_with_a_plain_snapshot_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    snapshot = str(EXAMPLES / "small_snapshot.json")
    assert main(["dispatch", SITE, "--snapshot", snapshot, "--cycle", "3"]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "--cycle needs a flight-recorder file" in captured.err and snapshot in captured.err


Mutation = Callable[[dict[str, Any]], None]


def _last(mutate: Callable[[dict[str, Any]], None]) -> Mutation:
    """Apply to the last record, the one replayed by default."""
    return lambda data: mutate(data["cycles"][-1])


def _racks(data: dict[str, Any]) -> list[dict[str, Any]]:
    racks: list[dict[str, Any]] = data["cycles"][-1]["dispatch"]["racks"]
    return racks


# One case per class of problem: the mutation, the extra arguments, and the key paths and
# messages that stderr must hold.
ERRORS: dict[str, tuple[Mutation, list[str], list[str]]] = {
    "unsupported format": (
        lambda d: d.update(format="edgectl-cycles/2"),
        [],
        ["format: unsupported format edgectl-cycles/2; expected edgectl-cycles/1"],
    ),
    "another site": (
        lambda d: d.update(site="elsewhere"),
        [],
        ["site: recorded on site elsewhere, but the site file is demo-small"],
    ),
    "cycles missing": (
        lambda d: d.pop("cycles"),
        [],
        ["cycles: expected a list of cycle records, found nothing"],
    ),
    "cycles not a list": (
        lambda d: d.update(cycles={"40": {}}),
        [],
        ["cycles: expected a list of cycle records, found an object"],
    ),
    "no cycles": (lambda d: d.update(cycles=[]), [], ["cycles: no cycles recorded"]),
    "record not an object": (
        lambda d: d["cycles"].__setitem__(1, [41]),
        [],
        ["cycles[1]: expected an object with cycle, snapshot and dispatch, found a list"],
    ),
    "record without snapshot": (
        lambda d: d["cycles"][3].pop("snapshot"),
        [],
        ["cycles[3].snapshot: missing"],
    ),
    "record without dispatch": (
        lambda d: d["cycles"][2].pop("dispatch"),
        [],
        ["cycles[2].dispatch: missing"],
    ),
    "record without cycle number": (
        lambda d: d["cycles"][0].pop("cycle"),
        [],
        ["cycles[0].cycle: missing"],
    ),
    "cycle number not an integer": (
        lambda d: d["cycles"][0].update(cycle="40"),
        [],
        ["cycles[0].cycle: expected an integer, found a string"],
    ),
    "no such cycle": (
        lambda d: None,
        ["--cycle", "7"],
        ["cycles: no cycle 7; the file holds 5 cycles, from 40 (first) to 44 (last)"],
    ),
    "cycle recorded twice": (
        lambda d: d["cycles"][3].update(cycle=42),
        ["--cycle", "42"],
        ["cycles: cycle 42 is recorded 2 times: cycles[2], cycles[3]"],
    ),
    "snapshot not an object": (
        _last(lambda c: c.update(snapshot=[1, 2])),
        [],
        ["cycles[4].snapshot: expected a JSON object"],
    ),
    "snapshot value out of range": (
        _last(lambda c: c["snapshot"]["racks"]["r01"].update(demand_w=-5.0)),
        [],
        ["cycles[4].snapshot.racks.r01.demand_w: expected a power in W >= 0, found -5.0"],
    ),
    "snapshot missing a rack": (
        _last(lambda c: c["snapshot"]["racks"].pop("r02")),
        [],
        ["cycles[4].snapshot.racks.r02: missing"],
    ),
    "snapshot with a negative fixed load": (
        _last(lambda c: c["snapshot"].update(fixed_load_w=-1.0)),
        [],
        ["cycles[4].snapshot.fixed_load_w: expected a power in W >= 0"],
    ),
    "snapshot problem in the cycle chosen": (
        lambda d: d["cycles"][1]["snapshot"].update(budget=1.0),
        ["--cycle", "41"],
        ["cycles[1].snapshot.budget: unknown key"],
    ),
    "dispatch not an object": (
        _last(lambda c: c.update(dispatch=3)),
        [],
        ["cycles[4].dispatch: expected an object, found int"],
    ),
    "recorded racks not a list": (
        _last(lambda c: c["dispatch"].update(racks={})),
        [],
        ["cycles[4].dispatch.racks: expected a list of racks with id and on and cap_w"],
    ),
    "recorded cap not a number": (
        lambda d: _racks(d)[0].update(cap_w="96 kW"),
        [],
        ["cycles[4].dispatch.racks[0].cap_w: expected a power in W, found a string"],
    ),
    "recorded cap missing": (
        lambda d: _racks(d)[5].pop("cap_w"),
        [],
        ["cycles[4].dispatch.racks[5].cap_w: missing"],
    ),
    "recorded on not a boolean": (
        lambda d: _racks(d)[1].update(on=1),
        [],
        ["cycles[4].dispatch.racks[1].on: expected true or false, found int"],
    ),
    "recorded rack missing": (
        lambda d: _racks(d).pop(),
        [],
        ["cycles[4].dispatch.racks: no entry for rack r12"],
    ),
    "recorded rack unknown": (
        lambda d: _racks(d)[0].update(id="r99"),
        [],
        [
            "cycles[4].dispatch.racks[0].id: unknown rack r99",
            "cycles[4].dispatch.racks: no entry for rack r01",
        ],
    ),
    "recorded rack twice": (
        lambda d: _racks(d)[1].update(id="r01"),
        [],
        ["cycles[4].dispatch.racks[1].id: rack r01 again (first at cycles[4].dispatch.racks[0])"],
    ),
    "recorded source power not finite": (
        _last(lambda c: c["dispatch"]["sources"][2].update(p_w=float("nan"))),
        [],
        ["cycles[4].dispatch.sources[2].p_w: expected a power in W, found nan"],
    ),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_recorder_file_errors_name_the_key_path(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mutate, args, expected = ERRORS[name]
    data = recorder_data()
    mutate(data)
    path = write_json(tmp_path, data)
    assert main(["dispatch", SITE, "--snapshot", path, *args, "--json"]) == EXIT_INPUT
    captured = capsys.readouterr()
    assert captured.out == ""
    # Each problem on its own line, as "file: key path: message".
    for text in expected:
        assert f"{path}: {text}" in captured.err


def test_every_problem_of_a_record_is_reported_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = recorder_data()
    data["cycles"][0].pop("snapshot")
    data["cycles"][2].update(cycle=None)
    data["cycles"][4].pop("dispatch")
    path = write_json(tmp_path, data)
    assert main(["dispatch", SITE, "--snapshot", path]) == EXIT_INPUT
    err = capsys.readouterr().err
    for text in (
        "cycles[0].snapshot: missing",
        "cycles[2].cycle: expected an integer, found null",
        "cycles[4].dispatch: missing",
    ):
        assert f"{path}: {text}" in err
