"""The audit ledger: the origin split and the battery pool, quarter-hour records with their
gaps, restarts and kill -9, the hash chain against every kind of tampering, and the KPIs
on an example computed by hand."""

from __future__ import annotations

import hashlib
import json
import random
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from edgectl.uplink.ledger import (
    FILE_NAME,
    INTERVAL_S,
    SPLIT_KEYS,
    Head,
    Ledger,
    LedgerError,
    LedgerFile,
    Thresholds,
    canonical_json,
    genesis_hash,
    kpis,
)

T0 = 1_749_772_800  # 2025-06-13 00:00:00 UTC, on a quarter hour
SITE = "site-a"
ROOT = Path(__file__).resolve().parents[2]
# Records carry energies to 1 mWh; sums of a few rounded parts stay within this.
TOL = 0.01
ORIGINS = SPLIT_KEYS[1:]

Record = dict[str, Any]


def run(
    ledger: Ledger,
    t_from: float,
    t_to: float,
    dt: float,
    **powers: Any,
) -> list[Record]:
    """Cycles of dt ending at t_from + dt ... t_to, all at the same powers."""
    p: dict[str, Any] = {
        "pv_w": 0.0,
        "wind_w": 0.0,
        "battery_w": {},
        "grid_w": 0.0,
        "curtailed_w": 0.0,
        "rack_w": {},
        "losses_w": 0.0,
    }
    p.update(powers)
    out: list[Record] = []
    t = t_from
    while t < t_to - 1e-9:
        t += dt
        out += ledger.add(t, dt, **p)
    return out


def origins(split: Mapping[str, float]) -> float:
    return sum(split[k] for k in ORIGINS)


def green(split: Mapping[str, float]) -> float:
    return split["wh_pv"] + split["wh_wind"] + split["wh_battery_green"]


def sinks(record: Record) -> list[Mapping[str, float]]:
    return [*record["racks"].values(), record["losses"], record["battery_charge"], record["export"]]


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger.open(tmp_path, SITE)


def test_every_split_sums_to_its_energy_and_the_site_balances(ledger: Ledger) -> None:
    rng = random.Random(7)
    records: list[Record] = []
    t = float(T0)
    # dt of 7 s does not divide 900 s: cycles straddle the quarter hours.
    while t < T0 + 3 * INTERVAL_S + 100:
        t += 7.0
        racks = {f"r{i}": rng.uniform(0, 400) for i in range(5)}
        battery = {"b1": rng.uniform(-300, 300), "b2": rng.uniform(-200, 200)}
        pv, wind, losses = rng.uniform(0, 1000), rng.uniform(0, 500), rng.uniform(0, 30)
        charge = sum(-p for p in battery.values() if p < 0)
        discharge = sum(p for p in battery.values() if p > 0)
        # The tie carries the balance, both ways: grid_w < 0 is an export.
        grid = sum(racks.values()) + losses + charge - pv - wind - discharge
        records += ledger.add(
            t,
            7.0,
            pv_w=pv,
            wind_w=wind,
            battery_w=battery,
            grid_w=grid,
            curtailed_w=rng.uniform(0, 100),
            rack_w=racks,
            losses_w=losses,
        )
    assert [r["index"] for r in records] == [0, 1, 2]
    assert any(r["totals"]["export_wh"] > 0 for r in records)
    for r in records:
        tot = r["totals"]
        for split in sinks(r):
            assert origins(split) == pytest.approx(split["wh"], abs=TOL)
        # Every origin's energy reached a sink, and nothing else did.
        assert sum(s["wh_pv"] for s in sinks(r)) == pytest.approx(tot["pv_wh"], abs=TOL)
        assert sum(s["wh_wind"] for s in sinks(r)) == pytest.approx(tot["wind_wh"], abs=TOL)
        assert sum(s["wh_battery_green"] for s in sinks(r)) == pytest.approx(
            tot["battery_green_wh"], abs=TOL
        )
        assert sum(s["wh_battery_grey"] for s in sinks(r)) == pytest.approx(
            tot["battery_grey_wh"], abs=TOL
        )
        assert sum(s["wh_grid"] for s in sinks(r)) == pytest.approx(tot["grid_wh"], abs=TOL)
        supply = tot["pv_wh"] + tot["wind_wh"] + tot["battery_discharge_wh"] + tot["grid_wh"]
        demand = tot["racks_wh"] + tot["losses_wh"] + tot["battery_charge_wh"] + tot["export_wh"]
        assert demand == pytest.approx(supply, abs=TOL)
        assert tot["unmetered_wh"] == pytest.approx(0, abs=TOL)
        assert tot["racks_wh"] == pytest.approx(sum(s["wh"] for s in r["racks"].values()), abs=TOL)
        assert tot["green_wh"] == pytest.approx(
            sum(green(s) for s in r["racks"].values()) + green(r["losses"]), abs=TOL
        )
        b = r["batteries"]
        assert sum(x["discharge_wh"] for x in b.values()) == pytest.approx(
            tot["battery_discharge_wh"], abs=TOL
        )
        assert sum(x["charge_wh"] for x in b.values()) == pytest.approx(
            tot["battery_charge_wh"], abs=TOL
        )


