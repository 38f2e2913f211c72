"""Kernel benchmarks: each compiled kernel against its baseline, in the same process and run.

Figures are medians of repeated calls, reported with the baseline's median and their
ratio (baseline / compiled, so > 1 means the kernel is faster). Absolute times on a
shared machine move by tens of percent from run to run; the ratios are what to compare.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edgectl import kernels

POWERFLOW_SIZES = (10, 100, 1000, 10_000)
DISPATCH_SIZES = (100, 1000, 10_000)


def median_time(call: Callable[[int], object], budget_s: float, min_repeats: int = 5) -> float:
    """Median wall time of call(i) over repeats filling about budget_s (after one warm-up)."""
    call(0)
    times: list[float] = []
    spent = 0.0
    i = 1
    while len(times) < min_repeats or spent < budget_s:
        t0 = time.perf_counter()
        call(i)
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
        i += 1
        if len(times) >= 20_000:
            break
    return statistics.median(times)


def _row(key: str, n: int, median: float, baseline: float, **extra: Any) -> dict[str, Any]:
    return {
        key: n,
        **extra,
        "median_s": median,
        "baseline_median_s": baseline,
        "ratio": baseline / median if median > 0 else float("inf"),
    }


def bench_powerflow(sizes: Sequence[int], budget_s: float) -> list[dict[str, Any]]:
    """Newton kernel against the SciPy sparse Newton reference, cold and warm start.

    Cold: from a flat start (symbolic analysis cached, as in the daemon). Warm: from the
    previous solution, with the loads moving by +-1 % between calls as they do cycle to cycle.
    """
    from edgectl.bench.networks import synthetic_case
    from edgectl.kernels.powerflow import PowerFlow

    rows: list[dict[str, Any]] = []
    for n in sizes:
        case = synthetic_case(n, seed=n)
        steps = [case.s_bus_w * (1.0 + 0.01 * k) for k in (-1, 0, 1, 0)]
        medians: dict[tuple[str, str], float] = {}
        iterations: dict[str, int] = {}
        for impl in ("compiled", "reference"):
            pf = PowerFlow(case.topology, implementation=impl)  # type: ignore[arg-type]
            first = pf.solve(case.s_bus_w, warm=False)
            if not first.converged:
                raise RuntimeError(f"benchmark network of {n} buses did not solve: {first.message}")
            iterations[impl] = first.iterations
            medians[impl, "cold"] = median_time(
                lambda i, pf=pf: pf.solve(steps[i % 4], warm=False), budget_s
            )
            medians[impl, "warm"] = median_time(
                lambda i, pf=pf: pf.solve(steps[i % 4], warm=True), budget_s
            )
        for start in ("cold", "warm"):
            rows.append(
                _row(
                    "buses", n, medians["compiled", start], medians["reference", start],
                    start=start, iterations_cold=iterations["compiled"],
                )
            )
    return rows


def bench_dispatch(sizes: Sequence[int], budget_s: float) -> list[dict[str, Any]]:
    """Dispatch kernel against the same decision as one HiGHS LP (presolve off)."""
    from edgectl.kernels import _dispatch_lp
    from edgectl.kernels.dispatch import dispatch, random_instance

    rows: list[dict[str, Any]] = []
    for n in sizes:
        params, inputs = random_instance(n, seed=n)
        median = median_time(lambda i: dispatch(params, inputs), budget_s)
        baseline = median_time(
            lambda i: _dispatch_lp.solve_weighted(params, inputs), budget_s, min_repeats=3
        )
        rows.append(_row("racks", n, median, baseline))
    return rows


def run_all(
    powerflow_sizes: Sequence[int] = POWERFLOW_SIZES,
    dispatch_sizes: Sequence[int] = DISPATCH_SIZES,
    budget_s: float = 0.5,
) -> dict[str, Any]:
    """Every benchmark, as the JSON document `edgectl bench --json` prints."""
    np.random.seed(0)
    return {
        "compiled": kernels.COMPILED,
        "powerflow": bench_powerflow(powerflow_sizes, budget_s),
        "dispatch": bench_dispatch(dispatch_sizes, budget_s),
    }
