"""The green-power audit ledger: per quarter hour (UTC), where every rack's energy came from
and the direct-connection KPIs, as an append-only hash chain in `<state_dir>/ledger.sqlite`.

Origin split: a DC bus pools its supply, so every sink of a cycle (each rack, the network
losses, a charging battery, an export) takes the same mix of PV, wind, battery discharge
and grid, in proportion to what each source delivered that cycle. Battery discharge is
split by a pool model: each battery holds the energy charged into it and the green part
of that energy; charging adds energy at the cycle's green share, discharging takes energy
at the pool's green share (the energy-weighted average of all that was charged and not yet
taken out). Discharge beyond what the ledger saw charged is of unknown origin: grey.

Each record is canonical JSON (sorted keys, no spaces, ASCII, floats as repr), stored as
the very text that is hashed, and names the hash of the record before it; the first
record names the site's genesis, sha256 of the site id. docs/audit.md has the formulas.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from edgectl.errors import EXIT_INPUT, EdgeError

FILE_NAME = "ledger.sqlite"
FORMAT = "edgectl-ledger/1"
INTERVAL_S = 900
# The interval in progress is saved this often (wall-clock seconds), so that a kill -9
# loses at most this much counting.
SAVE_EVERY_S = 30.0
# Energies are recorded to 1 mWh: far below any meter's resolution, and it keeps records
# of large sites compact.
WH_DECIMALS = 3
SPLIT_KEYS = ("wh", "wh_pv", "wh_wind", "wh_battery_green", "wh_battery_grey", "wh_grid")
TOTAL_KEYS = (
    "pv_wh",
    "wind_wh",
    "curtailed_wh",
    "battery_discharge_wh",
    "battery_green_wh",
    "battery_grey_wh",
    "battery_charge_wh",
    "grid_wh",
    "unmetered_wh",
    "export_wh",
    "unassigned_wh",
    "racks_wh",
    "racks_green_wh",
    "losses_wh",
    "consumption_wh",
    "green_wh",
    "generation_available_wh",
    "generation_used_wh",
)

_INF = math.inf
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS records "
    "(idx INTEGER PRIMARY KEY, start_s INTEGER NOT NULL, body TEXT NOT NULL, hash TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS records_start ON records (start_s)",
    # The head is kept apart from the chain so that a removed tail shows: the chain then
    # ends before the head.
    "CREATE TABLE IF NOT EXISTS head "
    "(id INTEGER PRIMARY KEY CHECK (id = 1), idx INTEGER NOT NULL, hash TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS partial "
    "(id INTEGER PRIMARY KEY CHECK (id = 1), body TEXT NOT NULL)",
    # Append-only by construction: the ledger itself can never rewrite a record.
    "CREATE TRIGGER IF NOT EXISTS records_no_update BEFORE UPDATE ON records "
    "BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS records_no_delete BEFORE DELETE ON records "
    "BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END",
)

log = structlog.get_logger("edgectl.ledger")


class LedgerError(EdgeError):
    """The ledger file is missing, not a ledger, or not this site's."""

    exit_code = EXIT_INPUT


@dataclass(frozen=True)
class Head:
    """The last record of a chain: what the daemon publishes as the external anchor."""

    index: int
    hash: str

    def __str__(self) -> str:
        return f"{self.index}:{self.hash}"

    @classmethod
    def parse(cls, text: str) -> Head:
        """'INDEX:HASH' (HASH 64 hex digits); ValueError otherwise."""
        match = re.fullmatch(r"([0-9]+):([0-9a-fA-F]{64})", text.strip())
        if match is None:
            raise ValueError("expected INDEX:HASH with a 64-digit hex hash")
        return cls(int(match[1]), match[2].lower())


@dataclass(frozen=True)
class Break:
    """The first problem verify() found: the record index it concerns, a kind, a sentence."""

    index: int
    # changed, unreadable, removed, inserted, reordered, link, genesis, truncated or head
    kind: str
    message: str


@dataclass(frozen=True)
class VerifyResult:
    """What verify() found: intact or not, records checked, the head reached."""

    ok: bool
    records: int
    head: Head | None
    problem: Break | None = None