def test_meters_that_do_not_balance_are_shown(ledger: Ledger) -> None:
    # 100 W drawn that no meter supplied: counted as grid, and shown as unmetered.
    run(ledger, T0, T0 + INTERVAL_S, 60, pv_w=300.0, rack_w={"r1": 400.0})
    (short,) = run(
        ledger, T0 + INTERVAL_S, T0 + INTERVAL_S + 60, 60, pv_w=500.0, rack_w={"r1": 400.0}
    )
    assert short["totals"]["unmetered_wh"] == pytest.approx(25.0)
    assert short["racks"]["r1"]["wh_grid"] == pytest.approx(25.0)
    assert short["racks"]["r1"]["wh_pv"] == pytest.approx(75.0)
    # 100 W supplied that no sink drew: unassigned, and the racks keep the mix.
    (surplus,) = ledger.close()
    assert surplus["totals"]["unassigned_wh"] == pytest.approx(100 / 60, abs=1e-3)
    assert surplus["racks"]["r1"]["wh_pv"] == pytest.approx(400 / 60, abs=1e-3)


def test_charge_from_pv_then_discharge_is_green(ledger: Ledger) -> None:
    run(
        ledger,
        T0,
        T0 + INTERVAL_S,
        60,
        pv_w=1200.0,
        battery_w={"b1": -1000.0},
        rack_w={"r1": 200.0},
    )
    (charged,) = run(
        ledger,
        T0 + INTERVAL_S,
        T0 + 2 * INTERVAL_S,
        60,
        battery_w={"b1": 800.0},
        rack_w={"r1": 800.0},
    )
    assert charged["batteries"]["b1"]["stored_wh"] == pytest.approx(250.0)
    assert charged["batteries"]["b1"]["stored_green_wh"] == pytest.approx(250.0)
    (night,) = ledger.close()
    rack = night["racks"]["r1"]
    assert rack["wh"] == pytest.approx(200.0)
    assert rack["wh_battery_green"] == pytest.approx(200.0)
    assert rack["wh_battery_grey"] == 0.0
    assert night["kpis"]["dc_green_share"] == pytest.approx(1.0)
    assert night["batteries"]["b1"]["stored_wh"] == pytest.approx(50.0)


def test_grid_charged_battery_gives_grey(ledger: Ledger) -> None:
    run(
        ledger,
        T0,
        T0 + INTERVAL_S,
        60,
        grid_w=1100.0,
        battery_w={"b1": -1000.0},
        rack_w={"r1": 100.0},
    )
    run(
        ledger,
        T0 + INTERVAL_S,
        T0 + 2 * INTERVAL_S,
        60,
        battery_w={"b1": 400.0},
        rack_w={"r1": 400.0},
    )
    (night,) = ledger.close()
    assert night["racks"]["r1"]["wh_battery_grey"] == pytest.approx(100.0)
    assert night["racks"]["r1"]["wh_battery_green"] == 0.0
    assert night["kpis"]["green_share"] == 0.0


def test_the_pool_averages_what_was_charged(ledger: Ledger) -> None:
    # 100 Wh green, then 100 Wh grey (charged while the grid fed the bus): half green.
    run(ledger, T0, T0 + 450, 45, pv_w=800.0, battery_w={"b1": -800.0})
    run(ledger, T0 + 450, T0 + 900, 45, grid_w=800.0, battery_w={"b1": -800.0})
    run(ledger, T0 + 900, T0 + 1800, 45, battery_w={"b1": 400.0}, rack_w={"r1": 400.0})
    (out,) = ledger.close()
    assert out["racks"]["r1"]["wh_battery_green"] == pytest.approx(50.0)
    assert out["racks"]["r1"]["wh_battery_grey"] == pytest.approx(50.0)
    assert out["batteries"]["b1"]["stored_wh"] == pytest.approx(100.0)
    assert out["batteries"]["b1"]["stored_green_wh"] == pytest.approx(50.0)


