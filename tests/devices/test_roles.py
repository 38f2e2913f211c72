"""Role drivers built by the registry from a site file, against the simulator's servers on
127.0.0.1: capabilities by role, unit conversions (SoC % -> fraction, PV limit W -> % of
the rating, battery setpoint W -> 124 rates), clamping, heartbeat, invalid inputs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from sample_values import BESS, PV, RACK, VOLTARIS, WIND

from edgectl.config.load import load_site
from edgectl.devicemaps.loader import load_maps
from edgectl.devicemaps.readings import NOT_IMPLEMENTED
from edgectl.drivers.capabilities import (
    Battery,
    BatteryControl,
    Curtailable,
    Heartbeat,
    Meter,
    Polled,
    PowerSource,
    Rack,
)
from edgectl.drivers.registry import DeviceRegistry, opcua_url, redfish_location
from edgectl.drivers.roles import CURTAILED, BatteryDriver, PvDriver, RackDriver, WindDriver
from edgectl.errors import InputError, UsageError
from edgectl.sim.modbus_server import ModbusSimServer, SimUnit
from edgectl.sim.opcua_server import OpcUaSimServer
from edgectl.sim.redfish_server import RedfishServer
from edgectl.sim.state import DeviceState
from edgectl.transport.modbus import ModbusTransport

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAPS = load_maps()
REVERT_S = 45.0  # differs from what the devices hold, so the role driver must write it


SITE = """
[site]
id = "roles"
v_nominal_v = 800.0

[control]
grid_import_max_w = 100000.0

[[bus]]
id = "main"

[[source]]
id = "bess-1"
kind = "bess"
bus = "main"
p_max_w = 5e5
p_charge_max_w = 5e5
capacity_wh = 2e6
soc_min = 0.1
soc_max = 0.95
v_ref_v = 800.0
droop_r_ohm = 0.032
i_max_a = 690.0
device = "bess-1"

