"""`edgectl scan | read | write | dump` against the simulator's servers on 127.0.0.1: a
SunSpec PV converter and battery behind one Modbus endpoint (units 1 and 2) with Voltaris
vendor devices beside them, an OPC UA wind turbine and a Redfish rack, named by a site file.
Errors are one line with their exit status and no traceback."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from edgectl.cli import main
from edgectl.devicemaps.loader import load_maps
from edgectl.devicemaps.readings import NOT_IMPLEMENTED
from edgectl.drivers.replay import load_dump, readings_from_dump, replay_readings
from edgectl.errors import EXIT_DEVICE, EXIT_INPUT, EXIT_USAGE, DeviceUnreachable
from edgectl.sim.modbus_server import ModbusSimServer, SimUnit
from edgectl.sim.opcua_server import OpcUaSimServer
from edgectl.sim.redfish_server import RedfishServer
from edgectl.sim.state import DeviceState

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROOT = Path(__file__).resolve().parents[2]
MAPS = load_maps()
PV_MAP = MAPS.for_profile("sunspec-pv")[0]
BESS_MAP = MAPS.for_profile("sunspec-bess")[0]
VOLTARIS_FW1 = next(
    m for m in MAPS.for_profile("voltaris-dcb500") if m.map.firmware.startswith(">=1")
)
PV = {
    "p_w": 123456.0,
    "e_wh": None,  # served as SunSpec "not implemented"
    "v_v": 812.3,
    "i_a": 152.1,
    "status": 4,
    "p_rated_w": 1.0e6,
    "limit_pct": 80.0,
    "limit_enable": 1,
    "limit_revert_s": 60,
}
BESS = {"soc": 55.25, "p_w": -250000.0, "v_v": 780.5, "state": 3, "heartbeat": 17}
VOLTARIS = {"p_w": 123400.0, "v_v": 801.7, "status": 3, "p_rated_w": 5.0e5, "limit_w": 4.5e5}
WIND = {"p_w": 2_345_678.5, "status": 3, "available_w": 2.6e6, "limit_w": 3e6, "heartbeat": 41}
RACK = {"p_w": 374.0, "limit_w": 500.0, "limit_min_w": 150.0, "limit_max_w": 1000.0}

SITE = """
[site]
id = "field"
v_nominal_v = 800.0

[control]
grid_import_max_w = 100000.0

[[bus]]
id = "main"

[[source]]
id = "grid"
kind = "grid"
bus = "main"
p_max_w = 1e5
v_ref_v = 780.0
droop_r_ohm = 0.16
i_max_a = 206.0
"""


@dataclass
class Field:
    site: Path
    modbus: str  # host:port of the Modbus endpoint
    states: dict[str, DeviceState]


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


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def field(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Field]:
    states = {
        "pv-1": DeviceState("pv-1", PV_MAP, values=dict(PV)),
        "bess-1": DeviceState("bess-1", BESS_MAP, values=dict(BESS)),
        "vx-1": DeviceState("vx-1", VOLTARIS_FW1, values=dict(VOLTARIS)),
        # lays out firmware 1.x registers but reports 2.1: the 2.x map's p_w is not served
        "vx-2": DeviceState("vx-2", VOLTARIS_FW1, values=dict(VOLTARIS)),
        "wind-1": DeviceState("wind-1", MAPS.for_profile("opcua-wind")[0], values=dict(WIND)),
        "r01": DeviceState("r01", MAPS.for_profile("redfish-rack")[0], values=dict(RACK)),
    }
    units = [
        SimUnit(states["pv-1"], 1),
        SimUnit(states["bess-1"], 2),
        SimUnit(states["vx-1"], 3, firmware="1.4"),
        SimUnit(states["vx-2"], 4, firmware="2.1"),
    ]
    async with (
        ModbusSimServer(units) as modbus,
        OpcUaSimServer([states["wind-1"]], allow_insecure=True) as opcua,
        RedfishServer({"r01": states["r01"]}) as redfish,
    ):
        await modbus.start_tcp()
        text = SITE
        text += device("pv-1", "modbus-tcp", modbus.endpoint, "sunspec-pv", 1)
        text += device("bess-1", "modbus-tcp", modbus.endpoint, "sunspec-bess", 2)
        text += device("vx-2", "modbus-tcp", modbus.endpoint, "voltaris-dcb500", 4)
        text += device("wind-1", "opcua", f"127.0.0.1:{opcua.port}", "opcua-wind")
        text += device("r01", "redfish", f"127.0.0.1:{redfish.port}", "redfish-rack")
        text += device("gone", "modbus-tcp", f"127.0.0.1:{closed_port()}", "sunspec-pv")
        path = tmp_path_factory.mktemp("field") / "site.toml"
        path.write_text(text, encoding="utf-8")
        yield Field(path, modbus.endpoint, states)


async def edgectl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the CLI as a user would (its own event loop, here in a worker thread, while the
    servers answer on this one); its exit status, stdout and stderr."""
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