def test_discharge_the_ledger_never_saw_charged_is_grey(ledger: Ledger) -> None:
    run(ledger, T0, T0 + 900, 60, pv_w=400.0, battery_w={"b1": -400.0})  # 100 Wh green
    run(ledger, T0 + 900, T0 + 1800, 60, battery_w={"b1": 1200.0}, rack_w={"r1": 1200.0})
    (out,) = ledger.close()
    assert out["racks"]["r1"]["wh_battery_green"] == pytest.approx(100.0)
    assert out["racks"]["r1"]["wh_battery_grey"] == pytest.approx(200.0)
    assert out["batteries"]["b1"]["stored_wh"] == 0.0


def test_a_pool_larger_than_the_battery_keeps_its_share(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path, SITE, battery_capacity_wh={"b1": 100.0})
    run(ledger, T0, T0 + 450, 45, pv_w=800.0, battery_w={"b1": -800.0})
    run(ledger, T0 + 450, T0 + 900, 45, grid_w=1600.0, battery_w={"b1": -1600.0})
    (out,) = ledger.close()
    assert out["batteries"]["b1"]["stored_wh"] == pytest.approx(100.0)
    # Full of green, then ten steps of 20 Wh grey, each scaled back to 100 Wh: the green
    # part decays by 100/120 a step, the pool never forgets it at once.
    assert out["batteries"]["b1"]["stored_green_wh"] == pytest.approx(100 * (5 / 6) ** 10, abs=0.01)


def test_an_interval_closes_on_the_quarter_hour(ledger: Ledger) -> None:
    assert run(ledger, T0, T0 + INTERVAL_S, 10, pv_w=360.0, rack_w={"r1": 360.0}) == []
    (record,) = run(
        ledger, T0 + INTERVAL_S, T0 + INTERVAL_S + 10, 10, pv_w=360.0, rack_w={"r1": 360.0}
    )
    assert record["start_s"] == T0
    assert record["end_s"] == T0 + INTERVAL_S
    assert record["start"] == "2025-06-13T00:00:00Z"
    assert record["covered_s"] == 900.0
    assert record["cycles"] == 90
    assert record["racks"]["r1"]["wh"] == pytest.approx(90.0)


def test_a_cycle_across_the_quarter_hour_is_split(ledger: Ledger) -> None:
    run(ledger, T0 + 800, T0 + 895, 5, rack_w={"r1": 3600.0}, grid_w=3600.0)
    (record,) = ledger.add(
        T0 + 905,
        10,
        pv_w=0.0,
        wind_w=0.0,
        battery_w={},
        grid_w=3600.0,
        curtailed_w=0.0,
        rack_w={"r1": 3600.0},
        losses_w=0.0,
    )
    assert record["covered_s"] == pytest.approx(100.0)
    assert record["last_s"] == T0 + 900
    assert record["racks"]["r1"]["wh"] == pytest.approx(100.0)
    (nxt,) = ledger.close()
    assert nxt["start_s"] == T0 + 900
    assert nxt["covered_s"] == pytest.approx(5.0)
    assert nxt["racks"]["r1"]["wh"] == pytest.approx(5.0)


def test_a_gap_counts_only_the_seconds_seen(ledger: Ledger) -> None:
    run(ledger, T0, T0 + 300, 10, grid_w=360.0, rack_w={"r1": 360.0})
    # The daemon was stopped for 5 minutes, then for more than an hour.
    run(ledger, T0 + 600, T0 + 900, 10, grid_w=360.0, rack_w={"r1": 360.0})
    (first,) = run(ledger, T0 + 5000, T0 + 5100, 10, grid_w=360.0, rack_w={"r1": 360.0})
    assert first["covered_s"] == 600.0
    assert first["first_s"] == T0
    assert first["last_s"] == T0 + 900
    assert first["racks"]["r1"]["wh"] == pytest.approx(60.0)
    (second,) = ledger.close()
    # Quarter hours nobody counted have no record; the chain does not skip an index.
    assert second["index"] == 1
    assert second["start_s"] == T0 + 4500
    assert second["covered_s"] == 100.0
    assert second["prev_hash"] == first["hash"]


