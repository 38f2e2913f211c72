"""Write a dispatch snapshot for a site file: the input `edgectl dispatch --snapshot` replays.

    python examples/make_snapshot.py examples/small_site.toml > examples/small_snapshot.json
    python examples/make_snapshot.py examples/reference_site.toml > examples/reference_snapshot.json

The snapshot is a cloudy, calm evening, deterministic (no randomness, no clock): PV at
20 % of p_max_w, wind at 30 %, the first battery down to its reserve and the others at
60 % SOC; every rack running, asking for 70 to 100 % of its p_max_w, capped last cycle
at 90 % of what it asks now; a few tier-3 racks off for a minute. The supply then falls
short of the demand, so the decision shows the tiers, the equal-fraction share, the
green-share limit on the grid and the ramp limits at work.
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

PV_SHARE = 0.2
WIND_SHARE = 0.3
SOC = 0.6
SOC_FIRST_BATTERY = 0.12  # just above soc_min 0.1: inside the ride-through reserve


def snapshot(site: dict) -> dict:  # type: ignore[type-arg]
    """The snapshot of a parsed site file."""
    sources: dict[str, dict[str, float]] = {}
    first_battery = True
    for src in site["source"]:
        if src["kind"] == "pv":
            sources[src["id"]] = {"available_w": round(PV_SHARE * src["p_max_w"], 1)}
        elif src["kind"] == "wind":
            sources[src["id"]] = {"available_w": round(WIND_SHARE * src["p_max_w"], 1)}
        elif src["kind"] == "bess":
            sources[src["id"]] = {"soc": SOC_FIRST_BATTERY if first_battery else SOC}
            first_battery = False
    racks: dict[str, dict[str, object]] = {}
    for i, rack in enumerate(site.get("rack", [])):
        demand = rack["p_max_w"] * (0.7 + 0.3 * ((i * 7) % 11) / 10)
        entry: dict[str, object] = {
            "demand_w": round(demand, 1),
            "cap_w": round(0.9 * demand, 1),
            "on": True,
        }
        if rack["tier"] == 3 and i % 5 == 0:
            entry = {"demand_w": round(demand, 1), "cap_w": 0.0, "on": False, "off_s": 60.0}
        racks[rack["id"]] = entry
    return {"sources": sources, "racks": racks}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 64
    with Path(argv[1]).open("rb") as f:
        site = tomllib.load(f)
    sys.stdout.write(render(snapshot(site)))
    return 0


def render(snap: dict) -> str:  # type: ignore[type-arg]
    """JSON with one entry per line, so a person can read and edit it."""
    parts = []
    for section, entries in snap.items():
        lines = [f'    "{key}": {json.dumps(value)}' for key, value in entries.items()]
        parts.append(f'  "{section}": {{\n' + ",\n".join(lines) + "\n  }")
    return "{\n" + ",\n".join(parts) + "\n}\n"


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
