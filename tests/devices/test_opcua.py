"""OPC UA wind turbines end to end: the simulator's asyncua server on 127.0.0.1, secured with
certificates made for the test, read and written through the real driver."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from edgectl.devicemaps.loader import (
    firmware_configs_root,
    load_map,
    load_maps,
    validate_map_dict,
)
from edgectl.devicemaps.readings import NO_ANSWER, NOT_A_NUMBER, OUT_OF_RANGE, Reading, Value
from edgectl.devicemaps.schema import DeviceMap
from edgectl.drivers.opcua import OpcUaDevice
from edgectl.errors import DeviceError, DeviceTimeout, ProtocolError
from edgectl.sim.opcua_server import OpcUaSimServer
from edgectl.sim.state import DeviceState
from edgectl.transport.certs import make_self_signed
from edgectl.transport.opcua import OpcUaSecurity

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAP_FILE = firmware_configs_root() / "opcua" / "generic" / "wind_turbine_61400_25.toml"
WIND = load_map(MAP_FILE)
TURBINE = {
    "p_w": 2_345_678.5,
    "e_wh": 123_456_789_012.25,
    "status": 3,
    "rotor_rpm": 11.7,
    "wind_mps": 9.3,
    "available_w": 2_600_000.0,
    "limit_w": 3_000_000.0,
    "heartbeat": 41,
}
# The same turbine as a vendor might wire it: power in kW, speed with an offset.
SCALED = validate_map_dict(
    {
        "map": {
            "profile": "opcua-wind-kw",
            "vendor": "test",
            "model": "kW turbine",
            "protocol": "opcua",
            "role": "wind",
            "document": "test map",
        },
        "opcua": {"namespace_uri": "urn:test:kw-turbine"},
        "points": {
            "p_w": {"unit": "W", "node": "WTUR.W", "variant": "Float", "scale": 1000.0},
            "wind_mps": {
                "unit": "m/s",
                "node": "WNAC.WdSpd",
                "variant": "Int16",
                "scale": 0.1,
                "offset": -5.0,
            },
            "limit_w": {
                "unit": "W",
                "access": "rw",
                "node": "WTUR.DmdW",
                "variant": "Int32",
                "scale": 1000.0,
            },
        },
    },
    "scaled test map",
)
# Every OPC UA map in firmware_configs/, served by the simulator and read back (conformance).
OPCUA_MAPS = {item.file: item.map for item in load_maps().maps if item.map.map.protocol == "opcua"}
FAST = {"timeout_s": 2.0, "publishing_interval_s": 0.1, "reconnect_max_delay_s": 1.0}


@dataclass(frozen=True)
class Pki:
    server_cert: Path
    server_key: Path
    client: OpcUaSecurity
    rogue: OpcUaSecurity  # a client the server does not trust
    trusted: Path  # directory of trusted client certificates


@dataclass
class Site:
    sim: OpcUaSimServer
    states: dict[str, DeviceState]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    make_self_signed(
        base / "server.der",
        base / "server.pem",
        application_uri="urn:edgectl:sim",
        common_name="edgectl sim",
    )
    for name in ("client", "rogue"):
        make_self_signed(
            base / f"{name}.der",
            base / f"{name}.pem",
            application_uri=f"urn:edgectl:test:{name}",
            common_name=name,
        )
    trusted = base / "trusted"
    trusted.mkdir()
    (trusted / "client.der").write_bytes((base / "client.der").read_bytes())

    def security(name: str) -> OpcUaSecurity:
        return OpcUaSecurity(
            "Basic256Sha256",
            "SignAndEncrypt",
            base / f"{name}.der",
            base / f"{name}.pem",
            base / "server.der",
        )

    return Pki(
        base / "server.der", base / "server.pem", security("client"), security("rogue"), trusted
    )


def plausible(device_map: DeviceMap) -> dict[str, Value]:
    """A value for every point inside its range, representable by its variant."""
    values: dict[str, Value] = {}
    for name, point in device_map.points.items():
        if point.variant == "String":
            values[name] = "text"
            continue
        low, high = point.range if point.range is not None else (0.0, 100.0)
        middle = (low + high) / 2
        values[name] = middle if point.variant in ("Float", "Double") else round(middle)
    return values


def turbine(device_id: str, device_map: DeviceMap = WIND, **values: float) -> DeviceState:
    return DeviceState(device_id, device_map, values=dict(values or TURBINE))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(pki: Pki) -> AsyncIterator[Site]:
    """One secure server (SignAndEncrypt only) for the tests that do not restart it; each
    test has turbines of its own."""
    names = [f"WTG0{n}" for n in range(1, 10)]
    states = {name: turbine(name) for name in names}
    states["KW01"] = turbine("KW01", SCALED, p_w=1_500_000.0, wind_mps=12.5, limit_w=2e6)
    for i, device_map in enumerate(OPCUA_MAPS.values()):
        states[f"MAP{i}"] = DeviceState(f"MAP{i}", device_map, values=plausible(device_map))
    sim = OpcUaSimServer(
        states.values(),
        certificate=pki.server_cert,
        private_key=pki.server_key,
        trusted=[pki.trusted],
    )
    async with sim:
        yield Site(sim, states)


@pytest_asyncio.fixture(loop_scope="module")
async def devices(site: Site, pki: Pki) -> AsyncIterator[Callable[..., OpcUaDevice]]:
    """Make drivers for the site's turbines; all closed after the test."""
    made: list[OpcUaDevice] = []

    def make(device_id: str, device_map: DeviceMap = WIND, **options: float) -> OpcUaDevice:
        device = OpcUaDevice(
            device_id, site.sim.endpoint, device_map, pki.client, **{**FAST, **options}
        )
        made.append(device)
        return device

    yield make
    for device in made:
        await device.close()