def test_a_clock_stepping_back_loses_no_energy(ledger: Ledger) -> None:
    run(ledger, T0, T0 + 600, 10, grid_w=360.0, rack_w={"r1": 360.0})
    run(ledger, T0 + 500, T0 + 600, 10, grid_w=360.0, rack_w={"r1": 360.0})
    (record,) = ledger.close()
    assert record["racks"]["r1"]["wh"] == pytest.approx(70.0)
    assert record["covered_s"] == pytest.approx(700.0)
    assert record["last_s"] <= T0 + 900


def test_a_restart_resumes_the_interval_and_the_chain(tmp_path: Path) -> None:
    a = Ledger.open(tmp_path, SITE)
    (first,) = run(a, T0, T0 + 1200, 10, pv_w=360.0, rack_w={"r1": 360.0})
    assert a.close(seal=False) == []

    b = Ledger.open(tmp_path, SITE)
    assert b.head() == Head(0, first["hash"])
    (second,) = run(b, T0 + 1200, T0 + 1810, 10, pv_w=360.0, rack_w={"r1": 360.0})
    assert second["index"] == 1
    assert second["prev_hash"] == first["hash"]
    assert second["covered_s"] == 900.0
    assert second["racks"]["r1"]["wh"] == pytest.approx(90.0)
    (third,) = b.close()
    # A closed interval is sealed: a restart within it starts a second record for it.
    c = Ledger.open(tmp_path, SITE)
    run(c, T0 + 1810, T0 + 1900, 10, pv_w=360.0, rack_w={"r1": 360.0})
    (fourth,) = c.close()
    assert third["start_s"] == fourth["start_s"] == T0 + 1800
    assert third["covered_s"] + fourth["covered_s"] == 100.0
    assert fourth["first_s"] >= third["last_s"]
    result = LedgerFile(tmp_path / FILE_NAME).verify()
    assert result.ok
    assert result.records == 4


def test_a_restart_keeps_the_battery_pools(tmp_path: Path) -> None:
    a = Ledger.open(tmp_path, SITE)
    run(a, T0, T0 + 900, 60, pv_w=400.0, battery_w={"b1": -400.0})
    a.close()
    b = Ledger.open(tmp_path, SITE)
    run(b, T0 + 900, T0 + 1800, 60, battery_w={"b1": 400.0}, rack_w={"r1": 400.0})
    (out,) = b.close()
    assert out["racks"]["r1"]["wh_battery_green"] == pytest.approx(100.0)


CHILD = """
import sys, time
from edgectl.uplink.ledger import Ledger
ledger = Ledger.open(sys.argv[1], "site-k")
t, dt, records, park = float(sys.argv[2]), 5.0, int(sys.argv[3]), sys.argv[4] == "park"
done = 0
while True:
    t += dt
    for r in ledger.add(t, dt, pv_w=500.0, wind_w=100.0, battery_w={"b1": -100.0},
                        grid_w=0.0, curtailed_w=20.0, rack_w={"r1": 300.0, "r2": 200.0},
                        losses_w=0.0):
        print(r["index"], r["hash"], r["end_s"], flush=True)
        done += 1
    if park and done >= records and t >= float(r["end_s"]) + 500:
        print("parked", t, flush=True)
        time.sleep(60)
"""


def _kill_child(tmp_path: Path, records: int, park: bool) -> list[list[str]]:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            str(tmp_path),
            str(T0),
            str(records),
            "park" if park else "run",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    lines = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            lines.append(line.split())
            if (park and line.startswith("parked")) or (not park and len(lines) >= records):
                break
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    return lines


def test_kill_9_while_writing_keeps_every_record(tmp_path: Path) -> None:
    printed = _kill_child(tmp_path, records=4, park=False)
    ledger = LedgerFile(tmp_path / FILE_NAME)
    result = ledger.verify()
    assert result.ok, result.problem
    stored = {r["index"]: r["hash"] for r in ledger.records()}
    for index, digest, _ in printed:
        assert stored[int(index)] == digest
    assert result.records >= len(printed)
    ledger.close()
    # And the daemon starts again on it.
    again = Ledger.open(tmp_path, "site-k")
    assert again.head() == result.head
    again.close()


