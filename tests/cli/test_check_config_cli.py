"""`edgectl check-config`: summary and exit 0 on a valid site, one line per problem and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgectl.cli import main
from edgectl.errors import EXIT_INPUT

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SMALL = EXAMPLES / "small_site.toml"
REFERENCE = EXAMPLES / "reference_site.toml"


def test_small_site_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(SMALL)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines() == [
        f'{SMALL}: site "demo-small", valid',
        "  buses 6, lines 6, devices 6",
        "  sources: pv 3 (1.20 MW), wind 2 (0.80 MW), bess 2 (1.00 MW, 4.00 MWh), grid 1 (0.15 MW)",
        "  racks 12 (1.44 MW max; tier 0: 2, tier 1: 4, tier 2: 4, tier 3: 2)",
        "  rack p_max against sources p_max: 1.44 MW / 3.15 MW",
    ]


def test_reference_site_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(REFERENCE)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == f'{REFERENCE}: site "reference", valid'
    assert lines[1] == "  buses 856, lines 856, devices 12"
    assert lines[2] == (
        "  sources: pv 40 (100.00 MW), wind 8 (32.00 MW), bess 4 (100.00 MW, 200.00 MWh), "
        "grid 1 (9.60 MW)"
    )
    assert (
        lines[3] == "  racks 800 (96.00 MW max; tier 0: 80, tier 1: 240, tier 2: 320, tier 3: 160)"
    )


def test_json_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--json", str(SMALL)]) == 0
    out, _ = capsys.readouterr()
    facts = json.loads(out)
    assert facts["file"] == str(SMALL)
    assert facts["valid"] is True
    assert facts["site"] == "demo-small"
    assert facts["sources"]["bess"] == {
        "count": 2,
        "p_max_w": 1_000_000.0,
        "p_charge_max_w": 1_000_000.0,
        "capacity_wh": 4_000_000.0,
    }
    assert facts["racks"]["count"] == 12
    assert facts["racks"]["p_max_w"] == 1_440_000.0


def _broken_copy(tmp_path: Path) -> Path:
    """The small example with three independent mistakes."""
    text = SMALL.read_text(encoding="utf-8")
    text = text.replace("v_nominal_v = 800.0 ", 'v_nominal_v = "800"', 1)
    text = text.replace("r_ohm = 0.004 ", "r_ohm = 0.0 ", 1)
    r03 = 'id = "r03"\nbus = "row-a"\np_min_w = '
    text = text.replace(r03 + "36_000.0", r03 + "360_000.0", 1)
    path = tmp_path / "broken.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_invalid_site_one_line_per_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _broken_copy(tmp_path)
    assert main(["check-config", str(path)]) == EXIT_INPUT
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{path}: site.v_nominal_v: expected a number, got string '800'",
        f'{path}: line[3].r_ohm: must be greater than 0, got 0 (line "l-row-a")',
        f'{path}: rack[2].p_min_w: must not exceed p_max_w, got 360000 > 120000 (rack "r03")',
    ]


def test_invalid_site_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _broken_copy(tmp_path)
    assert main(["check-config", str(path), "--json"]) == EXIT_INPUT
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["valid"] is False
    assert [p["path"] for p in report["problems"]] == [
        "site.v_nominal_v",
        "line[3].r_ohm",
        "rack[2].p_min_w",
    ]
    assert len(err.splitlines()) == 3  # stderr says the same for a person


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.toml"
    assert main(["check-config", str(path)]) == EXIT_INPUT
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"{path}: no such file\n"


def test_bad_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[site]\nid = "x"\n[control\n', encoding="utf-8")
    assert main(["check-config", str(path)]) == EXIT_INPUT
    _, err = capsys.readouterr()
    assert err.startswith(f"{path}: not valid TOML: ")
    assert "line 3" in err
    assert len(err.splitlines()) == 1
