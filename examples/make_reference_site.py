"""Write the reference site: a green-power DC site at real scale, for benchmarks and tests.

    python examples/make_reference_site.py > examples/reference_site.toml
    python examples/make_reference_site.py examples/reference_site.toml   # same bytes

The output is committed; this script reproduces it byte for byte (no randomness, no
clock, no platform-dependent formatting), and a test checks that it still does.

What it describes:
- 800 GPU racks of 120 kW (96 MW) in 40 rows of 20. Each rack has its own bus on its
  row busway, so a row is a radial feeder of 20 short busway segments.
- 100 MW of PV in 40 DC/DC blocks of 2.5 MW, each on its own bus with a feeder cable.
- 8 wind turbines of 4 MW, each on its own bus with a feeder.
- 4 batteries of 25 MW / 50 MWh and a grid tie capped at 9.6 MW (10 % of the rack load).
- 8 main-bus sections closed in a ring: each section takes 5 rows, 5 PV blocks and one
  turbine; the batteries sit on every other section and the grid tie on section 2. The
  ring is the one mesh; everything else is radial. 856 buses, 856 lines.

Why 800 V and not 1500 V: the racks are 800 V DC racks, so the bus feeds them without
another conversion stage, and the currents stay within what DC busbars carry in
practice. A row busway carries at most 3 kA, a PV feeder 3.1 kA, a turbine feeder 5 kA;
the largest currents (a battery's 31 kA, ring sections up to ~10 kA) flow in short
section busbars, as in electrolysis and traction DC switchgear. 1500 V would halve
those currents but put a DC/DC converter in front of every rack row.

Ratings: every line is rated above the largest current any feasible operating point
puts through it (a row at full load, a source at p_max, a ring section with its
neighbour's battery flat out), and the resistances keep bus voltages within
0.95..1.05 pu from "all racks at p_max with no sun and no wind" (batteries and grid
supply) to "all racks at p_max with every source at p_max" (batteries absorb the
surplus). r_ohm is the loop resistance (both poles).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

V_NOMINAL_V = 800.0

SECTIONS = 8
ROWS = 40
RACKS_PER_ROW = 20
PV_BLOCKS = 40
TURBINES = 8
BATTERY_SECTIONS = (1, 3, 5, 7)  # 1-based section numbers
GRID_SECTION = 2

RACK_P_MAX_W = 120_000
RACK_P_MIN_W = 36_000  # 30 %: below it the GPUs idle anyway; the rack is then switched off
RACK_RAMP_W_PER_S = 24_000  # 20 % of p_max per second
# Tiers of the 10 rows in each block of 10: 10 % tier 0, 30 % tier 1, 40 % tier 2,
# 20 % tier 3. A row is one cluster, so a whole row shares its tier.
ROW_TIERS = (0, 1, 1, 1, 2, 2, 2, 2, 3, 3)

PV_P_MAX_W = 2_500_000
TURBINE_P_MAX_W = 4_000_000
BATTERY_P_MAX_W = 25_000_000
BATTERY_CAPACITY_WH = 50_000_000
GRID_P_MAX_W = ROWS * RACKS_PER_ROW * RACK_P_MAX_W // 10

# Droop: a battery's rated current (31.25 kA) moves the bus by 2.5 % (20 V); the grid
# tie is softer, 3.75 % for its rated 12 kA, so the batteries carry the swings and the
# grid tops up only when the bus runs low. Current limits are 10 % above rated.
# The tie's zero-current voltage is 2.5 % below nominal, so it imports only once the bus
# sags (the batteries are flat out or low); it never exports (no reverse flow).
GRID_V_REF_V = 0.975 * V_NOMINAL_V
BATTERY_DROOP_R_OHM = 0.00064
BATTERY_I_MAX_A = 34_400.0
GRID_DROOP_R_OHM = 0.0025
GRID_I_MAX_A = 13_200.0

# Lines: (r_ohm, i_max_a).
RING = (0.0001, 16_000.0)  # ~20 m of section busbar, 4 x 200 x 10 mm copper per pole
ROW_FEEDER = (0.0005, 4_000.0)  # ~25 m of 4 kA busway from the section to the row head
BUSWAY_SEGMENT = (0.000015, 4_000.0)  # one rack pitch (0.75 m) of the same busway
PV_FEEDER = (0.002, 4_000.0)  # 3.1 kA over a few hundred metres of paralleled cable
TURBINE_FEEDER = (0.001, 6_000.0)  # 5 kA

Value = str | int | float
Entry = dict[str, Value]


def section_of(index: int, count: int) -> int:
    """The 1-based main section that the index-th of `count` equal groups attaches to."""
    return index * SECTIONS // count + 1


def main_bus(section: int) -> str:
    """Id of a main-bus section (1-based)."""
    return f"main-{section}"


def buses() -> list[Entry]:
    """Main sections, then PV, turbine and rack buses."""
    out: list[Entry] = [{"id": main_bus(s)} for s in range(1, SECTIONS + 1)]
    out += [{"id": f"pv-{b + 1:02d}"} for b in range(PV_BLOCKS)]
    out += [{"id": f"wt-{t + 1}"} for t in range(TURBINES)]
    out += [
        {"id": f"row{row + 1:02d}-{k + 1:02d}"} for row in range(ROWS) for k in range(RACKS_PER_ROW)
    ]
    return out


def line(line_id: str, a: str, b: str, rating: tuple[float, float]) -> Entry:
    """One [[line]] entry from a (r_ohm, i_max_a) rating."""
    return {"id": line_id, "from": a, "to": b, "r_ohm": rating[0], "i_max_a": rating[1]}


def lines() -> list[Entry]:
    """The ring, the source feeders, then each row: its feeder and busway segments."""
    out = [
        line(f"ring-{s}-{s % SECTIONS + 1}", main_bus(s), main_bus(s % SECTIONS + 1), RING)
        for s in range(1, SECTIONS + 1)
    ]
    for b in range(PV_BLOCKS):
        section = main_bus(section_of(b, PV_BLOCKS))
        out.append(line(f"feed-pv-{b + 1:02d}", f"pv-{b + 1:02d}", section, PV_FEEDER))
    for t in range(TURBINES):
        section = main_bus(section_of(t, TURBINES))
        out.append(line(f"feed-wt-{t + 1}", f"wt-{t + 1}", section, TURBINE_FEEDER))
    for row in range(ROWS):
        name = f"row{row + 1:02d}"
        section = main_bus(section_of(row, ROWS))
        out.append(line(f"feed-{name}", section, f"{name}-01", ROW_FEEDER))
        out += [
            line(f"bw-{name}-{k + 1:02d}", f"{name}-{k:02d}", f"{name}-{k + 1:02d}", BUSWAY_SEGMENT)
            for k in range(1, RACKS_PER_ROW)
        ]
    return out


def sources() -> list[Entry]:
    """PV blocks, turbines, batteries and the grid tie."""
    out: list[Entry] = [
        {
            "id": f"pv-{b + 1:02d}",
            "kind": "pv",
            "bus": f"pv-{b + 1:02d}",
            "p_max_w": float(PV_P_MAX_W),
        }
        for b in range(PV_BLOCKS)
    ]
    out += [
        {
            "id": f"wt-{t + 1}",
            "kind": "wind",
            "bus": f"wt-{t + 1}",
            "p_max_w": float(TURBINE_P_MAX_W),
            "device": f"wt-{t + 1}",
        }
        for t in range(TURBINES)
    ]
    for n, section in enumerate(BATTERY_SECTIONS, start=1):
        out.append(
            {
                "id": f"bess-{n}",
                "kind": "bess",
                "bus": main_bus(section),
                "p_max_w": float(BATTERY_P_MAX_W),
                "p_charge_max_w": float(BATTERY_P_MAX_W),
                "capacity_wh": float(BATTERY_CAPACITY_WH),
                "soc_min": 0.1,
                "soc_max": 0.95,
                "v_ref_v": V_NOMINAL_V,
                "droop_r_ohm": BATTERY_DROOP_R_OHM,
                "i_max_a": BATTERY_I_MAX_A,
                "device": f"bess-{n}",
            }
        )
    out.append(
        {
            "id": "grid",
            "kind": "grid",
            "bus": main_bus(GRID_SECTION),
            "p_max_w": float(GRID_P_MAX_W),
            "p_export_max_w": 0.0,
            "v_ref_v": GRID_V_REF_V,
            "droop_r_ohm": GRID_DROOP_R_OHM,
            "i_max_a": GRID_I_MAX_A,
        }
    )
    return out


def racks() -> list[Entry]:
    """Every rack on its own bus, row by row."""
    return [
        {
            "id": f"rack{row + 1:02d}-{k + 1:02d}",
            "bus": f"row{row + 1:02d}-{k + 1:02d}",
            "p_min_w": float(RACK_P_MIN_W),
            "p_max_w": float(RACK_P_MAX_W),
            "tier": ROW_TIERS[row % len(ROW_TIERS)],
            "ramp_w_per_s": float(RACK_RAMP_W_PER_S),
        }
        for row in range(ROWS)
        for k in range(RACKS_PER_ROW)
    ]


def devices() -> list[Entry]:
    """Devices of the turbines and batteries."""
    # Only the turbines (OPC UA) and the batteries (SunSpec over Modbus TCP) are listed:
    # enough to exercise every protocol path at scale without a thousand endpoints. The
    # endpoints are the simulator's on loopback, hence OPC UA without security, said
    # explicitly; a real turbine names its certificate files instead.
    out: list[Entry] = [
        {
            "id": f"wt-{t + 1}",
            "protocol": "opcua",
            "endpoint": f"127.0.0.1:{14841 + t}",
            "profile": "opcua-wind",
            "security": "none",
        }
        for t in range(TURBINES)
    ]
    out += [
        {
            "id": f"bess-{n}",
            "protocol": "modbus-tcp",
            "endpoint": f"127.0.0.1:{15100 + n}",
            "unit": 1,
            "profile": "sunspec-bess",
        }
        for n in range(1, len(BATTERY_SECTIONS) + 1)
    ]
    return out


def toml_value(value: Value) -> str:
    """One TOML value; floats keep their shortest round-trip form, digits grouped."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        raise TypeError("the site file has no boolean keys")
    if isinstance(value, int):
        return str(value)
    return format(value, "_")


def toml_table(name: str, entry: Entry, array: bool) -> list[str]:
    """A [name] or [[name]] table as lines, followed by a blank line."""
    header = f"[[{name}]]" if array else f"[{name}]"
    return [header, *(f"{key} = {toml_value(value)}" for key, value in entry.items()), ""]


def render() -> str:
    """The whole reference site as TOML text."""
    rack_load_w = ROWS * RACKS_PER_ROW * RACK_P_MAX_W
    head = [
        "# Reference site: 100 MW PV, 32 MW wind, 4 x 25 MW / 50 MWh batteries and a 9.6 MW",
        "# grid tie feeding 800 GPU racks (96 MW) over an 800 V DC bus.",
        "# Generated by examples/make_reference_site.py; edit that script, not this file:",
        "#   python examples/make_reference_site.py > examples/reference_site.toml",
        "",
    ]
    site: Entry = {"id": "reference", "v_nominal_v": V_NOMINAL_V, "latitude_deg": 37.5}
    control: Entry = {
        "period_s": 1.0,
        "v_min_pu": 0.95,
        "v_max_pu": 1.05,
        "green_share_min": 0.8,
        "grid_import_max_w": float(rack_load_w // 10),
        "ride_through_s": 300.0,
        "rack_on_margin": 0.2,
        "rack_min_off_s": 30.0,
    }
    out = [*head, *toml_table("site", site, False), *toml_table("control", control, False)]
    arrays: Sequence[tuple[str, Iterable[Entry]]] = (
        ("bus", buses()),
        ("line", lines()),
        ("source", sources()),
        ("rack", racks()),
        ("device", devices()),
    )
    for name, entries in arrays:
        for entry in entries:
            out += toml_table(name, entry, True)
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: Sequence[str]) -> int:
    """Write the site to stdout, or to the one path given."""
    text = render()
    if not argv:
        sys.stdout.write(text)
        return 0
    if len(argv) > 1:
        print("usage: make_reference_site.py [OUTPUT]", file=sys.stderr)
        return 64
    Path(argv[0]).write_text(text, encoding="utf-8", newline="\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
