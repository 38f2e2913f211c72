"""`edgectl status [--status ADDR] [--json] [--watch [SECONDS]]`: the running daemon, now.

Asks the daemon's status API (`edgectl run` serves it on loopback) for its status
document and shows it as `edgectl.cli.view` lays it out: state, supply, racks, the last
decision. `--json` prints the document itself. `--watch` shows it again every SECONDS
(default 2) until Ctrl-C; a daemon that stops answering meanwhile is reported above the
last view and asked again, so a restart does not end the watch. Exit 0; 4 when the
daemon does not answer (at the first request); 64 for a bad address.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from edgectl.cli._field import run_quietly
from edgectl.errors import EdgeError, ProtocolError, UsageError

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

HELP = "show the running daemon's state, supply, racks and last decision"

ENV_ADDRESS = "EDGECTL_STATUS"
# The same as edgectl.transport.local_api.DEFAULT_ADDRESS, which is not imported here:
# it brings aiohttp, too slow for `edgectl --help`.
DEFAULT_ADDRESS = "127.0.0.1:8470"
DEFAULT_WATCH_S = 2.0
# Faster than this would only repeat the same cycle's numbers.
_MIN_WATCH_S = 0.1


def add_status_address(parser: argparse.ArgumentParser) -> None:
    """--status ADDR, shared with the other commands that ask the daemon."""
    parser.add_argument(
        "--status",
        metavar="ADDR",
        help=f"the daemon's status API: HOST:PORT on loopback or unix:/path/to/socket "
        f"(default: ${ENV_ADDRESS}, else {DEFAULT_ADDRESS})",
    )


def status_address(args: argparse.Namespace) -> str:
    """--status, else $EDGECTL_STATUS, else the default; UsageError naming where a bad
    address came from."""
    from edgectl.transport.local_api import parse_listen

    text: str
    if args.status is not None:
        text, origin = args.status, "--status"
    elif os.environ.get(ENV_ADDRESS):
        text, origin = os.environ[ENV_ADDRESS], ENV_ADDRESS
    else:
        return DEFAULT_ADDRESS
    try:
        parse_listen(text)
    except ValueError as exc:
        raise UsageError(f"{origin} {text!r}: {exc}") from None
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_status_address(parser)
    parser.add_argument("--json", action="store_true", help="print the status document as JSON")
    parser.add_argument(
        "--watch",
        nargs="?",
        const=DEFAULT_WATCH_S,
        type=_every,
        metavar="SECONDS",
        help=f"show it again every SECONDS (default {DEFAULT_WATCH_S:g}) until Ctrl-C; "
        "with --json, one document per line",
    )


def run(args: argparse.Namespace) -> int:
    address = status_address(args)
    if args.watch is not None:
        with contextlib.suppress(KeyboardInterrupt):  # how a watch ends
            run_quietly(args.debug, _watch(address, args.watch, args.json))
        return 0
    document = run_quietly(args.debug, _status(address))
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    from edgectl.cli.view import render_status

    console_for_stdout().print(render_status(document))
    return 0


def console_for_stdout() -> Console:
    """A rich Console on stdout; plain text, without any escape code, unless a terminal."""
    from rich.console import Console

    if sys.stdout.isatty():
        return Console(highlight=False)
    from edgectl.cli.view import MAX_WIDTH

    # Piped or redirected: no colour whatever FORCE_COLOR or TERM say, and the view's own
    # width unless COLUMNS asks for another.
    width = None if os.environ.get("COLUMNS", "").isdigit() else MAX_WIDTH
    return Console(
        highlight=False,
        color_system=None,
        force_terminal=False,
        force_interactive=False,
        width=width,
    )


async def _status(address: str) -> dict[str, Any]:
    from edgectl.transport.local_api import fetch_json

    document = await fetch_json(address, "/v1/status")
    if not isinstance(document, dict):
        raise ProtocolError(f"status API {address}", "GET /v1/status: not a JSON object")
    return document


async def _watch(address: str, every_s: float, as_json: bool) -> None:
    """Show the status every `every_s` until cancelled; only the first request must succeed."""
    import asyncio

    document = await _status(address)
    if as_json:
        while True:
            print(json.dumps(document), flush=True)
            await asyncio.sleep(every_s)
            try:
                document = await _status(address)
            except EdgeError as exc:
                print(f"edgectl status: {exc}; asking again in {every_s:g} s", file=sys.stderr)
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    from edgectl.cli.view import render_status

    console = console_for_stdout()
    problem: str | None = None

    def frame() -> RenderableType:
        parts: list[RenderableType] = []
        if problem is not None:
            parts.append(Text(f"{problem}; asking again every {every_s:g} s", style="yellow"))
        parts.append(render_status(document))
        footer = f"as of {time.strftime('%H:%M:%S')}, every {every_s:g} s; Ctrl-C to stop"
        parts.append(Text(footer, style="dim"))
        return Group(*parts)

    if not console.is_terminal:
        # No screen to redraw: one view after another, as a log.
        while True:
            console.print(frame())
            console.print()
            await asyncio.sleep(every_s)
            try:
                document, problem = await _status(address), None
            except EdgeError as exc:
                problem = str(exc)
    with Live(frame(), console=console, auto_refresh=False) as live:
        while True:
            await asyncio.sleep(every_s)
            try:
                document, problem = await _status(address), None
            except EdgeError as exc:
                problem = str(exc)
            live.update(frame(), refresh=True)


def _every(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < _MIN_WATCH_S:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least {_MIN_WATCH_S:g} s")
    return value
