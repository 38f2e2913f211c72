"""Writers: one task per device carries the cycle's setpoints to it, latest first.

The cycle hands each device its setpoint and goes on: a writer task writes it, and if the
device is slow the next cycle's setpoint simply replaces the one still waiting (only the
latest matters). A setpoint that did not change is written again only every
revert_s / REFRESH_PER_REVERT, so that the device's own fallback timer (SunSpec *_RvrtTms,
the heartbeat, the BMC's timer) never runs out while the controller lives, and does run out
soon after it dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass

import structlog

from edgectl.aio import STOP_TIMEOUT_S, cancel_and_wait
from edgectl.app.clock import Clock
from edgectl.config.site import Site
from edgectl.control.cycle import BatterySetpoint, Setpoints
from edgectl.devicemaps.readings import Reading
from edgectl.drivers.capabilities import BatteryControl, Curtailable, DroopControl
from edgectl.drivers.roles import RoleDriver
from edgectl.errors import EdgeError

REFRESH_PER_REVERT = 3.0
# A setpoint within this share of the rating of the last one written is not rewritten.
DEADBAND_SHARE = 0.005
WRITE_TIMEOUT_S = 5.0

log = structlog.get_logger("edgectl.writers")

Wanted = float | BatterySetpoint


@dataclass
class WriteStatus:
    """The last write that reached the device."""

    value: Wanted | None = None
    t_s: float = -math.inf  # when it was acknowledged (clock time)
    read_back: Reading | None = None
    error: str = ""
    writes: int = 0
    failures: int = 0


class DeviceWriter:
    """The writer task of one device."""

    def __init__(
        self, device_id: str, driver: RoleDriver, clock: Clock, revert_s: float, scale_w: float
    ) -> None:
        self.device_id = device_id
        self.driver = driver
        self.clock = clock
        self.refresh_s = revert_s / REFRESH_PER_REVERT
        self.deadband_w = DEADBAND_SHARE * scale_w
        self.status = WriteStatus()
        self._wanted: Wanted | None = None
        self._in_flight: Wanted | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def submit(self, value: Wanted) -> None:
        """The setpoint this device should hold now; replaces any still waiting."""
        self._wanted = value
        if self._due(value):
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"write-{self.device_id}")

    def take_task(self) -> asyncio.Task[None] | None:
        """The running task, handed over to whoever stops it (with the others at once)."""
        task, self._task = self._task, None
        return task

    async def stop(self) -> None:
        task = self.take_task()
        if task is not None and await cancel_and_wait([task], STOP_TIMEOUT_S):
            log.error("writer did not stop", device=self.device_id)

    async def flush(self, timeout_s: float) -> bool:
        """Write what is wanted now, whether due or not; True if it reached the device."""
        value = self._wanted
        if value is None:
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                return await self._write(value)
        # Cut short by the deadline: say so, or the status would show the last good write.
        return self._failed(f"no answer within {timeout_s:g} s (last setpoint before stopping)")

    def _due(self, value: Wanted) -> bool:
        if self._in_flight is not None:
            # Compared with what is on its way, not with what the device last took: a value
            # that went away and came back while a slow write was out must be written again.
            return _differs(value, self._in_flight, self.deadband_w)
        last = self.status.value
        if last is None or self.status.error:
            return True
        if self.clock.monotonic() - self.status.t_s >= self.refresh_s:
            return True
        return _differs(value, last, self.deadband_w)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            value = self._wanted
            if value is not None:
                await self._write(value)

    async def _write(self, value: Wanted) -> bool:
        self._in_flight = value
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can lose a cancel (edgectl.aio).
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                back = await self._send(value)
        except (EdgeError, TimeoutError, OSError, ValueError) as exc:
            return self._failed(str(exc) or type(exc).__name__)
        except Exception as exc:  # a driver bug must not take the loop down
            log.exception("write raised", device=self.device_id)
            return self._failed(f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._in_flight = None
        if not back.valid:
            return self._failed(f"read back invalid: {back.reason}")
        if self.status.error:
            log.info("device takes setpoints again", device=self.device_id)
        self.status.value, self.status.t_s = value, self.clock.monotonic()
        self.status.read_back, self.status.error = back, ""
        self.status.writes += 1
        return True

    def _failed(self, message: str) -> bool:
        if self.status.error != message:
            log.warning("setpoint not written", device=self.device_id, error=message)
        self.status.error = message
        self.status.failures += 1
        return False

    async def _send(self, value: Wanted) -> Reading:
        driver = self.driver
        if isinstance(value, BatterySetpoint):
            if value.mode == "hold" and isinstance(driver, BatteryControl):
                return await driver.set_power_w(value.p_w)
            if isinstance(driver, DroopControl):
                return await driver.set_droop(value.charge_limit_w)
            raise ValueError(f"the {driver.role} driver takes no battery setpoint")
        if isinstance(driver, Curtailable):
            return await driver.set_limit_w(value)
        raise ValueError(f"the {driver.role} driver takes no power limit")


class Writers:
    """Every device's writer, and the routing of a cycle's setpoints to them."""

    def __init__(
        self, site: Site, drivers: dict[str, RoleDriver], clock: Clock, revert_s: float
    ) -> None:
        scale: dict[str, float] = {}
        self._device_of: dict[str, str] = {}
        for src in site.sources:
            if src.device:
                self._device_of[src.id] = src.device
                scale[src.device] = src.p_max_w
        for rack in site.racks:
            if rack.device:
                self._device_of[rack.id] = rack.device
                scale[rack.device] = rack.p_max_w
        self.by_device = {
            device_id: DeviceWriter(device_id, driver, clock, revert_s, scale.get(device_id, 0.0))
            for device_id, driver in drivers.items()
            if device_id in scale
        }

    def submit(self, setpoints: Setpoints) -> None:
        for table in (setpoints.racks, setpoints.sources, setpoints.batteries):
            for element, value in table.items():
                writer = self.by_device.get(self._device_of.get(element, ""))
                if writer is not None:
                    writer.submit(value)

    def start(self) -> None:
        for writer in self.by_device.values():
            writer.start()

    def take_tasks(self) -> list[asyncio.Task[None]]:
        return [t for w in self.by_device.values() if (t := w.take_task()) is not None]

    async def stop(self) -> None:
        stuck = await cancel_and_wait(self.take_tasks(), STOP_TIMEOUT_S)
        if stuck:
            log.error("writers did not stop", tasks=stuck)

    async def flush(self, timeout_s: float) -> int:
        """Write every device's latest setpoint now, in parallel; how many did not land."""
        results = await asyncio.gather(
            *(w.flush(timeout_s) for w in self.by_device.values()), return_exceptions=True
        )
        return sum(1 for r in results if r is not True)


def _differs(value: Wanted, last: Wanted, deadband_w: float) -> bool:
    """Whether `value` is a different setpoint from `last` (beyond the deadband)."""
    if isinstance(value, BatterySetpoint) or isinstance(last, BatterySetpoint):
        if not (isinstance(value, BatterySetpoint) and isinstance(last, BatterySetpoint)):
            return True
        return (
            value.mode != last.mode
            or abs(value.p_w - last.p_w) > deadband_w
            or abs(value.charge_limit_w - last.charge_limit_w) > deadband_w
        )
    return abs(value - last) > deadband_w
