"""OPC UA client transport (asyncua): one secure session per device, values by subscription.

A device's variables are found by browse path below the server's Objects folder, every
element in the device map's namespace, whose index is looked up by URI on each (re)connect.
One subscription carries a monitored item per variable; notifications fill a cache that
`latest()` returns without I/O. The server only notifies changes, so a constant value keeps
its old SourceTimestamp while still current: what vouches for the cache is the
subscription's last publish response (data or keep-alive), reported by `age_s()`.

Reconnection is this module's own supervisor, not asyncua's `auto_reconnect`: after a loss
it builds a fresh client with exponential backoff, so each attempt repeats the secure
handshake, the namespace lookup and the browse-path resolution against the server as it is
now (a restarted server may have renumbered its namespaces and lost every subscription).
asyncua's client still does loss detection (its watchdog reads ServerState every
`keepalive_s`) and reports it through `connection_lost_callback`.

Errors leave as edgectl.errors: a bad StatusCode as ProtocolError naming the status,
no answer in time as DeviceTimeout, a refused or lost connection as DeviceUnreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from asyncua import Client, ua
from asyncua.common.subscription import DataChangeEvent, StatusChangeEvent, Subscription
from asyncua.crypto import security_policies

from edgectl.aio import STOP_TIMEOUT_S, bounded, cancel_and_wait
from edgectl.errors import DeviceError, DeviceTimeout, DeviceUnreachable, ProtocolError
from edgectl.transport.certs import application_uri

_log = logging.getLogger(__name__)

Scalar = bool | int | float | str

POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128Sha256RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256Sha256RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
MODES = {
    "Sign": ua.MessageSecurityMode.Sign,
    "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}
# Integer variants and their ranges; a value outside would not encode.
_INT_RANGES = {
    "Int16": (-(2**15), 2**15 - 1),
    "UInt16": (0, 2**16 - 1),
    "Int32": (-(2**31), 2**31 - 1),
    "UInt32": (0, 2**32 - 1),
    "Int64": (-(2**63), 2**63 - 1),
    "UInt64": (0, 2**64 - 1),
}
INTEGER_VARIANTS = frozenset(_INT_RANGES)
_FLOAT_MAX = 3.4028234663852886e38
_FIRST_RETRY_S = 0.5
_DEFAULT_APPLICATION_URI = "urn:edgectl:controller"


@dataclass(frozen=True)
class OpcUaSecurity:
    """How the channel to one server is secured: a policy, Sign or SignAndEncrypt, this
    client's certificate (DER or PEM) and private key (PEM), and the server's certificate,
    pinned (never fetched over an unsecured channel)."""

    policy: str
    mode: str
    certificate: Path
    private_key: Path
    server_certificate: Path

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"security policy {self.policy!r}: expected one of {list(POLICIES)}")
        if self.mode not in MODES:
            raise ValueError(f"security mode {self.mode!r}: expected one of {list(MODES)}")


# No security only when a configuration says so in as many words.
Security = OpcUaSecurity | Literal["none"]


@dataclass(frozen=True, slots=True)
class Sample:
    """A variable's value as the server last reported it."""

    value: Scalar | None
    good: bool
    status: str  # the StatusCode's name: "Good", "BadNotReadable", ...
    source_time: datetime | None


def _waiting() -> Sample:
    return Sample(None, False, "BadWaitingForInitialData", None)


def _sample(dv: ua.DataValue) -> Sample:
    status = dv.StatusCode if dv.StatusCode is not None else ua.StatusCode()
    good = status.is_good()
    value = dv.Value.Value if good and dv.Value is not None else None
    if not isinstance(value, bool | int | float | str):
        value = None
    return Sample(value, good, status.name, dv.SourceTimestamp)


