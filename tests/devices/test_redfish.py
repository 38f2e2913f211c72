"""Redfish rack power limits end to end: the maps in firmware_configs/redfish served by the
simulated BMC over real HTTP on 127.0.0.1 and read and written through the real driver."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web

from edgectl.devicemaps.loader import load_map, validate_map_dict
from edgectl.devicemaps.readings import NOT_A_NUMBER, OUT_OF_RANGE, Reading
from edgectl.devicemaps.schema import DeviceMap
from edgectl.drivers.redfish import (
    FIELD_MISSING,
    NOT_IMPLEMENTED_NULL,
    RedfishDevice,
    parse_field,
)
from edgectl.errors import (
    DeviceTimeout,
    DeviceUnreachable,
    InputError,
    ProtocolError,
)
from edgectl.sim.redfish_server import RedfishServer
from edgectl.sim.state import DeviceState
from edgectl.transport.certs import make_self_signed
from edgectl.transport.redfish import RedfishAuth, RedfishClient, RedfishStatusError

T = TypeVar("T")

MAPS = Path(__file__).resolve().parents[2] / "firmware_configs" / "redfish"
CHASSIS = "1U"
CONTROL = f"/redfish/v1/Chassis/{CHASSIS}/Controls/PowerLimit"
# What a rack BMC serves, after the DMTF public-rackmount1 mockup.
RACK_VALUES: dict[str, float] = {
    "p_w": 374.0,
    "limit_w": 500.0,
    "limit_min_w": 150.0,
    "limit_max_w": 1000.0,
}


ALL_MAPS = sorted(MAPS.rglob("*.toml"))
MODERN = load_map(MAPS / "generic" / "rack_controls.toml")
LEGACY = load_map(MAPS / "generic" / "rack_legacy_power.toml")


def rack(device_map: DeviceMap, device_id: str = "rack-1") -> DeviceState:
    values = {k: v for k, v in RACK_VALUES.items() if k in device_map.points}
    return DeviceState(device_id, device_map, values=dict(values))


def custom_map(points: dict[str, dict[str, Any]]) -> DeviceMap:
    info = {
        "profile": "test",
        "vendor": "test",
        "model": "test",
        "protocol": "redfish",
        "role": "rack",
        "document": "test",
    }
    return validate_map_dict({"map": info, "points": points}, "test map")


@asynccontextmanager
async def serving(states: dict[str, DeviceState], **kwargs: Any) -> AsyncIterator[RedfishServer]:
    async with RedfishServer(states, **kwargs) as server:
        yield server


@asynccontextmanager
async def bmc(
    device_map: DeviceMap, *, timeout_s: float = 2.0
) -> AsyncIterator[tuple[DeviceState, RedfishServer, RedfishDevice]]:
    """One rack: its state, its BMC, and the driver talking to it."""
    state = rack(device_map)
    async with (
        serving({CHASSIS: state}) as server,
        RedfishDevice("rack-1", server.url, CHASSIS, device_map, timeout_s=timeout_s) as device,
    ):
        yield state, server, device


def methods(server: RedfishServer) -> list[tuple[str, int]]:
    return [(r.method, r.status) for r in server.requests]


async def timed(coro: Awaitable[T]) -> tuple[T, float]:
    start = time.monotonic()
    result = await coro
    return result, time.monotonic() - start


@pytest.mark.parametrize("path", ALL_MAPS, ids=lambda p: p.name)
async def test_every_map_served_and_read_back(path: Path) -> None:
    device_map = load_map(path)
    assert device_map.map.protocol == "redfish"
    async with bmc(device_map) as (_, _, device):
        readings = await device.poll()
    assert set(readings) == set(device_map.points)
    for name, reading in readings.items():
        assert reading.valid, (name, reading)
        assert reading.value == RACK_VALUES[name]
        assert reading.unit == device_map.points[name].unit == "W"


@pytest.mark.parametrize("path", ALL_MAPS, ids=lambda p: p.name)
async def test_every_rw_point_written_lands_in_the_device_and_reads_back(path: Path) -> None:
    device_map = load_map(path)
    writable = [name for name, p in device_map.points.items() if p.access == "rw"]
    assert writable
    async with bmc(device_map) as (state, server, device):
        for name in writable:
            back = await device.write(name, 420.0)
            assert back.valid and back.value == 420.0
            assert state.writes[name].value == 420.0
            assert (await device.poll([name]))[name].value == 420.0
    patches = [r for r in server.requests if r.method == "PATCH"]
    assert patches and all(r.status == 200 and r.if_match for r in patches)


async def test_modern_map_reads_the_control_and_the_sensor() -> None:
    async with bmc(MODERN) as (_, _, device):
        dump = await device.raw_dump()
    assert set(dump) == {"Sensors/TotalPower", "Controls/PowerLimit"}
    control = dump["Controls/PowerLimit"]
    assert control["@odata.id"] == CONTROL
    assert control["ControlType"] == "Power" and control["SetPointUnits"] == "W"
    assert (control["SetPoint"], control["AllowableMin"], control["AllowableMax"]) == (
        500,
        150,
        1000,
    )
    assert dump["Sensors/TotalPower"]["Reading"] == 374


async def test_legacy_map_reads_power_control() -> None:
    async with bmc(LEGACY) as (_, _, device):
        dump = await device.raw_dump()
    (control,) = dump["Power"]["PowerControl"]
    assert control["PowerConsumedWatts"] == 374
    assert control["PowerLimit"] == {
        "LimitInWatts": 500,
        "LimitException": "LogEventOnly",
        "CorrectionInMs": 50,
    }


async def test_service_root_chassis_collection_and_links() -> None:
    states = {CHASSIS: rack(MODERN), "legacy": rack(LEGACY, "rack-2")}
    async with serving(states) as server, RedfishClient(server.url) as client:
        root, _ = await client.get("/redfish/v1/")
        chassis, _ = await client.get(root["Chassis"]["@odata.id"])
        members = [m["@odata.id"] for m in chassis["Members"]]
        assert members == ["/redfish/v1/Chassis/1U", "/redfish/v1/Chassis/legacy"]
        modern, _ = await client.get(members[0])
        assert {"Controls", "Sensors"} <= modern.keys() and "Power" not in modern
        controls, _ = await client.get(modern["Controls"]["@odata.id"])
        assert [m["@odata.id"] for m in controls["Members"]] == [CONTROL]
        legacy, _ = await client.get(members[1])
        assert legacy["Power"] == {"@odata.id": "/redfish/v1/Chassis/legacy/Power"}
        assert "Controls" not in legacy


async def test_values_are_read_when_the_request_is_answered() -> None:
    async with bmc(MODERN) as (state, _, device):
        state.values["p_w"] = 612.5
        assert (await device.poll(["p_w"]))["p_w"].value == 612.5
        state.faults.stuck = True
        assert (await device.poll(["p_w"]))["p_w"].value == 612.5
        state.values["p_w"] = 700.0
        assert (await device.poll(["p_w"]))["p_w"].value == 612.5
        state.faults.stuck = False
        assert (await device.poll(["p_w"]))["p_w"].value == 700.0


async def test_scale_and_offset_apply_both_ways() -> None:
    device_map = custom_map(
        {
            "p_w": {"unit": "W", "path": "Sensors/TotalPower", "field": "Reading", "scale": 1000},
            "limit_w": {
                "unit": "W",
                "access": "rw",
                "path": "Controls/PowerLimit",
                "field": "SetPoint",
                "scale": 1000,
                "offset": 10,
            },
        }
    )
    async with bmc(device_map) as (state, _, device):
        raw = await device.raw_dump()
        assert raw["Sensors/TotalPower"]["Reading"] == pytest.approx(0.374)  # kW on the wire
        assert raw["Controls/PowerLimit"]["SetPoint"] == pytest.approx(0.49)
        assert (await device.poll())["p_w"].value == pytest.approx(374.0)
        back = await device.write("limit_w", 810.0)
        assert back.value == pytest.approx(810.0)
        assert state.writes["limit_w"].value == pytest.approx(810.0)
        assert (await device.raw_dump())["Controls/PowerLimit"]["SetPoint"] == pytest.approx(0.8)


async def test_etag_changes_after_a_patch() -> None:
    async with serving({CHASSIS: rack(MODERN)}) as server, RedfishClient(server.url) as client:
        before, etag = await client.get(CONTROL)
        assert etag is not None and before["@odata.etag"] == etag
        _, same = await client.get(CONTROL)
        assert same == etag
        await client.patch(CONTROL, {"SetPoint": 450})
        after, changed = await client.get(CONTROL)
    assert after["SetPoint"] == 450
    assert changed is not None and changed != etag
    assert [r.if_match for r in server.requests if r.method == "PATCH"] == [etag]


async def test_stale_if_match_gets_412_and_the_client_reads_again() -> None:
    state = rack(MODERN)
    async with serving({CHASSIS: state}) as server, RedfishClient(server.url) as client:
        _, etag = await client.get(CONTROL)
        state.write("limit_w", 600.0)  # changed behind the client's back: its ETag is stale
        answer = await client.patch(CONTROL, {"SetPoint": 450})
        assert answer["SetPoint"] == 450
        assert client.etag(CONTROL) == answer["@odata.etag"]
    assert methods(server) == [("GET", 200), ("PATCH", 412), ("GET", 200), ("PATCH", 200)]
    first, retry = (r for r in server.requests if r.method == "PATCH")
    assert first.if_match == etag and retry.if_match not in (None, etag)
    assert state.writes["limit_w"].value == 450


async def test_a_given_stale_etag_is_recovered_from_too() -> None:
    state = rack(MODERN)
    async with serving({CHASSIS: state}) as server, RedfishClient(server.url) as client:
        await client.patch(CONTROL, {"SetPoint": 300}, etag='"0000"')
    assert methods(server) == [("PATCH", 412), ("GET", 200), ("PATCH", 200)]
    assert state.writes["limit_w"].value == 300


@asynccontextmanager
async def fake_bmc(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """A misbehaving HTTP server on loopback, for what the simulated BMC never does."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def test_a_second_412_is_a_protocol_error() -> None:
    seen: list[str] = []

    async def always_changed(request: web.Request) -> web.Response:
        seen.append(request.method)
        if request.method == "GET":
            return web.json_response({"SetPoint": 1}, headers={"ETag": f'"{len(seen)}"'})
        return web.json_response({}, status=412)

    async with fake_bmc(always_changed) as url, RedfishClient(url, device="rack-9") as client:
        await client.get(CONTROL)
        with pytest.raises(RedfishStatusError) as caught:
            await client.patch(CONTROL, {"SetPoint": 450})
    assert caught.value.status == 412 and caught.value.device == "rack-9"
    assert seen == ["GET", "PATCH", "GET", "PATCH"]


