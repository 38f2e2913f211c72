"""`edgectl dispatch SITE --snapshot FILE.json [--cycle N] [--json]`: decide one cycle.

FILE is a snapshot (edgectl/model/dispatch_input.py), or a flight-recorder file written
by `edgectl dump-cycles`, recognised by a "format" that starts with "edgectl-cycles/":

    {"format": "edgectl-cycles/1", "site": "<site id>", "cycles": [
       {"cycle": 42, "t_s": 123.0, "state": "NORMAL", "snapshot": {...}, "dispatch": {...}},
       ...]}

where "snapshot" is a snapshot and "dispatch" what `report()` returned for that cycle's
decision; other keys of a record are ignored. From such a file one cycle is replayed,
the last or the one whose "cycle" is N (--cycle): its decision is printed as for a
snapshot and compared with the recorded one. They match when every rack's on flag is
the same and its cap_w, like every source's p_w, is within REPLAY_REL_TOL of the
recorded value plus REPLAY_ABS_TOL_W.

Exit status: 0 for a decision (and a replay that matches), 1 (EXIT_REPLAY_DIFFERS) for
a replay that differs from the recording, 2 for an invalid input file, 64 for --cycle
with a plain snapshot.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard

if TYPE_CHECKING:
    from edgectl.config.site import Site
    from edgectl.errors import Problem
    from edgectl.kernels.dispatch import DispatchParams

HELP = "decide one control cycle (rack caps, battery, grid, curtailment) from a snapshot"

# Racks (and differences of a replay) listed by the readable output before it
# summarises ("... and N more").
MAX_ROWS = 12

RECORDER_PREFIX = "edgectl-cycles/"
RECORDER_FORMAT = "edgectl-cycles/1"
# Loose enough that a recording of the compiled kernel replays as the same decision on
# the NumPy reference (they agree to 1e-9 relative), tight enough to catch any real change.
REPLAY_REL_TOL = 1e-6
REPLAY_ABS_TOL_W = 1e-6
# edgectl.errors has no status for this; 1 is EdgeError's generic one, distinct from 2.
EXIT_REPLAY_DIFFERS = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("site", help="site file (TOML)")
    parser.add_argument(
        "--snapshot",
        required=True,
        metavar="FILE.json",
        help="one cycle's inputs: source availability and soc, rack demand, cap and on/off; "
        f"or a flight-recorder file ({RECORDER_FORMAT}), whose recorded decision is "
        "compared with the replayed one: exit status 1 when they differ",
    )
    parser.add_argument(
        "--cycle",
        type=int,
        metavar="N",
        help="with a flight-recorder file: replay the cycle numbered N (default: the last)",
    )
    parser.add_argument("--json", action="store_true", help="print the decision as JSON")


def read_snapshot(path: str) -> object:
    """The parsed JSON of a snapshot file; InputError naming the file (and line) if not."""
    from pathlib import Path

    from edgectl.errors import InputError, Problem

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError([Problem(path, "", f"cannot read the snapshot: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        raise InputError([Problem(path, "", f"not UTF-8 text: {exc.reason}")]) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            [Problem(path, "", f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}")]
        ) from None


def run(args: argparse.Namespace) -> int:
    from edgectl.config.load import load_site
    from edgectl.errors import EXIT_OK, UsageError
    from edgectl.kernels import require_compiled
    from edgectl.kernels.dispatch import dispatch
    from edgectl.model.dispatch_input import input_from_snapshot, params_from_site
    from edgectl.model.dispatch_output import report, with_overrides

    require_compiled()
    site = load_site(args.site)
    params = params_from_site(site)
    data = read_snapshot(args.snapshot)
    recorded: RecordedCycle | None = None
    if is_recorder_file(data):
        recorded = select_cycle(data, args.snapshot, args.cycle, site, params)
        snapshot, at, label = recorded.snapshot, f"{recorded.path}.snapshot", recorded.label
        # A cycle that ran with changed constants (a battery lost, SAFE) replays with them.
        params = with_overrides(params, recorded.params, args.snapshot, f"{recorded.path}.params")
    elif args.cycle is not None:
        raise UsageError(
            f"--cycle needs a flight-recorder file ({RECORDER_FORMAT}); "
            f"{args.snapshot} is a snapshot"
        )
    else:
        snapshot, at, label = data, "", args.snapshot
    inputs = input_from_snapshot(site, params, snapshot, args.snapshot, at=at)
    result = dispatch(params, inputs)
    out = report(site, params, inputs, result)
    differences: list[dict[str, Any]] = []
    if recorded is not None:
        differences = compare(recorded, out)
        out["replay"] = {
            "cycle": recorded.cycle,
            "matches": not differences,
            "differences": differences,
        }
    if args.json:
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_text(out, label)
        if recorded is not None:
            print_replay(recorded.cycle, differences, args.snapshot)
    return EXIT_REPLAY_DIFFERS if differences else EXIT_OK


def _kw(p_w: float) -> str:
    return f"{p_w / 1e3:,.1f} kW"


def print_text(out: dict[str, Any], path: str) -> None:
    """A short summary a person can read on a terminal."""
    p = print
    kernel = "compiled kernel" if out["compiled"] else "NumPy reference"
    p(f"{path}: served {_kw(out['served_w'])} of a supply of {_kw(out['supply_w'])} ({kernel})")
    fixed = _kw(out["fixed_load_w"])
    if out["supply_w"] < 0.0:
        p(
            f"  fixed load {fixed}, served first: the sources fall {_kw(-out['supply_w'])} "
            "short of it, so every rack with a floor is off"
        )
    else:
        p(f"  fixed load {fixed}, served first: the supply above is what the caps may reach")
    for t in range(4):
        p(
            f"  tier {t}: demand {_kw(out['demand_w_by_tier'][t]):>12}  "
            f"served {_kw(out['served_w_by_tier'][t]):>12}  "
            f"unserved {_kw(out['unserved_w_by_tier'][t]):>12}"
        )
    p("  supply:")
    for s in out["sources"]:
        note = ""
        if s["curtailed_w"] > 0.0:
            note = f"  curtailed {_kw(s['curtailed_w'])}"
        elif s["kind"] == "bess" and s["p_w"] < 0.0:
            note = "  charging"
        p(f"    {s['id']:<16} {s['kind']:<5} {_kw(s['p_w']):>12}{note}")
    racks = out["racks"]
    n_on = sum(1 for r in racks if r["on"])
    p(f"  racks: {n_on} of {len(racks)} on, {out['shed']} shed, {out['started']} started")
    short = sorted(
        (r for r in racks if not r["on"] or r["cap_w"] < r["demand_w"]), key=lambda r: r["tier"]
    )
    if short:
        p("  racks off or capped below demand:")
    for r in short[:MAX_ROWS]:
        state = f"cap {_kw(r['cap_w'])}" if r["on"] else "off"
        p(f"    {r['id']:<16} tier {r['tier']}  demand {_kw(r['demand_w']):>12}  {state}")
    if len(short) > MAX_ROWS:
        p(f"    ... and {len(short) - MAX_ROWS} more")


def is_recorder_file(data: object) -> TypeGuard[Mapping[str, Any]]:
    """Whether parsed JSON is a flight-recorder file rather than a snapshot."""
    if not isinstance(data, Mapping):
        return False
    fmt = data.get("format")
    return isinstance(fmt, str) and fmt.startswith(RECORDER_PREFIX)


@dataclass(frozen=True)
class RecordedCycle:
    """The record of a flight-recorder file to replay: its snapshot and its decision."""

    path: str  # key path of the record in the file, cycles[i]
    cycle: int
    label: str  # names the record in the readable output
    snapshot: object  # checked by input_from_snapshot, like any snapshot
    racks: Mapping[str, tuple[bool, float]]  # id -> (on, cap_w) as recorded
    sources: Mapping[str, float]  # id -> p_w as recorded
    params: object = None  # the record's "params": the site constants that cycle changed


class _RecorderReader:
    """Collects problems while reading a flight-recorder file."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        from edgectl.errors import Problem

        self.problems.append(Problem(self.file, path, message))

    def check(self) -> None:
        """Raise every problem found so far as one InputError."""
        from edgectl.errors import InputError

        if self.problems:
            raise InputError(self.problems)

    def records(self, cycles: list[object]) -> list[tuple[int, Mapping[str, Any]]]:
        """(cycle number, record) of every record that is an object with those keys."""
        from edgectl.model.dispatch_input import kind_name

        # Every record is checked, not only the one replayed: a damaged record anywhere
        # means the file was not written by the recorder as it should have been.
        good: list[tuple[int, Mapping[str, Any]]] = []
        for i, record in enumerate(cycles):
            path = f"cycles[{i}]"
            if not isinstance(record, Mapping):
                self.add(
                    path,
                    f"expected an object with cycle, snapshot and dispatch, found "
                    f"{kind_name(record)}",
                )
                continue
            before = len(self.problems)
            number = record.get("cycle")
            if "cycle" not in record:
                self.add(f"{path}.cycle", "missing; expected the cycle number")
            elif isinstance(number, bool) or not isinstance(number, int):
                self.add(f"{path}.cycle", f"expected an integer, found {kind_name(number)}")
            if "snapshot" not in record:
                self.add(f"{path}.snapshot", "missing; expected the snapshot of that cycle")
            if "dispatch" not in record:
                self.add(f"{path}.dispatch", "missing; expected the decision of that cycle")
            elif not isinstance(record["dispatch"], Mapping):
                found = kind_name(record["dispatch"])
                self.add(f"{path}.dispatch", f"expected an object, found {found}")
            if isinstance(number, int) and len(self.problems) == before:
                good.append((number, record))
        return good

    def decision(
        self, decision: Mapping[str, Any], path: str, params: DispatchParams
    ) -> tuple[dict[str, tuple[bool, float]], dict[str, float]]:
        """The on flag and cap_w of every rack and the p_w of every source recorded."""
        from edgectl.model.dispatch_input import kind_name, listed

        # Exactly the site's racks and sources, as in the snapshot: a decision recorded
        # for another site (or another version of this site file) is no reference.
        racks: dict[str, tuple[bool, float]] = {}
        sources: dict[str, float] = {}
        groups = (
            ("racks", "rack", list(params.rack_ids), ("on", "cap_w")),
            ("sources", "source", list(params.source_index), ("p_w",)),
        )
        for group, what, known, keys in groups:
            where = f"{path}.{group}"
            needs = f"id and {' and '.join(keys)}"
            entries = decision.get(group)
            if not isinstance(entries, list):
                found = "nothing" if group not in decision else kind_name(entries)
                self.add(where, f"expected a list of {group} with {needs}, found {found}")
                continue
            seen: dict[str, int] = {}
            for j, entry in enumerate(entries):
                at = f"{where}[{j}]"
                if not isinstance(entry, Mapping):
                    self.add(at, f"expected an object with {needs}, found {kind_name(entry)}")
                    continue
                eid = entry.get("id")
                if not isinstance(eid, str):
                    self.add(f"{at}.id", f"expected a {what} id, found {kind_name(eid)}")
                    continue
                if eid not in known:
                    self.add(f"{at}.id", f"unknown {what} {eid}; the site has: {listed(known)}")
                    continue
                if eid in seen:
                    self.add(f"{at}.id", f"{what} {eid} again (first at {where}[{seen[eid]}])")
                    continue
                seen[eid] = j
                if group == "racks":
                    on = entry.get("on")
                    if "on" not in entry:
                        self.add(f"{at}.on", "missing; expected true or false")
                    elif not isinstance(on, bool):
                        self.add(f"{at}.on", f"expected true or false, found {kind_name(on)}")
                    racks[eid] = (on is True, self.power(entry, "cap_w", at))
                else:
                    sources[eid] = self.power(entry, "p_w", at)
            missing = [eid for eid in known if eid not in seen]
            if missing:
                self.add(where, f"no entry for {what} {listed(missing)}")
        return racks, sources

    def power(self, entry: Mapping[str, Any], key: str, at: str) -> float:
        """A finite number of W (a battery's p_w may be negative); NaN after a problem."""
        from edgectl.model.dispatch_input import kind_name

        path = f"{at}.{key}"
        value = entry.get(key)
        if key not in entry:
            self.add(path, "missing; expected a power in W")
            return math.nan
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.add(path, f"expected a power in W, found {kind_name(value)}")
            return math.nan
        if not math.isfinite(value):
            self.add(path, f"expected a power in W, found {value!r} (must be finite)")
            return math.nan
        return float(value)


