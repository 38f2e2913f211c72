"""Dumps of a device's wire data, and their replay through the real decoding path.

`make_dump()` records what a device holds on the wire (Modbus registers by address, OPC UA
node values with their status, Redfish JSON resources) with the readings decoded from it,
as one JSON object: what `edgectl dump` writes. `replay_points()` serves such a dump to the
same protocol driver a live device gets, in place of the transport, so that a test
decodes recorded data exactly as the daemon would (as python-kasa's fake transports serve
recorded device answers to its real protocol classes):

    Modbus    ReplayRegisters answers register reads (and takes writes) from the dump, as
              a device would: an address the dump does not hold is Modbus exception 2
              (illegal data address), another unit id exception 11
    OPC UA    a link that serves the dumped node values in place of the subscription
    Redfish   a client that serves the dumped resources and merges PATCHes into them

Replayed writes change only the replay's copy, so a read-back shows them.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from edgectl.devicemaps.loader import MapIndex, load_maps
from edgectl.devicemaps.readings import Reading
from edgectl.devicemaps.schema import DeviceMap
from edgectl.drivers.modbus import ModbusDevice
from edgectl.drivers.opcua import OpcUaDevice
from edgectl.drivers.points import ModbusPoints, OpcUaPoints, PointDevice, RedfishPoints
from edgectl.drivers.redfish import RedfishDevice
from edgectl.errors import InputError, Problem
from edgectl.transport.modbus import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    ModbusEndpoint,
    ModbusExceptionResponse,
    ModbusTransport,
)
from edgectl.transport.opcua import OpcUaClient, Sample, Scalar, coerce
from edgectl.transport.redfish import Json, RedfishClient, RedfishStatusError

__all__ = [
    "DUMP_FORMAT",
    "ReplayRegisters",
    "ReplayTransport",
    "load_dump",
    "make_dump",
    "reading_json",
    "readings_from_dump",
    "replay_points",
    "replay_readings",
]

DUMP_FORMAT = "edgectl-dump/1"
_ILLEGAL_DATA_ADDRESS = 2
_GATEWAY_NO_RESPONSE = 11
_REPLAY_ETAG = '"replay"'


async def make_dump(points: PointDevice, *, protocol: str, maps: MapIndex) -> dict[str, Any]:
    """Open `points`, poll every point and record its wire data; `protocol` is the site's
    (modbus-tcp, modbus-rtu, opcua, redfish)."""
    device_map = await points.open()
    readings = await points.poll()
    raw = await points.raw_dump()
    info = device_map.map
    return {
        "format": DUMP_FORMAT,
        "device": points.device_id,
        "protocol": protocol,
        "endpoint": points.endpoint,
        "profile": info.profile,
        "map": {
            "file": maps.file_of(device_map),
            "vendor": info.vendor,
            "model": info.model,
            "firmware": info.firmware,
        },
        **raw,
        "readings": {name: reading_json(r) for name, r in readings.items()},
    }


def reading_json(reading: Reading) -> dict[str, Any]:
    """A Reading as JSON (without its time: a dump is replayed at another)."""
    value = reading.value
    if isinstance(value, float) and not math.isfinite(value):
        value = None
    return {"value": value, "unit": reading.unit, "valid": reading.valid, "reason": reading.reason}


def load_dump(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a dump file; InputError if it is not one."""
    file = os.fspath(path)
    try:
        data = json.loads(Path(file).read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError([Problem(file, "", f"cannot read: {exc.strerror or exc}")]) from None
    except ValueError as exc:
        raise InputError([Problem(file, "", f"not JSON: {exc}")]) from None
    check_dump(data, file)
    return dict(data)


def check_dump(data: Any, file: str = "dump") -> None:
    """InputError unless `data` has what a replay needs."""
    if not isinstance(data, dict) or data.get("format") != DUMP_FORMAT:
        raise InputError([Problem(file, "format", f'expected "{DUMP_FORMAT}"')])
    needed = {
        "modbus-tcp": ("unit", "registers"),
        "modbus-rtu": ("unit", "registers"),
        "opcua": ("namespace_uri", "nodes"),
        "redfish": ("chassis", "resources"),
    }
    protocol = data.get("protocol")
    if protocol not in needed:
        raise InputError([Problem(file, "protocol", f"expected one of {', '.join(needed)}")])
    missing = [k for k in ("device", "endpoint", "profile", *needed[protocol]) if k not in data]
    if missing:
        raise InputError([Problem(file, key, "missing required key") for key in missing])


def readings_from_dump(dump: Mapping[str, Any]) -> dict[str, Reading]:
    """The readings a dump recorded (their time is 0)."""
    return {
        name: Reading(entry["value"], entry["unit"], 0.0, entry["valid"], entry["reason"])
        for name, entry in dump["readings"].items()
    }


def replay_points(
    dump: Mapping[str, Any],
    *,
    maps: MapIndex | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> PointDevice:
    """A PointDevice whose protocol driver is served by `dump` instead of the wire."""
    check_dump(dump)
    index = maps if maps is not None else load_maps()
    device_maps = index.for_profile(dump["profile"])
    device_id, endpoint = str(dump["device"]), str(dump["endpoint"])
    protocol = dump["protocol"]
    if protocol in ("modbus-tcp", "modbus-rtu"):
        registers = {int(a): int(v) for a, v in dump["registers"].items()}
        io = ReplayRegisters(endpoint, int(dump["unit"]), registers)
        driver = ModbusDevice(
            device_id, endpoint, int(dump["unit"]), device_maps, ReplayTransport(io), clock
        )
        return ModbusPoints(driver, device_maps)
    if protocol == "opcua":
        opcua = _ReplayOpcUaDevice(device_id, endpoint, device_maps[0], dump, clock)
        return OpcUaPoints(opcua, endpoint, first_values_s=0.0)
    resources = dict(dump["resources"])
    chassis = str(dump["chassis"])

    def make(chassis_id: str) -> RedfishDevice:
        return _ReplayRedfishDevice(
            device_id, endpoint, chassis_id, device_maps[0], resources, clock
        )

    return RedfishPoints(device_id, endpoint, device_maps[0], make, chassis_id=chassis)


async def replay_readings(
    dump: Mapping[str, Any], *, maps: MapIndex | None = None
) -> dict[str, Reading]:
    """Every point of a dump, decoded by the real driver from the dumped wire data."""
    points = replay_points(dump, maps=maps)
    try:
        await points.open()
        return await points.poll()
    finally:
        await points.close()


class ReplayRegisters(ModbusEndpoint):
    """Holding registers of one unit, served from a dump (the RegisterIO a ModbusDevice
    reads through), answering as a device: exceptions for what it does not hold."""

    def __init__(self, endpoint: str, unit: int, registers: Mapping[int, int]) -> None:
        super().__init__(endpoint)
        self.unit = unit
        self.registers = dict(registers)
        self.writes: list[tuple[int, list[int]]] = []

    async def read_holding_registers(
        self,
        unit: int,
        address: int,
        count: int,
        *,
        device: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
    ) -> list[int]:
        self._check(unit, range(address, address + count), device, f"read {count} at {address}")
        return [self.registers[a] for a in range(address, address + count)]

    async def write_registers(
        self,
        unit: int,
        address: int,
        values: Sequence[int],
        *,
        device: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        words = [int(v) for v in values]
        addresses = range(address, address + len(words))
        self._check(unit, addresses, device, f"write {len(words)} at {address}")
        self.registers.update(zip(addresses, words, strict=True))
        self.writes.append((address, words))

    async def close(self) -> None:
        """Nothing is open."""

    def _check(self, unit: int, addresses: Iterable[int], device: str, what: str) -> None:
        if unit != self.unit:
            raise ModbusExceptionResponse(device, _GATEWAY_NO_RESPONSE, what)
        if any(a not in self.registers for a in addresses):
            raise ModbusExceptionResponse(device, _ILLEGAL_DATA_ADDRESS, what)


class ReplayTransport(ModbusTransport):
    """A ModbusTransport whose every endpoint is one ReplayRegisters."""

    def __init__(self, registers: ReplayRegisters) -> None:
        super().__init__()
        self.replay = registers

    def endpoint(self, endpoint: str) -> ModbusEndpoint:
        return self.replay

    async def close(self) -> None:
        """Nothing is open."""


class _ReplayLink(OpcUaClient):
    """The dumped node values in place of a session and its subscription."""

    def __init__(
        self,
        device: str,
        endpoint: str,
        device_map: DeviceMap,
        dump: Mapping[str, Any],
    ) -> None:
        assert device_map.opcua is not None
        paths = {}
        for name, point in device_map.points.items():
            assert point.node is not None
            paths[name] = (device, *point.node.split("."))
        super().__init__(device, endpoint, device_map.opcua.namespace_uri, paths, "none")
        self._nodes: dict[str, dict[str, Any]] = {
            name: dict(entry) for name, entry in dump["nodes"].items()
        }
        self._index = dump.get("namespace_index")
        self._up = False

    @property
    def connected(self) -> bool:
        return self._up

    @property
    def last_error(self) -> str:
        return ""

    @property
    def namespace_index(self) -> int | None:
        return self._index if isinstance(self._index, int) else None

    def latest(self) -> dict[str, Sample]:
        return {name: self._sample(name) for name in self._nodes}

    def age_s(self) -> float | None:
        return 0.0 if self._up else None

    def node_ids(self) -> dict[str, str]:
        return {name: str(entry.get("node_id")) for name, entry in self._nodes.items()}

    async def connect(self) -> None:
        self._up = True

    async def close(self) -> None:
        self._up = False

    async def read(self, keys: Iterable[str] | None = None) -> dict[str, Sample]:
        return {name: self._sample(name) for name in (self._nodes if keys is None else keys)}

    async def write(self, key: str, value: Scalar, variant: str) -> None:
        self._nodes[key] |= {"value": coerce(value, variant), "status": "Good"}

    def _sample(self, name: str) -> Sample:
        entry = self._nodes.get(name, {})
        status = str(entry.get("status", "BadNodeIdUnknown"))
        stamp = entry.get("source_time")
        when = datetime.fromisoformat(stamp) if isinstance(stamp, str) else None
        good = status.startswith("Good")
        return Sample(entry.get("value") if good else None, good, status, when)


class _ReplayOpcUaDevice(OpcUaDevice):
    def __init__(
        self,
        device_id: str,
        endpoint: str,
        device_map: DeviceMap,
        dump: Mapping[str, Any],
        clock: Callable[[], float],
    ) -> None:
        super().__init__(device_id, endpoint, device_map, "none", clock)
        self._link = _ReplayLink(device_id, endpoint, device_map, dump)


class _ReplayClient(RedfishClient):
    """The dumped resources (by their path below the chassis) in place of a BMC."""

    def __init__(self, endpoint: str, device: str, chassis_id: str, resources: Json) -> None:
        super().__init__(endpoint, device=device)
        self._prefix = f"/redfish/v1/Chassis/{quote(chassis_id, safe='')}/"
        self._docs: Json = copy.deepcopy(resources)

    def etag(self, path: str) -> str | None:
        return _REPLAY_ETAG

    async def get(self, path: str) -> tuple[Json, str | None]:
        return copy.deepcopy(self._doc(path, "GET")), _REPLAY_ETAG

    async def patch(self, path: str, body: Mapping[str, Any], etag: str | None = None) -> Json:
        doc = self._doc(path, "PATCH")
        _merge(doc, body)
        return copy.deepcopy(doc)

    async def close(self) -> None:
        """Nothing is open."""

    def _doc(self, path: str, method: str) -> Json:
        key = path.removeprefix(self._prefix).strip("/")
        doc = self._docs.get(key)
        if not isinstance(doc, dict):
            raise RedfishStatusError(self.device, 404, "not in the dump", f"{method} {path}")
        return doc


class _ReplayRedfishDevice(RedfishDevice):
    def __init__(
        self,
        device_id: str,
        endpoint: str,
        chassis_id: str,
        device_map: DeviceMap,
        resources: Json,
        clock: Callable[[], float],
    ) -> None:
        super().__init__(device_id, endpoint, chassis_id, device_map, None, clock)
        self._client = _ReplayClient(endpoint, device_id, chassis_id, resources)


def _merge(target: Any, patch: Any) -> Any:
    """A PATCH body merged into `target`: objects by key, arrays item by item ({} keeps)."""
    if isinstance(patch, Mapping) and isinstance(target, dict):
        for key, value in patch.items():
            target[key] = _merge(target[key], value) if key in target else copy.deepcopy(value)
        return target
    if isinstance(patch, list) and isinstance(target, list):
        for i, item in enumerate(patch):
            if i < len(target):
                target[i] = _merge(target[i], item)
            else:
                target.append(copy.deepcopy(item))
        return target
    return copy.deepcopy(patch)
