"""The `edgectl` command line: one subcommand per module in this package.

Each command module defines `HELP`, `add_arguments(parser)` and `run(args) -> int`
and keeps its heavy imports inside `run`, so that `edgectl --help` stays fast on a
gateway CPU. Operator errors (EdgeError) print one line and exit with their own
status; anything else is a bug: one line, exit 70, and the traceback with --debug.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from edgectl import __version__
from edgectl.errors import EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, EdgeError

# subcommand -> module in edgectl.cli
COMMANDS = {
    "check-config": "check_config",
    "powerflow": "powerflow",
    "dispatch": "dispatch",
    "bench": "bench",
    "sim": "sim",
    "scan": "scan",
    "read": "read",
    "write": "write",
    "dump": "dump",
    "status": "status",
    "dump-cycles": "dump_cycles",
    "run": "run",
    "demo": "demo",
    "audit": "audit",
}


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors; 2 means a bad input file here, so use 64."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgectl", description="Site controller for a green-power DC site.")
    parser.add_argument("--version", action="version", version=f"edgectl {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"edgectl.cli.{module_name}")
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        code: int = args._run(args)
        return code
    except EdgeError as exc:
        if args.debug:
            raise
        print(f"edgectl {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into `head` and closed: not an error. Silence the flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # a bug: keep the operator's screen clean, keep the detail
        if args.debug:
            raise
        print(
            f"edgectl {args.command}: internal error: {type(exc).__name__}: {exc} "
            "(run with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
