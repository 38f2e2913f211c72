"""Dispatch: one decision per control cycle, the Python face of cext/dispatch.pyx.

Units are W, Wh, s and soc as a fraction 0..1. Signs: a battery's p_w is > 0 when it
discharges and < 0 when it charges; the grid's p_w is > 0 when it imports; a
renewable's curtailed_w is >= 0. Every rule below is implemented twice, in the compiled
kernel and in the NumPy reference (`_dispatch_reference`), which must agree to 1e-9
relative on powers and exactly on which racks are on.

1. Supply stack. R = sum of the renewables' availability, clipped to [0, p_max_w].
   A battery keeps a reserve soc_min + p_max_w * ride_through_s / 3600 / capacity_wh
   (its full power for ride_through_s); its discharge limit is
   min(p_max_w, max(0, soc - reserve) * capacity_wh * 3600 / period_s) and its charge
   limit min(p_charge_max_w, max(0, soc_max - soc) * capacity_wh * 3600 / period_s).
   D and C are their sums. The grid cap is Gc = min(sum of min(available, p_max_w),
   grid_import_max_w). Its budget is grid_budget_w when given; when that is NaN the
   green-share rule holds instead: the grid imports at most k times the green power used
   (renewables + battery discharge), k = (1 - g) / g with g = green_share_min (g = 0: no
   limit, g = 1: no import). The grid comes last in the stack, so it only imports once R
   and D are used up and the budget is k * (R + D). The fixed load F = fixed_load_w is
   what the racks that cannot be capped this cycle draw (no device, a BMC that stopped
   answering, counted at its last cap, a rack that ignores its limit); it is served
   first, before tier 0, from the same stack, and leaves the budget at k * (R + D).
   Supply S = R + D + min(Gc, budget) - F, what the caps together may reach. S < 0 when
   the stack cannot even cover F: then every rack with a floor is shed (rule 3) and
   none starts. The caller passes the racks behind F as off with demand 0, so they are
   neither served nor started.
2. Rack bounds. Caps are what is budgeted: a rack may draw up to its cap at any moment
   of the cycle (GPU load swings within it), so the caps together must fit S. A rack
   that is on may move its cap by at most step = ramp_w_per_s * period_s:
   lo = min(p_max_w, max(p_min_w, cap_prev - step)), hi = min(p_max_w, cap_prev + step),
   want = max(lo, min(hi, demand_w)); a hi below lo is raised to lo. Switching a rack
   off (cap 0) or on (cap = its starting cap) is not a cap move.
3. Shedding. While the floors of the racks that are on (sum of lo) exceed S, racks are
   switched off: tier 3 first, then 2, 1, 0; within a tier the largest lo first (the
   fewest racks off), ties by lower index; it stops as soon as the floors fit. A rack
   whose lo is 0 frees nothing and is never shed. A shed rack gets on = 0 and cap = 0.
   Rule 4 may shed more racks, further along the same order.
4. Serving by tier. B = S - sum of lo over the racks that are on. For tier t = 0, 1, 2,
   3 in turn, E_t = sum of (want - lo) over its racks that are on. If E_t > B, racks of
   lower priority (tiers above t) are switched off first, in the order of rule 3: tier 3
   first, then 2, ... down to t + 1, within a tier the largest lo first, ties by lower
   index, each shed rack adding its lo to B; it stops as soon as E_t <= B (racks whose
   lo is 0 free nothing and are never shed). Then, if E_t <= B, every rack of tier t
   gets want and B -= E_t. Otherwise (no rack of a later tier with a floor is left on)
   tier t gets exactly B, shared by an equal fraction of demand:
   cap_i = max(lo_i, f * want_i) with one f in [0, 1] for the tier such that the caps
   sum to sum(lo) + B; then B = 0 and the racks still on in later tiers (lo = 0) stay
   at lo. Tiers are a strict priority: a tier-3 job is declared interruptible, so its
   rack going off is preferred to slowing a tier-0 job; the minimum off time and the
   start margin of rule 5 keep this from flapping. An equal fraction, not
   water-filling, because a training job spread over several racks runs at the pace of
   its slowest rack: an equal fraction slows every rack by the same ratio, whereas
   water-filling cuts the largest racks hardest and makes them the stragglers.
   f is solved exactly without a sort: g(f) = sum max(lo_i, f * want_i) is convex,
   increasing and piecewise linear, so Newton from f = 1 with the left derivative
   (sum of want_i over the racks with lo_i < f * want_i) descends monotonically onto
   the root and stops exactly on its linear piece, which it recognises because the set
   of racks above their floor no longer changes; each pass is O(n). After
   NEWTON_MAX_ITER passes bisection finishes the job.
5. Starting racks. If B > 0 once every rack that is on got its want, racks that were off
   are visited by tier (0 first) then index. A rack starts at cap p_min_w (or, when
   p_min_w is 0, min(demand_w, p_max_w, step)) when it has been off for at least
   rack_min_off_s, demand_w > 0 and B >= (1 + rack_on_margin) * that cap; then B -= cap.
   The margin and the minimum off time are the hysteresis that stops racks flapping.
   Only racks that were off when the cycle began are candidates: a rack shed in this
   cycle (rules 3 and 4) is never started in the same cycle, even with rack_min_off_s 0.
6. Use of supply. need = sum of the caps + F (that sum first, then F), so the sources
   deliver for the fixed load too. Renewables give used = min(need, R), the
   batteries min(need - used, D) split in proportion to their discharge limits, the
   grid the rest (at most min(Gc, budget)) split in proportion to its sources' caps.
   The surplus R - used charges the batteries up to C, in proportion to their charge
   limits; the rest is curtailed. A renewable's p_w is what it produces (for the racks,
   the fixed load and charging), the same fraction of availability for every renewable,
   and curtailed_w = min(available, p_max_w) - p_w. The grid never charges a battery and
   never exports. When S < 0 every cap is 0 and each source delivers its limit (R, D
   and min(Gc, budget)) and nothing more: the remaining -S of the fixed load is served
   by no source, which supply_w < 0 reports.
7. Served power of a rack is min(demand_w, cap_w), 0 when off. A tier's demand sums
   demand_w over all its racks, off ones included; unserved = demand - served.
8. Deterministic: the same inputs give bit-identical outputs (sums run in index order,
   nothing is parallel). Sums that decide on/off run in the same order in both
   implementations, so they switch the same racks: E_t and the tier's sum of lo run in
   index order over the racks still on at tier t's turn, and the floors and B change
   by one lo per shed rack, in shedding order. Each cycle is O(n) in the racks: the
   compiled kernel orders a tier's floors for shedding with a stable radix sort, and
   only once a rack of that tier is to be shed.

Validation (dtypes, C-contiguity, lengths, tiers in 0..3, fixed_load_w a finite number
>= 0) happens here; the kernel trusts it. Values are expected finite except rack_off_s
(+inf: off for an unknown time) and grid_budget_w (NaN: use the green-share rule);
`edgectl.model.dispatch_input` checks snapshots before they get here.
"""

