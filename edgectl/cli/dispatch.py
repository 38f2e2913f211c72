"""`edgectl dispatch SITE --snapshot FILE.json [--json]`: decide one cycle from a snapshot."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgectl.config.site import Site
    from edgectl.kernels.dispatch import DispatchInput, DispatchParams, DispatchResult

HELP = "decide one control cycle (rack caps, battery, grid, curtailment) from a snapshot"

# Racks listed by the readable output before it summarises ("... and N more").
MAX_ROWS = 12


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("site", help="site file (TOML)")
    parser.add_argument(
        "--snapshot",
        required=True,
        metavar="FILE.json",
        help="one cycle's inputs: source availability and soc, rack demand, cap and on/off",
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
    from edgectl.errors import EXIT_OK
    from edgectl.kernels import require_compiled
    from edgectl.kernels.dispatch import dispatch
    from edgectl.model.dispatch_input import input_from_snapshot, params_from_site

    require_compiled()
    site = load_site(args.site)
    params = params_from_site(site)
    data = read_snapshot(args.snapshot)
    inputs = input_from_snapshot(site, params, data, args.snapshot)
    result = dispatch(params, inputs)
    out = report(site, params, inputs, result)
    if args.json:
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_text(out, args.snapshot)
    return EXIT_OK


def report(
    site: Site, params: DispatchParams, inputs: DispatchInput, result: DispatchResult
) -> dict[str, Any]:
    """The decision as plain data, entries named by id, sources in site order."""
    sources: list[dict[str, Any]] = []
    for src in site.sources:
        group, i = params.source_index[src.id]
        if group == "renewable":
            p_w, curtailed_w = result.renewable_p_w[i], result.renewable_curtailed_w[i]
        elif group == "battery":
            p_w, curtailed_w = result.battery_p_w[i], 0.0
        else:
            p_w, curtailed_w = result.grid_p_w[i], 0.0
        sources.append(
            {"id": src.id, "kind": src.kind, "p_w": float(p_w), "curtailed_w": float(curtailed_w)}
        )
    racks = [
        {
            "id": rid,
            "tier": int(params.rack_tier[i]),
            "cap_w": float(result.rack_cap_w[i]),
            "on": bool(result.rack_on[i]),
            "demand_w": float(inputs.rack_demand_w[i]),
        }
        for i, rid in enumerate(params.rack_ids)
    ]
    return {
        "racks": racks,
        "sources": sources,
        "grid_w": float(result.grid_p_w.sum()),
        "served_w": result.served_w,
        "unserved_w_by_tier": [float(x) for x in result.unserved_w_by_tier],
        "served_w_by_tier": [float(x) for x in result.served_w_by_tier],
        "demand_w_by_tier": [float(x) for x in result.demand_w_by_tier],
        "supply_w": result.supply_w,
        "shed": result.shed,
        "started": result.started,
        "compiled": result.compiled,
    }


def _kw(p_w: float) -> str:
    return f"{p_w / 1e3:,.1f} kW"


def print_text(out: dict[str, Any], path: str) -> None:
    """A short summary a person can read on a terminal."""
    p = print
    kernel = "compiled kernel" if out["compiled"] else "NumPy reference"
    p(f"{path}: served {_kw(out['served_w'])} of a supply of {_kw(out['supply_w'])} ({kernel})")
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
