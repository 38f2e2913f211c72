"""benchmarks/polling.py end to end at a tiny size: the simulator process starts, every
device is identified and polled, and the JSON document has its shape. No timing is
asserted: speed is the benchmark's business, not the tests'."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "polling.py"

RESULT_KEYS = {
    "devices",
    "endpoints",
    "requests_per_s",
    "polls_per_s",
    "on_time_fraction",
    "lateness_p50_s",
    "lateness_p99_s",
    "client_cpu_share",
    "server_cpu_share",
    "errors",
}


ARGS = ["--devices", "5", "--seconds", "2", "--per-endpoint", "3", "--json"]


def test_polling_benchmark_smoke() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *ARGS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["benchmark"] == "polling"
    assert document["cpu_count"] >= 1
    assert "simulator" in document["note"]
    (row,) = document["results"]
    assert set(row) >= RESULT_KEYS
    assert row["devices"] == 5
    assert row["endpoints"] == 2  # 3 units per endpoint: two simulator endpoints
    assert row["errors"] == 0, row["error_samples"]
    assert row["invalid_readings"] == 0
    assert row["polls_completed"] > 0
    assert row["requests_per_s"] > 0
    assert row["polls_per_s"] > 0
    assert 0.0 <= row["on_time_fraction"] <= 1.0
    assert row["client_cpu_share"] >= 0.0
    assert row["server_cpu_share"] >= 0.0
    assert "target" not in document  # only reported when 1000 devices were run
