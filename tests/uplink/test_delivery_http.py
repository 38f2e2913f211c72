"""Outbox -> Deliverer -> HttpSink against a real aiohttp.web scheduler on 127.0.0.1: order,
sequence numbers and the bearer token, outages, retried statuses, token rotation, TLS."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs
from uplink_peers import Pki, make_pki

from edgectl.errors import DeviceUnreachable, InputError
from edgectl.transport.uplink_http import HttpSink, UplinkStatusError
from edgectl.uplink.delivery import Deliverer
from edgectl.uplink.outbox import Entry, Outbox

TOKEN = "tok-0123456789abcdef"
FAST = {"backoff_min_s": 0.02, "backoff_max_s": 0.2}


@dataclass
class Arrival:
    seq: int
    kind: str
    auth: str | None
    payload: dict[str, Any]


@dataclass
class Scheduler:
    """The compute scheduler's intake: records what arrives, answers what it is told."""

    token: str = TOKEN
    arrivals: list[Arrival] = field(default_factory=list)
    refused: list[tuple[int, int]] = field(default_factory=list)  # (seq, status)
    script: deque[int] = field(default_factory=deque)  # statuses to answer next
    port: int = 0
    ssl_context: ssl.SSLContext | None = None
    _runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        seq = int(request.headers["X-Edgectl-Seq"])
        auth = request.headers.get("Authorization")
        if auth != f"Bearer {self.token}":
            self.refused.append((seq, 401))
            return web.json_response({"error": "unauthorized"}, status=401)
        status = self.script.popleft() if self.script else 200
        if status != 200:
            self.refused.append((seq, status))
            headers = {"Retry-After": "0"} if status == 429 else {}
            return web.json_response(
                {"error": f"status {status} for seq {seq}"}, status=status, headers=headers
            )
        self.arrivals.append(
            Arrival(seq, request.headers["X-Edgectl-Kind"], auth, await request.json())
        )
        return web.json_response({"ok": True})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/site-records", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.ssl_context)
        await site.start()
        if self.port == 0:
            server = site._server
            assert isinstance(server, asyncio.Server)
            self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/v1/site-records"

    def seqs(self) -> list[int]:
        return [a.seq for a in self.arrivals]


@pytest.fixture
async def scheduler() -> AsyncIterator[Scheduler]:
    server = Scheduler()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "scheduler.token"
    path.write_text(TOKEN + "\n", encoding="utf-8")
    return path


@pytest.fixture
def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    box = Outbox(tmp_path / "outbox.sqlite", sinks=("http",))
    yield box
    box.close()


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def append_reports(outbox: Outbox, count: int, deliverer: Deliverer | None = None) -> list[int]:
    seqs = []
    for i in range(count):
        seqs.append(outbox.append("report", {"site": "s1", "n": i}))
        if deliverer is not None:
            deliverer.wake()
    return seqs


def assert_once_in_order(arrivals: list[Arrival], expected: list[int]) -> None:
    """Every expected record arrived, in order; a duplicate is the very same record."""
    first: dict[int, Arrival] = {}
    for a in arrivals:
        if a.seq in first:
            assert a.payload == first[a.seq].payload
        else:
            first[a.seq] = a
    assert list(first) == expected
    assert all(a.payload["seq"] == a.seq for a in arrivals)


async def test_records_arrive_in_order_with_seq_and_token(
    scheduler: Scheduler, outbox: Outbox, token_file: Path
) -> None:
    sink = HttpSink(scheduler.url(), token_file=token_file)
    deliverer = Deliverer(outbox, "http", sink.send, **FAST)
    deliverer.start()
    try:
        seqs = append_reports(outbox, 15, deliverer)
        seqs.append(outbox.append("audit", {"site": "s1", "interval_start_s": 0}))
        deliverer.wake()
        await until(lambda: outbox.backlog("http") == 0)
    finally:
        await deliverer.stop()
        await sink.close()
    assert scheduler.seqs() == seqs
    assert {a.auth for a in scheduler.arrivals} == {f"Bearer {TOKEN}"}
    assert [a.kind for a in scheduler.arrivals] == ["report"] * 15 + ["audit"]
    stats = deliverer.stats()
    assert stats.delivered == 16
    assert stats.retries == 0
    assert stats.backlog == 0
    assert stats.last_seq == seqs[-1]
    assert stats.last_latency_s is not None and 0 <= stats.last_latency_s < 10


