"""Device writers on the real loop with fake drivers and a clock the test advances."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from edgectl.app.clock import Clock
from edgectl.app.writers import REFRESH_PER_REVERT, DeviceWriter, Writers
from edgectl.config.load import validate_site_dict
from edgectl.control.cycle import BatterySetpoint, Setpoints
from edgectl.devicemaps.readings import Reading
from edgectl.drivers.roles import RoleDriver
from edgectl.errors import DeviceTimeout

REVERT_S = 60.0
SCALE_W = 120_000.0  # deadband: 0.5 % of it, 600 W


class FakeCapped:
    """A fake driver with the Curtailable capability that records every limit written."""

    # A write can be held until the test opens the gate, or fail with the error it sets.

    role = "rack"

    def __init__(self, *, delay_s: float = 0.0) -> None:
        self.calls: list[float] = []
        self.delay_s = delay_s
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None
        self.back_invalid = False

    def limit_w(self) -> Reading:
        value = self.calls[-1] if self.calls else SCALE_W
        return Reading.ok(value, "W", 0.0)

    async def set_limit_w(self, limit_w: float) -> Reading:
        self.calls.append(limit_w)
        if self.gate is not None:
            await self.gate.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error
        if self.back_invalid:
            return Reading.invalid("out of range", "W", 0.0, limit_w)
        return Reading.ok(limit_w, "W", 0.0)


class FakeBattery:
    """A fake driver with the BatteryControl and DroopControl capabilities."""

    role = "battery"

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    async def set_power_w(self, p_w: float) -> Reading:
        self.calls.append(("power", p_w))
        return Reading.ok(p_w, "W", 0.0)

    async def set_droop(self, charge_limit_w: float) -> Reading:
        self.calls.append(("droop", charge_limit_w))
        return Reading.ok(charge_limit_w, "W", 0.0)


class FakeMeterOnly:
    """A fake driver that takes no setpoint at all."""

    role = "meter"


async def settle(rounds: int = 20) -> None:
    """Let the writer tasks run until they wait again."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def writer_for(driver: object, t: list[float]) -> DeviceWriter:
    clock = Clock(source=lambda: t[0])
    return DeviceWriter("dev", cast(RoleDriver, driver), clock, REVERT_S, SCALE_W)


async def test_only_the_newest_pending_setpoint_is_written_to_a_slow_device() -> None:
    t = [0.0]
    driver = FakeCapped()
    driver.gate = asyncio.Event()
    w = writer_for(driver, t)
    w.start()
    try:
        w.submit(100_000.0)
        await settle()
        assert driver.calls == [100_000.0]  # in flight, held by the device
        for value in (90_000.0, 80_000.0, 70_000.0):
            w.submit(value)
            await settle()
        assert driver.calls == [100_000.0]
        driver.gate.set()
        await settle()
        assert driver.calls == [100_000.0, 70_000.0]
        assert w.status.value == 70_000.0 and w.status.writes == 2
    finally:
        await w.stop()


async def test_the_newest_setpoint_is_written_after_a_slow_write_even_if_it_returns() -> None:
    t = [0.0]
    driver = FakeCapped()
    w = writer_for(driver, t)
    w.start()
    try:
        w.submit(SCALE_W)
        await settle()
        driver.gate = asyncio.Event()
        w.submit(100_000.0)  # in flight, held by the device
        await settle()
        w.submit(SCALE_W)  # wanted now: back to what was written first
        await settle()
        driver.gate.set()
        await settle()
        assert driver.calls == [SCALE_W, 100_000.0, SCALE_W]
    finally:
        await w.stop()


async def test_a_change_within_the_deadband_is_not_written() -> None:
    t = [0.0]
    driver = FakeCapped()
    w = writer_for(driver, t)
    w.start()
    try:
        w.submit(100_000.0)
        await settle()
        w.submit(100_500.0)  # 500 W: within 600 W
        await settle()
        assert driver.calls == [100_000.0]
        w.submit(100_700.0)  # 700 W from what was written
        await settle()
        assert driver.calls == [100_000.0, 100_700.0]
    finally:
        await w.stop()


async def test_an_unchanged_value_is_refreshed_after_revert_s_over_three() -> None:
    t = [0.0]
    driver = FakeCapped()
    w = writer_for(driver, t)
    refresh_s = REVERT_S / REFRESH_PER_REVERT
    w.start()
    try:
        w.submit(80_000.0)
        await settle()
        t[0] = refresh_s - 0.5
        w.submit(80_000.0)
        await settle()
        assert driver.calls == [80_000.0]
        t[0] = refresh_s
        w.submit(80_000.0)
        await settle()
        assert driver.calls == [80_000.0, 80_000.0]
        assert w.status.t_s == refresh_s
    finally:
        await w.stop()


async def test_battery_setpoints_go_to_the_capability_of_their_mode() -> None:
    t = [0.0]
    driver = FakeBattery()
    w = writer_for(driver, t)
    w.start()
    try:
        w.submit(BatterySetpoint("droop", 0.0, 300_000.0))
        await settle()
        w.submit(BatterySetpoint("hold", 50_000.0, 300_000.0))  # a mode change is always due
        await settle()
        w.submit(BatterySetpoint("hold", 50_100.0, 300_000.0))  # within the deadband
        await settle()
        assert driver.calls == [("droop", 300_000.0), ("power", 50_000.0)]
    finally:
        await w.stop()


