"""The whole small example site simulated at speed 20 on 127.0.0.1, read and written through
the real drivers: Modbus (SunSpec PV and two battery units behind one port), OPC UA
(secured, the wind turbine) and Redfish (two rack BMCs); then `edgectl sim` as a process."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from sim_helpers import until, value

from edgectl.config.load import load_site
from edgectl.config.site import Site
from edgectl.devicemaps.loader import MapIndex, load_maps
from edgectl.drivers.modbus import ModbusDevice
from edgectl.drivers.opcua import OpcUaDevice
from edgectl.drivers.redfish import RedfishDevice
from edgectl.errors import DeviceError, InputError
from edgectl.model.network import build_network
from edgectl.sim.scenario import Cloud, Reboot, load_scenario
from edgectl.sim.site import SiteSimulator
from edgectl.transport.certs import make_self_signed
from edgectl.transport.modbus import ModbusTransport
from edgectl.transport.opcua import OpcUaSecurity

pytestmark = pytest.mark.asyncio(loop_scope="module")

SPEED = 20.0
MAPS = load_maps()
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Bench:
    sim: SiteSimulator
    site: Site
    pki: Any
    transport: ModbusTransport
    maps: MapIndex

    def url(self, device_id: str) -> str:
        link = self.sim.links[device_id]
        assert link.endpoint is not None
        return link.endpoint.url

    async def modbus(self, device_id: str) -> ModbusDevice:
        """A driver for the device, connected and identified."""
        device = self.sim.links[device_id].device
        driver = ModbusDevice(
            device_id,
            self.url(device_id),
            device.unit,
            self.maps.for_profile(device.profile),
            self.transport,
            timeout_s=0.5,
        )
        await driver.connect_and_identify()
        return driver

    def redfish(self, device_id: str) -> RedfishDevice:
        return RedfishDevice(
            device_id, self.url(device_id), device_id, self.maps.for_profile("redfish-rack")[0]
        )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bench(
    tmp_path_factory: pytest.TempPathFactory,
    site_copy: Callable[..., Path],
    client_pki: Callable[[Path], Any],
) -> AsyncIterator[Bench]:
    base = tmp_path_factory.mktemp("site")
    path = site_copy(base)
    pki = client_pki(base)
    site = load_site(path)
    sim = SiteSimulator(site, site_file=str(path), speed=SPEED, state_dir=pki.state_dir, seed=1)
    transport = ModbusTransport(backoff_initial_s=0.05, backoff_max_s=0.2)
    async with sim:
        yield Bench(sim, site, pki, transport, MAPS)
        await transport.close()


async def test_every_device_answers_through_its_protocol_with_plausible_values(
    bench: Bench,
) -> None:
    snapshot = bench.sim.snapshot()
    pv = await bench.modbus("pv-1")
    fast, once = await pv.poll("fast"), await pv.poll("once")
    assert value(once["p_rated_w"]) == 400_000.0
    assert 200_000.0 < value(fast["p_w"]) <= 400_000.0  # 10:00 in June at 37.5 N
    assert value(fast["p_w"]) == pytest.approx(snapshot["sources"]["pv-1"]["p_w"], rel=0.05)
    assert 760.0 <= value(fast["v_v"]) <= 840.0
    assert value(fast["status"]) == 4  # SunSpec 103.St MPPT
    for unit in ("bess-1", "bess-2"):  # two units behind one Modbus TCP port
        battery = await bench.modbus(unit)
        readings = await battery.poll("fast")
        assert 55.0 <= value(readings["soc"]) <= 65.0
        assert value(readings["state"]) == 3  # 802.State CONNECTED
        assert abs(value(readings["p_w"])) <= 500_000.0
        assert 760.0 <= value(readings["v_v"]) <= 840.0
        assert value((await battery.poll("once"))["e_rated_wh"]) == 2_000_000.0
    for rack_id in ("r01", "r02"):
        async with bench.redfish(rack_id) as rack:
            readings = await rack.poll()
        assert 30_000.0 <= value(readings["p_w"]) <= 120_000.0
        assert value(readings["limit_w"]) == 120_000.0
        assert value(readings["limit_min_w"]) == 36_000.0
        assert value(readings["limit_max_w"]) == 120_000.0
    wind = OpcUaDevice(
        "wind-1",
        bench.url("wind-1"),
        MAPS.for_profile("opcua-wind")[0],
        bench.pki.security(),
        timeout_s=3.0,
        publishing_interval_s=0.1,
    )
    try:
        await wind.connect()

        async def all_valid() -> bool:
            return all(r.valid for r in wind.poll().values())

        await until(all_valid)
        readings = wind.poll()
        assert 3.0 < value(readings["wind_mps"]) < 20.0
        assert 0.0 < value(readings["p_w"]) <= 400_000.0
        assert 0.0 < value(readings["available_w"]) <= 400_000.0
        assert value(readings["status"]) in (2, 3)  # running
        assert value(readings["limit_w"]) == 400_000.0
    finally:
        await wind.close()


async def test_a_written_rack_limit_lowers_its_draw_within_its_ramp(bench: Bench) -> None:
    sim = bench.sim
    async with bench.redfish("r02") as rack:
        before = []
        for _ in range(15):  # a few compute/communication cycles (0.2-3 Hz simulated)
            before.append(value((await rack.poll(["p_w"]))["p_w"]))
            await asyncio.sleep(0.02)
        assert max(before) > 65_000.0
        t0 = sim.t_s
        assert value(await rack.write("limit_w", 60_000.0)) == 60_000.0

        async def capped() -> bool:
            return sim.racks["r02"].cap_w <= 60_000.0

        await until(capped)
        # 24 kW/s from 120 kW: 2.5 s of simulated time, never sooner.
        assert sim.t_s - t0 >= 2.5 - sim.step_s
        after = []
        for _ in range(15):
            after.append(value((await rack.poll(["p_w"]))["p_w"]))
            await asyncio.sleep(0.02)
        assert max(after) <= 60_000.0
        assert min(after) >= 30_000.0  # the idle floor
        await rack.write("limit_w", 120_000.0)


async def test_pv_curtailment_lowers_output_and_reverts_when_not_refreshed(bench: Bench) -> None:
    sim, pv = bench.sim, await bench.modbus("pv-1")
    await pv.write("limit_revert_s", 10)  # simulated seconds: 0.5 s of wall time
    t0 = sim.t_s
    await pv.write("limit_pct", 25.0)
    await pv.write("limit_enable", 1)

    async def curtailed() -> bool:
        return value((await pv.poll())["p_w"]) <= 100_000.0

    await until(curtailed, timeout_s=2.0)
    assert sim.snapshot()["sources"]["pv-1"]["available_w"] > 200_000.0
    readings = await pv.poll()
    assert value(readings["status"]) == 5  # THROTTLED

    async def reverted() -> bool:
        return value((await pv.poll())["limit_enable"]) == 0

    await until(reverted, timeout_s=3.0)
    assert sim.t_s - t0 >= 10.0 - 2 * sim.step_s
    assert value((await pv.poll())["limit_pct"]) == 100.0
    await until(lambda: _above(pv, 200_000.0), timeout_s=2.0)


async def _above(device: ModbusDevice, p_w: float) -> bool:
    return value((await device.poll())["p_w"]) > p_w


async def test_a_refreshed_setpoint_holds_past_its_revert_time(bench: Bench) -> None:
    sim, pv = bench.sim, await bench.modbus("pv-1")
    writes = sim.links["pv-1"].state.writes
    await pv.write("limit_revert_s", 10)
    await pv.write("limit_pct", 40.0)
    await pv.write("limit_enable", 1)
    t0 = sim.t_s
    while sim.t_s - t0 < 30.0:  # three revert times, refreshed every second or two
        await asyncio.sleep(1.0 / SPEED)
        assert writes["limit_enable"].value == 1  # still in force: never reverted
        assert value((await pv.poll())["p_w"]) <= 160_000.0 + 100.0
        await pv.write("limit_pct", 40.0)
    await pv.write("limit_revert_s", 0)
    await pv.write("limit_enable", 0)


async def test_a_reboot_clears_setpoints(bench: Bench) -> None:
    sim, pv = bench.sim, await bench.modbus("pv-1")
    await pv.write("limit_revert_s", 0)  # SunSpec: never revert
    await pv.write("limit_pct", 30.0)
    await pv.write("limit_enable", 1)
    await until(lambda: _below(pv, 120_000.0 + 100.0), timeout_s=2.0)
    await sim.apply(Reboot("pv-1"))
    assert not sim.links["pv-1"].state.writes
    readings = await pv.poll()
    assert value(readings["limit_enable"]) == 0
    assert value(readings["limit_pct"]) == 100.0
    await until(lambda: _above(pv, 200_000.0), timeout_s=2.0)


async def _below(device: ModbusDevice, p_w: float) -> bool:
    return value((await device.poll())["p_w"]) <= p_w


async def test_a_battery_setpoint_pins_it_and_clearing_it_returns_to_droop(bench: Bench) -> None:
    sim, battery = bench.sim, await bench.modbus("bess-1")
    await battery.write("rate_revert_s", 0)
    await battery.write("discharge_rate_pct", 40.0)  # of 500 kW
    await battery.write("charge_rate_pct", 0.0)
    await battery.write("storage_mode", 3)

    async def pinned() -> bool:
        return sim.snapshot()["sources"]["bess-1"]["mode"] == "setpoint"

    await until(pinned, timeout_s=2.0)
    readings = await battery.poll()
    assert value(readings["p_w"]) == pytest.approx(200_000.0, abs=1_000.0)
    await battery.write("storage_mode", 0)

    async def droop() -> bool:
        return sim.snapshot()["sources"]["bess-1"]["mode"] == "droop"

    await until(droop, timeout_s=2.0)


async def test_bus_voltages_come_from_the_power_flow(bench: Bench) -> None:
    snapshot = bench.sim.snapshot()
    sources, racks = snapshot["sources"], snapshot["racks"]
    assert {sources[b]["mode"] for b in ("bess-1", "bess-2")} == {"droop"}
    assert snapshot["powerflow"]["converged"]
    assert snapshot["powerflow"]["brownout"] == snapshot["powerflow"]["curtailment"] == 1.0
    net = build_network(bench.site)
    fixed = {s.id: sources[s.id]["p_w"] for s in net.fixed_sources}
    result = net.powerflow.solve(
        net.injections(fixed, {r: racks[r]["p_w"] for r in racks}), warm=False
    )
    served = [snapshot["buses"][b.id]["v_v"] for b in bench.site.buses]
    assert np.allclose(result.v_v, served, rtol=0, atol=1e-6)
    droop = dict(zip((s.id for s in net.droop_sources), result.droop_p_w, strict=True))
    for source_id, p in droop.items():
        assert sources[source_id]["p_w"] == pytest.approx(p, abs=1e-3)
    for bus in snapshot["buses"].values():
        assert 0.95 <= bus["v_pu"] <= 1.05  # normal load: inside the band
    # What a battery reports is its bus's voltage (it moves with the racks' swings).
    readings = await (await bench.modbus("bess-2")).poll()
    assert value(readings["v_v"]) == pytest.approx(snapshot["buses"]["bess"]["v_v"], abs=15.0)


async def test_a_client_certificate_dropped_into_the_trust_list_is_accepted(
    bench: Bench, tmp_path: Path
) -> None:
    cert, key = tmp_path / "late.der", tmp_path / "late.pem"
    make_self_signed(cert, key, application_uri="urn:edgectl:test:late", common_name="late")
    security = OpcUaSecurity(
        "Basic256Sha256", "SignAndEncrypt", cert, key, bench.pki.state_dir / "opcua" / "server.der"
    )
    wind = OpcUaDevice(
        "wind-1",
        bench.url("wind-1"),
        MAPS.for_profile("opcua-wind")[0],
        security,
        timeout_s=2.0,
        reconnect_max_delay_s=0.5,
    )
    try:
        with pytest.raises(DeviceError):
            await wind.connect()
        trusted = bench.pki.state_dir / "opcua" / "trusted"
        (trusted / "late.der").write_bytes(cert.read_bytes())

        async def connects() -> bool:
            try:
                await wind.connect()
            except DeviceError:
                return False
            return True

        await until(connects, timeout_s=15.0)
    finally:
        await wind.close()


async def test_edgectl_sim_prints_endpoints_and_stops_on_sigterm_and_sigint(
    tmp_path: Path, site_copy: Callable[..., Path]
) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }

    async def session(signum: signal.Signals) -> None:
        path = site_copy(tmp_path, name=f"{signum.name}.toml")
        site = load_site(path)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edgectl",
            "sim",
            str(path),
            "--speed",
            "20",
            "--state-dir",
            str(tmp_path / signum.name),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=tmp_path,
        )
        assert proc.stdout is not None and proc.stderr is not None
        lines: list[str] = []
        try:
            while not lines or "running" not in lines[-1]:
                line = await asyncio.wait_for(proc.stdout.readline(), timeout=30.0)
                if not line:
                    stderr = await proc.stderr.read()
                    raise AssertionError(f"edgectl sim ended early: {stderr.decode()}")
                lines.append(line.decode().rstrip())
        except BaseException:
            proc.kill()
            await proc.wait()
            raise
        for device in site.devices:
            row = next((ln for ln in lines if ln.split()[:1] == [device.id]), None)
            assert row is not None, (device.id, lines)
            assert device.protocol in row
            assert device.endpoint.split(":")[-1] in row  # the site's port
        assert any(ln.startswith("wind-1") and "opc.tcp://127.0.0.1:" in ln for ln in lines)
        assert any(ln.startswith("control") and "http://127.0.0.1:" in ln for ln in lines)
        started = time.monotonic()
        proc.send_signal(signum)
        code = await asyncio.wait_for(proc.wait(), timeout=5.0)
        assert code == 0, (await proc.stderr.read()).decode()
        assert time.monotonic() - started < 5.0

    await asyncio.gather(session(signal.SIGTERM), session(signal.SIGINT))


async def test_the_example_scenario_is_valid_for_the_example_site() -> None:
    sim = SiteSimulator(load_site(REPO / "examples" / "small_site.toml"))
    scenario = load_scenario(
        REPO / "examples" / "scenarios" / "cloud_gust_cutout.toml", sim.targets()
    )
    kinds = [item.event for item in scenario.events]
    assert [type(k).__name__ for k in kinds] == [
        "Cloud",
        "Cloud",
        "Gust",
        "Cutout",
        "Fault",
        "Reboot",
        "BatteryFault",
    ]
    assert kinds[0] == Cloud(("pv-1", "pv-2", "pv-3"), 0.7, 5.0, 1_200.0)
    sim.schedule(scenario)


async def test_scenario_problems_name_the_file_and_the_key_path(tmp_path: Path) -> None:
    sim = SiteSimulator(load_site(REPO / "examples" / "small_site.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text(
        """
