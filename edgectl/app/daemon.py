"""The daemon: config -> transports and drivers -> pollers -> the cycle -> writers, API.

`Daemon.run()` is what `edgectl run` does on the gateway:

    start      load the persisted counters, build the device drivers from the site file,
               start one poller and one writer per device, serve the status API
    loop       every control.period_s, on the clock: Controller.run_cycle (cycle.py);
               READY=1 to systemd after the first completed cycle, WATCHDOG=1 after each
               completed one; counters saved every SAVE_EVERY_S
    SIGHUP     the site file is loaded again between two cycles; an invalid file is logged
               and the running config stays; a valid one replaces the devices and the
               controller, keeping its state, counters and memory, and reconnects the
               upstream links if [uplink] changed, keeping the outbox, leases and ledger
    SIGTERM    STOPPING=1, one last cycle in STOPPING (SAFE caps), its setpoints written
               with a deadline, counters saved, exit 0; all within STOP_BUDGET_S

A cycle that starts later than one period after it was due is an overrun: counted, logged,
and the schedule moves on from now (cycles are skipped, never bunched).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from edgectl.aio import STOP_TIMEOUT_S, bounded, cancel_and_wait
from edgectl.app.api import StatusApi
from edgectl.app.clock import Clock
from edgectl.app.persist import SAVE_EVERY_S, StateStore
from edgectl.app.pollers import Poller
from edgectl.app.sdnotify import Notifier
from edgectl.app.status import CycleTimes, recorder_document, status_document
from edgectl.app.uplink import Upstream
from edgectl.app.writers import Writers
from edgectl.config.load import load_site
from edgectl.config.site import Site
from edgectl.control.accounting import Accounts
from edgectl.control.cycle import Controller, CycleRecord
from edgectl.control.snapshot import Snapshot, take_snapshot
from edgectl.control.states import State
from edgectl.drivers.registry import DeviceRegistry
from edgectl.drivers.roles import RoleDriver
from edgectl.errors import EdgeError, InputError

# SIGTERM to exit: the promise is 5 s (systemd's default TimeoutStopSec is far above).
STOP_BUDGET_S = 4.0
FINAL_WRITE_S = 2.5
SUMMARY_EVERY_S = 60.0
# A reload waits at most this many periods for the new devices' first answers.
RELOAD_WAIT_PERIODS = 3.0

log = structlog.get_logger("edgectl.daemon")


class _Io:
    """The device side of one site config: registry, drivers, pollers, writers."""

    def __init__(self, site: Site, site_file: str, clock: Clock) -> None:
        self.registry = DeviceRegistry(
            site, site_file=site_file, clock=clock.monotonic, revert_s=site.daemon.revert_s
        )
        self.drivers: dict[str, RoleDriver] = {}
        problems = []
        for device_id in self.registry.ids:
            try:
                self.drivers[device_id] = self.registry.driver(device_id)
            except InputError as exc:
                problems.extend(exc.problems)
        if problems:
            raise InputError(problems)
        period = site.control.period_s
        self.pollers = {d: Poller(d, drv, clock, period) for d, drv in self.drivers.items()}
        self.writers = Writers(site, self.drivers, clock, site.daemon.revert_s)

    def start(self) -> None:
        for poller in self.pollers.values():
            poller.start()
        self.writers.start()

    def all_answered(self) -> bool:
        return all(p.answered_once for p in self.pollers.values())

    async def stop(self) -> None:
        """Stop every poller and writer task at once, within STOP_TIMEOUT_S."""
        tasks = [t for p in self.pollers.values() if (t := p.take_task()) is not None]
        stuck = await cancel_and_wait(tasks + self.writers.take_tasks(), STOP_TIMEOUT_S)
        if stuck:
            log.error("device tasks did not stop; left to the loop's teardown", tasks=stuck)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.registry.close()


class Daemon:
    """One site's controller process."""

    def __init__(
        self,
        site_file: str,
        *,
        state_dir: Path,
        status_listen: str | None = None,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.site_file = site_file
        self.site = load_site(site_file)
        self.clock = clock or Clock()
        self.notifier = notifier or Notifier.from_environment()
        self.store = StateStore(state_dir)
        self.status_listen = status_listen or self.site.daemon.status_listen
        self.times = CycleTimes()
        self.records: deque[CycleRecord] = deque(maxlen=self.site.daemon.recorder_cycles)
        self._started_s = self.clock.monotonic()
        self._stop = asyncio.Event()
        self._stop_reason = ""
        self._reload = False
        self._ready = False
        self._last_kick_real = -1e9
        self._last_save_s = -1e9
        self._last_summary_s = -1e9
        self._last_status_state: State | None = None
        self.previous_run = ""
        accounts = self._load_accounts()
        self.io = _Io(self.site, site_file, self.clock)
        self.upstream = Upstream(
            self.site,
            site_file,
            state_dir,
            self.clock,
            accounts=accounts,
            pollers=self.io.pollers,
            writers=self.io.writers.by_device,
        )
        self.controller = self._controller(self.site, self.io, accounts)
        self.api: StatusApi | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def _load_accounts(self) -> Accounts:
        saved = self.store.load("accounts")
        meta = self.store.load("daemon") or {}
        self.previous_run = str(meta.get("run", "none"))
        return Accounts.from_dict(saved) if saved else Accounts()

    def _controller(self, site: Site, io: _Io, accounts: Accounts) -> Controller:
        return Controller(
            site,
            started_s=self._started_s,
            snapshot_source=self._snapshot_of(site, io),
            all_answered=io.all_answered,
            write=io.writers.submit,
            publish=self._published,
            watchdog=self._kick,
            accounts=accounts,
            leases=self.upstream.floors,
        )

    def _snapshot_of(self, site: Site, io: _Io) -> Callable[[float], Snapshot]:
        def snapshot(now_s: float) -> Snapshot:
            health = {d: p.health for d, p in io.pollers.items()}
            return take_snapshot(site, io.drivers, health, now_s)

        return snapshot

    # The status API's provider.
    def status(self) -> dict[str, Any]:
        now = self.clock.monotonic()
        doc = status_document(
            self.site,
            self.records[-1] if self.records else None,
            states=self.controller.states,
            times=self.times,
            pollers=self.io.pollers,
            writers=self.io.writers.by_device,
            green_share=self.controller.accounts.green_share(
                self.clock.wall(), self.site.control.green_window_s
            ),
            energy_wh=self.controller.accounts.energy_wh,
            uptime_s=now - self._started_s,
            now_s=now,
        )
        doc["uplink"] = self.upstream.delivery()
        return doc

    def cycles(self, last: int | None = None) -> dict[str, Any]:
        records = list(self.records)
        if last is not None:
            records = records[-last:] if last > 0 else []
        return recorder_document(self.site, records, self.controller.base_params)

    def request_stop(self, reason: str = "stop requested") -> None:
        self._stop_reason = reason
        self._stop.set()

    def request_reload(self) -> None:
        self._reload = True

    async def run(self, *, install_signals: bool = True) -> int:
        """Run until stopped; the exit status. Signals are only for the main thread."""
        structlog.contextvars.bind_contextvars(site=self.site.site.id)
        loop = asyncio.get_running_loop()
        self.loop = loop
        handlers: dict[signal.Signals, Callable[[], None]] = {}
        if install_signals:
            handlers = {
                signal.SIGTERM: lambda: self.request_stop("SIGTERM"),
                signal.SIGINT: lambda: self.request_stop("SIGINT"),
                signal.SIGHUP: self.request_reload,
            }
        for signum, handler in handlers.items():
            loop.add_signal_handler(signum, handler)
        try:
            # The API first: an address it cannot listen on stops the start before any
            # device is touched.
            self.api = StatusApi(self, self.status_listen, uplink=self.upstream)
            await self.api.start()
            self.io.start()
            await self.upstream.start()
            log.info(
                "started",
                site_file=self.site_file,
                status_api=self.api.url,
                devices=len(self.io.drivers),
                previous_run=self.previous_run,
                state_db=str(self.store.path),
            )
            self.store.save({"daemon": {"run": "running", "since_unix": time.time()}})
            await self._loop()
            await self._shutdown()
        finally:
            for signum in handlers:
                loop.remove_signal_handler(signum)
            await self._close()
        return 0

    async def _loop(self) -> None:
        period = self.site.control.period_s
        due = self.clock.monotonic()
        while not self._stop.is_set():
            stop_wait = asyncio.ensure_future(self._stop.wait())
            sleeper = asyncio.ensure_future(self.clock.sleep_until(due))
            await asyncio.wait([stop_wait, sleeper], return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            sleeper.cancel()
            if self._stop.is_set():
                break
            if self._reload:
                self._reload = False
                await self._do_reload()
                period = self.site.control.period_s
                due = max(due, self.clock.monotonic())  # the pause of a reload is no overrun
            now = self.clock.monotonic()
            late = now - due
            if late > period:
                self.times.overruns += 1
                log.warning("cycle overrun", late_s=round(late, 3), period_s=period)
                due = now
            structlog.contextvars.bind_contextvars(cycle=self.controller.cycle + 1)
            try:
                self.controller.run_cycle(now, self.clock.wall())
            except EdgeError as exc:
                log.error("cycle failed", error=str(exc))
            due += period
            if now - self._last_save_s >= SAVE_EVERY_S:
                self._save("running")
                self._last_save_s = now

    def _published(self, record: CycleRecord) -> None:
        self.records.append(record)
        self.times.add(record.compute_s)
        try:
            self.upstream.on_cycle(record)
        except Exception:  # reports and the ledger must never take the control loop down
            log.exception("upstream publishing failed")
        if record.transition is not None:
            t = record.transition
            log.warning(
                "state changed",
                before=t.before.name,
                after=t.after.name,
                reason=t.reason,
            ) if t.after >= State.DEGRADED else log.info(
                "state changed", before=t.before.name, after=t.after.name, reason=t.reason
            )
        if not record.verification.verified and record.state is not State.STARTING:
            log.warning("power flow did not verify", violations=record.verification.violations)
        if record.t_s - self._last_summary_s >= SUMMARY_EVERY_S:
            self._last_summary_s = record.t_s
            log.info(
                "cycle summary",
                state=record.state.name,
                served_kw=round(float(record.result.served_w) / 1e3, 1),
                supply_kw=round(float(record.result.supply_w) / 1e3, 1),
                p99_ms=self.times.as_dict(record.cycle, 0.0)["p99_ms"],
                overruns=self.times.overruns,
            )

    def _kick(self, record: CycleRecord) -> None:
        """READY after the first completed cycle; WATCHDOG after every completed one."""
        text = f"{record.state.name}, cycle {record.cycle}, {record.compute_s * 1e3:.1f} ms"
        if not self._ready:
            self._ready = True
            self.notifier.ready(text)
            self._last_status_state = record.state
            return
        real = time.monotonic()
        interval = self.notifier.watchdog_interval_s
        # At most four kicks per watchdog interval: enough margin, little traffic.
        if interval is None or real - self._last_kick_real >= interval / 4:
            self.notifier.watchdog()
            self._last_kick_real = real
            self.notifier.status(text)
        elif record.state != self._last_status_state:
            self.notifier.status(text)
        self._last_status_state = record.state

    async def _do_reload(self) -> None:
        self.notifier.reloading()
        try:
            site = load_site(self.site_file)
            io = _Io(site, self.site_file, self.clock)
            links = self.upstream.links_for(site, self.site_file)
        except EdgeError as exc:
            log.error(
                "reload rejected; running config kept",
                site_file=self.site_file,
                error=str(exc).replace("\n", "; "),
            )
            self.notifier.ready(f"{self.controller.state.name}, reload rejected")
            return
        await self.io.stop()
        with contextlib.suppress(Exception):
            await bounded(self.io.close(), 1.0)
        old = self.controller
        self.site, self.io = site, io
        self.controller = self._controller(site, io, old.accounts)
        self.controller.adopt(old)
        self.records = deque(self.records, maxlen=site.daemon.recorder_cycles)
        io.start()
        await self._first_answers(io)
        upstream = await self.upstream.reconfigure(
            site, links, pollers=io.pollers, writers=io.writers.by_device
        )
        log.info(
            "reloaded", site_file=self.site_file, devices=len(io.drivers), upstream=upstream
        )
        self.notifier.ready(f"{self.controller.state.name}, reloaded")

    async def _first_answers(self, io: _Io) -> None:
        """Wait until the new devices have answered once, RELOAD_WAIT_PERIODS at most: the
        new pollers start empty, and a cycle on them would take every input for lost and
        go SAFE for a reload. The setpoints written last stay in force meanwhile."""
        deadline = self.clock.monotonic() + RELOAD_WAIT_PERIODS * self.site.control.period_s
        while not io.all_answered() and self.clock.monotonic() < deadline:
            await asyncio.sleep(self.clock.real_s(self.site.control.period_s) / 20.0)

    async def _shutdown(self) -> None:
        """STOPPING: the last SAFE setpoints written, counters saved."""
        self.notifier.stopping()
        log.info("stopping", reason=self._stop_reason)
        started = time.monotonic()
        await self.io.stop()  # pollers and writer tasks; the drivers stay open
        try:
            self.controller.run_cycle(self.clock.monotonic(), self.clock.wall(), stopping=True)
        except EdgeError as exc:
            log.error("last cycle failed", error=str(exc))
        budget = max(0.5, min(FINAL_WRITE_S, STOP_BUDGET_S - (time.monotonic() - started)))
        missed = await self.io.writers.flush(budget)
        if missed:
            log.warning("last setpoints not written to every device", devices_missed=missed)
        self._save("stopped")

    def _save(self, run: str) -> None:
        self.store.save(
            {
                "accounts": self.controller.accounts.as_dict(),
                "daemon": {"run": run, "saved_unix": time.time(), "cycles": self.controller.cycle},
            }
        )

    async def _close(self) -> None:
        if self.api is not None:
            with contextlib.suppress(Exception):
                await bounded(self.api.stop(), 1.5)
        with contextlib.suppress(Exception):
            await bounded(self.upstream.stop(), 2.0)
        with contextlib.suppress(Exception):
            self.upstream.close()
        await self.io.stop()
        with contextlib.suppress(Exception):
            await bounded(self.io.close(), 1.0)
        self.store.close()
        self.notifier.close()
