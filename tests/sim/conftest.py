"""Fixtures of the simulator tests: the small example site on free loopback ports, and a
client certificate the simulator's OPC UA server trusts."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgectl.transport.certs import make_self_signed
from edgectl.transport.opcua import OpcUaSecurity

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "small_site.toml"
_ENDPOINT = re.compile(r'endpoint = "127\.0\.0\.1:(\d+)"')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_site(directory: Path, extra: str = "", name: str = "site.toml") -> Path:
    """examples/small_site.toml with every endpoint port replaced by a free one (devices
    that share a port keep sharing it), plus `extra` TOML at the end."""
    text = EXAMPLE.read_text(encoding="utf-8")
    ports: dict[str, int] = {}

    def replace(match: re.Match[str]) -> str:
        port = ports.setdefault(match[1], free_port())
        return f'endpoint = "127.0.0.1:{port}"'

    path = directory / name
    path.write_text(_ENDPOINT.sub(replace, text + extra), encoding="utf-8")
    return path


@dataclass(frozen=True)
class Pki:
    state_dir: Path
    client_cert: Path
    client_key: Path

    def security(self) -> OpcUaSecurity:
        """The client's security, pinning the server certificate the simulator made."""
        return OpcUaSecurity(
            "Basic256Sha256",
            "SignAndEncrypt",
            self.client_cert,
            self.client_key,
            self.state_dir / "opcua" / "server.der",
        )


def make_pki(base: Path) -> Pki:
    """A state directory whose trust list holds a fresh client certificate."""
    state = base / "state"
    trusted = state / "opcua" / "trusted"
    trusted.mkdir(parents=True)
    cert, key = base / "client.der", base / "client.pem"
    make_self_signed(
        cert, key, application_uri="urn:edgectl:test:client", common_name="test", server=False
    )
    (trusted / "client.der").write_bytes(cert.read_bytes())
    return Pki(state, cert, key)


@pytest.fixture(scope="session")
def site_copy() -> Callable[..., Path]:
    """write_site(directory, extra="", name="site.toml") -> the path written."""
    return write_site


@pytest.fixture(scope="session")
def client_pki() -> Callable[[Path], Pki]:
    """make_pki(directory) -> a state directory trusting a new client certificate."""
    return make_pki
