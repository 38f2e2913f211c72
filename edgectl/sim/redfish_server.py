"""A Redfish BMC on loopback: DeviceStates served as Chassis, in the DMTF mockup shapes.

Each chassis serves the resources its device map names (`path` below
/redfish/v1/Chassis/{id}/), shaped after the DMTF `public-rackmount1` mockup: a Control
(`Controls/PowerLimit`: ControlType "Power", SetPoint in W, AllowableMin/AllowableMax), a
Sensor (`Sensors/TotalPower`: Reading), the legacy `Power` resource
(PowerControl[0].PowerLimit.LimitInWatts) and EnvironmentMetrics; collections above them,
the Chassis collection and the service root. Every mapped field is filled from
DeviceState.read() when the request is answered, converted to the wire by the point's
scale and offset.

ETags are strong and computed from the resource body (as OpenBMC's bmcweb does), so any
change to a served value changes the ETag. PATCH honours If-Match (412 on a mismatch),
accepts only the map's rw fields, keeps a SetPoint within its AllowableMin..AllowableMax,
answers refusals with a Redfish error body (Base message registry) and hands accepted
values, in engineering units, to DeviceState.write().

Faults (DeviceFaults) per chassis: `offline` resets the connection, `timeout` never
answers, `latency_s` delays the answer, `not_implemented` serves null, `garbage` serves
non-numeric values, `stuck` is DeviceState's. A stopped server refuses connections.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import math
import re
import ssl
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NoReturn

from aiohttp import web
from aiohttp.typedefs import Handler

from edgectl.devicemaps.readings import Value
from edgectl.devicemaps.schema import Point
from edgectl.sim._http import serve
from edgectl.sim.faults import DeviceFaults
from edgectl.sim.state import DeviceState

__all__ = ["RedfishServer", "ServedRequest"]

Json = dict[str, Any]
Token = str | int

ROOT = "/redfish/v1"
_REGISTRY = "Base.1.19"
_CHASSIS_ID = re.compile(r"[A-Za-z0-9_.-]+")
_SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)")
# What a faulty BMC puts where a number belongs: all valid JSON, none of it a number.
_GARBAGE: tuple[Any, ...] = ("0x1F4", "n/a", True, "", [], {"Reading": 1})


@dataclass(frozen=True, slots=True)
class ServedRequest:
    """One request as the server saw it; status 0 when it was dropped or never answered."""

    method: str
    path: str
    status: int
    if_match: str | None = None


class RedfishServer:
    """An aiohttp Redfish service on `host` (loopback by default) at `port` (0: any free)."""

    def __init__(
        self,
        chassis: Mapping[str, DeviceState],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        basic_auth: tuple[str, str] | None = None,
        token: str | None = None,
    ) -> None:
        if not chassis:
            raise ValueError("serve at least one chassis")
        for chassis_id, state in chassis.items():
            if not _CHASSIS_ID.fullmatch(chassis_id):
                raise ValueError(f"chassis id {chassis_id!r}: use letters, digits, _ . -")
            if state.device_map.map.protocol != "redfish":
                raise ValueError(
                    f"chassis {chassis_id!r}: map {state.device_map.map.profile!r} is for "
                    f"protocol {state.device_map.map.protocol!r}, not redfish"
                )
        self.chassis = dict(chassis)
        self.host = host
        self.basic_auth = basic_auth
        self.token = token  # may be replaced while serving, as a BMC expires sessions
        self.requests: deque[ServedRequest] = deque(maxlen=1000)
        self._port = port
        self._ssl = ssl_context
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self._garbage = itertools.cycle(_GARBAGE)

    @property
    def port(self) -> int:
        if self._runner is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    async def start(self) -> int:
        """Start serving; answers the bound port."""
        if self._runner is not None:
            raise RuntimeError("server already started")
        self._closing = asyncio.Event()
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get(ROOT, self._get_root)
        app.router.add_get(ROOT + "/", self._get_root)
        app.router.add_get(ROOT + "/Chassis", self._get_collection)
        app.router.add_get(ROOT + "/Chassis/{chassis}", self._get_chassis)
        app.router.add_get(ROOT + "/Chassis/{chassis}/{tail:.+}", self._get_resource)
        app.router.add_patch(ROOT + "/Chassis/{chassis}/{tail:.+}", self._patch_resource)
        self._runner, self._port = await serve(app, self.host, self._port, self._ssl)
        return self._port

    async def stop(self) -> None:
        """Stop serving: requests held by a `timeout` fault are dropped, new ones refused."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> RedfishServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        faults = self._faults(request.match_info.get("chassis"))
        if faults.offline:
            self._record(request, 0)
            _drop(request)
        if faults.timeout:
            self._record(request, 0)
            await self._closing.wait()
            _drop(request)
        if faults.latency_s > 0:
            await asyncio.sleep(faults.latency_s)
        response: web.StreamResponse
        if request.path.rstrip("/") != ROOT and not self._authorised(request):
            response = _error(
                401,
                "NoValidSession",
                "There is no valid session established with the implementation.",
                [],
            )
            response.headers["WWW-Authenticate"] = 'Basic realm="Redfish"'
        else:
            response = await handler(request)
        self._record(request, response.status)
        return response

    def _record(self, request: web.Request, status: int) -> None:
        self.requests.append(
            ServedRequest(request.method, request.path, status, request.headers.get("If-Match"))
        )

    def _faults(self, chassis_id: str | None) -> DeviceFaults:
        """A chassis' own faults; above the chassis, those every chassis shares (the BMC)."""
        if chassis_id is not None:
            state = self.chassis.get(chassis_id)
            return state.faults if state is not None else DeviceFaults()
        every = [s.faults for s in self.chassis.values()]
        return DeviceFaults(
            offline=all(f.offline for f in every),
            timeout=all(f.timeout for f in every),
            latency_s=min(f.latency_s for f in every),
        )

    def _authorised(self, request: web.Request) -> bool:
        if self.basic_auth is None and self.token is None:
            return True
        if self.token is not None and request.headers.get("X-Auth-Token") == self.token:
            return True
        if self.basic_auth is not None:
            pair = ":".join(self.basic_auth).encode()
            expected = "Basic " + base64.b64encode(pair).decode("ascii")
            return request.headers.get("Authorization") == expected
        return False

    async def _get_root(self, request: web.Request) -> web.StreamResponse:
        return _resource_response(
            {
                "@odata.id": ROOT + "/",
                "@odata.type": "#ServiceRoot.v1_17_0.ServiceRoot",
                "Id": "RootService",
                "Name": "Root Service",
                "RedfishVersion": "1.21.0",
                "Chassis": {"@odata.id": ROOT + "/Chassis"},
            }
        )

    async def _get_collection(self, request: web.Request) -> web.StreamResponse:
        return _resource_response(
            _collection(ROOT + "/Chassis", "Chassis", [f"{ROOT}/Chassis/{c}" for c in self.chassis])
        )

    async def _get_chassis(self, request: web.Request) -> web.StreamResponse:
        chassis_id = request.match_info["chassis"]
        state = self.chassis.get(chassis_id)
        if state is None:
            return _not_found("Chassis", chassis_id)
        base = f"{ROOT}/Chassis/{chassis_id}"
        doc: Json = {
            "@odata.id": base,
            "@odata.type": "#Chassis.v1_26_0.Chassis",
            "Id": chassis_id,
            "Name": state.device_id,
            "ChassisType": "RackMount",
            "PowerState": "On",
            "Status": {"State": "Enabled", "Health": "OK"},
        }
        for top in dict.fromkeys(p.split("/")[0] for p in _mapped_paths(state)):
            if top == "Power":
                doc["Power@Redfish.Deprecated"] = f"Please migrate to use {base}/PowerSubsystem"
            doc[top] = {"@odata.id": f"{base}/{top}"}
        return _resource_response(doc)

    async def _get_resource(self, request: web.Request) -> web.StreamResponse:
        chassis_id, path = request.match_info["chassis"], request.match_info["tail"].strip("/")
        state = self.chassis.get(chassis_id)
        doc = None if state is None else self._resource(chassis_id, state, path)
        if doc is None:
            return _not_found("Resource", f"{chassis_id}/{path}")
        return _resource_response(doc)

    async def _patch_resource(self, request: web.Request) -> web.StreamResponse:
        chassis_id, path = request.match_info["chassis"], request.match_info["tail"].strip("/")
        raw = await request.read()
        # No await from here on: the ETag check and the write see the same resource.
        state = self.chassis.get(chassis_id)
        current = None if state is None else self._resource(chassis_id, state, path)
        if state is None or current is None:
            return _not_found("Resource", f"{chassis_id}/{path}")
        if_match = request.headers.get("If-Match")
        if if_match is not None and not _etag_matches(if_match, current["@odata.etag"]):
            return _error(
                412,
                "PreconditionFailed",
                "The ETag supplied did not match the ETag required to change this resource.",
                [],
            )
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(
                400,
                "MalformedJSON",
                "The request body submitted was malformed JSON and could not be parsed by "
                "the receiving service.",
                [],
            )
        if not isinstance(body, dict) or not body:
            return _error(
                400,
                "EmptyJSON",
                "The request body submitted contained an empty JSON object and the service "
                "is unable to process it.",
                [],
            )
        writable = {
            tokens: (name, point)
            for name, point, tokens in _points_at(state, path)
            if point.access == "rw"
        }
        accepted: list[tuple[str, float]] = []
        for tokens, value in _leaves(body):
            prop = "/".join(str(t) for t in tokens)  # RFC 6901, as the registry asks
            refusal = _refusal(current, writable, tokens, value, prop)
            if refusal is not None:
                return refusal
            name, point = writable[tokens]
            accepted.append((name, value * point.scale + point.offset))
        # All or nothing: nothing is written unless every property was accepted.
        for name, engineering in accepted:
            state.write(name, engineering)
        updated = self._resource(chassis_id, state, path)
        assert updated is not None  # it existed a moment ago and the map did not change
        return _resource_response(updated)

    def _resource(self, chassis_id: str, state: DeviceState, path: str) -> Json | None:
        """The resource at `path` below the chassis, with its fields read now; None if the
        map names nothing there."""
        odata_id = f"{ROOT}/Chassis/{chassis_id}/{path}"
        points = _points_at(state, path)
        if not points:
            children = sorted(
                {
                    p[len(path) + 1 :].split("/")[0]
                    for p in _mapped_paths(state)
                    if p.startswith(path + "/")
                }
            )
            if not children:
                return None
            return _collection(odata_id, path.split("/")[-1], [f"{odata_id}/{c}" for c in children])
        doc = _template(chassis_id, path, odata_id)
        for name, point, tokens in points:
            _put(doc, tokens, self._wire_value(state, name, point))
        return _stamp(doc)

    def _wire_value(self, state: DeviceState, name: str, point: Point) -> Any:
        if state.faults.garbage and state.faults.applies_to(name):
            return next(self._garbage)
        value: Value | None = state.read(name)
        if value is None or isinstance(value, str):
            return value
        wire = (value - point.offset) / point.scale
        # Whole numbers go out as JSON integers, as in the DMTF mockups.
        return int(wire) if math.isfinite(wire) and wire.is_integer() else wire


def _refusal(
    current: Json,
    writable: Mapping[tuple[Token, ...], tuple[str, Point]],
    tokens: tuple[Token, ...],
    value: Any,
    prop: str,
) -> web.Response | None:
    """The 400 answer for one PATCHed property, or None if it is accepted."""
    if tokens not in writable:
        if _get(current, tokens) is not _MISSING:
            return _error(
                400,
                "PropertyNotWritable",
                f"The property '{prop}' is a read-only property and cannot be assigned a value.",
                [prop],
            )
        return _error(
            400,
            "PropertyUnknown",
            f"The property '{prop}' is not in the list of valid properties for the resource.",
            [prop],
        )
    shown = json.dumps(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return _error(
            400,
            "PropertyValueTypeError",
            f"The value '{shown}' for the property '{prop}' is not a type that the property "
            "can accept.",
            [shown, prop],
        )
    low, high = _bounds(current, tokens)
    if (low is not None and value < low) or (high is not None and value > high):
        return _error(
            400,
            "PropertyValueOutOfRange",
            f"The value '{shown}' for the property '{prop}' is not in the supported range of "
            "acceptable values.",
            [shown, prop],
            resolution=f"Use a value from {_show(low)} to {_show(high)}.",
        )
    return None


def _bounds(current: Json, tokens: tuple[Token, ...]) -> tuple[float | None, float | None]:
    """A SetPoint's AllowableMin/AllowableMax (its siblings, as served now); a legacy
    LimitInWatts only has to be non-negative (its schema minimum)."""
    key = tokens[-1]
    if key == "LimitInWatts":
        return 0.0, None
    if key != "SetPoint":
        return None, None
    parent = _get(current, tokens[:-1])
    if not isinstance(parent, dict):
        return None, None
    low, high = parent.get("AllowableMin"), parent.get("AllowableMax")
    return (low if _is_number(low) else None), (high if _is_number(high) else None)


def _template(chassis_id: str, path: str, odata_id: str) -> Json:
    """The fixed part of a resource, after the DMTF public-rackmount1 mockup."""
    base = f"{ROOT}/Chassis/{chassis_id}"
    parts = path.split("/")
    leaf = parts[-1]
    if len(parts) == 2 and parts[0] == "Controls":
        return {
            "@odata.id": odata_id,
            "@odata.type": "#Control.v1_7_0.Control",
            "Id": leaf,
            "Name": "System Power Limit",
            "PhysicalContext": "Chassis",
            "ControlType": "Power",
            "ControlMode": "Automatic",
            "SetPointType": "Single",
            "SetPointUnits": "W",
            "Implementation": "Programmable",
            "Sensor": {"DataSourceUri": f"{base}/Sensors/TotalPower"},
            "Status": {"State": "Enabled", "Health": "OK"},
        }
    if len(parts) == 2 and parts[0] == "Sensors":
        return {
            "@odata.id": odata_id,
            "@odata.type": "#Sensor.v1_11_0.Sensor",
            "Id": leaf,
            "Name": "Power reading for the Chassis",
            "ReadingType": "Power",
            "ReadingUnits": "W",
            "ElectricalContext": "Total",
            "PhysicalContext": "Chassis",
            "Implementation": "Synthesized",
            "Status": {"State": "Enabled", "Health": "OK"},
        }
    if path == "Power":
        return {
            "@odata.id": odata_id,
            "@odata.type": "#Power.v1_7_3.Power",
            "Id": "Power",
            "Name": "Power",
            "PowerControl": [
                {
                    "@odata.id": f"{odata_id}#/PowerControl/0",
                    "MemberId": "0",
                    "Name": "System Input Power",
                    "PowerLimit": {"LimitException": "LogEventOnly", "CorrectionInMs": 50},
                    "RelatedItem": [{"@odata.id": base}],
                    "Status": {"State": "Enabled", "Health": "OK"},
                }
            ],
        }
    if path == "EnvironmentMetrics":
        return {
            "@odata.id": odata_id,
            "@odata.type": "#EnvironmentMetrics.v1_4_0.EnvironmentMetrics",
            "Id": "EnvironmentMetrics",
            "Name": "Chassis Environment Metrics",
            "PowerWatts": {"DataSourceUri": f"{base}/Sensors/TotalPower"},
            "PowerLimitWatts": {
                "ControlMode": "Automatic",
                "DataSourceUri": f"{base}/Controls/PowerLimit",
            },
        }
    return {"@odata.id": odata_id, "Id": leaf, "Name": leaf}


def _collection(odata_id: str, name: str, members: list[str]) -> Json:
    return {
        "@odata.id": odata_id,
        "@odata.type": f"#{name}Collection.{name}Collection",
        "Name": f"{name} Collection",
        "Members": [{"@odata.id": m} for m in members],
        "Members@odata.count": len(members),
    }


def _mapped_paths(state: DeviceState) -> list[str]:
    return [p.path.strip("/") for p in state.device_map.points.values() if p.path]


def _points_at(state: DeviceState, path: str) -> list[tuple[str, Point, tuple[Token, ...]]]:
    return [
        (name, point, _tokens(point.field))
        for name, point in state.device_map.points.items()
        if point.path is not None and point.field is not None and point.path.strip("/") == path
    ]


def _tokens(field: str) -> tuple[Token, ...]:
    """ "PowerControl[0].PowerLimit.LimitInWatts" -> ("PowerControl", 0, "PowerLimit", ...)."""
    tokens: list[Token] = []
    for part in field.split("."):
        match = _SEGMENT.fullmatch(part)
        if match is None:
            raise ValueError(f"field {field!r}: cannot parse {part!r}")
        tokens.append(match[1])
        tokens.extend(int(i) for i in re.findall(r"\d+", match[2]))
    return tuple(tokens)


_MISSING = object()


def _get(doc: Any, tokens: tuple[Token, ...]) -> Any:
    for token in tokens:
        in_list = isinstance(token, int) and isinstance(doc, list) and token < len(doc)
        in_object = isinstance(token, str) and isinstance(doc, dict) and token in doc
        if not (in_list or in_object):
            return _MISSING
        doc = doc[token]
    return doc


def _put(doc: Json, tokens: tuple[Token, ...], value: Any) -> None:
    """Set a field, creating the objects and array items on the way."""
    node: Any = doc
    for token, following in itertools.pairwise((*tokens, None)):
        last = following is None
        if isinstance(token, int):
            while len(node) <= token:
                node.append({})
        elif not last and token not in node:
            node[token] = [] if isinstance(following, int) else {}
        if last:
            node[token] = value
        else:
            node = node[token]


def _leaves(body: Json) -> Iterator[tuple[tuple[Token, ...], Any]]:
    """The properties a PATCH body sets; an empty object in an array leaves that item as is."""
    stack: list[tuple[tuple[Token, ...], Any]] = [((), body)]
    while stack:
        prefix, node = stack.pop()
        if isinstance(node, dict) and (node or not prefix):
            stack.extend(((*prefix, k), v) for k, v in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend(((*prefix, i), v) for i, v in reversed(list(enumerate(node))) if v != {})
        else:
            yield prefix, node


def _etag_matches(if_match: str, etag: str) -> bool:
    candidates = [c.strip() for c in if_match.split(",")]
    return "*" in candidates or etag in candidates


def _stamp(doc: Json) -> Json:
    """Set `@odata.etag`: a strong ETag over the rest of the body."""
    doc.pop("@odata.etag", None)
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    doc["@odata.etag"] = '"' + hashlib.sha256(canonical.encode()).hexdigest()[:16] + '"'
    return doc


def _resource_response(doc: Json) -> web.Response:
    etag = _stamp(doc)["@odata.etag"]
    return web.json_response(doc, headers={"ETag": etag, "OData-Version": "4.0"})


def _error(
    status: int, message_id: str, message: str, args: list[str], resolution: str = ""
) -> web.Response:
    info: Json = {
        "@odata.type": "#Message.v1_2_0.Message",
        "MessageId": f"{_REGISTRY}.{message_id}",
        "Message": message,
        "MessageArgs": args,
        "MessageSeverity": "Critical" if status >= 500 or status == 401 else "Warning",
    }
    if resolution:
        info["Resolution"] = resolution
    body = {
        "error": {
            "code": f"{_REGISTRY}.{message_id}",
            # What a client should show is in ExtendedInfo, as with real BMCs.
            "message": "A general error has occurred. See ExtendedInfo for more information.",
            "@Message.ExtendedInfo": [info],
        }
    }
    return web.json_response(body, status=status, headers={"OData-Version": "4.0"})


def _not_found(kind: str, name: str) -> web.Response:
    return _error(
        404,
        "ResourceNotFound",
        f"The requested resource of type '{kind}' named '{name}' was not found.",
        [kind, name],
    )


def _drop(request: web.Request) -> NoReturn:
    """End the connection without an answer, as a BMC that went away."""
    if request.transport is not None:
        request.transport.abort()
    raise asyncio.CancelledError


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _show(bound: float | None) -> str:
    return "unbounded" if bound is None else f"{bound:g}"