async def test_out_of_range_setpoint_is_refused_with_the_device_message() -> None:
    async with bmc(MODERN) as (state, _, device):
        for value in (5000.0, 100.0):
            with pytest.raises(ProtocolError) as caught:
                await device.write("limit_w", value)
            assert isinstance(caught.value, RedfishStatusError)
            assert caught.value.status == 400
            assert caught.value.detail == (
                f"The value '{value:g}' for the property 'SetPoint' is not in the supported "
                "range of acceptable values."
            )
            assert caught.value.detail in str(caught.value)
        assert "limit_w" not in state.writes
        assert (await device.poll(["limit_w"]))["limit_w"].value == 500.0
        assert (await device.write("limit_w", 1000.0)).value == 1000.0  # the bound itself


async def test_legacy_negative_limit_is_refused() -> None:
    async with bmc(LEGACY) as (state, _, device):
        with pytest.raises(RedfishStatusError, match="not in the supported range"):
            await device.write("limit_w", -1.0)
    assert state.writes == {}


async def test_server_refuses_what_the_map_does_not_allow_to_write() -> None:
    state = rack(MODERN)
    async with serving({CHASSIS: state}) as server, RedfishClient(server.url) as client:
        refused = {
            "AllowableMax": "PropertyNotWritable",
            "Bogus": "PropertyUnknown",
        }
        for prop, message_id in refused.items():
            with pytest.raises(RedfishStatusError) as caught:
                await client.patch(CONTROL, {prop: 2})
            assert caught.value.status == 400 and f"'{prop}'" in caught.value.detail, message_id
        for bad in ("400", True, None):
            with pytest.raises(RedfishStatusError, match="not a type that the property"):
                await client.patch(CONTROL, {"SetPoint": bad, "ControlMode": "Override"})
        with pytest.raises(RedfishStatusError, match="read-only property"):
            await client.patch(CONTROL, {"SetPoint": 400, "ControlMode": "Override"})
    assert state.writes == {}  # all or nothing