def coerce(value: Scalar, variant: str) -> Scalar:
    """`value` as the Python type asyncua encodes as `variant`; ValueError if it cannot be."""
    if variant in ("Float", "Double"):
        if isinstance(value, bool | str):
            raise ValueError(f"{value!r} is not a number")
        number = float(value)
        if not math.isfinite(number) or (variant == "Float" and abs(number) > _FLOAT_MAX):
            raise ValueError(f"{value!r} does not fit a {variant}")
        return number
    if variant in _INT_RANGES:
        if isinstance(value, bool | str) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{value!r} is not an integer")
        integer = int(value)
        low, high = _INT_RANGES[variant]
        if not low <= integer <= high:
            raise ValueError(f"{value!r} is outside the {variant} range [{low}, {high}]")
        return integer
    if variant == "Boolean":
        if value not in (0, 1):
            raise ValueError(f"{value!r} is not a Boolean")
        return bool(value)
    if variant == "String":
        if not isinstance(value, str):
            raise ValueError(f"{value!r} is not a String")
        return value
    raise ValueError(f"unknown variant type {variant!r}")


class OpcUaClient:
    """The variables at `paths` (key -> browse names below Objects, in `namespace_uri`) of
    the server at `endpoint`, kept current by one subscription."""

    def __init__(
        self,
        device: str,
        endpoint: str,
        namespace_uri: str,
        paths: Mapping[str, Sequence[str]],
        security: Security,
        *,
        timeout_s: float = 2.0,
        publishing_interval_s: float = 0.25,
        keepalive_s: float = 1.0,
        reconnect_max_delay_s: float = 10.0,
    ) -> None:
        url = urlparse(endpoint)
        if url.scheme != "opc.tcp" or not url.hostname:
            raise ValueError(f"{device}: endpoint {endpoint!r}: expected opc.tcp://host:port/path")
        if not isinstance(security, OpcUaSecurity) and security != "none":
            raise ValueError(f"{device}: security {security!r}: expected OpcUaSecurity or 'none'")
        if not paths:
            raise ValueError(f"{device}: no variables to subscribe to")
        self.device = device
        self.endpoint = endpoint
        self.namespace_uri = namespace_uri
        self._paths = {key: tuple(path) for key, path in paths.items()}
        self._security = security
        self._timeout_s = timeout_s
        self._publishing_ms = publishing_interval_s * 1000.0
        self._keepalive_s = keepalive_s
        self._max_delay_s = reconnect_max_delay_s
        self._client: Client | None = None
        self._sub: Subscription | None = None
        self._node_ids: dict[str, ua.NodeId] = {}
        self._keys: dict[ua.NodeId, str] = {}
        self._samples: dict[str, Sample] = {key: _waiting() for key in self._paths}
        self._namespace_index: int | None = None
        self._confirmed_at: float | None = None  # time.monotonic() of the last publish
        self._lost = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._write_timestamps = True  # until a server answers BadWriteNotSupported
        self._last_error = ""

    @property
    def connected(self) -> bool:
        """A session and its subscription are up (as far as the client knows)."""
        return self._client is not None and not self._lost.is_set()

    @property
    def last_error(self) -> str:
        """Why the last connection attempt failed or the last connection was lost."""
        return self._last_error

    @property
    def namespace_index(self) -> int | None:
        return self._namespace_index

    def latest(self) -> dict[str, Sample]:
        """The cached sample of every key; no I/O."""
        return dict(self._samples)

    def age_s(self) -> float | None:
        """Seconds since the subscription last vouched for the cache; None before it ever did."""
        last = self._sub.last_publish_at if self._sub is not None else None
        last = last if last is not None else self._confirmed_at
        return None if last is None else time.monotonic() - last

    def node_ids(self) -> dict[str, str]:
        """The resolved node id of every key, as of the current session."""
        return {key: node_id.to_string() for key, node_id in self._node_ids.items()}

    async def connect(self) -> None:
        """Connect once (raising a DeviceError if that fails); stay connected from then on."""
        if self._supervisor is not None:
            return
        await self._open()
        self._supervisor = asyncio.create_task(self._supervise(), name=f"opcua-{self.device}")

    async def close(self) -> None:
        if self._supervisor is not None:
            await cancel_and_wait([self._supervisor], STOP_TIMEOUT_S)
            self._supervisor = None
        await self._drop()

    async def read(self, keys: Iterable[str] | None = None) -> dict[str, Sample]:
        """Read `keys` (default: all) now, in one request."""
        wanted = list(self._paths if keys is None else keys)
        client = self._session()
        try:
            nodes = [client.get_node(self._node_ids[key]) for key in wanted]
            values = await client.read_attributes(nodes)
        except Exception as exc:
            raise self._failure("read", exc) from exc
        return {key: _sample(dv) for key, dv in zip(wanted, values, strict=True)}

    async def write(self, key: str, value: Scalar, variant: str) -> None:
        """Write `value` as `variant` (which must be the variable's own type)."""
        wire = ua.Variant(coerce(value, variant), ua.VariantType[variant])
        client = self._session()
        node = client.get_node(self._node_ids[key])
        try:
            if self._write_timestamps:
                try:
                    stamped = ua.DataValue(wire, SourceTimestamp=datetime.now(UTC))
                    await node.write_attribute(ua.AttributeIds.Value, stamped)
                    return
                except ua.uaerrors.BadWriteNotSupported:
                    # Some PLC and SCADA servers refuse timestamps on writes; so be it.
                    _log.info("%s: server refuses timestamped writes; writing without", self.device)
                    self._write_timestamps = False
            await node.write_attribute(ua.AttributeIds.Value, ua.DataValue(wire))
        except Exception as exc:
            raise self._failure(f"write {key}", exc) from exc

    def _session(self) -> Client:
        if self._client is None or self._lost.is_set():
            reason = f": {self._last_error}" if self._last_error else ""
            raise DeviceUnreachable(self.device, f"{self.endpoint}: not connected{reason}")
        return self._client

    def _failure(self, what: str, exc: Exception) -> DeviceError:
        error = _device_error(self.device, self.endpoint, what, exc)
        if isinstance(error, DeviceUnreachable):
            self._lose(_detail(error))
        return error

    def _lose(self, reason: str) -> None:
        if not self._lost.is_set():
            _log.warning("%s: connection lost: %s", self.device, reason)
            self._last_error = reason
            self._lost.set()

    async def _on_connection_lost(self, exc: Exception) -> None:
        self._lose(f"{self.endpoint}: connection lost ({exc!r})")

    async def _open(self) -> None:
        client = Client(
            self.endpoint, timeout=self._timeout_s, watchdog_intervall=self._keepalive_s
        )
        client.name = client.description = "edgectl"
        client.session_timeout = 60_000  # ms; a vanished controller's session goes soon
        client.connection_lost_callback = self._on_connection_lost
        if isinstance(self._security, OpcUaSecurity):
            await self._secure(client, self._security)
        try:
            await client.connect()
            index = await self._namespace(client)
            node_ids = await self._resolve(client, index)
            sub = await client.create_subscription(self._subscription_parameters())
            results = await sub.subscribe_data_change(
                [client.get_node(node_id) for node_id in node_ids.values()],
                queuesize=1,
                sampling_interval=self._publishing_ms,
            )
        except Exception as exc:
            await _disconnect(client, self._timeout_s)
            error = _device_error(self.device, self.endpoint, "connect", exc)
            self._last_error = _detail(error)
            raise error from exc
        self._samples = {key: _waiting() for key in self._paths}
        for key, result in zip(node_ids, results, strict=True):
            if isinstance(result, ua.StatusCode):
                self._samples[key] = Sample(None, False, result.name, None)
        self._client, self._sub, self._namespace_index = client, sub, index
        self._node_ids = node_ids
        self._keys = {node_id: key for key, node_id in node_ids.items()}
        self._lost.clear()
        self._last_error = ""
        self._pump = asyncio.create_task(self._receive(sub), name=f"opcua-{self.device}-sub")

    async def _secure(self, client: Client, security: OpcUaSecurity) -> None:
        try:
            # The server checks that the certificate names this application.
            client.application_uri = (
                application_uri(security.certificate) or _DEFAULT_APPLICATION_URI
            )
            await client.set_security(
                POLICIES[security.policy],
                str(security.certificate),
                str(security.private_key),
                server_certificate=str(security.server_certificate),
                mode=MODES[security.mode],
            )
        except (OSError, ValueError) as exc:
            # A configuration problem, not a network one: not retryable.
            raise DeviceError(self.device, f"security: {exc}") from exc

    async def _namespace(self, client: Client) -> int:
        try:
            return int(await client.get_namespace_index(self.namespace_uri))
        except ValueError:
            raise ProtocolError(
                self.device, f"server does not serve namespace {self.namespace_uri!r}"
            ) from None

    async def _resolve(self, client: Client, index: int) -> dict[str, ua.NodeId]:
        """Every key's node id, from its browse path, in one request."""
        relative = []
        for path in self._paths.values():
            rpath = ua.RelativePath()
            for name in path:
                element = ua.RelativePathElement()
                element.ReferenceTypeId = ua.NodeId(ua.ObjectIds.HierarchicalReferences)
                element.IsInverse = False
                element.IncludeSubtypes = True
                element.TargetName = ua.QualifiedName(name, index)
                rpath.Elements.append(element)
            relative.append(rpath)
        objects = ua.NodeId(ua.ObjectIds.ObjectsFolder)
        results = await client.translate_browsepaths(objects, relative)
        node_ids: dict[str, ua.NodeId] = {}
        missing = []
        for (key, path), result in zip(self._paths.items(), results, strict=True):
            if not result.StatusCode.is_good() or not result.Targets:
                missing.append(f"{key} ({'/'.join(path)}: {result.StatusCode.name})")
                continue
            target = result.Targets[0].TargetId
            node_ids[key] = ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType)
        if missing:
            raise ProtocolError(self.device, f"no such variable: {', '.join(missing)}")
        return node_ids

    def _subscription_parameters(self) -> ua.CreateSubscriptionParameters:
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = self._publishing_ms
        keepalive = max(1, math.ceil(self._keepalive_s * 1000.0 / self._publishing_ms))
        params.RequestedMaxKeepAliveCount = keepalive
        params.RequestedLifetimeCount = keepalive * 10  # the spec asks for at least 3x
        params.MaxNotificationsPerPublish = 0  # no limit
        params.PublishingEnabled = True
        return params

    async def _receive(self, sub: Subscription) -> None:
        async for event in sub:
            if isinstance(event, DataChangeEvent):
                key = self._keys.get(event.node.nodeid)
                if key is not None:
                    self._samples[key] = _sample(event.data.monitored_item.Value)
            elif isinstance(event, StatusChangeEvent):
                status = event.notification.Status
                self._lose(f"subscription ended by the server ({status.name})")
                return
        self._lose("subscription closed")

    async def _supervise(self) -> None:
        delay = _FIRST_RETRY_S
        while True:
            await self._lost.wait()
            await self._drop()
            while True:
                await asyncio.sleep(delay)
                delay = min(delay * 2.0, self._max_delay_s)
                try:
                    await self._open()
                except DeviceError as exc:
                    _log.info("%s: reconnect failed: %s", self.device, exc)
                    continue
                _log.info("%s: reconnected to %s", self.device, self.endpoint)
                delay = _FIRST_RETRY_S
                break

    async def _drop(self) -> None:
        """Forget the session (keeping the cache and when it was last confirmed)."""
        client, sub, pump = self._client, self._sub, self._pump
        self._client = self._sub = self._pump = None
        self._lost.set()
        if sub is not None and sub.last_publish_at is not None:
            self._confirmed_at = sub.last_publish_at
        if pump is not None:
            await cancel_and_wait([pump], STOP_TIMEOUT_S)
        if client is not None:
            await _disconnect(client, self._timeout_s)


async def _disconnect(client: Client, timeout_s: float) -> None:
    # Best effort: on a lost connection the CloseSession request cannot succeed.
    with contextlib.suppress(Exception):
        await bounded(client.disconnect(), timeout_s)


def _detail(error: DeviceError) -> str:
    """The message of a DeviceError without the device's name in front."""
    return str(error).removeprefix(f"{error.device}: ")


def _device_error(device: str, endpoint: str, what: str, exc: Exception) -> DeviceError:
    """asyncua's and the socket layer's exceptions as edgectl's."""
    if isinstance(exc, DeviceError):
        return exc
    if isinstance(exc, ua.UaStatusCodeError):
        return ProtocolError(device, f"{what}: {ua.StatusCode(exc.code).name}")
    if isinstance(exc, TimeoutError):
        return DeviceTimeout(device, f"{what}: no answer from {endpoint}")
    if isinstance(exc, OSError):  # ConnectionError included
        detail = exc.strerror or str(exc) or type(exc).__name__
        return DeviceUnreachable(device, f"{what}: {endpoint}: {detail}")
    return ProtocolError(device, f"{what}: {type(exc).__name__}: {exc}")
