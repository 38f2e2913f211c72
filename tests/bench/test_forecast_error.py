"""The availability forecast's error on the simulator's scripted days (benchmarks/
forecast_error.py, at a coarser physics step to keep `make test` short).

What the forecast promises the scheduler, checked on every day and horizon: its p50 is no
worse than persistence and far better than climatology, its error stays within a bound
that grows with the horizon, and its p10..p90 band holds about 80 % of what happened."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "forecast_error.py"
HORIZONS = ("+5min", "+15min", "+30min", "+60min")
# MAE of the p50 as a share of the renewable rating, at most: what the scheduler can plan on.
MAE_MAX = {"+5min": 0.07, "+15min": 0.09, "+30min": 0.11, "+60min": 0.14}


@pytest.fixture(scope="module")
def figures() -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location("forecast_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert module.main(["--step-s", "2.0", "--json"]) == 0
    doc: dict[str, Any] = json.loads(out.getvalue())
    return doc


def test_every_scripted_day_is_scored_at_every_horizon(figures: dict[str, Any]) -> None:
    days = figures["figures"]
    assert {"demo day", "clear day", "cloud-gust-cut", "all days"} <= set(days)
    for day, per in days.items():
        assert tuple(per) == HORIZONS, day
        for h, f in per.items():
            # 06:00 to 20:00, one forecast a minute, those ending by 20:00 scored.
            assert f["n"] >= 700, (day, h, f["n"])


@pytest.mark.parametrize("horizon", HORIZONS)
def test_the_p50_beats_climatology_and_is_no_worse_than_persistence(
    figures: dict[str, Any], horizon: str
) -> None:
    for day, per in figures["figures"].items():
        f = per[horizon]
        assert f["mae"] <= MAE_MAX[horizon], (day, horizon, f["mae"])
        assert f["mae_vs_persistence"] <= 1.02, (day, horizon, f["mae_vs_persistence"])
        assert f["mae_vs_climatology"] < 0.6, (day, horizon, f["mae_vs_climatology"])


def test_the_error_grows_with_the_horizon(figures: dict[str, Any]) -> None:
    per = figures["figures"]["all days"]
    maes = [per[h]["mae"] for h in HORIZONS]
    assert maes == sorted(maes), maes


@pytest.mark.parametrize("horizon", HORIZONS)
def test_the_band_holds_about_eighty_percent(figures: dict[str, Any], horizon: str) -> None:
    for day, per in figures["figures"].items():
        f = per[horizon]
        assert f["learned"] > 0.85, (day, horizon, f["learned"])  # learned, not the default
        assert 0.7 <= f["coverage"] <= 0.92, (day, horizon, f["coverage"])
