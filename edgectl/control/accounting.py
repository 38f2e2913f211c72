"""Green-power accounting: energy by source kind and by rack, the rolling green share, and
the grid budget that keeps that share at or above green_share_min.

Each cycle adds power x elapsed time. Sources count what they measured; a grid tie without
a meter counts the balance: racks + losses + charging - renewables - discharging (never
below 0: the tie does not export). The green share over the rolling window is
1 - grid / racks: the racks' energy that did not come from the grid came from PV and wind,
directly or through a battery (the grid never charges the batteries).

The window is kept as per-minute buckets on the wall clock, so that it survives a restart
(the daemon persists them). Grid budget for a cycle: the green-share rule of the dispatch
kernel, k x (green power available) with k = (1 - g) / g, plus the window's slack (grid
energy still allowed, or owed, over the window) spread over SLACK_SPREAD_S: a share above
the minimum lets the grid carry a night's shortfall a little longer, a share below it
tightens the budget until the window is back above the minimum.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

SLACK_SPREAD_S = 3600.0
BUCKET_S = 60
KINDS = ("pv", "wind", "bess_discharge", "bess_charge", "grid", "racks", "losses")


@dataclass
class Accounts:
    """Energy counters (Wh) since the state directory was created, and the window's buckets."""

    energy_wh: dict[str, float] = field(default_factory=lambda: dict.fromkeys(KINDS, 0.0))
    rack_wh: dict[str, float] = field(default_factory=dict)
    # minute index (wall time // 60) -> [racks_wh, grid_wh]
    buckets: dict[int, list[float]] = field(default_factory=dict)

    def add(
        self,
        *,
        dt_s: float,
        wall_s: float,
        window_s: float,
        source_kind_p_w: Mapping[str, float],
        rack_p_w: Mapping[str, float],
        grid_w: float,
        losses_w: float,
    ) -> None:
        """Count one cycle of dt_s at these powers (W, natural signs)."""
        if not (dt_s > 0 and math.isfinite(dt_s)):
            return
        h = dt_s / 3600.0
        e = self.energy_wh
        for kind, p in source_kind_p_w.items():
            if kind == "bess":
                e["bess_discharge"] += max(p, 0.0) * h
                e["bess_charge"] += max(-p, 0.0) * h
            elif kind in e:
                e[kind] += max(p, 0.0) * h
        racks = 0.0
        for rid, p in rack_p_w.items():
            self.rack_wh[rid] = self.rack_wh.get(rid, 0.0) + max(p, 0.0) * h
            racks += max(p, 0.0)
        e["racks"] += racks * h
        e["grid"] += max(grid_w, 0.0) * h
        e["losses"] += max(losses_w, 0.0) * h
        bucket = self.buckets.setdefault(int(wall_s // BUCKET_S), [0.0, 0.0])
        bucket[0] += racks * h
        bucket[1] += max(grid_w, 0.0) * h
        oldest = int((wall_s - window_s) // BUCKET_S)
        for minute in [m for m in self.buckets if m < oldest]:
            del self.buckets[minute]

    def window(self, wall_s: float, window_s: float) -> tuple[float, float]:
        """(racks Wh, grid Wh) over the rolling window ending at wall_s."""
        oldest = int((wall_s - window_s) // BUCKET_S)
        racks = grid = 0.0
        for minute, (r, g) in self.buckets.items():
            if minute >= oldest:
                racks += r
                grid += g
        return racks, grid

    def green_share(self, wall_s: float, window_s: float) -> float | None:
        """1 - grid / racks over the window; None before the racks drew anything."""
        racks, grid = self.window(wall_s, window_s)
        if racks <= 0.0:
            return None
        return max(0.0, 1.0 - grid / racks)

    def grid_budget_w(
        self, wall_s: float, window_s: float, green_share_min: float, green_available_w: float
    ) -> float:
        """The grid import this cycle may plan, W (see the module docstring)."""
        g = green_share_min
        if g <= 0.0:
            return math.inf
        if g >= 1.0:
            return 0.0
        racks, grid = self.window(wall_s, window_s)
        slack_wh = (1.0 - g) * racks - grid
        k = (1.0 - g) / g
        return max(0.0, k * green_available_w + slack_wh * 3600.0 / SLACK_SPREAD_S)

    def as_dict(self) -> dict[str, Any]:
        return {
            "energy_wh": dict(self.energy_wh),
            "rack_wh": dict(self.rack_wh),
            "buckets": {str(m): list(v) for m, v in self.buckets.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Accounts:
        """Counters as persisted; a missing or malformed part starts from zero."""
        accounts = cls()
        energy = data.get("energy_wh")
        if isinstance(energy, Mapping):
            for kind in KINDS:
                value = energy.get(kind)
                if _energy(value):
                    accounts.energy_wh[kind] = float(value)
        racks = data.get("rack_wh")
        if isinstance(racks, Mapping):
            accounts.rack_wh = {str(k): float(v) for k, v in racks.items() if _energy(v)}
        buckets = data.get("buckets")
        if isinstance(buckets, Mapping):
            for k, v in buckets.items():
                if (
                    isinstance(v, list)
                    and len(v) == 2
                    and all(_energy(x) for x in v)
                    and isinstance(k, str)
                    and re.fullmatch(r"-?[0-9]{1,15}", k)
                ):
                    accounts.buckets[int(k)] = [float(v[0]), float(v[1])]
        return accounts


def _energy(value: object) -> TypeGuard[int | float]:
    """A persisted energy: a finite number >= 0 (not a boolean)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )
