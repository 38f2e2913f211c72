"""OPC UA server of the simulator: DeviceStates served as objects of an asyncua server.

Each device is an object named by its id under Objects, in its map's namespace, with one
variable per point at the point's `node` path ("WTUR.W" -> <id>/WTUR/W; node ids are the
dotted strings "<id>.WTUR.W"). Every `update_interval_s` the server copies what each
DeviceState reads into its variables (only what changed, so subscriptions see changes);
`push()` does the same at once. A client's write to an rw variable goes to
DeviceState.write(), in engineering units.

Security: by default only Basic256Sha256 SignAndEncrypt, with the server's certificate and
a list of trusted client certificates (files, or directories of *.der/*.pem), compared
exactly. asyncua's server alone would open a session on an unsecured channel even with no
NoSecurity endpoint, so sessions are also refused here unless the channel is secured by a
trusted certificate. `allow_insecure=True` adds a NoSecurity endpoint, for benches only.

Faults (DeviceFaults, per device and point):
  offline          the variables turn BadNoCommunication and writes are refused with it, as a
                   park server reports a turbine it lost; the server stays up (stop() and
                   start() on the same port are the whole server going away and coming back)
  not_implemented  the variables turn BadNotReadable
  stuck            DeviceState serves frozen values
  garbage          floats serve NaN, integers the top of their type's range
  latency_s        writes are answered that much later
  timeout          values stop updating and writes are held unanswered until it clears
A point DeviceState has no value for yet serves BadWaitingForInitialData.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.common.callback import CallbackType, ServerItemCallback
from asyncua.common.node import Node
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.server.internal_server import InternalServer
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from edgectl.devicemaps.readings import Value
from edgectl.devicemaps.schema import Point
from edgectl.sim.state import DeviceState

_log = logging.getLogger(__name__)

_INT_RANGES = {
    "Int16": (-(2**15), 2**15 - 1),
    "UInt16": (0, 2**16 - 1),
    "Int32": (-(2**31), 2**31 - 1),
    "UInt32": (0, 2**32 - 1),
    "Int64": (-(2**63), 2**63 - 1),
    "UInt64": (0, 2**64 - 1),
}
_ZERO: dict[str, Value] = {"Float": 0.0, "Double": 0.0, "Boolean": False, "String": ""}
_TRUSTED_SUFFIXES = (".der", ".pem", ".crt", ".cer")


@dataclass
class _Variable:
    state: DeviceState
    point: str
    spec: Point
    variant: str
    node_id: ua.NodeId
    served: tuple[int, str] | None = None  # (status, repr of value) last written


class OpcUaSimServer:
    """An asyncua server on loopback serving `devices` (maps of protocol "opcua")."""

    def __init__(
        self,
        devices: Iterable[DeviceState],
        *,
        certificate: Path | None = None,
        private_key: Path | None = None,
        trusted: Sequence[Path] = (),
        allow_insecure: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/edgectl",
        application_uri: str = "urn:edgectl:sim",
        update_interval_s: float = 0.1,
        reject_write_timestamps: bool = False,
    ) -> None:
        self.devices = list(devices)
        ids = [state.device_id for state in self.devices]
        if len(set(ids)) != len(ids):
            raise ValueError(f"device ids must be unique: {ids}")
        for state in self.devices:
            if state.device_map.opcua is None:
                raise ValueError(
                    f"{state.device_id}: map {state.device_map.map.profile!r} is "
                    f"protocol {state.device_map.map.protocol!r}, not 'opcua'"
                )
        if (certificate is None) != (private_key is None):
            raise ValueError("certificate and private_key go together")
        if certificate is None and not allow_insecure:
            raise ValueError(
                "a secure server needs a certificate and a private key (or allow_insecure=True)"
            )
        self.certificate = certificate
        self.private_key = private_key
        self.trusted = list(trusted)
        self.allow_insecure = allow_insecure
        self.host = host
        self.port = port  # the bound port once started; a restart binds it again
        self.path = path
        self.application_uri = application_uri
        self.update_interval_s = update_interval_s
        # Like some PLC and SCADA servers: a write carrying a timestamp is refused.
        self.reject_write_timestamps = reject_write_timestamps
        # Registered ahead of the devices' namespaces, shifting their indices (clients must
        # look them up by URI).
        self.leading_namespaces: list[str] = []
        self._server: Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._variables: list[_Variable] = []
        self._by_node: dict[ua.NodeId, _Variable] = {}
        self._trusted_der: set[bytes] = set()
        self._checks = CertificateValidator(
            CertificateValidatorOptions.BASIC_VALIDATION | CertificateValidatorOptions.PEER_CLIENT
        )

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}{self.path}"

    @property
    def running(self) -> bool:
        return self._server is not None

    async def __aenter__(self) -> OpcUaSimServer:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Build the address space and listen (on `port`; 0 picks a free one, kept after)."""
        if self._server is not None:
            return
        self._trusted_der = _load_trusted(self.trusted)
        server = Server(user_manager=_ChannelGate(self._session_allowed))
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("edgectl simulator")
        await server.set_application_uri(self.application_uri)
        policies = []
        if self.certificate is not None and self.private_key is not None:
            await server.load_certificate(str(self.certificate))
            await server.load_private_key(str(self.private_key))
            policies.append(ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt)
        if self.allow_insecure:
            policies.append(ua.SecurityPolicyType.NoSecurity)
        server.set_security_policy(policies)
        server.set_identity_tokens([ua.AnonymousIdentityToken])
        server.set_certificate_validator(self._validate)
        for uri in self.leading_namespaces:
            await server.register_namespace(uri)
        await self._build(server)
        server.subscribe_server_callback(CallbackType.PreWrite, self._before_write)
        server.subscribe_server_callback(CallbackType.PostWrite, self._after_write)
        self._server = server
        try:
            await self.push()
            await server.start()
        except BaseException:
            self._server = None
            raise
        if server.bserver is not None:
            self.port = server.bserver.port
        self._task = asyncio.create_task(self._update(), name="opcua-sim")
        _log.info(
            "OPC UA simulator on %s serving %s",
            self.endpoint,
            [state.device_id for state in self.devices],
        )

    async def stop(self) -> None:
        """Stop listening and drop every session (the whole server going away)."""
        server, task = self._server, self._task
        self._server = self._task = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if server is not None:
            await server.stop()

    async def push(self) -> None:
        """Serve what every DeviceState reads now."""
        for variable in self._variables:
            await self._serve(variable)

    async def _update(self) -> None:
        while True:
            await asyncio.sleep(self.update_interval_s)
            try:
                await self.push()
            except Exception:  # the simulator must outlive a bad value
                _log.exception("OPC UA simulator: update failed")

    async def _build(self, server: Server) -> None:
        self._variables, self._by_node = [], {}
        indices: dict[str, int] = {}
        for state in self.devices:
            assert state.device_map.opcua is not None  # checked in __init__
            uri = state.device_map.opcua.namespace_uri
            if uri not in indices:
                indices[uri] = await server.register_namespace(uri)
            index = indices[uri]
            objects: dict[str, Node] = {}
            device = await server.nodes.objects.add_object(
                ua.NodeId(state.device_id, index), ua.QualifiedName(state.device_id, index)
            )
            for point_name, spec in state.device_map.points.items():
                assert spec.node is not None and spec.variant is not None  # schema: required
                *folders, leaf = spec.node.split(".")
                parent, prefix = device, state.device_id
                for name in folders:
                    prefix = f"{prefix}.{name}"
                    if prefix not in objects:
                        objects[prefix] = await parent.add_object(
                            ua.NodeId(prefix, index), ua.QualifiedName(name, index)
                        )
                    parent = objects[prefix]
                node_id = ua.NodeId(f"{prefix}.{leaf}", index)
                vtype = ua.VariantType[spec.variant]
                node = await parent.add_variable(
                    node_id,
                    ua.QualifiedName(leaf, index),
                    ua.Variant(_ZERO.get(spec.variant, 0), vtype),
                    varianttype=vtype,
                )
                if spec.access == "rw":
                    await node.set_writable()
                variable = _Variable(state, point_name, spec, spec.variant, node_id)
                self._variables.append(variable)
                self._by_node[node_id] = variable

    async def _serve(self, variable: _Variable) -> None:
        server = self._server
        faults = variable.state.faults
        if server is None or (faults.timeout and faults.applies_to(variable.point)):
            return
        status, value = self._wire(variable)
        served = (status, repr(value))
        if served == variable.served:
            return
        now = datetime.now(UTC)
        vtype = ua.VariantType[variable.variant]
        variant = ua.Variant(value, vtype) if value is not None else ua.Variant()
        await server.write_attribute_value(
            variable.node_id,
            ua.DataValue(
                variant, StatusCode=ua.StatusCode(status), SourceTimestamp=now, ServerTimestamp=now
            ),
        )
        variable.served = served

    def _wire(self, variable: _Variable) -> tuple[int, Value | None]:
        """The status and the raw value a variable serves now."""
        state, point, spec = variable.state, variable.point, variable.spec
        faults = state.faults
        if faults.offline and faults.applies_to(point):
            return ua.StatusCodes.BadNoCommunication, None
        value = state.read(point)
        if value is None:
            if faults.not_implemented and faults.applies_to(point):
                return ua.StatusCodes.BadNotReadable, None
            return ua.StatusCodes.BadWaitingForInitialData, None
        if faults.garbage and faults.applies_to(point):
            return ua.StatusCodes.Good, _garbage(variable.variant)
        if variable.variant == "String":
            return ua.StatusCodes.Good, str(value)
        if isinstance(value, str):
            return ua.StatusCodes.BadTypeMismatch, None
        raw = value
        if (spec.scale, spec.offset) != (1.0, 0.0):
            raw = (value - spec.offset) / spec.scale
        if variable.variant in ("Float", "Double"):
            return ua.StatusCodes.Good, float(raw)
        if variable.variant == "Boolean":
            return ua.StatusCodes.Good, bool(raw)
        low, high = _INT_RANGES[variable.variant]
        integer = round(raw)
        if not low <= integer <= high:
            return ua.StatusCodes.BadOutOfRange, None
        return ua.StatusCodes.Good, integer

    def _writes_to_us(self, event: ServerItemCallback) -> list[tuple[int, _Variable, Any]]:
        """A client's writes of our variables' values: (index in the request, variable, write)."""
        if not event.is_external:
            return []
        found = []
        for i, write in enumerate(event.request_params.NodesToWrite):
            variable = self._by_node.get(write.NodeId)
            if variable is not None and write.AttributeId == ua.AttributeIds.Value:
                found.append((i, variable, write))
        return found

    async def _before_write(self, event: ServerItemCallback, _: object) -> None:
        writes = self._writes_to_us(event)
        if not writes:
            return
        if self.reject_write_timestamps and any(
            w.Value.SourceTimestamp is not None or w.Value.ServerTimestamp is not None
            for _, _, w in writes
        ):
            raise ua.uaerrors.BadWriteNotSupported()
        faults = [v.state.faults for _, v, _ in writes if v.state.faults.applies_to(v.point)]
        if any(f.offline for f in faults):
            raise ua.uaerrors.BadNoCommunication()
        delay = max((f.latency_s for f in faults), default=0.0)
        if delay > 0:
            await asyncio.sleep(delay)
        while self._server is not None and any(f.timeout for f in faults):
            await asyncio.sleep(0.05)

    async def _after_write(self, event: ServerItemCallback, _: object) -> None:
        results = event.response_params or []
        for i, variable, write in self._writes_to_us(event):
            if i >= len(results) or not results[i].is_good() or write.Value.Value is None:
                continue
            raw = write.Value.Value.Value
            spec = variable.spec
            value = raw
            if not isinstance(raw, str) and (spec.scale, spec.offset) != (1.0, 0.0):
                value = raw * spec.scale + spec.offset
            variable.state.write(variable.point, value)
            # Serve at once what the device now says (a stuck device keeps its old value),
            # before the write is answered, so a read-back sees it.
            variable.served = None
            await self._serve(variable)

    async def _validate(self, cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        """CreateSession: the client's certificate must be valid, name it, and be trusted."""
        await self._checks.validate(cert, app)
        if cert.public_bytes(Encoding.DER) not in self._trusted_der:
            raise ua.uaerrors.BadCertificateUntrusted()

    def _session_allowed(self, certificate: object) -> bool:
        # An unsecured channel carries no certificate: None, or b"" in asyncua 2.1.
        if certificate is None or certificate == b"":
            return self.allow_insecure
        if isinstance(certificate, x509.Certificate):
            certificate = certificate.public_bytes(Encoding.DER)
        return certificate in self._trusted_der


class _ChannelGate:
    """asyncua's user manager, consulted at ActivateSession with the certificate that secures
    the channel (None or b"" on an unsecured channel): the one place a session can be refused
    whatever the client claimed before."""

    def __init__(self, allowed: Callable[[object], bool]) -> None:
        self._allowed = allowed

    def get_user(
        self,
        iserver: InternalServer,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if not self._allowed(certificate):
            _log.warning(
                "OPC UA simulator: session refused (channel not secured by a trusted certificate)"
            )
            return None
        return User(role=UserRole.User)


def _garbage(variant: str) -> Value:
    if variant in ("Float", "Double"):
        return math.nan
    if variant in _INT_RANGES:
        return _INT_RANGES[variant][1]
    if variant == "Boolean":
        return True
    return "\ufffd" * 8


def _load_trusted(locations: Sequence[Path]) -> set[bytes]:
    """The DER encoding of every certificate in `locations` (files or directories)."""
    found: set[bytes] = set()
    for location in locations:
        files = sorted(location.iterdir()) if location.is_dir() else [location]
        for file in files:
            if file.suffix.lower() not in _TRUSTED_SUFFIXES and location.is_dir():
                continue
            data = file.read_bytes()
            cert = (
                x509.load_pem_x509_certificate(data)
                if data.lstrip().startswith(b"-----")
                else x509.load_der_x509_certificate(data)
            )
            found.add(cert.public_bytes(Encoding.DER))
    return found