async def test_a_scheduler_outage_delivers_everything_once_in_order(
    scheduler: Scheduler, outbox: Outbox, token_file: Path
) -> None:
    sink = HttpSink(scheduler.url(), token_file=token_file)
    deliverer = Deliverer(outbox, "http", sink.send, **FAST)
    deliverer.start()
    try:
        seqs = append_reports(outbox, 5, deliverer)
        await until(lambda: outbox.backlog("http") == 0)
        await scheduler.stop()
        with capture_logs() as logs:
            seqs += append_reports(outbox, 50, deliverer)
            await until(lambda: deliverer.stats().retries >= 3)
            assert deliverer.stats().last_error is not None
            assert deliverer.stats().backlog == 50
            await scheduler.start()  # the same port
            await until(lambda: outbox.backlog("http") == 0)
    finally:
        await deliverer.stop()
        await sink.close()
    assert_once_in_order(scheduler.arrivals, seqs)
    events = [x["event"] for x in logs]
    # The outage is two lines, however many retries it took.
    assert events.count("uplink unavailable; records wait in the outbox") == 1
    assert events.count("uplink delivering again") == 1
    assert deliverer.stats().last_error is None


async def test_500_and_429_are_retried(
    scheduler: Scheduler, outbox: Outbox, token_file: Path
) -> None:
    scheduler.script.extend([500, 503, 429, 408])
    sink = HttpSink(scheduler.url(), token_file=token_file)
    deliverer = Deliverer(outbox, "http", sink.send, **FAST)
    deliverer.start()
    try:
        seqs = append_reports(outbox, 3, deliverer)
        await until(lambda: outbox.backlog("http") == 0)
    finally:
        await deliverer.stop()
        await sink.close()
    # The first record took every refusal; the next one waited for it.
    assert scheduler.refused == [(1, 500), (1, 503), (1, 429), (1, 408)]
    assert scheduler.seqs() == seqs
    assert deliverer.stats().retries == 4


async def test_409_already_have_it_counts_as_delivered(
    scheduler: Scheduler, outbox: Outbox, token_file: Path
) -> None:
    scheduler.script.append(409)
    sink = HttpSink(scheduler.url(), token_file=token_file)
    deliverer = Deliverer(outbox, "http", sink.send, **FAST)
    deliverer.start()
    try:
        append_reports(outbox, 2, deliverer)
        await until(lambda: outbox.backlog("http") == 0)
    finally:
        await deliverer.stop()
        await sink.close()
    assert scheduler.refused == [(1, 409)]
    assert scheduler.seqs() == [2]
    assert deliverer.stats().retries == 0


async def test_a_refused_record_is_retried_loudly_never_skipped(
    scheduler: Scheduler, outbox: Outbox, token_file: Path
) -> None:
    scheduler.script.extend([400, 400, 400])
    sink = HttpSink(scheduler.url(), token_file=token_file)
    deliverer = Deliverer(outbox, "http", sink.send, **FAST)
    deliverer.start()
    with capture_logs() as logs:
        try:
            seqs = append_reports(outbox, 2, deliverer)
            await until(lambda: outbox.backlog("http") == 0)
        finally:
            await deliverer.stop()
            await sink.close()
    assert scheduler.refused == [(1, 400)] * 3
    assert scheduler.seqs() == seqs
    refused = [x for x in logs if x["event"].startswith("uplink refused a record")]
    assert len(refused) == 1  # once for the record, not once per retry
    assert refused[0]["log_level"] == "error"
    assert refused[0]["seq"] == 1
    assert "HTTP 400" in refused[0]["error"]
    assert "status 400 for seq 1" in refused[0]["error"]  # the body excerpt


async def test_401_reads_the_token_file_again(
    scheduler: Scheduler, outbox: Outbox, token_file: Path
) -> None:
    sink = HttpSink(scheduler.url(), token_file=token_file)
    deliverer = Deliverer(outbox, "http", sink.send, **FAST)
    deliverer.start()
    try:
        append_reports(outbox, 1, deliverer)
        await until(lambda: outbox.backlog("http") == 0)
        # The scheduler rotates the token; the file is updated a little later.
        scheduler.token = "tok-rotated-fedcba9876543210"
        with capture_logs() as logs:
            append_reports(outbox, 1, deliverer)
            await until(lambda: deliverer.stats().retries >= 2)
            token_file.write_text("tok-rotated-fedcba9876543210\n", encoding="utf-8")
            await until(lambda: outbox.backlog("http") == 0)
    finally:
        await deliverer.stop()
        await sink.close()
    assert [a.auth for a in scheduler.arrivals] == [
        f"Bearer {TOKEN}",
        "Bearer tok-rotated-fedcba9876543210",
    ]
    # Neither token ever shows in a log line or an error.
    text = json.dumps(logs, default=str)
    assert TOKEN not in text
    assert "tok-rotated" not in text
    assert str(token_file) in text


async def test_a_rotated_token_is_used_at_once(scheduler: Scheduler, token_file: Path) -> None:
    sink = HttpSink(scheduler.url(), token_file=token_file)
    scheduler.token = "tok-new"
    token_file.write_text("tok-new\n", encoding="utf-8")
    try:
        await sink.send(Entry(7, "report", time.time(), b'{"seq": 7}'))
    finally:
        await sink.close()
    assert scheduler.refused == [(7, 401)]
    assert scheduler.seqs() == [7]


