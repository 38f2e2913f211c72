"""benchmarks/cycle.py's compute part at a tiny size: the bench site loads, the cycles run
on the synthetic snapshot, and the figures have their shape. No timing is asserted:
speed is the benchmark's business, not the tests'."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "cycle.py"
SMALL = ROOT / "examples" / "small_site.toml"
REFERENCE = ROOT / "examples" / "reference_site.toml"
TIMINGS = ("compute", "run_cycle", "dispatch", "solve", "snapshot_copy")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cycle_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: its dataclasses look their module up by name.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def check_figures(result: dict[str, Any], cycles: int) -> None:
    assert result["samples"] == cycles
    assert len(result["compute_s"]) == cycles
    for name in TIMINGS:
        t = result[name]
        for key in ("p50_ms", "p99_ms", "max_ms", "mean_ms"):
            assert math.isfinite(t[key]) and t[key] > 0, (name, key, t[key])
        assert t["p50_ms"] <= t["p99_ms"] <= t["max_ms"], (name, t)
    assert all(math.isfinite(s) and s > 0 for s in result["compute_s"])
    assert result["ratio_to_dispatch"] > 0 and result["ratio_to_solve"] > 0
    assert sum(result["states"].values()) == cycles
    assert result["verify_passes_mean"] >= 1


def test_small_site(bench: ModuleType) -> None:
    result = bench.measure_cycle(SMALL, cycles=20, warmup=5)
    check_figures(result, 20)
    assert result["racks"] == 12
    # Every pv, wind and bess source and every rack has a device; only the grid has none.
    assert result["uninstrumented_sources"] == ["grid"]
    assert result["devices"] == result["racks"] + result["sources"] - 1
    assert "STARTING" not in result["states"]


def test_reference_site(bench: ModuleType) -> None:
    result = bench.measure_cycle(REFERENCE, cycles=5, warmup=3)
    check_figures(result, 5)
    assert (result["buses"], result["racks"]) == (856, 800)
    assert result["setpoints_written"] > 0


def test_scaled_site_text(bench: ModuleType) -> None:
    """Five copies: five times the buses, racks and sources, joined into one network."""
    site = bench.load_bench_site(SMALL, copies=5)
    assert len(site.buses) == 5 * 6
    assert len(site.racks) == 5 * 12
    assert len(site.sources) == 5 * 8
    assert len(site.lines) == 5 * 6 + 4
    assert site.control.grid_import_max_w == pytest.approx(
        5 * bench.load_bench_site(SMALL).control.grid_import_max_w
    )
