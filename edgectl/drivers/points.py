"""One interface over the three protocol drivers: a device's map points, read and written.

The role drivers and the field commands (`edgectl read`, `write`, `dump`) need the same
few things from any device whatever its protocol: open it (identify it, connect, subscribe),
poll the points of some poll groups, write a point with read-back, and dump what is on
the wire. `PointDevice` is that interface; `ModbusPoints`, `OpcUaPoints` and
`RedfishPoints` adapt the protocol drivers to it without changing how they decode.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol
from urllib.parse import quote

from edgectl.devicemaps import sunspec
from edgectl.devicemaps.readings import NO_ANSWER, Reading, Value
from edgectl.devicemaps.schema import DeviceMap, Point
from edgectl.drivers.modbus import POLL_GROUPS, ModbusDevice
from edgectl.drivers.opcua import OpcUaDevice
from edgectl.drivers.redfish import RedfishDevice
from edgectl.errors import ProtocolError, UsageError
from edgectl.transport.redfish import Json, RedfishAuth, RedfishClient

__all__ = [
    "POLL_GROUPS",
    "ModbusPoints",
    "OpcUaPoints",
    "PointDevice",
    "RedfishPoints",
    "is_text_point",
    "modbus_registers",
]

# An OPC UA subscription's first publish carries every variable's value; until it came,
# the cache holds this status.
_WAITING = "BadWaitingForInitialData"
_CHASSIS_ROOT = "/redfish/v1/Chassis"


class PointDevice(Protocol):
    """A device's map points over whatever protocol it speaks."""

    @property
    def device_id(self) -> str: ...

    @property
    def endpoint(self) -> str: ...

    @property
    def location(self) -> str:
        """Where the device is, for messages: endpoint and unit id or chassis."""

    @property
    def firmware(self) -> str | None:
        """The firmware version the device reported while being identified, if any."""

    @property
    def maps(self) -> Sequence[DeviceMap]:
        """The maps the device may match (several when the firmware version chooses)."""

    @property
    def device_map(self) -> DeviceMap | None:
        """The map in use, once `open()` has identified the device."""

    async def open(self) -> DeviceMap:
        """Connect and identify the device; the map that applies (a DeviceError if it fails)."""

    async def poll(self, groups: Collection[str] = POLL_GROUPS) -> dict[str, Reading]:
        """Read the points of `groups`; bad data becomes invalid Readings, never an error."""

    async def read(self, point: str) -> Reading:
        """Read one point now (ValueError if the map has no such point)."""

    async def write(self, point: str, value: Value) -> Reading:
        """Write `point` in its map unit; the value read back. ValueError for a point that is
        not writable or a value it cannot take."""

    def resolution(self, point: str) -> float | None:
        """One step of `point` on the wire in its unit, if it has a fixed one."""

    async def raw_dump(self) -> dict[str, Any]:
        """What is on the wire for every point (registers, node values, JSON resources)."""

    async def close(self) -> None: ...


def is_text_point(point: Point) -> bool:
    """Whether a point holds text rather than a number."""
    if point.type == "string" or point.variant == "String":
        return True
    if point.sunspec is not None:
        model_text, name = point.sunspec.split(".", 1)
        return sunspec.model_def(int(model_text)).point(name).type == "string"
    return False