async def until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait until `check()` holds (it must not do I/O: this is how the driver is used)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s")
        await asyncio.sleep(0.05)


def all_valid(device: OpcUaDevice) -> bool:
    return all(r.valid for r in device.poll().values())


def reading(device: OpcUaDevice, point: str) -> Reading:
    return device.poll()[point]


async def test_map_served_and_read_back_over_sign_and_encrypt(devices, site: Site) -> None:
    device = devices("WTG01")
    await device.connect()
    await until(lambda: all_valid(device))
    readings = device.poll()
    assert set(readings) == set(WIND.points)
    for point, expected in TURBINE.items():
        got = readings[point]
        assert got.unit == WIND.points[point].unit
        if WIND.points[point].variant == "Float":  # float32 on the wire
            assert got.value == pytest.approx(expected, rel=1e-7), point
        else:
            assert got.value == expected, point
            assert type(got.value) is type(expected), point
    dump = await device.raw_dump()
    assert dump["namespace_uri"] == "urn:edgectl:wind-turbine"
    points = dump["points"]
    assert isinstance(points, dict)
    assert points["p_w"]["node_id"] == f"ns={dump['namespace_index']};s=WTG01.WTUR.W"
    assert points["status"] == {**points["status"], "status": "Good", "value": 3}


@pytest.mark.parametrize("file", sorted(OPCUA_MAPS))
async def test_every_opcua_map_is_served_and_read_back(devices, site: Site, file: str) -> None:
    device_map = OPCUA_MAPS[file]
    device_id = f"MAP{list(OPCUA_MAPS).index(file)}"
    device = devices(device_id, device_map)
    await device.connect()
    await until(lambda: all_valid(device))
    expected = site.states[device_id].values
    for point, got in device.poll().items():
        want = expected[point]
        assert got.value == (want if isinstance(want, str) else pytest.approx(want, rel=1e-6))


async def test_scale_and_offset_apply_between_wire_and_unit(devices, site: Site) -> None:
    device = devices("KW01", SCALED)
    await device.connect()
    await until(lambda: all_valid(device))
    assert reading(device, "p_w").value == pytest.approx(1_500_000.0)
    assert reading(device, "wind_mps").value == pytest.approx(12.5)
    raw = (await device.raw_dump())["points"]
    assert isinstance(raw, dict)
    assert raw["p_w"]["value"] == pytest.approx(1500.0)  # kW on the wire
    assert raw["wind_mps"]["value"] == 175  # (12.5 + 5) / 0.1
    back = await device.write("limit_w", 1_234_000.0)
    raw = (await device.raw_dump())["points"]
    assert isinstance(raw, dict)
    assert raw["limit_w"]["value"] == 1234
    assert site.states["KW01"].writes["limit_w"].value == pytest.approx(1_234_000.0)
    assert back.valid and back.value == pytest.approx(1_234_000.0)


