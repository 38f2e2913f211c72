"""Green power for the next hour, in 5-minute steps, with p10, p50 and p90.

The method (`METHOD`) is persistence with a band learned online from the site's own
recent history:

    level     the renewables' mean availability over the last LEVEL_S of samples (one per
              control cycle): what persists.
    history   one mean per wall-clock minute (BUCKET_S) for the last HISTORY_S, in a ring:
              each update is O(1), a forecast costs nothing until a new minute closes.
    band      for each horizon h, the empirical p10, p50 and p90 of the change
              p(m + h) - p(m) over the n pairs of history minutes h apart (both present),
              shrunk towards the default band as if that were PRIOR_PAIRS more pairs
              (weight n / (n + PRIOR_PAIRS)); renewable_q(h) = clip(level + Q_q(h), 0,
              rating). Changes are additive, in W: ratios p(m + h) / p(m) blow up near 0 W
              (dawn, a calm, a turbine cut-out), where additive changes stay bounded by the
              rating. The shrinkage keeps a band learned from a calm night or a clear
              morning from being narrower than the weather that comes next.
    fallback  fewer than MIN_PAIRS pairs at h (a fresh start, a gap): the default band,
              p50 = level and p10, p90 = level -/+ default_band_share(h) x rating, from 10 %
              of the rating at 5 min linearly to 40 % at 60 min.
    batteries what they sustain above their reserve for the whole horizon: each battery's
              energy above soc_min + ride-through reserve spread over HORIZON_S, capped by its
              discharge limit now. The same power at every step, so that a scheduler may
              plan it at every step at once; charging from a surplus is not counted.
    grid      never counted: the forecast is of green power, and the grid is a capped backup.

Everything here is pure: the clock is passed in (wall seconds, Unix time), nothing is read.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from edgectl.control.estimate import reserve_soc
from edgectl.kernels.dispatch import DispatchParams, FloatArray

METHOD = "persistence with an empirical band/1"
STEP_S = 300.0
STEPS = 12
HORIZON_S = STEP_S * STEPS
# One history point per wall-clock minute: changes within a minute are the batteries' job.
BUCKET_S = 60.0
# Long enough for MIN_PAIRS pairs at the longest horizon, short enough to follow the day.
HISTORY_S = 4 * 3600.0
LEVEL_S = 60.0
MIN_PAIRS = 10
# The default band weighs as much as this many pairs of history in the learned one.
PRIOR_PAIRS = 15
QUANTILES = (0.1, 0.5, 0.9)
# Half-width of the default band as a share of the rating, at 5 and at 60 minutes.
DEFAULT_BAND_FIRST = 0.10
DEFAULT_BAND_LAST = 0.40


def default_band_share(offset_s: float) -> float:
    """Half-width of the default band at offset_s, as a share of the rating."""
    first, last = STEP_S, HORIZON_S
    x = min(max((offset_s - first) / (last - first), 0.0), 1.0)
    return DEFAULT_BAND_FIRST + (DEFAULT_BAND_LAST - DEFAULT_BAND_FIRST) * x


def battery_sustain_w(
    params: DispatchParams,
    soc: FloatArray,
    p_max_w: FloatArray,
    horizon_s: float = HORIZON_S,
) -> float:
    """What the batteries sustain above their reserve for horizon_s, W.

    Per battery: min(discharge limit now, energy above soc_min + ride-through reserve /
    horizon_s); a lost battery has a discharge limit of 0 and counts nothing.
    """
    if params.n_batteries == 0:
        return 0.0
    reserve = reserve_soc(params)
    energy_wh = np.maximum(soc - reserve, 0.0) * params.battery_capacity_wh
    sustain = np.minimum(np.maximum(p_max_w, 0.0), energy_wh * 3600.0 / horizon_s)
    return float(sustain.sum())


@dataclass(frozen=True, slots=True)
class Step:
    """One step of the forecast; the available powers count renewables and batteries."""

    offset_s: float  # from the forecast's time
    wall_s: float  # Unix time the step stands for
    renewable_p10_w: float
    renewable_p50_w: float
    renewable_p90_w: float
    battery_w: float  # sustained for the whole horizon, the same at every step
    learned: bool  # band from the site's history; False: the default band

    @property
    def p10_w(self) -> float:
        return self.renewable_p10_w + self.battery_w

    @property
    def p50_w(self) -> float:
        return self.renewable_p50_w + self.battery_w

    @property
    def p90_w(self) -> float:
        return self.renewable_p90_w + self.battery_w


class Forecaster:
    """Persistence of the renewables' availability with a band learned from its history."""

    def __init__(
        self,
        rating_w: float,
        *,
        history_s: float = HISTORY_S,
        bucket_s: float = BUCKET_S,
        level_s: float = LEVEL_S,
        min_pairs: int = MIN_PAIRS,
    ) -> None:
        if not (math.isfinite(rating_w) and rating_w >= 0.0):
            raise ValueError(f"rating_w: expected a power in W >= 0, got {rating_w!r}")
        if not (bucket_s > 0 and history_s >= bucket_s and level_s > 0):
            raise ValueError("bucket_s, history_s, level_s: expected 0 < bucket_s <= history_s")
        self.rating_w = float(rating_w)
        self.bucket_s = float(bucket_s)
        self.level_s = float(level_s)
        self.min_pairs = min_pairs
        self._slots = int(history_s // bucket_s)
        # The ring of closed minutes: its index (wall // bucket_s; -1 empty) and its mean.
        self._minute = np.full(self._slots, -1, dtype=np.int64)
        self._mean = np.zeros(self._slots)
        self._open: int | None = None  # the minute being filled
        self._open_sum = 0.0
        self._open_n = 0
        self._level: deque[tuple[float, float]] = deque()
        self._level_sum = 0.0
        self._last_w: float | None = None
        # Quantiles per step, recomputed only when a minute has closed since.
        self._bands: list[tuple[float, float, float] | None] | None = None

    def update(self, wall_s: float, renewable_w: float, *, complete: bool = True) -> None:
        """One sample of the renewables' availability, W (one per cycle).

        An incomplete sample (a renewable source lost, counted as 0 W) moves the level, so
        that the forecast stays conservative, but is kept out of the history: a device
        that stops answering is not a change of the weather.
        """
        if not math.isfinite(renewable_w):
            return
        p = min(max(renewable_w, 0.0), self.rating_w)
        self._last_w = p
        self._level.append((wall_s, p))
        self._level_sum += p
        while self._level and self._level[0][0] <= wall_s - self.level_s:
            self._level_sum -= self._level.popleft()[1]
        if not complete:
            return
        minute = math.floor(wall_s / self.bucket_s)
        if self._open is not None and minute > self._open:
            self._close()
        if self._open is None or minute > self._open:
            self._open, self._open_sum, self._open_n = minute, 0.0, 0
        # A wall clock stepped back keeps filling the open minute: the series goes on.
        self._open_sum += p
        self._open_n += 1

    def _close(self) -> None:
        assert self._open is not None and self._open_n > 0
        slot = self._open % self._slots
        self._minute[slot] = self._open
        self._mean[slot] = self._open_sum / self._open_n
        self._bands = None
        # Once a minute, the level's running sum is made exact again (no drift over months).
        self._level_sum = math.fsum(p for _, p in self._level)

    @property
    def level_w(self) -> float:
        """What persists: the mean of the last level_s of samples (0 W before any)."""
        if self._level:
            return self._level_sum / len(self._level)
        return self._last_w if self._last_w is not None else 0.0

    @property
    def history_s(self) -> float:
        """How much closed history the band is learned from, s."""
        return float(np.count_nonzero(self._minute >= 0)) * self.bucket_s

    def bands(self) -> list[tuple[float, float, float] | None]:
        """Per step, the learned (p10, p50, p90) change in W; None where too few pairs."""
        if self._bands is None:
            self._bands = self._learn()
        return self._bands

    def _learn(self) -> list[tuple[float, float, float] | None]:
        present = self._minute >= 0
        out: list[tuple[float, float, float] | None] = [None] * STEPS
        if not present.any():
            return out
        minutes, means = self._minute[present], self._mean[present]
        first = int(minutes.min())
        series = np.full(int(minutes.max()) - first + 1, np.nan)
        series[minutes - first] = means
        for k in range(STEPS):
            lag = round((k + 1) * STEP_S / self.bucket_s)
            if lag >= series.size:
                continue
            change = series[lag:] - series[:-lag]
            change = change[np.isfinite(change)]
            if change.size >= self.min_pairs:
                q10, q50, q90 = np.quantile(change, QUANTILES)
                # Shrunk towards the default band as if it were PRIOR_PAIRS more pairs: a
                # few hours of one kind of weather do not make a band narrower than it.
                w = change.size / (change.size + PRIOR_PAIRS)
                half = (1.0 - w) * default_band_share((k + 1) * STEP_S) * self.rating_w
                out[k] = (w * float(q10) - half, w * float(q50), w * float(q90) + half)
        return out

    def forecast(self, wall_s: float, *, battery_w: float = 0.0) -> list[Step]:
        """The next HORIZON_S in STEPS steps from wall_s; battery_w from battery_sustain_w."""
        level = self.level_w
        top = self.rating_w
        battery = max(battery_w, 0.0) if math.isfinite(battery_w) else 0.0
        steps: list[Step] = []
        for k, band in enumerate(self.bands()):
            offset = (k + 1) * STEP_S
            if band is None:
                half = default_band_share(offset) * top
                lo, mid, hi = level - half, level, level + half
            else:
                lo, mid, hi = (level + q for q in band)
            steps.append(
                Step(
                    offset_s=offset,
                    wall_s=wall_s + offset,
                    renewable_p10_w=min(max(lo, 0.0), top),
                    renewable_p50_w=min(max(mid, 0.0), top),
                    renewable_p90_w=min(max(hi, 0.0), top),
                    battery_w=battery,
                    learned=band is not None,
                )
            )
        return steps
