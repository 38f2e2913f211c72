"""Pollers on the real loop with a fake driver and a clock the test advances."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping
from typing import cast

import pytest

from edgectl.app import pollers
from edgectl.app.clock import Clock
from edgectl.app.pollers import MAX_BACKOFF_PERIODS, Poller
from edgectl.devicemaps.readings import Reading
from edgectl.drivers.roles import RoleDriver
from edgectl.errors import DeviceTimeout, ProtocolError, UnsupportedDevice

PERIOD_S = 1.0


class FakeDriver:
    """A fake driver with the Polled capability, raising what the test sets."""

    # open() and update() record the (clock) time they were called.

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.opens: list[float] = []
        self.updates: list[float] = []
        self.fail: BaseException | None = None
        self.fail_open: BaseException | None = None
        self.hang = False

    async def open(self) -> None:
        self.opens.append(self.clock.monotonic())
        if self.fail_open is not None:
            raise self.fail_open

    async def update(self) -> Mapping[str, Reading]:
        self.updates.append(self.clock.monotonic())
        if self.hang:
            await asyncio.sleep(3600.0)
        if self.fail is not None:
            raise self.fail
        return {"p_w": Reading.ok(1.0, "W", self.clock.monotonic())}

    def readings(self) -> Mapping[str, Reading]:
        return {}


def make(t: list[float]) -> tuple[Poller, FakeDriver]:
    # A huge scale: the poller's sleeps are microseconds of real time, and its notion of
    # time is only what the test sets in t.
    clock = Clock(scale=1e6, source=lambda: t[0])
    driver = FakeDriver(clock)
    return Poller("dev-1", cast(RoleDriver, driver), clock, PERIOD_S), driver


async def advance(t: list[float], until_s: float, step_s: float = 0.25) -> None:
    """Move the clock forward in steps, letting the poller task run at each."""
    while t[0] < until_s:
        t[0] += step_s
        await asyncio.sleep(0.001)


async def test_a_device_error_sets_the_error_and_keeps_the_last_answer_time() -> None:
    t = [10.0]
    poller, driver = make(t)
    await poller.poll_once()
    assert poller.health.answered_t_s == 10.0 and poller.health.error == ""
    assert poller.answered_once
    t[0] = 11.0
    driver.fail = DeviceTimeout("dev-1", "no answer within 0.5 s")
    await poller.poll_once()
    assert poller.health.error == "no answer within 0.5 s"  # the device id is not repeated
    assert poller.health.answered_t_s == 10.0
    assert (poller.errors, poller.polls) == (1, 2)


async def test_a_device_that_never_answered_has_no_answer_time() -> None:
    t = [0.0]
    poller, driver = make(t)
    driver.fail = OSError("connection refused")
    await poller.poll_once()
    assert poller.health.answered_t_s is None
    assert poller.health.error == "connection refused"
    assert not poller.answered_once


async def test_recovery_clears_the_error() -> None:
    t = [0.0]
    poller, driver = make(t)
    driver.fail = DeviceTimeout("dev-1", "timeout")
    await poller.poll_once()
    driver.fail = None
    t[0] = 4.0
    await poller.poll_once()
    assert poller.health.error == ""
    assert poller.health.answered_t_s == 4.0
    assert poller.answered_once


async def test_back_off_doubles_up_to_its_cap_and_resets_on_recovery() -> None:
    t = [0.0]
    poller, driver = make(t)
    driver.fail = DeviceTimeout("dev-1", "timeout")
    poller.start()
    try:
        await advance(t, 40.0)
        gaps = [b - a for a, b in itertools.pairwise(driver.updates)]
        cap = MAX_BACKOFF_PERIODS * PERIOD_S
        # Polls at 0, 1, 3, 7, 15, 23, 31, 39: waits of 1, 2, 4, then 8 periods at most.
        assert gaps == pytest.approx([1.0, 2.0, 4.0, cap, cap, cap, cap], abs=0.26)
        driver.fail = None
        await advance(t, 52.0)
        assert poller.health.error == ""
        recovered = [u for u in driver.updates if u > 40.0]
        after = [b - a for a, b in itertools.pairwise(recovered)]
        assert after and after[-3:] == pytest.approx([PERIOD_S] * len(after[-3:]), abs=0.26)
    finally:
        await poller.stop()


async def test_a_driver_bug_does_not_stop_the_poller() -> None:
    t = [0.0]
    poller, driver = make(t)
    driver.fail = KeyError("no such point")
    poller.start()
    try:
        await advance(t, 10.0)
        assert poller._task is not None and not poller._task.done()
        assert poller.health.error == "internal error in the driver: KeyError: 'no such point'"
        assert poller.errors >= 3
        driver.fail = None
        before = len(driver.updates)
        await advance(t, 30.0)
        assert len(driver.updates) > before
        assert poller.health.error == ""
    finally:
        await poller.stop()
    assert poller._task is None


@pytest.mark.parametrize(
    ("error", "reopened"),
    [
        (ProtocolError("dev-1", "Modbus exception 2 (illegal data address)"), True),
        (UnsupportedDevice("dev-1", "no map for firmware 9.9"), True),
        (DeviceTimeout("dev-1", "timeout"), False),
    ],
    ids=["protocol-error", "unsupported", "retryable-timeout"],
)
async def test_a_non_retryable_device_error_makes_it_open_again(
    error: Exception, reopened: bool
) -> None:
    t = [0.0]
    poller, driver = make(t)
    await poller.poll_once()
    assert len(driver.opens) == 1
    driver.fail = error
    await poller.poll_once()
    driver.fail = None
    await poller.poll_once()
    assert len(driver.opens) == (2 if reopened else 1)
    assert poller.health.error == ""


async def test_a_failed_open_is_retried_before_any_update() -> None:
    t = [0.0]
    poller, driver = make(t)
    driver.fail_open = DeviceTimeout("dev-1", "no identification")
    await poller.poll_once()
    assert driver.updates == [] and poller.health.error == "no identification"
    driver.fail_open = None
    await poller.poll_once()
    assert len(driver.opens) == 2 and len(driver.updates) == 1
    assert poller.health.error == ""


async def test_an_update_that_hangs_is_abandoned_as_a_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pollers, "POLL_TIMEOUT_S", 0.05)
    t = [0.0]
    poller, driver = make(t)
    driver.hang = True
    await asyncio.wait_for(poller.poll_once(), 2.0)
    assert poller.health.error == "no answer within 0.05 s"
