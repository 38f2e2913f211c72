"""What the field commands (scan, read, write, dump) share: arguments, the site's drivers,
quiet library logs, and how values and readings are shown."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from edgectl.errors import UsageError

if TYPE_CHECKING:
    from edgectl.devicemaps.readings import Reading, Value
    from edgectl.devicemaps.schema import DeviceMap, Point
    from edgectl.drivers.registry import DeviceRegistry

T = TypeVar("T")


def add_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=_seconds,
        metavar="S",
        help="seconds to wait for each answer (default: the protocol's, 0.5 s for Modbus)",
    )


def add_site_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "site", metavar="SITE", help="site description, e.g. /etc/edgectl/site.toml"
    )
    parser.add_argument("device", metavar="DEVICE", help="id of a [[device]] in SITE")


def run_quietly(debug: bool, work: Coroutine[Any, Any, T]) -> T:
    """Run `work`; library log lines (a client's reconnect chatter) only with --debug."""
    root = logging.getLogger()
    if debug:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    else:
        # Without a handler, warnings would reach stderr through logging's last resort.
        root.addHandler(logging.NullHandler())
    return asyncio.run(work)


def open_registry(args: argparse.Namespace) -> DeviceRegistry:
    """The site's drivers, for one-shot commands: every request is tried (no back-off)."""
    from edgectl.config.load import load_site
    from edgectl.drivers.registry import DeviceRegistry
    from edgectl.transport.modbus import ModbusTransport

    site = load_site(args.site)
    transport = ModbusTransport(backoff_initial_s=0.0, backoff_max_s=0.0)
    return DeviceRegistry(site, site_file=args.site, transport=transport, timeout_s=args.timeout)


def point_of(registry: DeviceRegistry, device_id: str, point: str) -> tuple[Point, DeviceMap]:
    """`point` as the device's maps define it (the first that has it); UsageError naming
    the points there are."""
    maps = registry.maps_for(device_id)
    for device_map in maps:
        if point in device_map.points:
            return device_map.points[point], device_map
    names = list(dict.fromkeys(n for m in maps for n in m.points))
    raise UsageError(f"{device_id}: no point {point!r} (points: {', '.join(names)})")


def format_value(value: Value | None) -> str:
    """A value as an engineer reads it: 812.3, 123456 (not 123456.0), text as it is."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        # Seven significant digits (a float32's), more where the integer part needs them.
        digits = math.floor(math.log10(abs(value))) + 1 if abs(value) >= 1 else 0
        return f"{value:.{max(7, digits + 2)}g}"
    return str(value)


def quantity(value: Value | None, unit: str) -> str:
    text = format_value(value)
    return f"{text} {unit}" if unit and value is not None else text


def validity(reading: Reading) -> str:
    return "ok" if reading.valid else f"invalid: {reading.reason}"


def reading_row(reading: Reading, now_s: float) -> dict[str, Any]:
    """A Reading as JSON, with its age instead of its (monotonic) time."""
    value = reading.value
    if isinstance(value, float) and not math.isfinite(value):
        value = None
    return {
        "value": value,
        "unit": reading.unit,
        "valid": reading.valid,
        "reason": reading.reason,
        "age_s": round(max(0.0, reading.age_s(now_s)), 3),
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell; the columns in `right` right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        cells = [
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a positive number of seconds")
    return value
