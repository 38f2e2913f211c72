"""`edgectl powerflow`: JSON contract, readable output, exit statuses, fallback and refusal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgectl.cli import main
from edgectl.errors import EXIT_INPUT, EXIT_NO_KERNELS, EXIT_NO_SOLUTION, EXIT_USAGE

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SMALL = str(EXAMPLES / "small_site.toml")
REFERENCE = str(EXAMPLES / "reference_site.toml")


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    code = main(["powerflow", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("site", [SMALL, REFERENCE])
def test_json_has_the_contract_fields(capsys: pytest.CaptureFixture[str], site: str) -> None:
    code, out = run_json(capsys, site)
    assert code == 0
    for key in (
        "converged",
        "iterations",
        "collapse_margin",
        "losses_w",
        "buses",
        "lines",
        "sources",
        "racks",
        "violations",
    ):
        assert key in out
    assert out["converged"] is True
    assert out["violations"] == []
    assert set(out["buses"][0]) >= {"id", "v_v", "v_pu"}
    assert set(out["lines"][0]) >= {"id", "i_a", "loss_w", "loading"}
    assert set(out["sources"][0]) >= {"id", "p_w"}
    assert set(out["racks"][0]) >= {"id", "p_w"}
    # Power balance of what is printed: sources = racks + losses.
    supplied = sum(s["p_w"] for s in out["sources"])
    drawn = sum(r["p_w"] for r in out["racks"])
    assert supplied == pytest.approx(drawn + out["losses_w"], rel=1e-6)
    # Default operating point: every rack at p_max_w.
    assert all(r["p_w"] == 120_000.0 for r in out["racks"])


def test_set_moves_the_operating_point(capsys: pytest.CaptureFixture[str]) -> None:
    _, base = run_json(capsys, SMALL)
    racks = [f"--set=r{i:02d}=60000" for i in range(2, 13)]
    code, night = run_json(
        capsys,
        SMALL,
        "--set",
        "pv-1=0",
        "--set",
        "pv-2=0",
        "--set",
        "pv-3=0",
        "--set",
        "wind-1=0",
        "--set",
        "wind-2=0",
        "--set",
        "r01=50000",
        *racks,
    )
    assert code == 0
    src = {s["id"]: s for s in night["sources"]}
    assert src["pv-1"]["p_w"] == 0.0
    assert src["bess-1"]["p_w"] > 0.0 > {s["id"]: s for s in base["sources"]}["bess-1"]["p_w"]
    assert {r["id"]: r["p_w"] for r in night["racks"]}["r01"] == 50_000.0
    v_night = min(b["v_pu"] for b in night["buses"])
    assert v_night < min(b["v_pu"] for b in base["buses"])


def test_pinned_battery_runs_at_its_set_power(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_json(capsys, SMALL, "--set", "bess-1=-200000")
    assert code == 0
    assert {s["id"]: s for s in out["sources"]}["bess-1"]["p_w"] == -200_000.0


def test_violations_are_listed(capsys: pytest.CaptureFixture[str]) -> None:
    # A calm night with the racks at 100 kW: the batteries deliver beyond p_max_w.
    night = [f"--set={s}=0" for s in ("pv-1", "pv-2", "pv-3", "wind-1")]
    racks = [f"--set=r{i:02d}=100000" for i in range(1, 13)]
    code, out = run_json(capsys, SMALL, *night, "--set", "wind-2=150000", *racks)
    assert code == 0
    over = {v["element"] for v in out["violations"] if v["kind"] == "converter"}
    assert over == {"bess-1", "bess-2"}
    assert all(v["message"] for v in out["violations"])


def test_beyond_collapse_exits_3_with_a_clear_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    racks = [f"--set=r{i:02d}=900000" for i in range(1, 13)]
    code = main(["powerflow", SMALL, *racks, "--json"])
    captured = capsys.readouterr()
    assert code == EXIT_NO_SOLUTION
    out = json.loads(captured.out)
    assert out["converged"] is False
    assert out["violations"] == []
    assert "no stable operating point" in captured.err
    assert "Traceback" not in captured.err


def test_readable_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["powerflow", SMALL]) == 0
    text = capsys.readouterr().out
    assert "converged" in text
    assert "row-a" in text
    assert "violations: none" in text


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("nope=5", "no source or rack with id 'nope'"),
        ("r01", "expected ID=P_W"),
        ("r01=lots", "not a power in W"),
        ("r01=-5", "cannot be negative"),
        ("r01=nan", "finite"),
    ],
)
def test_bad_set_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], arg: str, message: str
) -> None:
    assert main(["powerflow", SMALL, "--set", arg]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_every_droop_source_pinned_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--set=bess-1=0", "--set=bess-2=0", "--set=grid=0"]
    assert main(["powerflow", SMALL, *args]) == EXIT_USAGE
    assert "at least one must hold the bus" in capsys.readouterr().err


def test_invalid_site_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[site]\nid = "x"\n')
    assert main(["powerflow", str(bad)]) == EXIT_INPUT
    assert "bad.toml" in capsys.readouterr().err


def _edgectl(env_extra: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **env_extra}
    return subprocess.run(
        [sys.executable, "-m", "edgectl", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def test_numpy_fallback_gives_the_same_answer() -> None:
    compiled = _edgectl({}, "powerflow", SMALL, "--json")
    fallback = _edgectl({"EDGECTL_FORCE_REFERENCE": "1"}, "powerflow", SMALL, "--json")
    assert compiled.returncode == fallback.returncode == 0, fallback.stderr
    a, b = json.loads(compiled.stdout), json.loads(fallback.stdout)
    for x, y in zip(a["buses"], b["buses"], strict=True):
        assert x["v_v"] == pytest.approx(y["v_v"], rel=1e-9)


def test_require_cext_refuses_the_fallback() -> None:
    env = {"EDGECTL_FORCE_REFERENCE": "1", "EDGECTL_REQUIRE_CEXT": "1"}
    proc = _edgectl(env, "powerflow", SMALL)
    assert proc.returncode == EXIT_NO_KERNELS
    assert "EDGECTL_REQUIRE_CEXT" in proc.stderr
    assert "pip install" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_version_and_help() -> None:
    from edgectl import __version__

    proc = _edgectl({}, "--version")
    assert proc.returncode == 0
    assert __version__ in proc.stdout
    proc = _edgectl({}, "--help")
    assert proc.returncode == 0
    for command in ("check-config", "powerflow", "dispatch", "bench"):
        assert command in proc.stdout