def test_kill_9_resumes_the_interval_in_progress(tmp_path: Path) -> None:
    lines = _kill_child(tmp_path, records=2, park=True)
    *printed, parked = lines
    assert parked[0] == "parked"
    last_end = float(printed[-1][2])
    ledger = Ledger.open(tmp_path, "site-k")
    assert ledger.head() == Head(int(printed[-1][0]), printed[-1][1])
    # The child counted 500 s of this interval and saved at most SAVE_EVERY_S ago.
    rest = run(
        ledger,
        last_end + 500,
        last_end + 905,
        5,
        pv_w=500.0,
        rack_w={"r1": 300.0, "r2": 200.0},
    )
    (resumed,) = rest
    assert resumed["index"] == int(printed[-1][0]) + 1
    assert resumed["prev_hash"] == printed[-1][1]
    assert resumed["first_s"] == last_end
    assert 870.0 <= resumed["covered_s"] <= 900.0
    ledger.close()
    assert LedgerFile(tmp_path / FILE_NAME).verify().ok


def test_records_hash_their_canonical_text(ledger: Ledger, tmp_path: Path) -> None:
    records = run(ledger, T0, T0 + 2 * INTERVAL_S, 60, pv_w=100.0, rack_w={"r1": 100.0})
    records += ledger.close()
    assert len(records) == 2
    first = records[0]
    assert first["prev_hash"] == genesis_hash(SITE) == hashlib.sha256(b"site-a").hexdigest()
    db = sqlite3.connect(tmp_path / FILE_NAME)
    for record in records:
        body = {k: v for k, v in record.items() if k != "hash"}
        (text, digest) = db.execute(
            "SELECT body, hash FROM records WHERE idx = ?", (record["index"],)
        ).fetchone()
        assert text == canonical_json(body)
        assert " " not in text
        assert digest == record["hash"] == hashlib.sha256(text.encode()).hexdigest()
    assert records[1]["prev_hash"] == first["hash"]
    db.close()


def test_records_of_a_period(ledger: Ledger, tmp_path: Path) -> None:
    run(ledger, T0, T0 + 4 * INTERVAL_S, 60, pv_w=100.0, rack_w={"r1": 100.0})
    ledger.close()
    file = LedgerFile(tmp_path / FILE_NAME)
    assert [r["start_s"] for r in file.records(T0 + 900, T0 + 2700)] == [T0 + 900, T0 + 1800]
    assert len(file.records()) == 4
    assert file.records(T0 + 901, T0 + 1800) == []


def test_a_failing_disk_keeps_records_until_it_recovers(ledger: Ledger) -> None:
    run(ledger, T0, T0 + 600, 60, pv_w=100.0, rack_w={"r1": 100.0})
    ledger._db.execute("PRAGMA query_only = ON")  # every write now fails, as on a full disk
    assert (
        run(ledger, T0 + 600, T0 + 2 * INTERVAL_S + 60, 60, pv_w=100.0, rack_w={"r1": 100.0}) == []
    )
    assert ledger.head() is None
    ledger._db.execute("PRAGMA query_only = OFF")
    out = run(ledger, T0 + 1860, T0 + 1920, 60, pv_w=100.0, rack_w={"r1": 100.0})
    assert [r["index"] for r in out] == [0, 1]
    assert out[0]["covered_s"] == 900.0
    assert ledger.verify().ok


def test_the_ledger_belongs_to_one_site(tmp_path: Path) -> None:
    Ledger.open(tmp_path, SITE).close()
    with pytest.raises(LedgerError, match="belongs to site 'site-a'"):
        Ledger.open(tmp_path, "site-b")
    (tmp_path / "other.sqlite").write_text("not a database")
    with pytest.raises(LedgerError, match="not an edgectl audit ledger"):
        LedgerFile(tmp_path / "other.sqlite")
    with pytest.raises(LedgerError, match="no such file"):
        LedgerFile(tmp_path / "missing.sqlite")


# Tampering: an attacker with the file edits it with sqlite directly.