[scenario]
name = "broken"
title = "not a key"

[[event]]
at = 10
depth = 0.5

[[event]]
at = -1
kind = "cloud"
depth = 1.5

[[event]]
at = 20
kind = "gust"
source = "pv-1"
speed = 3

[[event]]
at = "noon"
kind = "fault"
device = "pv-9"
offline = "yes"
""",
        encoding="utf-8",
    )
    with pytest.raises(InputError) as caught:
        load_scenario(bad, sim.targets())
    text = str(caught.value)
    for expected in (
        f"{bad}: scenario.title: unknown key",
        f"{bad}: event[0].kind: missing required key",
        f"{bad}: event[1].at: must be at least 0, got -1",
        f"{bad}: event[1].depth: must be at most 1, got 1.5",
        f"{bad}: event[2].speed: unknown key",
        f"{bad}: event[2].source: 'pv-1': not a wind source (the wind sources: wind-1, wind-2)",
        f'{bad}: event[3].at: expected a number, got "noon"',
        f"{bad}: event[3].device: no device 'pv-9' in the site",
        f'{bad}: event[3].offline: expected true or false, got "yes"',
    ):
        assert expected in text, text
    missing = tmp_path / "missing.toml"
    with pytest.raises(InputError, match="no such file"):
        load_scenario(missing, sim.targets())
    firmware = tmp_path / "firmware.toml"
    firmware.write_text(
        '[[event]]\nat = 1\nkind = "firmware"\ndevice = "r01"\nversion = "2.0"\n', encoding="utf-8"
    )
    with pytest.raises(InputError, match=r"event\[0\]: .*Modbus devices only"):
        sim.schedule(load_scenario(firmware, sim.targets()))


async def test_scheduled_events_happen_at_their_time(tmp_path: Path) -> None:
    sim = SiteSimulator(load_site(REPO / "examples" / "small_site.toml"))  # no servers
    script = tmp_path / "script.toml"
    script.write_text(
        """
