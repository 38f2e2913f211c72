"""`edgectl sim SITE`: serve every [[device]] of a site on 127.0.0.1, backed by physics.

Prints where each device listens and the control API's URL, then runs until SIGINT or
SIGTERM (exit 0 once everything is stopped) or for --duration seconds of wall time.
docs/simulator.md describes what is simulated, the control API and scenario files.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import re
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgectl.sim.control_api import ControlApi
    from edgectl.sim.site import SiteSimulator

HELP = "simulate a site: every [[device]] served on 127.0.0.1 by real protocol servers"

_STOP_TIMEOUT_S = 4.0
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("site", help="site file (TOML)")
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        metavar="N",
        help="simulated seconds per wall second (default 1; 20 for tests)",
    )
    parser.add_argument("--scenario", metavar="FILE", help="scripted events (TOML)")
    parser.add_argument(
        "--control-port",
        type=int,
        default=0,
        metavar="P",
        help="port of the control API on 127.0.0.1 (default 0: any free port, printed)",
    )
    parser.add_argument(
        "--start-time",
        default="10:00",
        metavar="HH:MM",
        help="local solar time when the simulation starts (default 10:00)",
    )
    parser.add_argument(
        "--day-of-year",
        type=int,
        default=172,
        metavar="N",
        help="day of the year, 1-365, for the sun's path (default 172, late June)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seed of the random processes"
    )
    parser.add_argument(
        "--duration",
        type=float,
        metavar="S",
        help="stop after S seconds of wall time (default: run until stopped)",
    )
    parser.add_argument(
        "--initial-soc",
        type=float,
        default=0.6,
        metavar="F",
        help="state of charge of every battery at the start, 0..1 (default 0.6)",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where the OPC UA server certificate and its trust list live (default: a "
        "temporary directory, removed at exit)",
    )
    parser.add_argument(
        "--device-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="simulated seconds after which a rack limit or turbine limit not rewritten, or "
        "a battery heartbeat that stopped, reverts (default 60, as on the real devices)",
    )
    parser.add_argument(
        "--insecure-opcua",
        action="store_true",
        help="also offer an OPC UA endpoint without security (benches only)",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log events (-vv: and the libraries)"
    )


def run(args: argparse.Namespace) -> int:
    from edgectl.config.load import load_site
    from edgectl.errors import EXIT_OK
    from edgectl.kernels import require_compiled
    from edgectl.sim.scenario import load_scenario
    from edgectl.sim.site import SiteSimulator

    require_compiled()
    start_s = _check_arguments(args)
    _configure_logging(args.verbose)
    site = load_site(args.site)
    sim = SiteSimulator(
        site,
        site_file=args.site,
        speed=args.speed,
        start_time_s=start_s,
        day_of_year=args.day_of_year,
        seed=args.seed,
        initial_soc=args.initial_soc,
        state_dir=Path(args.state_dir) if args.state_dir else None,
        insecure_opcua=args.insecure_opcua,
        redfish_revert_s=args.device_timeout,
        wind_revert_s=args.device_timeout,
        heartbeat_timeout_s=args.device_timeout,
    )
    scenario_note = ""
    if args.scenario:
        scenario = load_scenario(args.scenario, sim.targets())
        sim.schedule(scenario)
        scenario_note = f"scenario {args.scenario}: {len(scenario.events)} events"
    asyncio.run(_serve(sim, args, scenario_note))
    return EXIT_OK


def _check_arguments(args: argparse.Namespace) -> float:
    """Refuse a bad command line; the start time in seconds of the day."""
    from edgectl.errors import UsageError

    if not (math.isfinite(args.speed) and args.speed > 0):
        raise UsageError(f"--speed {args.speed:g}: must be a positive number")
    if args.duration is not None and not (math.isfinite(args.duration) and args.duration > 0):
        raise UsageError(f"--duration {args.duration:g}: must be a positive number of seconds")
    if not (math.isfinite(args.device_timeout) and args.device_timeout > 0):
        raise UsageError(f"--device-timeout {args.device_timeout:g}: must be a positive number")
    if not 0 <= args.control_port <= 65535:
        raise UsageError(f"--control-port {args.control_port}: must be 0..65535")
    if not 1 <= args.day_of_year <= 365:
        raise UsageError(f"--day-of-year {args.day_of_year}: must be 1..365")
    if not 0.0 <= args.initial_soc <= 1.0:
        raise UsageError(f"--initial-soc {args.initial_soc:g}: must be a fraction 0..1")
    match = _CLOCK.fullmatch(args.start_time.strip())
    hours, minutes, seconds = (
        (int(match[1]), int(match[2]), int(match[3] or 0)) if match else (99, 0, 0)
    )
    if hours > 23 or minutes > 59 or seconds > 59:
        raise UsageError(f"--start-time {args.start_time}: expected HH:MM (00:00 to 23:59)")
    return hours * 3600.0 + minutes * 60.0 + seconds


def _configure_logging(verbose: int) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        stream=sys.stderr,
        format="edgectl sim: %(levelname)s %(name)s: %(message)s",
    )
    if verbose < 2:
        for noisy in ("pymodbus", "asyncua", "aiohttp"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


async def _serve(sim: SiteSimulator, args: argparse.Namespace, scenario_note: str) -> None:
    from edgectl.errors import UsageError
    from edgectl.sim.control_api import ControlApi

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    api = ControlApi(sim, port=args.control_port)
    try:
        await sim.start()
        try:
            await api.start()
        except OSError as exc:
            raise UsageError(
                f"--control-port {args.control_port}: cannot listen on 127.0.0.1: "
                f"{exc.strerror or exc}"
            ) from None
        _announce(sim, args, api.url, scenario_note)
        assert sim.task is not None  # started
        waiting = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait(
                [waiting, sim.task], timeout=args.duration, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiting.cancel()
        failure = sim.task.exception() if sim.task.done() and not sim.task.cancelled() else None
        if failure is not None:
            raise failure
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_shutdown(sim, api), _STOP_TIMEOUT_S)
    print(
        f"edgectl sim: stopped at simulated {sim.snapshot()['time_of_day']} "
        f"({sim.t_s:.1f} s simulated)",
        flush=True,
    )


async def _shutdown(sim: SiteSimulator, api: ControlApi) -> None:
    await api.stop()
    await sim.stop()


def _announce(sim: SiteSimulator, args: argparse.Namespace, url: str, scenario_note: str) -> None:
    clock = sim.snapshot()["time_of_day"]
    print(
        f"edgectl sim: site {sim.site.site.id!r} from {args.site}: {clock} solar time, day "
        f"{sim.day_of_year}, speed {sim.speed:g}x, step {sim.step_s:g} s, seed {sim.seed}",
        flush=True,
    )
    for served in sim.served():
        print(served.line(), flush=True)
    print(f"{'control':<10} {'http':<10} {url}/v1/sim", flush=True)
    if scenario_note:
        print(f"edgectl sim: {scenario_note}", flush=True)
    if args.insecure_opcua:
        print(
            "edgectl sim: WARNING: --insecure-opcua: OPC UA also served WITHOUT security; "
            "anyone on this host can read and write the turbines",
            file=sys.stderr,
            flush=True,
        )
    print("edgectl sim: running; Ctrl-C or SIGTERM stops it", flush=True)