@pytest.fixture
def chain(tmp_path: Path) -> tuple[Path, list[Record]]:
    ledger = Ledger.open(tmp_path, SITE)
    rng = random.Random(3)
    records: list[Record] = []
    t = float(T0)
    while len(records) < 10:
        t += 60.0
        records += ledger.add(
            t,
            60.0,
            pv_w=rng.uniform(0, 900),
            wind_w=0.0,
            battery_w={},
            grid_w=100.0,
            curtailed_w=0.0,
            rack_w={"r1": rng.uniform(0, 500), "r2": rng.uniform(0, 500)},
            losses_w=10.0,
        )
    ledger.close(seal=False)
    return tmp_path / FILE_NAME, records


def tamper(path: Path, *statements: tuple[str, tuple[Any, ...]]) -> None:
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER IF EXISTS records_no_update")
    db.execute("DROP TRIGGER IF EXISTS records_no_delete")
    for sql, params in statements:
        db.execute(sql, params)
    db.commit()
    db.close()


def verify(path: Path, expected: Head | None = None) -> tuple[int, str, str]:
    file = LedgerFile(path)
    result = file.verify(expected)
    file.close()
    assert not result.ok
    assert result.problem is not None
    return result.problem.index, result.problem.kind, result.problem.message


def test_an_intact_chain_verifies(chain: tuple[Path, list[Record]]) -> None:
    path, records = chain
    file = LedgerFile(path)
    result = file.verify(Head(9, records[9]["hash"]))
    assert result.ok
    assert result.records == 10
    assert result.head == file.head() == Head(9, records[9]["hash"])
    assert file.verify(Head(4, records[4]["hash"])).ok


def test_the_ledger_refuses_to_rewrite_a_record(chain: tuple[Path, list[Record]]) -> None:
    path, _ = chain
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE records SET body = '{}' WHERE idx = 3")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM records WHERE idx = 9")
    db.close()


def test_a_changed_number_is_found(chain: tuple[Path, list[Record]]) -> None:
    path, records = chain
    db = sqlite3.connect(path)
    (body,) = db.execute("SELECT body FROM records WHERE idx = 4").fetchone()
    db.close()
    value = records[4]["totals"]["racks_wh"]
    changed = body.replace(f'"racks_wh":{value!r}', f'"racks_wh":{value + 1.0!r}')
    assert changed != body
    tamper(path, ("UPDATE records SET body = ? WHERE idx = 4", (changed,)))
    index, kind, message = verify(path)
    assert (index, kind) == (4, "changed")
    assert message.startswith("record 4 was changed (hash ")


def test_a_changed_record_with_a_recomputed_hash_is_found(chain: tuple[Path, list[Record]]) -> None:
    path, records = chain
    forged = {k: v for k, v in records[4].items() if k != "hash"}
    forged["totals"] = dict(forged["totals"], racks_wh=0.0)
    text = canonical_json(forged)
    digest = hashlib.sha256(text.encode()).hexdigest()
    tamper(path, ("UPDATE records SET body = ?, hash = ? WHERE idx = 4", (text, digest)))
    index, kind, _ = verify(path)
    assert (index, kind) == (5, "link")


def test_a_removed_record_is_found(chain: tuple[Path, list[Record]]) -> None:
    path, _ = chain
    tamper(path, ("DELETE FROM records WHERE idx = 5", ()))
    assert verify(path)[:2] == (5, "removed")
    tamper(path, ("DELETE FROM records WHERE idx IN (6, 7)", ()))
    index, kind, message = verify(path)
    assert (index, kind) == (5, "removed")
    assert "records 5 to 7 were removed" in message


def test_an_inserted_record_is_found(chain: tuple[Path, list[Record]]) -> None:
    path, records = chain
    forged = {k: v for k, v in records[5].items() if k != "hash"}
    forged["prev_hash"] = records[4]["hash"]
    forged["totals"] = dict(forged["totals"], grid_wh=0.0)
    text = canonical_json(forged)
    digest = hashlib.sha256(text.encode()).hexdigest()
    tamper(
        path,
        ("UPDATE records SET idx = idx + 1000 WHERE idx >= 5", ()),
        ("UPDATE records SET idx = idx - 999 WHERE idx >= 1000", ()),
        (
            "INSERT INTO records (idx, start_s, body, hash) VALUES (5, ?, ?, ?)",
            (forged["start_s"], text, digest),
        ),
    )
    index, kind, message = verify(path)
    assert (index, kind) == (5, "inserted")
    assert "inserted at 5" in message


