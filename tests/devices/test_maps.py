"""Device maps: the loader refuses bad maps with key paths, the firmware version chooses
among the maps of a profile, SUPPORTED.md is current, and every Modbus and SunSpec map
is served by the simulator and read back through the real driver."""

from __future__ import annotations

import textwrap
from functools import cache
from pathlib import Path

import pytest

from edgectl.devicemaps.codec import TYPES, PointCodec, modbus_codec, sunspec_codec
from edgectl.devicemaps.loader import (
    REGENERATE,
    LoadedMap,
    MapIndex,
    firmware_configs_root,
    load_map,
    load_maps,
    select_map,
    supported_md,
)
from edgectl.devicemaps.readings import Reading, Value
from edgectl.devicemaps.schema import DeviceMap, Point
from edgectl.devicemaps.sunspec import model_def
from edgectl.drivers.modbus import POLL_GROUPS, ModbusDevice
from edgectl.errors import InputError, Problem, UnsupportedDevice
from edgectl.sim.modbus_server import ModbusSimServer, SimUnit
from edgectl.sim.state import DeviceState
from edgectl.transport.modbus import ModbusTransport


@cache
def _index() -> MapIndex:
    return load_maps()


def _modbus_maps() -> list[LoadedMap]:
    return [m for m in _index().maps if m.map.map.protocol in ("sunspec", "modbus")]


def test_shipped_maps_load() -> None:
    index = _index()
    assert {"sunspec-pv", "sunspec-bess", "voltaris-dcb500"} <= set(index.profiles())
    assert len(index.for_profile("voltaris-dcb500")) == 2
    for loaded in _modbus_maps():
        assert loaded.map.map.document.strip()
        if loaded.map.map.vendor == "Voltaris":
            assert "fictional" in loaded.map.map.document


def test_the_modbus_and_sunspec_directories_hold_only_such_maps() -> None:
    root = firmware_configs_root()
    for protocol in ("sunspec", "modbus"):
        for path in (root / protocol).rglob("*.toml"):
            assert load_map(path).map.protocol == protocol, path


def test_supported_md_is_up_to_date() -> None:
    committed = firmware_configs_root() / "SUPPORTED.md"
    expected = supported_md(_index())
    current = committed.read_text(encoding="utf-8") if committed.exists() else ""
    assert current == expected, f"firmware_configs/SUPPORTED.md is out of date; run: {REGENERATE}"


def test_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match=r'did you mean "sunspec-pv"'):
        _index().for_profile("sunspec-pvv")


def _problems(tmp_path: Path, files: dict[str, str]) -> list[Problem]:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    with pytest.raises(InputError) as caught:
        load_maps(tmp_path)
    return caught.value.problems


VENDOR = """\
    [map]
    profile = "acme"
    vendor = "Acme"
    model = "X1"
    firmware = "{firmware}"
    protocol = "modbus"
    role = "pv"
    document = "Acme X1 register map"

    [modbus]
    fingerprint = {{ address = 0, type = "string", size = 2, equals = "X1" }}
    firmware_version = {{ address = 2, type = "u16", encoding = "major_minor" }}

    [points.p_w]
    address = 10
    type = "u32"
    unit = "W"
"""


def test_problems_name_file_key_path_and_expectation(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        {
            "modbus/acme/x1.toml": VENDOR.format(firmware="*")
            + """
    [points.v_v]
    adress = 11
    type = "u16"

    [points.i_a]
    address = 11
    type = "i16"
    range = [5.0, 1.0]
    """
        },
    )
    found = {(p.file, p.path): p.message for p in problems}
    file = f"{tmp_path.name}/modbus/acme/x1.toml"
    assert 'did you mean "address"' in found[(file, "points.v_v.adress")]
    assert found[(file, "points.i_a.range")].startswith("lower bound above upper bound")


def test_missing_wire_key(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        {
            "x1.toml": VENDOR.format(firmware="*")
            + """
    [points.v_v]
    type = "u16"
    """
        },
    )
    assert [(p.path, p.message) for p in problems] == [
        ("points.v_v.address", "required for protocol 'modbus'")
    ]


def test_overlapping_registers_and_bad_firmware_range(tmp_path: Path) -> None:
    text = (
        VENDOR.format(firmware="version two")
        + """
    [points.v_v]
    address = 11
    type = "u16"
    """
    )
    problems = _problems(tmp_path, {"x1.toml": text})
    messages = {p.path: p.message for p in problems}
    assert "overlap points.p_w" in messages["points.v_v.address"]
    assert "PEP 440" in messages["map.firmware"]


def test_overlapping_firmware_ranges_of_one_profile(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        {
            "a.toml": VENDOR.format(firmware=">=1.0,<2.0"),
            "b.toml": VENDOR.format(firmware=">=1.5"),
        },
    )
    assert [(p.path, "overlaps" in p.message) for p in problems] == [("map.firmware", True)]


