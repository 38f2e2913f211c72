"""Rack BMCs over Redfish: a device map's points read with GET and written with PATCH.

Each point names a resource below /redfish/v1/Chassis/{chassis}/ (`path`) and a JSON
field in it (`field`: dots for nesting, [i] for array items). A poll GETs each resource
once and decodes its points; bad data becomes an invalid Reading with a reason, never an
exception, and only a transport failure raises (a DeviceError). A write PATCHes the field
with the resource's ETag and answers what the BMC serves afterwards.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

from edgectl.devicemaps.readings import NOT_A_NUMBER, OUT_OF_RANGE, Reading
from edgectl.devicemaps.schema import DeviceMap, Point
from edgectl.transport.redfish import DEFAULT_TIMEOUT_S, Json, RedfishAuth, RedfishClient

__all__ = ["FIELD_MISSING", "NOT_IMPLEMENTED_NULL", "RedfishDevice", "parse_field"]

# Reasons of invalid Readings particular to Redfish. A service omits a property it does
# not support and serves null for one it supports but cannot give now.
NOT_IMPLEMENTED_NULL = "not implemented (null)"
FIELD_MISSING = "field missing"

Token = str | int

_SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)")
_SHOWN_CHARS = 64  # of a non-numeric string kept as the invalid Reading's value


def parse_field(field: str) -> tuple[Token, ...]:
    """ "PowerControl[0].PowerLimit.LimitInWatts" -> ("PowerControl", 0, "PowerLimit",
    "LimitInWatts"); ValueError for anything else."""
    tokens: list[Token] = []
    for part in field.split("."):
        match = _SEGMENT.fullmatch(part)
        if match is None:
            raise ValueError(
                f"field {field!r}: {part!r} is not a property name with optional [index]es"
            )
        tokens.append(match[1])
        tokens.extend(int(i) for i in re.findall(r"\d+", match[2]))
    return tuple(tokens)


@dataclass(frozen=True, slots=True)
class _Bound:
    """A map point with its wire location resolved."""

    name: str
    point: Point
    path: str  # absolute: /redfish/v1/Chassis/{chassis}/...
    tokens: tuple[Token, ...]


class RedfishDevice:
    """One chassis of one BMC, read and written through its device map."""

    def __init__(
        self,
        device_id: str,
        endpoint: str,
        chassis_id: str,
        device_map: DeviceMap,
        auth: RedfishAuth | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        ca_file: str | os.PathLike[str] | None = None,
    ) -> None:
        if device_map.map.protocol != "redfish":
            raise ValueError(
                f"{device_id}: map {device_map.map.profile!r} is for protocol "
                f"{device_map.map.protocol!r}, not redfish"
            )
        self.device_id = device_id
        self.chassis_id = chassis_id
        self.device_map = device_map
        self._clock = clock
        self._client = RedfishClient(
            endpoint, device=device_id, auth=auth, ca_file=ca_file, timeout_s=timeout_s
        )
        base = f"/redfish/v1/Chassis/{quote(chassis_id, safe='')}/"
        self._points: dict[str, _Bound] = {}
        for name, point in device_map.points.items():
            if point.path is None or point.field is None:
                raise ValueError(f"{device_id}: points.{name}: needs both path and field")
            try:
                tokens = parse_field(point.field)
            except ValueError as exc:
                raise ValueError(f"{device_id}: points.{name}.{exc}") from None
            if point.access == "rw" and point.scale == 0:
                raise ValueError(f"{device_id}: points.{name}.scale: 0 cannot be written")
            path = base + quote(point.path.strip("/"), safe="/")
            self._points[name] = _Bound(name, point, path, tokens)

    @property
    def points(self) -> Mapping[str, Point]:
        return self.device_map.points

    async def __aenter__(self) -> RedfishDevice:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def poll(self, points: Iterable[str] | None = None) -> dict[str, Reading]:
        """Read `points` (default: every point of the map), each resource GET once."""
        names = list(self._points) if points is None else [self._bound(p).name for p in points]
        by_path: dict[str, list[_Bound]] = {}
        for name in names:
            bound = self._points[name]
            by_path.setdefault(bound.path, []).append(bound)
        readings: dict[str, Reading] = {}
        # One resource after the other: a BMC answers slowly enough without a crowd.
        for path, group in by_path.items():
            doc, _ = await self._client.get(path)
            t_s = self._clock()
            for bound in group:
                readings[bound.name] = _decode(bound, doc, t_s)
        return {name: readings[name] for name in names}

    async def write(self, point: str, value: float) -> Reading:
        """PATCH `point` to `value` (in the point's unit) and answer the value read back.

        ValueError for a point that is not in the map or not rw, or a value that is not a
        finite number; a value the BMC refuses (a limit outside AllowableMin..AllowableMax)
        raises ProtocolError with the BMC's message.
        """
        bound = self._bound(point)
        if bound.point.access != "rw":
            raise ValueError(f"{self.device_id}: point {point!r} is read-only (access 'r')")
        if not _is_number(value):
            raise ValueError(f"{self.device_id}: {point}: {value!r} is not a finite number")
        wire = (value - bound.point.offset) / bound.point.scale
        # Integers where they are whole: some BMCs refuse 500.0 for an integer property.
        sent: float | int = int(wire) if wire.is_integer() else wire
        if self._client.etag(bound.path) is None:
            await self._client.get(bound.path)  # for an ETag to send with If-Match
        await self._client.patch(bound.path, _nest(bound.tokens, sent))
        doc, _ = await self._client.get(bound.path)
        return _decode(bound, doc, self._clock())

    async def raw_dump(self) -> dict[str, Json]:
        """The JSON of every resource the map reads, by the map's `path`, for fixtures."""
        dump: dict[str, Json] = {}
        for bound in self._points.values():
            assert bound.point.path is not None
            key = bound.point.path.strip("/")
            if key not in dump:
                dump[key], _ = await self._client.get(bound.path)
        return dump

    async def close(self) -> None:
        await self._client.close()

    def _bound(self, point: str) -> _Bound:
        try:
            return self._points[point]
        except KeyError:
            raise ValueError(
                f"{self.device_id}: no point {point!r} in map {self.device_map.map.profile!r}"
            ) from None


def _decode(bound: _Bound, doc: Json, t_s: float) -> Reading:
    unit = bound.point.unit
    found, raw = _extract(doc, bound.tokens)
    if not found:
        return Reading.invalid(FIELD_MISSING, unit, t_s)
    if raw is None:
        return Reading.invalid(NOT_IMPLEMENTED_NULL, unit, t_s)
    if not _is_number(raw):
        shown = raw[:_SHOWN_CHARS] if isinstance(raw, str) else None
        return Reading.invalid(NOT_A_NUMBER, unit, t_s, shown)
    value = raw * bound.point.scale + bound.point.offset
    limits = bound.point.range
    if limits is not None and not limits[0] <= value <= limits[1]:
        return Reading.invalid(OUT_OF_RANGE, unit, t_s, float(value))
    return Reading.ok(float(value), unit, t_s)


def _is_number(value: Any) -> bool:
    # bool is an int to Python but never a number on the wire.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _extract(doc: Any, tokens: tuple[Token, ...]) -> tuple[bool, Any]:
    for token in tokens:
        if isinstance(token, int):
            if not isinstance(doc, list) or token >= len(doc):
                return False, None
        elif not isinstance(doc, dict) or token not in doc:
            return False, None
        doc = doc[token]
    return True, doc


def _nest(tokens: tuple[Token, ...], value: float | int) -> Json:
    """The PATCH body that sets one field: array items before the target stay {} (unchanged)."""
    node: Any = value
    for token in reversed(tokens):
        node = [*({} for _ in range(token)), node] if isinstance(token, int) else {token: node}
    assert isinstance(node, dict)  # a field starts with a property name
    return node