async def test_write_refuses_read_only_and_unknown_points_before_any_request() -> None:
    async with bmc(MODERN) as (_, server, device):
        with pytest.raises(ValueError, match="'p_w' is read-only"):
            await device.write("p_w", 1.0)
        with pytest.raises(ValueError, match="'soc'"):
            await device.write("soc", 1.0)
        with pytest.raises(ValueError, match="not a finite number"):
            await device.write("limit_w", float("nan"))
        with pytest.raises(ValueError, match="'soc'"):
            await device.poll(["soc"])
    assert list(server.requests) == []


async def test_not_implemented_fault_gives_invalid_readings_not_exceptions() -> None:
    async with bmc(MODERN) as (state, _, device):
        state.faults.not_implemented = True
        state.faults.points = {"p_w", "limit_max_w"}
        readings = await device.poll()
        assert (await device.raw_dump())["Sensors/TotalPower"]["Reading"] is None
    for name in ("p_w", "limit_max_w"):
        assert not readings[name].valid and readings[name].reason == NOT_IMPLEMENTED_NULL
    assert readings["limit_w"].valid and readings["limit_min_w"].valid


async def test_garbage_fault_gives_invalid_readings_not_exceptions() -> None:
    async with bmc(LEGACY) as (state, _, device):
        state.faults.garbage = True
        # Enough polls to meet every kind of garbage the server cycles through.
        for _ in range(6):
            readings = await device.poll()
            for reading in readings.values():
                assert not reading.valid and reading.reason == NOT_A_NUMBER
                assert reading.value is None or isinstance(reading.value, str)
        state.faults.clear()
        assert all(r.valid for r in (await device.poll()).values())