from __future__ import annotations

import importlib
import math
import numbers
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from types import ModuleType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edgectl import kernels

FloatArray = npt.NDArray[np.float64]
TierArray = npt.NDArray[np.int8]
FlagArray = npt.NDArray[np.uint8]

TIERS = 4
# Newton passes before bisection takes over; the rule above needs a handful in practice.
NEWTON_MAX_ITER = 64

# Working memory of the compiled kernel, per rack; see cext/dispatch.pyx.
SCRATCH_BYTES_PER_RACK = 40

Implementation = Literal["auto", "compiled", "reference"]
SourceGroup = Literal["renewable", "battery", "grid"]


def _check_array(name: str, a: object, dtype: type[np.generic], n: int | None) -> None:
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {np.dtype(dtype).name}, got {a.dtype.name}")
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got {a.ndim}-D")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array (use numpy.ascontiguousarray)")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name}: expected length {n}, got {a.shape[0]}")


def _check_ids(name: str, ids: tuple[str, ...], n: int) -> None:
    if ids and len(ids) != n:
        raise ValueError(f"{name}: expected {n} ids, got {len(ids)}")


@dataclass(frozen=True, eq=False)
class DispatchParams:
    """Per-site constants: control settings, racks and sources by group, in site order."""

    period_s: float
    green_share_min: float
    ride_through_s: float
    rack_on_margin: float
    rack_min_off_s: float
    grid_import_max_w: float
    rack_tier: TierArray
    rack_p_min_w: FloatArray
    rack_p_max_w: FloatArray
    rack_ramp_w_per_s: FloatArray
    renewable_p_max_w: FloatArray
    battery_p_max_w: FloatArray
    battery_p_charge_max_w: FloatArray
    battery_capacity_wh: FloatArray
    battery_soc_min: FloatArray
    battery_soc_max: FloatArray
    grid_p_max_w: FloatArray
    # Names, so that callers can label entries; empty when the caller has none.
    rack_ids: tuple[str, ...] = ()
    renewable_ids: tuple[str, ...] = ()
    battery_ids: tuple[str, ...] = ()
    grid_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Checked once here, so that a cycle only checks its own inputs.
        for name in (
            "period_s",
            "green_share_min",
            "ride_through_s",
            "rack_on_margin",
            "rack_min_off_s",
            "grid_import_max_w",
        ):
            value = getattr(self, name)
            if not isinstance(value, float | int) or isinstance(value, bool):
                raise ValueError(f"{name}: expected a number, got {type(value).__name__}")
        if not (math.isfinite(self.period_s) and self.period_s > 0):
            raise ValueError(f"period_s: expected a finite number > 0, got {self.period_s}")
        if not 0.0 <= self.green_share_min <= 1.0:
            raise ValueError(f"green_share_min: expected 0..1, got {self.green_share_min}")
        for name in ("ride_through_s", "rack_on_margin", "rack_min_off_s", "grid_import_max_w"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"{name}: expected a number >= 0, got {getattr(self, name)}")
        _check_array("rack_tier", self.rack_tier, np.int8, None)
        n = self.n_racks
        for name in ("rack_p_min_w", "rack_p_max_w", "rack_ramp_w_per_s"):
            _check_array(name, getattr(self, name), np.float64, n)
        # The kernel indexes per-tier sums by tier without bounds checks.
        if n and (int(self.rack_tier.min()) < 0 or int(self.rack_tier.max()) >= TIERS):
            raise ValueError(f"rack_tier: expected values 0..{TIERS - 1}")
        _check_array("renewable_p_max_w", self.renewable_p_max_w, np.float64, None)
        _check_array("battery_p_max_w", self.battery_p_max_w, np.float64, None)
        b = self.n_batteries
        for name in (
            "battery_p_charge_max_w",
            "battery_capacity_wh",
            "battery_soc_min",
            "battery_soc_max",
        ):
            _check_array(name, getattr(self, name), np.float64, b)
        if b and not bool(np.all(self.battery_capacity_wh > 0.0)):
            raise ValueError("battery_capacity_wh: expected values > 0")
        _check_array("grid_p_max_w", self.grid_p_max_w, np.float64, None)
        _check_ids("rack_ids", self.rack_ids, n)
        _check_ids("renewable_ids", self.renewable_ids, self.n_renewables)
        _check_ids("battery_ids", self.battery_ids, self.n_batteries)
        _check_ids("grid_ids", self.grid_ids, self.n_grids)

    @property
    def n_racks(self) -> int:
        return int(self.rack_tier.shape[0])

    @property
    def n_renewables(self) -> int:
        return int(self.renewable_p_max_w.shape[0])

    @property
    def n_batteries(self) -> int:
        return int(self.battery_p_max_w.shape[0])

    @property
    def n_grids(self) -> int:
        return int(self.grid_p_max_w.shape[0])

    @cached_property
    def rack_index(self) -> Mapping[str, int]:
        """Rack id -> index into the rack arrays."""
        return {rid: i for i, rid in enumerate(self.rack_ids)}

    @cached_property
    def source_index(self) -> Mapping[str, tuple[SourceGroup, int]]:
        """Source id -> (group, index into that group's arrays)."""
        out: dict[str, tuple[SourceGroup, int]] = {}
        groups: tuple[tuple[SourceGroup, tuple[str, ...]], ...] = (
            ("renewable", self.renewable_ids),
            ("battery", self.battery_ids),
            ("grid", self.grid_ids),
        )
        for group, ids in groups:
            for i, sid in enumerate(ids):
                out[sid] = (group, i)
        return out


