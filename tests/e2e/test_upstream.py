"""End to end, upstream: the daemon on the simulated site reports to a real HTTP endpoint
and a real mosquitto, grants and expires a lease, rides out the scheduler going away, and
leaves a ledger that `edgectl audit` verifies."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import jsonschema
import pytest
from e2e_bench import FAST_DAEMON, bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "uplink"))
from uplink_peers import Broker, Scheduler

from edgectl.app.openapi import schema
from edgectl.cli import main


async def test_reports_leases_outage_and_audit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = Broker(tmp_path / "broker")
    broker.start()
    scheduler = Scheduler()
    await scheduler.start()
    (tmp_path / "token").write_text("s3cret-token\n")
    extra = FAST_DAEMON + (
        f'\n[uplink]\nreport_period_s = 5.0\nscheduler_url = "http://127.0.0.1:{scheduler.port}'
        f'/reports"\ntoken_file = "token"\nmqtt_host = "127.0.0.1"\nmqtt_port = {broker.port}\n'
    )
    report_schema = schema("availability-report.v1.json")
    try:
        async with bench(tmp_path, extra=extra) as b:
            await b.run_until(30.0)
            reports = [r for r in scheduler.received if "forecast" in r]
            assert len(reports) >= 3
            for report in reports:
                jsonschema.validate(report, report_schema)
            assert scheduler.tokens == {"Bearer s3cret-token"}
            assert [r["seq"] for r in scheduler.received] == sorted(
                r["seq"] for r in scheduler.received
            )
            assert len(reports[-1]["forecast"]) == 12

            # MQTT: the latest report is retained for a subscriber that comes late.
            async with aiomqtt.Client("127.0.0.1", broker.port) as client:
                await client.subscribe("edgectl/demo/#")
                seen: dict[str, Any] = {}
                async with asyncio.timeout(10):
                    async for message in client.messages:
                        seen[str(message.topic)] = message.payload
                        if {"edgectl/demo/availability", "edgectl/demo/status"} <= set(seen):
                            break
            assert seen["edgectl/demo/status"] == b"online"
            retained = json.loads(seen["edgectl/demo/availability"])  # type: ignore[arg-type]
            assert retained["site"] == "demo" and retained["seq"] >= reports[0]["seq"]

            # A lease for a tier-3 rack: granted, served as its floor, then expired.
            assert b.daemon.api is not None
            url = b.daemon.api.url
            async with aiohttp.ClientSession() as http:
                ask = {"id": "job-1", "rack": "r12", "p_w": 90_000.0, "duration_s": 20.0}
                async with http.post(f"{url}/v1/leases", json=ask) as answer:
                    granted = await answer.json()
                assert granted["state"] == "granted", granted
                assert 0.0 < granted["granted_w"] <= 90_000.0
                async with http.post(f"{url}/v1/leases", json=ask) as answer:
                    renewed = await answer.json()
                assert renewed["state"] == "granted" and renewed["seq"] > granted["seq"]
                async with http.get(f"{url}/v1/leases") as answer:
                    listed = await answer.json()
                assert [x["id"] for x in listed["leases"]] == ["job-1"]
                await b.run_until(b.sim.t_s + 3.0)
                rec = b.records[-1]
                i = [r.id for r in b.site.racks].index("r12")
                assert float(rec.params.rack_p_min_w[i]) >= granted["granted_w"] - 1.0
                await b.run_until(b.sim.t_s + 25.0)
                async with http.get(f"{url}/v1/leases") as answer:
                    assert (await answer.json())["leases"] == []
                async with http.get(f"{url}/v1/openapi.json") as answer:
                    assert (await answer.json())["openapi"] == "3.1.0"
                async with http.get(f"{url}/metrics") as answer:
                    text = await answer.text()
                states = re.findall(r'edgectl_state\{state="(\w+)"\} 1\.0', text)
                assert len(states) == 1 and states[0] == b.state
                assert "edgectl_cycle_seconds_bucket" in text

            # The scheduler goes away for 30 s: nothing is lost, in order, no gaps.
            await scheduler.stop()
            await b.run_until(b.sim.t_s + 30.0)
            backlog = b.daemon.upstream.outbox.backlog("http")
            assert backlog >= 5
            await scheduler.start()
            # The sink retries with a back-off of real seconds: wait for the backlog.
            async with asyncio.timeout(60):
                while b.daemon.upstream.outbox.backlog("http") > 1:
                    await asyncio.sleep(0.1)
            last = b.daemon.upstream.outbox.last_seq
            seqs = [r["seq"] for r in scheduler.received]
            assert sorted(set(seqs)) == list(range(1, max(seqs) + 1))
            assert max(seqs) >= last - 1  # delivered up to the last one or so
            assert seqs == sorted(seqs)  # in order; a repeat only with its own seq
    finally:
        await scheduler.stop()
        broker.stop()
    # The ledger of what ran: intact, and reported.
    state = tmp_path / "state"
    assert main(["audit", "verify", "--state-dir", str(state)]) == 0
    assert "intact" in capsys.readouterr().out
    today = datetime.now(UTC).date()
    code = main(
        [
            "audit",
            "report",
            "--state-dir",
            str(state),
            "--from",
            (today - timedelta(days=1)).isoformat(),
            "--to",
            (today + timedelta(days=2)).isoformat(),
            "--csv",
        ]
    )
    assert code == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) >= 2  # a header and at least the interval sealed at stop