async def test_a_failing_write_is_recorded_never_raised_and_retried_on_the_next_submit() -> None:
    t = [0.0]
    driver = FakeCapped()
    driver.fail = DeviceTimeout("dev", "no answer within 1 s")
    w = writer_for(driver, t)
    w.start()
    try:
        w.submit(90_000.0)
        await settle()
        assert w.status.error == "dev: no answer within 1 s"
        assert w.status.failures == 1 and w.status.writes == 0
        assert w.status.value is None
        assert w._task is not None and not w._task.done()  # the task lives on
        w.submit(90_000.0)  # the same value: due again because the last one failed
        await settle()
        assert driver.calls == [90_000.0, 90_000.0]
        assert w.status.error == "" and w.status.value == 90_000.0 and w.status.writes == 1
    finally:
        await w.stop()


@pytest.mark.parametrize(
    ("driver", "error"),
    [
        (FakeMeterOnly(), "the meter driver takes no power limit"),
        (FakeCapped(), "read back invalid: out of range"),
    ],
    ids=["no-capability", "invalid-read-back"],
)
async def test_a_write_that_cannot_land_is_an_error_not_an_exception(
    driver: object, error: str
) -> None:
    if isinstance(driver, FakeCapped):
        driver.back_invalid = True
    w = writer_for(driver, [0.0])
    assert await w.flush(1.0) is True  # nothing wanted yet: nothing to miss
    w.submit(50_000.0)
    assert await w.flush(1.0) is False
    assert w.status.error == error


async def test_a_driver_bug_is_recorded_as_an_internal_error() -> None:
    driver = FakeCapped()
    driver.fail = ZeroDivisionError("division by zero")
    w = writer_for(driver, [0.0])
    w.submit(50_000.0)
    assert await w.flush(1.0) is False
    assert w.status.error == "internal error: ZeroDivisionError: division by zero"


async def test_flush_writes_now_even_what_is_not_due() -> None:
    t = [0.0]
    driver = FakeCapped()
    w = writer_for(driver, t)
    w.submit(60_000.0)
    assert await w.flush(1.0) is True
    w.submit(60_100.0)  # not due: within the deadband
    assert await w.flush(1.0) is True
    assert driver.calls == [60_000.0, 60_100.0]


async def test_flush_reports_a_device_that_misses_its_deadline() -> None:
    slow = FakeCapped(delay_s=5.0)
    w = writer_for(slow, [0.0])
    w.submit(60_000.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await w.flush(0.05) is False
    assert loop.time() - started < 1.0
    # The status says it, not the last good write.
    assert w.status.error == "no answer within 0.05 s (last setpoint before stopping)"
    assert w.status.failures == 1


async def test_writers_route_setpoints_by_device_and_count_flush_misses() -> None:
    site = validate_site_dict(
        {
            "site": {"id": "w", "v_nominal_v": 800.0},
            "control": {"grid_import_max_w": 0.0},
            "bus": [{"id": "main"}],
            "source": [
                {
                    "id": "bess",
                    "kind": "bess",
                    "bus": "main",
                    "p_max_w": 1e5,
                    "p_charge_max_w": 1e5,
                    "capacity_wh": 1e5,
                    "soc_min": 0.1,
                    "soc_max": 0.9,
                    "v_ref_v": 800.0,
                    "droop_r_ohm": 0.1,
                    "i_max_a": 100.0,
                    "device": "b-dev",
                },
            ],
            "rack": [
                {
                    "id": rid,
                    "bus": "main",
                    "p_min_w": 10e3,
                    "p_max_w": SCALE_W,
                    "tier": 0,
                    "ramp_w_per_s": 10e3,
                    "device": f"{rid}-bmc",
                }
                for rid in ("fast", "slow")
            ],
            "device": [
                {
                    "id": "b-dev",
                    "protocol": "modbus-tcp",
                    "endpoint": "127.0.0.1:1502",
                    "profile": "sunspec-bess",
                },
                *(
                    {
                        "id": f"{rid}-bmc",
                        "protocol": "redfish",
                        "endpoint": f"127.0.0.1:{p}",
                        "profile": "redfish-rack",
                    }
                    for rid, p in (("fast", 8080), ("slow", 8081))
                ),
            ],
        },
        "<writers test>",
    )
    fast, slow, battery = FakeCapped(), FakeCapped(delay_s=5.0), FakeBattery()
    drivers = cast(dict[str, RoleDriver], {"fast-bmc": fast, "slow-bmc": slow, "b-dev": battery})
    writers = Writers(site, drivers, Clock(source=lambda: 0.0), REVERT_S)
    writers.submit(
        Setpoints(
            racks={"fast": 70_000.0, "slow": 80_000.0, "unknown": 1.0},
            sources={},
            batteries={"bess": BatterySetpoint("droop", 0.0, 40_000.0)},
        )
    )
    assert await writers.flush(0.1) == 1  # the slow BMC missed it
    assert fast.calls == [70_000.0] and slow.calls == [80_000.0]
    assert battery.calls == [("droop", 40_000.0)]
    assert writers.by_device["slow-bmc"].status.value is None  # it did not land
    assert writers.by_device["fast-bmc"].status.value == 70_000.0
