"""`edgectl demo`: the controller on the simulated demo site, through a scripted day.

The simulator, a process of its own, serves the embedded demo site
(edgectl/sim/sites/demo_site.toml: PV, wind, two batteries, twelve GPU racks in four tiers,
every one on its device) on free loopback ports over Modbus TCP, OPC UA and Redfish. The
daemon, the very code `edgectl run` runs, polls those devices and writes their setpoints
over the same protocols, its clock scaled to the simulator's --speed, through the scripted
day (demo_day.toml beside the site: a cloud front, a gust, a turbine cut-out, a reboot, a
battery trip). At high speed the daemon cycles every --speed / CYCLES_PER_WALL_S simulated
seconds instead of every second, so that a small machine keeps up, and the devices' own
fallback timers are stretched to ten cycles.

The live view is the one of `edgectl status`, with the simulated time of day and the
events of the day above it. With --headless nothing is drawn and a summary is printed at
the end, for scripts. The daemon's log goes to edgectl-demo.log in the current directory.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgectl.app.daemon import Daemon

HELP = "watch the controller run a scripted day on the simulated demo site"

SITES = Path(__file__).resolve().parents[1] / "sim" / "sites"
CYCLES_PER_WALL_S = 20.0
REFRESH_PER_S = 4.0
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--speed",
        type=float,
        default=240.0,
        metavar="N",
        help="simulated seconds per wall second (default 240: the day in under 4 minutes)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        metavar="S",
        help="stop after S seconds of wall time (default: at the end of the scripted day)",
    )
    parser.add_argument(
        "--headless", action="store_true", help="draw nothing; print a summary at the end"
    )
    parser.add_argument("--start", default="06:00", metavar="HH:MM", help="solar time to start")
    parser.add_argument("--end", default="20:00", metavar="HH:MM", help="solar time to stop")
    parser.add_argument(
        "--site", metavar="FILE", help="another site file to run (default: the demo site)"
    )
    parser.add_argument(
        "--scenario", metavar="FILE", help="another scenario (default: the demo day)"
    )


def _clock_s(text: str, option: str) -> float:
    from edgectl.errors import UsageError

    match = _CLOCK.fullmatch(text.strip())
    if not match or int(match[1]) > 23 or int(match[2]) > 59:
        raise UsageError(f"{option} {text}: expected HH:MM (00:00 to 23:59)")
    return int(match[1]) * 3600.0 + int(match[2]) * 60.0


def run(args: argparse.Namespace) -> int:
    import asyncio
    import tempfile

    from edgectl.errors import UsageError
    from edgectl.kernels import require_compiled

    if not (math.isfinite(args.speed) and 1.0 <= args.speed <= 2000.0):
        raise UsageError(f"--speed {args.speed:g}: must be a number from 1 to 2000")
    if args.duration is not None and not (math.isfinite(args.duration) and args.duration > 0):
        raise UsageError(f"--duration {args.duration:g}: must be a positive number of seconds")
    start_s, end_s = _clock_s(args.start, "--start"), _clock_s(args.end, "--end")
    if end_s <= start_s:
        raise UsageError(f"--end {args.end} must be after --start {args.start}")
    require_compiled()
    with tempfile.TemporaryDirectory(prefix="edgectl-demo-") as tmp:
        return asyncio.run(_demo(args, Path(tmp), start_s, end_s))


def demo_site_text(site_file: Path, speed: float) -> tuple[str, float]:
    """The site on free ports, cycling slowly enough for the speed, its API on any port;
    and the device timeout (simulated seconds) to run the simulator with."""
    from edgectl.sim.ports import relocate

    text, _ = relocate(site_file.read_text(encoding="utf-8"))
    period = max(1.0, min(60.0, round(speed / CYCLES_PER_WALL_S)))
    text = re.sub(r"(?m)^period_s = .*$", f"period_s = {period:.1f}", text)
    # A pause of the event loop of a few tenths of a second is a minute of simulated time:
    # staleness is judged over six periods, and devices fall back after ten, not 60 s.
    stale, timeout = 6.0 * period, max(60.0, 10.0 * period)
    text += (
        f'\n[daemon]\nstatus_listen = "127.0.0.1:0"\nstartup_s = {20.0 * period:.1f}\n'
        f"stale_s = {stale:.1f}\nrevert_s = {timeout:.1f}\n"
    )
    return text, timeout


class _Simulator:
    """`edgectl sim` as a process of its own (the daemon gets the other core)."""

    def __init__(
        self, site_file: Path, scenario: str, speed: float, start: str, timeout_s: float
    ) -> None:
        import subprocess
        import sys

        from edgectl.sim.ports import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1/sim"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgectl",
                "sim",
                str(site_file),
                "--speed",
                f"{speed:g}",
                "--scenario",
                scenario,
                "--start-time",
                start,
                "--control-port",
                str(self.port),
                "--device-timeout",
                f"{timeout_s:g}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output: list[str] = []

    def wait_running(self, timeout_s: float = 30.0) -> None:
        """Block until the simulator says it is serving; UsageError with its output if not."""
        import time

        from edgectl.errors import EdgeError

        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.output.append(line.rstrip())
            if "running;" in line:
                return
        self.stop()
        raise EdgeError("the simulator did not start: " + " | ".join(self.output[-5:]))

    def state(self) -> dict[str, Any] | None:
        import json
        import urllib.request

        try:
            with urllib.request.urlopen(self.url, timeout=2.0) as answer:
                doc: dict[str, Any] = json.load(answer)
                return doc
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        import subprocess

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def _demo(args: argparse.Namespace, tmp: Path, start_s: float, end_s: float) -> int:
    import asyncio
    import contextlib
    import signal
    import time

    from edgectl.app.clock import Clock
    from edgectl.app.daemon import Daemon
    from edgectl.app.logs import configure_logging
    from edgectl.app.sdnotify import Notifier
    from edgectl.config.load import load_site
    from edgectl.sim.scenario import load_scenario
    from edgectl.sim.site import SiteSimulator

    site_src = Path(args.site) if args.site else SITES / "demo_site.toml"
    scenario_file = args.scenario or str(SITES / "demo_day.toml")
    site_file = tmp / "site.toml"
    text, timeout_s = demo_site_text(site_src, args.speed)
    site_file.write_text(text, encoding="utf-8")
    # Refused here, with the file's own name, rather than by the simulator's process.
    site = load_site(site_file)
    load_scenario(scenario_file, SiteSimulator(site).targets())
    log_file = Path.cwd() / "edgectl-demo.log"
    log = log_file.open("w", encoding="utf-8")
    configure_logging(json=True, level="info", stream=log)
    day_s = end_s - start_s
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    summary = _Summary(site.site.id, start_s)
    sim = _Simulator(site_file, scenario_file, args.speed, args.start, timeout_s)
    daemon: Daemon | None = None
    running: asyncio.Task[int] | None = None
    wall0 = time.monotonic()
    try:
        await asyncio.to_thread(sim.wait_running)
        daemon = Daemon(
            str(site_file),
            state_dir=tmp / "state",
            clock=Clock(args.speed),
            notifier=Notifier(None),
        )
        running = asyncio.create_task(daemon.run(install_signals=False))
        live = None if args.headless else _live()
        with live if live is not None else contextlib.nullcontext():
            while not stop.is_set() and not running.done() and sim.proc.poll() is None:
                if args.duration is not None and time.monotonic() - wall0 > args.duration:
                    break
                world = await asyncio.to_thread(sim.state)
                if world is not None:
                    summary.world = world
                    if float(world["time_s"]) >= day_s:
                        break
                status = daemon.status()
                summary.sample(status)
                if live is not None:
                    live.update(_view(status, summary.world, start_s, day_s))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0 / REFRESH_PER_S)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        if daemon is not None and running is not None:
            daemon.request_stop("demo over")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(running, 10.0)
        await asyncio.to_thread(sim.stop)
        log.close()
    assert daemon is not None and running is not None
    print(summary.text(daemon.status(), time.monotonic() - wall0, log_file), flush=True)
    failure = running.exception() if running.done() and not running.cancelled() else None
    if failure is not None:
        raise failure
    return 0


def _live() -> Any:
    from rich.live import Live

    return Live(refresh_per_second=REFRESH_PER_S, screen=False, transient=False)


def _view(status: dict[str, Any], world: dict[str, Any], start_s: float, day_s: float) -> Any:
    from rich.console import Group
    from rich.text import Text

    from edgectl.cli.view import render_status

    t_s = float(world.get("time_s", 0.0))
    head = Text()
    head.append(f"{world.get('time_of_day', '--:--')} solar time", style="bold")
    head.append(f"  day {100.0 * min(t_s / day_s, 1.0):.0f} % done, ")
    head.append(f"speed {world.get('speed', 0):g}x, the daemon cycles every ")
    head.append(f"{status['cycle']['period_s']:g} s of simulated time")
    events = Text()
    for event in world.get("events", [])[-4:]:
        when = _time_of_day(start_s + float(event["t_s"]))
        detail = ", ".join(
            f"{k} {v}" for k, v in event.items() if k not in ("t_s", "kind") and v not in (None, [])
        )
        events.append(f"{when}  {event['kind']}  {detail}\n", style="dim")
    return Group(head, events, render_status(status))


def _time_of_day(seconds: float) -> str:
    seconds %= 86_400.0
    return f"{int(seconds // 3600):02d}:{int(seconds % 3600 // 60):02d}"


class _Summary:
    """What the demo showed, gathered from the status document as it ran."""

    def __init__(self, site_id: str, start_s: float) -> None:
        self.site_id = site_id
        self.start_s = start_s
        self.world: dict[str, Any] = {}
        self.samples = 0
        self.min_v: float | None = None
        self.max_v: float | None = None
        self.max_curtailed_w = 0.0
        self.max_parked = 0
        self.states_seen: set[str] = set()

    def sample(self, status: dict[str, Any]) -> None:
        self.samples += 1
        self.states_seen.add(str(status["state"]))
        self.states_seen.update(str(t["to"]) for t in status["transitions"])
        bus = status["bus"]
        if bus.get("v_min_v") is not None:
            self.min_v = min(self.min_v or math.inf, bus["v_min_v"])
            self.max_v = max(self.max_v or 0.0, bus["v_max_v"])
        curtailed = sum(s.get("curtailed_w") or 0.0 for s in status["sources"].values())
        self.max_curtailed_w = max(self.max_curtailed_w, curtailed)
        parked = sum(1 for r in status["racks"].values() if r.get("on") is False)
        self.max_parked = max(self.max_parked, parked)

    def text(self, status: dict[str, Any], wall_s: float, log: Path) -> str:
        energy = status["green"]["energy_wh"]
        t_s = float(self.world.get("time_s", 0.0))
        events = self.world.get("events", [])
        share = status["green"]["share_rolling"]
        cycle = status["cycle"]
        lines = [
            f"edgectl demo: {self.site_id}, {_time_of_day(self.start_s)} to "
            f"{_time_of_day(self.start_s + t_s)} solar time ({t_s / 3600:.1f} h simulated "
            f"in {wall_s:.0f} s)",
            f"  cycles {cycle['count']}, every {cycle['period_s']:g} s; compute p50 "
            f"{cycle['p50_ms'] or 0:.2f} ms, p99 {cycle['p99_ms'] or 0:.2f} ms, "
            f"overruns {cycle['overruns']}",
            f"  states: {', '.join(sorted(self.states_seen))}; transitions "
            f"{len(status['transitions'])}",
        ]
        for t in status["transitions"][-8:]:
            when = f"t+{float(t['t_s']) / 60:5.1f} min"
            lines.append(f"    {when}  {t['from']} -> {t['to']}: {t['reason']}")
        lines += [
            f"  energy: PV {energy['pv'] / 1e3:,.0f} kWh, wind {energy['wind'] / 1e3:,.0f} kWh, "
            f"battery out {energy['bess_discharge'] / 1e3:,.0f} / in "
            f"{energy['bess_charge'] / 1e3:,.0f} kWh, grid {energy['grid'] / 1e3:,.0f} kWh, "
            f"racks {energy['racks'] / 1e3:,.0f} kWh",
            "  green share of the racks' energy: "
            + ("-" if share is None else f"{100 * share:.1f} %")
            + f" (minimum {100 * status['green']['green_share_min']:.0f} %)",
            f"  most curtailed at once {self.max_curtailed_w / 1e3:,.0f} kW; most racks "
            f"parked at once {self.max_parked}",
            "  bus voltage "
            + (
                "-"
                if self.min_v is None or self.max_v is None
                else f"{self.min_v:.0f} V to {self.max_v:.0f} V"
            ),
            f"  events of the day: {len(events)} seen; the daemon's log: {log}",
        ]
        return "\n".join(lines)