[[event]]
at = 2.0
kind = "cloud"
source = "pv-2"
depth = 0.5
ramp_s = 0.0

[[event]]
at = 1.0
kind = "fault"
device = "r01"
offline = true
duration_s = 1.0

[[event]]
at = 1.0
kind = "battery_fault"
device = "bess-2"
duration_s = 5.0
""",
        encoding="utf-8",
    )
    sim.schedule(load_scenario(script, sim.targets()))
    await sim.run_until(0.95)
    assert not sim.links["r01"].state.faults.offline
    await sim.run_until(1.5)
    assert sim.links["r01"].state.faults.offline
    assert sim.bess["bess-2"].faulted
    assert sim.snapshot()["sources"]["bess-2"]["p_w"] == 0.0
    assert sim.pv["pv-2"].cloud_factor() == 1.0
    await sim.run_until(2.5)
    assert not sim.links["r01"].state.faults.offline  # its duration ran out
    assert sim.pv["pv-2"].cloud_factor() == 0.5
    assert sim.pv["pv-1"].cloud_factor() == 1.0
    assert [e["kind"] for e in sim.events] == ["fault", "battery_fault", "cloud"]


async def test_full_batteries_make_pv_and_wind_derate_and_empty_ones_brown_racks_out() -> None:
    site = load_site(REPO / "examples" / "small_site.toml")
    # Noon, batteries full: nothing absorbs the surplus, so the renewables derate on the
    # bus's overvoltage; the bus stays up, the batteries do not charge.
    full = SiteSimulator(site, initial_soc=0.98, start_time_s=12 * 3600.0)
    await full.run_until(5.0)
    snapshot = full.snapshot()
    assert snapshot["powerflow"]["converged"]
    assert 0.5 < snapshot["powerflow"]["curtailment"] < 1.0
    assert all(0.95 <= b["v_pu"] <= 1.10 for b in snapshot["buses"].values())
    assert all(snapshot["sources"][b]["p_w"] >= 0.0 for b in ("bess-1", "bess-2"))
    assert full.bess["bess-1"].soc == pytest.approx(0.98)
    # Midnight, batteries empty: only wind and the grid tie (at its current limit) supply
    # the racks, which brown out; the sag is visible below the control band.
    empty = SiteSimulator(site, initial_soc=0.05, start_time_s=0.0)
    await empty.run_until(5.0)
    snapshot = empty.snapshot()
    assert snapshot["powerflow"]["converged"]
    assert 0.1 < snapshot["powerflow"]["brownout"] < 1.0
    assert snapshot["sources"]["grid"]["p_w"] > 140_000.0
    assert min(b["v_pu"] for b in snapshot["buses"].values()) < 0.95
    supply = sum(snapshot["sources"][s]["p_w"] for s in ("wind-1", "wind-2", "grid"))
    assert sum(r["p_w"] for r in snapshot["racks"].values()) == pytest.approx(supply, rel=0.02)
    assert empty.bess["bess-1"].soc == pytest.approx(0.05)


async def test_a_modbus_rtu_device_is_served_on_a_serial_line_where_the_site_names_it(
    tmp_path: Path,
) -> None:
    line = tmp_path / "ttySIM0"
    site_file = tmp_path / "rtu.toml"
    site_file.write_text(
        f"""
