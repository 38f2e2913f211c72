"""The fleet MQTT broker: availability and audit records out, power lease requests in.

Topics under the configured prefix:

- `<prefix>/status`: "online" (retained, QoS 1) once connected; "offline" (retained) as
  the last will, which the broker publishes when the link dies without a DISCONNECT, and
  published by `stop()` on a clean shutdown (a clean DISCONNECT sends no will).
- `<prefix>/availability`: reports, retained, QoS 1: a subscriber that arrives late gets
  the latest availability at once.
- `<prefix>/audit`: audit records, QoS 1, not retained: each is a record, not a state.
- `<prefix>/leases/request` is subscribed to (QoS 1); each message's payload is handed to
  the callback given at construction, and the daemon answers on `<prefix>/leases/response`
  with `publish_response`.

`send` returns once the broker acknowledged the record (PUBACK). While the link is down it
raises a retryable DeviceUnreachable at once, so the caller keeps the record; the link
reconnects on its own with capped exponential back-off. Sessions are clean: a record in
flight when the connection dropped is sent again by the caller, with its sequence number.
The only module that imports aiomqtt (and, through it, paho-mqtt).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import structlog

from edgectl.aio import STOP_TIMEOUT_S, cancel_and_wait
from edgectl.errors import DeviceTimeout, DeviceUnreachable, InputError, Problem
from edgectl.transport.certs import ca_context, read_secret
from edgectl.transport.uplink_http import Record, is_loopback

__all__ = ["DEFAULT_PORT", "LeaseHandler", "MqttLink"]

DEFAULT_PORT = 1883
DEFAULT_TIMEOUT_S = 10.0
# A lease request is answered by the daemon; one that arrives faster than it is handled
# waits in this many places, and beyond that the broker holds it (QoS 1 flow control).
_MAX_QUEUED_REQUESTS = 1000

LeaseHandler = Callable[[bytes], Awaitable[None] | None]

log = structlog.get_logger("edgectl.transport.mqtt")
# paho logs every packet at DEBUG: under edgectl's tree, its level follows the daemon's.
_paho_log = logging.getLogger("edgectl.transport.mqtt.paho")


@dataclass(eq=False)
class _Connection:
    client: aiomqtt.Client
    lost: asyncio.Event = field(default_factory=asyncio.Event)


class MqttLink:
    """One connection to the fleet broker, kept up by a task until stop()."""

    def __init__(
        self,
        host: str,
        port: int = DEFAULT_PORT,
        *,
        client_id: str,
        topic_prefix: str,
        on_lease_request: LeaseHandler | None = None,
        username: str | None = None,
        password_file: Path | None = None,
        ca_file: Path | None = None,
        tls: bool = False,
        keepalive_s: int = 30,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        self.name = f"mqtt://{host}:{port}"
        if not host:
            raise InputError([Problem(self.name, "", "the broker host is empty")])
        if not 0 < port < 65536:
            raise InputError([Problem(self.name, "", f"port {port} is not 1-65535")])
        if not client_id:
            raise InputError([Problem(self.name, "client_id", "must not be empty")])
        _check_prefix(self.name, topic_prefix)
        if password_file is not None and username is None:
            raise InputError([Problem(str(password_file), "", "a password file needs a username")])
        use_tls = tls or ca_file is not None
        if password_file is not None and not use_tls and not is_loopback(host):
            raise InputError(
                [
                    Problem(
                        self.name,
                        "",
                        "a password over plain MQTT to a host that is not loopback would "
                        "travel in clear: give ca_file (or tls) for TLS",
                    )
                ]
            )
        if timeout_s <= 0 or keepalive_s <= 0:
            raise ValueError("timeout_s and keepalive_s must be positive")
        if not 0 < backoff_min_s <= backoff_max_s:
            raise ValueError("need 0 < backoff_min_s <= backoff_max_s")
        self.host = host
        self.port = port
        self.client_id = client_id
        self.topic_prefix = topic_prefix
        self.status_topic = f"{topic_prefix}/status"
        self.availability_topic = f"{topic_prefix}/availability"
        self.audit_topic = f"{topic_prefix}/audit"
        self.lease_request_topic = f"{topic_prefix}/leases/request"
        self.lease_response_topic = f"{topic_prefix}/leases/response"
        self.username = username
        self.password_file = password_file
        self.timeout_s = timeout_s
        self.keepalive_s = keepalive_s
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self._on_lease_request = on_lease_request
        self._ssl = _ssl_context(ca_file) if use_tls else None
        if password_file is not None:
            _read_password(password_file)  # refuses an unreadable file now, not at connect
        self._conn: _Connection | None = None
        self._up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing_since: float | None = None
        self.connects = 0  # successful connections since construction

    @property
    def connected(self) -> bool:
        return self._conn is not None

    async def start(self) -> None:
        """Start the connection task; it connects, and reconnects, on its own."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"mqtt-{self.client_id}")

    async def wait_connected(self, timeout_s: float) -> None:
        """Wait until the link is connected; DeviceTimeout after `timeout_s`."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._up.wait()
        except TimeoutError:
            raise DeviceTimeout(self.name, f"not connected within {timeout_s:g} s") from None

    async def stop(self) -> None:
        """Say "offline" (retained), disconnect cleanly and end the connection task."""
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(aiomqtt.MqttError, DeviceUnreachable, DeviceTimeout):
                await self._publish(self.status_topic, b"offline", retain=True)
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait([task], STOP_TIMEOUT_S)

    async def send(self, record: Record) -> None:
        """Publish one record (QoS 1); returns once the broker acknowledged it."""
        if record.kind == "report":
            await self._publish(self.availability_topic, record.body, retain=True)
        else:
            await self._publish(self.audit_topic, record.body, retain=False)

    async def publish_response(self, payload: bytes | str) -> None:
        """Publish an answer to a lease request (QoS 1, not retained)."""
        data = payload.encode() if isinstance(payload, str) else payload
        await self._publish(self.lease_response_topic, data, retain=False)

    async def _publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        conn = self._conn
        if conn is None:
            raise DeviceUnreachable(self.name, "not connected to the broker")
        publish = asyncio.ensure_future(
            conn.client.publish(topic, payload, qos=1, retain=retain, timeout=self.timeout_s)
        )
        lost = asyncio.ensure_future(conn.lost.wait())
        try:
            await asyncio.wait({publish, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            publish.cancel()
        if publish.done() and not publish.cancelled():
            exc = publish.exception()
            if exc is None:
                return
            if "timed out" in str(exc):
                raise DeviceTimeout(
                    self.name, f"{topic}: no PUBACK within {self.timeout_s:g} s"
                ) from None
            raise DeviceUnreachable(self.name, f"{topic}: {exc}") from None
        raise DeviceUnreachable(self.name, f"{topic}: connection lost before the PUBACK")

    async def _run(self) -> None:
        attempt = 0
        while True:
            connects = self.connects
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                self._note_down(str(exc) or type(exc).__name__)
            except InputError as exc:
                self._note_down(str(exc))
            except OSError as exc:
                self._note_down(exc.strerror or str(exc))
            else:
                self._note_down("the broker closed the connection")
            # A link that was up starts its back-off afresh.
            attempt = 1 if self.connects != connects else attempt + 1
            await asyncio.sleep(self._backoff(attempt))

    async def _session(self) -> None:
        """One connection: announce, subscribe, then hand lease requests on until it drops."""
        password = _read_password(self.password_file) if self.password_file else None
        client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.client_id,
            username=self.username,
            password=password,
            will=aiomqtt.Will(self.status_topic, b"offline", qos=1, retain=True),
            clean_session=True,
            keepalive=self.keepalive_s,
            timeout=self.timeout_s,
            tls_context=self._ssl,
            logger=_paho_log,
            max_queued_incoming_messages=_MAX_QUEUED_REQUESTS,
        )
        async with client:
            await client.publish(self.status_topic, b"online", qos=1, retain=True)
            await client.subscribe(self.lease_request_topic, qos=1)
            conn = _Connection(client)
            self._conn = conn
            self._up.set()
            self.connects += 1
            self._note_up()
            try:
                async for message in client.messages:
                    await self._hand_on(message)
            finally:
                self._conn = None
                self._up.clear()
                conn.lost.set()

    async def _hand_on(self, message: aiomqtt.Message) -> None:
        if self._on_lease_request is None:
            return
        payload = message.payload
        data = payload if isinstance(payload, bytes) else str(payload or "").encode()
        try:
            result = self._on_lease_request(data)
            if inspect.isawaitable(result):
                await result
        except Exception:
            # A bad request or a failing handler must not take the link down.
            log.exception("lease request handler failed", broker=self.name)

    def _note_up(self) -> None:
        if self._failing_since is not None:
            log.info(
                "connected to the MQTT broker again",
                broker=self.name,
                outage_s=round(time.time() - self._failing_since, 1),
            )
        else:
            log.info("connected to the MQTT broker", broker=self.name, client_id=self.client_id)
        self._failing_since = None

    def _note_down(self, reason: str) -> None:
        if self._failing_since is None:
            self._failing_since = time.time()
            log.warning("MQTT broker unavailable; reconnecting", broker=self.name, error=reason)
        else:
            log.debug("MQTT broker still unavailable", broker=self.name, error=reason)

    def _backoff(self, attempt: int) -> float:
        capped = min(self.backoff_max_s, self.backoff_min_s * 2.0 ** min(attempt - 1, 30))
        return capped / 2 + random.uniform(0, capped / 2)


def _check_prefix(name: str, prefix: str) -> None:
    problem = None
    if not prefix:
        problem = "must not be empty"
    elif any(c in prefix for c in "+#\0"):
        problem = f"{prefix!r} holds a wildcard or NUL; a prefix is a plain topic"
    elif prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
        problem = f"{prefix!r}: no leading, trailing or doubled '/'"
    if problem is not None:
        raise InputError([Problem(name, "topic_prefix", problem)])


def _ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    return ca_context(ca_file)


def _read_password(path: Path) -> str:
    # Only the line ending is dropped: spaces may belong to a password.
    return read_secret(path, "password").rstrip("\r\n")
