"""`edgectl bench [--json]`: the kernels against their baselines, as ratios."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

HELP = "benchmark the compiled kernels against their baselines (SciPy Newton, HiGHS)"


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected sizes like 10,100,1000") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be positive")
    return sizes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from edgectl.bench.run import DISPATCH_SIZES, POWERFLOW_SIZES

    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--powerflow-sizes", type=_sizes, default=list(POWERFLOW_SIZES), metavar="N,N,..."
    )
    parser.add_argument(
        "--dispatch-sizes", type=_sizes, default=list(DISPATCH_SIZES), metavar="N,N,..."
    )
    parser.add_argument(
        "--site",
        dest="sites",
        action="append",
        default=[],
        metavar="SITE",
        help="also time both kernels on this site file (repeatable)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=0.5,
        metavar="S",
        help="seconds of repeated calls per measurement (default 0.5)",
    )


def run(args: argparse.Namespace) -> int:
    from edgectl.bench.run import run_all
    from edgectl.errors import UsageError

    try:
        import highspy  # noqa: F401
    except ImportError:
        raise UsageError(
            "the dispatch baseline needs HiGHS: pip install 'edgectl[bench]'"
        ) from None
    if not args.json:
        print("running benchmarks (a minute or so) ...", file=sys.stderr)
    from edgectl.config.load import load_site
    from edgectl.kernels import require_compiled

    require_compiled()
    for path in args.sites:
        load_site(path)  # a bad site file is an input error before minutes of timing
    result = run_all(args.powerflow_sizes, args.dispatch_sizes, max(args.budget, 0.01), args.sites)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_text(result)
    return 0


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:10.1f} us"


def print_text(result: dict[str, Any]) -> None:
    print(f"compiled kernels: {'yes' if result['compiled'] else 'NO (NumPy reference)'}")
    print("DC power flow (Newton, sparse LDL^T) vs SciPy sparse Newton reference:")
    for row in result["powerflow"]:
        print(
            f"  {row['buses']:>6} buses {row['start']:<4} {_us(row['median_s'])}  "
            f"baseline {_us(row['baseline_median_s'])}  x{row['ratio']:.1f}"
        )
    print("Dispatch vs HiGHS LP (presolve off):")
    for row in result["dispatch"]:
        print(
            f"  {row['racks']:>6} racks      {_us(row['median_s'])}  "
            f"baseline {_us(row['baseline_median_s'])}  x{row['ratio']:.1f}"
        )
    for site in result.get("sites", []):
        print(f"Site {site['site']} ({site['file']}):")
        for row in site["powerflow"]:
            print(
                f"  power flow {row['buses']:>5} buses {row['start']:<4} "
                f"{_us(row['median_s'])}  baseline {_us(row['baseline_median_s'])}  "
                f"x{row['ratio']:.1f}"
            )
        for row in site["dispatch"]:
            print(
                f"  dispatch   {row['racks']:>5} racks      {_us(row['median_s'])}  "
                f"baseline {_us(row['baseline_median_s'])}  x{row['ratio']:.1f}"
            )
