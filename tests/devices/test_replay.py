"""Dumps replayed through the real drivers: a committed fixture of the simulated SunSpec PV
device, and live dumps of every protocol (servers on 127.0.0.1) round-tripped through JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgectl.devicemaps.loader import load_maps
from edgectl.devicemaps.readings import NOT_IMPLEMENTED, Reading
from edgectl.drivers.modbus import ModbusDevice
from edgectl.drivers.opcua import OpcUaDevice
from edgectl.drivers.points import ModbusPoints, OpcUaPoints, PointDevice, RedfishPoints
from edgectl.drivers.redfish import RedfishDevice
from edgectl.drivers.replay import (
    ReplayRegisters,
    ReplayTransport,
    load_dump,
    make_dump,
    readings_from_dump,
    replay_readings,
)
from edgectl.drivers.roles import PvDriver
from edgectl.errors import InputError
from edgectl.sim.modbus_server import ModbusSimServer, SimUnit
from edgectl.sim.opcua_server import OpcUaSimServer
from edgectl.sim.redfish_server import RedfishServer
from edgectl.sim.state import DeviceState
from edgectl.transport.modbus import ModbusExceptionResponse, ModbusTransport

# `edgectl dump` of the simulator's SunSpec PV converter (models 1/103/120/123/160) with its
# energy counter served as "not implemented".
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "dumps" / "sunspec_pv.json"
MAPS = load_maps()


def comparable(readings: dict[str, Reading]) -> dict[str, tuple[Any, ...]]:
    """What a replay must reproduce: everything but the time of reading."""
    return {n: (r.value, r.unit, r.valid, r.reason) for n, r in readings.items()}


async def test_committed_pv_dump_replays_to_its_readings() -> None:
    dump = load_dump(FIXTURE)
    assert dump["profile"] == "sunspec-pv" and dump["protocol"] == "modbus-tcp"
    assert [m["id"] for m in dump["sunspec"]["models"]] == [1, 103, 120, 123, 160]
    recorded = readings_from_dump(dump)
    assert recorded["e_wh"].reason == NOT_IMPLEMENTED  # served as a sentinel
    assert recorded["p_rated_w"].value == 1e6
    replayed = await replay_readings(dump)
    assert comparable(replayed) == comparable(recorded)


async def test_replayed_registers_answer_as_a_device() -> None:
    dump = load_dump(FIXTURE)
    registers = {int(a): v for a, v in dump["registers"].items()}
    io = ReplayRegisters(dump["endpoint"], 1, registers)
    assert await io.read_holding_registers(1, 40000, 2, device="pv") == [0x5375, 0x6E53]
    with pytest.raises(ModbusExceptionResponse, match=r"exception 2 \(illegal data address\)"):
        await io.read_holding_registers(1, 100, 1, device="pv")
    with pytest.raises(ModbusExceptionResponse) as refused:
        await io.read_holding_registers(7, 40000, 2, device="pv")
    assert refused.value.code == 11


async def test_role_driver_converts_on_a_replayed_device() -> None:
    """The PV limit's W -> % conversion through the real SunSpec decoding, no server."""
    dump = load_dump(FIXTURE)
    registers = {int(a): v for a, v in dump["registers"].items()}
    io = ReplayRegisters(dump["endpoint"], 1, registers)
    maps = MAPS.for_profile("sunspec-pv")
    device = ModbusDevice("pv", dump["endpoint"], 1, maps, ReplayTransport(io))
    pv = PvDriver(ModbusPoints(device, maps), revert_s=30.0)
    await pv.open()
    await pv.update()
    assert pv.limit_w().value == pytest.approx(800_000.0)
    back = await pv.set_limit_w(300_000.0)
    assert back.value == pytest.approx(300_000.0)
    assert pv.reading("limit_pct").value == pytest.approx(30.0)
    assert pv.reading("limit_revert_s").value == 30
    written = [address for address, _ in io.writes]
    model_123 = device.model_addresses[123]
    assert written == [model_123 + 7, model_123 + 5, model_123 + 9]  # RvrtTms, Pct, Ena


def test_a_file_that_is_not_a_dump_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"format": "something else"}), encoding="utf-8")
    with pytest.raises(InputError, match="format"):
        load_dump(path)
    path.write_text("{", encoding="utf-8")
    with pytest.raises(InputError, match="not JSON"):
        load_dump(path)
    data = json.loads(FIXTURE.read_text(encoding="utf-8"))
    del data["registers"]
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(InputError, match="registers: missing required key"):
        load_dump(path)


async def round_trip(points: PointDevice, protocol: str) -> None:
    """Dump a live device, through JSON, and replay it: the same readings as live."""
    try:
        dump = await make_dump(points, protocol=protocol, maps=MAPS)
        live = await points.poll()
    finally:
        await points.close()
    dump = json.loads(json.dumps(dump, allow_nan=False))
    assert comparable(readings_from_dump(dump)) == comparable(live)
    assert comparable(await replay_readings(dump)) == comparable(live)


async def test_live_modbus_dumps_replay() -> None:
    vx1 = next(m for m in MAPS.for_profile("voltaris-dcb500") if m.map.firmware.startswith(">=1"))
    bess = MAPS.for_profile("sunspec-bess")[0]
    vendor = DeviceState("vx", vx1, values={"p_w": 120_000.0, "v_v": 800.5, "limit_w": 4e5})
    battery = DeviceState("b", bess, values={"soc": 42.5, "p_w": 1000.0, "heartbeat": 3})
    transport = ModbusTransport()
    async with ModbusSimServer([SimUnit(vendor, 3, firmware="1.4"), SimUnit(battery, 2)]) as sim:
        await sim.start_tcp()
        for unit, profile in ((3, "voltaris-dcb500"), (2, "sunspec-bess")):
            maps = MAPS.for_profile(profile)
            device = ModbusDevice(f"u{unit}", sim.endpoint, unit, maps, transport)
            await round_trip(ModbusPoints(device, maps), "modbus-tcp")
    await transport.close()


async def test_live_opcua_and_redfish_dumps_replay() -> None:
    wind = MAPS.for_profile("opcua-wind")[0]
    rack = MAPS.for_profile("redfish-rack-legacy")[0]
    turbine = DeviceState("wtg", wind, values={"p_w": 1.5e6, "status": 3, "heartbeat": 9})
    bmc = DeviceState("r", rack, values={"p_w": 420.0, "limit_w": 800.0})

    class Sim(OpcUaSimServer):
        # an unsecured channel's certificate is b"" in asyncua 2.1, not None
        def _session_allowed(self, certificate: object) -> bool:
            return super()._session_allowed(certificate or None)

    async with Sim([turbine], allow_insecure=True) as ua, RedfishServer({"1U": bmc}) as rf:
        opcua = OpcUaDevice("wtg", ua.endpoint, wind, "none", publishing_interval_s=0.05)
        await round_trip(OpcUaPoints(opcua, ua.endpoint), "opcua")

        def make(chassis: str) -> RedfishDevice:
            return RedfishDevice("r", rf.url, chassis, rack)

        await round_trip(RedfishPoints("r", rf.url, rack, make), "redfish")