@dataclass(frozen=True)
class Thresholds:
    """The rules' limits; export_share_max = 0 where reverse flow is banned."""

    self_consumption_min: float = 0.60
    green_share_min: float = 0.30  # 0.35 for projects from 2030
    export_share_max: float = 0.20
    dc_green_share_min: float = 0.80

    def as_dict(self) -> dict[str, float]:
        return {
            "self_consumption_min": float(self.self_consumption_min),
            "green_share_min": float(self.green_share_min),
            "export_share_max": float(self.export_share_max),
            "dc_green_share_min": float(self.dc_green_share_min),
        }

    @classmethod
    def from_dict(cls, data: object) -> Thresholds:
        """The thresholds a record carries; the defaults for what it lacks."""
        values = cls().as_dict()
        if isinstance(data, Mapping):
            for key in values:
                v = data.get(key)
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                    values[key] = float(v)
        return cls(**values)


def canonical_json(obj: Any) -> str:
    """The one text of a record that is hashed and stored."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def genesis_hash(site_id: str) -> str:
    """prev_hash of a site's first record: binds the chain to the site."""
    return sha256_hex(site_id)


def interval_start(wall_s: float) -> int:
    """Start (unix s) of the quarter hour holding wall_s."""
    return math.floor(wall_s / INTERVAL_S) * INTERVAL_S


