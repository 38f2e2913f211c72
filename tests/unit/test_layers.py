"""Imports point one way: the wire libraries stay in transport/ (and the simulator's
servers), and the lower layers never reach up into the device or simulator layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "edgectl"
WIRE_LIBRARIES = ("pymodbus", "asyncua", "aiohttp", "serial")
# Packages allowed to import the wire libraries: the client side, and the servers
# the simulator runs.
WIRE_ALLOWED = ("transport", "sim")
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
    wire = {m for m in imported_modules(path) if m.split(".")[0] in WIRE_LIBRARIES}
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
