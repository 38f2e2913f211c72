"""`edgectl audit verify` and `edgectl audit report` on ledgers built here: one line and
exit 0 / 1 / 2 from verify, the report as text and as CSV, usage errors exit 64."""

from __future__ import annotations

import csv
import io
import sqlite3
from pathlib import Path

import pytest

from edgectl.cli import main
from edgectl.errors import EXIT_INPUT, EXIT_USAGE
from edgectl.uplink.ledger import FILE_NAME, Ledger, LedgerFile, kpis

T0 = 1_749_772_800  # 2025-06-13 00:00:00 UTC


def build(state_dir: Path, intervals: int = 4) -> Path:
    """A ledger of `intervals` quarter hours: sunny first, then on battery and grid."""
    ledger = Ledger.open(state_dir, "site-cli")
    for k in range(intervals * 15):
        sunny = k < intervals * 15 // 2
        ledger.add(
            T0 + 60.0 * (k + 1),
            60.0,
            pv_w=1500.0 if sunny else 0.0,
            wind_w=300.0 if sunny else 100.0,
            battery_w={"b1": -200.0 if sunny else 300.0},
            grid_w=0.0 if sunny else 600.0,
            curtailed_w=200.0 if sunny else 0.0,
            rack_w={"r1": 900.0, "r2": 600.0 if sunny else 0.0},
            losses_w=100.0,
        )
    ledger.close()
    return state_dir / FILE_NAME