def iso_utc(t_s: float) -> str:
    return datetime.fromtimestamp(t_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _wh(x: float) -> float:
    # + 0.0 turns a rounded -0.0 into 0.0, so that equal energies serialise equally.
    return round(x, WH_DECIMALS) + 0.0


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0.0 else None


def _split_dict(acc: list[float]) -> dict[str, float]:
    return {k: _wh(v) for k, v in zip(SPLIT_KEYS, acc, strict=True)}


def _check(value: float | None, limit: float, op: str) -> dict[str, Any]:
    passed = None if value is None else (value >= limit if op == ">=" else value <= limit)
    return {"limit": limit, "op": op, "pass": passed}


def ratios(totals: Mapping[str, float], thresholds: Thresholds) -> dict[str, Any]:
    """The four shares of a period's totals, and each against its rule."""
    available = totals["generation_available_wh"]
    export = totals["export_wh"]
    out: dict[str, Any] = {
        "self_consumption_share": _ratio(totals["generation_used_wh"], available),
        "green_share": _ratio(totals["green_wh"], totals["consumption_wh"]),
        "export_share": _ratio(export, available),
        "dc_green_share": _ratio(totals["racks_green_wh"], totals["racks_wh"]),
    }
    export_check = _check(out["export_share"], thresholds.export_share_max, "<=")
    if export <= 0.0:
        # Nothing exported meets any export cap, with or without generation.
        export_check["pass"] = True
    elif out["export_share"] is None:
        export_check["pass"] = False
    out["checks"] = {
        "self_consumption_share": _check(
            out["self_consumption_share"], thresholds.self_consumption_min, ">="
        ),
        "green_share": _check(out["green_share"], thresholds.green_share_min, ">="),
        "export_share": export_check,
        "dc_green_share": _check(out["dc_green_share"], thresholds.dc_green_share_min, ">="),
    }
    return out


def kpis(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A period's summary: the records' totals summed, then the shares and checks."""
    totals = dict.fromkeys(TOTAL_KEYS, 0.0)
    racks: dict[str, list[float]] = {}
    count = 0
    covered = 0.0
    start: int | None = None
    end: int | None = None
    thresholds = Thresholds()
    for record in records:
        count += 1
        covered += float(record.get("covered_s", 0.0))
        s, e = int(record["start_s"]), int(record["end_s"])
        start = s if start is None else min(start, s)
        end = e if end is None else max(end, e)
        for k, v in record["totals"].items():
            if k in totals:
                totals[k] += float(v)
        for rid, split in record.get("racks", {}).items():
            acc = racks.setdefault(rid, [0.0] * len(SPLIT_KEYS))
            for i, k in enumerate(SPLIT_KEYS):
                acc[i] += float(split[k])
        # The rules in force are those the latest record was written under.
        thresholds = Thresholds.from_dict(record.get("thresholds"))
    return {
        "records": count,
        "start_s": start,
        "end_s": end,
        "covered_s": covered,
        "totals": totals,
        "kpis": ratios(totals, thresholds),
        "thresholds": thresholds.as_dict(),
        "racks": {rid: dict(zip(SPLIT_KEYS, acc, strict=True)) for rid, acc in racks.items()},
    }


def _connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    if readonly:
        if not path.is_file():
            raise LedgerError(f"ledger {path}: no such file")
        uri = f"{path.resolve().as_uri()}?mode=ro"
        try:
            return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger {path}: cannot open: {exc}") from None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a record once returned (and sent upstream) survives a power loss too; a
        # rolled-back record would be rewritten differently and look like tampering.
        db.execute("PRAGMA synchronous=FULL")
        for statement in _SCHEMA:
            db.execute(statement)
    except (OSError, sqlite3.Error) as exc:
        raise LedgerError(f"ledger {path}: cannot open: {exc}") from None
    return db


class _Reader:
    """What reading a ledger takes: its records, its head table and the chain walk."""

    path: Path
    site: str | None
    _db: sqlite3.Connection

    def _table_head(self) -> Head | None:
        row = self._db.execute("SELECT idx, hash FROM head WHERE id = 1").fetchone()
        return None if row is None else Head(int(row[0]), str(row[1]))

    def records(self, from_wall_s: float = -_INF, to_wall_s: float = _INF) -> list[dict[str, Any]]:
        """Records of the intervals starting in [from_wall_s, to_wall_s), in chain order."""
        lo = -(2**62) if from_wall_s == -_INF else math.ceil(from_wall_s)
        hi = 2**62 if to_wall_s == _INF else math.ceil(to_wall_s)
        try:
            rows = self._db.execute(
                "SELECT idx, body, hash FROM records WHERE start_s >= ? AND start_s < ? "
                "ORDER BY idx",
                (lo, hi),
            ).fetchall()
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger {self.path}: cannot read: {exc}") from None
        out = []
        for idx, body, digest in rows:
            try:
                record = json.loads(body)
            except (json.JSONDecodeError, TypeError):
                raise LedgerError(
                    f"ledger {self.path}: record {idx} is unreadable (run edgectl audit verify)"
                ) from None
            record["hash"] = digest
            out.append(record)
        return out

    def verify(self, expected_head: Head | None = None) -> VerifyResult:
        """Walk the chain from its genesis; the first problem found, if any."""
        try:
            self._db.execute("BEGIN")  # one snapshot, even while the daemon appends
            try:
                return self._verify(expected_head)
            finally:
                self._db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger {self.path}: cannot read: {exc}") from None

    def _verify(self, expected_head: Head | None) -> VerifyResult:
        site = self.site or ""
        prev = genesis_hash(site)
        expected = 0
        last: Head | None = None
        anchor_hash: str | None = None
        cursor = self._db.execute("SELECT body, hash FROM records ORDER BY idx")

        def broken(index: int, kind: str, message: str) -> VerifyResult:
            return VerifyResult(False, expected, last, Break(index, kind, message))

        for body, stored in cursor:
            if not (isinstance(body, str) and isinstance(stored, str)):
                return broken(expected, "unreadable", f"record {expected} is not a ledger record")
            computed = sha256_hex(body)
            if computed != stored:
                return broken(
                    expected,
                    "changed",
                    f"record {expected} was changed (hash {stored[:16]} stored, "
                    f"{computed[:16]} computed)",
                )
            index, prev_hash = _index_and_link(body)
            if index is None or prev_hash is None:
                return broken(expected, "unreadable", f"record {expected} is not a ledger record")
            if index != expected:
                if index < expected:
                    return broken(
                        index,
                        "inserted",
                        f"a record was inserted at {index} (two records claim index {index})",
                    )
                later = {i for b, _ in cursor for i in [_index_and_link(b)[0]]}
                if expected in later:
                    return broken(
                        expected,
                        "reordered",
                        f"records were reordered: record {index} stands where record "
                        f"{expected} belongs",
                    )
                gone = (
                    f"record {expected} was"
                    if index == expected + 1
                    else (f"records {expected} to {index - 1} were")
                )
                return broken(expected, "removed", f"{gone} removed")
            if prev_hash != prev:
                if expected == 0:
                    return broken(
                        0,
                        "genesis",
                        f"record 0 does not start the chain of site {site!r} (prev_hash "
                        f"{prev_hash[:16]}, genesis {prev[:16]})",
                    )
                return broken(
                    expected,
                    "link",
                    f"record {expected} does not follow record {expected - 1} (it links to "
                    f"{prev_hash[:16]}, record {expected - 1} hashes to {prev[:16]}): one of "
                    "them was replaced",
                )
            if expected_head is not None and index == expected_head.index:
                anchor_hash = stored
            prev = stored
            last = Head(index, stored)
            expected += 1

        table = self._table_head()
        last_index = -1 if last is None else last.index
        if table != last:
            if table is None:
                return broken(last_index, "head", "the ledger has records but no head")
            if table.index > last_index:
                return broken(
                    last_index + 1,
                    "truncated",
                    f"the chain ends at record {last_index} but the ledger's head is record "
                    f"{table.index}: {_range(last_index + 1, table.index)} removed",
                )
            if table.index < last_index:
                return broken(
                    table.index + 1,
                    "head",
                    f"records after the ledger's head {table.index} were appended outside "
                    "the ledger",
                )
            return broken(
                table.index,
                "head",
                f"record {table.index} differs from the ledger's head ({table.hash[:16]})",
            )
        if expected_head is not None:
            if expected_head.index > last_index:
                return broken(
                    last_index + 1,
                    "truncated",
                    f"the chain ends at record {last_index} but the published head is record "
                    f"{expected_head.index}: {_range(last_index + 1, expected_head.index)} "
                    "removed",
                )
            if anchor_hash != expected_head.hash:
                return broken(
                    expected_head.index,
                    "head",
                    f"record {expected_head.index} differs from the published head (hash "
                    f"{(anchor_hash or '')[:16]}, published {expected_head.hash[:16]})",
                )
        return VerifyResult(True, expected, last)


class LedgerFile(_Reader):
    """A ledger opened read-only, e.g. while the daemon writes it: verify, read records."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._db = _connect(self.path, readonly=True)
        try:
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.Error:
            meta = {}
        if meta.get("format") != FORMAT:
            self._db.close()
            raise LedgerError(f"ledger {self.path}: not an edgectl audit ledger")
        self.site = meta.get("site")

    def head(self) -> Head | None:
        """The head the ledger recorded (None before the first record)."""
        return self._table_head()

    def close(self) -> None:
        self._db.close()


def _range(first: int, last: int) -> str:
    return f"record {first} was" if first == last else f"records {first} to {last} were"


def _index_and_link(body: str) -> tuple[int | None, str | None]:
    try:
        record = json.loads(body)
    except json.JSONDecodeError:
        return None, None
    if not isinstance(record, dict):
        return None, None
    index, prev = record.get("index"), record.get("prev_hash")
    return (
        index if isinstance(index, int) and not isinstance(index, bool) else None,
        prev if isinstance(prev, str) else None,
    )


class _Interval:
    """Counters of one quarter hour in progress (Wh unless named otherwise)."""

    __slots__ = (
        "batteries",
        "charge",
        "covered_s",
        "curtailed",
        "cycles",
        "export",
        "first_s",
        "last_s",
        "losses",
        "racks",
        "start_s",
        "supply",
        "unassigned",
    )

    def __init__(self, start_s: int) -> None:
        self.start_s = start_s
        self.first_s = math.inf
        self.last_s = -math.inf
        self.covered_s = 0.0
        self.cycles = 0
        # pv, wind, battery green, battery grey, grid import, unmetered (demand > supply)
        self.supply = [0.0] * 6
        self.curtailed = 0.0
        self.unassigned = 0.0
        # Each sink: [wh, pv, wind, battery green, battery grey, grid] as SPLIT_KEYS.
        self.losses = [0.0] * 6
        self.charge = [0.0] * 6
        self.export = [0.0] * 6
        self.racks: dict[str, list[float]] = {}
        # battery -> [charge wh, discharge wh, discharge green wh]
        self.batteries: dict[str, list[float]] = {}

    def as_dict(self) -> dict[str, Any]:
        return {
            "start_s": self.start_s,
            "first_s": self.first_s,
            "last_s": self.last_s,
            "covered_s": self.covered_s,
            "cycles": self.cycles,
            "supply": self.supply,
            "curtailed": self.curtailed,
            "unassigned": self.unassigned,
            "losses": self.losses,
            "charge": self.charge,
            "export": self.export,
            "racks": self.racks,
            "batteries": self.batteries,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> _Interval:
        """The saved interval; ValueError, TypeError or KeyError when it is malformed."""
        iv = cls(int(data["start_s"]))
        iv.first_s = float(data["first_s"])
        iv.last_s = float(data["last_s"])
        iv.covered_s = float(data["covered_s"])
        iv.cycles = int(data["cycles"])
        iv.supply = _floats(data["supply"], 6)
        iv.curtailed = float(data["curtailed"])
        iv.unassigned = float(data["unassigned"])
        iv.losses = _floats(data["losses"], 6)
        iv.charge = _floats(data["charge"], 6)
        iv.export = _floats(data["export"], 6)
        iv.racks = {str(k): _floats(v, 6) for k, v in data["racks"].items()}
        iv.batteries = {str(k): _floats(v, 3) for k, v in data["batteries"].items()}
        return iv


def _floats(value: Any, n: int) -> list[float]:
    out = [float(x) for x in value]
    if len(out) != n or not all(math.isfinite(x) for x in out):
        raise ValueError("malformed counters")
    return out


def _pos(p: float) -> float:
    """p if it is a finite positive power, else 0 (NaN and inf count nothing)."""
    return p if 0.0 < p < _INF else 0.0


class Ledger(_Reader):
    """The ledger the daemon writes: one add() per cycle, a record per closed interval."""

    def __init__(
        self,
        path: Path | str,
        site_id: str,
        *,
        thresholds: Thresholds | None = None,
        battery_capacity_wh: Mapping[str, float] | None = None,
    ) -> None:
        self.path = Path(path)
        if not site_id:
            raise LedgerError(f"ledger {self.path}: the site id must not be empty")
        self._db = _connect(self.path, readonly=False)
        self.site = site_id
        self.thresholds = thresholds or Thresholds()
        self._capacity = dict(battery_capacity_wh or {})
        self._pending: list[tuple[int, int, str, str, dict[str, Any]]] = []
        self._failing = False
        self._closed = False
        self._open_interval: _Interval | None = None
        self._last_end: float | None = None
        self._saved_at: float | None = None
        # battery -> [stored wh, green wh]
        self._pools: dict[str, list[float]] = {}
        try:
            self._init_chain(site_id)
        except BaseException:
            self._db.close()
            raise

    @classmethod
    def open(cls, state_dir: Path | str, site_id: str, **kwargs: Any) -> Ledger:
        """The ledger at <state_dir>/ledger.sqlite, created on first use."""
        return cls(Path(state_dir) / FILE_NAME, site_id, **kwargs)

    def _init_chain(self, site_id: str) -> None:
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if not meta and self._db.execute("SELECT 1 FROM records LIMIT 1").fetchone() is None:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [("format", FORMAT), ("site", site_id)],
                )
            meta = {"format": FORMAT, "site": site_id}
        if meta.get("format") != FORMAT:
            raise LedgerError(f"ledger {self.path}: not an edgectl audit ledger")
        if meta.get("site") != site_id:
            raise LedgerError(
                f"ledger {self.path}: belongs to site {meta.get('site')!r}, not {site_id!r}"
            )
        row = self._db.execute(
            "SELECT body, hash FROM records ORDER BY idx DESC LIMIT 1"
        ).fetchone()
        table = self._table_head()
        last = None
        last_record: dict[str, Any] = {}
        if row is not None:
            index, _ = _index_and_link(row[0])
            if index is None:
                raise LedgerError(f"ledger {self.path}: its last record is unreadable")
            last_record = json.loads(row[0])
            last = Head(index, str(row[1]))
        if table != last:
            # Head and record are committed together, so they disagree only after tampering
            # or corruption: appending would bury the evidence.
            raise LedgerError(
                f"ledger {self.path}: its head ({table}) and its last record ({last}) "
                "disagree; run `edgectl audit verify` and move the file aside"
            )
        self._head = last
        self._next_index = 0 if last is None else last.index + 1
        self._prev_hash = genesis_hash(site_id) if last is None else last.hash
        self._resume(last_record)

    def _resume(self, last_record: Mapping[str, Any]) -> None:
        row = self._db.execute("SELECT body FROM partial WHERE id = 1").fetchone()
        try:
            state = json.loads(row[0]) if row is not None else None
            if state is not None:
                self._pools = {str(k): _floats(v, 2) for k, v in state["pools"].items()}
                last_end = state["last_end"]
                self._last_end = None if last_end is None else float(last_end)
                iv = state["interval"]
                self._open_interval = None if iv is None else _Interval.from_dict(iv)
                return
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.error(
                "ledger interval in progress unreadable, starting it afresh",
                path=str(self.path),
                error=str(exc),
            )
        # The last record holds the pools as they were when it closed.
        for bid, b in last_record.get("batteries", {}).items():
            try:
                self._pools[str(bid)] = [float(b["stored_wh"]), float(b["stored_green_wh"])]
            except (TypeError, KeyError, ValueError):
                continue

    def head(self) -> Head | None:
        """The last committed record: publish it with the reports as the external anchor."""
        return self._head

    def add(
        self,
        wall_s: float,
        dt_s: float,
        *,
        pv_w: float,
        wind_w: float,
        battery_w: Mapping[str, float],
        grid_w: float,
        curtailed_w: float,
        rack_w: Mapping[str, float],
        losses_w: float,
    ) -> list[dict[str, Any]]:
        """Count one cycle of dt_s ending at wall_s; the records it closed (usually none)."""
        if self._closed:
            raise LedgerError(f"ledger {self.path}: closed")
        if not (0.0 < dt_s < _INF and math.isfinite(wall_s)):
            return []
        out: list[dict[str, Any]] = []
        start, end = wall_s - dt_s, wall_s
        if self._last_end is not None and start < self._last_end:
            # Overlap with time already counted (jitter, or the clock stepped back): the
            # energy is real, so it is counted from the last counted instant on.
            start = self._last_end
            end = max(end, start)
        portions = self._portions(start, end)
        iv = self._open_interval
        if iv is not None and iv.start_s != portions[0][0]:
            out += self._seal()

        pv, wind, curtailed, losses = _pos(pv_w), _pos(wind_w), _pos(curtailed_w), _pos(losses_w)
        grid_in, export = _pos(grid_w), _pos(-grid_w)
        h = dt_s / 3600.0
        flows: list[tuple[str, float, float, float]] = []  # id, charge W, discharge W, green W
        discharge = discharge_green = charge = 0.0
        for bid, p in battery_w.items():
            if 0.0 < p < _INF:
                green = p * self._pool_take(bid, p * h)
                discharge += p
                discharge_green += green
                flows.append((bid, 0.0, p, green))
            elif -_INF < p < 0.0:
                charge -= p
                flows.append((bid, -p, 0.0, 0.0))
        racks = sum(p for p in rack_w.values() if 0.0 < p < _INF)
        supply = pv + wind + discharge + grid_in
        demand = racks + losses + charge + export
        total = max(supply, demand)
        if total > 0.0:
            # Demand the meters cannot explain came over the one unmetered path there is,
            # the tie: counted as grid (grey), and shown as unmetered_wh.
            inv = 1.0 / total
            mix = (
                pv * inv,
                wind * inv,
                discharge_green * inv,
                (discharge - discharge_green) * inv,
                (grid_in + total - supply) * inv,
            )
        else:
            mix = (0.0, 0.0, 0.0, 0.0, 0.0)
        green_share = mix[0] + mix[1] + mix[2]
        for bid, p_charge, _, _ in flows:
            if p_charge > 0.0:
                self._pool_put(bid, p_charge * h, green_share)

        for k, (istart, weight) in enumerate(portions):
            iv = self._open_interval
            if iv is None or iv.start_s != istart:
                if iv is not None:
                    out += self._seal()
                iv = self._open_interval = _Interval(istart)
            hw = h * weight
            iv.covered_s += dt_s * weight
            iv.cycles += 1
            t0 = start if k == 0 else float(istart)
            iv.first_s = min(iv.first_s, t0)
            iv.last_s = max(iv.last_s, min(end, float(istart + INTERVAL_S)))
            s = iv.supply
            s[0] += pv * hw
            s[1] += wind * hw
            s[2] += discharge_green * hw
            s[3] += (discharge - discharge_green) * hw
            s[4] += grid_in * hw
            s[5] += (total - supply) * hw
            iv.unassigned += max(supply - demand, 0.0) * hw
            iv.curtailed += curtailed * hw
            f_pv, f_wind, f_bg, f_bgr, f_grid = mix
            for acc, p in ((iv.losses, losses), (iv.charge, charge), (iv.export, export)):
                if p > 0.0:
                    e = p * hw
                    acc[0] += e
                    acc[1] += e * f_pv
                    acc[2] += e * f_wind
                    acc[3] += e * f_bg
                    acc[4] += e * f_bgr
                    acc[5] += e * f_grid
            rack_acc = iv.racks
            for rid, p in rack_w.items():
                if 0.0 < p < _INF:
                    e = p * hw
                    ra = rack_acc.get(rid)
                    if ra is None:
                        ra = rack_acc[rid] = [0.0] * 6
                    ra[0] += e
                    ra[1] += e * f_pv
                    ra[2] += e * f_wind
                    ra[3] += e * f_bg
                    ra[4] += e * f_bgr
                    ra[5] += e * f_grid
            for bid, p_charge, p_discharge, p_green in flows:
                b = iv.batteries.get(bid)
                if b is None:
                    b = iv.batteries[bid] = [0.0, 0.0, 0.0]
                b[0] += p_charge * hw
                b[1] += p_discharge * hw
                b[2] += p_green * hw

        self._last_end = end if self._last_end is None else max(self._last_end, end)
        saved = self._saved_at
        if self._pending or saved is None or wall_s - saved >= SAVE_EVERY_S or wall_s < saved:
            out += self._commit(wall_s)
        return out

    def close(self, *, seal: bool = True) -> list[dict[str, Any]]:
        """Write the interval in progress as a record (seal=False keeps it open for a
        restart) and close the file; the records written."""
        if self._closed:
            return []
        out: list[dict[str, Any]] = []
        if seal and self._open_interval is not None:
            out += self._seal()
        else:
            out += self._commit(self._saved_at)
        if self._pending:
            log.error(
                "ledger records could not be written", path=str(self.path), lost=len(self._pending)
            )
        self._closed = True
        self._db.close()
        return out

    def _portions(self, start: float, end: float) -> list[tuple[int, float]]:
        """(interval start, share of the cycle) for each quarter hour [start, end] touches."""
        if end <= start:
            iv = self._open_interval
            return [(iv.start_s if iv is not None else interval_start(start), 1.0)]
        first = interval_start(start)
        if end <= first + INTERVAL_S:
            return [(first, 1.0)]
        length = end - start
        out = []
        t = start
        istart = first
        while t < end:
            seg_end = min(float(istart + INTERVAL_S), end)
            out.append((istart, (seg_end - t) / length))
            t = seg_end
            istart += INTERVAL_S
        return out

    def _pool_take(self, bid: str, e_wh: float) -> float:
        """Take e_wh out of a battery's pool; the green share of what was taken."""
        pool = self._pools.get(bid)
        if pool is None or pool[0] <= 0.0:
            return 0.0
        stored, green = pool
        known = min(e_wh, stored)
        share = green / stored
        pool[0] = stored - known
        pool[1] = min(max(green - known * share, 0.0), pool[0])
        # Energy beyond what the pool holds is of unknown origin: it counts as grey.
        return known * share / e_wh

    def _pool_put(self, bid: str, e_wh: float, green_share: float) -> None:
        """Charge e_wh into a battery's pool at the cycle's green share."""
        pool = self._pools.setdefault(bid, [0.0, 0.0])
        pool[0] += e_wh
        pool[1] = min(pool[1] + e_wh * green_share, pool[0])
        cap = self._capacity.get(bid)
        if cap is not None and cap > 0.0 and pool[0] > cap:
            # A pool larger than the battery is its own conversion losses, which were
            # charged at the pool's mix: scaling keeps the share and bounds the memory.
            pool[1] *= cap / pool[0]
            pool[0] = cap

    def _seal(self) -> list[dict[str, Any]]:
        """Close the open interval into the next record of the chain and commit it."""
        iv = self._open_interval
        self._open_interval = None
        if iv is None or iv.cycles == 0:
            return []
        body = self._record(iv)
        text = canonical_json(body)
        digest = sha256_hex(text)
        self._pending.append((self._next_index, iv.start_s, text, digest, body))
        self._next_index += 1
        self._prev_hash = digest
        return self._commit(self._saved_at)

    def _record(self, iv: _Interval) -> dict[str, Any]:
        racks = {rid: _split_dict(acc) for rid, acc in iv.racks.items()}
        losses = _split_dict(iv.losses)
        charge = _split_dict(iv.charge)
        export = _split_dict(iv.export)
        s = [_wh(x) for x in iv.supply]
        racks_wh = _wh(sum(acc[0] for acc in iv.racks.values()))
        racks_green = _wh(sum(acc[1] + acc[2] + acc[3] for acc in iv.racks.values()))
        losses_green = losses["wh_pv"] + losses["wh_wind"] + losses["wh_battery_green"]
        curtailed = _wh(iv.curtailed)
        totals = {
            "pv_wh": s[0],
            "wind_wh": s[1],
            "curtailed_wh": curtailed,
            "battery_discharge_wh": _wh(iv.supply[2] + iv.supply[3]),
            "battery_green_wh": s[2],
            "battery_grey_wh": s[3],
            "battery_charge_wh": charge["wh"],
            "grid_wh": s[4],
            "unmetered_wh": s[5],
            "export_wh": export["wh"],
            "unassigned_wh": _wh(iv.unassigned),
            "racks_wh": racks_wh,
            "racks_green_wh": racks_green,
            "losses_wh": losses["wh"],
            "consumption_wh": _wh(racks_wh + losses["wh"]),
            "green_wh": _wh(racks_green + losses_green),
            "generation_available_wh": _wh(s[0] + s[1] + curtailed),
            "generation_used_wh": _wh(max(s[0] + s[1] - export["wh"], 0.0)),
        }
        batteries = {}
        # Every pool, idle or not: the next interval's battery split starts from these.
        for bid in sorted(set(iv.batteries) | set(self._pools)):
            c, d, g = iv.batteries.get(bid, (0.0, 0.0, 0.0))
            stored, green = self._pools.get(bid, (0.0, 0.0))
            batteries[bid] = {
                "charge_wh": _wh(c),
                "discharge_wh": _wh(d),
                "discharge_green_wh": _wh(g),
                "discharge_grey_wh": _wh(d - g),
                "stored_wh": _wh(stored),
                "stored_green_wh": _wh(green),
            }
        return {
            "v": 1,
            "index": self._next_index,
            "prev_hash": self._prev_hash,
            "site": self.site,
            "start": iso_utc(iv.start_s),
            "start_s": iv.start_s,
            "end_s": iv.start_s + INTERVAL_S,
            "first_s": round(iv.first_s, 3),
            "last_s": round(iv.last_s, 3),
            "covered_s": round(iv.covered_s, 3),
            "cycles": iv.cycles,
            "totals": totals,
            "kpis": ratios(totals, self.thresholds),
            "thresholds": self.thresholds.as_dict(),
            "racks": racks,
            "losses": losses,
            "battery_charge": charge,
            "export": export,
            "batteries": batteries,
            "battery_model": "pool",
        }

    def _commit(self, wall_s: float | None) -> list[dict[str, Any]]:
        """Append the pending records, move the head and save the interval in progress,
        in one transaction; the records committed."""
        iv = self._open_interval
        state = {
            "v": 1,
            "last_end": self._last_end,
            "pools": self._pools,
            "interval": None if iv is None else iv.as_dict(),
        }
        try:
            partial = canonical_json(state)
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                if self._pending:
                    self._db.executemany(
                        "INSERT INTO records (idx, start_s, body, hash) VALUES (?, ?, ?, ?)",
                        [(i, s, text, digest) for i, s, text, digest, _ in self._pending],
                    )
                    i, _, _, digest, _ = self._pending[-1]
                    self._db.execute(
                        "INSERT INTO head (id, idx, hash) VALUES (1, ?, ?) ON CONFLICT(id) "
                        "DO UPDATE SET idx = excluded.idx, hash = excluded.hash",
                        (i, digest),
                    )
                self._db.execute(
                    "INSERT INTO partial (id, body) VALUES (1, ?) ON CONFLICT(id) "
                    "DO UPDATE SET body = excluded.body",
                    (partial,),
                )
        except (sqlite3.Error, ValueError) as exc:
            # A full or failing disk keeps the records in memory, in order, for the next try;
            # the control loop goes on.
            if not self._failing:
                log.error(
                    "cannot write the audit ledger; keeping records in memory",
                    path=str(self.path),
                    error=str(exc),
                    pending=len(self._pending),
                )
            self._failing = True
            return []
        if self._failing:
            log.info("audit ledger written again", path=str(self.path))
        self._failing = False
        self._saved_at = wall_s
        done = [dict(body, hash=digest) for _, _, _, digest, body in self._pending]
        if self._pending:
            i, _, _, digest, _ = self._pending[-1]
            self._head = Head(i, digest)
        self._pending.clear()
        return done
