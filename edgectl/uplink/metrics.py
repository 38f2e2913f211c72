"""Prometheus metrics at /metrics, built from the last cycle when scraped.

Only the cycle-time histogram is touched every cycle; everything else is read from the
daemon's last CycleRecord and its pollers when Prometheus scrapes, so that a site of
thousands of racks pays nothing per cycle for metrics nobody reads. Units follow
Prometheus' conventions: watts, volts, seconds, ratios 0..1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from edgectl.config.site import Site
from edgectl.control.cycle import CycleRecord
from edgectl.control.states import State

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Cycle compute times are a few milliseconds; the buckets reach to a whole period.
CYCLE_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class DeviceCounts:
    """What /metrics says of one device's polls and writes."""

    polls: int
    poll_errors: int
    writes: int
    write_errors: int


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        m = self._m
        record = m.last
        state = GaugeMetricFamily(
            "edgectl_state", "1 for the controller's state, 0 for the others", labels=["state"]
        )
        current = record.state if record is not None else State.STARTING
        for s in State:
            state.add_metric([s.name], 1.0 if s is current else 0.0)
        yield state
        counts = m.devices()
        polls = CounterMetricFamily("edgectl_polls", "Polls of a device", labels=["device"])
        poll_errors = CounterMetricFamily(
            "edgectl_poll_errors", "Polls of a device that failed", labels=["device"]
        )
        writes = CounterMetricFamily(
            "edgectl_setpoint_writes", "Setpoints written to a device", labels=["device"]
        )
        write_errors = CounterMetricFamily(
            "edgectl_setpoint_write_errors", "Setpoint writes that failed", labels=["device"]
        )
        for device, c in counts.items():
            polls.add_metric([device], c.polls)
            poll_errors.add_metric([device], c.poll_errors)
            writes.add_metric([device], c.writes)
            write_errors.add_metric([device], c.write_errors)
        yield from (polls, poll_errors, writes, write_errors)
        green = GaugeMetricFamily(
            "edgectl_green_share_ratio", "Rolling green share of the racks' energy"
        )
        share = m.green_share()
        if share is not None:
            green.add_metric([], share)
        yield green
        if record is None:
            return
        yield from self._cycle(record)

    def _cycle(self, record: CycleRecord) -> Iterator[GaugeMetricFamily]:
        site = self._m.site
        source = GaugeMetricFamily(
            "edgectl_source_power_watts",
            "Measured power of a source (battery > 0 discharging, grid > 0 importing)",
            labels=["source", "kind"],
        )
        soc = GaugeMetricFamily(
            "edgectl_battery_soc_ratio", "Battery state of charge", labels=["battery"]
        )
        for src in site.sources:
            view = record.snapshot.sources[src.id]
            p = _number(view.p_w.value) if view.p_w.valid else None
            if p is not None:
                source.add_metric([src.id, src.kind], p)
            if src.kind == "bess" and view.soc.valid and (s := _number(view.soc.value)) is not None:
                soc.add_metric([src.id], s)
        yield source
        yield soc
        cap = GaugeMetricFamily(
            "edgectl_rack_cap_watts", "Power cap in force for a rack", labels=["rack", "tier"]
        )
        draw = GaugeMetricFamily(
            "edgectl_rack_power_watts", "Measured draw of a rack", labels=["rack", "tier"]
        )
        est = record.estimate
        for i, rack in enumerate(site.racks):
            labels = [rack.id, str(rack.tier)]
            if est.rack_controllable[i]:
                cap.add_metric(labels, float(record.caps_w[i]))
            rview = record.snapshot.racks[rack.id]
            if rview.p_w.valid and (p := _number(rview.p_w.value)) is not None:
                draw.add_metric(labels, p)
        yield cap
        yield draw
        bus = GaugeMetricFamily(
            "edgectl_bus_voltage_volts", "Lowest and highest measured bus voltage", labels=["end"]
        )
        if est.bus_v_min_v is not None and est.bus_v_max_v is not None:
            bus.add_metric(["min"], est.bus_v_min_v)
            bus.add_metric(["max"], est.bus_v_max_v)
        yield bus
        grid = GaugeMetricFamily("edgectl_grid_import_watts", "Grid import counted this cycle")
        grid.add_metric([], record.grid_w)
        yield grid
        supply = GaugeMetricFamily(
            "edgectl_dispatch_supply_watts", "What the racks' caps together may reach"
        )
        supply.add_metric([], float(record.result.supply_w))
        yield supply


class Metrics:
    """The daemon's metrics: a registry of its own, fed by the publish phase."""

    def __init__(
        self,
        site: Site,
        *,
        devices: Callable[[], Mapping[str, DeviceCounts]],
        green_share: Callable[[], float | None],
    ) -> None:
        self.site = site
        self.devices = devices
        self.green_share = green_share
        self.last: CycleRecord | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        self.cycle_seconds = Histogram(
            "edgectl_cycle_seconds",
            "Compute time of a control cycle, snapshot to setpoints",
            buckets=CYCLE_BUCKETS_S,
            registry=self.registry,
        )
        self.registry.register(_Collector(self))

    def observe(self, record: CycleRecord) -> None:
        """Called once per cycle: the histogram, and the record kept for scrapes."""
        self.last = record
        self.cycle_seconds.observe(record.compute_s)

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None