def select_cycle(
    data: Mapping[str, Any], file: str, cycle: int | None, site: Site, params: DispatchParams
) -> RecordedCycle:
    """The record to replay, the last or the one whose cycle is `cycle`; InputError if not."""
    from edgectl.model.dispatch_input import kind_name

    rd = _RecorderReader(file)
    fmt = data["format"]
    if fmt != RECORDER_FORMAT:
        # Another version may lay its records out otherwise: judge nothing else.
        rd.add("format", f"unsupported format {fmt}; expected {RECORDER_FORMAT}")
        rd.check()
    recorded_site = data.get("site")
    if recorded_site is not None and not isinstance(recorded_site, str):
        rd.add("site", f"expected the id of the site recorded, found {kind_name(recorded_site)}")
    elif recorded_site is not None and recorded_site != site.site.id:
        rd.add("site", f"recorded on site {recorded_site}, but the site file is {site.site.id}")
    cycles = data.get("cycles")
    records: list[object] = cycles if isinstance(cycles, list) else []
    if not isinstance(cycles, list):
        found = "nothing" if "cycles" not in data else kind_name(cycles)
        rd.add("cycles", f"expected a list of cycle records, found {found}")
    elif not cycles:
        rd.add("cycles", "no cycles recorded; expected at least one cycle record")
    good = rd.records(records)
    rd.check()

    # Without a problem above, good[i] is cycles[i] with its cycle number.
    numbers = [number for number, _ in good]
    index = len(good) - 1
    if cycle is not None:
        found_at = [i for i, number in enumerate(numbers) if number == cycle]
        if not found_at:
            rd.add(
                "cycles",
                f"no cycle {cycle}; the file holds {len(numbers)} cycles, "
                f"from {numbers[0]} (first) to {numbers[-1]} (last)",
            )
        elif len(found_at) > 1:
            where = ", ".join(f"cycles[{i}]" for i in found_at)
            rd.add("cycles", f"cycle {cycle} is recorded {len(found_at)} times: {where}")
        rd.check()
        index = found_at[0]
    path = f"cycles[{index}]"
    number, record = good[index]
    racks, sources = rd.decision(record["dispatch"], f"{path}.dispatch", params)
    rd.check()
    return RecordedCycle(
        path=path,
        cycle=number,
        label=f"{file} cycle {number}",
        snapshot=record["snapshot"],
        racks=racks,
        sources=sources,
        params=record.get("params"),
    )