async def test_missing_field_and_out_of_range_values_are_invalid() -> None:
    # The BMC serves the modern map; the driver's map expects a field it lacks.
    expecting = custom_map(
        {
            "p_w": {
                "unit": "W",
                "range": [0.0, 1000.0],
                "path": "Sensors/TotalPower",
                "field": "Reading",
            },
            "ghost_w": {"unit": "W", "path": "Controls/PowerLimit", "field": "Nope.Reading"},
        }
    )
    state = rack(MODERN)
    state.values["p_w"] = 1500.0
    async with (
        serving({CHASSIS: state}) as server,
        RedfishDevice("rack-1", server.url, CHASSIS, expecting) as device,
    ):
        readings = await device.poll()
    assert readings["p_w"] == Reading.invalid(OUT_OF_RANGE, "W", readings["p_w"].t_s, 1500.0)
    assert not readings["ghost_w"].valid and readings["ghost_w"].reason == FIELD_MISSING


async def test_offline_device_is_unreachable_and_recovers() -> None:
    async with bmc(MODERN) as (state, server, device):
        state.faults.offline = True
        with pytest.raises(DeviceUnreachable) as caught:
            await device.poll()
        assert caught.value.device == "rack-1" and caught.value.retryable
        # aiohttp tries a dropped keep-alive connection once more on a new one.
        assert set(methods(server)) == {("GET", 0)}
        state.faults.offline = False
        assert (await device.poll())["limit_w"].valid