class ModbusPoints:
    """A ModbusDevice (SunSpec or vendor map) as a PointDevice."""

    def __init__(self, device: ModbusDevice, maps: Sequence[DeviceMap]) -> None:
        self.device = device
        self._maps = tuple(maps)

    @property
    def device_id(self) -> str:
        return self.device.device_id

    @property
    def endpoint(self) -> str:
        return self.device.endpoint

    @property
    def location(self) -> str:
        return f"{self.device.endpoint} unit {self.device.unit}"

    @property
    def firmware(self) -> str | None:
        return self.device.firmware

    @property
    def maps(self) -> Sequence[DeviceMap]:
        return self._maps

    @property
    def device_map(self) -> DeviceMap | None:
        return self.device.device_map

    async def open(self) -> DeviceMap:
        if self.device.device_map is not None:
            return self.device.device_map
        return await self.device.connect_and_identify()

    async def poll(self, groups: Collection[str] = POLL_GROUPS) -> dict[str, Reading]:
        readings: dict[str, Reading] = {}
        for group in POLL_GROUPS:
            if group in groups:
                readings |= await self.device.poll(group)
        return _in_map_order(self.device.device_map, readings)

    async def read(self, point: str) -> Reading:
        return await self.device.read(point)

    async def write(self, point: str, value: Value) -> Reading:
        return await self.device.write(point, value)

    def resolution(self, point: str) -> float | None:
        return self.device.resolution(point)

    async def raw_dump(self) -> dict[str, Any]:
        raw = await self.device.raw_dump()
        out: dict[str, Any] = {
            "unit": self.device.unit,
            "firmware": raw["firmware"],
            "registers": {str(a): v for a, v in sorted(modbus_registers(raw).items())},
        }
        if "sunspec" in raw:
            out["sunspec"] = {
                "base": raw["sunspec"]["base"],
                "models": [
                    {"id": m["id"], "address": m["address"], "length": m["length"]}
                    for m in raw["sunspec"]["models"]
                ],
            }
        return out

    async def close(self) -> None:
        """The connection belongs to the shared transport: nothing to close here."""


def modbus_registers(raw: dict[str, Any]) -> dict[int, int]:
    """Address -> value of every register a ModbusDevice.raw_dump() shows: for a SunSpec
    device the marker, every model and the end model; for a vendor device the
    identification registers, the points and their scale factors."""
    registers: dict[int, int] = {}
    chain = raw.get("sunspec")
    if chain is not None:
        base = int(chain["base"])
        registers |= dict(zip(range(base, base + 2), sunspec.SUNS_MARKER, strict=True))
        end = base + 2
        for model in chain["models"]:
            start = int(model["address"])
            registers |= dict(enumerate(model["registers"], start))
            end = start + len(model["registers"])
        registers[end], registers[end + 1] = sunspec.END_MODEL_ID, 0
    for ref in (raw.get("modbus") or {}).values():
        registers |= dict(enumerate(ref["registers"], int(ref["address"])))
    for entry in raw.get("points", {}).values():
        if entry.get("address") is not None:
            registers |= dict(enumerate(entry.get("registers", []), int(entry["address"])))
        if entry.get("sf_address") is not None and entry.get("sf_register") is not None:
            registers[int(entry["sf_address"])] = int(entry["sf_register"])
    return registers


class OpcUaPoints:
    """An OpcUaDevice as a PointDevice: `open()` connects and waits for the subscription's
    first values (at most `first_values_s`), so that a one-shot read sees them."""

    def __init__(self, device: OpcUaDevice, endpoint: str, *, first_values_s: float = 2.0) -> None:
        self.device = device
        self._endpoint = endpoint
        self._first_values_s = first_values_s

    @property
    def device_id(self) -> str:
        return self.device.device_id

    @property
    def endpoint(self) -> str:
        return self._endpoint

    @property
    def location(self) -> str:
        return self._endpoint

    @property
    def firmware(self) -> str | None:
        return None

    @property
    def maps(self) -> Sequence[DeviceMap]:
        return (self.device.device_map,)

    @property
    def device_map(self) -> DeviceMap | None:
        return self.device.device_map

    async def open(self) -> DeviceMap:
        await self.device.connect()
        # The first notification carries every variable's value and is taken into the cache
        # at once, so the first value in the cache means they all are.
        deadline = time.monotonic() + self._first_values_s
        while time.monotonic() < deadline and all(
            r.reason == _WAITING or r.reason.startswith(NO_ANSWER)
            for r in self.device.poll().values()
        ):
            await asyncio.sleep(0.02)
        return self.device.device_map

    async def poll(self, groups: Collection[str] = POLL_GROUPS) -> dict[str, Reading]:
        points = self.device.device_map.points
        return {n: r for n, r in self.device.poll().items() if points[n].poll in groups}

    async def read(self, point: str) -> Reading:
        readings = self.device.poll()
        if point not in readings:
            raise ValueError(f"{self.device_id}: no point {point!r}")
        return readings[point]

    async def write(self, point: str, value: Value) -> Reading:
        return await self.device.write(point, value)

    def resolution(self, point: str) -> float | None:
        spec = self.device.device_map.points.get(point)
        if spec is None or spec.variant in ("Float", "Double", "String", None):
            return None
        return abs(spec.scale)

    async def raw_dump(self) -> dict[str, Any]:
        raw = await self.device.raw_dump()
        return {
            "namespace_uri": raw["namespace_uri"],
            "namespace_index": raw["namespace_index"],
            "nodes": raw["points"],
        }

    async def close(self) -> None:
        await self.device.close()


