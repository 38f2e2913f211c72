"""Serve simulated devices over Modbus/TCP or RTU: pymodbus's server on SimDevice registers.

Each SimUnit (a DeviceState, a unit id) becomes one pymodbus SimDevice laid out from its
map. A SunSpec device carries the chain at 40000: "SunS", model 1 (Mn, Md, SN, Vr,
DA), every model of the map at its definition's offsets with the definition's L (one
instance of a variable group unless told otherwise), then the end model. Every point
the map does not drive holds its type's "not implemented" sentinel, and each scale
factor the map's points use is chosen so that the point's whole range fits its type.
A vendor device serves its fingerprint, firmware version and points, nothing else.

Values are live: each read refreshes the registers it covers from DeviceState.read()
and each write is decoded and handed to DeviceState.write() (a write outside a
point's range is refused with ILLEGAL VALUE, one to a read-only register with ILLEGAL
ADDRESS). The device's faults apply per request: offline and timeout drop the request
(no answer: a dead device and one that never answers look alike over Modbus), latency
delays the answer, garbage answers with random registers, not_implemented serves the
sentinels, stuck is DeviceState's. Function codes 3, 6 and 16 (and 4, 23) are served.

This module is part of the simulator, not of the controller: it imports pymodbus's
server, which only transport/ and sim/ may.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import tty
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from packaging.version import InvalidVersion, Version
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edgectl.devicemaps import sunspec
from edgectl.devicemaps.codec import (
    TYPES,
    PointCodec,
    decode_scale_factor,
    modbus_codec,
    not_implemented_registers,
    sunspec_codec,
)
from edgectl.devicemaps.schema import DeviceMap, RegisterRef
from edgectl.sim.state import DeviceState

__all__ = ["SUNSPEC_BASE", "ModbusSimServer", "PtyLink", "SimUnit"]

log = logging.getLogger(__name__)

SUNSPEC_BASE = 40000
_WRITE_CODES = frozenset({6, 16, 23})
_SF_SEARCH = range(-3, 11)  # the finest scale factor that fits wins


@dataclass
class SimUnit:
    """One simulated device on a server: its state and unit id, and how it presents itself."""

    state: DeviceState
    unit: int = 1
    # What the device reports as its firmware (vendor firmware register, SunSpec 1.Vr);
    # default: the lowest version the map covers.
    firmware: str | None = None
    # Scale factors to serve instead of the chosen ones: "103.W_SF" (SunSpec model.point)
    # or a vendor point's name (its scale_factor_address register).
    scale_factors: Mapping[str, int] = field(default_factory=dict)
    # Instances of a SunSpec variable group, by "model.group" ("160.module"); default 1.
    instances: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Served:
    """A map point as the simulator serves it."""

    name: str
    address: int
    codec: PointCodec
    sf_address: int | None


class _Device:
    """The registers of one SimUnit and the action that keeps them live."""

    def __init__(self, unit: SimUnit, rng: random.Random) -> None:
        self.unit = unit
        self.state = unit.state
        self._rng = rng
        self.image: dict[int, int] = {}
        self.writable: set[int] = set()
        self.points: list[_Served] = []
        self.model_addresses: dict[int, int] = {}
        device_map = unit.state.device_map
        if device_map.map.protocol == "sunspec":
            self._lay_out_sunspec(device_map)
        elif device_map.map.protocol == "modbus":
            self._lay_out_vendor(device_map)
        else:
            raise ValueError(
                f"{unit.state.device_id}: a {device_map.map.protocol} map is not served over Modbus"
            )
        self._by_register: dict[int, list[_Served]] = {}
        for point in self.points:
            for address in range(point.address, point.address + point.codec.count):
                self._by_register.setdefault(address, []).append(point)

    def sim_device(self) -> SimDevice:
        blocks = [
            SimData(
                start,
                values=[self.image[a] for a in range(start, start + count)],
                datatype=DataType.REGISTERS,
            )
            for start, count in _runs(self.image)
        ]
        return SimDevice(self.unit.unit, blocks, action=self.action)

    async def action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        faults = self.state.faults
        if faults.offline or faults.timeout:
            # The server runs with ignore_missing_devices: this request gets no answer.
            raise NoSuchIdException(f"{self.state.device_id} does not answer")
        if faults.latency_s > 0:
            await asyncio.sleep(faults.latency_s)
        if set_values is not None and function_code in _WRITE_CODES:
            return self.write(address, [int(v) for v in set_values])
        self.refresh(address, count)
        served = {a: self.image[a] for a in range(address, address + count)}
        if faults.garbage:
            for a in self._garbled(address, count):
                served[a] = self._rng.randrange(0x10000)
        for a, value in served.items():
            registers[a - start_address] = value
        return None

    def refresh(self, address: int, count: int) -> None:
        """Write the live value of every point overlapping [address, address+count)."""
        for point in self._overlapping(address, count):
            value = self.state.read(point.name)
            words = not_implemented_registers(point.codec.type, point.codec.count)
            if value is not None:
                sf_raw = self.image.get(point.sf_address) if point.sf_address is not None else None
                if point.codec.sf_register and decode_scale_factor(sf_raw)[0] is None:
                    sf_raw = 0  # a device with a broken scale factor still serves numbers
                try:
                    words = point.codec.encode(value, sf_raw, check_range=False)
                except ValueError as exc:
                    log.debug(
                        "%s: serving %s as not implemented: %s",
                        self.state.device_id,
                        point.name,
                        exc,
                    )
            for i, word in enumerate(words):
                self.image[point.address + i] = word

    def write(self, address: int, values: list[int]) -> ExcCodes | None:
        addresses = range(address, address + len(values))
        if any(a not in self.writable for a in addresses):
            return ExcCodes.ILLEGAL_ADDRESS
        image = dict(self.image)
        image.update(zip(addresses, values, strict=True))
        decoded = []
        for point in self._overlapping(address, len(values)):
            words = [image[point.address + i] for i in range(point.codec.count)]
            sf_raw = image.get(point.sf_address) if point.sf_address is not None else None
            reading = point.codec.decode(words, 0.0, sf_raw)
            if not reading.valid or reading.value is None:
                log.info(
                    "%s: refused write of %s: %s", self.state.device_id, point.name, reading.reason
                )
                return ExcCodes.ILLEGAL_VALUE
            decoded.append((point.name, reading.value))
        self.image = image
        for name, value in decoded:
            self.state.write(name, value)
        return None

    def _overlapping(self, address: int, count: int) -> list[_Served]:
        seen: dict[str, _Served] = {}
        for a in range(address, address + count):
            for point in self._by_register.get(a, ()):
                seen.setdefault(point.name, point)
        return list(seen.values())

    def _garbled(self, address: int, count: int) -> Iterable[int]:
        faults = self.state.faults
        wanted = range(address, address + count)
        if not faults.points:
            return wanted
        hit: set[int] = set()
        for point in self.points:
            if faults.applies_to(point.name):
                hit.update(range(point.address, point.address + point.codec.count))
                if point.sf_address is not None:
                    hit.add(point.sf_address)
        return sorted(a for a in wanted if a in hit)

    def _lay_out_sunspec(self, device_map: DeviceMap) -> None:
        assert device_map.sunspec is not None  # the schema requires it for protocol sunspec
        info = device_map.map
        self._put(SUNSPEC_BASE, list(sunspec.SUNS_MARKER))
        address = SUNSPEC_BASE + 2
        for model_id in device_map.sunspec.models:
            definition = sunspec.model_def(model_id)
            counts = {
                g.name: self.unit.instances.get(f"{model_id}.{g.name}", 1)
                for g in definition.groups
                if not isinstance(g.count, int) or g.count == 0
            }
            length = definition.length_with(counts)
            self.model_addresses[model_id] = address
            self._put(address, [model_id, length])
            self._fill(address, definition.points, skip=("ID", "L"))
            for group in definition.groups:
                instances = counts.get(
                    group.name, group.count if isinstance(group.count, int) else 1
                )
                for i in range(instances):
                    self._fill(address + group.instance_offset(i), group.points)
                count_point = group.count if isinstance(group.count, str) else None
                if group.count == 0:
                    count_point = next(
                        (p.name for p in definition.points.values() if p.type == "count"), None
                    )
                if count_point is not None:
                    self.image[address + definition.points[count_point].offset] = instances
            self._mark_writable(address, definition)
            address += sunspec.HEADER_LENGTH + length
        self._put(address, [sunspec.END_MODEL_ID, 0])
        self._common(info.vendor, info.model)
        self._sunspec_points(device_map)

    def _common(self, vendor: str, model: str) -> None:
        common = sunspec.model_def(1)
        start = self.model_addresses[1]
        texts = {
            "Mn": vendor,
            "Md": model,
            "SN": self.state.device_id,
            "Vr": self._firmware(self.state.device_map.map.firmware),
        }
        for name, text in texts.items():
            pdef = common.point(name)
            data = text.encode("utf-8")[: 2 * pdef.size].ljust(2 * pdef.size, b"\0")
            self._put(
                start + pdef.offset,
                [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)],
            )
        if "DA" in common.points:
            self.image[start + common.point("DA").offset] = self.unit.unit

    def _sunspec_points(self, device_map: DeviceMap) -> None:
        users: dict[int, list[tuple[str, PointCodec]]] = {}
        for name, point in device_map.points.items():
            assert point.sunspec is not None  # the schema requires it for protocol sunspec
            model_text, point_name = point.sunspec.split(".", 1)
            model_id = int(model_text)
            definition = sunspec.model_def(model_id)
            pdef = definition.point(point_name)
            start = self.model_addresses[model_id]
            codec = sunspec_codec(name, point, pdef)
            sf_address = None
            if isinstance(pdef.sf, str):
                sf_address = start + definition.point(pdef.sf).offset
                users.setdefault(sf_address, []).append((f"{model_id}.{pdef.sf}", codec))
            self.points.append(_Served(name, start + pdef.offset, codec, sf_address))
        for sf_address, codecs in users.items():
            key = codecs[0][0]
            sf = self.unit.scale_factors.get(key)
            self.image[sf_address] = (
                sf if sf is not None else _choose_sf(c for _, c in codecs)
            ) & 0xFFFF

    def _lay_out_vendor(self, device_map: DeviceMap) -> None:
        section = device_map.modbus
        if section is not None and section.fingerprint is not None:
            self._put_ref(section.fingerprint, section.fingerprint.equals or "")
        if section is not None and section.firmware_version is not None:
            self._put_ref(section.firmware_version, self._firmware(device_map.map.firmware))
        for name, point in device_map.points.items():
            assert point.address is not None  # the schema requires it for protocol modbus
            codec = modbus_codec(name, point, section)
            sf_address = point.scale_factor_address
            if sf_address is not None:
                sf = self.unit.scale_factors.get(name)
                self.image[sf_address] = (sf if sf is not None else _choose_sf([codec])) & 0xFFFF
            self.points.append(_Served(name, point.address, codec, sf_address))
            self._put(point.address, not_implemented_registers(codec.type, codec.count))
            if point.access == "rw":
                self.writable.update(range(point.address, point.address + codec.count))

    def _put_ref(self, ref: RegisterRef, text: str) -> None:
        if ref.encoding == "major_minor":
            release = _release(text)
            words = [(release[0] & 0xFF) << 8 | (release[1] & 0xFF)]
        elif ref.encoding == "integer" and ref.type != "string":
            words = PointCodec("ref", ref.type).encode(_release(text)[0])
        else:
            words = PointCodec("ref", "string", size=ref.size).encode(text)
        self._put(ref.address, words)

    def _firmware(self, spec: str) -> str:
        if self.unit.firmware is not None:
            return self.unit.firmware
        floors = re.findall(r"(?:>=|==|~=)\s*([0-9][0-9.]*)", spec)
        return min(floors, key=Version) if floors else "1.0"

    def _put(self, address: int, words: Sequence[int]) -> None:
        for i, word in enumerate(words):
            self.image[address + i] = word

    def _fill(
        self, start: int, points: Mapping[str, sunspec.PointDef], skip: Sequence[str] = ()
    ) -> None:
        for pdef in points.values():
            if pdef.name not in skip:
                self._put(start + pdef.offset, not_implemented_registers(pdef.type, pdef.size))

    def _mark_writable(self, start: int, definition: sunspec.ModelDef) -> None:
        for pdef in definition.points.values():
            if pdef.access == "RW":
                self.writable.update(range(start + pdef.offset, start + pdef.offset + pdef.size))


def _release(text: str) -> tuple[int, int]:
    try:
        release = Version(text).release
    except InvalidVersion:
        raise ValueError(f"firmware {text!r} is not a version number") from None
    return release[0], release[1] if len(release) > 1 else 0


def _choose_sf(codecs: Iterable[PointCodec]) -> int:
    """The finest power of ten at which every point's range fits its register type
    (0 when no point states a range)."""
    ranged = [c for c in codecs if c.range is not None]
    if not ranged:
        return 0
    for sf in _SF_SEARCH:
        if all(_fits(c, c.range, sf) for c in ranged if c.range is not None):
            return sf
    return _SF_SEARCH[-1]


def _fits(codec: PointCodec, bounds: tuple[float, float], sf: int) -> bool:
    info = TYPES[codec.type]
    width = 16 * codec.count
    if info.kind == "int":
        low, high = -(1 << (width - 1)) + 1, (1 << (width - 1)) - 1
    else:
        low, high = 0, (1 << width) - 2
    factor = codec.scale * 10.0**sf
    return all(low <= (bound - codec.offset) / factor <= high for bound in bounds)


def _runs(image: Mapping[int, int]) -> list[tuple[int, int]]:
    """Contiguous (start, count) runs of the addresses in `image`."""
    runs: list[tuple[int, int]] = []
    for address in sorted(image):
        if runs and runs[-1][0] + runs[-1][1] == address:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((address, 1))
    return runs


class ModbusSimServer:
    """One endpoint (a TCP port or a serial line) serving one or more simulated devices."""

    def __init__(self, units: SimUnit | Sequence[SimUnit], *, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        units = [units] if isinstance(units, SimUnit) else list(units)
        ids = [u.unit for u in units]
        if len(set(ids)) != len(ids):
            raise ValueError(f"unit ids must differ on one endpoint, got {ids}")
        self.devices = {u.unit: _Device(u, self._rng) for u in units}
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self.endpoint = ""

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on host:port (0: any free port); returns the bound port."""
        server = ModbusTcpServer(
            self._sim_devices(gateway=True), address=(host, port), ignore_missing_devices=True
        )
        await server.serve_forever(background=True)
        self._server = server
        sockets = getattr(server.transport, "sockets", None) or []
        bound = int(sockets[0].getsockname()[1]) if sockets else port
        self.endpoint = f"{host}:{bound}"
        return bound

    async def start_rtu(
        self,
        path: str,
        *,
        baudrate: int = 19200,
        bytesize: int = 8,
        parity: str = "N",
        stopbits: int = 1,
    ) -> None:
        """Serve Modbus RTU on the serial device at `path`."""
        server = ModbusSerialServer(
            self._sim_devices(gateway=False),
            framer=FramerType.RTU,
            port=path,
            baudrate=baudrate,
            bytesize=bytesize,
            parity=parity,
            stopbits=stopbits,
            ignore_missing_devices=True,
        )
        await server.serve_forever(background=True)
        self._server = server
        self.endpoint = path

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]  # unannotated upstream
            self._server = None

    async def __aenter__(self) -> ModbusSimServer:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def registers(self, unit: int, address: int, count: int) -> list[int]:
        """The registers a unit holds (as last served or written; no faults applied)."""
        device = self.devices[unit]
        device.refresh(address, count)
        return [device.image.get(a, 0) for a in range(address, address + count)]

    def model_address(self, unit: int, model_id: int) -> int:
        """Where a SunSpec model's ID register is on a unit."""
        return self.devices[unit].model_addresses[model_id]

    def _sim_devices(self, *, gateway: bool) -> list[SimDevice]:
        devices = [d.sim_device() for d in self.devices.values()]
        if 0 not in self.devices:
            # Any other unit id: a TCP gateway answers "target failed to respond", a
            # serial line stays silent.
            async def absent(*_: object) -> ExcCodes | None:
                if gateway:
                    return ExcCodes.GATEWAY_NO_RESPONSE
                raise NoSuchIdException("no such unit")

            everywhere = SimData(0, count=0x10000, values=0, datatype=DataType.REGISTERS)
            devices.append(SimDevice(0, [everywhere], action=absent))
        return devices


class PtyLink:
    """Two pseudo-terminals joined like a null-modem cable: bytes written to one end's
    device path come out of the other's. Serves RTU tests without hardware or socat."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._fds: list[int] = []
        ends = []
        for _ in range(2):
            master, slave = os.openpty()
            tty.setraw(slave)
            os.set_blocking(master, False)
            self._fds += [master, slave]
            ends.append((master, os.ttyname(slave)))
        (self._master_a, self.a), (self._master_b, self.b) = ends
        self._loop.add_reader(self._master_a, self._copy, self._master_a, self._master_b)
        self._loop.add_reader(self._master_b, self._copy, self._master_b, self._master_a)

    def _copy(self, source: int, target: int) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            data = os.read(source, 4096)
            if data:
                os.write(target, data)

    def close(self) -> None:
        for master in (self._master_a, self._master_b):
            self._loop.remove_reader(master)
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