@dataclass(frozen=True, eq=False)
class DispatchInput:
    """What one cycle sees: availability, state of charge and each rack's state."""

    renewable_available_w: FloatArray
    battery_soc: FloatArray
    rack_demand_w: FloatArray  # what the rack would draw uncapped
    rack_cap_w: FloatArray  # the cap of the previous cycle
    rack_on: FlagArray  # 1 on, 0 off
    rack_off_s: FloatArray  # how long it has been off; +inf when unknown
    grid_available_w: FloatArray | None = None  # None: each grid source's p_max_w
    grid_budget_w: float = math.nan  # NaN: the green-share rule sets the budget
    fixed_load_w: float = 0.0  # drawn by racks not capped this cycle, served first (rule 1)


@dataclass(frozen=True, eq=False)
class DispatchResult:
    """The decision of one cycle; arrays follow the order of DispatchParams."""

    rack_cap_w: FloatArray
    rack_on: FlagArray
    renewable_p_w: FloatArray
    renewable_curtailed_w: FloatArray
    battery_p_w: FloatArray
    grid_p_w: FloatArray
    demand_w_by_tier: FloatArray  # length TIERS
    served_w_by_tier: FloatArray
    unserved_w_by_tier: FloatArray
    served_w: float
    shed: int  # racks switched off this cycle
    started: int  # racks switched on this cycle
    supply_w: float  # S of rule 1: what the caps together may reach; < 0 when F is not covered
    compiled: bool  # which implementation decided


