"""`edgectl check-config SITE`: validate a site file with the daemon's own loader.

Exit 0 and a short summary when the file is valid; exit 2 and one line per problem on
stderr (`file: key.path: what was expected`) when it is not, every problem at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from edgectl.errors import InputError

HELP = "validate a site file (TOML) and summarise what it holds"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare SITE and --json."""
    parser.add_argument(
        "site", metavar="SITE", help="site description, e.g. /etc/edgectl/site.toml"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the summary (or the problems) as one JSON object on stdout",
    )


def run(args: argparse.Namespace) -> int:
    """Load SITE as the daemon would; print its summary or every problem."""
    from edgectl.config.load import load_site, summary  # pydantic is slow to import

    file: str = args.site
    try:
        site = load_site(file)
    except InputError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        if args.json:
            problems = [{"path": p.path, "message": p.message} for p in exc.problems]
            print(json.dumps({"file": file, "valid": False, "problems": problems}, indent=2))
        return exc.exit_code
    facts = summary(site)
    if args.json:
        print(json.dumps({"file": file, "valid": True, **facts}, indent=2))
    else:
        print(format_summary(file, facts))
    return 0


def format_summary(file: str, facts: dict[str, Any]) -> str:
    """The summary dict as the few lines an engineer reads on a terminal."""
    sources = []
    for kind, entry in facts["sources"].items():
        detail = format_power(entry["p_max_w"])
        if "capacity_wh" in entry:
            detail += f", {format_energy(entry['capacity_wh'])}"
        sources.append(f"{kind} {entry['count']} ({detail})")
    racks = facts["racks"]
    rack_line = f"racks {racks['count']}"
    if racks["count"]:
        tiers = ", ".join(f"tier {t}: {n}" for t, n in racks["tiers"].items() if n)
        rack_line += f" ({format_power(racks['p_max_w'])} max; {tiers})"
    return "\n".join(
        [
            f'{file}: site "{facts["site"]}", valid',
            f"  buses {facts['buses']}, lines {facts['lines']}, devices {facts['devices']}",
            f"  sources: {', '.join(sources)}",
            f"  {rack_line}",
            "  rack p_max against sources p_max: "
            f"{format_power(racks['p_max_w'])} / {format_power(facts['sources_p_max_w'])}",
        ]
    )


def format_power(p_w: float) -> str:
    """Watts as MW from 100 kW up (2 decimals), else kW: '2.40 MW', '45.0 kW'."""
    if abs(p_w) >= 100e3:
        return f"{p_w / 1e6:.2f} MW"
    return f"{p_w / 1e3:.1f} kW"


def format_energy(e_wh: float) -> str:
    """Watt-hours as MWh from 100 kWh up (2 decimals), else kWh."""
    if abs(e_wh) >= 100e3:
        return f"{e_wh / 1e6:.2f} MWh"
    return f"{e_wh / 1e3:.1f} kWh"
