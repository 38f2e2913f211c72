"""The numeric kernels: compiled from cext/ when built, else their NumPy reference.

COMPILED says which implementation is active. With EDGECTL_REQUIRE_CEXT=1 (set by
the systemd unit) `require_compiled()` refuses the reference: a gateway must not
silently run a control loop many times slower than the one that was measured.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from edgectl.errors import KernelsMissingError


def _load(name: str) -> ModuleType | None:
    if os.environ.get("EDGECTL_FORCE_REFERENCE", "") not in ("", "0"):
        return None
    try:
        return importlib.import_module(f"edgectl._ext.{name}")
    except ImportError:
        return None


_powerflow_ext = _load("powerflow")
_dispatch_ext = _load("dispatch")

COMPILED: bool = _powerflow_ext is not None and _dispatch_ext is not None

BUILD_HINT = (
    "build them with `pip install -e .` (needs a C compiler, Cython>=3 and numpy>=2; "
    "REQUIRE_CYTHON=1 makes a failed build fatal)"
)


def require_compiled() -> None:
    """Refuse the NumPy fallback when EDGECTL_REQUIRE_CEXT is set."""
    if COMPILED or os.environ.get("EDGECTL_REQUIRE_CEXT", "") in ("", "0"):
        return
    raise KernelsMissingError(
        "EDGECTL_REQUIRE_CEXT=1 but the compiled kernels (edgectl._ext) are not built; "
        + BUILD_HINT
    )
