"""`edgectl write SITE DEVICE POINT VALUE --yes`: one setpoint, written and read back.

VALUE is in the point's map unit (W, %, s, ...): a number, or text for a text point. It is
checked against the map (the point exists and is writable, the value is a finite number
within the point's range) before anything goes on the wire. Without --yes nothing is
written: the command says what it would write and exits 64. With --yes it writes, reads
the point back and prints both; a read-back that is invalid or differs from what was
written (beyond one step of the point on the wire) exits 4, as does a device that does
not answer or refuses the write.
"""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING

from edgectl.cli._field import (
    add_site_device,
    add_timeout,
    open_registry,
    point_of,
    quantity,
    run_quietly,
    validity,
)
from edgectl.errors import EXIT_DEVICE, UsageError

if TYPE_CHECKING:
    from edgectl.devicemaps.readings import Reading, Value
    from edgectl.devicemaps.schema import Point

HELP = "write one setpoint of a site device (with --yes) and read it back"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_site_device(parser)
    parser.add_argument("point", metavar="POINT", help="a writable point of the device's map")
    parser.add_argument("value", metavar="VALUE", help="in the point's unit: a number, or text")
    parser.add_argument("--yes", action="store_true", help="really write (otherwise: dry run)")
    add_timeout(parser)


def run(args: argparse.Namespace) -> int:
    import sys

    registry = open_registry(args)
    spec, _ = point_of(registry, args.device, args.point)
    entry = registry.entry(args.device)
    if spec.access != "rw":
        raise UsageError(f"{args.device}: point {args.point} is read-only")
    value = parse_value(args.value, spec, args.point)
    points = registry.points(args.device)
    what = f"{args.point} = {quantity(value, spec.unit)} to {args.device}"
    if not args.yes:
        raise UsageError(
            f"would write {what} ({entry.profile} at {points.location}); add --yes to write"
        )

    async def work() -> tuple[Reading, float | None]:
        try:
            await points.open()
            back = await points.write(args.point, value)
            return back, points.resolution(args.point)
        except ValueError as exc:  # the map in use refuses the value
            raise UsageError(str(exc)) from None
        finally:
            await registry.close()

    back, step = run_quietly(args.debug, work())
    print(
        f"{args.device}: wrote {args.point} = {quantity(value, spec.unit)}, "
        f"read back {quantity(back.value, back.unit)} ({validity(back)})"
    )
    if not back.valid or not same(value, back.value, step):
        print(
            f"edgectl write: {args.device}: {args.point} reads back "
            f"{quantity(back.value, back.unit)}, not {quantity(value, spec.unit)}",
            file=sys.stderr,
        )
        return EXIT_DEVICE
    return 0


def parse_value(text: str, spec: Point, point: str) -> Value:
    """VALUE for `spec`: text for a text point, else a finite number within its range."""
    from edgectl.drivers.points import is_text_point

    if is_text_point(spec):
        return text
    number: float | int
    try:
        number = int(text, 10)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            raise UsageError(f"VALUE {text!r} for {point} is not a number") from None
    if not math.isfinite(number):
        raise UsageError(f"VALUE {text!r} for {point} is not a finite number")
    if spec.range is not None and not spec.range[0] <= number <= spec.range[1]:
        low, high = (quantity(b, spec.unit) for b in spec.range)
        raise UsageError(
            f"VALUE {quantity(number, spec.unit)} for {point} is outside its range {low} to {high}"
        )
    return number


def same(written: Value, back: Value | None, step: float | None) -> bool:
    """Whether a read-back shows what was written: equal text, or a number within one
    step of the point (a float: within its single precision)."""
    if isinstance(written, str) or isinstance(back, str) or back is None:
        return written == back
    tolerance = step if step is not None else 1e-6 * max(abs(written), 1.0)
    return abs(float(back) - float(written)) <= tolerance * 1.0001
