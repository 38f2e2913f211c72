"""The daemon's upstream side: reports, leases, the audit ledger, metrics, store-and-forward.

Every cycle the daemon hands its CycleRecord to `Upstream.on_cycle`, which (no I/O but
SQLite commits of a few hundred microseconds):

    ledger      adds the cycle's energy by origin; a closed 15-minute record goes to the
                outbox as an audit record
    forecast    takes the renewables' availability
    leases      drops the leases that ran out, answering each on MQTT
    report      when due (every uplink.report_period_s and on each change of state): the
                availability report, kept for GET /v1/availability and put in the outbox
    metrics     the cycle-time histogram and the record for /metrics

Delivery tasks, one per configured sink (the scheduler's HTTP endpoint, the fleet MQTT
broker), take the outbox's records in order, at least once, each with its sequence
number; a sink that is down only makes its backlog grow on disk.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, NamedTuple

import structlog

from edgectl.app.clock import Clock
from edgectl.app.openapi import openapi_document
from edgectl.app.pollers import Poller
from edgectl.app.writers import DeviceWriter
from edgectl.config.site import RENEWABLE_KINDS, Site
from edgectl.control.accounting import Accounts
from edgectl.control.cycle import CycleRecord
from edgectl.control.states import State
from edgectl.devicemaps.readings import Reading
from edgectl.transport.mqtt import MqttLink
from edgectl.transport.uplink_http import HttpSink
from edgectl.uplink.availability import (
    Headroom,
    ReportSchedule,
    battery_sustain_now_w,
    build_report,
    lease_headroom,
    observe,
    renewable_rating_w,
)
from edgectl.uplink.delivery import Deliverer
from edgectl.uplink.forecast import Forecaster
from edgectl.uplink.leases import LeaseBook
from edgectl.uplink.ledger import Ledger
from edgectl.uplink.metrics import DeviceCounts, Metrics
from edgectl.uplink.outbox import Outbox

log = structlog.get_logger("edgectl.uplink")

# Energy is counted for at most this many periods when cycles were late (as accounting).
MAX_COUNTED_PERIODS = 5.0


class Links(NamedTuple):
    """The transports of [uplink]: either may be absent."""

    http: HttpSink | None
    mqtt: MqttLink | None


class Upstream:
    """Reports, leases, ledger, metrics and delivery of one daemon."""

    def __init__(
        self,
        site: Site,
        site_file: str,
        state_dir: Path,
        clock: Clock,
        *,
        accounts: Accounts,
        pollers: dict[str, Poller],
        writers: dict[str, DeviceWriter],
    ) -> None:
        self.site = site
        self.clock = clock
        self.accounts = accounts
        self._pollers = pollers
        self._writers = writers
        self.state_dir = state_dir
        self._use(self.links_for(site, site_file))
        capacities = {s.id: s.capacity_wh or 0.0 for s in site.sources_of("bess")}
        self.ledger = Ledger.open(state_dir, site.site.id, battery_capacity_wh=capacities)
        self.forecaster = Forecaster(renewable_rating_w(site))
        self.schedule = ReportSchedule(site.uplink.report_period_s)
        self.leases = LeaseBook(site, clock)
        self.metrics = Metrics(site, devices=self._device_counts, green_share=self._green_share)
        self.last: CycleRecord | None = None
        self.report: dict[str, Any] | None = None
        self._last_wall_s: float | None = None

    def links_for(self, site: Site, site_file: str) -> Links:
        """The HTTP sink and the MQTT link [uplink] asks for, not connected; an EdgeError
        naming the setting when one cannot be built (a missing token file, say)."""
        base = Path(site_file).parent
        up = site.uplink
        http = (
            HttpSink(
                up.scheduler_url,
                token_file=base / up.token_file if up.token_file else None,
                ca_file=base / up.ca_file if up.ca_file else None,
            )
            if up.scheduler_url
            else None
        )
        mqtt = (
            MqttLink(
                up.mqtt_host,
                up.mqtt_port,
                client_id=f"edgectl-{site.site.id}",
                topic_prefix=f"{up.mqtt_topic_prefix}/{site.site.id}",
                on_lease_request=self._lease_over_mqtt,
                username=up.mqtt_username,
                password_file=base / up.mqtt_password_file if up.mqtt_password_file else None,
                ca_file=base / up.mqtt_ca_file if up.mqtt_ca_file else None,
            )
            if up.mqtt_host
            else None
        )
        return Links(http, mqtt)

    def _use(self, links: Links) -> None:
        """Open the outbox with a cursor per link and a deliverer for each (not started)."""
        self.http, self.mqtt = links.http, links.mqtt
        sinks = [name for name, sink in (("http", self.http), ("mqtt", self.mqtt)) if sink]
        # Without a sink the records still go somewhere durable: the "archive" sink is
        # never delivered to, and the outbox's own policy bounds it.
        self.outbox = Outbox(self.state_dir / "outbox.sqlite", sinks=sinks or ["archive"])
        self.deliverers: list[Deliverer] = []
        if self.http is not None:
            self.deliverers.append(Deliverer(self.outbox, "http", self.http.send))
        if self.mqtt is not None:
            self.deliverers.append(Deliverer(self.outbox, "mqtt", self.mqtt.send))

    async def reconfigure(
        self,
        site: Site,
        links: Links,
        *,
        pollers: dict[str, Poller],
        writers: dict[str, DeviceWriter],
    ) -> list[str]:
        """Take a reloaded site file (SIGHUP; `links` from links_for() on it) without losing
        a record, a lease or the ledger: the new devices are counted, changed [uplink]
        settings reconnect (what is queued stays queued: the outbox is the same file), a
        lease on a rack the site no longer has ends. What changed, for the log."""
        old, changed = self.site, []
        self.site, self._pollers, self._writers = site, pollers, writers
        if site.uplink != old.uplink:
            await self.stop()
            self.outbox.close()
            self._use(links)
            self.schedule = ReportSchedule(site.uplink.report_period_s)
            await self.start()
            changed.append("uplink")
        if site.racks != old.racks or site.sources != old.sources:
            ended = self.leases.retarget(site)
            self.metrics = Metrics(site, devices=self._device_counts, green_share=self._green_share)
            self.forecaster.rating_w = renewable_rating_w(site)
            changed.append("racks and sources" + (f" (leases ended: {ended})" if ended else ""))
        return changed

    def floors(self, now_s: float) -> dict[str, float]:
        """The leases' power per rack, for dispatch."""
        return self.leases.floors(now_s)

    async def start(self) -> None:
        if self.mqtt is not None:
            await self.mqtt.start()
        for d in self.deliverers:
            d.start()

    async def stop(self) -> None:
        for d in self.deliverers:
            await d.stop()
        if self.mqtt is not None:
            await self.mqtt.stop()
        if self.http is not None:
            await self.http.close()

    def close(self) -> None:
        for record in self.ledger.close():
            self.outbox.append("audit", record)
        self.outbox.close()

    def on_cycle(self, record: CycleRecord) -> None:
        """The publish phase's upstream part (see the module docstring)."""
        self.last = record
        self.metrics.observe(record)
        for closed in self._ledger(record):
            self._append("audit", closed)
        observe(self.forecaster, self.site, record)
        for ended in self.leases.expire(record.t_s):
            log.info("lease expired", lease=ended.get("id"), rack=ended.get("rack"))
            self._respond(ended)
        if self.schedule.due(record.t_s, record.state):
            floors = self.leases.floors(record.t_s)
            steps = self.forecaster.forecast(
                record.wall_s, battery_w=battery_sustain_now_w(self.site, record)
            )
            head = self.ledger.head()
            report = build_report(
                self.site,
                record,
                seq=self.outbox.last_seq + 1,
                wall_s=record.wall_s,
                forecast=steps,
                leases_committed_w=self.leases.leased_w(record.t_s),
                lease_floors_w=floors,
                green_share=self._green_share(),
            )
            if head is not None:
                # The ledger's head, published: the anchor that shows a truncated ledger.
                report["ledger_head"] = str(head)
            self.report = report
            self._append("report", report)

    def _append(self, kind: str, payload: dict[str, Any]) -> None:
        self.outbox.append("report" if kind == "report" else "audit", payload)
        for d in self.deliverers:
            d.wake()

    def _ledger(self, record: CycleRecord) -> list[dict[str, Any]]:
        period = self.site.control.period_s
        last, self._last_wall_s = self._last_wall_s, record.wall_s
        if last is None or record.state is State.STARTING:
            return []
        dt = min(max(record.wall_s - last, 0.0), MAX_COUNTED_PERIODS * period)
        snap, est = record.snapshot, record.estimate
        by_kind = {"pv": 0.0, "wind": 0.0}
        battery: dict[str, float] = {}
        curtailed = 0.0
        renewables = [s for s in self.site.sources if s.kind in RENEWABLE_KINDS]
        for i, src in enumerate(renewables):
            p = _value(snap.sources[src.id].p_w)
            by_kind[src.kind] += p or 0.0
            if est.renewable_held[i] and p is not None:
                curtailed += max(0.0, float(est.renewable_available_w[i]) - p)
        for src in self.site.sources_of("bess"):
            p = _value(snap.sources[src.id].p_w)
            if p is not None:
                battery[src.id] = p
        racks = {r.id: float(est.rack_draw_w[i]) for i, r in enumerate(self.site.racks)}
        return self.ledger.add(
            record.wall_s,
            dt,
            pv_w=by_kind["pv"],
            wind_w=by_kind["wind"],
            battery_w=battery,
            grid_w=record.grid_w,
            curtailed_w=curtailed,
            rack_w=racks,
            losses_w=record.verification.losses_w,
        )

    # The API's uplink provider.
    def availability(self) -> dict[str, Any]:
        if self.report is None:
            # Before the first report (STARTING): the state, and nothing to plan with.
            return {"state": State.STARTING.name, "available_w": 0.0, "forecast": []}
        return self.report

    def leases_document(self) -> dict[str, Any]:
        return self.leases.list()

    def request_lease(self, body: object) -> tuple[int, dict[str, Any]]:
        return 200, self.leases.request(body, self.clock.monotonic(), self._headroom())

    def exposition(self) -> bytes:
        return self.metrics.exposition()

    def openapi(self) -> dict[str, Any]:
        return openapi_document()

    def _headroom(self) -> Headroom:
        if self.last is None:
            return Headroom(State.STARTING, 0.0)
        now = self.clock.monotonic()
        return lease_headroom(self.site, self.last, self.leases.floors(now))

    async def _lease_over_mqtt(self, raw: bytes) -> None:
        answer = self.leases.request_json(raw, self.clock.monotonic(), self._headroom())
        self._respond(answer)

    def _respond(self, answer: dict[str, Any]) -> None:
        if self.mqtt is None:
            return
        import asyncio

        task = asyncio.ensure_future(self.mqtt.publish_response(json.dumps(answer).encode()))
        task.add_done_callback(_log_failure)

    def _device_counts(self) -> dict[str, DeviceCounts]:
        out = {}
        for device_id, poller in self._pollers.items():
            writer = self._writers.get(device_id)
            out[device_id] = DeviceCounts(
                polls=poller.polls,
                poll_errors=poller.errors,
                writes=writer.status.writes if writer else 0,
                write_errors=writer.status.failures if writer else 0,
            )
        return out

    def _green_share(self) -> float | None:
        return self.accounts.green_share(self.clock.wall(), self.site.control.green_window_s)

    def delivery(self) -> dict[str, Any]:
        """For the status document: each sink's backlog and last error."""
        out: dict[str, Any] = {"last_seq": self.outbox.last_seq}
        for d in self.deliverers:
            stats = d.stats()
            out[d.sink] = {
                "backlog": self.outbox.backlog(d.sink),
                "delivered": stats.delivered,
                "last_error": stats.last_error,
            }
        return out


def _value(reading: Reading) -> float | None:
    v = reading.value
    if not reading.valid or isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def _log_failure(task: Any) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("lease answer not published", error=str(task.exception()))

