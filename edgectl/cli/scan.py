"""`edgectl scan HOST:PORT [--unit N]`: what a Modbus device is, by SunSpec or fingerprint.

SunSpec discovery first (the "SunS" marker at 40000, 0, then 50000, and the model chain):
each model's id, name (from its definition), length L and address, the common model's
manufacturer, model, serial and version, and the profiles whose models the device carries.
Without a marker, every vendor map's fingerprint is tried and the device recognised by
vendor, model and firmware (and the map that covers that firmware, if one does).

Exit 0 when the device was identified; 4 when it did not answer, answered with a Modbus
exception (a gateway saying the unit does not respond: exception 10 or 11), or is
neither SunSpec nor a known vendor device.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from edgectl.cli._field import add_timeout, run_quietly, table

if TYPE_CHECKING:
    from edgectl.devicemaps.loader import MapIndex
    from edgectl.devicemaps.sunspec import Discovery
    from edgectl.transport.modbus import ModbusEndpoint, ModbusTransport

HELP = "find out what a Modbus device is: SunSpec models, or a known vendor's fingerprint"

# A gateway's exceptions for a unit id behind it that does not answer.
_NO_UNIT_CODES = frozenset({10, 11})
_HEAD = 4  # registers discovery reads at a base: the marker, then the first model's ID and L


@dataclass
class Model:
    id: int
    name: str
    label: str
    length: int
    address: int


@dataclass
class Vendor:
    vendor: str
    model: str
    firmware: str | None
    profile: str
    map: str | None  # the map file covering the firmware; None when none does
    note: str = ""


@dataclass
class ScanResult:
    endpoint: str
    unit: int
    base: int | None = None
    common: dict[str, str] = field(default_factory=dict)
    models: list[Model] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)
    vendor: Vendor | None = None
    tried: list[str] = field(default_factory=list)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "endpoint", metavar="HOST:PORT", help="Modbus TCP endpoint (port 502 if omitted)"
    )
    parser.add_argument("--unit", type=_unit, default=1, metavar="N", help="unit id (default 1)")
    add_timeout(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from edgectl.devicemaps.loader import load_maps
    from edgectl.errors import UsageError
    from edgectl.transport.modbus import ModbusTransport, parse_endpoint

    try:
        endpoint = parse_endpoint(args.endpoint)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if endpoint.is_serial:
        raise UsageError(f"{args.endpoint!r}: scan takes a Modbus TCP HOST:PORT")
    maps = load_maps()

    async def work() -> ScanResult:
        transport = ModbusTransport(backoff_initial_s=0.0, backoff_max_s=0.0)
        try:
            return await scan(transport, args.endpoint, args.unit, maps, args.timeout)
        finally:
            await transport.close()

    result = run_quietly(args.debug, work())
    print(json.dumps(asdict(result), indent=2) if args.json else format_result(result))
    return 0


async def scan(
    transport: ModbusTransport,
    endpoint: str,
    unit: int,
    maps: MapIndex,
    timeout_s: float | None = None,
) -> ScanResult:
    """Identify the device at `endpoint`, `unit`; a DeviceError if it cannot be."""
    from edgectl.devicemaps import sunspec
    from edgectl.errors import UnsupportedDevice
    from edgectl.transport.modbus import DEFAULT_TIMEOUT_S, ModbusExceptionResponse

    io = transport.endpoint(endpoint)
    name = f"{io.name} unit {unit}"
    timeout = timeout_s or DEFAULT_TIMEOUT_S
    refusals: list[ModbusExceptionResponse] = []

    result = ScanResult(io.name, unit)

    async def read(address: int, count: int) -> list[int]:
        probe = address in sunspec.BASE_ADDRESSES and count == _HEAD
        try:
            words = await io.read_holding_registers(
                unit, address, count, device=name, timeout_s=timeout
            )
        except ModbusExceptionResponse as exc:
            refusals.append(exc)
            if probe:
                result.tried.append(f"{address}: Modbus exception {exc.code} ({exc.meaning})")
            raise
        if probe and tuple(words[:2]) != sunspec.SUNS_MARKER:
            result.tried.append(f"{address}: no marker")
        return words

    try:
        discovery = await sunspec.discover(read, name)
    except UnsupportedDevice:
        if len(refusals) == len(sunspec.BASE_ADDRESSES) and all(
            r.code in _NO_UNIT_CODES for r in refusals
        ):
            raise refusals[0] from None
    else:
        await _describe_sunspec(result, discovery, read, maps)
        return result
    result.vendor = await _vendor(transport, io, unit, maps, timeout)
    if result.vendor is None:
        raise UnsupportedDevice(
            name,
            f"not a SunSpec device ({'; '.join(result.tried)}) and no vendor map's fingerprint "
            "matches",
        )
    return result


async def _describe_sunspec(
    result: ScanResult, discovery: Discovery, read: Any, maps: MapIndex
) -> None:
    from edgectl.devicemaps import sunspec
    from edgectl.devicemaps.codec import PointCodec

    result.base = discovery.base
    for model in discovery:
        try:
            definition = sunspec.model_def(model.id)
            name, label = definition.name, definition.label
        except KeyError:
            name, label = "unknown", "no definition for this model id"
        result.models.append(Model(model.id, name, label, model.length, model.address))
    common = discovery.find(1)
    if common is not None:
        for key in ("Mn", "Md", "SN", "Vr"):
            pdef = sunspec.model_def(1).point(key)
            if not common.holds(pdef):
                continue
            words = await read(common.address + pdef.offset, pdef.size)
            reading = PointCodec(key, "string", size=pdef.size, sentinels=True).decode(words, 0.0)
            if reading.valid:
                result.common[key] = str(reading.value).strip()
    ids = set(discovery.ids)
    for loaded in maps.maps:
        section = loaded.map.sunspec
        if section is not None and set(section.models) <= ids:
            result.profiles.append(loaded.map.map.profile)


async def _vendor(
    transport: ModbusTransport,
    io: ModbusEndpoint,
    unit: int,
    maps: MapIndex,
    timeout_s: float,
) -> Vendor | None:
    """The vendor map whose fingerprint the device carries, if any."""
    from edgectl.drivers.modbus import ModbusDevice
    from edgectl.errors import UnsupportedDevice

    for profile in maps.profiles():
        candidates = maps.for_profile(profile)
        if candidates[0].map.protocol != "modbus":
            continue
        probe = ModbusDevice(
            f"{io.name} unit {unit}", io.name, unit, candidates, transport, timeout_s=timeout_s
        )
        first = candidates[0].map
        try:
            chosen = await probe.connect_and_identify()
        except UnsupportedDevice as exc:
            if probe.firmware is None and "not the expected device" in str(exc):
                continue
            note = str(exc).removeprefix(f"{probe.device_id}: ")
            return Vendor(first.vendor, first.model, probe.firmware, profile, None, note)
        return Vendor(
            chosen.map.vendor,
            chosen.map.model,
            probe.firmware,
            profile,
            maps.file_of(chosen),
        )
    return None


def format_result(result: ScanResult) -> str:
    where = f"{result.endpoint} unit {result.unit}"
    if result.vendor is not None:
        v = result.vendor
        lines = [f"{where}: not SunSpec ({'; '.join(result.tried)})"]
        firmware = f" firmware {v.firmware}" if v.firmware else ""
        lines.append(f"  recognised {v.vendor} {v.model}{firmware} (profile {v.profile})")
        lines.append(f"  map: {v.map}" if v.map else f"  no map: {v.note}")
        return "\n".join(lines)
    lines = [f"{where}: SunSpec at {result.base}, {len(result.models)} models"]
    labels = {"Mn": "manufacturer", "Md": "model", "SN": "serial", "Vr": "version"}
    common = ", ".join(f"{labels[k]} {v}" for k, v in result.common.items())
    if common:
        lines.append(f"  {common}")
    rows = [[str(m.id), m.name, str(m.length), str(m.address)] for m in result.models]
    body = table(["id", "name", "L", "address"], rows, right=(0, 2, 3))
    lines += ["  " + line for line in body.splitlines()]
    lines.append(f"  profiles: {', '.join(result.profiles) or 'none matches these models'}")
    return "\n".join(lines)


def _unit(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 255:
        raise argparse.ArgumentTypeError(f"{text!r}: a unit id is 0-255")
    return int(text)
