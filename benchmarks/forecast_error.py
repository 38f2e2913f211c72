"""The availability forecast's error on the simulator's scripted days of the demo site.

Each day runs `SiteSimulator` of edgectl/sim/sites/demo_site.toml from 06:00 to 20:00 solar
time without servers and without a controller (`await sim.run_until(t)` steps the physics
as fast as it goes): the sources are never curtailed, so what they could give is what the
forecast is about. Days:

    demo day        edgectl/sim/sites/demo_day.toml (cloud front, thin bank, gust, cut-out)
    clear day       no events: the sun's course and the wind's turbulence only
    cloud-gust-cut  examples/scenarios/cloud_gust_cutout.toml (the small site's day; its ids
                    are the demo site's)

Every --feed-s of simulated time (default 60: one sample per minute) the forecaster gets the
renewables' availability (the sum of `available_w` over the PV plants and turbines, what
they could give) and, every minute, makes its forecast with the batteries' sustained power
from their SOC. At +5, +15, +30 and +60 min the forecast's renewable part is compared with
what happened: the mean of the samples fed over the minute ending then. The batteries' part
is a known quantity (their energy above the reserve), not a forecast, and is left out of
the errors. Only forecasts whose horizon ends by 20:00 are scored.

Figures per day and horizon, as shares of the site's renewable rating (2 MW):

    mae, rmse      of the p50
    coverage       share of outcomes within [p10, p90] (the band's target is 0.8)
    learned        share of forecasts whose band was learned (the rest: the default band)
    persistence    mae and rmse of pure persistence: the level now, no band
    climatology    mae and rmse of the mean of the history the forecaster keeps (4 h)
    ratios         mae / persistence mae and mae / climatology mae (< 1: the forecast wins)

    python benchmarks/forecast_error.py [--feed-s 60] [--step-s 1.0] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgectl.config.load import load_site
from edgectl.config.site import RENEWABLE_KINDS, Site
from edgectl.model.dispatch_input import params_from_site
from edgectl.sim.scenario import load_scenario
from edgectl.sim.site import SiteSimulator
from edgectl.uplink.forecast import (
    BUCKET_S,
    HISTORY_S,
    STEP_S,
    STEPS,
    Forecaster,
    battery_sustain_w,
)

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "edgectl" / "sim" / "sites" / "demo_site.toml"
DAYS: tuple[tuple[str, Path | None, int], ...] = (
    ("demo day", ROOT / "edgectl" / "sim" / "sites" / "demo_day.toml", 1),
    ("clear day", None, 2),
    ("cloud-gust-cut", ROOT / "examples" / "scenarios" / "cloud_gust_cutout.toml", 3),
)
START_S = 6 * 3600.0
END_S = 20 * 3600.0
# 2025-06-21T00:00:00Z: the wall clock the forecaster sees is this plus the solar time.
EPOCH_S = 1_750_464_000.0
HORIZONS_MIN = (5, 15, 30, 60)


@dataclass
class Day:
    """What one day's run recorded, per minute from 06:00."""

    name: str
    truth_w: np.ndarray  # mean availability over the minute ending at each minute
    level_w: np.ndarray  # the forecaster's level at each minute (pure persistence)
    clim_w: np.ndarray  # mean of the last HISTORY_S of minutes
    bands_w: np.ndarray  # (minutes, STEPS, 3): p10, p50, p90 of the renewables
    learned: np.ndarray  # (minutes, STEPS) bool
    battery_w: np.ndarray  # the batteries' sustained power at each minute
    wall_s: float  # how long the day took to run


def renewable_rating_w(site: Site) -> float:
    return sum(s.p_max_w for s in site.sources_of(*RENEWABLE_KINDS))


