"""A site file moved to free loopback ports, for benches and tests that share a machine.

`relocate(text)` rewrites every `endpoint = "host:port"` of a site file's [[device]]
entries (and the path-less URL forms) to 127.0.0.1 and a port that is free now; devices
that shared a port still share one. The rest of the file, comments included, is kept.
A port found free can be taken by someone else before the simulator binds it: the caller
retries on an address in use.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

_ENDPOINT = re.compile(
    r'^(?P<lead>\s*endpoint\s*=\s*")(?P<scheme>(?:opc\.tcp|https?)://)?'
    r'(?P<host>[^:"/]+):(?P<port>\d+)(?P<rest>[^"]*")',
    re.MULTILINE,
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def relocate(text: str) -> tuple[str, dict[int, int]]:
    """The site text with its device endpoints on free ports; old port -> new port."""
    moved: dict[int, int] = {}

    def new_endpoint(match: re.Match[str]) -> str:
        old = int(match["port"])
        if old not in moved:
            moved[old] = free_port()
        scheme = match["scheme"] or ""
        return f"{match['lead']}{scheme}127.0.0.1:{moved[old]}{match['rest']}"

    return _ENDPOINT.sub(new_endpoint, text), moved


def relocate_file(site_file: str | Path, out_dir: Path) -> Path:
    """Write a relocated copy of `site_file` into out_dir; its path."""
    source = Path(site_file)
    text, _ = relocate(source.read_text(encoding="utf-8"))
    out = out_dir / source.name
    out.write_text(text, encoding="utf-8")
    return out
