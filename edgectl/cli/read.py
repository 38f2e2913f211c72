"""`edgectl read SITE DEVICE [POINT]`: a device's points, decoded as the daemon decodes them.

One row per point of the device's map: value, unit, validity (or why it is invalid) and
age in seconds; `--json` prints the same as one object. Exit 0 when the device answered
(invalid values included: they are what the device says); 4 when it did not or answered
with an error; 2 for a bad site file; 64 for a device or point the site does not have.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING, Any

from edgectl.cli._field import (
    add_site_device,
    add_timeout,
    format_value,
    open_registry,
    point_of,
    reading_row,
    run_quietly,
    table,
    validity,
)
from edgectl.errors import UsageError

if TYPE_CHECKING:
    from edgectl.devicemaps.readings import Reading
    from edgectl.drivers.points import PointDevice

HELP = "read a site device's points: value, unit, validity and age"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_site_device(parser)
    parser.add_argument("point", metavar="POINT", nargs="?", help="only this point")
    add_timeout(parser)
    parser.add_argument("--json", action="store_true", help="print the readings as JSON")


def run(args: argparse.Namespace) -> int:
    registry = open_registry(args)
    if args.point is not None:
        point_of(registry, args.device, args.point)
    points = registry.points(args.device)

    async def work() -> dict[str, Reading]:
        try:
            await points.open()
            if args.point is not None:
                return {args.point: await points.read(args.point)}
            return await points.poll()
        except ValueError as exc:  # a point this firmware's map does not have
            raise UsageError(str(exc)) from None
        finally:
            await registry.close()

    readings = run_quietly(args.debug, work())
    now = time.monotonic()
    if args.json:
        print(json.dumps(as_json(points, readings, now), indent=2))
    else:
        print(heading(points))
        print(format_readings(readings, now))
    return 0


def heading(points: PointDevice) -> str:
    """device: profile, vendor model, firmware, where."""
    info = (points.device_map or points.maps[0]).map
    version = f", firmware {points.firmware}" if points.firmware else ""
    what = f"{info.profile} ({info.vendor} {info.model}{version})"
    return f"{points.device_id}: {what} at {points.location}"


def format_readings(readings: dict[str, Reading], now_s: float) -> str:
    rows = [
        [name, format_value(r.value), r.unit, validity(r), f"{max(0.0, r.age_s(now_s)):.1f}"]
        for name, r in readings.items()
    ]
    return table(["point", "value", "unit", "valid", "age_s"], rows, right=(1, 4))


def as_json(points: PointDevice, readings: dict[str, Reading], now_s: float) -> dict[str, Any]:
    device_map = points.device_map or points.maps[0]
    return {
        "device": points.device_id,
        "endpoint": points.endpoint,
        "location": points.location,
        "firmware": points.firmware,
        "profile": device_map.map.profile,
        "vendor": device_map.map.vendor,
        "model": device_map.map.model,
        "points": {name: reading_row(r, now_s) for name, r in readings.items()},
    }
