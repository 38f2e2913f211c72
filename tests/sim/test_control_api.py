"""The simulator's control API over real HTTP on 127.0.0.1: faults set there show up at the
protocol level (through the real drivers), bad requests get one line of JSON, events
happen. The site is the small example with a second PV block on a vendor Modbus map
(Voltaris DCB-500, firmware 1.x and 2.x maps), for the firmware event."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from sim_helpers import until, value

from edgectl.config.load import load_site
from edgectl.devicemaps.loader import load_maps
from edgectl.devicemaps.readings import NOT_IMPLEMENTED
from edgectl.drivers.modbus import ModbusDevice
from edgectl.drivers.redfish import NOT_IMPLEMENTED_NULL, RedfishDevice
from edgectl.errors import DeviceTimeout, DeviceUnreachable
from edgectl.sim.control_api import ControlApi
from edgectl.sim.site import SiteSimulator
from edgectl.transport.modbus import ModbusTransport

pytestmark = pytest.mark.asyncio(loop_scope="module")

SPEED = 20.0
MAPS = load_maps()


@dataclass
class Bench:
    sim: SiteSimulator
    api: ControlApi
    http: aiohttp.ClientSession
    transport: ModbusTransport

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = body if isinstance(body, str) or body is None else json.dumps(body)
        async with self.http.request(method, self.api.url + path, data=data) as response:
            text = await response.text()
            assert text.endswith("\n") and text.count("\n") == 1  # one line of JSON
            return response.status, json.loads(text)

    def url(self, device_id: str) -> str:
        link = self.sim.links[device_id]
        assert link.endpoint is not None
        return link.endpoint.url

    async def modbus(
        self, device_id: str, transport: ModbusTransport | None = None
    ) -> ModbusDevice:
        device = self.sim.links[device_id].device
        driver = ModbusDevice(
            device_id,
            self.url(device_id),
            device.unit,
            MAPS.for_profile(device.profile),
            transport or self.transport,
            timeout_s=0.3,
            retries=0,
        )
        await driver.connect_and_identify()
        return driver


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bench(
    tmp_path_factory: pytest.TempPathFactory, site_copy: Callable[..., Path]
) -> AsyncIterator[Bench]:
    base = tmp_path_factory.mktemp("api")
    vendor = '\n[[device]]\nid = "pv-2"\nprotocol = "modbus-tcp"\nendpoint = "127.0.0.1:15022"\n'
    vendor += 'profile = "voltaris-dcb500"\n'
    path = site_copy(base, extra=vendor)
    text = path.read_text(encoding="utf-8")
    block = 'id = "pv-2"\nkind = "pv"\nbus = "pv"\np_max_w = 400_000.0\n'
    assert block in text
    path.write_text(text.replace(block, block + 'device = "pv-2"\n'), encoding="utf-8")
    site = load_site(path)
    sim = SiteSimulator(site, speed=SPEED, state_dir=base / "state", seed=2)
    async with (
        sim,
        ControlApi(sim) as api,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
    ):
        transport = ModbusTransport(backoff_initial_s=0.05, backoff_max_s=0.1)
        yield Bench(sim, api, http, transport)
        await transport.close()


async def test_get_sim_reports_time_devices_and_bus(bench: Bench) -> None:
    status, first = await bench.call("GET", "/v1/sim")
    assert status == 200
    await asyncio.sleep(0.1)
    _, second = await bench.call("GET", "/v1/sim")
    assert second["time_s"] > first["time_s"]
    assert first["speed"] == SPEED
    assert first["time_of_day"].startswith("10:0")
    assert set(first["devices"]) == {"pv-1", "pv-2", "bess-1", "bess-2", "wind-1", "r01", "r02"}
    pv = first["devices"]["pv-1"]
    assert pv["protocol"] == "modbus-tcp" and pv["unit"] == 1
    assert pv["values"]["p_w"] > 0 and pv["values"]["limit_enable"] == 0
    assert first["devices"]["pv-2"]["firmware"] == "1.0"
    assert set(first["buses"]) == {"main", "pv", "wind", "bess", "row-a", "row-b"}
    assert all(0.95 <= b["v_pu"] <= 1.05 for b in first["buses"].values())
    assert first["powerflow"]["converged"]
    assert first["racks"]["r03"]["device"] is None and first["racks"]["r03"]["p_w"] > 0


async def test_offline_fault_silences_one_unit_and_delete_brings_it_back(bench: Bench) -> None:
    bess1, bess2 = await bench.modbus("bess-1"), await bench.modbus("bess-2")
    status, body = await bench.call("POST", "/v1/faults/bess-2", {"offline": True})
    assert status == 200 and body["faults"]["offline"] is True
    with pytest.raises((DeviceTimeout, DeviceUnreachable)):
        await bess2.poll()
    assert value((await bess1.poll())["soc"]) > 0  # the other unit behind the port answers
    status, body = await bench.call("DELETE", "/v1/faults/bess-2")
    assert status == 200 and body["faults"]["offline"] is False

    async def answers() -> bool:
        try:
            return (await bess2.poll())["soc"].valid
        except (DeviceTimeout, DeviceUnreachable):
            return False

    await until(answers, timeout_s=3.0)


async def test_not_implemented_fault_gives_invalid_readings_until_deleted(bench: Bench) -> None:
    status, _ = await bench.call(
        "POST", "/v1/faults/r01", {"not_implemented": True, "points": ["p_w"]}
    )
    assert status == 200
    async with RedfishDevice(
        "r01", bench.url("r01"), "r01", MAPS.for_profile("redfish-rack")[0]
    ) as rack:
        readings = await rack.poll()
        assert not readings["p_w"].valid and readings["p_w"].reason == NOT_IMPLEMENTED_NULL
        assert readings["limit_w"].valid
        await bench.call("DELETE", "/v1/faults/r01")
        assert value((await rack.poll())["p_w"]) > 0
    pv = await bench.modbus("pv-1")
    await bench.call("POST", "/v1/faults/pv-1", {"not_implemented": True})
    readings = await pv.poll()
    assert all(not r.valid and r.reason == NOT_IMPLEMENTED for r in readings.values())
    await bench.call("DELETE", "/v1/faults/pv-1")
    assert all(r.valid for r in (await pv.poll()).values())


async def test_a_fault_with_a_duration_clears_itself(bench: Bench) -> None:
    status, body = await bench.call(
        "POST", "/v1/faults/bess-1", {"stuck": True, "latency_s": 0.01, "duration_s": 2.0}
    )
    assert status == 200 and body["faults"]["stuck"] is True

    async def cleared() -> bool:
        _, faults = await bench.call("GET", "/v1/faults")
        return not faults["bess-1"]["stuck"] and faults["bess-1"]["latency_s"] == 0.0

    await until(cleared, timeout_s=2.0)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "naming"),
    [
        ("POST", "/v1/faults/pv-1", {"offline": "yes"}, 400, "offline"),
        ("POST", "/v1/faults/pv-1", "{not json", 400, "JSON"),
        ("POST", "/v1/faults/pv-1", "", 400, "body"),
        ("POST", "/v1/faults/pv-1", {"latency_s": -1}, 400, "latency_s"),
        ("POST", "/v1/faults/pv-1", {"points": ["nope"]}, 400, "nope"),
        ("POST", "/v1/faults/pv-1", {"ofline": True}, 400, "ofline"),
        ("POST", "/v1/faults/pv-1", [True], 400, "JSON object"),
        ("POST", "/v1/faults/pv-9", {"offline": True}, 404, "pv-9"),
        ("DELETE", "/v1/faults/pv-9", None, 404, "pv-9"),
        ("POST", "/v1/events", {"kind": "tornado"}, 400, "kind"),
        ("POST", "/v1/events", {"depth": 0.5}, 400, "kind"),
        ("POST", "/v1/events", {"kind": "cloud", "depth": 1.5}, 400, "depth"),
        ("POST", "/v1/events", {"kind": "cloud", "source": "wind-1"}, 400, "wind-1"),
        ("POST", "/v1/events", {"kind": "cloud", "at": 5}, 400, "at"),
        ("POST", "/v1/events", {"kind": "reboot"}, 400, "device"),
        (
            "POST",
            "/v1/events",
            {"kind": "firmware", "device": "r01", "version": "2.0"},
            400,
            "Modbus",
        ),
        (
            "POST",
            "/v1/events",
            {"kind": "firmware", "device": "pv-2", "version": "9.0"},
            400,
            "9.0",
        ),
        ("GET", "/v1/nothing", None, 404, "/v1/nothing"),
        ("DELETE", "/v1/sim", None, 405, "DELETE"),
    ],
)
async def test_bad_requests_get_a_one_line_json_error(
    bench: Bench, method: str, path: str, body: Any, status: int, naming: str
) -> None:
    got, answer = await bench.call(method, path, body)
    assert got == status
    assert set(answer) == {"error"}
    assert naming in answer["error"]
    _, faults = await bench.call("GET", "/v1/faults")
    assert not any(f["offline"] or f["points"] for f in faults.values())


async def test_events_cloud_gust_cutout_and_battery_fault(bench: Bench) -> None:
    sim = bench.sim
    pv = await bench.modbus("pv-1")
    before = sim.snapshot()["sources"]["pv-1"]["available_w"]
    status, body = await bench.call(
        "POST", "/v1/events", {"kind": "cloud", "depth": 0.7, "ramp_s": 5, "duration_s": 30}
    )
    assert status == 200 and body["event"]["kind"] == "cloud"
    assert body["event"]["sources"] == ["pv-1", "pv-2", "pv-3"]
    t0 = body["time_s"]

    async def five_seconds_later() -> bool:
        return sim.t_s >= t0 + 5.0 + sim.step_s

    await until(five_seconds_later)
    shaded = sim.snapshot()["sources"]["pv-1"]["available_w"]
    assert shaded == pytest.approx(0.3 * before, rel=0.03)
    assert value((await pv.poll())["p_w"]) == pytest.approx(0.3 * before, rel=0.05)

    wind = sim.wind["wind-1"]
    calm_mps = wind.wind_mps
    status, _ = await bench.call(
        "POST",
        "/v1/events",
        {"kind": "gust", "source": "wind-1", "delta_mps": 8, "rise_s": 1, "duration_s": 60},
    )
    assert status == 200
    await asyncio.sleep(2.0 / SPEED)
    assert wind.wind_mps > calm_mps + 5.0

    status, _ = await bench.call(
        "POST", "/v1/events", {"kind": "cutout", "source": "wind-2", "duration_s": 60}
    )
    assert status == 200

    async def stopped() -> bool:
        turbine = sim.snapshot()["sources"]["wind-2"]
        return turbine["state"] == "storm" and turbine["p_w"] < 1_000.0

    await until(stopped, timeout_s=3.0)

    battery = await bench.modbus("bess-1")
    status, _ = await bench.call(
        "POST", "/v1/events", {"kind": "battery_fault", "device": "bess-1", "duration_s": 30}
    )
    assert status == 200
    await asyncio.sleep(2.0 / SPEED)
    readings = await battery.poll()
    assert value(readings["state"]) == 99  # 802.State FAULT
    assert value(readings["p_w"]) == 0.0
    assert sim.snapshot()["sources"]["bess-1"]["mode"] == "fault"

    async def reconnected() -> bool:
        return value((await battery.poll())["state"]) == 3

    await until(reconnected, timeout_s=5.0)


async def test_reboot_event_clears_setpoints_after_booting(bench: Bench) -> None:
    pv = await bench.modbus("pv-1")
    await pv.write("limit_pct", 20.0)
    await pv.write("limit_enable", 1)
    status, _ = await bench.call(
        "POST", "/v1/events", {"kind": "reboot", "device": "pv-1", "duration_s": 20}
    )
    assert status == 200
    with pytest.raises((DeviceTimeout, DeviceUnreachable)):
        await pv.poll()

    async def booted() -> bool:
        try:
            readings = await pv.poll()
        except (DeviceTimeout, DeviceUnreachable):
            return False
        return value(readings["limit_enable"]) == 0

    await until(booted, timeout_s=5.0)
    assert not bench.sim.links["pv-1"].state.writes


async def test_firmware_event_makes_a_modbus_device_serve_its_new_map(bench: Bench) -> None:
    old = await bench.modbus("pv-2")
    assert old.firmware == "1.0"
    assert old.device_map is not None and old.device_map.map.firmware == ">=1.0,<2.0"
    status, body = await bench.call(
        "POST", "/v1/events", {"kind": "firmware", "device": "pv-2", "version": "2.1"}
    )
    assert status == 200, body
    transport = ModbusTransport(backoff_initial_s=0.05, backoff_max_s=0.1)
    try:
        new = await bench.modbus("pv-2", transport)
        assert new.firmware == "2.1"
        assert new.device_map is not None and new.device_map.map.firmware == ">=2.0,<3.0"
        p_w = value((await new.poll())["p_w"])
        assert p_w == pytest.approx(bench.sim.snapshot()["sources"]["pv-2"]["p_w"], rel=0.1)
    finally:
        await transport.close()
    _, snapshot = await bench.call("GET", "/v1/sim")
    assert snapshot["devices"]["pv-2"]["firmware"] == "2.1"
