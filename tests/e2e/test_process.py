"""End to end, the daemon as a process: signals, kill -9 and restart, and systemd's
notification socket. The simulator runs in the test; `edgectl run` runs as its own
process with its clock scaled to the simulator's speed."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from e2e_bench import DaemonProcess, simulator

from edgectl.app.clock import Clock
from edgectl.app.daemon import Daemon
from edgectl.app.persist import SAVE_EVERY_S
from edgectl.app.sdnotify import Notifier


def fetch(url: str, path: str) -> Any:
    with urllib.request.urlopen(url + path, timeout=5) as answer:
        return json.load(answer)


async def status_of(daemon: DaemonProcess) -> tuple[str, dict[str, Any]]:
    started = await daemon.wait_log("started")
    url = str(started["status_api"])
    return url, await asyncio.to_thread(fetch, url, "/v1/status")


async def wait_state(url: str, state: str, timeout_s: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        doc = await asyncio.to_thread(fetch, url, "/v1/status")
        if doc["state"] == state:
            return doc
        await asyncio.sleep(0.1)
    raise AssertionError(f"state {doc.get('state')} ({doc.get('state_reason')}), not {state}")


async def test_sigterm_stops_within_5_s_after_writing_safe_setpoints(tmp_path: Path) -> None:
    async with simulator(tmp_path, speed=5.0) as (sim, site_file):
        daemon = DaemonProcess(site_file, tmp_path / "state", time_scale=5.0)
        try:
            url, _ = await status_of(daemon)
            await wait_state(url, "NORMAL")
            t0 = time.monotonic()
            daemon.proc.send_signal(signal.SIGTERM)
            code = await daemon.wait_exit(5.0)
            assert code == 0
            assert time.monotonic() - t0 < 5.0
        finally:
            daemon.close()
        events = [line["event"] for line in daemon.log_lines()]
        assert "stopping" in events
        # The last setpoints are SAFE's: batteries and grid for ride_through_s (0.75 MW)
        # cannot carry 12 racks at full power, so tier 3 was parked at its floor.
        for rack in ("r06", "r12"):
            written = sim.links[rack].state.writes["limit_w"].value
            assert written == 36_000.0, (rack, written)
        tier0 = sim.links["r01"].state.writes["limit_w"].value
        assert isinstance(tier0, float) and tier0 > 36_000.0


async def test_sighup_with_a_broken_config_keeps_the_running_one(tmp_path: Path) -> None:
    async with simulator(tmp_path, speed=5.0) as (_sim, site_file):
        daemon = DaemonProcess(site_file, tmp_path / "state", time_scale=5.0)
        good = site_file.read_text(encoding="utf-8")
        try:
            url, _ = await status_of(daemon)
            before = (await wait_state(url, "NORMAL"))["cycle"]["count"]
            site_file.write_text(good.replace("[control]", "[control]\nperiode_s = 2.0"))
            daemon.proc.send_signal(signal.SIGHUP)
            rejected = await daemon.wait_log("reload rejected; running config kept")
            assert "control.periode_s" in rejected["error"]
            await asyncio.sleep(1.0)
            doc = await wait_state(url, "NORMAL")
            assert daemon.proc.poll() is None
            assert doc["cycle"]["count"] > before  # still cycling, on the old config
            # A valid file is taken, devices and all, without losing the state.
            site_file.write_text(
                good.replace("grid_import_max_w = 150_000.0", "grid_import_max_w = 100_000.0")
            )
            daemon.proc.send_signal(signal.SIGHUP)
            await daemon.wait_log("reloaded")
            doc = await wait_state(url, "NORMAL")
            assert doc["cycle"]["count"] > before
        finally:
            daemon.proc.send_signal(signal.SIGTERM)
            await daemon.wait_exit(5.0)
            daemon.close()


async def test_kill_9_devices_revert_and_restart_resumes_counters(tmp_path: Path) -> None:
    speed = 20.0
    # Evening: the batteries and the wind cannot carry every rack, so caps are written.
    async with simulator(tmp_path, speed=speed, start_time_s=19.5 * 3600.0) as (sim, site_file):
        state = tmp_path / "state"
        daemon = DaemonProcess(site_file, state, time_scale=speed)
        try:
            url, _ = await status_of(daemon)
            await wait_state(url, "NORMAL")

            def capped() -> list[str]:
                return [
                    r.id
                    for r in sim.site.racks
                    if (w := sim.links[r.id].state.writes.get("limit_w")) is not None
                    and float(w.value) < r.p_max_w - 1.0
                ]

            deadline = time.monotonic() + 20.0
            while not capped() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert capped(), "no rack was capped"
            await asyncio.sleep(1.5)  # 30 simulated seconds: counters saved meanwhile
            energy = (await asyncio.to_thread(fetch, url, "/v1/status"))["green"]["energy_wh"]
            daemon.proc.send_signal(signal.SIGKILL)
            await daemon.wait_exit(5.0)
        finally:
            daemon.close()
        killed_at = sim.t_s
        # Nobody refreshes the caps: every rack falls back to its own default (its rating)
        # once its BMC's timer (60 s) runs out.
        while capped():
            assert sim.t_s - killed_at < 90.0, capped()
            await asyncio.sleep(0.05)
        # The last write was at most a refresh (revert_s / 3) before the kill.
        assert sim.t_s - killed_at >= 60.0 - 60.0 / 3 - 2.0
        again = DaemonProcess(site_file, state, time_scale=speed)
        try:
            started = await again.wait_log("started")
            assert started["previous_run"] == "running"  # it did not stop cleanly
            resumed = (await asyncio.to_thread(fetch, started["status_api"], "/v1/status"))[
                "green"
            ]["energy_wh"]
            # Counted on from what was saved: at most SAVE_EVERY_S of simulated time (and a
            # cycle) before the kill is lost, at most the racks' full power over it.
            lost_wh = sum(r.p_max_w for r in sim.site.racks) * (SAVE_EVERY_S + 2.0) / 3600.0
            assert resumed["racks"] > 0.0
            assert resumed["racks"] >= energy["racks"] - lost_wh
        finally:
            again.proc.send_signal(signal.SIGTERM)
            await again.wait_exit(5.0)
            again.close()


class NotifyListener:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []

    def drain(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def times(self, message: str) -> list[float]:
        return [t for t, m in self.messages if m == message]


async def test_notify_ready_after_a_cycle_then_watchdog_every_cycle(tmp_path: Path) -> None:
    listener = NotifyListener(tmp_path / "notify.sock")
    env = {"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "4000000"}
    async with simulator(tmp_path, speed=1.0) as (_sim, site_file):
        daemon = DaemonProcess(site_file, tmp_path / "state", time_scale=1.0, env=env)
        try:
            await asyncio.to_thread(listener.drain, 8.0)
            ready = listener.times("READY=1")
            kicks = listener.times("WATCHDOG=1")
            assert len(ready) == 1
            assert kicks and kicks[0] > ready[0]
            gaps = [b - a for a, b in itertools.pairwise(kicks)]
            assert len(kicks) >= 4
            assert all(0.5 <= g <= 1.6 for g in gaps), gaps  # one per 1 s cycle
            assert any(m.startswith("STATUS=") and "cycle" in m for _, m in listener.messages)
            daemon.proc.send_signal(signal.SIGTERM)
            await daemon.wait_exit(5.0)
            await asyncio.to_thread(listener.drain, 0.3)
            assert listener.times("STOPPING=1")
        finally:
            daemon.close()


async def test_no_watchdog_once_a_cycle_hangs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon in a thread of its own; its cycle then blocks, as a hung kernel would."""
    import edgectl.control.cycle as cycle

    listener = NotifyListener(tmp_path / "notify.sock")
    hang = threading.Event()
    release = threading.Event()
    real_dispatch = cycle.dispatch

    def dispatch(*args: Any, **kwargs: Any) -> Any:
        if hang.is_set():
            release.wait(30.0)  # blocks the daemon's event loop: the cycle hangs
        return real_dispatch(*args, **kwargs)

    monkeypatch.setattr(cycle, "dispatch", dispatch)
    async with simulator(tmp_path, speed=1.0) as (_sim, site_file):
        holder: dict[str, Daemon] = {}

        def run() -> None:
            async def main() -> None:
                daemon = Daemon(
                    str(site_file),
                    state_dir=tmp_path / "state",
                    clock=Clock(1.0),
                    notifier=Notifier(str(listener.path), watchdog_timeout_s=2.0),
                )
                holder["daemon"] = daemon
                await daemon.run(install_signals=False)

            asyncio.run(main())

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        await asyncio.to_thread(listener.drain, 4.0)
        assert listener.times("READY=1") and listener.times("WATCHDOG=1")
        hang.set()
        await asyncio.to_thread(listener.drain, 1.5)  # the cycle in flight may still kick
        hung_at = time.monotonic()
        await asyncio.to_thread(listener.drain, 3.0)
        assert not [t for t in listener.times("WATCHDOG=1") if t > hung_at]
        release.set()
        hang.clear()
        await asyncio.to_thread(listener.drain, 3.0)
        assert [t for t in listener.times("WATCHDOG=1") if t > hung_at + 3.0]  # kicks again
        loop = asyncio.get_running_loop()
        daemon = holder["daemon"]
        daemon_loop = daemon.loop
        assert daemon_loop is not None
        daemon_loop.call_soon_threadsafe(daemon.request_stop, "test over")
        # Stop time is the SIGTERM test's business; here only that it does stop.
        await loop.run_in_executor(None, thread.join, 30.0)
        assert not thread.is_alive()
