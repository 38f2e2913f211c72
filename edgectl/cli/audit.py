"""`edgectl audit verify | report`: check the green-power audit ledger's hash chain, and
report its quarter hours and the direct-connection KPIs of a period.

verify exits 0 when the chain is intact, 1 when it is broken (the first problem on one
line), 2 when the file is missing or not a ledger. report prints a table or CSV; a time
that is not ISO 8601 is a usage error (64). The ledger is opened read-only, so both are
safe while the daemon runs.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgectl.errors import UsageError

HELP = "verify the green-power audit ledger; report its intervals and KPIs"
EXIT_BROKEN = 1

VERIFY_HELP = (
    "walk the ledger's hash chain from its genesis. Exit 0: intact ('ledger FILE: N records, "
    "intact, head INDEX HASH'); exit 1: broken, e.g. 'ledger FILE: record 17 was changed "
    "(hash ...)'; exit 2: the file is missing or not a ledger. A tail removed together "
    "with the ledger's own head record shows only against a head published earlier: pass "
    "it with --head."
)
REPORT_HELP = (
    "the quarter hours of [--from, --to) with consumption, green share, self-consumed "
    "share, export share and the racks' green share, then the period's KPIs against the "
    "rules' thresholds"
)
INTERVAL_COLUMNS = (
    "start",
    "end",
    "covered_s",
    "consumption_wh",
    "racks_wh",
    "losses_wh",
    "green_wh",
    "racks_green_wh",
    "pv_wh",
    "wind_wh",
    "battery_green_wh",
    "battery_grey_wh",
    "grid_wh",
    "unmetered_wh",
    "curtailed_wh",
    "export_wh",
    "generation_available_wh",
    "generation_used_wh",
    "green_share",
    "self_consumption_share",
    "export_share",
    "dc_green_share",
)
RACK_COLUMNS = (
    "start",
    "end",
    "rack",
    "wh",
    "wh_pv",
    "wh_wind",
    "wh_battery_green",
    "wh_battery_grey",
    "wh_grid",
    "green_share",
)
RATIOS = ("green_share", "self_consumption_share", "export_share", "dc_green_share")
KPI_LINES = (
    ("self_consumption_share", "self-consumed share of generation"),
    ("green_share", "green share of consumption"),
    ("export_share", "export share of generation"),
    ("dc_green_share", "data-centre green share (racks)"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the verify and report actions."""
    actions = parser.add_subparsers(
        dest="action", metavar="ACTION", required=True, parser_class=type(parser)
    )
    verify = actions.add_parser("verify", help="check the hash chain", description=VERIFY_HELP)
    _add_source(verify)
    verify.add_argument(
        "--head",
        metavar="INDEX:HASH",
        help="a head published earlier (in the daemon's reports): the chain must still reach it",
    )
    verify.set_defaults(_action=run_verify)
    report = actions.add_parser("report", help="intervals and KPIs", description=REPORT_HELP)
    report.add_argument(
        "--from",
        dest="from_",
        required=True,
        metavar="T",
        help="ISO 8601 date or date-time; a date is 00:00 UTC, a time without offset is UTC",
    )
    report.add_argument("--to", required=True, metavar="T", help="end of the period (excluded)")
    report.add_argument("--csv", action="store_true", help="CSV with a header row")
    report.add_argument(
        "--racks",
        action="store_true",
        help="per rack: a row per interval and rack with --csv, else the period's totals",
    )
    _add_source(report)
    report.set_defaults(_action=run_report)


def _add_source(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--state-dir",
        metavar="DIR",
        help="the daemon's state directory (default: $STATE_DIRECTORY, else ./edgectl-state)",
    )
    source.add_argument("--ledger", metavar="FILE", help="the ledger file itself")


def run(args: argparse.Namespace) -> int:
    """Run the chosen action."""
    code: int = args._action(args)
    return code


def ledger_path(args: argparse.Namespace) -> Path:
    """--ledger, else ledger.sqlite in the state directory `edgectl run` would use."""
    from edgectl.cli.run import state_dir_of
    from edgectl.uplink.ledger import FILE_NAME

    if args.ledger:
        return Path(args.ledger)
    return state_dir_of(args) / FILE_NAME


def run_verify(args: argparse.Namespace) -> int:
    """Verify the chain; one line, exit 0 or EXIT_BROKEN."""
    from edgectl.uplink.ledger import Head, LedgerFile

    expected = None
    if args.head is not None:
        try:
            expected = Head.parse(args.head)
        except ValueError as exc:
            raise UsageError(f"--head {args.head!r}: {exc}") from None
    path = ledger_path(args)
    ledger = LedgerFile(path)
    try:
        result = ledger.verify(expected)
    finally:
        ledger.close()
    if result.problem is not None:
        print(f"ledger {path}: {result.problem.message}")
        return EXIT_BROKEN
    head = "no head yet" if result.head is None else f"head {result.head.index} {result.head.hash}"
    print(f"ledger {path}: {result.records} records, intact, {head}")
    return 0


def parse_time(option: str, text: str) -> float:
    """An ISO 8601 date (00:00 UTC) or date-time (UTC unless it says otherwise), unix s."""
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"{option} {text!r}: expected an ISO 8601 date or date-time, "
            "e.g. 2025-06-01 or 2025-06-01T12:00Z"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.timestamp()


