"""MqttLink against a real mosquitto started by the test: retained availability, the last
will on an unclean death, online/offline, lease requests and responses, and a broker
restart in the middle of a stream of records."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiomqtt
import pytest
from uplink_peers import Broker, Watcher, child_env, free_port

from edgectl.errors import DeviceUnreachable, InputError
from edgectl.transport.mqtt import MqttLink
from edgectl.uplink.delivery import Deliverer
from edgectl.uplink.outbox import Outbox

PREFIX = "fleet/site-7"
FAST = {"backoff_min_s": 0.05, "backoff_max_s": 0.5}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    server = Broker(tmp_path / "broker")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def persistent_broker(tmp_path: Path) -> Iterator[Broker]:
    server = Broker(tmp_path / "persistent-broker", persistent=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.sqlite", sinks=("mqtt",))
    yield box
    box.close()


async def until(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@pytest.fixture
async def link(broker: Broker) -> AsyncIterator[MqttLink]:
    mqtt = MqttLink("127.0.0.1", broker.port, client_id="site-7", topic_prefix=PREFIX, **FAST)
    await mqtt.start()
    await mqtt.wait_connected(10)
    yield mqtt
    await mqtt.stop()


def report(outbox: Outbox, n: int) -> int:
    return outbox.append("report", {"site": "site-7", "n": n})


async def test_online_on_connect_and_offline_on_a_clean_stop(broker: Broker) -> None:
    async with Watcher(broker.port, [f"{PREFIX}/status"]) as watcher:
        link = MqttLink("127.0.0.1", broker.port, client_id="site-7", topic_prefix=PREFIX)
        await link.start()
        await link.wait_connected(10)
        await until(lambda: watcher.on(f"{PREFIX}/status") == [b"online"])
        await link.stop()
        await until(lambda: watcher.on(f"{PREFIX}/status") == [b"online", b"offline"])
    # Retained: whoever looks later sees the site is offline.
    async with Watcher(broker.port, [f"{PREFIX}/status"]) as late:
        await until(lambda: late.messages == [(f"{PREFIX}/status", b"offline", True)])


async def test_reports_are_retained_for_a_late_subscriber(
    broker: Broker, link: MqttLink, outbox: Outbox
) -> None:
    deliverer = Deliverer(outbox, "mqtt", link.send, **FAST)
    deliverer.start()
    try:
        for n in range(5):
            report(outbox, n)
        audit = outbox.append("audit", {"site": "site-7", "interval_start_s": 900})
        deliverer.wake()
        await until(lambda: outbox.backlog("mqtt") == 0)
    finally:
        await deliverer.stop()
    topics = [f"{PREFIX}/availability", f"{PREFIX}/audit"]
    async with Watcher(broker.port, topics) as late:
        await until(lambda: len(late.messages) >= 1)
        await asyncio.sleep(0.2)
    # Only the latest availability, retained; an audit record is not kept for newcomers.
    ((topic, payload, retained),) = late.messages
    assert topic == f"{PREFIX}/availability"
    assert retained
    assert json.loads(payload)["seq"] == 5
    assert audit == 6


async def test_audit_records_go_to_their_topic(
    broker: Broker, link: MqttLink, outbox: Outbox
) -> None:
    async with Watcher(broker.port, [f"{PREFIX}/audit"]) as watcher:
        deliverer = Deliverer(outbox, "mqtt", link.send, **FAST)
        deliverer.start()
        try:
            seqs = [outbox.append("audit", {"interval": i}) for i in range(3)]
            deliverer.wake()
            await until(lambda: len(watcher.on(f"{PREFIX}/audit")) == 3)
        finally:
            await deliverer.stop()
    assert [json.loads(p)["seq"] for p in watcher.on(f"{PREFIX}/audit")] == seqs
    assert not any(retained for _, _, retained in watcher.messages)


CHILD = """
import asyncio, sys
from edgectl.transport.mqtt import MqttLink

async def main():
    link = MqttLink("127.0.0.1", int(sys.argv[1]), client_id="site-7", topic_prefix=sys.argv[2])
    await link.start()
    await link.wait_connected(10)
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_the_last_will_says_offline_when_the_link_dies_uncleanly(broker: Broker) -> None:
    async with Watcher(broker.port, [f"{PREFIX}/status"]) as watcher:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(broker.port), PREFIX],
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        try:
            assert child.stdout is not None
            stdout = child.stdout
            # The child's log lines come first on its stdout.
            while (line := await asyncio.wait_for(asyncio.to_thread(stdout.readline), 20)) and (
                line.strip() != "ready"
            ):
                pass
            assert line.strip() == "ready"
            await until(lambda: watcher.on(f"{PREFIX}/status") == [b"online"])
            # No DISCONNECT: the process dies and the kernel closes its socket.
            child.send_signal(signal.SIGKILL)
            await until(lambda: watcher.on(f"{PREFIX}/status") == [b"online", b"offline"])
        finally:
            child.kill()
            child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL


