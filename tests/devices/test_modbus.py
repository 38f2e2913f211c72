"""Modbus end to end on real servers (127.0.0.1, port 0, and RTU over a pty pair): peer
clients (pysunspec2, mbpoll) against the simulator, vendor firmware selection, faults,
back-off and the isolation of endpoints."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import cache

import pytest
from sample_values import BESS, PV, VOLTARIS
from sunspec2.modbus.client import SunSpecModbusClientDeviceTCP

from edgectl.devicemaps.loader import load_maps
from edgectl.devicemaps.readings import NOT_IMPLEMENTED, OUT_OF_RANGE, SF_NOT_IMPLEMENTED
from edgectl.devicemaps.schema import DeviceMap
from edgectl.drivers.modbus import ModbusDevice
from edgectl.errors import DeviceTimeout, DeviceUnreachable, ProtocolError, UnsupportedDevice
from edgectl.sim.modbus_server import ModbusSimServer, PtyLink, SimUnit
from edgectl.sim.state import DeviceState
from edgectl.transport.modbus import (
    ModbusExceptionResponse,
    ModbusTransport,
    parse_endpoint,
    plan_reads,
)

TIMEOUT_S = 0.2
RETRIES = 1
WORST_S = TIMEOUT_S * (RETRIES + 1)
SLACK_S = 0.25  # scheduling on a busy 2-core machine; a behaviour check, not a benchmark


@cache
def _maps(profile: str) -> list[DeviceMap]:
    return load_maps().for_profile(profile)


def _voltaris(major: int) -> DeviceMap:
    return next(m for m in _maps("voltaris-dcb500") if m.map.firmware.startswith(f">={major}"))


def _state(device_id: str, device_map: DeviceMap, values: dict[str, float | int]) -> DeviceState:
    return DeviceState(device_id, device_map, values=dict(values))


@asynccontextmanager
async def _serving(*units: SimUnit, seed: int = 0) -> AsyncIterator[ModbusSimServer]:
    server = ModbusSimServer(list(units), seed=seed)
    await server.start_tcp()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def transport() -> AsyncIterator[ModbusTransport]:
    t = ModbusTransport()
    yield t
    await t.close()


def _device(
    server: ModbusSimServer,
    unit: int,
    maps: DeviceMap | list[DeviceMap],
    transport: ModbusTransport,
    device_id: str = "dut",
) -> ModbusDevice:
    return ModbusDevice(
        device_id, server.endpoint, unit, maps, transport, timeout_s=TIMEOUT_S, retries=RETRIES
    )


def test_plan_reads_merges_and_splits() -> None:
    assert plan_reads([(10, 1), (11, 2), (20, 1)]) == [(10, 3), (20, 1)]
    assert plan_reads([(10, 1), (20, 1)], max_gap=9) == [(10, 11)]
    assert plan_reads([(10, 1), (20, 1)], max_gap=8) == [(10, 1), (20, 1)]
    assert plan_reads([(0, 300)]) == [(0, 125), (125, 125), (250, 50)]
    assert plan_reads([(0, 100), (100, 50)], max_gap=10) == [(0, 100), (100, 50)]  # no straddling
    assert plan_reads([(5, 2), (5, 2), (6, 1)]) == [(5, 2)]
    assert plan_reads([]) == []


def test_parse_endpoint() -> None:
    tcp = parse_endpoint("10.0.0.5:1502")
    assert (tcp.host, tcp.port, tcp.is_serial) == ("10.0.0.5", 1502, False)
    assert parse_endpoint("gw.local").port == 502
    assert parse_endpoint("[::1]:5020").host == "::1"
    rtu = parse_endpoint("/dev/ttyUSB0?baudrate=9600&parity=E")
    assert rtu.path == "/dev/ttyUSB0" and rtu.serial is not None
    assert (rtu.serial.baudrate, rtu.serial.parity) == (9600, "E")
    with pytest.raises(ValueError, match="speed"):
        parse_endpoint("/dev/ttyUSB0?speed=9600")
    with pytest.raises(ValueError, match="port"):
        parse_endpoint("host:0")


async def test_sunspec_pv_read_and_write(transport: ModbusTransport) -> None:
    state = _state("pv1", _maps("sunspec-pv")[0], PV)
    async with _serving(SimUnit(state, unit=3)) as server:
        device = _device(server, 3, _maps("sunspec-pv"), transport, "pv1")
        await device.connect_and_identify()
        assert device.discovery is not None and device.discovery.base == 40000
        assert device.model_addresses == {
            1: 40002,
            103: 40070,
            120: 40122,
            123: 40150,
            160: 40176,
        }
        fast = await device.poll("fast")
        assert fast["p_w"].valid and fast["p_w"].value == pytest.approx(123456.0, abs=100)
        assert fast["v_v"].value == pytest.approx(812.3) and fast["status"].value == 4
        state.values["p_w"] = 99000.0  # live: the next read sees the new value
        assert (await device.poll("fast"))["p_w"].value == pytest.approx(99000.0, abs=100)
        back = await device.write("limit_pct", 42.5)
        assert back.valid and back.value == pytest.approx(42.5)
        assert state.writes["limit_pct"].value == pytest.approx(42.5)
        with pytest.raises(ValueError, match="p_w is read-only"):
            await device.write("p_w", 1.0)
        with pytest.raises(ValueError, match=r"limit_pct.*outside its range"):
            await device.write("limit_pct", 120.0)
        with pytest.raises(ValueError, match="no point 'nope'"):
            await device.write("nope", 1)
        dump = await device.raw_dump()
        assert [m["id"] for m in dump["sunspec"]["models"]] == [1, 103, 120, 123, 160]
        assert dump["points"]["p_w"]["address"] == 40084


def _pysunspec_scan(port: int, unit: int) -> dict[str, object]:
    client = SunSpecModbusClientDeviceTCP(slave_id=unit, ipaddr="127.0.0.1", ipport=port, timeout=2)
    try:
        client.scan()
        ids = sorted(k for k in client.models if isinstance(k, int))
        out: dict[str, object] = {
            "ids": ids,
            "Mn": client.models[1][0].Mn.value,
            "SN": client.models[1][0].SN.value,
        }
        if 103 in ids:
            inverter = client.models[103][0]
            out |= {
                "W": inverter.W.cvalue,
                "WH": inverter.WH.cvalue,
                "DCV": inverter.DCV.cvalue,
                "St": inverter.St.value,
                "Hz": inverter.Hz.value,
                "VA": inverter.VA.value,
                "VA_SF": inverter.VA_SF.value,
                "WRtg": client.models[120][0].WRtg.cvalue,
                "modules": len(client.models[160][0].module),
            }
            controls = client.models[123][0]
            controls.WMaxLimPct.cvalue = 60
            controls.WMaxLim_Ena.value = 1
            controls.write()
        if 802 in ids:
            battery = client.models[802][0]
            storage = client.models[124][0]
            out |= {
                "SoC": battery.SoC.cvalue,
                "W": battery.W.cvalue,
                "V": battery.V.cvalue,
                "OutWRte": storage.OutWRte.cvalue,
                "WChaMax": storage.WChaMax.cvalue,
            }
            battery.CtrlHb.value = 18
            battery.write()
        return out
    finally:
        client.close()


async def test_pysunspec2_scans_the_simulated_pv_converter() -> None:
    state = _state("pv1", _maps("sunspec-pv")[0], PV)
    async with _serving(SimUnit(state, unit=5)) as server:
        port = int(server.endpoint.rsplit(":", 1)[1])
        seen = await asyncio.to_thread(_pysunspec_scan, port, 5)
    assert seen["ids"] == [1, 103, 120, 123, 160]
    assert seen["Mn"] == "SunSpec (generic)" and seen["SN"] == "pv1"
    assert seen["W"] == pytest.approx(123456.0, abs=100)
    assert seen["WH"] == pytest.approx(5.0e9, abs=1000)
    assert seen["DCV"] == pytest.approx(812.3)
    assert seen["WRtg"] == pytest.approx(1.0e6)
    assert seen["St"] == 4
    # Not driven by the map: each holds its own type's sentinel (0xFFFF in an int16
    # would read as -1).
    assert seen["Hz"] is None and seen["VA"] is None and seen["VA_SF"] is None
    assert seen["modules"] == 1
    assert state.writes["limit_pct"].value == pytest.approx(60.0)
    assert state.writes["limit_enable"].value == 1


async def test_pysunspec2_scans_the_simulated_battery() -> None:
    state = _state("bess1", _maps("sunspec-bess")[0], BESS)
    async with _serving(SimUnit(state, unit=1)) as server:
        port = int(server.endpoint.rsplit(":", 1)[1])
        seen = await asyncio.to_thread(_pysunspec_scan, port, 1)
    assert seen["ids"] == [1, 124, 802]
    assert seen["SoC"] == pytest.approx(55.25)
    assert seen["W"] == pytest.approx(-250000.0, abs=100)
    assert seen["V"] == pytest.approx(780.5)
    assert seen["OutWRte"] == pytest.approx(50.0)
    assert seen["WChaMax"] == pytest.approx(4.0e5, abs=100)
    assert state.writes["heartbeat"].value == 18


async def test_mbpoll_reads_the_simulator() -> None:
    mbpoll = shutil.which("mbpoll")
    assert mbpoll is not None, (
        "mbpoll is not installed (Debian package mbpoll; .ci/run installs it)"
    )
    state = _state("pv1", _maps("sunspec-pv")[0], PV)
    async with _serving(SimUnit(state, unit=9)) as server:
        port = server.endpoint.rsplit(":", 1)[1]
        w = server.model_address(9, 103) + 14
        proc = await asyncio.create_subprocess_exec(
            mbpoll,
            "-m",
            "tcp",
            "-a",
            "9",
            "-0",
            "-r",
            str(w),
            "-c",
            "2",
            "-t",
            "4",
            "-1",
            "-o",
            "2",
            "-p",
            port,
            "127.0.0.1",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 10)
        expected = server.registers(9, w, 2)
    assert proc.returncode == 0, err.decode()
    values = {}
    for line in out.decode().splitlines():
        if line.startswith("["):
            ref, _, value = line.partition(":")
            values[int(ref.strip("[]"))] = int(value.strip())
    assert values == {w: expected[0], w + 1: expected[1]}
    assert expected[0] * 10 ** expected[1] == pytest.approx(123456.0, abs=100)  # W, W_SF


async def test_rtu_over_a_pty_pair() -> None:
    link = PtyLink()
    state = _state("pv1", _maps("sunspec-pv")[0], PV)
    server = ModbusSimServer(SimUnit(state, unit=4))
    transport = ModbusTransport()
    try:
        await server.start_rtu(link.a, baudrate=38400)
        device = ModbusDevice(
            "pv1",
            f"{link.b}?baudrate=38400",
            4,
            _maps("sunspec-pv"),
            transport,
            timeout_s=1.0,
            retries=1,
        )
        await device.connect_and_identify()
        readings = await device.poll("fast")
        assert readings["v_v"].value == pytest.approx(812.3)
        back = await device.write("limit_revert_s", 90)
        assert back.valid and back.value == 90
        assert state.writes["limit_revert_s"].value == 90
    finally:
        await transport.close()
        await server.stop()
        link.close()


@pytest.mark.parametrize(("firmware", "major"), [("1.3", 1), ("2.1", 2)])
async def test_vendor_firmware_chooses_the_map(
    transport: ModbusTransport, firmware: str, major: int
) -> None:
    served = _voltaris(major)
    state = _state("dcb1", served, VOLTARIS)
    async with _serving(SimUnit(state, unit=1, firmware=firmware)) as server:
        device = _device(server, 1, _maps("voltaris-dcb500"), transport, "dcb1")
        assert await device.connect_and_identify() is served
        assert device.firmware == firmware
        readings = await device.poll("fast") | await device.poll("slow")
        dump = await device.raw_dump()
    e_wh = dump["points"]["e_wh"]["registers"]
    kwh = round(123456789 / 1000)
    if major == 1:
        # 0.1 kW in an i16 at 100, energy high word first
        assert dump["points"]["p_w"] == {"address": 100, "registers": [1235]}
        assert readings["p_w"].value == pytest.approx(123500.0)
        assert e_wh == [kwh >> 16, kwh & 0xFFFF]
    else:
        # 1 W in an i32 at 110, energy low word first
        assert dump["points"]["p_w"] == {
            "address": 110,
            "registers": [123456 >> 16, 123456 & 0xFFFF],
        }
        assert readings["p_w"].value == 123456
        assert e_wh == [kwh & 0xFFFF, kwh >> 16]
    assert readings["e_wh"].value == pytest.approx(kwh * 1000.0)
    assert readings["v_v"].value == pytest.approx(801.7)
    assert dump["modbus"]["firmware_version"]["registers"] == [
        int(firmware.split(".")[0]) << 8 | int(firmware.split(".")[1])
    ]


async def test_a_firmware_no_map_covers_is_refused(transport: ModbusTransport) -> None:
    state = _state("dcb9", _voltaris(2), VOLTARIS)
    async with _serving(SimUnit(state, unit=1, firmware="3.0")) as server:
        device = _device(server, 1, _maps("voltaris-dcb500"), transport, "dcb9")
        with pytest.raises(UnsupportedDevice) as caught:
            await device.connect_and_identify()
    message = str(caught.value)
    assert message.startswith("dcb9: firmware 3.0 of Voltaris DCB-500")
    assert '">=1.0,<2.0"' in message and '">=2.0,<3.0"' in message


async def test_a_sunspec_device_without_the_maps_models_is_refused(
    transport: ModbusTransport,
) -> None:
    state = _state("pv1", _maps("sunspec-pv")[0], PV)
    async with _serving(SimUnit(state, unit=1)) as server:
        device = _device(server, 1, _maps("sunspec-bess"), transport, "pv1")
        with pytest.raises(UnsupportedDevice, match=r"model\(s\) \[802, 124\]"):
            await device.connect_and_identify()


async def test_a_different_device_is_refused_by_its_fingerprint(transport: ModbusTransport) -> None:
    state = _state("pv1", _maps("sunspec-pv")[0], PV)
    async with _serving(SimUnit(state, unit=1)) as server:
        device = _device(server, 1, _maps("voltaris-dcb500"), transport, "pv1")
        with pytest.raises(UnsupportedDevice, match="not the expected device"):
            await device.connect_and_identify()


async def test_exception_responses_carry_code_and_meaning(transport: ModbusTransport) -> None:
    state = _state("dcb2", _voltaris(2), VOLTARIS)
    async with _serving(SimUnit(state, unit=1, firmware="2.0")) as server:
        endpoint = transport.endpoint(server.endpoint)
        with pytest.raises(ModbusExceptionResponse) as caught:
            await endpoint.read_holding_registers(1, 100, 1, device="dcb2")  # moved in 2.x
        assert caught.value.code == 2 and "illegal data address" in str(caught.value)
        assert isinstance(caught.value, ProtocolError)
        with pytest.raises(ModbusExceptionResponse) as caught:
            await endpoint.write_registers(1, 110, [1, 2], device="dcb2")  # read-only
        assert caught.value.code == 2
        with pytest.raises(ModbusExceptionResponse) as caught:
            await endpoint.write_registers(1, 200, [60000], device="dcb2")  # over range
        assert caught.value.code == 3 and "illegal data value" in str(caught.value)
        with pytest.raises(ModbusExceptionResponse) as caught:
            await endpoint.read_holding_registers(42, 0, 1, device="ghost", timeout_s=TIMEOUT_S)
        assert caught.value.code == 11 and "gateway" in str(caught.value)


async def test_two_units_share_one_gateway_connection(transport: ModbusTransport) -> None:
    pv = _state("pv1", _maps("sunspec-pv")[0], PV)
    bess = _state("bess1", _maps("sunspec-bess")[0], BESS)
    async with _serving(SimUnit(pv, unit=1), SimUnit(bess, unit=2)) as server:
        a = _device(server, 1, _maps("sunspec-pv"), transport, "pv1")
        b = _device(server, 2, _maps("sunspec-bess"), transport, "bess1")
        assert transport.endpoint(server.endpoint) is transport.endpoint(server.endpoint)
        first, second = await asyncio.gather(a.poll(), b.poll())
    assert first["v_v"].value == pytest.approx(812.3)
    assert second["soc"].value == pytest.approx(55.25)


async def _elapsed(call: Callable[[], object]) -> tuple[float, BaseException | None]:
    start = time.monotonic()
    try:
        await call()  # type: ignore[misc]
    except Exception as exc:
        return time.monotonic() - start, exc
    return time.monotonic() - start, None


@pytest.mark.parametrize("fault", ["offline", "timeout"])
async def test_a_silent_device_fails_within_its_timeout(
    transport: ModbusTransport, fault: str
) -> None:
    state = _state("pv1", _maps("sunspec-pv")[0], PV)
    async with _serving(SimUnit(state, unit=1)) as server:
        device = _device(server, 1, _maps("sunspec-pv"), transport, "pv1")
        await device.connect_and_identify()
        setattr(state.faults, fault, True)
        took, exc = await _elapsed(device.poll)
    assert isinstance(exc, DeviceTimeout | DeviceUnreachable), exc
    assert str(exc).startswith("pv1: ")
    assert WORST_S * 0.9 <= took <= WORST_S + SLACK_S


async def test_latency_below_and_above_the_timeout(transport: ModbusTransport) -> None:
    state = _state("pv1", _maps("sunspec-pv")[0], PV)
    async with _serving(SimUnit(state, unit=1)) as server:
        device = _device(server, 1, _maps("sunspec-pv"), transport, "pv1")
        await device.connect_and_identify()
        state.faults.latency_s = TIMEOUT_S / 4
        assert (await device.poll())["v_v"].valid
        state.faults.latency_s = WORST_S * 1.5  # every attempt times out
        with pytest.raises(DeviceTimeout):
            await device.poll()


async def test_not_implemented_and_unimplemented_scale_factor(transport: ModbusTransport) -> None:
    state = _state("pv1", _maps("sunspec-pv")[0], PV)
    unit = SimUnit(state, unit=1, scale_factors={"103.DCV_SF": -0x8000})
    async with _serving(unit) as server:
        device = _device(server, 1, _maps("sunspec-pv"), transport, "pv1")
        await device.connect_and_identify()
        readings = await device.poll()
        assert readings["v_v"].reason == SF_NOT_IMPLEMENTED  # pysunspec2 would say 812 V
        state.faults.not_implemented = True
        state.faults.points.add("p_w")
        readings = await device.poll()
    assert not readings["p_w"].valid and readings["p_w"].reason == NOT_IMPLEMENTED
    assert readings["i_a"].valid


async def test_garbage_gives_invalid_readings_not_exceptions(transport: ModbusTransport) -> None:
    pv = _state("pv1", _maps("sunspec-pv")[0], PV)
    dcb = _state("dcb1", _voltaris(1), VOLTARIS)
    async with _serving(
        SimUnit(pv, unit=1), SimUnit(dcb, unit=2, firmware="1.0"), seed=7
    ) as server:
        devices = [
            _device(server, 1, _maps("sunspec-pv"), transport, "pv1"),
            _device(server, 2, _maps("voltaris-dcb500"), transport, "dcb1"),
        ]
        fast = []
        for device in devices:
            device_map = await device.connect_and_identify()
            fast.append({n for n, p in device_map.points.items() if p.poll == "fast"})
        pv.faults.garbage = dcb.faults.garbage = True
        for device, names in zip(devices, fast, strict=True):
            for _ in range(5):
                readings = await device.poll()
                assert readings.keys() == names
                assert all(r.valid or r.reason for r in readings.values())
                assert any(not r.valid for r in readings.values())
        pv.faults.points.add("p_w")  # garbage on one point (and its scale factor) only
        readings = await devices[0].poll()
    assert not readings["p_w"].valid
    assert readings["p_w"].reason.startswith(("scale factor", OUT_OF_RANGE))
    assert readings["v_v"].valid and readings["v_v"].value == pytest.approx(812.3)


async def test_stuck_values_stop_changing(transport: ModbusTransport) -> None:
    state = _state("pv1", _maps("sunspec-pv")[0], PV)
    async with _serving(SimUnit(state, unit=1)) as server:
        device = _device(server, 1, _maps("sunspec-pv"), transport, "pv1")
        state.faults.stuck = True
        first = (await device.poll())["v_v"].value
        state.values["v_v"] = 700.0
        assert (await device.poll())["v_v"].value == first
        state.faults.stuck = False
        assert (await device.poll())["v_v"].value == pytest.approx(700.0)


async def test_a_dead_device_does_not_delay_another_endpoint(transport: ModbusTransport) -> None:
    dead = _state("pv1", _maps("sunspec-pv")[0], PV)
    alive = _state("pv2", _maps("sunspec-pv")[0], PV)
    async with _serving(SimUnit(dead, unit=1)) as one, _serving(SimUnit(alive, unit=1)) as two:
        a = _device(one, 1, _maps("sunspec-pv"), transport, "pv1")
        b = _device(two, 1, _maps("sunspec-pv"), transport, "pv2")
        await a.connect_and_identify()
        await b.connect_and_identify()
        dead.faults.timeout = True

        async def poll_alive() -> float:
            start = time.monotonic()
            for _ in range(3):
                assert (await b.poll())["v_v"].valid
            return time.monotonic() - start

        dead_result, alive_s = await asyncio.gather(a.poll(), poll_alive(), return_exceptions=True)
    assert isinstance(dead_result, DeviceTimeout)
    assert isinstance(alive_s, float) and alive_s < TIMEOUT_S


async def test_a_dead_unit_behind_a_gateway_delays_its_neighbours_once(
    transport: ModbusTransport,
) -> None:
    # One connection per endpoint, requests in series: the dead unit holds the line for
    # its timeout x (retries + 1), then backs off and costs nothing.
    dead = _state("pv1", _maps("sunspec-pv")[0], PV)
    alive = _state("pv2", _maps("sunspec-pv")[0], PV)
    async with _serving(SimUnit(dead, unit=1), SimUnit(alive, unit=2)) as server:
        a = _device(server, 1, _maps("sunspec-pv"), transport, "pv1")
        b = _device(server, 2, _maps("sunspec-pv"), transport, "pv2")
        await a.connect_and_identify()
        await b.connect_and_identify()
        dead.faults.offline = True
        for round_ in range(2):
            start = time.monotonic()
            dead_result, alive_result = await asyncio.gather(
                a.poll(), b.poll(), return_exceptions=True
            )
            took = time.monotonic() - start
            assert isinstance(dead_result, DeviceTimeout if round_ == 0 else DeviceUnreachable)
            assert isinstance(alive_result, dict) and alive_result["v_v"].valid
            assert took <= (WORST_S + SLACK_S if round_ == 0 else TIMEOUT_S)


async def test_back_off_fails_fast_until_it_expires() -> None:
    now = [1000.0]
    transport = ModbusTransport(clock=lambda: now[0], backoff_initial_s=1.0, backoff_max_s=4.0)
    state = _state("pv1", _maps("sunspec-pv")[0], PV)
    try:
        async with _serving(SimUnit(state, unit=1)) as server:
            device = _device(server, 1, _maps("sunspec-pv"), transport, "pv1")
            endpoint = transport.endpoint(server.endpoint)
            await device.connect_and_identify()
            state.faults.offline = True
            took, exc = await _elapsed(device.poll)
            assert isinstance(exc, DeviceTimeout) and took >= WORST_S * 0.9
            assert endpoint.backed_off_s(1) == pytest.approx(1.0)
            took, exc = await _elapsed(device.poll)  # backed off: no request at all
            assert isinstance(exc, DeviceUnreachable) and "backed off" in str(exc)
            assert took < TIMEOUT_S / 2
            now[0] += 1.01  # expired: a real attempt again, which fails and doubles
            took, exc = await _elapsed(device.poll)
            assert isinstance(exc, DeviceTimeout) and took >= WORST_S * 0.9
            assert endpoint.backed_off_s(1) == pytest.approx(2.0)
            now[0] += 2.01
            await _elapsed(device.poll)
            now[0] += 4.01
            await _elapsed(device.poll)
            assert endpoint.backed_off_s(1) == pytest.approx(4.0)  # capped
            state.faults.offline = False
            now[0] += 4.01
            assert (await device.poll())["v_v"].valid
            assert endpoint.backed_off_s(1) == 0.0
    finally:
        await transport.close()


async def test_no_server_is_unreachable_quickly(transport: ModbusTransport) -> None:
    server = ModbusSimServer(SimUnit(_state("pv1", _maps("sunspec-pv")[0], PV)))
    await server.start_tcp()
    endpoint = server.endpoint
    await server.stop()  # the port is closed now: connections are refused
    device = ModbusDevice(
        "pv1", endpoint, 1, _maps("sunspec-pv"), transport, timeout_s=TIMEOUT_S, retries=RETRIES
    )
    took, exc = await _elapsed(device.connect_and_identify)
    assert isinstance(exc, DeviceUnreachable), exc
    assert took <= WORST_S + SLACK_S
