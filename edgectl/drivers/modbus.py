"""A map-driven Modbus device: SunSpec or vendor map in, Readings out, setpoints written.

The driver is generic: it knows registers, codecs and maps, not roles. A map's scale
turns wire values into the point's unit; percentages of a rating and sign conventions
are the role drivers' business. Lifecycle: `connect_and_identify()` finds out which map
applies (SunSpec: discovery and the map's models; vendor: fingerprint and firmware
version), then `poll(group)` reads the points of one poll group in few batched
requests. Bad data never raises: it becomes an invalid Reading with a reason. Only the
transport's DeviceErrors propagate (no answer, no connection, a Modbus exception),
which the caller turns into stale readings.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from edgectl.devicemaps import sunspec
from edgectl.devicemaps.codec import PointCodec, modbus_codec, sunspec_codec
from edgectl.devicemaps.loader import ANY_FIRMWARE, select_map
from edgectl.devicemaps.readings import Reading, Value
from edgectl.devicemaps.schema import DeviceMap, Point, RegisterRef
from edgectl.errors import ProtocolError, UnsupportedDevice
from edgectl.transport.modbus import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    MAX_READ_COUNT,
    ModbusTransport,
    plan_reads,
)

__all__ = ["POLL_GROUPS", "ModbusDevice"]

POLL_GROUPS = ("fast", "slow", "once")
# A SunSpec chain serves every register from its base to the end model, so reads may
# span short gaps; a vendor map may leave unserved holes, so reads there do not.
_SUNSPEC_MAX_GAP = 16
_VENDOR_MAX_GAP = 0


@dataclass(frozen=True, slots=True)
class _Wire:
    """Where a point lives on this device and how to decode it."""

    name: str
    point: Point
    codec: PointCodec
    address: int | None  # None: the device does not carry it (reason in `missing`)
    sf_address: int | None = None
    missing: str = ""


class ModbusDevice:
    """One Modbus device (a unit id at an endpoint) driven by its device map(s)."""

    def __init__(
        self,
        device_id: str,
        endpoint: str,
        unit: int,
        device_maps: DeviceMap | Sequence[DeviceMap],
        transport: ModbusTransport,
        clock: Callable[[], float] = time.monotonic,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        max_gap: int | None = None,
    ) -> None:
        self.device_id = device_id
        self.unit = unit
        self.timeout_s = timeout_s
        self.retries = retries
        self._maps = [device_maps] if isinstance(device_maps, DeviceMap) else list(device_maps)
        if not self._maps:
            raise ValueError(f"{device_id}: no device map")
        protocols = {m.map.protocol for m in self._maps}
        profiles = {m.map.profile for m in self._maps}
        if len(profiles) != 1 or not protocols <= {"sunspec", "modbus"} or len(protocols) != 1:
            raise ValueError(
                f"{device_id}: the maps must be Modbus or SunSpec maps of one profile, got "
                f"profiles {sorted(profiles)}, protocols {sorted(protocols)}"
            )
        self.protocol = protocols.pop()
        self._io = transport.endpoint(endpoint)
        self._clock = clock
        default_gap = _SUNSPEC_MAX_GAP if self.protocol == "sunspec" else _VENDOR_MAX_GAP
        self._max_gap = default_gap if max_gap is None else max_gap
        self.device_map: DeviceMap | None = None
        self.discovery: sunspec.Discovery | None = None
        self.firmware: str | None = None
        self._wires: dict[str, _Wire] = {}
        self._last_sf: dict[str, int | None] = {}
        # Per poll group: its points and the batched reads that cover them. The layout is
        # fixed once the device is identified, so the plan is made once per identification.
        self._plans: dict[str, tuple[list[_Wire], list[tuple[int, int]]]] = {}
        self._plans_of: dict[str, _Wire] | None = None

    @property
    def endpoint(self) -> str:
        return self._io.name

    @property
    def identified(self) -> bool:
        return self.device_map is not None

    @property
    def model_addresses(self) -> dict[int, int]:
        """SunSpec: where each model's ID register is (first instance of each)."""
        if self.discovery is None:
            return {}
        found: dict[int, int] = {}
        for model in self.discovery:
            found.setdefault(model.id, model.address)
        return found

    async def connect_and_identify(self) -> DeviceMap:
        """Find which map applies to the device and where its points are."""
        if self.protocol == "sunspec":
            chosen = await self._identify_sunspec()
        else:
            chosen = await self._identify_vendor()
        self.device_map = chosen
        return chosen

    async def poll(self, group: str = "fast") -> dict[str, Reading]:
        """Read every point of a poll group; never raises for bad data."""
        if group not in POLL_GROUPS:
            raise ValueError(f"poll group {group!r}: expected one of {', '.join(POLL_GROUPS)}")
        if not self.identified:
            await self.connect_and_identify()
        wires, reads = self._plan(group)
        registers = await self._read_plan(reads)
        t_s = self._clock()
        return {w.name: self._decode(w, registers, t_s) for w in wires}

    def _plan(self, group: str) -> tuple[list[_Wire], list[tuple[int, int]]]:
        if self._plans_of is not self._wires:
            self._plans, self._plans_of = {}, self._wires
        plan = self._plans.get(group)
        if plan is None:
            wires = [w for w in self._wires.values() if w.point.poll == group]
            plan = self._plans[group] = (wires, self._reads(_spans(wires)))
        return plan

    async def read(self, point: str) -> Reading:
        """Read one point now."""
        wire = self._wire(point)
        registers = await self._read_spans(_spans([wire]))
        return self._decode(wire, registers, self._clock())

    async def write(self, point: str, value: Value) -> Reading:
        """Write a point and return what the device reads back.

        ValueError (naming the point) for a point that is not writable or a value out of
        its range or not representable; DeviceError from the transport.
        """
        wire = self._wire(point)
        if wire.point.access != "rw":
            raise ValueError(f"{self.device_id}: point {point} is read-only")
        if wire.address is None:
            raise UnsupportedDevice(self.device_id, f"point {point}: {wire.missing}")
        sf_raw = None
        if wire.sf_address is not None:
            sf_raw = (await self._read(wire.sf_address, 1))[0]
        words = wire.codec.encode(value, sf_raw)
        await self._io.write_registers(
            self.unit,
            wire.address,
            words,
            device=self.device_id,
            timeout_s=self.timeout_s,
            retries=self.retries,
        )
        return await self.read(point)

    def resolution(self, point: str) -> float | None:
        """One raw step of `point` in its unit, as of the last read (None: float or unknown)."""
        wire = self._wire(point)
        if wire.sf_address is not None and point not in self._last_sf:
            return None
        return wire.codec.lsb(self._last_sf.get(point))

    async def raw_dump(self) -> dict[str, Any]:
        """The raw registers of every model (SunSpec) or register (vendor), for fixtures."""
        if not self.identified:
            await self.connect_and_identify()
        assert self.device_map is not None
        dump: dict[str, Any] = {
            "device": self.device_id,
            "endpoint": self.endpoint,
            "unit": self.unit,
            "profile": self.device_map.map.profile,
            "firmware": self.firmware,
        }
        if self.discovery is not None:
            models = []
            for model in self.discovery:
                regs = await self._read_spans([(model.address, model.end - model.address)])
                models.append(
                    {
                        "id": model.id,
                        "address": model.address,
                        "length": model.length,
                        "registers": [regs[a] for a in range(model.address, model.end)],
                    }
                )
            dump["sunspec"] = {"base": self.discovery.base, "models": models}
        else:
            section = self.device_map.modbus
            refs = {}
            for key in ("fingerprint", "firmware_version"):
                ref = getattr(section, key) if section is not None else None
                if ref is not None:
                    refs[key] = {"address": ref.address, "registers": await self._read_ref(ref)}
            dump["modbus"] = refs
        wires = list(self._wires.values())
        registers = await self._read_spans(_spans(wires))
        points: dict[str, Any] = {}
        for wire in wires:
            entry: dict[str, Any] = {"address": wire.address}
            if wire.address is not None:
                entry["registers"] = _take(registers, wire.address, wire.codec.count)
            if wire.sf_address is not None:
                entry["sf_address"] = wire.sf_address
                entry["sf_register"] = registers.get(wire.sf_address)
            points[wire.name] = entry
        dump["points"] = points
        return dump

    async def _identify_sunspec(self) -> DeviceMap:
        discovery = await sunspec.discover(self._read, self.device_id)
        self.discovery = discovery
        self.firmware = await self._sunspec_version(discovery)
        if len(self._maps) == 1 and self._maps[0].map.firmware.strip() == ANY_FIRMWARE:
            chosen = self._maps[0]
        else:
            chosen = select_map(self._maps, self.firmware, self.device_id)
        assert chosen.sunspec is not None  # the schema requires it for protocol sunspec
        missing = [m for m in chosen.sunspec.models if discovery.find(m) is None]
        if missing:
            raise UnsupportedDevice(
                self.device_id,
                f"SunSpec model(s) {missing} of profile {chosen.map.profile!r} not on the "
                f"device (it has {discovery.ids})",
            )
        self._wires = {
            name: self._sunspec_wire(name, p, discovery) for name, p in chosen.points.items()
        }
        return chosen

    def _sunspec_wire(self, name: str, point: Point, discovery: sunspec.Discovery) -> _Wire:
        assert point.sunspec is not None  # the schema requires it for protocol sunspec
        model_text, point_name = point.sunspec.split(".", 1)
        definition = sunspec.model_def(int(model_text))
        pdef = definition.point(point_name)
        codec = sunspec_codec(name, point, pdef)
        model = discovery.find(definition.id)
        assert model is not None  # checked by the caller
        if not model.holds(pdef):
            return _Wire(
                name,
                point,
                codec,
                None,
                missing=(
                    f"model {model.id} on the device has L={model.length}, too short for "
                    f"{pdef.name} at offset {pdef.offset}"
                ),
            )
        sf_address = None
        if isinstance(pdef.sf, str):
            sf_def = definition.point(pdef.sf)
            if not model.holds(sf_def):
                return _Wire(
                    name,
                    point,
                    codec,
                    None,
                    missing=(
                        f"model {model.id} on the device has L={model.length}, too short for "
                        f"{sf_def.name}"
                    ),
                )
            sf_address = model.address + sf_def.offset
        return _Wire(name, point, codec, model.address + pdef.offset, sf_address)

    async def _sunspec_version(self, discovery: sunspec.Discovery) -> str | None:
        common = discovery.find(1)
        if common is None:
            return None
        pdef = sunspec.model_def(1).point("Vr")
        if not common.holds(pdef):
            return None
        codec = PointCodec("Vr", "string", size=pdef.size, sentinels=True)
        reading = codec.decode(await self._read(common.address + pdef.offset, pdef.size), 0.0)
        return str(reading.value).strip() if reading.valid else None

    async def _identify_vendor(self) -> DeviceMap:
        # Maps of one profile usually share their identification registers; group by them
        # so that each distinct pair is read once.
        groups: dict[tuple[RegisterRef | None, RegisterRef | None], list[DeviceMap]] = {}
        for device_map in self._maps:
            section = device_map.modbus
            key = (section.fingerprint, section.firmware_version) if section else (None, None)
            groups.setdefault(key, []).append(device_map)
        mismatches = []
        for (fingerprint, firmware_ref), maps in groups.items():
            if fingerprint is not None:
                found = await self._fingerprint(fingerprint)
                expected = (fingerprint.equals or "").strip()
                if found != expected:
                    mismatches.append(
                        f"register {fingerprint.address} holds {found!r}, "
                        f"{maps[0].map.vendor} {maps[0].map.model} has {expected!r}"
                    )
                    continue
            self.firmware = await self._vendor_version(firmware_ref) if firmware_ref else None
            chosen = select_map(maps, self.firmware, self.device_id)
            section = chosen.modbus
            self._wires = {
                name: _Wire(
                    name, p, modbus_codec(name, p, section), p.address, p.scale_factor_address
                )
                for name, p in chosen.points.items()
            }
            return chosen
        raise UnsupportedDevice(self.device_id, "not the expected device: " + "; ".join(mismatches))

    async def _fingerprint(self, ref: RegisterRef) -> str:
        try:
            words = await self._read_ref(ref)
        except ProtocolError as exc:
            return f"<not served: {exc}>"
        reading = _ref_codec(ref).decode(words, 0.0)
        return str(reading.value).strip() if reading.valid else f"<{reading.reason}>"

    async def _vendor_version(self, ref: RegisterRef) -> str | None:
        words = await self._read_ref(ref)
        if ref.encoding == "major_minor":
            return f"{words[0] >> 8}.{words[0] & 0xFF}"
        reading = _ref_codec(ref).decode(words, 0.0)
        return str(reading.value).strip() if reading.valid else None

    async def _read_ref(self, ref: RegisterRef) -> list[int]:
        return await self._read(ref.address, _ref_codec(ref).count)

    def _wire(self, point: str) -> _Wire:
        if not self.identified:
            raise RuntimeError(f"{self.device_id}: connect_and_identify() first")
        try:
            return self._wires[point]
        except KeyError:
            raise ValueError(
                f"{self.device_id}: no point {point!r} (points: {', '.join(self._wires)})"
            ) from None

    def _decode(self, wire: _Wire, registers: dict[int, int], t_s: float) -> Reading:
        if wire.address is None:
            return Reading.invalid(wire.missing, wire.point.unit, t_s)
        sf_raw = registers.get(wire.sf_address) if wire.sf_address is not None else None
        self._last_sf[wire.name] = sf_raw
        return wire.codec.decode(_take(registers, wire.address, wire.codec.count), t_s, sf_raw)

    async def _read(self, address: int, count: int) -> list[int]:
        return await self._io.read_holding_registers(
            self.unit,
            address,
            count,
            device=self.device_id,
            timeout_s=self.timeout_s,
            retries=self.retries,
        )

    def _reads(self, spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
        return plan_reads(spans, max_count=MAX_READ_COUNT, max_gap=self._max_gap)

    async def _read_spans(self, spans: Iterable[tuple[int, int]]) -> dict[int, int]:
        return await self._read_plan(self._reads(spans))

    async def _read_plan(self, reads: Iterable[tuple[int, int]]) -> dict[int, int]:
        registers: dict[int, int] = {}
        for start, count in reads:
            words = await self._read(start, count)
            registers.update(zip(range(start, start + count), words, strict=False))
        return registers


def _spans(wires: Iterable[_Wire]) -> list[tuple[int, int]]:
    spans = []
    for wire in wires:
        if wire.address is not None:
            spans.append((wire.address, wire.codec.count))
        if wire.sf_address is not None:
            spans.append((wire.sf_address, 1))
    return spans


def _take(registers: dict[int, int], address: int, count: int) -> list[int]:
    # A register missing from the answer shortens the list: the codec reports it.
    return [registers[a] for a in range(address, address + count) if a in registers]


def _ref_codec(ref: RegisterRef) -> PointCodec:
    if ref.type == "string":
        return PointCodec("ref", "string", size=ref.size)
    return PointCodec("ref", ref.type)