async def test_lease_requests_reach_the_callback_and_responses_go_out(broker: Broker) -> None:
    requests: list[bytes] = []

    async def on_request(payload: bytes) -> None:
        requests.append(payload)
        await link.publish_response(b'{"lease": "granted", "for": ' + payload + b"}")

    link = MqttLink(
        "127.0.0.1",
        broker.port,
        client_id="site-7",
        topic_prefix=PREFIX,
        on_lease_request=on_request,
    )
    await link.start()
    await link.wait_connected(10)
    try:
        async with Watcher(broker.port, [f"{PREFIX}/leases/response"]) as watcher:
            async with aiomqtt.Client("127.0.0.1", broker.port) as scheduler:
                await scheduler.publish(f"{PREFIX}/leases/request", b'"r-1"', qos=1)
                await scheduler.publish(f"{PREFIX}/leases/request", b'"r-2"', qos=1)
            await until(lambda: len(watcher.on(f"{PREFIX}/leases/response")) == 2)
    finally:
        await link.stop()
    assert requests == [b'"r-1"', b'"r-2"']
    assert [json.loads(p)["for"] for p in watcher.on(f"{PREFIX}/leases/response")] == [
        "r-1",
        "r-2",
    ]


async def test_a_failing_lease_handler_does_not_take_the_link_down(broker: Broker) -> None:
    seen: list[bytes] = []

    def on_request(payload: bytes) -> None:
        seen.append(payload)
        raise ValueError("not a lease request")

    link = MqttLink(
        "127.0.0.1",
        broker.port,
        client_id="site-7",
        topic_prefix=PREFIX,
        on_lease_request=on_request,
    )
    await link.start()
    await link.wait_connected(10)
    try:
        async with aiomqtt.Client("127.0.0.1", broker.port) as scheduler:
            await scheduler.publish(f"{PREFIX}/leases/request", b"garbage", qos=1)
            await scheduler.publish(f"{PREFIX}/leases/request", b"more", qos=1)
        await until(lambda: len(seen) == 2)
        assert link.connected
        assert link.connects == 1
    finally:
        await link.stop()


async def test_a_broker_restart_mid_stream_loses_no_report(
    persistent_broker: Broker, outbox: Outbox
) -> None:
    topic = f"{PREFIX}/availability"
    watcher = Watcher(persistent_broker.port, [topic], client_id="scheduler", persistent=True)
    link = MqttLink(
        "127.0.0.1", persistent_broker.port, client_id="site-7", topic_prefix=PREFIX, **FAST
    )
    await link.start()
    await link.wait_connected(10)
    deliverer = Deliverer(outbox, "mqtt", link.send, **FAST)
    deliverer.start()
    seqs: list[int] = []
    try:
        async with watcher:
            for n in range(120):
                seqs.append(report(outbox, n))
                deliverer.wake()
                await asyncio.sleep(0.005)
                if n == 40:
                    persistent_broker.stop()
                if n == 80:
                    assert deliverer.stats().retries > 0
                    persistent_broker.start()  # the same port, the sessions restored
            await until(lambda: outbox.backlog("mqtt") == 0, timeout_s=30)
            last = seqs[-1]
            await until(lambda: any(json.loads(p)["seq"] == last for p in watcher.on(topic)))
    finally:
        await deliverer.stop()
        await link.stop()
    received = [json.loads(p) for p in watcher.on(topic)]
    first: dict[int, dict[str, object]] = {}
    for payload in received:
        seq = payload["seq"]
        assert isinstance(seq, int)
        # A duplicate is the very same record, sent again under its own number.
        assert first.setdefault(seq, payload) == payload
    assert list(first) == seqs
    assert link.connects >= 2


async def test_send_while_disconnected_raises_a_retryable_error() -> None:
    port = free_port()  # nobody listens there
    link = MqttLink("127.0.0.1", port, client_id="site-7", topic_prefix=PREFIX, **FAST)
    await link.start()
    try:
        with pytest.raises(DeviceUnreachable) as caught:
            await link.publish_response(b"{}")
        assert caught.value.retryable
        assert f"mqtt://127.0.0.1:{port}" in str(caught.value)
        assert not link.connected
    finally:
        await link.stop()


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [("", "must not be empty"), ("fleet/#", "wildcard"), ("/fleet", "leading")],
)
def test_bad_topic_prefixes_are_refused(prefix: str, expected: str) -> None:
    with pytest.raises(InputError, match=expected) as caught:
        MqttLink("127.0.0.1", 1883, client_id="c", topic_prefix=prefix)
    assert "topic_prefix" in str(caught.value)


def test_a_password_in_clear_to_a_remote_broker_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt.password"
    secret.write_text("hunter2\n", encoding="utf-8")
    with pytest.raises(InputError, match="clear"):
        MqttLink(
            "broker.example.net",
            1883,
            client_id="c",
            topic_prefix="p",
            username="site",
            password_file=secret,
        )
    with pytest.raises(InputError, match=r"no-such\.password"):
        MqttLink(
            "127.0.0.1",
            1883,
            client_id="c",
            topic_prefix="p",
            username="site",
            password_file=tmp_path / "no-such.password",
        )
