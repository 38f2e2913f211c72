"""`edgectl bench`: the JSON document's shape (figures are measured, never asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgectl.cli import main
from edgectl.errors import EXIT_INPUT

SMALL = str(Path(__file__).resolve().parents[2] / "examples" / "small_site.toml")


def test_bench_json_contract(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["bench", "--json", "--budget", "0.01", "--powerflow-sizes", "10,100",
         "--dispatch-sizes", "100", "--site", SMALL]
    )
    out = json.loads(capsys.readouterr().out)  # nothing but JSON on stdout
    assert code == 0
    assert out["compiled"] is True
    assert [(r["buses"], r["start"]) for r in out["powerflow"]] == [
        (10, "cold"), (10, "warm"), (100, "cold"), (100, "warm"),
    ]
    assert [r["racks"] for r in out["dispatch"]] == [100]
    for row in out["powerflow"] + out["dispatch"]:
        assert row["median_s"] > 0 and row["baseline_median_s"] > 0
        assert row["ratio"] == pytest.approx(row["baseline_median_s"] / row["median_s"])
    (site,) = out["sites"]
    assert site["site"] == "demo-small"
    assert site["powerflow"][0]["buses"] == 6
    assert site["dispatch"][0]["racks"] == 12


def test_bench_refuses_a_bad_site_before_timing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[site]\n")
    assert main(["bench", "--site", str(bad), "--powerflow-sizes", "10"]) == EXIT_INPUT
    assert "bad.toml" in capsys.readouterr().err