async def run_day(
    site: Site, name: str, scenario: Path | None, seed: int, feed_s: float, step_s: float
) -> Day:
    """Simulate one day, feeding the forecaster and keeping its forecasts."""
    t0 = time.perf_counter()
    sim = SiteSimulator(site, start_time_s=START_S, step_s=step_s, seed=seed)
    if scenario is not None:
        sim.schedule(load_scenario(scenario, sim.targets()))
    params = params_from_site(site)
    forecaster = Forecaster(renewable_rating_w(site))
    minutes = int((END_S - START_S) // BUCKET_S) + 1
    truth = np.zeros(minutes)
    level = np.zeros(minutes)
    clim = np.zeros(minutes)
    bands = np.zeros((minutes, STEPS, 3))
    learned = np.zeros((minutes, STEPS), dtype=bool)
    battery = np.zeros(minutes)
    keep = int(HISTORY_S // BUCKET_S)
    feeds = max(1, round(BUCKET_S / feed_s))
    for m in range(minutes):
        # The samples of the minute ending at m (at 06:00 itself: the one sample then).
        times = (
            [m * BUCKET_S]
            if m == 0
            else [(m - 1) * BUCKET_S + (j + 1) * BUCKET_S / feeds for j in range(feeds)]
        )
        fed = []
        for t in times:
            await sim.run_until(t)
            p = sum(pv.available_w for pv in sim.pv.values())
            p += sum(w.available_w for w in sim.wind.values())
            forecaster.update(EPOCH_S + START_S + t, p)
            fed.append(p)
        truth[m] = sum(fed) / len(fed)
        soc = np.array([sim.bess[b].soc for b in params.battery_ids])
        battery[m] = battery_sustain_w(params, soc, params.battery_p_max_w)
        steps = forecaster.forecast(EPOCH_S + START_S + times[-1], battery_w=battery[m])
        level[m] = forecaster.level_w
        clim[m] = float(truth[max(0, m - keep + 1) : m + 1].mean())
        for k, s in enumerate(steps):
            bands[m, k] = (s.renewable_p10_w, s.renewable_p50_w, s.renewable_p90_w)
            learned[m, k] = s.learned
    return Day(name, truth, level, clim, bands, learned, battery, time.perf_counter() - t0)


def _errors(pred: np.ndarray, truth: np.ndarray, rating: float) -> tuple[float, float]:
    e = (pred - truth) / rating
    return float(np.abs(e).mean()), float(math.sqrt(float((e * e).mean())))


def score(days: list[Day], rating: float) -> dict[str, Any]:
    """The figures per day and over every day, per horizon."""
    out: dict[str, Any] = {}
    groups = [(d.name, [d]) for d in days] + [("all days", days)]
    for name, group in groups:
        per: dict[str, Any] = {}
        for h in HORIZONS_MIN:
            k = round(h * 60.0 / STEP_S) - 1
            lag = round(h * 60.0 / BUCKET_S)
            cols: dict[str, list[np.ndarray]] = {
                n: [] for n in ("truth", "p10", "p50", "p90", "level", "clim", "learned")
            }
            for d in group:
                n = d.truth_w.size - lag
                cols["truth"].append(d.truth_w[lag:])
                cols["p10"].append(d.bands_w[:n, k, 0])
                cols["p50"].append(d.bands_w[:n, k, 1])
                cols["p90"].append(d.bands_w[:n, k, 2])
                cols["level"].append(d.level_w[:n])
                cols["clim"].append(d.clim_w[:n])
                cols["learned"].append(d.learned[:n, k])
            c = {key: np.concatenate(v) for key, v in cols.items()}
            mae, rmse = _errors(c["p50"], c["truth"], rating)
            p_mae, p_rmse = _errors(c["level"], c["truth"], rating)
            c_mae, c_rmse = _errors(c["clim"], c["truth"], rating)
            inside = (c["truth"] >= c["p10"] - 1e-6) & (c["truth"] <= c["p90"] + 1e-6)
            per[f"+{h}min"] = {
                "n": int(c["truth"].size),
                "mae": mae,
                "rmse": rmse,
                "coverage": float(inside.mean()),
                "coverage_learned": float(inside[c["learned"]].mean())
                if c["learned"].any()
                else None,
                "band_width": float(((c["p90"] - c["p10"]) / rating).mean()),
                "learned": float(c["learned"].mean()),
                "persistence_mae": p_mae,
                "persistence_rmse": p_rmse,
                "climatology_mae": c_mae,
                "climatology_rmse": c_rmse,
                "mae_vs_persistence": mae / p_mae if p_mae > 0 else None,
                "mae_vs_climatology": mae / c_mae if c_mae > 0 else None,
            }
        out[name] = per
    return out


def _fmt(x: float | None, pct: bool = True) -> str:
    if x is None:
        return "-"
    return f"{100 * x:6.1f}%" if pct else f"{x:6.2f}"


def table(figures: dict[str, Any]) -> str:
    head = (
        f"{'day':<15} {'h':>7} {'mae':>7} {'rmse':>7} {'cover':>7} {'width':>7} "
        f"{'learned':>7} {'pers.mae':>8} {'clim.mae':>8} {'/pers':>6} {'/clim':>6}"
    )
    lines = [head, "-" * len(head)]
    for day, per in figures.items():
        for h, f in per.items():
            lines.append(
                f"{day:<15} {h:>7} {_fmt(f['mae'])} {_fmt(f['rmse'])} {_fmt(f['coverage'])} "
                f"{_fmt(f['band_width'])} {_fmt(f['learned'])} {_fmt(f['persistence_mae']):>8} "
                f"{_fmt(f['climatology_mae']):>8} {_fmt(f['mae_vs_persistence'], False)} "
                f"{_fmt(f['mae_vs_climatology'], False)}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--feed-s",
        type=float,
        default=60.0,
        help="simulated seconds between samples fed (default 60)",
    )
    parser.add_argument(
        "--step-s", type=float, default=1.0, help="the simulator's physics step, s (default 1.0)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    if not (0 < args.feed_s <= BUCKET_S and 0 < args.step_s <= args.feed_s):
        parser.error("expected 0 < --step-s <= --feed-s <= 60")
    site = load_site(SITE)
    rating = renewable_rating_w(site)
    t0 = time.perf_counter()
    days = [
        asyncio.run(run_day(site, name, path, seed, args.feed_s, args.step_s))
        for name, path, seed in DAYS
    ]
    figures = score(days, rating)
    doc = {
        "site": site.site.id,
        "rating_w": rating,
        "feed_s": args.feed_s,
        "step_s": args.step_s,
        "seconds": {d.name: round(d.wall_s, 1) for d in days},
        "total_s": round(time.perf_counter() - t0, 1),
        "battery_w_mean": {d.name: float(d.battery_w.mean()) for d in days},
        "figures": figures,
    }
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(
            f"site {doc['site']}, renewable rating {rating / 1e6:.1f} MW, "
            f"one sample every {args.feed_s:g} s, physics step {args.step_s:g} s; "
            f"errors as shares of the rating"
        )
        print(table(figures))
        each = ", ".join(f"{k} {v} s" for k, v in doc["seconds"].items())
        print(f"ran in {doc['total_s']} s ({each})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