def test_swapped_records_are_found(chain: tuple[Path, list[Record]]) -> None:
    path, _ = chain
    tamper(
        path,
        ("UPDATE records SET idx = -1 WHERE idx = 3", ()),
        ("UPDATE records SET idx = 3 WHERE idx = 7", ()),
        ("UPDATE records SET idx = 7 WHERE idx = -1", ()),
    )
    assert verify(path)[:2] == (3, "reordered")


def test_a_broken_genesis_is_found(chain: tuple[Path, list[Record]]) -> None:
    path, _ = chain
    tamper(path, ("UPDATE meta SET value = 'site-b' WHERE key = 'site'", ()))
    assert verify(path)[:2] == (0, "genesis")


def test_a_truncated_tail_is_found_by_the_head_table(chain: tuple[Path, list[Record]]) -> None:
    path, _ = chain
    tamper(path, ("DELETE FROM records WHERE idx >= 8", ()))
    index, kind, message = verify(path)
    assert (index, kind) == (8, "truncated")
    assert "records 8 to 9 were removed" in message
    # The daemon does not append behind a missing tail.
    with pytest.raises(LedgerError, match="disagree"):
        Ledger.open(path.parent, SITE)


def test_a_truncated_tail_with_its_head_rewritten_needs_the_published_head(
    chain: tuple[Path, list[Record]],
) -> None:
    path, records = chain
    tamper(
        path,
        ("DELETE FROM records WHERE idx >= 8", ()),
        ("UPDATE head SET idx = 7, hash = ?", (records[7]["hash"],)),
    )
    file = LedgerFile(path)
    assert file.verify().ok  # a consistent shorter chain: only an anchor outside shows it
    file.close()
    index, kind, message = verify(path, Head(9, records[9]["hash"]))
    assert (index, kind) == (8, "truncated")
    assert "published head is record 9" in message
    assert verify(path, Head(5, records[6]["hash"]))[:2] == (5, "head")


def test_a_record_appended_behind_the_ledgers_back_is_found(
    chain: tuple[Path, list[Record]],
) -> None:
    path, records = chain
    forged = {k: v for k, v in records[9].items() if k != "hash"}
    forged.update(index=10, prev_hash=records[9]["hash"], start_s=records[9]["start_s"] + 900)
    text = canonical_json(forged)
    digest = hashlib.sha256(text.encode()).hexdigest()
    tamper(path, ("INSERT INTO records VALUES (10, ?, ?, ?)", (forged["start_s"], text, digest)))
    assert verify(path)[:2] == (10, "head")


# KPIs on a hand-computed example.
#
# 00:00-00:15: PV 1000 W, wind 500 W, 500 W curtailed; racks r1 800 W, r2 400 W, losses
# 100 W, battery b1 charging 200 W. Over 0.25 h: PV 250 Wh, wind 125 Wh, curtailed 125 Wh,
# r1 200 Wh (2/3 PV, 1/3 wind), r2 100 Wh, losses 25 Wh, charge 50 Wh (all green).
# available 500, used 375: self-consumed 0.75; consumption 325 all green: 1.0.
#
# 00:15-00:30: no generation; b1 discharges 200 W (its 50 Wh, green), grid 400 W; r1 500 W,
# losses 100 W. Mix 1/3 battery green, 2/3 grid: r1 125 Wh = 41.667 green + 83.333 grid.
# consumption 150, green 50: 1/3 (>= 0.30 passes); racks 41.667 / 125 (< 0.80 fails).
#
# Both: consumption 475, green 375 -> 0.78947; available 500, used 375 -> 0.75; racks 425,
# green 341.667 -> 0.80392 (passes 0.80); nothing exported.