async def test_https_with_the_scheduler_ca(
    outbox: Outbox, tmp_path: Path, token_file: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    server = Scheduler(ssl_context=server_context(pki))
    await server.start()
    sink = HttpSink(server.url("https"), token_file=token_file, ca_file=pki.ca_file)
    deliverer = Deliverer(outbox, "http", sink.send, **FAST)
    deliverer.start()
    try:
        seqs = append_reports(outbox, 5, deliverer)
        await until(lambda: outbox.backlog("http") == 0)
    finally:
        await deliverer.stop()
        await sink.close()
        await server.stop()
    assert server.seqs() == seqs


async def test_an_untrusted_certificate_gets_nothing_and_says_why(
    outbox: Outbox, tmp_path: Path, token_file: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other", label="other-ca")
    server = Scheduler(ssl_context=server_context(pki))
    await server.start()
    sink = HttpSink(server.url("https"), token_file=token_file, ca_file=other.ca_file)
    deliverer = Deliverer(outbox, "http", sink.send, **FAST)
    try:
        with pytest.raises(DeviceUnreachable) as caught:
            await sink.send(Entry(1, "report", time.time(), b"{}"))
        message = str(caught.value)
        assert "not trusted" in message
        assert str(other.ca_file) in message
        assert "certificate" in message
        assert not caught.value.retryable
        deliverer.start()
        append_reports(outbox, 3, deliverer)
        await until(lambda: deliverer.stats().retries >= 2)
    finally:
        await deliverer.stop()
        await sink.close()
        await server.stop()
    assert server.arrivals == [] and server.refused == []
    assert outbox.backlog("http") == 3
    assert "not trusted" in (deliverer.stats().last_error or "")


def server_context(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert_file, pki.key_file)
    return context


def test_plain_http_to_a_non_loopback_host_is_refused(token_file: Path) -> None:
    with pytest.raises(InputError) as caught:
        HttpSink("http://scheduler.example.net/v1/records", token_file=token_file)
    message = str(caught.value)
    assert "http://scheduler.example.net/v1/records" in message
    assert "clear" in message
    assert "\n" not in message
    # Loopback is fine, by name and by address.
    HttpSink("http://localhost:8080/x", token_file=token_file)
    HttpSink("http://[::1]:8080/x", token_file=token_file)
    HttpSink("https://scheduler.example.net/v1/records", token_file=token_file)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ftp://127.0.0.1/x", "http:// or https://"),
        ("https://", "http:// or https://"),
        ("https://127.0.0.1:99999/x", "invalid port"),
    ],
)
def test_bad_urls_are_refused_naming_them(url: str, expected: str) -> None:
    with pytest.raises(InputError, match=expected) as caught:
        HttpSink(url)
    assert url in str(caught.value)


def test_credentials_in_the_url_are_refused_without_echoing_them() -> None:
    with pytest.raises(InputError, match="credentials") as caught:
        HttpSink("https://site:hunter2@scheduler.example.net/x")
    assert "hunter2" not in str(caught.value)


def test_files_are_checked_at_construction(tmp_path: Path) -> None:
    missing = tmp_path / "no-such.token"
    with pytest.raises(InputError, match=r"no-such\.token"):
        HttpSink("https://scheduler.example.net/x", token_file=missing)
    empty = tmp_path / "empty.token"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"empty\.token: the token file is empty"):
        HttpSink("https://scheduler.example.net/x", token_file=empty)
    bad_ca = tmp_path / "bad-ca.pem"
    bad_ca.write_text("not a certificate", encoding="utf-8")
    with pytest.raises(InputError, match=r"bad-ca\.pem: cannot use as a CA file"):
        HttpSink("https://scheduler.example.net/x", ca_file=bad_ca)
    with pytest.raises(InputError, match="only for https"):
        HttpSink("http://127.0.0.1:1/x", ca_file=bad_ca)


async def test_connection_refused_is_retryable(outbox: Outbox) -> None:
    server = Scheduler()
    await server.start()
    url = server.url()
    await server.stop()
    sink = HttpSink(url)
    try:
        with pytest.raises(DeviceUnreachable) as caught:
            await sink.send(Entry(1, "report", time.time(), b"{}"))
    finally:
        await sink.close()
    assert caught.value.retryable
    assert url in str(caught.value)


def test_status_errors_say_which_are_retryable() -> None:
    assert UplinkStatusError("u", 503, "x").retryable
    assert UplinkStatusError("u", 429, "x").retryable
    assert not UplinkStatusError("u", 400, "x").retryable
    assert not UplinkStatusError("u", 403, "x").retryable