def run_report(args: argparse.Namespace) -> int:
    """Print the period's intervals and KPIs."""
    from edgectl.uplink.ledger import LedgerFile, kpis

    start = parse_time("--from", args.from_)
    end = parse_time("--to", args.to)
    if end <= start:
        raise UsageError(f"--to {args.to!r}: must be after --from {args.from_!r}")
    path = ledger_path(args)
    ledger = LedgerFile(path)
    try:
        records = ledger.records(start, end)
        site = ledger.site
    finally:
        ledger.close()
    out = sys.stdout
    if args.csv:
        write_csv(out, records, racks=args.racks)
        return 0
    summary = kpis(records)
    print(f"ledger {path}, site {site}: {_when(start)} to {_when(end)} UTC", file=out)
    if not records:
        print("  no intervals recorded in this period", file=out)
        return 0
    print(
        f"  {len(records)} intervals, {summary['covered_s'] / 3600:.2f} h counted "
        f"of {(end - start) / 3600:.2f} h",
        file=out,
    )
    print(file=out)
    print(
        f"{'interval (UTC)':<17} {'consumption':>14} {'green':>8} {'self-cons.':>10} "
        f"{'export':>8} {'racks green':>11}",
        file=out,
    )
    for r in records:
        k = r["kpis"]
        part = "" if r["covered_s"] >= r["end_s"] - r["start_s"] else f"  ({r['covered_s']:.0f} s)"
        print(
            f"{_when(r['start_s']):<17} {_kwh(r['totals']['consumption_wh']):>14} "
            f"{_pct(k['green_share']):>8} {_pct(k['self_consumption_share']):>10} "
            f"{_pct(k['export_share']):>8} {_pct(k['dc_green_share']):>11}{part}",
            file=out,
        )
    print(file=out)
    print(format_totals(summary), file=out)
    if args.racks:
        print(file=out)
        print(format_racks(summary["racks"]), file=out)
    return 0


def format_totals(summary: Mapping[str, Any]) -> str:
    """The period's energies and its four KPIs against their thresholds."""
    t = summary["totals"]
    k = summary["kpis"]
    lines = [
        "period",
        f"  consumption            {_kwh(t['consumption_wh']):>14} "
        f"(racks {_kwh(t['racks_wh'])}, losses {_kwh(t['losses_wh'])})",
        f"  green in consumption   {_kwh(t['green_wh']):>14} "
        f"(pv and wind direct or through batteries)",
        f"  generation available   {_kwh(t['generation_available_wh']):>14} "
        f"(used {_kwh(t['generation_used_wh'])}, curtailed {_kwh(t['curtailed_wh'])}, "
        f"exported {_kwh(t['export_wh'])})",
        f"  grid import            {_kwh(t['grid_wh'] + t['unmetered_wh']):>14}"
        + (f" (unmetered {_kwh(t['unmetered_wh'])})" if t["unmetered_wh"] > 0 else ""),
    ]
    for key, label in KPI_LINES:
        check = k["checks"][key]
        verdict = {True: "pass", False: "FAIL", None: "n/a"}[check["pass"]]
        lines.append(
            f"  {label:<34} {_pct(k[key]):>8}  {check['op']} {_pct(check['limit'])}  {verdict}"
        )
    return "\n".join(lines)


def format_racks(racks: Mapping[str, Mapping[str, float]]) -> str:
    """Per rack over the period: energy, green share and the split."""
    lines = [
        f"{'rack':<16} {'energy':>14} {'green':>8} {'pv':>12} {'wind':>12} "
        f"{'batt green':>12} {'batt grey':>12} {'grid':>12}"
    ]
    for rid in sorted(racks):
        s = racks[rid]
        green = s["wh_pv"] + s["wh_wind"] + s["wh_battery_green"]
        share = green / s["wh"] if s["wh"] > 0 else None
        lines.append(
            f"{rid:<16} {_kwh(s['wh']):>14} {_pct(share):>8} "
            + " ".join(
                f"{_kwh(s[key], unit=False):>12}"
                for key in ("wh_pv", "wh_wind", "wh_battery_green", "wh_battery_grey", "wh_grid")
            )
        )
    return "\n".join(lines)


def write_csv(out: Any, records: list[dict[str, Any]], *, racks: bool) -> None:
    """One row per interval (per interval and rack with racks=True), header first."""
    writer = csv.writer(out, lineterminator="\n")
    if racks:
        writer.writerow(RACK_COLUMNS)
        for r in records:
            for rid in sorted(r["racks"]):
                s = r["racks"][rid]
                green = s["wh_pv"] + s["wh_wind"] + s["wh_battery_green"]
                share = green / s["wh"] if s["wh"] > 0 else None
                writer.writerow(
                    [r["start"], _iso(r["end_s"]), rid]
                    + [s[k] for k in RACK_COLUMNS[3:-1]]
                    + [_cell(share)]
                )
        return
    writer.writerow(INTERVAL_COLUMNS)
    for r in records:
        t = r["totals"]
        row: list[Any] = [r["start"], _iso(r["end_s"]), r["covered_s"]]
        row += [t[k] for k in INTERVAL_COLUMNS[3:-4]]
        row += [_cell(r["kpis"][k]) for k in RATIOS]
        writer.writerow(row)


def _cell(value: float | None) -> str:
    return "" if value is None else repr(value)


def _iso(t_s: float) -> str:
    return datetime.fromtimestamp(t_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _when(t_s: float) -> str:
    return datetime.fromtimestamp(t_s, UTC).strftime("%Y-%m-%d %H:%M")


def _kwh(e_wh: float, *, unit: bool = True) -> str:
    return f"{e_wh / 1e3:.3f}" + (" kWh" if unit else "")


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.1f} %"