SUNSPEC = """\
    [map]
    profile = "pv"
    vendor = "V"
    model = "M"
    protocol = "sunspec"
    role = "pv"
    document = "SunSpec"

    [sunspec]
    models = [1, 103]
"""


def test_sunspec_points_are_checked_against_the_definitions(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        {
            "pv.toml": SUNSPEC
            + """
    [points.p_w]
    sunspec = "103.Watts"

    [points.hz]
    sunspec = "103.Hz"
    unit = "Hz"
    access = "rw"

    [points.v]
    sunspec = "103.DCV"
    unit = "kV"
    """
        },
    )
    messages = {p.path: p.message for p in problems}
    assert 'no point "Watts"' in messages["points.p_w.sunspec"]
    assert "read-only" in messages["points.hz.access"]
    assert '"V"' in messages["points.v.unit"]


def test_sunspec_point_of_a_model_the_map_does_not_list(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        {
            "pv.toml": SUNSPEC
            + """
    [points.lim]
    sunspec = "123.WMaxLimPct"
    unit = "%"
    """
        },
    )
    assert [p.path for p in problems] == ["points.lim.sunspec"]
    assert "not in sunspec.models" in problems[0].message


def test_not_toml(tmp_path: Path) -> None:
    problems = _problems(tmp_path, {"bad.toml": "[map\n"})
    assert problems[0].path == "" and "not valid TOML" in problems[0].message


def _voltaris() -> list[DeviceMap]:
    return _index().for_profile("voltaris-dcb500")


def test_firmware_version_chooses_the_map() -> None:
    fw1, fw2 = sorted(_voltaris(), key=lambda m: m.map.firmware)
    assert select_map([fw1, fw2], "1.3", "pv7") is fw1
    assert select_map([fw1, fw2], "2.0", "pv7") is fw2
    with pytest.raises(UnsupportedDevice) as caught:
        select_map([fw1, fw2], "3.0", "pv7")
    message = str(caught.value)
    assert message.startswith("pv7: firmware 3.0")
    assert ">=1.0,<2.0" in message and ">=2.0,<3.0" in message
    with pytest.raises(UnsupportedDevice, match="does not report a firmware version"):
        select_map([fw1, fw2], None, "pv7")


def _codec(name: str, point: Point, device_map: DeviceMap) -> PointCodec:
    if point.sunspec is not None:
        model, pname = point.sunspec.split(".")
        return sunspec_codec(name, point, model_def(int(model)).point(pname))
    return modbus_codec(name, point, device_map.modbus)


def _sample(name: str, point: Point, device_map: DeviceMap, fraction: float) -> Value:
    codec = _codec(name, point, device_map)
    if TYPES[codec.type].kind == "string":
        return "SIM"
    low, high = point.range if point.range is not None else (0.0, 100.0)
    value = low + fraction * (high - low)
    integral = codec.scale == 1.0 and codec.offset == 0.0 and not codec.sf_register and not codec.sf
    return round(value) if integral and TYPES[codec.type].kind != "float" else value


def _close(got: Value | None, want: Value, lsb: float | None) -> bool:
    if isinstance(want, str) or got is None or isinstance(got, str):
        return got == want
    tolerance = lsb if lsb is not None else abs(want) * 2**-22
    return abs(got - want) <= tolerance * (1 + 1e-9)


@pytest.mark.parametrize("loaded", _modbus_maps(), ids=lambda m: m.file)
async def test_every_map_is_served_and_read_back(loaded: LoadedMap) -> None:
    device_map = loaded.map
    profile_maps = _index().for_profile(device_map.map.profile)
    values = {n: _sample(n, p, device_map, 0.37) for n, p in device_map.points.items()}
    state = DeviceState("dut", device_map, values=dict(values))
    server = ModbusSimServer(SimUnit(state, unit=7))
    await server.start_tcp()
    transport = ModbusTransport()
    try:
        device = ModbusDevice("dut", server.endpoint, 7, profile_maps, transport)
        assert await device.connect_and_identify() is device_map
        readings: dict[str, Reading] = {}
        for group in POLL_GROUPS:
            readings |= await device.poll(group)
        assert readings.keys() == device_map.points.keys()
        for name, want in values.items():
            reading = readings[name]
            assert reading.valid, (name, reading.reason)
            assert reading.unit == device_map.points[name].unit
            assert _close(reading.value, want, device.resolution(name)), (name, reading, want)
        for name, point in device_map.points.items():
            if point.access != "rw":
                continue
            target = _sample(name, point, device_map, 0.61)
            back = await device.write(name, target)
            assert back.valid and _close(back.value, target, device.resolution(name)), name
            assert state.writes[name].value == back.value
    finally:
        await transport.close()
        await server.stop()