async def test_scan_lists_the_sunspec_models(
    field: Field, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await edgectl(capsys, "scan", field.modbus)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"{field.modbus} unit 1: SunSpec at 40000, 5 models"
    assert "serial pv-1" in lines[1]
    rows = [line.split() for line in lines[3:8]]
    assert [(int(r[0]), r[1]) for r in rows] == [
        (1, "common"),
        (103, "inverter_three_phase"),
        (120, "nameplate"),
        (123, "controls"),
        (160, "mppt"),
    ]
    assert [int(r[3]) for r in rows] == [40002, 40070, 40122, 40150, 40176]
    assert lines[-1] == "  profiles: sunspec-pv"

    code, out, _ = await edgectl(capsys, "scan", field.modbus, "--unit", "2", "--json")
    found = json.loads(out)
    assert code == 0 and found["unit"] == 2 and found["profiles"] == ["sunspec-bess"]
    assert [(m["id"], m["length"]) for m in found["models"]] == [(1, 66), (802, 62), (124, 24)]


async def test_scan_recognises_a_vendor_fingerprint(
    field: Field, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await edgectl(capsys, "scan", field.modbus, "--unit", "3")
    assert (code, err) == (0, "")
    assert "not SunSpec (40000: Modbus exception 2 (illegal data address)" in out
    assert "recognised Voltaris DCB-500 firmware 1.4 (profile voltaris-dcb500)" in out
    assert "map: modbus/voltaris/dcb500_fw1.toml" in out
    code, out, _ = await edgectl(capsys, "scan", field.modbus, "--unit", "4", "--json")
    vendor = json.loads(out)["vendor"]
    assert vendor == {
        "vendor": "Voltaris",
        "model": "DCB-500",
        "firmware": "2.1",
        "profile": "voltaris-dcb500",
        "map": "modbus/voltaris/dcb500_fw2.toml",
        "note": "",
    }


async def test_scan_of_an_absent_unit_names_the_exception(
    field: Field, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await edgectl(capsys, "scan", field.modbus, "--unit", "9")
    assert (code, out) == (EXIT_DEVICE, "")
    assert one_line(err) == (
        f"edgectl scan: {field.modbus} unit 9: read 4 at 40000: "
        "Modbus exception 11 (gateway target device failed to respond)"
    )


async def test_read_shows_every_point_with_unit_validity_and_age(
    field: Field, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await edgectl(capsys, "read", str(field.site), "pv-1")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith("pv-1: sunspec-pv (SunSpec (generic) PV converter")
    assert lines[0].endswith(f"firmware 1.0) at {field.modbus} unit 1")
    assert lines[1].split() == ["point", "value", "unit", "valid", "age_s"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert list(rows) == list(PV_MAP.points)
    assert rows["v_v"].split() == ["v_v", "812.3", "V", "ok", "0.0"]
    assert rows["limit_pct"].split()[1:4] == ["80", "%", "ok"]
    assert f"Wh    invalid: {NOT_IMPLEMENTED}" in rows["e_wh"]

    code, out, _ = await edgectl(capsys, "read", str(field.site), "pv-1", "--json")
    data = json.loads(out)
    assert code == 0 and data["profile"] == "sunspec-pv" and data["firmware"] == "1.0"
    assert set(data["points"]) == set(PV_MAP.points)
    assert data["points"]["p_rated_w"] | {"age_s": 0} == {
        "value": 1e6,
        "unit": "W",
        "valid": True,
        "reason": "",
        "age_s": 0,
    }
    assert data["points"]["e_wh"]["valid"] is False
    assert all(0 <= p["age_s"] < 5 for p in data["points"].values())

    code, out, _ = await edgectl(capsys, "read", str(field.site), "bess-1", "soc", "--json")
    assert code == 0 and list(json.loads(out)["points"]) == ["soc"]
    assert json.loads(out)["points"]["soc"]["value"] == pytest.approx(55.25)


async def test_read_over_opcua_and_redfish(
    field: Field, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await edgectl(capsys, "read", str(field.site), "wind-1", "--json")
    points = json.loads(out)["points"]
    assert code == 0 and points["p_w"]["value"] == pytest.approx(2_345_678.5)
    assert points["available_w"]["valid"] and points["available_w"]["unit"] == "W"
    code, out, _ = await edgectl(capsys, "read", str(field.site), "r01")
    assert code == 0 and "chassis r01" in out.splitlines()[0]
    assert out.splitlines()[3].split() == ["limit_w", "500", "W", "ok", "0.0"]


async def test_write_without_yes_writes_nothing(
    field: Field, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await edgectl(capsys, "write", str(field.site), "pv-1", "limit_pct", "42.5")
    assert (code, out) == (EXIT_USAGE, "")
    assert one_line(err) == (
        f"edgectl write: would write limit_pct = 42.5 % to pv-1 "
        f"(sunspec-pv at {field.modbus} unit 1); add --yes to write"
    )
    assert field.states["pv-1"].writes == {}


async def test_write_with_yes_lands_and_reads_back(
    field: Field, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ("write", str(field.site), "pv-1", "limit_pct", "42.5", "--yes")
    code, out, err = await edgectl(capsys, *argv)
    assert (code, err) == (0, "")
    assert out == "pv-1: wrote limit_pct = 42.5 %, read back 42.5 % (ok)\n"
    assert field.states["pv-1"].writes["limit_pct"].value == pytest.approx(42.5)
    field.states["pv-1"].writes.clear()

    argv = ("write", str(field.site), "r01", "limit_w", "700", "--yes")
    code, out, _ = await edgectl(capsys, *argv)
    assert code == 0 and "read back 700 W (ok)" in out
    assert field.states["r01"].writes["limit_w"].value == 700.0


@pytest.mark.parametrize(
    ("point", "value", "message"),
    [
        ("limit_pct", "abc", "VALUE 'abc' for limit_pct is not a number"),
        ("limit_pct", "nan", "VALUE 'nan' for limit_pct is not a finite number"),
        ("limit_pct", "120", "VALUE 120 % for limit_pct is outside its range 0 % to 100 %"),
        ("p_w", "5", "pv-1: point p_w is read-only"),
        ("nope", "5", "pv-1: no point 'nope' (points: p_w, e_wh,"),
    ],
)
async def test_a_bad_value_or_point_is_a_usage_error(
    field: Field, capsys: pytest.CaptureFixture[str], point: str, value: str, message: str
) -> None:
    code, out, err = await edgectl(capsys, "write", str(field.site), "pv-1", point, value, "--yes")
    assert (code, out) == (EXIT_USAGE, "")
    assert one_line(err).startswith(f"edgectl write: {message}")
    assert field.states["pv-1"].writes == {}


async def test_dump_replays_to_the_same_readings(
    field: Field, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "pv-1.json"
    code, out, _ = await edgectl(capsys, "dump", str(field.site), "pv-1", "-o", str(target))
    assert code == 0 and out == f"pv-1: 208 registers, 9 readings -> {target}\n"
    dump = load_dump(target)
    assert (dump["device"], dump["protocol"], dump["profile"]) == (
        "pv-1",
        "modbus-tcp",
        "sunspec-pv",
    )
    assert dump["map"]["file"] == "sunspec/generic/pv_dcdc_sunspec.toml"
    assert dump["registers"]["40000"] == 0x5375  # "Su" of the marker
    replayed = await replay_readings(dump)
    code, out, _ = await edgectl(capsys, "read", str(field.site), "pv-1", "--json")
    live = json.loads(out)["points"]
    for name, reading in replayed.items():
        want = live[name]
        assert (reading.value, reading.unit, reading.valid, reading.reason) == (
            want["value"],
            want["unit"],
            want["valid"],
            want["reason"],
        ), name
    assert set(replayed) == set(live) == set(readings_from_dump(dump))

    code, out, _ = await edgectl(capsys, "dump", str(field.site), "r01")
    resources = json.loads(out)["resources"]
    limit = resources["Controls/PowerLimit"]["SetPoint"]
    assert code == 0 and limit == field.states["r01"].values["limit_w"]


async def test_device_errors_are_one_line_exit_4(
    field: Field, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await edgectl(capsys, "read", str(field.site), "gone")
    assert (code, out) == (EXIT_DEVICE, "")
    assert one_line(err).startswith("edgectl read: gone: cannot connect to 127.0.0.1:")
    code, _, err = await edgectl(capsys, "read", str(field.site), "vx-2", "p_w")
    assert code == EXIT_DEVICE
    assert one_line(err) == (
        "edgectl read: vx-2: read 2 at 110: Modbus exception 2 (illegal data address)"
    )


async def test_unknown_device_and_bad_site(
    field: Field, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = await edgectl(capsys, "read", str(field.site), "pv-9")
    assert code == EXIT_USAGE
    assert one_line(err) == (
        f'edgectl read: {field.site}: no device "pv-9", did you mean "pv-1"? '
        "(devices: pv-1, bess-1, vx-2, wind-1, r01, gone)"
    )
    broken = tmp_path / "broken.toml"
    broken.write_text("[site]\n", encoding="utf-8")
    code, _, err = await edgectl(capsys, "dump", str(broken), "pv-1")
    assert code == EXIT_INPUT and "site.id: missing required key" in err


async def test_debug_shows_the_exception(field: Field) -> None:
    with pytest.raises(DeviceUnreachable, match="gone: cannot connect"):
        await asyncio.to_thread(main, ["--debug", "read", str(field.site), "gone"])


async def test_a_real_process_prints_one_line(field: Field) -> None:
    """No library log line on the screen: the unreachable device as the operator sees it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "edgectl", "read", str(field.site), "gone"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == EXIT_DEVICE and done.stdout == ""
    assert one_line(done.stderr).startswith("edgectl read: gone: cannot connect to 127.0.0.1:")
