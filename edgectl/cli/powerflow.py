"""`edgectl powerflow SITE [--set ID=P_W ...] [--json]`: solve the site at one operating point."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

HELP = "solve the DC power flow of a site at an operating point"

# Rows of the readable output before it summarises ("... and N more").
MAX_ROWS = 12


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("site", help="site file (TOML)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="ID=P_W",
        help="power of a source or rack in W (repeatable); a bess or grid source set this "
        "way runs at that fixed power instead of holding the bus by droop",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def parse_overrides(items: list[str], site: Any) -> dict[str, float]:
    """--set ID=P_W values, checked against the site's sources and racks."""
    from edgectl.errors import UsageError

    known = {s.id for s in site.sources} | {r.id for r in site.racks}
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set {item}: expected ID=P_W")
        if name not in known:
            raise UsageError(f"--set {item}: no source or rack with id {name!r} in the site")
        try:
            p = float(value)
        except ValueError:
            raise UsageError(f"--set {item}: {value!r} is not a power in W") from None
        if p != p or p in (float("inf"), float("-inf")):
            raise UsageError(f"--set {item}: power must be finite")
        out[name] = p
    return out


def run(args: argparse.Namespace) -> int:
    from edgectl.config.load import load_site
    from edgectl.errors import EXIT_NO_SOLUTION, EXIT_OK, UsageError
    from edgectl.kernels import require_compiled
    from edgectl.model.network import build_network, default_operating_point, report

    require_compiled()
    site = load_site(args.site)
    overrides = parse_overrides(args.overrides, site)
    source_p, rack_p = default_operating_point(site)
    droop_ids = {s.id for s in site.sources if s.is_droop}
    pinned = {k: v for k, v in overrides.items() if k in droop_ids}
    for key, value in overrides.items():
        if key in rack_p:
            if value < 0:
                raise UsageError(f"--set {key}={value:g}: a rack's draw cannot be negative")
            rack_p[key] = value
        else:
            if key not in droop_ids and value < 0:
                raise UsageError(f"--set {key}={value:g}: a pv or wind output cannot be negative")
            source_p[key] = value
    if len(pinned) == len(droop_ids):
        raise UsageError(
            "--set: every bess and grid source is pinned; at least one must hold the bus by droop"
        )
    net = build_network(site, pinned=pinned)
    result = net.powerflow.solve(net.injections(source_p, rack_p), warm=False)
    out = report(net, result, source_p, rack_p)
    if args.json:
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_text(out, args.site)
    if not result.converged:
        print(f"edgectl powerflow: {args.site}: {result.message}", file=sys.stderr)
        return EXIT_NO_SOLUTION
    return EXIT_OK


def print_text(out: dict[str, Any], path: str) -> None:
    """A short table a person can read on a terminal."""
    p = print
    p(f"{path}: site {out['site']!r}: {out['message']}")
    if not out["converged"]:
        return
    p(f"  collapse margin {out['collapse_margin']:.3f} (1 = unloaded, 0 = voltage collapse)")
    p(f"  losses {out['losses_w'] / 1e3:.1f} kW")
    buses = sorted(out["buses"], key=lambda b: b["v_pu"])
    p(f"  buses {len(buses)}: {buses[0]['v_pu']:.4f} .. {buses[-1]['v_pu']:.4f} pu")
    for b in buses[:MAX_ROWS]:
        p(f"    {b['id']:<16} {b['v_v']:9.2f} V  {b['v_pu']:.4f} pu")
    if len(buses) > MAX_ROWS:
        p(f"    ... and {len(buses) - MAX_ROWS} more")
    lines = sorted(out["lines"], key=lambda ln: -ln["loading"])
    if lines:
        p(f"  lines {len(lines)}, most loaded first:")
        for ln in lines[:MAX_ROWS]:
            p(
                f"    {ln['id']:<16} {ln['i_a']:10.1f} A  {100 * ln['loading']:5.1f} %  "
                f"{ln['loss_w'] / 1e3:8.2f} kW loss"
            )
        if len(lines) > MAX_ROWS:
            p(f"    ... and {len(lines) - MAX_ROWS} more")
    p("  sources:")
    for s in out["sources"][: MAX_ROWS * 2]:
        note = "  at current limit" if s.get("at_current_limit") else ""
        p(f"    {s['id']:<16} {s['kind']:<5} {s['p_w'] / 1e3:10.1f} kW{note}")
    if len(out["sources"]) > MAX_ROWS * 2:
        p(f"    ... and {len(out['sources']) - MAX_ROWS * 2} more")
    total_racks = sum(r["p_w"] for r in out["racks"])
    p(f"  racks {len(out['racks'])}: {total_racks / 1e3:.1f} kW")
    if out["violations"]:
        p(f"  violations {len(out['violations'])}:")
        for v in out["violations"][: MAX_ROWS * 2]:
            p(f"    {v['kind']:<10} {v['message']}")
        if len(out["violations"]) > MAX_ROWS * 2:
            p(f"    ... and {len(out['violations']) - MAX_ROWS * 2} more")
    else:
        p("  violations: none")
