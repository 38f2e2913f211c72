"""`edgectl dump-cycles [--status ADDR] [--last N] [-o FILE]`: the daemon's flight recorder.

Asks the running daemon for the cycles it has recorded (each with its snapshot, dispatch,
verified result and reasons; `--last N` for the last N only) and writes the document as
JSON to FILE, or to stdout without -o. FILE is replaced at once (written beside it, then
renamed), so a reader never sees half a file and a failed dump leaves the old one. Exit 0;
2 for a FILE that cannot be written (a directory, a missing directory); 4 when the daemon
does not answer; 64 for a bad address or --last.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from edgectl.cli._field import run_quietly
from edgectl.cli.status import add_status_address, status_address
from edgectl.errors import InputError, Problem, ProtocolError

HELP = "write the running daemon's recorded cycles (inputs and decisions) as JSON"

# The recorder can hold many cycles, each with a whole snapshot: more than a status.
_TIMEOUT_S = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_status_address(parser)
    parser.add_argument(
        "--last", metavar="N", type=_count, help="only the last N cycles (default: all recorded)"
    )
    parser.add_argument("-o", "--output", metavar="FILE", help="write to FILE (default: stdout)")


def run(args: argparse.Namespace) -> int:
    address = status_address(args)
    target = None if args.output is None else writable(args.output)
    document = run_quietly(args.debug, _fetch(address, args.last))
    text = json.dumps(document, indent=1, allow_nan=False) + "\n"
    if target is None:
        sys.stdout.write(text)
        return 0
    write_atomically(target, text, args.output)
    print(summary(document["cycles"], args.output), file=sys.stderr)
    return 0


def writable(name: str) -> Path:
    """`name` as a file that can be written or replaced; InputError naming it if not."""
    path = Path(name)
    if path.is_dir():
        raise InputError([Problem(name, "", "is a directory; give a file name")])
    parent = path.parent
    if not parent.exists():
        raise InputError([Problem(name, "", f"cannot write: no directory {parent}")])
    if not parent.is_dir():
        raise InputError([Problem(name, "", f"cannot write: {parent} is not a directory")])
    return path


def write_atomically(path: Path, text: str, name: str) -> None:
    """Write `text` beside `path`, then rename it over `path`; InputError naming `name`."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    try:
        # Mode 0666 less the umask, as any new file gets (a temporary file's 0600 would
        # stay on the dump).
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        partial.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        reason = exc.strerror or type(exc).__name__
        raise InputError([Problem(name, "", f"cannot write: {reason}")]) from None


def summary(cycles: list[Any], name: str) -> str:
    """What was written, and how to replay a cycle of it."""
    numbers = [n for c in cycles if isinstance(n := _dict(c).get("cycle"), int)]
    if not cycles:
        return f"wrote 0 cycles to {name}: the daemon has recorded none yet"
    count = f"{len(cycles)} cycle{'' if len(cycles) == 1 else 's'}"
    if numbers:
        first, last = min(numbers), max(numbers)
        count += f" (cycle {first})" if first == last else f" (cycle {first} to {last})"
    return (
        f"wrote {count} to {name}; replay one with: "
        f"edgectl dispatch SITE --snapshot {name} --cycle N"
    )


async def _fetch(address: str, last: int | None) -> dict[str, Any]:
    from edgectl.transport.local_api import fetch_json

    path = "/v1/cycles" if last is None else f"/v1/cycles?last={last}"
    document = await fetch_json(address, path, timeout_s=_TIMEOUT_S)
    if not isinstance(document, dict) or not isinstance(document.get("cycles"), list):
        raise ProtocolError(
            f"status API {address}",
            f"GET {path}: not a flight recorder document (no list of cycles)",
        )
    return document


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of cycles") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 1 or more")
    return value
