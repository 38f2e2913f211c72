"""The availability forecast: persistence, its band (default, learned, widening), the
batteries' sustained power, and updates that stay cheap."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest

from edgectl.config.load import load_site
from edgectl.model.dispatch_input import params_from_site
from edgectl.uplink.forecast import (
    DEFAULT_BAND_FIRST,
    DEFAULT_BAND_LAST,
    HORIZON_S,
    STEP_S,
    STEPS,
    Forecaster,
    Step,
    battery_sustain_w,
    default_band_share,
)

DEMO = Path(__file__).resolve().parents[2] / "edgectl" / "sim" / "sites" / "demo_site.toml"
RATING_W = 2_000_000.0
T0 = 1_750_500_000.0  # a wall time on a minute boundary


def widths(steps: list[Step]) -> list[float]:
    return [s.renewable_p90_w - s.renewable_p10_w for s in steps]


def fed(series_w: list[float], every_s: float = 60.0) -> Forecaster:
    f = Forecaster(RATING_W)
    for i, p in enumerate(series_w):
        f.update(T0 + i * every_s, p)
    return f


def test_persistence_is_exact_on_a_constant_series() -> None:
    f = fed([700_000.0] * 300)
    steps = f.forecast(T0 + 300 * 60.0)
    assert len(steps) == STEPS
    assert [s.offset_s for s in steps] == [STEP_S * (k + 1) for k in range(STEPS)]
    assert all(s.learned for s in steps)
    assert all(s.renewable_p50_w == 700_000.0 for s in steps)
    for s in steps:
        assert s.renewable_p10_w <= s.renewable_p50_w <= s.renewable_p90_w
        assert s.wall_s == T0 + 300 * 60.0 + s.offset_s


def test_the_level_is_the_mean_of_the_last_minute_of_cycles() -> None:
    f = Forecaster(RATING_W)
    for i in range(120):
        f.update(T0 + i, 100_000.0 if i < 60 else 300_000.0)
    assert f.level_w == pytest.approx(300_000.0)
    assert f.forecast(T0 + 120)[0].renewable_p50_w == pytest.approx(300_000.0)


def test_fallback_band_without_history() -> None:
    f = Forecaster(RATING_W)
    f.update(T0, 1_000_000.0)
    steps = f.forecast(T0)
    assert not any(s.learned for s in steps)
    first, last = steps[0], steps[-1]
    assert first.renewable_p50_w == last.renewable_p50_w == 1_000_000.0
    assert first.renewable_p90_w - 1e6 == pytest.approx(DEFAULT_BAND_FIRST * RATING_W)
    assert 1e6 - last.renewable_p10_w == pytest.approx(DEFAULT_BAND_LAST * RATING_W)
    assert default_band_share(HORIZON_S) == DEFAULT_BAND_LAST
    # Clipped to what the renewables can give at all.
    low = Forecaster(RATING_W)
    low.update(T0, 50_000.0)
    assert all(s.renewable_p10_w == 0.0 for s in low.forecast(T0))
    high = Forecaster(RATING_W)
    high.update(T0, RATING_W)
    assert all(s.renewable_p90_w == RATING_W for s in high.forecast(T0))


def test_no_sample_at_all_forecasts_nothing_but_the_default_band() -> None:
    steps = Forecaster(RATING_W).forecast(T0)
    assert [s.renewable_p50_w for s in steps] == [0.0] * STEPS
    assert steps[0].renewable_p90_w == pytest.approx(DEFAULT_BAND_FIRST * RATING_W)


def test_bands_widen_with_the_horizon() -> None:
    default = widths(Forecaster(RATING_W).forecast(T0))
    assert default == sorted(default) and default[-1] > default[0]
    rng = random.Random(7)
    walk, p = [], 1_000_000.0
    for _ in range(300):
        p = min(max(p + rng.gauss(0.0, 10_000.0), 200_000.0), 1_800_000.0)
        walk.append(p)
    learned = widths(fed(walk).forecast(T0 + 300 * 60.0))
    assert learned[0] < learned[2] < learned[5] < learned[11]


def _ou(rng: random.Random, n: int, tau_min: float, sd_w: float, mean_w: float) -> list[float]:
    decay = math.exp(-1.0 / tau_min)
    x, out = 0.0, []
    for _ in range(n):
        x = x * decay + sd_w * math.sqrt(1 - decay * decay) * rng.gauss(0.0, 1.0)
        out.append(mean_w + x)
    return out


def test_a_band_learned_from_a_noisy_history_covers_about_80_percent() -> None:
    rng = random.Random(3)
    series = _ou(rng, 2 * 24 * 60, tau_min=30.0, sd_w=0.1 * RATING_W, mean_w=0.5 * RATING_W)
    f = Forecaster(RATING_W)
    hits: dict[int, list[bool]] = {0: [], 11: []}
    for m, p in enumerate(series):
        f.update(T0 + m * 60.0, p)
        if m < 300 or m % 3:
            continue
        steps = f.forecast(T0 + m * 60.0)
        for k, got in hits.items():
            ahead = m + round(steps[k].offset_s / 60.0)
            if ahead < len(series):
                assert steps[k].learned
                s = steps[k]
                got.append(s.renewable_p10_w <= series[ahead] <= s.renewable_p90_w)
    for k, got in hits.items():
        coverage = sum(got) / len(got)
        assert 0.7 <= coverage <= 0.9, f"step {k}: {coverage:.2f}"


def test_battery_energy_above_the_reserve_is_counted() -> None:
    params = params_from_site(load_site(DEMO))
    full = params.battery_p_max_w
    # Two 1.2 MWh / 300 kW batteries, reserve 0.1 + 300 kW x 300 s = 0.1208 SOC.
    assert battery_sustain_w(params, np.array([0.6, 0.6]), full) == pytest.approx(600_000.0)
    low = battery_sustain_w(params, np.array([0.2, 0.1]), full)
    assert low == pytest.approx((0.2 - (0.1 + 300e3 * 300 / 3600 / 1.2e6)) * 1.2e6)
    lost = battery_sustain_w(params, np.array([0.6, 0.6]), np.array([0.0, 300_000.0]))
    assert lost == pytest.approx(300_000.0)
    f = fed([500_000.0] * 200)
    plain = f.forecast(T0 + 200 * 60.0)
    with_batteries = f.forecast(T0 + 200 * 60.0, battery_w=low)
    for a, b in zip(plain, with_batteries, strict=True):
        assert b.battery_w == low
        assert b.p10_w == pytest.approx(a.p10_w + low)
        assert b.p50_w == pytest.approx(a.p50_w + low)
        assert b.p90_w == pytest.approx(a.p90_w + low)
    assert plain[0].p50_w == plain[0].renewable_p50_w  # no battery, no grid


def test_incomplete_samples_move_the_level_but_not_the_history() -> None:
    f = fed([800_000.0] * 100)
    history = f.history_s
    for i in range(100, 200):
        f.update(T0 + i * 60.0, 0.0, complete=False)
    assert f.history_s == history
    assert f.level_w == 0.0


def test_updates_stay_cheap_and_the_band_is_learned_lazily() -> None:
    f = Forecaster(RATING_W)
    for i in range(6 * 3600):  # six hours at one sample a second
        f.update(T0 + i, 1e6 + 1e4 * math.sin(i / 600.0))
        # Bounded memory: one minute of cycles for the level, a fixed ring for the history.
        assert len(f._level) <= 60
    assert f._minute.size == 240 and f.history_s == 240 * 60.0
    bands = f.bands()
    f.update(T0 + 6 * 3600 - 0.5, 1e6)  # the same minute: nothing to learn again
    assert f.bands() is bands
    f.update(T0 + 6 * 3600 + 1.0, 1e6)  # a minute closed
    assert f.bands() is not bands


def test_a_clock_stepping_back_or_nan_does_not_break_it() -> None:
    f = fed([400_000.0] * 50)
    f.update(T0 + 10 * 60.0, 400_000.0)
    f.update(T0 + 60 * 60.0, math.nan)
    steps = f.forecast(T0 + 60 * 60.0)
    assert all(math.isfinite(s.p50_w) for s in steps)


def test_bad_construction_is_refused() -> None:
    with pytest.raises(ValueError, match="rating_w"):
        Forecaster(-1.0)
    with pytest.raises(ValueError, match="bucket_s"):
        Forecaster(1.0, bucket_s=0.0)
