"""End to end, upstream outages: the scheduler and the broker gone for minutes of simulated
time while the daemon runs, and the daemon killed (-9) while it is delivering a backlog.
Nothing may be lost: every record reaches the scheduler and the broker's subscriber once
they are back, in order, and a record sent twice is the same record under its own number."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from e2e_bench import FAST_DAEMON, DaemonProcess, bench, simulator

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "uplink"))
from uplink_peers import Broker, Scheduler, Watcher

TOPICS = ("edgectl/demo/availability", "edgectl/demo/audit")


def uplink(scheduler: Scheduler, broker: Broker | None = None, period_s: float = 5.0) -> str:
    text = f'\n[uplink]\nreport_period_s = {period_s}\nscheduler_url = "{scheduler.url}"\n'
    if broker is not None:
        text += f'mqtt_host = "127.0.0.1"\nmqtt_port = {broker.port}\n'
    return FAST_DAEMON + text


def check_nothing_lost(bodies: list[dict[str, Any]], first_seq: int, last_seq: int) -> None:
    """Every seq from first_seq to last_seq, first arrivals in order, repeats identical."""
    first: dict[int, dict[str, Any]] = {}
    for body in bodies:
        seq = body["seq"]
        assert first.setdefault(seq, body) == body, f"seq {seq} sent twice with other content"
    arrived = [s for s in first if first_seq <= s <= last_seq]
    assert arrived == list(range(first_seq, last_seq + 1)), (
        f"missing: {sorted(set(range(first_seq, last_seq + 1)) - set(arrived))[:10]}, "
        f"out of order: {arrived != sorted(arrived)}"
    )


async def until(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.1)


async def test_scheduler_and_broker_gone_for_two_minutes_lose_nothing(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker", persistent=True)
    broker.start()
    scheduler = Scheduler()
    await scheduler.start()
    # The scheduler's side of MQTT: a persistent session, so that what the daemon publishes
    # while this subscriber reconnects after the broker's restart waits for it.
    watcher = Watcher(broker.port, list(TOPICS), client_id="scheduler", persistent=True)
    try:
        async with watcher, bench(tmp_path, extra=uplink(scheduler, broker)) as b:
            box = b.daemon.upstream.outbox
            await b.run_until(20.0)
            await until(lambda: watcher.on(TOPICS[0]), 20.0, "a first report over MQTT")
            before = box.last_seq
            # Both gone for 120 s of simulated time: 24 reports at least pile up.
            await scheduler.stop()
            broker.stop()
            await b.run_until(b.sim.t_s + 120.0)
            assert box.backlog("http") >= 20 and box.backlog("mqtt") >= 20
            assert b.state in ("NORMAL", "DEGRADED")  # the control loop never cared
            broker.start()  # the same port, its sessions restored from its own disk
            await scheduler.start()
            # The links retry with back-offs of real seconds (at most a minute).
            await until(
                lambda: box.backlog("http") <= 1 and box.backlog("mqtt") <= 1,
                90.0,
                "the backlog delivered",
            )
            last = box.last_seq - 1
            assert last > before + 20
            await until(
                lambda: any(json.loads(p)["seq"] >= last for t in TOPICS for p in watcher.on(t)),
                20.0,
                "the last record at the subscriber",
            )
    finally:
        await scheduler.stop()
        broker.stop()
    check_nothing_lost(scheduler.received, 1, last)
    seen = [json.loads(p) for t, p, _retained in watcher.messages if t in TOPICS]
    # The subscriber came in at the first report it saw (a retained one may be older).
    start = min(body["seq"] for body in seen if body["seq"] > before - 3)
    check_nothing_lost([b for b in seen if b["seq"] >= start], start, last)


def status(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/v1/status", timeout=5) as answer:
        doc: dict[str, Any] = json.load(answer)
        return doc


async def test_kill_9_while_delivering_a_backlog_loses_nothing(tmp_path: Path) -> None:
    speed = 20.0
    # A report every 2 s of simulated time is 10 a second at this speed; a slow scheduler
    # takes 33 a second, so a backlog drains for seconds, one record in flight all along.
    scheduler = Scheduler(delay_s=0.03)
    async with simulator(tmp_path, speed=speed, extra=uplink(scheduler, period_s=2.0)) as (
        _sim,
        site_file,
    ):
        state = tmp_path / "state"
        daemon = DaemonProcess(site_file, state, time_scale=speed)
        try:
            url = str((await daemon.wait_log("started"))["status_api"])
            # The scheduler away: a backlog of a few dozen reports builds up.
            await until(
                lambda: status(url)["uplink"]["http"]["backlog"] >= 60, 30.0, "a backlog"
            )
            await scheduler.start()
            await until(lambda: len(scheduler.received) >= 15, 30.0, "delivery under way")
            assert status(url)["uplink"]["http"]["backlog"] >= 10  # still delivering
            daemon.proc.send_signal(signal.SIGKILL)
            await daemon.wait_exit(5.0)
        finally:
            daemon.close()
        got_before_kill = len(scheduler.received)
        again = DaemonProcess(site_file, state, time_scale=speed)
        try:
            started = await again.wait_log("started")
            assert started["previous_run"] == "running"
            url = str(started["status_api"])
            await until(
                lambda: status(url)["uplink"]["http"]["backlog"] <= 1, 60.0, "the backlog"
            )
            last = status(url)["uplink"]["last_seq"] - 1
        finally:
            again.proc.send_signal(signal.SIGTERM)
            await again.wait_exit(5.0)
            again.close()
            await scheduler.stop()
    assert len(scheduler.received) > got_before_kill
    check_nothing_lost(scheduler.received, 1, last)


async def test_a_reload_moves_reports_to_the_new_scheduler_keeping_queue_and_leases(
    tmp_path: Path,
) -> None:
    first, second = Scheduler(), Scheduler()
    await second.start()  # the first one is down: its reports wait in the outbox
    try:
        async with bench(tmp_path, extra=uplink(first)) as b:
            await b.run_until(20.0)
            assert b.daemon.upstream.outbox.backlog("http") >= 3
            assert b.daemon.api is not None
            ask = {"id": "job-7", "tier": 3, "p_w": 30_000.0, "duration_s": 600.0}
            code, granted = b.daemon.upstream.request_lease(ask)
            assert code == 200 and granted["state"] == "granted", granted
            text = b.site_file.read_text(encoding="utf-8")
            # A file the uplink cannot use is refused as a whole: the old link stays.
            b.site_file.write_text(
                text.replace(first.url, second.url).replace(
                    "[uplink]\n", '[uplink]\ntoken_file = "no-such-token"\n'
                ),
                encoding="utf-8",
            )
            b.daemon.request_reload()
            await b.run_until(b.sim.t_s + 3.0)
            assert b.daemon.site.uplink.scheduler_url == first.url
            assert not second.received
            b.site_file.write_text(text.replace(first.url, second.url), encoding="utf-8")
            b.daemon.request_reload()
            await b.run_until(b.sim.t_s + 3.0)
            assert b.daemon.site.uplink.scheduler_url == second.url
            # A reload is no reason for SAFE: the new devices answer before a cycle runs.
            assert "SAFE" not in {r.state.name for r in b.records}
            box = b.daemon.upstream.outbox  # the same file, opened again for the new sink
            await until(lambda: box.backlog("http") <= 1, 30.0, "the queue at the new one")
            last = box.last_seq - 1
            leases = b.daemon.upstream.leases_document()["leases"]
            assert [x["id"] for x in leases] == ["job-7"]  # the lease lived through both
    finally:
        await second.stop()
    # What was queued for the old scheduler went to the new one: everything, in order.
    check_nothing_lost(second.received, 1, last)