[[rack]]
id = "r02"
bus = "main"
p_min_w = 200.0
p_max_w = 900.0
tier = 1
ramp_w_per_s = 100.0
device = "r02"
"""


def device(
    device_id: str, protocol: str, endpoint: str, profile: str, unit: int = 1, extra: str = ""
) -> str:
    # OPC UA needs its security said; the test servers on loopback run without.
    if protocol == "opcua" and "security" not in extra:
        extra += 'security = "none"\n'
    return (
        f'\n[[device]]\nid = "{device_id}"\nprotocol = "{protocol}"\n'
        f'endpoint = "{endpoint}"\nunit = {unit}\nprofile = "{profile}"\n{extra}'
    )


@dataclass
class Site:
    registry: DeviceRegistry
    states: dict[str, DeviceState]


def state(
    device_id: str, profile: str, values: dict[str, float | int], major: int = 0
) -> DeviceState:
    maps = MAPS.for_profile(profile)
    chosen = next(m for m in maps if not major or m.map.firmware.startswith(f">={major}"))
    return DeviceState(device_id, chosen, values=dict(values))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    no_rating = {k: v for k, v in PV.items() if k != "p_rated_w"}
    states = {
        "pv-1": state("pv-1", "sunspec-pv", PV),
        "bess-1": state("bess-1", "sunspec-bess", BESS),
        "vx-1": state("vx-1", "voltaris-dcb500", VOLTARIS, major=1),
        "pv-unrated": state("pv-unrated", "sunspec-pv", no_rating),
        "wind-1": state("wind-1", "opcua-wind", WIND),
        "r01": state("r01", "redfish-rack", RACK),
        "r02": state("r02", "redfish-rack-legacy", RACK),
    }
    units = [SimUnit(states[d], u) for d, u in (("pv-1", 1), ("bess-1", 2), ("vx-1", 3))]
    units.append(SimUnit(states["pv-unrated"], 5))
    async with (
        ModbusSimServer(units) as modbus,
        OpcUaSimServer([states["wind-1"]], allow_insecure=True) as opcua,
        RedfishServer({"r01": states["r01"], "r02": states["r02"]}) as redfish,
    ):
        await modbus.start_tcp()
        text = SITE
        text += device("pv-1", "modbus-tcp", modbus.endpoint, "sunspec-pv", 1)
        text += device("bess-1", "modbus-tcp", modbus.endpoint, "sunspec-bess", 2)
        text += device("vx-1", "modbus-tcp", modbus.endpoint, "voltaris-dcb500", 3)
        text += device("pv-unrated", "modbus-tcp", modbus.endpoint, "sunspec-pv", 5)
        text += device("wind-1", "opcua", f"127.0.0.1:{opcua.port}", "opcua-wind")
        text += device("r01", "redfish", f"127.0.0.1:{redfish.port}", "redfish-rack")
        text += device("r02", "redfish", f"127.0.0.1:{redfish.port}", "redfish-rack-legacy")
        path = tmp_path_factory.mktemp("roles") / "site.toml"
        path.write_text(text, encoding="utf-8")
        registry = DeviceRegistry(
            load_site(path), site_file=str(path), transport=ModbusTransport(), revert_s=REVERT_S
        )
        try:
            for driver in registry.drivers().values():
                await driver.open()
                await driver.update()
            yield Site(registry, states)
        finally:
            await registry.close()
            await registry.transport.close()


async def test_each_role_offers_its_capabilities(site: Site) -> None:
    drivers = site.registry.drivers()
    pv, bess, wind, rack = drivers["pv-1"], drivers["bess-1"], drivers["wind-1"], drivers["r01"]
    assert isinstance(pv, PvDriver) and isinstance(drivers["vx-1"], PvDriver)
    assert isinstance(bess, BatteryDriver) and isinstance(wind, WindDriver)
    assert isinstance(rack, RackDriver)
    assert all(isinstance(d, Polled) and isinstance(d, Meter) for d in drivers.values())
    assert isinstance(pv, PowerSource) and isinstance(pv, Curtailable)
    assert not isinstance(pv, Battery) and not isinstance(pv, Heartbeat)
    assert isinstance(bess, Battery) and isinstance(bess, BatteryControl)
    assert isinstance(bess, Heartbeat) and not isinstance(bess, Curtailable)
    assert isinstance(wind, PowerSource) and isinstance(wind, Heartbeat)
    assert isinstance(rack, Rack) and not isinstance(rack, PowerSource)


async def test_pv_limit_in_watts_is_a_percentage_of_the_rating(site: Site) -> None:
    pv = site.registry.driver("pv-1")
    assert isinstance(pv, PvDriver)
    state = site.states["pv-1"]
    assert pv.p_w().value == pytest.approx(123456.0, abs=100)
    assert pv.limit_w().value == pytest.approx(800_000.0)  # 80 % of 1 MW
    assert pv.available_w().value == pv.p_w().value  # well below its limit

    back = await pv.set_limit_w(250_000.0)
    assert back.valid and back.value == pytest.approx(250_000.0) and back.unit == "W"
    assert state.writes["limit_pct"].value == pytest.approx(25.0)
    assert state.writes["limit_enable"].value == 1
    assert state.writes["limit_revert_s"].value == REVERT_S

    back = await pv.set_limit_w(3e6)  # above the rating: 100 %
    assert state.writes["limit_pct"].value == pytest.approx(100.0)
    assert back.value == pytest.approx(1e6)

    await pv.set_limit_w(100_000.0)  # below what it produces: held at the limit
    await pv.update()
    available = pv.available_w()
    assert not available.valid and available.reason == CURTAILED
    assert available.value == pv.p_w().value  # a lower bound


async def test_pv_without_a_rating_converts_nothing_and_writes_nothing(site: Site) -> None:
    pv = site.registry.driver("pv-unrated")
    assert isinstance(pv, PvDriver)
    limit = pv.limit_w()
    assert not limit.valid and limit.reason == f"p_rated_w: {NOT_IMPLEMENTED}"
    back = await pv.set_limit_w(100_000.0)
    assert not back.valid and "p_rated_w" in back.reason
    assert site.states["pv-unrated"].writes == {}


async def test_vendor_pv_limit_is_in_watts(site: Site) -> None:
    pv = site.registry.driver("vx-1")
    assert isinstance(pv, PvDriver) and not pv.limit_in_percent
    assert pv.limit_w().value == pytest.approx(450_000.0)
    back = await pv.set_limit_w(900_000.0)  # clamped to the 500 kW rating
    assert back.value == pytest.approx(500_000.0)
    assert site.states["vx-1"].writes["limit_w"].value == pytest.approx(500_000.0)
    assert site.states["vx-1"].writes["limit_revert_s"].value == REVERT_S


async def test_battery_soc_is_a_fraction_and_setpoints_are_shares_of_its_limits(
    site: Site,
) -> None:
    bess = site.registry.driver("bess-1")
    assert isinstance(bess, BatteryDriver)
    writes = site.states["bess-1"].writes
    soc = bess.soc()
    assert soc.valid and soc.value == pytest.approx(0.5525) and soc.unit == ""
    assert [r.value for r in bess.limits_w()] == [pytest.approx(5e5), pytest.approx(5e5)]
    assert bess.p_w().value == pytest.approx(-250_000.0, abs=100)  # charging

    back = await bess.set_power_w(-100_000.0)  # charge at 25 % of WChaMax (400 kW)
    assert back.valid and back.value == pytest.approx(-100_000.0)
    assert writes["charge_rate_pct"].value == pytest.approx(25.0)
    assert writes["discharge_rate_pct"].value == pytest.approx(0.0)
    assert writes["rate_revert_s"].value == REVERT_S
    assert writes["heartbeat"].value == 18  # 17 read, then counted on
    assert "storage_mode" not in writes  # already both bits

    back = await bess.set_power_w(250_000.0)  # discharge at 50 % of WDisChaRteMax
    assert back.value == pytest.approx(250_000.0)
    assert writes["discharge_rate_pct"].value == pytest.approx(50.0)
    assert writes["charge_rate_pct"].value == pytest.approx(0.0)
    assert writes["heartbeat"].value == 19

    back = await bess.set_power_w(2e6)  # beyond the discharge limit
    assert back.value == pytest.approx(5e5)


async def test_invalid_soc_propagates_with_its_reason(site: Site) -> None:
    bess = site.registry.driver("bess-1")
    assert isinstance(bess, BatteryDriver)
    state = site.states["bess-1"]
    state.values["soc"] = None  # the device serves "not implemented"
    try:
        await bess.update()
        soc = bess.soc()
        assert not soc.valid and soc.reason == NOT_IMPLEMENTED and soc.unit == ""
    finally:
        state.values["soc"] = BESS["soc"]


async def test_rack_limit_is_clamped_to_what_the_bmc_accepts(site: Site) -> None:
    rack = site.registry.driver("r01")
    assert isinstance(rack, RackDriver)
    low, high = rack.limit_range_w()
    assert (low.value, high.value) == (150.0, 1000.0)
    assert (await rack.set_limit_w(5000.0)).value == 1000.0
    assert site.states["r01"].writes["limit_w"].value == 1000.0
    assert (await rack.set_limit_w(10.0)).value == 150.0
    assert site.states["r01"].writes["limit_w"].value == 150.0


async def test_legacy_rack_is_clamped_to_its_site_entry(site: Site) -> None:
    rack = site.registry.driver("r02")
    assert isinstance(rack, RackDriver)
    assert rack.points.location.endswith("chassis r02")  # the BMC has two; r02 by its id
    low, high = rack.limit_range_w()
    assert (low.value, high.value) == (200.0, 900.0)  # from [[rack]] r02
    assert (await rack.set_limit_w(5000.0)).value == 900.0
    assert site.states["r02"].writes["limit_w"].value == 900.0


async def test_wind_limit_heartbeat_and_available_power(site: Site) -> None:
    wind = site.registry.driver("wind-1")
    assert isinstance(wind, WindDriver)
    state = site.states["wind-1"]
    assert wind.available_w().value == pytest.approx(2.6e6)
    back = await wind.set_limit_w(5e7)  # above the map's range: its top
    assert back.value == pytest.approx(3e7)
    assert state.writes["limit_w"].value == pytest.approx(3e7)
    assert (await wind.heartbeat()).value == 42
    assert (await wind.heartbeat()).value == 43
    assert state.writes["heartbeat"].value == 43


async def test_registry_refuses_unknown_ids_and_profiles_without_a_map(
    site: Site, tmp_path: Path
) -> None:
    with pytest.raises(UsageError, match=r'no device "pv-9", did you mean "pv-1"'):
        site.registry.driver("pv-9")
    with pytest.raises(UsageError, match=r"devices: pv-1, bess-1, vx-1"):
        site.registry.entry("zzz")
    path = tmp_path / "site.toml"
    path.write_text(
        SITE.replace('device = "r02"', "").replace('device = "bess-1"', "")
        + device("m1", "modbus-tcp", "127.0.0.1:1502", "acme-meter")
        + device("w1", "modbus-tcp", "127.0.0.1:1502", "opcua-wind", 2)
        + device(
            "w2",
            "opcua",
            "10.0.0.5:4840",
            "opcua-wind",
            extra='security = "Basic256Sha256-SignAndEncrypt"\ncertificate = "client.der"\n'
            'private_key = "client.pem"\nserver_certificate = "turbine.der"\n',
        ),
        encoding="utf-8",
    )
    registry = DeviceRegistry(load_site(path), site_file=str(path))
    with pytest.raises(InputError, match=r'device\[0\].profile: no device map has profile "acme'):
        registry.points("m1")
    with pytest.raises(InputError, match=r'device\[1\].profile: .*opcua map.*"modbus-tcp"'):
        registry.points("w1")
    # Secure by default: the certificate files the site names must exist.
    with pytest.raises(InputError, match=r"device\[2\].certificate: no such file: .*client.der"):
        registry.points("w2")
    await registry.close()


async def test_endpoints_as_a_site_file_gives_them() -> None:
    assert opcua_url("127.0.0.1:4840") == "opc.tcp://127.0.0.1:4840"
    assert opcua_url("opc.tcp://park:4840/ua") == "opc.tcp://park:4840/ua"
    assert redfish_location("127.0.0.1:8080") == ("http://127.0.0.1:8080", None)
    assert redfish_location("bmc7:443") == ("https://bmc7:443", None)
    assert redfish_location("https://bmc7/redfish/v1/Chassis/1U") == ("https://bmc7", "1U")
    with pytest.raises(ValueError, match="must name a chassis"):
        redfish_location("https://bmc7/redfish/v1/Systems/1")