async def test_untrusted_client_is_rejected(site: Site, pki: Pki) -> None:
    device = OpcUaDevice("WTG01", site.sim.endpoint, WIND, pki.rogue, **FAST)
    async with asyncio.timeout(10):
        with pytest.raises(ProtocolError, match="BadCertificateUntrusted"):
            await device.connect()
    assert not device.connected
    await device.close()


async def test_client_without_security_is_refused(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    device = OpcUaDevice("WTG01", site.sim.endpoint, WIND, "none", **FAST)
    async with asyncio.timeout(10):
        with pytest.raises(DeviceError):
            await device.connect()
    await device.close()

    # A client that ignores the endpoints offered and opens a session on an unsecured
    # channel anyway is refused by the server itself.
    import asyncua

    monkeypatch.setattr(asyncua.Client, "find_endpoint", staticmethod(lambda eps, *_: eps[0]))
    client = asyncua.Client(site.sim.endpoint, timeout=2)
    async with asyncio.timeout(10):
        with pytest.raises(asyncua.ua.uaerrors.BadUserAccessDenied):
            await client.connect()


async def test_security_none_must_be_said_explicitly() -> None:
    with pytest.raises(ValueError, match="security"):
        OpcUaDevice("WTG01", "opc.tcp://127.0.0.1:4840", WIND, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode"):
        OpcUaSecurity("Basic256Sha256", "None", Path("c"), Path("k"), Path("s"))
    with pytest.raises(ValueError, match="endpoint"):
        OpcUaDevice("WTG01", "http://127.0.0.1:4840", WIND, "none")


async def test_subscription_delivers_a_change_without_polling(devices, site: Site) -> None:
    assert not inspect.iscoroutinefunction(OpcUaDevice.poll)  # poll() cannot do I/O
    device = devices("WTG02")
    await device.connect()
    await until(lambda: all_valid(device))
    site.states["WTG02"].values["p_w"] = 1_111_111.0
    await until(lambda: reading(device, "p_w").value == pytest.approx(1_111_111.0), 2.0)
    assert reading(device, "p_w").valid


async def test_write_reaches_the_device_and_reads_back(devices, site: Site) -> None:
    device = devices("WTG03")
    await device.connect()
    await until(lambda: all_valid(device))
    state = site.states["WTG03"]

    back = await device.write("limit_w", 1_250_000.0)
    assert state.writes["limit_w"].value == pytest.approx(1_250_000.0)
    assert back.valid and back.value == pytest.approx(1_250_000.0)
    await until(lambda: reading(device, "limit_w").value == pytest.approx(1_250_000.0))

    back = await device.write("heartbeat", 42)  # UInt32
    assert state.writes["heartbeat"].value == 42 and back.value == 42

    with pytest.raises(ValueError, match="p_w"):
        await device.write("p_w", 1.0)
    with pytest.raises(ValueError, match="range"):
        await device.write("limit_w", -5.0)
    with pytest.raises(ValueError, match="nonsense"):
        await device.write("nonsense", 1.0)
    assert set(state.writes) == {"limit_w", "heartbeat"}


async def test_write_falls_back_to_no_timestamps(devices, site: Site) -> None:
    device = devices("WTG04")
    await device.connect()
    site.sim.reject_write_timestamps = True
    try:
        back = await device.write("limit_w", 900_000.0)
    finally:
        site.sim.reject_write_timestamps = False
    assert site.states["WTG04"].writes["limit_w"].value == pytest.approx(900_000.0)
    assert back.value == pytest.approx(900_000.0)


async def test_not_implemented_gives_invalid_readings_with_the_status(devices, site: Site) -> None:
    device = devices("WTG05")
    await device.connect()
    await until(lambda: all_valid(device))
    faults = site.states["WTG05"].faults
    faults.not_implemented = True
    faults.points = {"wind_mps", "rotor_rpm"}
    await until(lambda: not reading(device, "wind_mps").valid)
    readings = device.poll()
    assert readings["wind_mps"].reason == readings["rotor_rpm"].reason == "BadNotReadable"
    assert readings["wind_mps"].value is None
    assert readings["p_w"].valid
    faults.clear()
    await until(lambda: all_valid(device))


async def test_offline_device_goes_invalid_and_poll_never_raises(devices, site: Site) -> None:
    device = devices("WTG06")
    await device.connect()
    await until(lambda: all_valid(device))
    faults = site.states["WTG06"].faults
    faults.offline = True
    try:
        await until(lambda: not any(r.valid for r in device.poll().values()))
        assert {r.reason for r in device.poll().values()} == {"BadNoCommunication"}
        with pytest.raises(ProtocolError, match="BadNoCommunication"):
            await device.write("limit_w", 1e6)
    finally:
        faults.clear()
    await until(lambda: all_valid(device))


async def test_garbage_and_stuck(devices, site: Site) -> None:
    device = devices("WTG07")
    await device.connect()
    await until(lambda: all_valid(device))
    state = site.states["WTG07"]
    state.faults.garbage = True
    state.faults.points = {"p_w", "status"}
    await until(lambda: not reading(device, "p_w").valid)
    assert reading(device, "p_w").reason == NOT_A_NUMBER
    assert reading(device, "status").value == 2**31 - 1  # no range: absurd yet valid
    state.faults.clear()
    await until(lambda: all_valid(device))

    state.faults.stuck = True
    await site.sim.push()
    state.values["p_w"] = 5.0
    back = await device.write("limit_w", 2e6)  # accepted, yet the device holds its value
    assert back.value == pytest.approx(TURBINE["limit_w"])
    await asyncio.sleep(0.3)
    assert reading(device, "p_w").value == pytest.approx(TURBINE["p_w"])
    state.faults.clear()
    await until(lambda: reading(device, "p_w").value == 5.0)


async def test_out_of_range_is_invalid(devices, site: Site) -> None:
    device = devices("WTG08")
    await device.connect()
    await until(lambda: all_valid(device))
    site.states["WTG08"].values["wind_mps"] = 250.0
    await until(lambda: not reading(device, "wind_mps").valid)
    assert reading(device, "wind_mps").reason == OUT_OF_RANGE
    assert reading(device, "wind_mps").value == pytest.approx(250.0)


async def test_write_latency_and_timeout(devices, site: Site) -> None:
    device = devices("WTG09", timeout_s=0.5)
    await device.connect()
    faults = site.states["WTG09"].faults
    faults.latency_s = 0.3
    started = time.monotonic()
    await device.write("heartbeat", 7)
    assert time.monotonic() - started >= 0.3
    faults.latency_s = 1.0
    try:
        with pytest.raises(DeviceTimeout):
            await device.write("heartbeat", 8)
    finally:
        faults.clear()


async def test_reconnect_after_server_restart(pki: Pki) -> None:
    state = turbine("WTG10")
    sim = OpcUaSimServer(
        [state],
        certificate=pki.server_cert,
        private_key=pki.server_key,
        trusted=[pki.trusted / "client.der"],
    )
    await sim.start()
    device = OpcUaDevice("WTG10", sim.endpoint, WIND, pki.client, **FAST)
    try:
        await device.connect()
        await until(lambda: all_valid(device))
        index_before = (await device.raw_dump())["namespace_index"]
        assert isinstance(index_before, int)

        await sim.stop()
        await until(lambda: not any(r.valid for r in device.poll().values()))
        assert all(r.reason.startswith(NO_ANSWER) for r in device.poll().values())
        with pytest.raises(DeviceError):
            await device.write("limit_w", 1e6)

        # The same port, but the server now numbers its namespaces differently.
        sim.leading_namespaces = ["urn:test:another-namespace"]
        state.values["p_w"] = 777_000.0
        await sim.start()
        await until(lambda: all_valid(device), 10.0)
        assert reading(device, "p_w").value == pytest.approx(777_000.0)
        assert (await device.raw_dump())["namespace_index"] == index_before + 1
        assert (await device.write("limit_w", 1e6)).valid
        assert state.writes["limit_w"].value == pytest.approx(1e6)
    finally:
        await device.close()
        await sim.stop()
