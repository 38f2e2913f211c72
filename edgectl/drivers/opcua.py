"""Map-driven driver for devices with a map of protocol "opcua" (wind turbines).

The driver subscribes to every point of the map and never polls the wire: `poll()` decodes
the subscription cache. A reading's time is when the subscription last vouched for the
value (a data change or a keep-alive), not the value's SourceTimestamp: the server only
notifies changes, so a value that holds still keeps an old SourceTimestamp yet is current.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from edgectl.devicemaps.readings import (
    NO_ANSWER,
    NOT_A_NUMBER,
    OUT_OF_RANGE,
    STALE,
    Reading,
    Value,
)
from edgectl.devicemaps.schema import DeviceMap, Point
from edgectl.transport.opcua import INTEGER_VARIANTS, OpcUaClient, Sample, Security

EMPTY = "empty value"


class OpcUaDevice:
    """One device: its points as Readings, its rw points as setpoints."""

    def __init__(
        self,
        device_id: str,
        endpoint: str,
        device_map: DeviceMap,
        security: Security,
        clock: Callable[[], float] = time.monotonic,
        *,
        timeout_s: float = 2.0,
        publishing_interval_s: float = 0.25,
        reconnect_max_delay_s: float = 10.0,
    ) -> None:
        if device_map.opcua is None:
            raise ValueError(
                f"{device_id}: map {device_map.map.profile!r} is protocol "
                f"{device_map.map.protocol!r}, not 'opcua'"
            )
        self.device_id = device_id
        self.device_map = device_map
        self._clock = clock
        paths = {}
        for name, point in device_map.points.items():
            assert point.node is not None  # the schema requires it for protocol opcua
            paths[name] = (device_id, *point.node.split("."))
        self._link = OpcUaClient(
            device_id,
            endpoint,
            device_map.opcua.namespace_uri,
            paths,
            security,
            timeout_s=timeout_s,
            publishing_interval_s=publishing_interval_s,
            reconnect_max_delay_s=reconnect_max_delay_s,
        )

    @property
    def connected(self) -> bool:
        return self._link.connected

    async def connect(self) -> None:
        """Connect and subscribe; a DeviceError if the first attempt fails. Lost connections
        are re-established in the background from then on."""
        await self._link.connect()

    async def close(self) -> None:
        await self._link.close()

    def poll(self) -> dict[str, Reading]:
        """Every point's latest value; no I/O, never raises."""
        now = self._clock()
        age = self._link.age_s()
        t_s = now if age is None else now - age
        samples = self._link.latest()
        if not self._link.connected or age is None:
            error = self._link.last_error
            reason = f"{NO_ANSWER}: {error}" if error else NO_ANSWER
            return {
                name: Reading.invalid(reason, point.unit, t_s)
                for name, point in self.device_map.points.items()
            }
        return {
            name: _decode(point, samples[name], t_s, age)
            for name, point in self.device_map.points.items()
        }

    async def write(self, point: str, value: Value) -> Reading:
        """Write a setpoint in the point's unit and return what the device reads back."""
        spec = self.device_map.points.get(point)
        if spec is None:
            raise ValueError(
                f"{self.device_id}: no point {point!r} in map {self.device_map.map.profile!r}"
            )
        if spec.access != "rw":
            raise ValueError(f"{self.device_id}: point {point!r} is read-only (access = 'r')")
        assert spec.variant is not None  # the schema requires it for protocol opcua
        wire: Value = value
        if not isinstance(value, str):
            if spec.range is not None and not spec.range[0] <= value <= spec.range[1]:
                raise ValueError(
                    f"{self.device_id}: {point} = {value} {spec.unit} is outside "
                    f"its range {list(spec.range)}"
                )
            wire = _to_wire(spec, value)
            if spec.variant in INTEGER_VARIANTS:
                wire = round(wire)
        await self._link.write(point, wire, spec.variant)
        sample = (await self._link.read([point]))[point]
        return _decode(spec, sample, self._clock(), 0.0)

    async def raw_dump(self) -> dict[str, object]:
        """Node ids and raw values of every point, read now (for fixtures and bug reports)."""
        samples = await self._link.read()
        node_ids = self._link.node_ids()
        times = {
            name: None if sample.source_time is None else sample.source_time.isoformat()
            for name, sample in samples.items()
        }
        return {
            "device": self.device_id,
            "endpoint": self._link.endpoint,
            "namespace_uri": self._link.namespace_uri,
            "namespace_index": self._link.namespace_index,
            "points": {
                name: {
                    "node": point.node,
                    "node_id": node_ids.get(name),
                    "variant": point.variant,
                    "status": samples[name].status,
                    "value": samples[name].value,
                    "source_time": times[name],
                }
                for name, point in self.device_map.points.items()
            },
        }


def _to_wire(point: Point, value: float | int) -> float | int:
    if (point.scale, point.offset) == (1.0, 0.0):
        return value
    return (value - point.offset) / point.scale


def _decode(point: Point, sample: Sample, t_s: float, age_s: float) -> Reading:
    """A sample as a Reading in the point's unit, invalid with a reason when it is not usable."""
    unit = point.unit
    if not sample.good:
        return Reading.invalid(sample.status, unit, t_s)
    raw = sample.value
    if raw is None:
        return Reading.invalid(EMPTY, unit, t_s)
    if isinstance(raw, str):
        value: Value = raw
    else:
        number = int(raw) if isinstance(raw, bool) else raw
        if isinstance(number, float) and math.isnan(number):
            return Reading.invalid(NOT_A_NUMBER, unit, t_s)
        value = (
            number
            if (point.scale, point.offset) == (1.0, 0.0)
            else number * point.scale + point.offset
        )
        if not math.isfinite(value) or (
            point.range is not None and not point.range[0] <= value <= point.range[1]
        ):
            return Reading.invalid(OUT_OF_RANGE, unit, t_s, value)
    if age_s > point.stale_s:
        return Reading.invalid(STALE, unit, t_s, value)
    return Reading.ok(value, unit, t_s)