async def test_stopped_server_refuses_connections() -> None:
    async with bmc(MODERN) as (_, server, device):
        await server.stop()
        with pytest.raises(DeviceUnreachable, match="rack-1"):
            await device.poll()


async def test_timeout_fault_times_out_within_the_configured_timeout() -> None:
    async with bmc(MODERN, timeout_s=0.4) as (state, _, device):
        state.faults.timeout = True
        start = time.monotonic()
        with pytest.raises(DeviceTimeout, match=r"no answer within 0\.4 s") as caught:
            await device.poll()
        elapsed = time.monotonic() - start
    assert caught.value.retryable
    assert 0.35 <= elapsed < 2.0


async def test_a_slow_bmc_does_not_hold_up_another_device() -> None:
    slow, fast = rack(MODERN, "rack-slow"), rack(MODERN, "rack-fast")
    slow.faults.latency_s = 0.6
    async with (
        serving({"slow": slow, "fast": fast}) as server,
        RedfishDevice("rack-slow", server.url, "slow", MODERN, timeout_s=5.0) as slow_device,
        RedfishDevice("rack-fast", server.url, "fast", MODERN, timeout_s=5.0) as fast_device,
    ):
        (slow_readings, slow_s), (fast_readings, fast_s) = await asyncio.gather(
            timed(slow_device.poll()), timed(fast_device.poll())
        )
    assert all(r.valid for r in slow_readings.values())  # slow, but within its timeout
    assert all(r.valid for r in fast_readings.values())
    assert slow_s >= 1.2  # two resources, each delayed 0.6 s
    assert fast_s < 0.5


async def test_http_errors_carry_the_redfish_message() -> None:
    async with serving({CHASSIS: rack(MODERN)}) as server, RedfishClient(server.url) as client:
        with pytest.raises(RedfishStatusError) as caught:
            await client.get(f"/redfish/v1/Chassis/{CHASSIS}/Controls/Nope")
    assert caught.value.status == 404 and not caught.value.retryable
    assert "The requested resource of type 'Resource' named '1U/Controls/Nope'" in str(caught.value)


async def test_answers_that_are_not_redfish_are_protocol_errors() -> None:
    async def broken(request: web.Request) -> web.Response:
        if request.path.endswith("plain"):
            return web.json_response({"error": {"code": "X", "message": "No cap here"}}, status=400)
        if request.path.endswith("busy"):
            return web.Response(status=503, text="<html>busy</html>")
        if request.path.endswith("list"):
            return web.json_response([1, 2])
        return web.Response(text="<html>login</html>")

    async with fake_bmc(broken) as url, RedfishClient(url) as client:
        with pytest.raises(RedfishStatusError) as caught:
            await client.get("/busy")
        assert caught.value.status == 503 and caught.value.retryable
        assert "Service Unavailable" in str(caught.value)
        with pytest.raises(RedfishStatusError, match="HTTP 400: No cap here"):
            await client.get("/plain")
        with pytest.raises(ProtocolError, match="not JSON"):
            await client.get("/page")
        with pytest.raises(ProtocolError, match="not a JSON object"):
            await client.get("/list")


