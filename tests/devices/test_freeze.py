"""A measurement that stops moving becomes invalid: unit rules, then a stuck rack sensor
served by the Redfish simulator and seen through the rack's role driver."""

from __future__ import annotations

from pathlib import Path

from edgectl.devicemaps.loader import load_maps
from edgectl.devicemaps.readings import FROZEN, Reading
from edgectl.drivers.freeze import FreezeWatch
from edgectl.drivers.points import RedfishPoints
from edgectl.drivers.redfish import RedfishDevice
from edgectl.drivers.roles import RackDriver
from edgectl.sim.redfish_server import RedfishServer
from edgectl.sim.state import DeviceState


def r(value: float, t: float = 0.0) -> Reading:
    return Reading.ok(value, "W", t)


def test_a_value_that_stays_put_becomes_invalid_after_its_limit() -> None:
    watch = FreezeWatch({"p_w": 30.0})
    assert watch.check({"p_w": r(100.0)}, 0.0)["p_w"].valid
    assert watch.check({"p_w": r(100.0)}, 29.0)["p_w"].valid
    frozen = watch.check({"p_w": r(100.0)}, 30.0)["p_w"]
    assert not frozen.valid
    assert frozen.reason.startswith(FROZEN)
    assert frozen.value == 100.0
    # Any movement, however small, resets the watch.
    assert watch.check({"p_w": r(100.5)}, 31.0)["p_w"].valid
    assert watch.check({"p_w": r(100.5)}, 60.0)["p_w"].valid


def test_zero_invalid_and_unwatched_points_are_left_alone() -> None:
    watch = FreezeWatch({"p_w": 1.0})
    for t in range(10):
        assert watch.check({"p_w": r(0.0), "limit_w": r(5.0)}, float(t))["p_w"].valid
    bad = Reading.invalid("no answer", "W", 0.0)
    assert watch.check({"p_w": bad}, 100.0)["p_w"] is bad
    assert watch.check({"limit_w": r(5.0)}, 200.0)["limit_w"].valid


async def test_a_stuck_rack_sensor_is_reported_frozen(tmp_path: Path) -> None:
    (rack_map,) = load_maps().for_profile("redfish-rack")
    assert rack_map.points["p_w"].frozen_s == 30.0
    state = DeviceState(
        "r01",
        rack_map,
        values={"p_w": 80_000.0, "limit_w": 100_000.0, "limit_min_w": 36_000.0,
                "limit_max_w": 120_000.0},
    )  # fmt: skip
    now = [0.0]
    async with RedfishServer({"r01": state}) as server:
        points = RedfishPoints(
            "r01",
            server.url,
            rack_map,
            lambda chassis: RedfishDevice("r01", server.url, chassis, rack_map),
            chassis_id="r01",
        )
        rack = RackDriver(points, clock=lambda: now[0])
        await rack.open()
        for t, draw in ((0.0, 80_000.0), (10.0, 81_000.0), (20.0, 79_500.0)):
            now[0] = t
            state.values["p_w"] = draw
            assert (await rack.update())["p_w"].valid  # a live rack: it moves
        state.faults.stuck = True
        for t in (30.0, 45.0):
            now[0] = t
            state.values["p_w"] = 60_000.0 + t  # the physics moves, the sensor does not
            assert (await rack.update())["p_w"].valid
        now[0] = 60.0
        frozen = (await rack.update())["p_w"]
        assert not frozen.valid
        assert FROZEN in frozen.reason
        state.faults.stuck = False
        now[0] = 61.0
        state.values["p_w"] = 70_000.0
        assert (await rack.update())["p_w"].valid
        await rack.close()
