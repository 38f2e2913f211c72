"""Kernel benchmarks: each compiled kernel against its baseline, in the same process and run.

Figures are medians of repeated calls, reported with the baseline's median and their
ratio (baseline / compiled, so > 1 means the kernel is faster). Absolute times on a
shared machine move by tens of percent from run to run; the ratios are what to compare.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np

from edgectl import kernels
from edgectl.kernels.powerflow import FloatArray, Implementation, PowerFlow, Topology

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


def _ignore_index(call: Callable[[], object]) -> Callable[[int], object]:
    return lambda _i: call()


def _solve_step(pf: PowerFlow, steps: list[FloatArray], warm: bool, i: int) -> object:
    return pf.solve(steps[i % len(steps)], warm=warm)


def _time_powerflow(
    topology: Topology, s_bus_w: FloatArray, budget_s: float, label: str
) -> dict[str, Any]:
    """Medians of cold and warm solves, compiled and reference, for one operating point."""
    steps = [s_bus_w * (1.0 + 0.01 * k) for k in (-1, 0, 1, 0)]
    medians: dict[tuple[str, str], float] = {}
    iterations = 0
    impl: Implementation
    for impl in ("compiled", "reference"):
        pf = PowerFlow(topology, implementation=impl)
        first = pf.solve(s_bus_w, warm=False)
        if not first.converged:
            raise RuntimeError(f"benchmark {label} did not solve: {first.message}")
        iterations = first.iterations
        for start in ("cold", "warm"):
            medians[impl, start] = median_time(
                partial(_solve_step, pf, steps, start == "warm"), budget_s
            )
    return {"medians": medians, "iterations_cold": iterations}


def bench_powerflow(sizes: Sequence[int], budget_s: float) -> list[dict[str, Any]]:
    """Newton kernel against the SciPy sparse Newton reference, cold and warm start.

    Cold: from a flat start (symbolic analysis cached, as in the daemon). Warm: from the
    previous solution, with the loads moving by +-1 % between calls as they do cycle to cycle.
    """
    from edgectl.bench.networks import synthetic_case

    rows: list[dict[str, Any]] = []
    for n in sizes:
        # Converters rated well above their share: the benchmark times the solver, not
        # the continuation it falls back to when converters saturate.
        case = synthetic_case(n, seed=n, headroom=3.0)
        timed = _time_powerflow(case.topology, case.s_bus_w, budget_s, f"network of {n} buses")
        for start in ("cold", "warm"):
            rows.append(
                _row(
                    "buses",
                    n,
                    timed["medians"]["compiled", start],
                    timed["medians"]["reference", start],
                    start=start,
                    iterations_cold=timed["iterations_cold"],
                )
            )
    return rows


def bench_site(path: str, budget_s: float) -> dict[str, Any]:
    """Both kernels on a site file: its network at the default operating point of
    `edgectl powerflow`, and a dispatch of its racks in a supply shortfall."""
    from edgectl.config.load import load_site
    from edgectl.kernels import _dispatch_lp
    from edgectl.kernels.dispatch import DispatchInput, dispatch
    from edgectl.model.dispatch_input import params_from_site
    from edgectl.model.network import build_network, default_operating_point

    site = load_site(path)
    net = build_network(site)
    s = net.injections(*default_operating_point(site))
    timed = _time_powerflow(net.powerflow.topology, s, budget_s, site.site.id)
    powerflow = [
        _row(
            "buses",
            len(site.buses),
            timed["medians"]["compiled", start],
            timed["medians"]["reference", start],
            start=start,
            iterations_cold=timed["iterations_cold"],
        )
        for start in ("cold", "warm")
    ]
    params = params_from_site(site)
    # Renewables at 30 %, batteries half full, every rack asking for its p_max_w.
    inputs = DispatchInput(
        renewable_available_w=0.3 * params.renewable_p_max_w,
        battery_soc=np.full(params.n_batteries, 0.5),
        rack_demand_w=params.rack_p_max_w.copy(),
        rack_cap_w=0.9 * params.rack_p_max_w,
        rack_on=np.ones(params.n_racks, dtype=np.uint8),
        rack_off_s=np.full(params.n_racks, np.inf),
    )
    median = median_time(_ignore_index(partial(dispatch, params, inputs)), budget_s)
    baseline = median_time(
        _ignore_index(partial(_dispatch_lp.solve_weighted, params, inputs)), budget_s, 3
    )
    return {
        "site": site.site.id,
        "file": path,
        "powerflow": powerflow,
        "dispatch": [_row("racks", params.n_racks, median, baseline)],
    }


def bench_dispatch(sizes: Sequence[int], budget_s: float) -> list[dict[str, Any]]:
    """Dispatch kernel against the same decision as one HiGHS LP (presolve off)."""
    from edgectl.kernels import _dispatch_lp
    from edgectl.kernels.dispatch import dispatch, random_instance

    rows: list[dict[str, Any]] = []
    for n in sizes:
        params, inputs = random_instance(n, seed=n)
        median = median_time(_ignore_index(partial(dispatch, params, inputs)), budget_s)
        baseline = median_time(
            _ignore_index(partial(_dispatch_lp.solve_weighted, params, inputs)),
            budget_s,
            min_repeats=3,
        )
        reference = median_time(
            _ignore_index(partial(dispatch, params, inputs, implementation="reference")),
            budget_s,
        )
        rows.append(_row("racks", n, median, baseline, reference_median_s=reference))
    return rows


def run_all(
    powerflow_sizes: Sequence[int] = POWERFLOW_SIZES,
    dispatch_sizes: Sequence[int] = DISPATCH_SIZES,
    budget_s: float = 0.5,
    sites: Sequence[str] = (),
) -> dict[str, Any]:
    """Every benchmark, as the JSON document `edgectl bench --json` prints."""
    result: dict[str, Any] = {
        "compiled": kernels.COMPILED,
        "powerflow": bench_powerflow(powerflow_sizes, budget_s),
        "dispatch": bench_dispatch(dispatch_sizes, budget_s),
    }
    if sites:
        result["sites"] = [bench_site(path, budget_s) for path in sites]
    return result