async def test_basic_auth_and_secrets_stay_out_of_messages(tmp_path: Path) -> None:
    secret = "s3cret-Pw"
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text(secret + "\n")
    bad.write_text("wrong\n")
    state = rack(MODERN)
    async with serving({CHASSIS: state}, basic_auth=("admin", secret)) as server:
        auth = RedfishAuth.basic("admin", good)
        async with RedfishDevice("rack-1", server.url, CHASSIS, MODERN, auth) as device:
            assert (await device.write("limit_w", 400.0)).value == 400.0
        async with RedfishDevice(
            "rack-1", server.url, CHASSIS, MODERN, RedfishAuth.basic("admin", bad)
        ) as device:
            with pytest.raises(RedfishStatusError) as caught:
                await device.poll()
    assert caught.value.status == 401
    assert secret not in str(caught.value) and secret not in repr(auth)


async def test_session_token_is_read_again_when_it_expires(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("token-1\n")
    auth = RedfishAuth.session(token_file)
    async with (
        serving({CHASSIS: rack(MODERN)}, token="token-1") as server,
        RedfishDevice("rack-1", server.url, CHASSIS, MODERN, auth) as device,
    ):
        assert (await device.poll())["p_w"].valid
        server.token = "token-2"  # the session expired and a new token was written
        token_file.write_text("token-2\n")
        assert (await device.poll())["p_w"].valid
    statuses = [r.status for r in server.requests]
    assert statuses.count(401) == 1 and statuses[-1] == 200


async def test_https_trusts_the_given_ca_file_only(tmp_path: Path) -> None:
    der, key = tmp_path / "bmc.der", tmp_path / "bmc.key"
    make_self_signed(der, key, application_uri="urn:bmc", common_name="bmc", hosts=["127.0.0.1"])
    cert = tmp_path / "bmc.pem"
    cert.write_text(ssl.DER_cert_to_PEM_cert(der.read_bytes()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    async with serving({CHASSIS: rack(MODERN)}, ssl_context=context) as server:
        assert server.url.startswith("https://")
        async with RedfishDevice("rack-1", server.url, CHASSIS, MODERN, ca_file=cert) as device:
            assert (await device.poll())["limit_w"].value == 500.0
        async with RedfishDevice("rack-1", server.url, CHASSIS, MODERN) as device:
            with pytest.raises(DeviceUnreachable, match="certificate"):
                await device.poll()


def test_parse_field() -> None:
    assert parse_field("SetPoint") == ("SetPoint",)
    assert parse_field("PowerControl[0].PowerLimit.LimitInWatts") == (
        "PowerControl",
        0,
        "PowerLimit",
        "LimitInWatts",
    )
    assert parse_field("A[1][2].B") == ("A", 1, 2, "B")
    for bad in ("", "A..B", "[0]", "A[x]", "A.", "@odata.id", "A[0"):
        with pytest.raises(ValueError):
            parse_field(bad)


def test_bad_field_in_a_map_is_refused_naming_the_point() -> None:
    device_map = custom_map({"p_w": {"path": "Sensors/TotalPower", "field": "Reading[]"}})
    with pytest.raises(ValueError, match=r"points\.p_w"):
        RedfishDevice("rack-1", "http://127.0.0.1:1", CHASSIS, device_map)


def test_endpoint_and_auth_are_checked() -> None:
    for bad in ("ftp://bmc", "bmc:443", "http://admin:pw@bmc", "http://bmc/redfish", "http://"):
        with pytest.raises(ValueError):
            RedfishClient(bad)
    with pytest.raises(ValueError, match="https"):
        RedfishClient("http://bmc", ca_file="/etc/ssl/ca.pem")
    with pytest.raises(InputError, match=r"no-such-ca\.pem"):
        RedfishClient("https://bmc", ca_file="/nonexistent/no-such-ca.pem")
    with pytest.raises(ValueError):
        RedfishAuth(username="admin")
    with pytest.raises(ValueError):
        RedfishAuth(username="admin", password_file=Path("p"), token_file=Path("t"))
    with pytest.raises(InputError, match="missing-token"):
        RedfishAuth.session("/nonexistent/missing-token").headers()
    assert RedfishAuth().headers() == {}
