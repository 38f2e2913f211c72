"""End to end, the flight recorder: what the daemon recorded replays to the same decision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2e_bench import bench

from edgectl.cli import main


async def test_recorded_cycles_replay_to_the_same_decision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with bench(tmp_path) as b:
        await b.event(kind="cloud", depth=0.7, ramp_s=5.0, duration_s=60.0)
        await b.run_until(b.sim.t_s + 10.0)
        b.faults("bess-1", offline=True)  # a lost battery: the cycle's constants change
        await b.run_until(b.sim.t_s + 8.0)
        b.faults("bess-2", offline=True)  # SAFE
        await b.wait_for(lambda: b.state == "SAFE", within_s=10.0, what="SAFE")
        await b.run_until(b.sim.t_s + 3.0)
        document = b.daemon.cycles(last=30)
    states = {c["state"] for c in document["cycles"]}
    assert {"NORMAL", "SAFE"} <= states
    assert any("params" in c for c in document["cycles"])
    path = tmp_path / "cycles.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    capsys.readouterr()
    for record in document["cycles"]:
        code = main(
            [
                "dispatch",
                str(b.site_file),
                "--snapshot",
                str(path),
                "--cycle",
                str(record["cycle"]),
                "--json",
            ]
        )
        out = json.loads(capsys.readouterr().out)
        assert code == 0, (record["cycle"], record["state"], out["replay"]["differences"][:3])
        assert out["replay"]["matches"] is True