class RedfishPoints:
    """A RedfishDevice as a PointDevice. The chassis is the one named in the endpoint
    (…/redfish/v1/Chassis/<id>) or, found at `open()`, the chassis whose id is the device
    id, else the BMC's only chassis."""

    def __init__(
        self,
        device_id: str,
        endpoint: str,
        device_map: DeviceMap,
        make: Callable[[str], RedfishDevice],
        *,
        chassis_id: str | None = None,
        auth: RedfishAuth | None = None,
        timeout_s: float = 2.0,
    ) -> None:
        self._device_id = device_id
        self._endpoint = endpoint
        self._map = device_map
        self._make = make
        self.chassis_id = chassis_id
        self._auth = auth
        self._timeout_s = timeout_s
        self.device: RedfishDevice | None = None

    @property
    def device_id(self) -> str:
        return self._device_id

    @property
    def endpoint(self) -> str:
        return self._endpoint

    @property
    def location(self) -> str:
        if self.chassis_id is None:
            return self._endpoint  # the chassis is found at open()
        return f"{self._endpoint} chassis {self.chassis_id}"

    @property
    def firmware(self) -> str | None:
        return None

    @property
    def maps(self) -> Sequence[DeviceMap]:
        return (self._map,)

    @property
    def device_map(self) -> DeviceMap | None:
        return self._map if self.device is not None else None

    async def open(self) -> DeviceMap:
        if self.device is None:
            if self.chassis_id is None:
                self.chassis_id = await self._find_chassis()
            self.device = self._make(self.chassis_id)
        return self._map

    async def poll(self, groups: Collection[str] = POLL_GROUPS) -> dict[str, Reading]:
        device = await self._opened()
        names = [n for n, p in self._map.points.items() if p.poll in groups]
        return await device.poll(names) if names else {}

    async def read(self, point: str) -> Reading:
        device = await self._opened()
        return (await device.poll([point]))[point]

    async def write(self, point: str, value: Value) -> Reading:
        device = await self._opened()
        if isinstance(value, str):
            raise ValueError(f"{self.device_id}: {point}: {value!r} is not a number")
        return await device.write(point, float(value))

    def resolution(self, point: str) -> float | None:
        return None

    async def raw_dump(self) -> dict[str, Any]:
        device = await self._opened()
        return {"chassis": self.chassis_id, "resources": await device.raw_dump()}

    async def close(self) -> None:
        if self.device is not None:
            await self.device.close()

    async def _opened(self) -> RedfishDevice:
        await self.open()
        assert self.device is not None
        return self.device

    async def _find_chassis(self) -> str:
        client = RedfishClient(
            self._endpoint, device=self.device_id, auth=self._auth, timeout_s=self._timeout_s
        )
        try:
            collection, _ = await client.get(_CHASSIS_ROOT)
        finally:
            await client.close()
        members = _member_ids(collection)
        if self.device_id in members:
            return self.device_id
        if len(members) == 1:
            return members[0]
        if not members:
            raise ProtocolError(self.device_id, f"{self._endpoint} serves no chassis")
        raise UsageError(
            f"{self.device_id}: {self._endpoint} serves chassis {', '.join(members)}; name one "
            f"in the endpoint: {self._endpoint}{_CHASSIS_ROOT}/{quote(members[0], safe='')}"
        )


def _member_ids(collection: Json) -> list[str]:
    ids = []
    for member in collection.get("Members", []):
        link = member.get("@odata.id") if isinstance(member, dict) else None
        if isinstance(link, str) and link.rstrip("/"):
            ids.append(link.rstrip("/").rsplit("/", 1)[-1])
    return ids


def _in_map_order(device_map: DeviceMap | None, readings: dict[str, Reading]) -> dict[str, Reading]:
    if device_map is None:
        return readings
    return {name: readings[name] for name in device_map.points if name in readings}
