"""Pollers: one task per device refreshes its role driver; the cycle never waits on them.

A poller opens its device (identify, connect, subscribe), then calls `update()` every
control period. A device that does not answer is retried with a back-off that doubles up to
MAX_BACKOFF_PERIODS periods, so a dead device costs little and is found again soon after it
returns; Modbus devices behind one endpoint share a connection and the transport backs off
per unit on top. Whatever a driver raises, the poller logs it and goes on: garbage from a
device is an invalid reading, and even a bug in a driver never stops the control loop.
"""

from __future__ import annotations

import asyncio

import structlog

from edgectl.aio import STOP_TIMEOUT_S, cancel_and_wait
from edgectl.app.clock import Clock
from edgectl.control.snapshot import DeviceHealth
from edgectl.drivers.roles import RoleDriver
from edgectl.errors import DeviceError, EdgeError

MAX_BACKOFF_PERIODS = 8.0
# An update that takes longer than this (real seconds) is abandoned and counts as a failure.
POLL_TIMEOUT_S = 5.0

log = structlog.get_logger("edgectl.pollers")


class Poller:
    """Keeps one device's driver fresh and says how the device is doing."""

    def __init__(self, device_id: str, driver: RoleDriver, clock: Clock, period_s: float) -> None:
        self.device_id = device_id
        self.driver = driver
        self.clock = clock
        self.period_s = period_s
        self.health = DeviceHealth()
        self.answered_once = False
        self.errors = 0  # polls that failed, since start
        self.polls = 0
        self._opened = False
        self._failures = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"poll-{self.device_id}")

    def take_task(self) -> asyncio.Task[None] | None:
        """The running task, handed over to whoever stops it (with the others at once)."""
        task, self._task = self._task, None
        return task

    async def stop(self) -> None:
        task = self.take_task()
        if task is not None and await cancel_and_wait([task], STOP_TIMEOUT_S):
            log.error("poller did not stop", device=self.device_id)

    async def poll_once(self) -> None:
        """One poll: open if needed, update, and record how it went."""
        self.polls += 1
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can lose a cancel (edgectl.aio).
            if not self._opened:
                async with asyncio.timeout(POLL_TIMEOUT_S):
                    await self.driver.open()
                self._opened = True
            async with asyncio.timeout(POLL_TIMEOUT_S):
                await self.driver.update()
        except (EdgeError, TimeoutError, OSError) as exc:
            message = _message(exc)
            if isinstance(exc, DeviceError) and not exc.retryable:
                self._opened = False  # identify again: the device may have changed
            self._failed(message)
        except Exception as exc:  # a driver bug must not take the loop down
            log.exception("poll raised", device=self.device_id)
            self._failed(f"internal error in the driver: {type(exc).__name__}: {exc}")
        else:
            if self.health.error:
                log.info("device answers again", device=self.device_id)
            self.health = DeviceHealth(answered_t_s=self.clock.monotonic(), error="")
            self.answered_once = True
            self._failures = 0

    def _failed(self, message: str) -> None:
        self.errors += 1
        if self.health.error != message:
            log.warning("device not answering", device=self.device_id, error=message)
        self.health = DeviceHealth(answered_t_s=self.health.answered_t_s, error=message)
        self._failures += 1

    async def _run(self) -> None:
        while True:
            started = self.clock.monotonic()
            await self.poll_once()
            wait = self.period_s
            if self._failures:
                wait *= min(2.0 ** (self._failures - 1), MAX_BACKOFF_PERIODS)
            await self.clock.sleep_until(started + wait)


def _message(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {POLL_TIMEOUT_S:g} s"
    if isinstance(exc, DeviceError):
        # The device id is in the log context already; keep the rest.
        text = str(exc)
        prefix = f"{exc.device}: "
        return text[len(prefix) :] if text.startswith(prefix) else text
    return str(exc) or type(exc).__name__