def _close(recorded: float, replayed: float) -> bool:
    return abs(replayed - recorded) <= REPLAY_REL_TOL * abs(recorded) + REPLAY_ABS_TOL_W


def compare(recorded: RecordedCycle, out: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Where the replayed decision `out` differs from the recorded one: racks, then sources."""
    differences: list[dict[str, Any]] = []

    def differ(eid: str, key: str, was: object, now: object) -> None:
        differences.append({"id": eid, "key": key, "recorded": was, "replayed": now})

    for rack in out["racks"]:
        on, cap_w = recorded.racks[rack["id"]]
        if on != rack["on"]:
            differ(rack["id"], "on", on, rack["on"])
        if not _close(cap_w, rack["cap_w"]):
            differ(rack["id"], "cap_w", cap_w, rack["cap_w"])
    for src in out["sources"]:
        p_w = recorded.sources[src["id"]]
        if not _close(p_w, src["p_w"]):
            differ(src["id"], "p_w", p_w, src["p_w"])
    return differences


def _value(value: object) -> str:
    return json.dumps(value) if isinstance(value, bool) else str(value)


def print_replay(cycle: int, differences: list[dict[str, Any]], path: str) -> None:
    """One line when the replay made the recorded decision, else its first differences."""
    head = f"replayed cycle {cycle} of {path}"
    if not differences:
        print(f"{head}: same decision as recorded")
        return
    n = len(differences)
    print(f"{head}: {n} difference{'s' if n > 1 else ''} from the decision recorded")
    for d in differences[:MAX_ROWS]:
        print(
            f"  {d['id']}: {d['key']} {_value(d['recorded'])} recorded, "
            f"{_value(d['replayed'])} replayed"
        )
    if len(differences) > MAX_ROWS:
        print(f"  ... and {len(differences) - MAX_ROWS} more")