[site]
id = "rtu-bench"
v_nominal_v = 800.0

[control]
grid_import_max_w = 0.0

[[bus]]
id = "main"

[[source]]
id = "pv-1"
kind = "pv"
bus = "main"
p_max_w = 100_000.0
device = "pv-1"

[[source]]
id = "bess-1"
kind = "bess"
bus = "main"
p_max_w = 200_000.0
p_charge_max_w = 200_000.0
capacity_wh = 400_000.0
soc_min = 0.1
soc_max = 0.9
v_ref_v = 800.0
droop_r_ohm = 0.1
i_max_a = 300.0

[[device]]
id = "pv-1"
protocol = "modbus-rtu"
endpoint = "{line}?baudrate=38400"
unit = 7
profile = "sunspec-pv"
""",
        encoding="utf-8",
    )
    site = load_site(site_file)
    transport = ModbusTransport()
    async with SiteSimulator(site, speed=SPEED) as sim:
        assert line.is_symlink()
        served = sim.served()[0]
        assert served.url == str(line) and "unit 7" in served.detail
        pv = ModbusDevice(
            "pv-1", site.devices[0].endpoint, 7, MAPS.for_profile("sunspec-pv"), transport
        )
        try:
            readings = await pv.poll()
            assert 0.0 < value(readings["p_w"]) <= 100_000.0
            assert 800.0 <= value(readings["v_v"]) <= 840.0  # the battery absorbs the PV
        finally:
            await transport.close()
    assert not line.exists() and not line.is_symlink()  # removed at stop
