"""The end-to-end bench: the site simulator and the daemon in one event loop, over the real
protocols on 127.0.0.1, with the daemon's clock following the simulator's (faster than
real time), and a sampler that watches the physical site for the invariants."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgectl.app.clock import Clock
from edgectl.app.daemon import Daemon
from edgectl.app.sdnotify import Notifier
from edgectl.config.load import load_site
from edgectl.config.site import Site
from edgectl.control.cycle import CycleRecord
from edgectl.sim.ports import relocate
from edgectl.sim.scenario import parse_event, parse_faults
from edgectl.sim.site import SiteSimulator

DEMO = Path(__file__).resolve().parents[2] / "edgectl" / "sim" / "sites" / "demo_site.toml"
# What the racks need to follow a first cap from their rating to their floor (ramp).
SETTLE_S = 5.0
# Short hysteresis and start-up, so that the tests see transitions within seconds.
# Real seconds the in-process bench's simulator catches up after a stall (see bench()).
STALL_LIMIT_S = 0.1

FAST_DAEMON = """
[daemon]
status_listen = "127.0.0.1:0"
recover_s = 5.0
startup_s = 5.0
"""


@dataclass
class Samples:
    """What the sampler saw of the physical site, every simulator step or so."""

    t_s: list[float] = field(default_factory=list)
    soc: dict[str, list[float]] = field(default_factory=dict)
    grid_w: list[float] = field(default_factory=list)
    racks_w: list[float] = field(default_factory=list)
    v_min_v: list[float] = field(default_factory=list)
    v_max_v: list[float] = field(default_factory=list)


@dataclass
class Bench:
    sim: SiteSimulator
    daemon: Daemon
    site: Site
    site_file: Path
    samples: Samples

    @property
    def records(self) -> list[CycleRecord]:
        return list(self.daemon.records)

    async def run_until(self, t_s: float, timeout_s: float = 120.0) -> None:
        """Let the bench run until simulated time t_s."""
        deadline = time.monotonic() + timeout_s
        while self.sim.t_s < t_s:
            if time.monotonic() > deadline:
                raise AssertionError(f"simulated time stuck at {self.sim.t_s:.1f} s")
            await asyncio.sleep(0.01)

    async def wait_for(
        self, check: Callable[[], bool], within_s: float, what: str = "condition"
    ) -> float:
        """Run until check() holds, at most within_s simulated seconds; when it held."""
        end = self.sim.t_s + within_s
        while not check():
            if self.sim.t_s > end:
                raise AssertionError(f"{what} not within {within_s} s (at t={self.sim.t_s:.1f})")
            await asyncio.sleep(0.005)
        return self.sim.t_s

    async def event(self, **data: Any) -> None:
        await self.sim.apply(parse_event(data, self.sim.targets()))

    def faults(self, device: str, **data: Any) -> None:
        points = self.sim.targets().devices[device]
        faults, duration = parse_faults(data, points, source="test")
        self.sim.set_faults(device, faults, duration)

    def status(self) -> dict[str, Any]:
        return self.daemon.status()

    @property
    def state(self) -> str:
        return self.daemon.controller.state.name


async def _sample(sim: SiteSimulator, samples: Samples) -> None:
    while True:
        samples.t_s.append(sim.t_s)
        for bid, battery in sim.bess.items():
            samples.soc.setdefault(bid, []).append(battery.soc)
        samples.grid_w.append(
            sum(sim.source_p_w.get(s.id, 0.0) for s in sim.site.sources_of("grid"))
        )
        samples.racks_w.append(sum(sim.rack_p_w.values()))
        volts = [v for v in sim.bus_v.values() if v > 0]
        samples.v_min_v.append(min(volts) if volts else 0.0)
        samples.v_max_v.append(max(volts) if volts else 0.0)
        await asyncio.sleep(0.01)


def write_site(
    directory: Path,
    extra: str = FAST_DAEMON,
    base: Path = DEMO,
    edit: Callable[[str], str] | None = None,
) -> Path:
    """The demo site on free ports, edited, with `extra` appended."""
    text, _ = relocate(base.read_text(encoding="utf-8"))
    if edit is not None:
        text = edit(text)
    path = directory / "site.toml"
    path.write_text(text + extra, encoding="utf-8")
    return path


@contextlib.asynccontextmanager
async def bench(
    tmp_path: Path,
    *,
    speed: float = 10.0,
    start_time_s: float = 10 * 3600.0,
    initial_soc: float = 0.6,
    seed: int = 1,
    edit: Callable[[str], str] | None = None,
    extra: str = FAST_DAEMON,
    settle_s: float = 8.0,
) -> AsyncIterator[Bench]:
    """A running bench, past STARTING (settle_s of simulated time)."""
    site_file = write_site(tmp_path, extra=extra, edit=edit)
    site = load_site(site_file)
    # The daemon's clock is the simulator's: a stall of this (shared, loaded) process
    # pauses both instead of jumping simulated time past every input's staleness limit.
    sim = SiteSimulator(
        site,
        speed=speed,
        seed=seed,
        start_time_s=start_time_s,
        initial_soc=initial_soc,
        lag_limit_s=STALL_LIMIT_S,
    )
    await sim.start()
    daemon = Daemon(
        str(site_file),
        state_dir=tmp_path / "state",
        clock=Clock(speed, source=sim.now),
        notifier=Notifier(None),
    )
    samples = Samples()
    sampler = asyncio.create_task(_sample(sim, samples))
    run = asyncio.create_task(daemon.run())
    b = Bench(sim, daemon, site, site_file, samples)
    try:
        await b.run_until(settle_s)
        yield b
    finally:
        daemon.request_stop("test over")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(run, 10.0)
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        await sim.stop()


def check_invariants(b: Bench) -> None:
    """The four invariants of the control loop, over every cycle and sample of the run."""
    site = b.site
    records = [r for r in b.records if r.setpoints is not None]
    assert records, "no cycle wrote setpoints"
    p_min = [r.p_min_w for r in site.racks]
    step = [r.ramp_w_per_s * site.control.period_s for r in site.racks]
    last_verified: list[float] | None = None
    previous: CycleRecord | None = None
    for rec in records:
        caps = rec.caps_w
        on = rec.rack_on
        allowed = rec.verification.rack_cap_w if rec.verification.verified else last_verified
        for i, rack in enumerate(site.racks):
            if not rec.estimate.rack_controllable[i]:
                continue
            if on[i] and allowed is not None:
                # No cap above what the last verified power flow allowed.
                assert caps[i] <= allowed[i] + 1e-6, (rec.cycle, rack.id, caps[i], allowed[i])
            if previous is not None and on[i] and previous.rack_on[i]:
                # No cap moving faster than its ramp.
                moved = abs(caps[i] - previous.caps_w[i])
                assert moved <= step[i] + 1e-6, (rec.cycle, rack.id, moved, step[i])
            if not on[i]:
                assert caps[i] == p_min[i]
        if rec.verification.verified:
            last_verified = list(rec.verification.rack_cap_w)
        previous = rec
    # No battery below soc_min or above soc_max (a little slack for one step of physics).
    for src in site.sources_of("bess"):
        socs = b.samples.soc[src.id]
        assert min(socs) >= (src.soc_min or 0.0) - 1e-3, (src.id, min(socs))
        assert max(socs) <= (src.soc_max or 1.0) + 1e-3, (src.id, max(socs))
    # No grid import above its cap, and no export through an import-only tie, once the
    # controller had its first setpoints in and the racks had time to follow them.
    settled = records[0].t_s + SETTLE_S
    grid = [g for t, g in zip(b.samples.t_s, b.samples.grid_w, strict=True) if t >= settled]
    cap = site.control.grid_import_max_w
    assert max(grid) <= cap * 1.001, max(grid)
    assert min(grid) >= -1.0, min(grid)
    assert all(math.isfinite(v) for v in grid)


@contextlib.asynccontextmanager
async def simulator(
    tmp_path: Path,
    *,
    speed: float,
    extra: str = FAST_DAEMON,
    edit: Callable[[str], str] | None = None,
    start_time_s: float = 10 * 3600.0,
) -> AsyncIterator[tuple[SiteSimulator, Path]]:
    """The demo site's simulator alone, serving on free ports; its site file."""
    site_file = write_site(tmp_path, extra=extra, edit=edit)
    sim = SiteSimulator(load_site(site_file), speed=speed, seed=1, start_time_s=start_time_s)
    await sim.start()
    try:
        yield sim, site_file
    finally:
        await sim.stop()


class DaemonProcess:
    """`edgectl run` as its own process, as systemd starts it; stderr kept in a file."""

    def __init__(
        self,
        site_file: Path,
        state_dir: Path,
        *,
        time_scale: float,
        env: dict[str, str] | None = None,
        status: str | None = None,
    ) -> None:
        import os
        import subprocess
        import sys

        self.log_path = state_dir.parent / f"daemon-{time.monotonic_ns()}.log"
        self.status_addr = status
        args = [
            sys.executable,
            "-m",
            "edgectl",
            "run",
            "--config",
            str(site_file),
            "--state-dir",
            str(state_dir),
            "--time-scale",
            str(time_scale),
            "--log-format",
            "json",
        ]
        if status is not None:
            args += ["--status", status]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )

    def log_lines(self) -> list[dict[str, Any]]:
        import json

        out = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
        return out

    async def wait_log(self, event: str, timeout_s: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.log_lines():
                if line.get("event") == event:
                    return line
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"no {event!r} in the daemon's log:\n{self.log_path.read_text(errors='replace')}"
        )

    async def wait_exit(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"daemon still running after {timeout_s} s")
            await asyncio.sleep(0.02)
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()