def _check_fixed_load(value: object) -> float:
    """The fixed load as a float; ValueError unless it is a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"fixed_load_w: expected a finite power in W >= 0, got {type(value).__name__}"
        )
    x = float(value)
    if not (math.isfinite(x) and x >= 0.0):
        raise ValueError(f"fixed_load_w: expected a finite power in W >= 0, got {x!r}")
    return x


def _check_input(params: DispatchParams, inputs: DispatchInput) -> FloatArray:
    """Check one cycle's arrays against the site; return the grid availability to use."""
    n = params.n_racks
    _check_array(
        "renewable_available_w", inputs.renewable_available_w, np.float64, params.n_renewables
    )
    _check_array("battery_soc", inputs.battery_soc, np.float64, params.n_batteries)
    _check_array("rack_demand_w", inputs.rack_demand_w, np.float64, n)
    _check_array("rack_cap_w", inputs.rack_cap_w, np.float64, n)
    _check_array("rack_on", inputs.rack_on, np.uint8, n)
    _check_array("rack_off_s", inputs.rack_off_s, np.float64, n)
    if inputs.grid_available_w is None:
        return params.grid_p_max_w
    _check_array("grid_available_w", inputs.grid_available_w, np.float64, params.n_grids)
    return inputs.grid_available_w


_scratch = threading.local()


def _scratch_bytes(n_bytes: int) -> npt.NDArray[np.uint8]:
    """This thread's working memory for the kernel, grown as needed and then reused.

    Fresh memory of this size comes from mmap and costs a page fault per 4 KiB on every
    cycle; a buffer kept per thread touches no new pages and stays safe under threads.
    """
    buf: npt.NDArray[np.uint8] | None = getattr(_scratch, "buf", None)
    if buf is None or buf.shape[0] < n_bytes:
        buf = np.empty(max(n_bytes, 8), dtype=np.uint8)
        _scratch.buf = buf
    return buf


def _compiled_module() -> ModuleType:
    # An explicit request for the compiled kernel loads it even under
    # EDGECTL_FORCE_REFERENCE, which only steers the automatic choice.
    if kernels._dispatch_ext is not None:
        return kernels._dispatch_ext
    try:
        return importlib.import_module("edgectl._ext.dispatch")
    except ImportError as exc:
        raise RuntimeError(
            "the compiled dispatch kernel (edgectl._ext.dispatch) is not built; "
            + kernels.BUILD_HINT
        ) from exc


