"""`edgectl dump SITE DEVICE [-o FILE]`: a device's wire data as a JSON fixture.

The JSON names the device, its site protocol, endpoint, profile and map, holds what is on
the wire (Modbus: every register the driver reads, address -> value; OPC UA: every
variable's value and status; Redfish: every resource the map reads) and the readings
decoded from it. `edgectl.drivers.replay` serves such a file to the real drivers, so a
test can decode a field device's data without the device. Exit codes as `edgectl read`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edgectl.cli._field import add_site_device, add_timeout, open_registry, run_quietly
from edgectl.errors import UsageError

HELP = "write a device's raw registers, nodes or resources and its readings as JSON"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_site_device(parser)
    parser.add_argument("-o", "--output", metavar="FILE", help="write to FILE (default: stdout)")
    add_timeout(parser)


def run(args: argparse.Namespace) -> int:
    from edgectl.drivers.replay import make_dump

    registry = open_registry(args)
    entry = registry.entry(args.device)
    points = registry.points(args.device)

    async def work() -> dict[str, Any]:
        try:
            return await make_dump(points, protocol=entry.protocol, maps=registry.maps)
        finally:
            await registry.close()

    dump = run_quietly(args.debug, work())
    text = json.dumps(dump, indent=1, allow_nan=False) + "\n"
    if args.output is None:
        print(text, end="")
        return 0
    try:
        Path(args.output).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    held = dump.get("registers") or dump.get("nodes") or dump.get("resources") or {}
    kind = "registers" if "registers" in dump else "nodes" if "nodes" in dump else "resources"
    print(f"{args.device}: {len(held)} {kind}, {len(dump['readings'])} readings -> {args.output}")
    return 0
