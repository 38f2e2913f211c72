"""Imports point one way: the wire libraries stay in transport/ (and the simulator's
servers, and the daemon's own HTTP server in app/), and the lower layers never reach up
into the device or simulator layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "edgectl"
WIRE_LIBRARIES = ("pymodbus", "asyncua", "aiohttp", "serial", "aiomqtt", "paho")
# Packages allowed to import the wire libraries: the client side, and the servers
# the simulator runs.
WIRE_ALLOWED = ("transport", "sim")
# Packages allowed some of them, for a server of their own: app/ serves the daemon's local
# status API with aiohttp.web (its clients still go through transport/).
WIRE_SERVERS = {"app": ("aiohttp",)}
# Layers below the device layer: they must not import it (or anything above it).
LOWER_LAYERS = ("config", "kernels", "model", "devicemaps")
UPPER_PACKAGES = ("transport", "drivers", "sim", "cli", "control", "uplink", "app")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_wire_libraries_stay_in_transport(path: Path) -> None:
    layer = path.relative_to(PACKAGE).parts[0]
    if layer in WIRE_ALLOWED:
        return
    allowed = WIRE_SERVERS.get(layer, ())
    wire = {
        m
        for m in imported_modules(path)
        if m.split(".")[0] in WIRE_LIBRARIES and m.split(".")[0] not in allowed
    }
    assert not wire, f"{path.relative_to(PACKAGE)} imports {sorted(wire)}"


@pytest.mark.parametrize(
    "path",
    [p for p in MODULES if p.relative_to(PACKAGE).parts[0] in LOWER_LAYERS],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_lower_layers_do_not_import_upper_ones(path: Path) -> None:
    upward = {
        m
        for m in imported_modules(path)
        if m.startswith("edgectl.") and m.split(".")[1] in UPPER_PACKAGES
    }
    assert not upward, f"{path.relative_to(PACKAGE)} imports {sorted(upward)}"


def test_the_check_sees_the_transport_modules() -> None:
    # Guards the test itself: it must find the modules that do import the libraries.
    transport = PACKAGE / "transport" / "modbus.py"
    assert "pymodbus" in {m.split(".")[0] for m in imported_modules(transport)}



def client_imports(path: Path) -> set[str]:
    """aiohttp imports of `path` that reach more than its server (aiohttp.web, typedefs)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(
                a.name
                for a in node.names
                if a.name.split(".")[0] == "aiohttp" and not _server_module(a.name)
            )
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "aiohttp":
                found.update(f"aiohttp.{a.name}" for a in node.names if a.name != "web")
            elif node.module.startswith("aiohttp.") and not _server_module(node.module):
                found.add(node.module)
    return found


def _server_module(name: str) -> bool:
    return name.startswith(("aiohttp.web", "aiohttp.typedefs"))


@pytest.mark.parametrize(
    "path",
    [p for p in MODULES if p.relative_to(PACKAGE).parts[0] in WIRE_SERVERS],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_servers_outside_transport_import_only_the_server(path: Path) -> None:
    client = client_imports(path)
    assert not client, f"{path.relative_to(PACKAGE)} imports {sorted(client)}: use transport/"


def test_the_check_sees_the_status_api_server() -> None:
    # Guards the allowance: without it, the check would refuse app/api.py.
    api = PACKAGE / "app" / "api.py"
    assert "aiohttp" in {m.split(".")[0] for m in imported_modules(api)}
    assert client_imports(api) == set()
    assert client_imports(PACKAGE / "transport" / "redfish.py") == {"aiohttp"}