def dispatch(
    params: DispatchParams,
    inputs: DispatchInput,
    *,
    implementation: Implementation = "auto",
) -> DispatchResult:
    """Decide one cycle: rack caps and on/off, and what every source delivers."""
    grid_available_w = _check_input(params, inputs)
    budget = float(inputs.grid_budget_w)
    fixed_load_w = _check_fixed_load(inputs.fixed_load_w)
    if implementation == "reference" or (
        implementation == "auto" and kernels._dispatch_ext is None
    ):
        from edgectl.kernels._dispatch_reference import decide_reference

        return decide_reference(
            params, inputs, grid_available_w, budget, fixed_load_w, NEWTON_MAX_ITER
        )
    if implementation not in ("auto", "compiled"):
        raise ValueError(
            f"implementation: expected auto, compiled or reference, got {implementation!r}"
        )
    ext = _compiled_module()
    n = params.n_racks
    cap = np.empty(n, dtype=np.float64)
    on = np.empty(n, dtype=np.uint8)
    ren_p = np.empty(params.n_renewables, dtype=np.float64)
    ren_curtailed = np.empty(params.n_renewables, dtype=np.float64)
    bat_p = np.empty(params.n_batteries, dtype=np.float64)
    grid_p = np.empty(params.n_grids, dtype=np.float64)
    by_tier = np.empty(3 * TIERS, dtype=np.float64)  # demand, served, unserved
    stats: Any = ext.decide(
        params.period_s,
        params.green_share_min,
        params.ride_through_s,
        params.rack_on_margin,
        params.rack_min_off_s,
        params.grid_import_max_w,
        budget,
        fixed_load_w,
        NEWTON_MAX_ITER,
        params.rack_tier,
        params.rack_p_min_w,
        params.rack_p_max_w,
        params.rack_ramp_w_per_s,
        params.renewable_p_max_w,
        params.battery_p_max_w,
        params.battery_p_charge_max_w,
        params.battery_capacity_wh,
        params.battery_soc_min,
        params.battery_soc_max,
        params.grid_p_max_w,
        inputs.renewable_available_w,
        inputs.battery_soc,
        grid_available_w,
        inputs.rack_demand_w,
        inputs.rack_cap_w,
        inputs.rack_on,
        inputs.rack_off_s,
        cap,
        on,
        ren_p,
        ren_curtailed,
        bat_p,
        grid_p,
        by_tier,
        _scratch_bytes(SCRATCH_BYTES_PER_RACK * n),
    )
    supply_w, served_w, shed, started = stats
    return DispatchResult(
        rack_cap_w=cap,
        rack_on=on,
        renewable_p_w=ren_p,
        renewable_curtailed_w=ren_curtailed,
        battery_p_w=bat_p,
        grid_p_w=grid_p,
        demand_w_by_tier=by_tier[0:TIERS],
        served_w_by_tier=by_tier[TIERS : 2 * TIERS],
        unserved_w_by_tier=by_tier[2 * TIERS :],
        served_w=served_w,
        shed=shed,
        started=started,
        supply_w=supply_w,
        compiled=True,
    )


def random_instance(n: int, seed: int = 0) -> tuple[DispatchParams, DispatchInput]:
    """A reproducible cycle of an n-rack site, shaped like notes/numerics.md section 4.1.

    Racks of 80-130 kW with p_min 30 % and a ramp of 20 % of p_max per second, 5 % of
    them off; renewables at 50 % of the racks' total p_max, two batteries of 7.5 % each
    at soc 0.5 and a grid tie of 10 %: the supply runs out inside tier 3, which shares
    the shortfall by equal fraction (the Newton path of rule 4).
    """
    rng = np.random.default_rng(seed)
    p_max = rng.uniform(80e3, 130e3, n)
    total = float(p_max.sum())
    params = DispatchParams(
        period_s=1.0,
        green_share_min=0.8,
        ride_through_s=300.0,
        rack_on_margin=0.2,
        rack_min_off_s=30.0,
        grid_import_max_w=0.10 * total,
        rack_tier=rng.integers(0, TIERS, n).astype(np.int8),
        rack_p_min_w=0.3 * p_max,
        rack_p_max_w=p_max,
        rack_ramp_w_per_s=0.2 * p_max,
        renewable_p_max_w=np.full(4, total / 4),
        battery_p_max_w=np.full(2, 0.075 * total),
        battery_p_charge_max_w=np.full(2, 0.075 * total),
        battery_capacity_wh=np.full(2, 0.3 * total),
        battery_soc_min=np.full(2, 0.1),
        battery_soc_max=np.full(2, 0.95),
        grid_p_max_w=np.array([0.10 * total]),
    )
    on = (rng.random(n) >= 0.05).astype(np.uint8)
    inputs = DispatchInput(
        renewable_available_w=np.full(4, 0.50 * total / 4),
        battery_soc=np.full(2, 0.5),
        rack_demand_w=rng.uniform(0.6, 1.1, n) * p_max,
        rack_cap_w=np.where(on != 0, rng.uniform(0.5, 1.0, n) * p_max, 0.0),
        rack_on=on,
        rack_off_s=np.where(on != 0, 0.0, rng.choice([10.0, 100.0], n)),
    )
    return params, inputs
