"""`edgectl run --config SITE`: the control daemon (what systemd starts on the gateway).

Runs until SIGTERM or SIGINT (exit 0 after the last safe setpoints are written); SIGHUP
reloads the site file. Logs go to stderr as JSON lines when it is not a terminal (journald)
and readably on a terminal. The state directory holds the energy counters; systemd's
StateDirectory= sets $STATE_DIRECTORY.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

HELP = "run the control daemon: poll devices, decide every cycle, write setpoints"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="SITE", help="site file (TOML)")
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where counters persist (default: $STATE_DIRECTORY, else ./edgectl-state)",
    )
    parser.add_argument(
        "--status",
        metavar="ADDR",
        help='status API: loopback "host:port" or "unix:/path" (default: the site file\'s '
        "daemon.status_listen, 127.0.0.1:8470)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="least severe messages logged (default info)",
    )
    parser.add_argument(
        "--log-format",
        choices=("json", "console"),
        help="default: JSON lines unless stderr is a terminal",
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        metavar="N",
        help="run the clock N times faster than real time, for a test bench whose "
        "simulator runs with --speed N (default 1)",
    )


def state_dir_of(args: argparse.Namespace) -> Path:
    if args.state_dir:
        return Path(args.state_dir)
    from_systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(from_systemd or "edgectl-state")


def run(args: argparse.Namespace) -> int:
    import asyncio
    import sys

    import structlog

    from edgectl.aio import STOP_TIMEOUT_S, cancel_others
    from edgectl.app.clock import Clock
    from edgectl.app.daemon import Daemon
    from edgectl.app.logs import configure_logging
    from edgectl.errors import UsageError
    from edgectl.kernels import require_compiled

    if not (math.isfinite(args.time_scale) and args.time_scale > 0):
        raise UsageError(f"--time-scale {args.time_scale:g}: must be a positive number")
    require_compiled()
    json_logs = None if args.log_format is None else args.log_format == "json"
    configure_logging(json=json_logs, level=args.log_level)

    async def main() -> int:
        daemon = Daemon(
            args.config,
            state_dir=state_dir_of(args),
            status_listen=args.status,
            clock=Clock(args.time_scale),
        )
        code = await daemon.run()
        # asyncio.run's teardown would wait without end for a library task that ignores its
        # cancellation; the daemon has saved everything by now, so such a task is left.
        stuck = await cancel_others(STOP_TIMEOUT_S)
        if stuck:
            log = structlog.get_logger("edgectl.run")
            log.error("tasks ignore cancellation; exiting without them", tasks=stuck)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code

    return asyncio.run(main())