def test_kpis_of_a_hand_computed_example(ledger: Ledger) -> None:
    run(
        ledger,
        T0,
        T0 + 900,
        100,
        pv_w=1000.0,
        wind_w=500.0,
        curtailed_w=500.0,
        battery_w={"b1": -200.0},
        rack_w={"r1": 800.0, "r2": 400.0},
        losses_w=100.0,
    )
    (day,) = run(
        ledger,
        T0 + 900,
        T0 + 1800,
        100,
        battery_w={"b1": 200.0},
        grid_w=400.0,
        rack_w={"r1": 500.0},
        losses_w=100.0,
    )
    (night,) = ledger.close()

    t = day["totals"]
    assert (t["pv_wh"], t["wind_wh"], t["curtailed_wh"]) == (250.0, 125.0, 125.0)
    assert (t["generation_available_wh"], t["generation_used_wh"]) == (500.0, 375.0)
    assert (t["consumption_wh"], t["green_wh"], t["battery_charge_wh"]) == (325.0, 325.0, 50.0)
    assert day["racks"]["r1"] == {
        "wh": 200.0,
        "wh_pv": 133.333,
        "wh_wind": 66.667,
        "wh_battery_green": 0.0,
        "wh_battery_grey": 0.0,
        "wh_grid": 0.0,
    }
    k = day["kpis"]
    assert k["self_consumption_share"] == 0.75
    assert k["green_share"] == 1.0
    assert k["export_share"] == 0.0
    assert k["dc_green_share"] == 1.0
    assert all(c["pass"] for c in k["checks"].values())

    t = night["totals"]
    assert (t["battery_green_wh"], t["grid_wh"], t["consumption_wh"]) == (50.0, 100.0, 150.0)
    assert night["racks"]["r1"]["wh_battery_green"] == pytest.approx(41.667)
    assert night["racks"]["r1"]["wh_grid"] == pytest.approx(83.333)
    assert night["losses"]["wh_battery_green"] == pytest.approx(8.333)
    k = night["kpis"]
    assert k["green_share"] == pytest.approx(1 / 3)
    assert k["dc_green_share"] == pytest.approx(1 / 3, abs=1e-5)
    assert k["self_consumption_share"] is None
    assert k["checks"]["green_share"] == {"limit": 0.3, "op": ">=", "pass": True}
    assert k["checks"]["dc_green_share"] == {"limit": 0.8, "op": ">=", "pass": False}
    assert k["checks"]["self_consumption_share"]["pass"] is None
    assert k["checks"]["export_share"]["pass"] is True

    period = kpis([day, night])
    assert period["records"] == 2
    assert period["covered_s"] == 1800.0
    assert (period["start_s"], period["end_s"]) == (T0, T0 + 1800)
    assert period["totals"]["consumption_wh"] == pytest.approx(475.0)
    k = period["kpis"]
    assert k["green_share"] == pytest.approx(375 / 475)
    assert k["self_consumption_share"] == pytest.approx(0.75)
    assert k["dc_green_share"] == pytest.approx(341.667 / 425)
    assert k["export_share"] == 0.0
    assert all(c["pass"] for c in k["checks"].values())
    assert period["racks"]["r1"]["wh"] == pytest.approx(325.0)
    # A single record's summary is the record's own KPIs.
    assert kpis([night])["kpis"] == night["kpis"]


def test_export_against_a_ban_on_reverse_flow(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path, SITE, thresholds=Thresholds(export_share_max=0.0))
    run(ledger, T0, T0 + 900, 60, pv_w=1000.0, grid_w=-100.0, rack_w={"r1": 900.0})
    (record,) = ledger.close()
    assert record["totals"]["export_wh"] == pytest.approx(25.0)
    assert record["kpis"]["export_share"] == pytest.approx(0.1)
    assert record["kpis"]["checks"]["export_share"] == {"limit": 0.0, "op": "<=", "pass": False}
    assert record["kpis"]["self_consumption_share"] == pytest.approx(0.9)
    assert kpis([record])["thresholds"]["export_share_max"] == 0.0


def test_head_parse() -> None:
    digest = "ab" * 32
    assert Head.parse(f"17:{digest.upper()}") == Head(17, digest)
    assert str(Head(17, digest)) == f"17:{digest}"
    for bad in ("17", f"x:{digest}", "17:abc", f"-1:{digest}"):
        with pytest.raises(ValueError):
            Head.parse(bad)


def test_record_json_is_ascii_and_sorted(ledger: Ledger) -> None:
    run(ledger, T0, T0 + 900, 60, pv_w=100.0, rack_w={"rack-é": 100.0})
    (record,) = ledger.close()
    text = canonical_json({k: v for k, v in record.items() if k != "hash"})
    assert text.isascii()
    assert json.loads(text)["racks"]["rack-é"]["wh"] == pytest.approx(25.0)
    keys = list(json.loads(text))
    assert keys == sorted(keys)
    assert list(json.loads(text)["totals"]) == sorted(record["totals"])
