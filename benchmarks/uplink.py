"""Uplink: what the durable outbox costs, and how fast a backlog drains after an outage.

Three measurements, each against a baseline in the same run:

(a) latency: report delivery through the outbox (append -> Deliverer -> HttpSink -> a real
    aiohttp.web scheduler on 127.0.0.1), from the append to the server having the record,
    one report at a time (a report every 5 s of simulated time, sent as fast as the chain
    allows), p50/p99 over `--reports`; the baseline is the same HttpSink POSTing the same
    records directly, without the outbox, in alternating blocks so drift hits both alike;
(b) replay: `--outage-reports` reports (720: one hour at one per 5 s) plus one audit record
    per 180 reports appended while the scheduler is down, then the scheduler started, and
    records/s from its first record to an empty backlog; the same to a mosquitto broker
    through MqttLink when mosquitto is installed;
(c) append cost: `Outbox.append` (one JSON encode, one INSERT, one commit) against a plain
    sqlite3 INSERT + commit of the same body into a WAL table with synchronous=NORMAL, with
    and without the JSON encoding; also the cost of `ack`. The outbox checkpoints in a
    thread of its own, the plain table in the commit (SQLite's default), so the plain p99
    carries checkpoints and the outbox's does not.

    python benchmarks/uplink.py [--reports 2000] [--outage-reports 720] [--appends 5000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from edgectl.app.logs import configure_logging
from edgectl.transport.mqtt import MqttLink
from edgectl.transport.uplink_http import HttpSink
from edgectl.uplink.delivery import Deliverer
from edgectl.uplink.outbox import Entry, Outbox

HOST = "127.0.0.1"
REPORT_PERIOD_S = 5.0  # simulated time between two reports
AUDIT_EVERY = 180  # reports per 15-minute audit interval at one report per 5 s
BLOCK = 100  # latency samples per alternating block


def report_payload(n: int) -> dict[str, Any]:
    """An availability report of realistic size (about 400 bytes of JSON)."""
    return {
        "site": "site-7",
        "timestamp": 1_760_000_000.0 + n * REPORT_PERIOD_S,
        "state": "NORMAL",
        "green_w": 1_843_200.0 + n,
        "grid_w": 0.0,
        "battery_soc": 0.62,
        "battery_p_w": -120_000.0,
        "racks": {f"rack-{i}": {"cap_w": 40_000.0, "draw_w": 36_500.0} for i in range(4)},
        "forecast_w": [1_800_000.0 - 10_000.0 * k for k in range(12)],
    }


class Scheduler:
    """The scheduler's intake on loopback: records when each sequence number arrived."""

    def __init__(self) -> None:
        self.arrived: dict[int, float] = {}
        self.count = 0
        self.first_at: float | None = None
        self.port = 0
        self._waiters: dict[int, asyncio.Future[float]] = {}
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        now = time.perf_counter()
        seq = int(request.headers["X-Edgectl-Seq"])
        self.count += 1
        if self.first_at is None:
            self.first_at = now
        self.arrived.setdefault(seq, now)
        waiter = self._waiters.pop(seq, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(now)
        return web.Response(status=204)

    def expect(self, seq: int) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiters[seq] = future
        return future

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/records", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, self.port)
        await site.start()
        if self.port == 0:
            self.port = _bound_port(site)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/records"


def _bound_port(site: web.TCPSite) -> int:
    server = site._server
    assert isinstance(server, asyncio.Server)
    return int(server.sockets[0].getsockname()[1])


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summary_us(samples: list[float]) -> dict[str, float]:
    return {
        "p50_us": round(percentile(samples, 0.50) * 1e6, 1),
        "p99_us": round(percentile(samples, 0.99) * 1e6, 1),
        "mean_us": round(statistics.fmean(samples) * 1e6, 1),
    }


async def bench_latency(directory: Path, reports: int) -> dict[str, Any]:
    """(a) append -> received through the outbox, against a direct POST."""
    server = Scheduler()
    await server.start()
    outbox = Outbox(directory / "latency.sqlite", sinks=("http",))
    sink = HttpSink(server.url)
    deliverer = Deliverer(outbox, "http", sink.send)
    deliverer.start()
    through: list[float] = []
    direct: list[float] = []
    direct_seq = 10_000_000  # apart from the outbox's numbers
    try:
        # Warm up both paths: the connection, the code paths, the page cache.
        for n in range(20):
            waiter = server.expect(outbox.last_seq + 1)
            outbox.append("report", report_payload(n))
            deliverer.wake()
            await waiter
            direct_seq += 1
            await sink.send(Entry(direct_seq, "report", time.time(), b"{}"))
        n = 0
        while len(through) < reports:
            for _ in range(min(BLOCK, reports - len(through))):
                waiter = server.expect(outbox.last_seq + 1)
                start = time.perf_counter()
                outbox.append("report", report_payload(n))
                deliverer.wake()
                through.append(await waiter - start)
                n += 1
            for _ in range(min(BLOCK, reports - len(direct))):
                direct_seq += 1
                body = json.dumps(
                    {**report_payload(n), "seq": direct_seq}, separators=(",", ":")
                ).encode()
                waiter = server.expect(direct_seq)
                start = time.perf_counter()
                await sink.send(Entry(direct_seq, "report", time.time(), body))
                direct.append(await waiter - start)
    finally:
        await deliverer.stop()
        await sink.close()
        outbox.close()
        await server.stop()
    result: dict[str, Any] = {
        "reports": reports,
        "through_outbox": summary_us(through),
        "direct_post": summary_us(direct),
    }
    result["p50_ratio"] = round(
        result["through_outbox"]["p50_us"] / result["direct_post"]["p50_us"], 2
    )
    result["p99_ratio"] = round(
        result["through_outbox"]["p99_us"] / result["direct_post"]["p99_us"], 2
    )
    return result


def fill_outage(outbox: Outbox, reports: int) -> int:
    """Append an outage's records: the reports, and an audit record every AUDIT_EVERY."""
    records = 0
    for n in range(reports):
        outbox.append("report", report_payload(n))
        records += 1
        if (n + 1) % AUDIT_EVERY == 0:
            outbox.append("audit", {"site": "site-7", "interval": n // AUDIT_EVERY})
            records += 1
    return records


async def drained(outbox: Outbox, sink: str, timeout_s: float = 300.0) -> float:
    """Wait until the sink's backlog is empty; the perf_counter time it was seen empty."""
    deadline = time.perf_counter() + timeout_s
    while outbox.backlog(sink) > 0:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{sink}: backlog of {outbox.backlog(sink)} not drained")
        await asyncio.sleep(0.001)
    return time.perf_counter()


async def bench_replay_http(directory: Path, reports: int) -> dict[str, Any]:
    """(b) the backlog of an outage, replayed to the scheduler once it is back."""
    server = Scheduler()
    port = _free_port()
    server.port = port
    outbox = Outbox(directory / "replay-http.sqlite", sinks=("http",))
    sink = HttpSink(server.url)
    # Short back-off: the figure is the replay rate, not how long the last back-off was.
    deliverer = Deliverer(outbox, "http", sink.send, backoff_min_s=0.01, backoff_max_s=0.05)
    deliverer.start()
    try:
        records = fill_outage(outbox, reports)
        deliverer.wake()
        await asyncio.sleep(0.2)  # a few failed attempts against the closed port
        retries_during_outage = deliverer.stats().retries
        started = time.perf_counter()
        await server.start()
        done = await drained(outbox, "http")
    finally:
        await deliverer.stop()
        await sink.close()
        outbox.close()
        await server.stop()
    first = server.first_at or done
    return {
        "records": records,
        "received": server.count,
        "retries_during_outage": retries_during_outage,
        "resume_delay_s": round(first - started, 4),
        "replay_s": round(done - first, 4),
        "records_per_s": round(records / max(done - first, 1e-9), 1),
    }


async def bench_replay_mqtt(directory: Path, reports: int) -> dict[str, Any] | None:
    """(b) the same backlog to a mosquitto broker, when mosquitto is installed."""
    binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/sbin")
    if binary is None:
        return None
    port = _free_port()
    conf = directory / "mosquitto.conf"
    conf.write_text(
        f"listener {port} {HOST}\nallow_anonymous true\npersistence false\n", encoding="utf-8"
    )
    outbox = Outbox(directory / "replay-mqtt.sqlite", sinks=("mqtt",))
    link = MqttLink(
        HOST,
        port,
        client_id="bench-site-7",
        topic_prefix="bench/site-7",
        backoff_min_s=0.01,
        backoff_max_s=0.05,
    )
    await link.start()
    deliverer = Deliverer(outbox, "mqtt", link.send, backoff_min_s=0.01, backoff_max_s=0.05)
    deliverer.start()
    broker: subprocess.Popen[bytes] | None = None
    try:
        records = fill_outage(outbox, reports)
        deliverer.wake()
        await asyncio.sleep(0.2)
        started = time.perf_counter()
        broker = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        await link.wait_connected(30)
        connected = time.perf_counter()
        done = await drained(outbox, "mqtt")
    finally:
        await deliverer.stop()
        await link.stop()
        outbox.close()
        if broker is not None:
            broker.terminate()
            broker.wait(timeout=10)
    return {
        "records": records,
        "resume_delay_s": round(connected - started, 4),
        "replay_s": round(done - connected, 4),
        "records_per_s": round(records / max(done - connected, 1e-9), 1),
    }


def bench_append(directory: Path, appends: int) -> dict[str, Any]:
    """(c) Outbox.append and ack against a plain sqlite3 INSERT + commit."""
    outbox = Outbox(directory / "append.sqlite", sinks=("http", "mqtt"))
    plain = sqlite3.connect(directory / "plain.sqlite", isolation_level=None)
    plain.execute("PRAGMA journal_mode=WAL")
    plain.execute("PRAGMA synchronous=NORMAL")
    plain.execute(
        "CREATE TABLE t (seq INTEGER PRIMARY KEY, kind TEXT, created_unix REAL, body BLOB)"
    )
    payload = report_payload(0)
    body = json.dumps(payload, separators=(",", ":")).encode()
    through: list[float] = []
    baseline: list[float] = []
    encoded: list[float] = []
    acks: list[float] = []
    seq = 0

    def plain_insert(data: bytes) -> None:
        nonlocal seq
        seq += 1
        plain.execute("BEGIN IMMEDIATE")
        plain.execute("INSERT INTO t VALUES (?, 'report', ?, ?)", (seq, time.time(), data))
        plain.execute("COMMIT")

    try:
        for _ in range(200):  # warm-up
            outbox.append("report", payload)
            plain_insert(body)
        while len(through) < appends:
            for _ in range(min(BLOCK, appends - len(through))):
                start = time.perf_counter()
                last = outbox.append("report", payload)
                through.append(time.perf_counter() - start)
                start = time.perf_counter()
                outbox.ack("http", last)
                acks.append(time.perf_counter() - start)
            for _ in range(min(BLOCK, appends - len(baseline))):
                start = time.perf_counter()
                plain_insert(body)
                baseline.append(time.perf_counter() - start)
                # The same with the JSON encoding that append does as well.
                start = time.perf_counter()
                plain_insert(json.dumps({**payload, "seq": seq}, separators=(",", ":")).encode())
                encoded.append(time.perf_counter() - start)
    finally:
        outbox.close()
        plain.close()
    result: dict[str, Any] = {
        "appends": appends,
        "outbox_append": summary_us(through),
        "plain_insert_commit": summary_us(baseline),
        "plain_json_insert_commit": summary_us(encoded),
        "outbox_ack": summary_us(acks),
    }
    result["p50_ratio"] = round(
        result["outbox_append"]["p50_us"] / result["plain_insert_commit"]["p50_us"], 2
    )
    result["p50_ratio_with_json"] = round(
        result["outbox_append"]["p50_us"] / result["plain_json_insert_commit"]["p50_us"], 2
    )
    return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextmanager
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="edgectl-uplink-bench-") as name:
        yield Path(name)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with scratch() as directory:
        document: dict[str, Any] = {
            "benchmark": "uplink",
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "cpu_count": os.cpu_count(),
            "append": bench_append(directory, args.appends),
            "latency": await bench_latency(directory, args.reports),
            "replay_http": await bench_replay_http(directory, args.outage_reports),
        }
        document["replay_mqtt"] = (
            None if args.no_mqtt else await bench_replay_mqtt(directory, args.outage_reports)
        )
    return document


def render(document: dict[str, Any], out: Callable[[str], None] = print) -> None:
    append, latency = document["append"], document["latency"]
    out(f"uplink benchmark (Python {document['python']}, SQLite {document['sqlite']})")
    out("")
    out(f"(c) append cost over {append['appends']} calls")
    for name in ("outbox_append", "plain_insert_commit", "plain_json_insert_commit", "outbox_ack"):
        row = append[name]
        out(f"    {name:26} p50 {row['p50_us']:8.1f} us   p99 {row['p99_us']:8.1f} us")
    out(
        f"    outbox / plain (p50): {append['p50_ratio']:.2f}x; "
        f"with the JSON encoding in both: {append['p50_ratio_with_json']:.2f}x"
    )
    out("")
    out(f"(a) report latency, append -> received, over {latency['reports']} reports")
    for name in ("through_outbox", "direct_post"):
        row = latency[name]
        out(f"    {name:26} p50 {row['p50_us']:8.1f} us   p99 {row['p99_us']:8.1f} us")
    out(f"    outbox / direct: p50 {latency['p50_ratio']:.2f}x, p99 {latency['p99_ratio']:.2f}x")
    out("")
    replays = (
        ("replay_http", "scheduler (HTTP)", "first record received"),
        ("replay_mqtt", "broker (MQTT)", "link connected"),
    )
    for key, label, resumed in replays:
        row = document[key]
        if row is None:
            out(f"(b) replay to the {label}: skipped (mosquitto not installed)")
            continue
        out(
            f"(b) replay to the {label}: {row['records']} records in {row['replay_s']:.3f} s "
            f"= {row['records_per_s']:.0f} records/s "
            f"({resumed} {row['resume_delay_s']:.3f} s after it was started)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reports", type=int, default=2000, help="latency samples per path")
    parser.add_argument(
        "--outage-reports", type=int, default=720, help="reports appended during the outage"
    )
    parser.add_argument("--appends", type=int, default=5000, help="append-cost samples")
    parser.add_argument("--no-mqtt", action="store_true", help="skip the MQTT replay")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    # The outages are on purpose: their warnings go to stderr, the figures to stdout.
    configure_logging(level="error", stream=sys.stderr)
    document = asyncio.run(run(args))
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        render(document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