def test_verify_intact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = build(tmp_path)
    head = LedgerFile(path).head()
    assert head is not None
    assert main(["audit", "verify", "--ledger", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out == f"ledger {path}: 4 records, intact, head 3 {head.hash}\n"
    assert main(["audit", "verify", "--ledger", str(path), "--head", str(head)]) == 0
    capsys.readouterr()


def test_verify_finds_the_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    build(tmp_path / "state")
    assert main(["audit", "verify", "--state-dir", str(tmp_path / "state")]) == 0
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    assert main(["audit", "verify"]) == 0
    out, _ = capsys.readouterr()
    assert out.count("4 records, intact") == 2


def test_verify_tampered(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = build(tmp_path)
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER records_no_update")
    db.execute(
        "UPDATE records SET body = replace(body, '\"cycles\":15', '\"cycles\":16') WHERE idx = 2"
    )
    db.commit()
    db.close()
    assert main(["audit", "verify", "--ledger", str(path)]) == 1
    out, _ = capsys.readouterr()
    assert out.startswith(f"ledger {path}: record 2 was changed (hash ")
    assert out.count("\n") == 1


def test_verify_against_a_published_head(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = build(tmp_path)
    head = LedgerFile(path).head()
    assert head is not None
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER records_no_delete")
    db.execute("DELETE FROM records WHERE idx = 3")
    db.execute("UPDATE head SET idx = 2, hash = (SELECT hash FROM records WHERE idx = 2)")
    db.commit()
    db.close()
    assert main(["audit", "verify", "--ledger", str(path)]) == 0
    assert main(["audit", "verify", "--ledger", str(path), "--head", str(head)]) == 1
    out, _ = capsys.readouterr()
    assert out.splitlines()[1] == (
        f"ledger {path}: the chain ends at record 2 but the published head is record 3: "
        "record 3 was removed"
    )


def test_verify_missing_or_not_a_ledger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nothing.sqlite"
    assert main(["audit", "verify", "--ledger", str(missing)]) == EXIT_INPUT
    _, err = capsys.readouterr()
    assert err == f"edgectl audit: ledger {missing}: no such file\n"
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    assert main(["audit", "verify", "--ledger", str(other)]) == EXIT_INPUT
    _, err = capsys.readouterr()
    assert "not an edgectl audit ledger" in err
    assert not missing.exists()


def test_verify_bad_head_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = build(tmp_path, intervals=1)
    assert main(["audit", "verify", "--ledger", str(path), "--head", "3:abc"]) == EXIT_USAGE
    _, err = capsys.readouterr()
    assert err.startswith("edgectl audit: --head '3:abc': ")


def test_report_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = build(tmp_path)
    argv = ["audit", "report", "--ledger", str(path), "--from", "2025-06-13", "--to", "2025-06-14"]
    assert main([*argv, "--racks"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == f"ledger {path}, site site-cli: 2025-06-13 00:00 to 2025-06-14 00:00 UTC"
    assert lines[1] == "  4 intervals, 1.00 h counted of 24.00 h"
    # Sunny: PV 1500 W + wind 300 W feed the racks, losses and the charging battery, all
    # green. Then wind 100 W, the battery 300 W (its 100 Wh of sunshine) and the grid 600 W:
    # 10 % wind + 30 % battery green, then the pool's last 25 Wh of the 75 Wh taken.
    assert lines[3:8] == [
        "interval (UTC)       consumption    green self-cons.   export racks green",
        "2025-06-13 00:00       0.400 kWh  100.0 %     90.0 %    0.0 %     100.0 %",
        "2025-06-13 00:15       0.400 kWh  100.0 %     90.0 %    0.0 %     100.0 %",
        "2025-06-13 00:30       0.250 kWh   40.0 %    100.0 %    0.0 %      40.0 %",
        "2025-06-13 00:45       0.250 kWh   20.0 %    100.0 %    0.0 %      20.0 %",
    ]
    assert lines[9:19] == [
        "period",
        "  consumption                 1.300 kWh (racks 1.200 kWh, losses 0.100 kWh)",
        "  green in consumption        0.950 kWh (pv and wind direct or through batteries)",
        "  generation available        1.050 kWh (used 0.950 kWh, curtailed 0.100 kWh, "
        "exported 0.000 kWh)",
        "  grid import                 0.300 kWh",
        "  self-consumed share of generation    90.5 %  >= 60.0 %  pass",
        "  green share of consumption           73.1 %  >= 30.0 %  pass",
        "  export share of generation            0.0 %  <= 20.0 %  pass",
        "  data-centre green share (racks)      73.8 %  >= 80.0 %  FAIL",
        "",
    ]
    rack_lines = {line.split()[0]: line.split() for line in lines[20:]}
    assert rack_lines["r1"][1:5] == ["0.900", "kWh", "65.0", "%"]
    assert rack_lines["r2"][1:5] == ["0.300", "kWh", "100.0", "%"]


def test_report_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = build(tmp_path)
    argv = ["audit", "report", "--ledger", str(path), "--from", "2025-06-13T00:15Z"]
    assert main([*argv, "--to", "2025-06-13T01:00:00+00:00", "--csv"]) == 0
    out, _ = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["start"] for r in rows] == [
        "2025-06-13T00:15:00Z",
        "2025-06-13T00:30:00Z",
        "2025-06-13T00:45:00Z",
    ]
    records = LedgerFile(path).records(T0 + 900, T0 + 3600)
    summary = kpis(records)["totals"]
    for key in ("consumption_wh", "racks_wh", "green_wh", "grid_wh", "pv_wh"):
        assert sum(float(r[key]) for r in rows) == pytest.approx(summary[key])
    for r in rows:
        assert float(r["consumption_wh"]) == pytest.approx(
            float(r["racks_wh"]) + float(r["losses_wh"])
        )
        assert float(r["covered_s"]) == 900.0
    assert rows[1]["self_consumption_share"] != ""

    assert main([*argv, "--to", "2025-06-13T01:00", "--csv", "--racks"]) == 0
    out, _ = capsys.readouterr()
    rack_rows = list(csv.DictReader(io.StringIO(out)))
    assert {r["rack"] for r in rack_rows} == {"r1", "r2"}
    for interval in rows:
        mine = [r for r in rack_rows if r["start"] == interval["start"]]
        assert sum(float(r["wh"]) for r in mine) == pytest.approx(float(interval["racks_wh"]))
        for r in mine:
            parts = ("wh_pv", "wh_wind", "wh_battery_green", "wh_battery_grey", "wh_grid")
            assert sum(float(r[k]) for k in parts) == pytest.approx(float(r["wh"]), abs=0.01)


def test_report_empty_period(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = build(tmp_path, intervals=1)
    argv = ["audit", "report", "--ledger", str(path), "--from", "2024-01-01", "--to", "2024-01-02"]
    assert main(argv) == 0
    assert "no intervals recorded" in capsys.readouterr().out
    assert main([*argv, "--csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("start,end,covered_s,")


@pytest.mark.parametrize(
    ("option", "value"), [("--from", "13/06/2025"), ("--from", "yesterday"), ("--to", "2025-13-01")]
)
def test_report_bad_time_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    path = build(tmp_path, intervals=1)
    times = {"--from": "2025-06-13", "--to": "2025-06-14", option: value}
    argv = ["audit", "report", "--ledger", str(path)]
    assert main([*argv, "--from", times["--from"], "--to", times["--to"]]) == EXIT_USAGE
    _, err = capsys.readouterr()
    assert err.startswith(f"edgectl audit: {option} {value!r}: expected an ISO 8601 date")


def test_report_period_must_not_be_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = build(tmp_path, intervals=1)
    argv = ["audit", "report", "--ledger", str(path), "--from", "2025-06-14", "--to", "2025-06-13"]
    assert main(argv) == EXIT_USAGE
    assert "must be after --from" in capsys.readouterr().err


def test_report_missing_ledger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["audit", "report", "--state-dir", str(tmp_path), "--from", "2025-06-13"]
    assert main([*argv, "--to", "2025-06-14"]) == EXIT_INPUT
    assert "no such file" in capsys.readouterr().err
