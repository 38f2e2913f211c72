"""benchmarks/uplink.py end to end at a tiny size: every part runs and the JSON document has
its shape. No timing is asserted: speed is the benchmark's business, not the tests'."""

from __future__ import annotations

import json
import subprocess
import sys

from uplink_peers import ROOT, child_env

SCRIPT = ROOT / "benchmarks" / "uplink.py"


def test_uplink_benchmark_smoke() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--reports",
            "30",
            "--outage-reports",
            "40",
            "--appends",
            "50",
            "--json",
        ],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["benchmark"] == "uplink"
    append = document["append"]
    assert append["appends"] == 50
    assert set(append) >= {"outbox_append", "plain_insert_commit", "outbox_ack", "p50_ratio"}
    assert "plain_json_insert_commit" in append
    latency = document["latency"]
    assert latency["reports"] == 30
    assert latency["through_outbox"]["p50_us"] > 0
    assert latency["direct_post"]["p99_us"] > 0
    replay = document["replay_http"]
    # 40 reports and no full audit interval among them.
    assert replay["records"] == 40
    assert replay["received"] >= 40
    assert replay["records_per_s"] > 0
    mqtt = document["replay_mqtt"]
    if mqtt is not None:
        assert mqtt["records"] == 40
        assert mqtt["records_per_s"] > 0
