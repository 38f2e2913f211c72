"""The whole site simulated: physics, the DC bus, and every [[device]] on its real protocol.

`SiteSimulator` builds one physical model per source and rack of the site (see
`edgectl.sim.physics`), one DeviceState per [[device]] (its map from firmware_configs/,
chosen by its profile), and one protocol server per endpoint: Modbus units sharing a TCP
port share one server, as devices behind a gateway do; OPC UA devices and Redfish chassis
sharing an endpoint share theirs too. Servers listen on 127.0.0.1 at the endpoint's port.
Sources and racks without a [[device]] are simulated all the same: they are on the bus.

Every step (`step_s` of simulated time, 0.1 s by default, so speed / step_s steps per
wall second) the simulator, in this order:

1. expires setpoints not refreshed within their device's revert time,
2. moves PV, wind and racks on by one step under the setpoints in force,
3. solves the DC bus with the power-flow kernel: PV and wind inject what they make, racks
   draw theirs, batteries either hold the bus by droop within the currents their BMS
   allows now (a full one only discharges, an empty one only charges) or, given a
   setpoint, run pinned at it, a tripped one at 0. When no solution keeps the bus within
   0.80-1.10 pu, PV and wind derate on the overvoltage (too much supply) or the racks
   brown out (too much load), to the largest share the bus carries,
4. integrates each battery's state of charge at the power the bus took from it,
5. writes every measurement into its device's points, in the map's units.

Events (scenario files, the control API) and faults act between steps. Setpoints a
device obeys (points written by a client, read from DeviceState.writes):

    pv    limit_pct with limit_enable = 1 (SunSpec 123: % of p_rated_w) or limit_w (W);
          reverts after limit_revert_s without a rewrite (0, the default: never)
    bess  storage_mode (SunSpec 124 StorCtl_Mod) bit 1 DISCHARGE: discharge at
          discharge_rate_pct % of p_discharge_max_w; bit 0 CHARGE: charge at
          charge_rate_pct % of charge_limit_w (WChaMax); both bits: the difference. No bit
          set (the default): droop. charge_limit_w caps charging in every mode. Reverts after
          rate_revert_s without a rewrite (0: never), and every setpoint is dropped when a
          heartbeat that was written stops changing for `heartbeat_timeout_s`
    wind  limit_w; reverts when neither limit_w is rewritten nor the heartbeat changes for
          `wind_revert_s`
    rack  limit_w (Redfish SetPoint); reverts after `redfish_revert_s` without a rewrite

A reverted setpoint serves its default again (limit 100 %, disabled, the rating).
Time is simulated time throughout: DeviceState's clock is the simulator's, so revert
timers and write times run `speed` times faster than the wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import heapq
import itertools
import logging
import math
import random
import re
import shutil
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt
from packaging.version import InvalidVersion, Version

from edgectl.config.site import Device, Site
from edgectl.devicemaps.loader import MapIndex, load_maps
from edgectl.devicemaps.readings import Value
from edgectl.devicemaps.schema import DeviceMap
from edgectl.errors import DeviceError, InputError, Problem
from edgectl.kernels.powerflow import PowerFlow, PowerFlowResult
from edgectl.model.network import SiteNetwork, build_network
from edgectl.sim.faults import DeviceFaults
from edgectl.sim.modbus_server import ModbusSimServer, PtyLink, SimUnit
from edgectl.sim.opcua_server import OpcUaSimServer
from edgectl.sim.physics import (
    SECONDS_PER_DAY,
    Battery,
    BatteryParams,
    PvParams,
    PvPlant,
    RackLoad,
    RackParams,
    WindParams,
    WindTurbine,
)
from edgectl.sim.redfish_server import RedfishServer
from edgectl.sim.scenario import (
    BatteryFault,
    ClearFaults,
    Cloud,
    Cutout,
    Event,
    Fault,
    Firmware,
    Gust,
    Reboot,
    Scenario,
    Scheduled,
    Targets,
    event_to_dict,
    faults_to_dict,
)
from edgectl.sim.state import DeviceState
from edgectl.transport.certs import make_self_signed
from edgectl.transport.modbus import parse_endpoint

__all__ = ["STEP_S", "ServedDevice", "SiteSimulator"]

log = logging.getLogger(__name__)

STEP_S = 0.1
DEFAULT_START_S = 10 * 3600.0  # 10:00 local solar time
DEFAULT_DAY = 172  # about the June solstice
OPCUA_APPLICATION_URI = "urn:edgectl:sim"
_CATCH_UP_STEPS = 50  # steps run back to back before the loop lets the servers answer
# Wall seconds behind schedule before the simulator gives up catching up (and simulated time
# runs slower than asked). A bench whose controller takes its time from the simulator lowers
# it: a stall of the process then pauses simulated time instead of making it jump.
LAG_LIMIT_S = 2.0
_TRUST_POLL_S = 1.0
_EVENTS_KEPT = 50
_NETWORKS_KEPT = 64  # solvers cached by which batteries are pinned and their limits
_TRICKLE_A = 0.5
_RETRY_START_PU = (0.95, 1.05)
_BISECTIONS = 10  # a brownout or derating found to 1/1024 of the operating point
# The bus band the site's converters ride through: above it PV and wind derate on
# overvoltage, below it the racks' power supplies drop out. Wider than any control band,
# so that the controller's violations stay visible.
_OVERVOLTAGE_PU = 1.10
_UNDERVOLTAGE_PU = 0.80

# Which role a map serves for which kind of source (racks: role "rack").
_ROLE_OF_KIND = {"pv": "pv", "wind": "wind", "bess": "bess", "grid": "meter"}
# Setpoint points per role; what is written to any of them is in force until it reverts.
_SETPOINTS = {
    "pv": ("limit_pct", "limit_enable", "limit_w"),
    "bess": ("storage_mode", "discharge_rate_pct", "charge_rate_pct", "charge_limit_w"),
    "wind": ("limit_w",),
    "rack": ("limit_w",),
}
# Operating-state numbers. SunSpec 103.St and 802.State are the standard's enums; the
# DCB-500 numbers are its manual's (firmware_configs/modbus/voltaris); the turbine's are
# this simulator's own (docs/simulator.md).
_PV_STATUS = {
    "sunspec": {"sleeping": 2, "mppt": 4, "limited": 5},
    "voltaris-dcb500": {"sleeping": 1, "mppt": 3, "limited": 5},
}
_BESS_STATE = {"connected": 3, "soc_protection": 5, "fault": 99}
_WIND_STATUS = {
    WindTurbine.IDLE: 1,
    WindTurbine.RUNNING: 2,
    WindTurbine.LIMITED: 3,
    WindTurbine.STORM: 4,
}


# Droop current limits of the batteries on droop: (source id, most charging A, most
# discharging A), in network order.
_Limits = tuple[tuple[str, float, float], ...]


@dataclass(frozen=True)
class ServedDevice:
    """Where one device is served, for the operator."""

    device_id: str
    protocol: str
    url: str
    profile: str
    detail: str = ""

    def line(self) -> str:
        text = f"{self.device_id:<10} {self.protocol:<10} {self.url}  {self.profile}"
        return f"{text}  {self.detail}" if self.detail else text


@dataclass
class _Link:
    """A device, its served state, and the source or rack it measures."""

    index: int  # in the site's [[device]] list
    device: Device
    state: DeviceState
    role: str  # pv | wind | bess | rack | "" (nothing to measure)
    target: str | None
    firmware: str
    endpoint: _Endpoint | None = None
    hb_value: Value | None = None
    hb_changed_s: float | None = None
    rebooting: object | None = None
    fault_token: object | None = None

    @property
    def setpoints(self) -> tuple[str, ...]:
        points = self.state.device_map.points
        return tuple(p for p in _SETPOINTS.get(self.role, ()) if p in points)


@dataclass
class _Endpoint:
    """One listening server and the devices behind it."""

    kind: str  # modbus-tcp | modbus-rtu | opcua | redfish
    host: str
    port: int
    path: str  # OPC UA path; RTU: the device path the site names
    links: list[_Link] = field(default_factory=list)
    server: ModbusSimServer | OpcUaSimServer | RedfishServer | None = None
    pty: PtyLink | None = None
    client_path: str = ""  # RTU: where a client opens the line
    symlink: Path | None = None
    rtu: dict[str, Any] = field(default_factory=dict)
    parity: str = "N"  # RTU: as the site names it

    @property
    def url(self) -> str:
        if self.kind == "modbus-rtu":
            return self.client_path or self.path
        if self.kind == "opcua":
            return f"opc.tcp://{self.host}:{self.port}{self.path}"
        if self.kind == "redfish":
            return f"http://{self.host}:{self.port}"
        return f"{self.host}:{self.port}"


class SiteSimulator:
    """A site's sources, racks, bus and devices, simulated and served on loopback."""

    def __init__(
        self,
        site: Site,
        *,
        site_file: str = "site",
        maps: MapIndex | None = None,
        speed: float = 1.0,
        step_s: float = STEP_S,
        start_time_s: float = DEFAULT_START_S,
        day_of_year: int = DEFAULT_DAY,
        seed: int = 0,
        initial_soc: float = 0.6,
        state_dir: Path | None = None,
        insecure_opcua: bool = False,
        host: str = "127.0.0.1",
        redfish_revert_s: float = 60.0,
        wind_revert_s: float = 60.0,
        heartbeat_timeout_s: float = 60.0,
        lag_limit_s: float = LAG_LIMIT_S,
    ) -> None:
        if not (speed > 0 and math.isfinite(speed)):
            raise ValueError(f"speed must be a positive number, got {speed}")
        if not (step_s > 0 and math.isfinite(step_s)):
            raise ValueError(f"step_s must be a positive number, got {step_s}")
        if not 1 <= day_of_year <= 365:
            raise ValueError(f"day_of_year must be 1..365, got {day_of_year}")
        self.site = site
        self.site_file = site_file
        self.maps = maps if maps is not None else load_maps()
        self.speed = float(speed)
        self.step_s = float(step_s)
        self.start_time_s = float(start_time_s) % SECONDS_PER_DAY
        self.day_of_year = day_of_year
        self.seed = seed
        self.host = host
        self.insecure_opcua = insecure_opcua
        self.redfish_revert_s = redfish_revert_s
        self.wind_revert_s = wind_revert_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.lag_limit_s = lag_limit_s
        self.t_s = 0.0
        self.steps = 0
        self.lagging = False  # the wall clock outran the physics at least once

        self.pv: dict[str, PvPlant] = {}
        self.wind: dict[str, WindTurbine] = {}
        self.bess: dict[str, Battery] = {}
        self.racks: dict[str, RackLoad] = {}
        self._build_physics(initial_soc)

        self._source_cfg = {s.id: s for s in site.sources}
        self._rack_cfg = {r.id: r for r in site.racks}
        self.links: dict[str, _Link] = {}
        self._build_devices()
        # By (role, target): a rack and a source may share an id.
        self._by_target = {
            (link.role, link.target): link for link in self.links.values() if link.target
        }

        self._networks: dict[tuple[frozenset[str], _Limits], SiteNetwork] = {}
        self.source_p_w: dict[str, float] = {}
        self.rack_p_w: dict[str, float] = {}
        self.bus_v: dict[str, float] = {b.id: site.bus_v_nominal_v(b) for b in site.buses}
        self.battery_mode: dict[str, str] = {}
        self.powerflow: dict[str, Any] = {"converged": True, "message": "", "brownout": 1.0}

        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._sequence = itertools.count()
        self._pending: list[Scheduled] = []
        self.events: list[dict[str, Any]] = []  # the latest events applied, newest last

        self._state_dir = state_dir
        self._own_state_dir = False
        self.opcua_certificate: Path | None = None
        self.opcua_trust_dir: Path | None = None
        self._task: asyncio.Task[None] | None = None
        self._trust_task: asyncio.Task[None] | None = None
        self._started = False

        self._settle()

    def _rng(self, name: str) -> random.Random:
        # A string seed is hashed with SHA-512 by `random`: the same on every run and host.
        return random.Random(f"{self.seed}:{name}")

    def _build_physics(self, initial_soc: float) -> None:
        site = self.site
        for src in site.sources:
            rng = self._rng(src.id)
            lifetime_h = rng.uniform(500.0, 3000.0)  # what the energy counter already holds
            if src.kind == "pv":
                params = PvParams(
                    p_rated_w=src.p_max_w,
                    latitude_deg=site.site.latitude_deg,
                    day_of_year=self.day_of_year,
                    start_of_day_s=self.start_time_s,
                )
                self.pv[src.id] = PvPlant(params, e_wh=src.p_max_w * lifetime_h)
            elif src.kind == "wind":
                wind = WindParams(p_rated_w=src.p_max_w, mean_mps=rng.uniform(8.0, 10.0))
                self.wind[src.id] = WindTurbine(wind, rng, e_wh=src.p_max_w * lifetime_h)
            elif src.kind == "bess":
                assert src.capacity_wh is not None and src.p_charge_max_w is not None  # schema
                battery = BatteryParams(
                    capacity_wh=src.capacity_wh,
                    p_discharge_max_w=src.p_max_w,
                    p_charge_max_w=src.p_charge_max_w,
                )
                self.bess[src.id] = Battery(battery, soc=initial_soc)
        for rack in site.racks:
            rng = self._rng(rack.id)
            self.racks[rack.id] = RackLoad(
                RackParams.for_rack(rack.p_max_w, rack.ramp_w_per_s, rng), rng
            )

    def _build_devices(self) -> None:
        site = self.site
        # device id -> (the role its map must have, what it measures, that thing's name)
        measured: dict[str, tuple[str, str, str]] = {}
        for src in site.sources:
            if src.device is not None:
                role = _ROLE_OF_KIND[src.kind]
                measured[src.device] = (role, src.id, f'{src.kind} source "{src.id}"')
        for rack in site.racks:
            if rack.device is not None:
                measured[rack.device] = ("rack", rack.id, f'rack "{rack.id}"')
        problems: list[Problem] = []
        by_address: dict[tuple[str, str], _Endpoint] = {}
        for i, device in enumerate(site.devices):
            where = f"device[{i}]"
            try:
                maps = self.maps.for_profile(device.profile)
            except KeyError as exc:
                problems.append(Problem(self.site_file, f"{where}.profile", str(exc.args[0])))
                continue
            device_map, firmware = _first_map(maps)
            role, target, what = measured.get(device.id, ("", "", ""))
            if target and role != device_map.map.role:
                problems.append(
                    Problem(
                        self.site_file,
                        f"{where}.profile",
                        f'profile "{device.profile}" is a {device_map.map.role} map, but device '
                        f'"{device.id}" measures {what} (a {role} map is needed)',
                    )
                )
                continue
            state = DeviceState(device.id, device_map, clock=self.now)
            link = _Link(i, device, state, role, target or None, firmware)
            try:
                endpoint = self._endpoint_of(device, device_map, by_address)
            except ValueError as exc:
                problems.append(Problem(self.site_file, f"{where}.endpoint", str(exc)))
                continue
            endpoint.links.append(link)
            link.endpoint = endpoint
            self.links[device.id] = link
        if problems:
            raise InputError(problems)

    def _endpoint_of(
        self,
        device: Device,
        device_map: DeviceMap,
        by_address: dict[tuple[str, str], _Endpoint],
    ) -> _Endpoint:
        protocol = device.protocol
        wanted = {"modbus-tcp": ("sunspec", "modbus"), "modbus-rtu": ("sunspec", "modbus")}.get(
            protocol, (protocol,)
        )
        if device_map.map.protocol not in wanted:
            raise ValueError(
                f'profile "{device.profile}" is a {device_map.map.protocol} map; '
                f"it cannot be served over {protocol}"
            )
        if protocol == "modbus-rtu":
            parsed = parse_endpoint(device.endpoint)
            if not parsed.is_serial:
                raise ValueError(f"{device.endpoint!r}: expected a serial device path")
            address = ("rtu", parsed.path)
            found = by_address.get(address)
            if found is None:
                found = _Endpoint("modbus-rtu", "", 0, parsed.path)
                serial = parsed.serial
                assert serial is not None  # is_serial
                # A pseudo-terminal carries bytes whatever the line settings, and parity
                # cannot be set on one: the server takes the baud rate only.
                found.rtu = {"baudrate": serial.baudrate}
                found.parity = serial.parity
                by_address[address] = found
            return found
        # Served on self.host whatever host the site names: this is a bench.
        _, port, path = _host_port_path(protocol, device.endpoint)
        address = ("tcp", str(port)) if port != 0 else ("tcp", f"0:{protocol}")
        found = by_address.get(address)
        if found is None:
            found = _Endpoint(protocol, self.host, port, path)
            by_address[address] = found
        elif found.kind != protocol:
            other = found.links[0].device.id
            raise ValueError(
                f"port {port} is already served for {found.kind} device {other!r}; "
                f"one port cannot serve {protocol} too"
            )
        elif protocol == "opcua" and path and path != found.path:
            raise ValueError(f"port {port} already serves OPC UA at path {found.path!r}")
        return found

    def targets(self) -> Targets:
        """What events may name, for scenario files and the control API."""
        return Targets(
            sources={s.id: s.kind for s in self.site.sources},
            devices={d: frozenset(link.state.device_map.points) for d, link in self.links.items()},
            device_source={
                d: link.target
                for d, link in self.links.items()
                if link.target is not None and link.role != "rack"
            },
        )

    def now(self) -> float:
        """Simulated seconds since the start: the clock of every DeviceState."""
        return self.t_s

    @property
    def time_of_day_s(self) -> float:
        return (self.start_time_s + self.t_s) % SECONDS_PER_DAY

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The physics loop once started; it ends only by stop() or by an error."""
        return self._task

    async def start(self) -> None:
        """Listen on every endpoint and start the physics loop."""
        if self._started:
            return
        self._started = True
        try:
            if any(ep.kind == "opcua" for ep in self.endpoints_in_use()):
                self._prepare_opcua_pki()
            for endpoint in self.endpoints_in_use():
                await self._start_endpoint(endpoint)
        except BaseException:
            await self.stop()
            raise
        self._task = asyncio.create_task(self._run(), name="edgectl-sim")
        if any(ep.kind == "opcua" for ep in self.endpoints_in_use()):
            self._trust_task = asyncio.create_task(self._watch_trust(), name="edgectl-sim-trust")

    async def stop(self) -> None:
        """Stop the loop and every server; remove what start() created."""
        for task in (self._task, self._trust_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._task = self._trust_task = None
        for endpoint in self.endpoints_in_use():
            await self._stop_endpoint(endpoint)
        if self._own_state_dir and self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)
            self._state_dir = None
            self._own_state_dir = False

    async def __aenter__(self) -> SiteSimulator:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    def endpoints_in_use(self) -> list[_Endpoint]:
        seen: dict[int, _Endpoint] = {}
        for link in self.links.values():
            if link.endpoint is not None:
                seen.setdefault(id(link.endpoint), link.endpoint)
        return list(seen.values())

    def served(self) -> list[ServedDevice]:
        """Where each device is served (bound ports once started), in site order."""
        out = []
        for link in sorted(self.links.values(), key=lambda k: k.index):
            endpoint = link.endpoint
            assert endpoint is not None  # every link has one
            device = link.device
            detail = []
            if endpoint.kind in ("modbus-tcp", "modbus-rtu"):
                detail.append(f"unit {device.unit}")
            if endpoint.kind == "redfish":
                detail.append(f"chassis {device.id}")
            if endpoint.kind == "opcua":
                detail.append(self._opcua_detail(device.security == "none"))
            if endpoint.kind == "modbus-rtu" and endpoint.symlink is None:
                detail.append(f"(the site names {endpoint.path}; open {endpoint.client_path})")
            if endpoint.kind == "modbus-rtu" and endpoint.parity != "N":
                detail.append("(a pseudo-terminal takes no parity: open it with parity N)")
            if link.target is None:
                detail.append("(measures nothing in the site: no values)")
            out.append(
                ServedDevice(
                    device.id, device.protocol, endpoint.url, device.profile, "  ".join(detail)
                )
            )
        return out

    def _opcua_detail(self, site_says_none: bool) -> str:
        secure = (
            f"Basic256Sha256 SignAndEncrypt, server certificate {self.opcua_certificate}, "
            f"trusted client certificates in {self.opcua_trust_dir}/"
        )
        if self.insecure_opcua or site_says_none:
            why = "--insecure-opcua" if self.insecure_opcua else 'the site says security = "none"'
            return f"INSECURE: NoSecurity endpoint open to anyone on this host ({why}); " + secure
        return secure

    def schedule(self, scenario: Scenario) -> None:
        """Apply the scenario's events when simulated time reaches them."""
        for item in scenario.events:
            problem = self.check(item.event)
            if problem is not None:
                raise InputError([Problem(scenario.file, item.where, problem)])
        self._pending.extend(scenario.events)
        self._pending.sort(key=lambda s: s.at_s)

    async def run_until(self, t_s: float) -> None:
        """Step (and apply scheduled events) until simulated time reaches t_s, as fast as
        the machine allows: for tests and replays, with or without servers."""
        while self.t_s + self.step_s <= t_s + 1e-9:
            await self._apply_due()
            self.step()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        wall0, sim0 = loop.time(), self.t_s
        while True:
            target = sim0 + (loop.time() - wall0) * self.speed
            done = 0
            while self.t_s + self.step_s <= target + 1e-9 and done < _CATCH_UP_STEPS:
                await self._apply_due()
                self.step()
                done += 1
            behind_s = (target - self.t_s) / self.speed
            if behind_s > self.lag_limit_s:
                if not self.lagging:
                    log.warning(
                        "simulator: the physics cannot keep up with speed %g on this machine; "
                        "simulated time now runs slower than asked",
                        self.speed,
                    )
                self.lagging = True
                wall0, sim0 = loop.time(), self.t_s
            next_due = wall0 + (self.t_s + self.step_s - sim0) / self.speed
            await asyncio.sleep(max(0.0, next_due - loop.time()))

    async def _apply_due(self) -> None:
        while self._pending and self._pending[0].at_s <= self.t_s + 1e-9:
            item = self._pending.pop(0)
            try:
                await self.apply(item.event)
            except (InputError, DeviceError, OSError, ValueError) as exc:
                log.error("scenario %s at %.1f s: %s", item.where, item.at_s, exc)

    def step(self) -> None:
        """Advance the site by one step of simulated time."""
        dt = self.step_s
        self.steps += 1
        self.t_s = self.steps * dt  # not a running sum: no drift over a long run
        self._fire_timers()
        for link in self.links.values():
            self._expire(link)
        source_p: dict[str, float] = {}
        for sid, pv in self.pv.items():
            source_p[sid] = pv.step(dt, self._limit_of("pv", sid))
        for sid, turbine in self.wind.items():
            source_p[sid] = turbine.step(dt, self._limit_of("wind", sid))
        rack_p = {
            rid: rack.step(dt, self._limit_of("rack", rid)) for rid, rack in self.racks.items()
        }
        battery_p = self._solve(source_p, rack_p)
        models: list[tuple[str, PvPlant | WindTurbine]] = [*self.pv.items(), *self.wind.items()]
        for sid, model in models:
            # What a derating on overvoltage held back was never made: off the counter.
            model.e_wh -= max(0.0, source_p[sid] - self.source_p_w[sid]) * dt / 3600.0
        for bid, battery in self.bess.items():
            self.source_p_w[bid] = battery.step(dt, battery_p.get(bid, 0.0))
        self._publish()

    def _settle(self) -> None:
        """The operating point at time 0, before any step."""
        source_p = {sid: pv.p_w for sid, pv in self.pv.items()}
        source_p.update({sid: t.p_w for sid, t in self.wind.items()})
        rack_p = {rid: rack.p_w for rid, rack in self.racks.items()}
        battery_p = self._solve(source_p, rack_p)
        self.source_p_w.update(battery_p)
        self._publish()

    def _solve(self, source_p: dict[str, float], rack_p: dict[str, float]) -> dict[str, float]:
        """Solve the bus; the power each battery delivers (W, discharge positive).

        A battery with a setpoint runs pinned at it (within what its BMS allows now), a
        tripped one pinned at 0; the others hold the bus by droop within the currents
        their BMS allows now: a full battery still discharges when the bus sags, an
        empty one still charges when it swells."""
        droop_ids = [s.id for s in self.site.sources if s.is_droop]
        pinned: dict[str, float] = {}
        currents: dict[str, tuple[float, float]] = {}
        for bid, battery in self.bess.items():
            setpoint, charge_limit = self._battery_setpoint(bid)
            low, high = battery.limits_w(charge_limit, self.step_s)
            if battery.faulted:
                pinned[bid] = 0.0
            elif setpoint is not None:
                pinned[bid] = min(high, max(low, setpoint))
            currents[bid] = self._droop_currents(bid, low, high)
        if len(pinned) == len(droop_ids):
            # Something must hold the bus: the first battery that is not tripped keeps
            # droop and ignores its setpoint.
            holder = next((b for b in pinned if not self.bess[b].faulted), None)
            if holder is None:
                return self._bus_down(source_p, rack_p)
            del pinned[holder]
        limits = tuple((b, *currents[b]) for b in self.bess if b not in pinned)
        net, result = self._solve_once(source_p, rack_p, pinned, limits)
        brownout = curtailment = 1.0
        if not self._acceptable(net, result):
            carried = self._largest_carried(source_p, rack_p, pinned, limits)
            if carried is None:
                return self._bus_down(source_p, rack_p)
            net, result, source_p, rack_p, surplus, factor = carried
            if surplus:
                curtailment = factor
            else:
                brownout = factor
        self.bus_v = {b.id: float(result.v_v[i]) for i, b in enumerate(self.site.buses)}
        self.source_p_w.update(source_p)
        self.rack_p_w = rack_p
        delivered = dict(pinned)
        saturated: set[str] = set()
        droop = zip(net.droop_sources, result.droop_p_w, result.droop_saturated, strict=True)
        for src, p, at_limit in droop:
            value = float(p) + 0.0  # no -0.0
            if src.id in self.bess:
                delivered[src.id] = value
                if at_limit:
                    saturated.add(src.id)
            else:
                self.source_p_w[src.id] = value
        for bid, battery in self.bess.items():
            if battery.faulted:
                self.battery_mode[bid] = "fault"
            elif bid in pinned:
                self.battery_mode[bid] = "setpoint"
            else:
                self.battery_mode[bid] = "droop_limited" if bid in saturated else "droop"
        self.powerflow = {
            "converged": True,
            "message": result.message,
            "brownout": brownout,
            "curtailment": curtailment,
            "collapse_margin": float(result.collapse_margin),
        }
        return delivered

    def _droop_currents(self, bid: str, low_w: float, high_w: float) -> tuple[float, float]:
        """(most charging, most discharging) current of a battery on droop, in A, from what
        its BMS allows now (W) and its converter's current limit."""
        source = self._source_cfg[bid]
        assert source.v_ref_v is not None and source.i_max_a is not None  # schema: bess
        charge = min(source.i_max_a, -low_w / source.v_ref_v)
        discharge = min(source.i_max_a, high_w / source.v_ref_v)
        # At least a trickle each way: a droop converter limited to exactly 0 A has its
        # kink at v_ref_v, where the solver's flat start sits, and no slope to solve with.
        # Rounded: the networks are cached by these limits.
        return -round(max(_TRICKLE_A, charge), 1), round(max(_TRICKLE_A, discharge), 1)

    def _acceptable(self, net: SiteNetwork, result: PowerFlowResult) -> bool:
        """A solution the site can run at: converged, and every bus inside the converters'
        protection band (beyond it PV and wind derate, or the racks' supplies drop out)."""
        if not result.converged:
            return False
        v_pu = result.v_v / net.powerflow.topology.v_nominal_v
        return bool(((v_pu >= _UNDERVOLTAGE_PU) & (v_pu <= _OVERVOLTAGE_PU)).all())

    def _solve_once(
        self,
        source_p: dict[str, float],
        rack_p: dict[str, float],
        pinned: dict[str, float],
        limits: _Limits,
        near: npt.NDArray[np.float64] | None = None,
    ) -> tuple[SiteNetwork, PowerFlowResult]:
        """Solve on the network with these batteries pinned and these droop limits. With
        `near` (bus voltages of a solution close by), one Newton start from there only."""
        key = (frozenset(pinned), limits)
        net = self._networks.get(key)
        if net is None:
            if len(self._networks) >= _NETWORKS_KEPT:
                self._networks.clear()
            net = build_network(self.site, pinned=dict.fromkeys(pinned, 0.0))
            by_id = {bid: (low, high) for bid, low, high in limits}
            topology = net.powerflow.topology
            i_min = topology.droop_i_min_a.copy()
            i_max = topology.droop_i_max_a.copy()
            for k, src in enumerate(net.droop_sources):
                if src.id in by_id:
                    i_min[k], i_max[k] = by_id[src.id]
            topology = dataclasses.replace(topology, droop_i_min_a=i_min, droop_i_max_a=i_max)
            net = dataclasses.replace(net, powerflow=PowerFlow(topology))
            self._networks[key] = net
        injections = net.injections({**source_p, **pinned}, rack_p)
        if near is not None:
            return net, net.powerflow.solve(injections, v_start=near)
        result = net.powerflow.solve(injections)
        if not result.converged:
            # Between the droop converters' set points the bus can sit where every one of
            # them is at a current limit (a battery held at a trickle, a tie that only
            # imports below its v_ref_v): no slope there for Newton to follow from a flat
            # start. Start from a sagged bus, then a swollen one.
            v_nominal = net.powerflow.topology.v_nominal_v
            for pu in _RETRY_START_PU:
                retry = net.powerflow.solve(injections, v_start=v_nominal * pu)
                if retry.converged:
                    return net, retry
        return net, result

    def _largest_carried(
        self,
        source_p: dict[str, float],
        rack_p: dict[str, float],
        pinned: dict[str, float],
        limits: _Limits,
    ) -> (
        tuple[SiteNetwork, PowerFlowResult, dict[str, float], dict[str, float], bool, float] | None
    ):
        """The bus cannot carry this operating point. With more supply than the droop
        converters can absorb, PV and wind converters derate on the bus's overvoltage;
        with more load than they can supply, the racks brown out. Either way, find the
        largest share of that side the bus carries. None: not even a balanced bus solves."""
        supply = sum(source_p.values())
        load = sum(rack_p.values())
        held = sum(pinned.values())
        surplus = supply + held > load
        total = supply if surplus else load
        if total <= 0:
            return None

        def at(
            share: float, near: npt.NDArray[np.float64] | None = None
        ) -> tuple[SiteNetwork, PowerFlowResult, dict[str, float], dict[str, float]]:
            sources = {k: v * share for k, v in source_p.items()} if surplus else source_p
            racks = rack_p if surplus else {k: v * share for k, v in rack_p.items()}
            net, result = self._solve_once(sources, racks, pinned, limits, near)
            return net, result, sources, racks

        # Near the balance point the droop converters carry little: a solution if any is.
        balance = (load - held) / supply if surplus else (supply + held) / load
        best = None
        for margin in (0.99, 1.0, 1.01):
            low = min(1.0, max(0.0, balance * margin))
            best = at(low)
            if self._acceptable(best[0], best[1]):
                break
        if best is None or not self._acceptable(best[0], best[1]):
            return None
        high = 1.0
        for _ in range(_BISECTIONS):
            middle = (low + high) / 2
            near = best[1].v_v
            if not surplus:
                # More load sags the bus, past the dead band the balance point may sit in.
                sagged = best[0].powerflow.topology.v_nominal_v * _RETRY_START_PU[0]
                near = np.minimum(near, sagged)
            trial = at(middle, near)
            if self._acceptable(trial[0], trial[1]):
                low, best = middle, trial
            else:
                high = middle
        return (*best, surplus, low)

    def _bus_down(self, source_p: dict[str, float], rack_p: dict[str, float]) -> dict[str, float]:
        """Nothing holds the bus, or it cannot carry even a browned-out load: it collapses."""
        self.bus_v = {b.id: 0.0 for b in self.site.buses}
        self.source_p_w.update(dict.fromkeys(source_p, 0.0))
        self.source_p_w.update({s.id: 0.0 for s in self.site.sources if s.kind == "grid"})
        self.rack_p_w = dict.fromkeys(rack_p, 0.0)
        for bid, battery in self.bess.items():
            self.battery_mode[bid] = "fault" if battery.faulted else "down"
        self.powerflow = {
            "converged": False,
            "message": "the bus is down: no converter holds its voltage",
            "brownout": 0.0,
        }
        return dict.fromkeys(self.bess, 0.0)

    def _written(self, link: _Link, point: str) -> float | None:
        write = link.state.writes.get(point)
        if write is None or isinstance(write.value, str):
            return None
        return float(write.value)

    def _limit_of(self, role: str, target: str) -> float | None:
        """The power limit (W) written for a pv, wind or rack target, if any is in force."""
        link = self._by_target.get((role, target))
        if link is None or link.state.faults.ignore_setpoints:
            return None
        points = link.state.device_map.points
        if role == "pv" and "limit_pct" in points:
            if self._written(link, "limit_enable") != 1:
                return None
            pct = self._written(link, "limit_pct")
            rated = self._source_cfg[target].p_max_w
            return None if pct is None else pct / 100.0 * rated
        return self._written(link, "limit_w")

    def _battery_setpoint(self, bid: str) -> tuple[float | None, float | None]:
        """(power setpoint or None for droop, charge limit or None) of a battery."""
        link = self._by_target.get(("bess", bid))
        if link is None:
            return None, None
        charge_limit = self._written(link, "charge_limit_w")
        mode = int(self._written(link, "storage_mode") or 0)
        if mode & 0b11 == 0:
            return None, charge_limit
        battery = self.bess[bid].params
        p = 0.0
        if mode & 0b10:
            rate = self._written(link, "discharge_rate_pct")
            p += (100.0 if rate is None else rate) / 100.0 * battery.p_discharge_max_w
        if mode & 0b01:
            # InWRte is a share of WChaMax: the written charge limit, else the rating.
            rate = self._written(link, "charge_rate_pct")
            base = battery.p_charge_max_w if charge_limit is None else charge_limit
            p -= (100.0 if rate is None else rate) / 100.0 * base
        return p, charge_limit

    def _revert_s(self, link: _Link) -> float:
        if link.role == "pv":
            return self._written(link, "limit_revert_s") or 0.0
        if link.role == "bess":
            return self._written(link, "rate_revert_s") or 0.0
        if link.role == "wind":
            return self.wind_revert_s
        if link.role == "rack":
            return self.redfish_revert_s
        return 0.0

    def _expire(self, link: _Link) -> None:
        """Drop setpoints whose revert time passed without a refresh."""
        state = link.state
        heartbeat = state.writes.get("heartbeat")
        if heartbeat is not None and (
            link.hb_changed_s is None or heartbeat.value != link.hb_value
        ):
            link.hb_value, link.hb_changed_s = heartbeat.value, heartbeat.t_s
        held = [p for p in link.setpoints if p in state.writes]
        reason = ""
        silent_s = None if link.hb_changed_s is None else self.t_s - link.hb_changed_s
        if link.role == "bess" and silent_s is not None and silent_s > self.heartbeat_timeout_s:
            reason = f"heartbeat unchanged for {self.heartbeat_timeout_s:g} s"
            held.append("heartbeat")
        if held and not reason:
            refreshed = max(state.writes[p].t_s for p in held)
            if link.role == "wind" and link.hb_changed_s is not None:
                refreshed = max(refreshed, link.hb_changed_s)
            revert_s = self._revert_s(link)
            if revert_s > 0 and self.t_s - refreshed > revert_s:
                reason = f"not refreshed within {revert_s:g} s"
        if not reason or not held:
            return
        for point in held:
            state.writes.pop(point, None)
            state.values.pop(point, None)
        if "heartbeat" in held:
            link.hb_value = link.hb_changed_s = None
        log.info("%s: setpoints %s reverted: %s", state.device_id, ", ".join(held), reason)

    def _publish(self) -> None:
        for link in self.links.values():
            self._publish_link(link)

    def _publish_link(self, link: _Link) -> None:
        values = self._measurements(link)
        state = link.state
        for name in state.device_map.points:
            if name in state.writes:
                continue
            value = values.get(name)
            if value is None:
                state.values.pop(name, None)
            else:
                state.values[name] = value

    def _measurements(self, link: _Link) -> dict[str, Value]:
        """What a device measures now, and the defaults of its setpoints, by point name."""
        target = link.target
        if target is None:
            return {}
        if link.role == "rack":
            rack = self._rack_cfg[target]
            return {
                "p_w": self.rack_p_w.get(target, 0.0),
                "limit_w": rack.p_max_w,
                "limit_min_w": rack.p_min_w,
                "limit_max_w": rack.p_max_w,
            }
        source = self._source_cfg[target]
        v = self.bus_v.get(source.bus, 0.0)
        p = self.source_p_w.get(target, 0.0)
        i = p / v if v > 1.0 else 0.0
        if link.role == "pv":
            pv = self.pv[target]
            status_codes = _PV_STATUS.get(link.device.profile)
            if status_codes is None and link.state.device_map.map.protocol == "sunspec":
                status_codes = _PV_STATUS["sunspec"]
            status = "limited" if pv.limited else ("mppt" if pv.available_w > 0 else "sleeping")
            out: dict[str, Value] = {
                "p_w": p,
                "e_wh": pv.e_wh,
                "v_v": v,
                "i_a": i,
                "p_rated_w": source.p_max_w,
                "temp_c": 25.0 + 30.0 * p / source.p_max_w if source.p_max_w > 0 else 25.0,
                "limit_pct": 100.0,
                "limit_enable": 0,
                "limit_revert_s": 0,
                "limit_w": source.p_max_w,
            }
            if status_codes is not None:
                out["status"] = status_codes[status]
            return out
        if link.role == "wind":
            turbine = self.wind[target]
            return {
                "p_w": p,
                "e_wh": turbine.e_wh,
                "status": _WIND_STATUS[turbine.state],
                "rotor_rpm": turbine.rotor_rpm,
                "wind_mps": turbine.wind_mps,
                "available_w": turbine.available_w,
                "limit_w": source.p_max_w,
                "heartbeat": 0,
            }
        if link.role == "meter":
            return {"p_w": p, "v_v": v, "i_a": i}
        if link.role == "bess":
            battery = self.bess[target]
            params = battery.params
            if battery.faulted:
                state = _BESS_STATE["fault"]
            elif battery.soc <= params.soc_empty or battery.soc >= params.soc_full:
                state = _BESS_STATE["soc_protection"]
            else:
                state = _BESS_STATE["connected"]
            return {
                "soc": 100.0 * battery.soc,
                "soh": 98.0,
                "p_w": p,
                "v_v": v,
                "i_a": i,
                "state": state,
                "e_rated_wh": params.capacity_wh,
                "p_charge_max_w": params.p_charge_max_w,
                "p_discharge_max_w": params.p_discharge_max_w,
                "heartbeat": 0,
                "charge_limit_w": params.p_charge_max_w,
                "storage_mode": 0,
                "discharge_rate_pct": 100.0,
                "charge_rate_pct": 100.0,
                "rate_revert_s": 0,
            }
        return {}

    def check(self, event: Event) -> str | None:
        """Why `event` cannot be applied to this site, or None."""
        if isinstance(event, Firmware):
            link = self.links[event.device]
            if link.device.protocol not in ("modbus-tcp", "modbus-rtu"):
                return (
                    f"device {event.device!r} is served over {link.device.protocol}; a firmware "
                    "change is simulated for Modbus devices only"
                )
            try:
                Version(event.version)
                self.maps.select(link.device.profile, event.version, event.device)
            except InvalidVersion:
                return f"version {event.version!r} is not a version number"
            except DeviceError as exc:
                return str(exc)
        return None

    async def apply(self, event: Event) -> None:
        """Make `event` happen now; InputError if it cannot happen on this site."""
        problem = self.check(event)
        if problem is not None:
            raise InputError([Problem("event", "", problem)])
        if isinstance(event, Cloud):
            for sid in event.sources:
                self.pv[sid].cloud(event.depth, event.ramp_s, event.duration_s)
        elif isinstance(event, Gust):
            for sid in event.sources:
                self.wind[sid].gust(event.delta_mps, event.rise_s, event.duration_s)
        elif isinstance(event, Cutout):
            for sid in event.sources:
                self.wind[sid].storm(event.duration_s)
        elif isinstance(event, BatteryFault):
            for sid in event.sources:
                self.bess[sid].fault(event.duration_s)
        elif isinstance(event, Reboot):
            self.reboot(event.device, event.duration_s)
        elif isinstance(event, Firmware):
            await self.change_firmware(event.device, event.version)
        elif isinstance(event, Fault):
            self.set_faults(event.device, event.faults, event.duration_s)
        elif isinstance(event, ClearFaults):
            self.clear_faults(event.device)
        self.events.append({"t_s": self.t_s, **event_to_dict(event)})
        del self.events[:-_EVENTS_KEPT]
        log.info("event at %.1f s: %s", self.t_s, event_to_dict(event))

    def set_faults(
        self, device_id: str, faults: DeviceFaults, duration_s: float | None = None
    ) -> None:
        """Give a device these faults (replacing its others), for duration_s if given."""
        link = self.links[device_id]
        current = link.state.faults
        # Mutated in place: the servers hold the DeviceState, not a copy of its faults.
        current.offline, current.timeout = faults.offline, faults.timeout
        current.garbage, current.not_implemented = faults.garbage, faults.not_implemented
        current.stuck, current.latency_s = faults.stuck, faults.latency_s
        current.ignore_setpoints = faults.ignore_setpoints
        current.points = set(faults.points)
        token = link.fault_token = object()
        if duration_s is not None:

            def clear() -> None:
                if link.fault_token is token:
                    link.state.faults.clear()

            self._after(duration_s, clear)

    def clear_faults(self, device_id: str) -> None:
        link = self.links[device_id]
        link.fault_token = None
        link.state.faults.clear()

    def reboot(self, device_id: str, duration_s: float = 0.0) -> None:
        """The device restarts: setpoints cleared, silent for duration_s while it boots."""
        link = self.links[device_id]
        link.state.reboot()
        link.hb_value = link.hb_changed_s = None
        self._publish_link(link)
        if duration_s > 0:
            link.state.faults.offline = True
            token = link.rebooting = object()

            def booted() -> None:
                if link.rebooting is token:
                    link.state.faults.offline = False
                    link.rebooting = None

            self._after(duration_s, booted)

    async def change_firmware(self, device_id: str, version: str) -> None:
        """A Modbus device comes back from an update reporting `version`, serving its map."""
        link = self.links[device_id]
        device_map = self.maps.select(link.device.profile, version, device_id)
        link.firmware = version
        link.state.device_map = device_map
        link.state.reboot()
        link.hb_value = link.hb_changed_s = None
        self._publish_link(link)
        endpoint = link.endpoint
        if endpoint is not None and endpoint.server is not None:
            await self._stop_endpoint(endpoint, keep_line=True)
            await self._start_endpoint(endpoint)

    def _after(self, delay_s: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (self.t_s + delay_s, next(self._sequence), action))

    def _fire_timers(self) -> None:
        while self._timers and self._timers[0][0] <= self.t_s + 1e-9:
            _, _, action = heapq.heappop(self._timers)
            action()

    def _prepare_opcua_pki(self) -> None:
        if self._state_dir is None:
            self._state_dir = Path(tempfile.mkdtemp(prefix="edgectl-sim-"))
            self._own_state_dir = True
        base = self._state_dir / "opcua"
        trust = base / "trusted"
        trust.mkdir(parents=True, exist_ok=True)
        cert, key = base / "server.der", base / "server.pem"
        if not (cert.is_file() and key.is_file()):
            # Kept across runs in a given --state-dir, so clients can keep it pinned.
            make_self_signed(
                cert,
                key,
                application_uri=OPCUA_APPLICATION_URI,
                common_name="edgectl simulator",
                hosts=list(
                    dict.fromkeys((socket.gethostname(), "localhost", "127.0.0.1", self.host))
                ),
                client=False,
            )
        self.opcua_certificate = cert
        self.opcua_trust_dir = trust

    async def _start_endpoint(self, endpoint: _Endpoint) -> None:
        try:
            if endpoint.kind == "modbus-tcp":
                server = ModbusSimServer(self._units(endpoint), seed=self.seed)
                endpoint.server = server
                try:
                    endpoint.port = await server.start_tcp(endpoint.host, endpoint.port)
                except RuntimeError:
                    # pymodbus says only "Could not start listen"; find out why.
                    _probe_bind(endpoint.host, endpoint.port)
                    raise
            elif endpoint.kind == "modbus-rtu":
                await self._start_rtu(endpoint)
            elif endpoint.kind == "opcua":
                assert self.opcua_certificate is not None and self.opcua_trust_dir is not None
                opcua = OpcUaSimServer(
                    [link.state for link in endpoint.links],
                    certificate=self.opcua_certificate,
                    private_key=self.opcua_certificate.with_suffix(".pem"),
                    trusted=[self.opcua_trust_dir],
                    # The site file may say a turbine needs no security; the operator may
                    # open it for every turbine with --insecure-opcua.
                    allow_insecure=self.insecure_opcua
                    or any(link.device.security == "none" for link in endpoint.links),
                    host=endpoint.host,
                    port=endpoint.port,
                    path=endpoint.path,
                    application_uri=OPCUA_APPLICATION_URI,
                )
                endpoint.server = opcua
                await opcua.start()
                endpoint.port = opcua.port
            else:
                redfish = RedfishServer(
                    {link.device.id: link.state for link in endpoint.links},
                    host=endpoint.host,
                    port=endpoint.port,
                )
                endpoint.server = redfish
                endpoint.port = await redfish.start()
        except OSError as exc:
            endpoint.server = None
            link = endpoint.links[0]
            reason = exc.strerror or str(exc)
            raise InputError(
                [
                    Problem(
                        self.site_file,
                        f"device[{link.index}].endpoint",
                        f"cannot serve {endpoint.url}: {reason}",
                    )
                ]
            ) from None
        except (ValueError, RuntimeError) as exc:
            endpoint.server = None
            link = endpoint.links[0]
            raise InputError(
                [
                    Problem(
                        self.site_file,
                        f"device[{link.index}].endpoint",
                        f"cannot serve {endpoint.url}: {exc}",
                    )
                ]
            ) from None

    def _units(self, endpoint: _Endpoint) -> list[SimUnit]:
        return [
            SimUnit(link.state, unit=link.device.unit, firmware=link.firmware)
            for link in endpoint.links
        ]

    async def _start_rtu(self, endpoint: _Endpoint) -> None:
        if endpoint.pty is None:
            endpoint.pty = PtyLink()
            endpoint.client_path = endpoint.pty.b
            wanted = Path(endpoint.path)
            # Where the site's path is free and writable (a bench's /tmp/...), make it lead
            # to the line, so the site file works unchanged.
            if not wanted.exists() and not wanted.is_symlink():
                with contextlib.suppress(OSError):
                    wanted.symlink_to(endpoint.pty.b)
                    endpoint.symlink = wanted
                    endpoint.client_path = str(wanted)
        server = ModbusSimServer(self._units(endpoint), seed=self.seed)
        endpoint.server = server
        await server.start_rtu(endpoint.pty.a, **endpoint.rtu)

    async def _stop_endpoint(self, endpoint: _Endpoint, *, keep_line: bool = False) -> None:
        server, endpoint.server = endpoint.server, None
        if server is not None:
            try:
                await asyncio.wait_for(server.stop(), timeout=3.0)
            except (TimeoutError, OSError, RuntimeError) as exc:
                log.warning("simulator: stopping %s: %r", endpoint.url, exc)
        if keep_line:
            return
        if endpoint.pty is not None:
            endpoint.pty.close()
            endpoint.pty = None
        if endpoint.symlink is not None:
            with contextlib.suppress(OSError):
                endpoint.symlink.unlink()
            endpoint.symlink = None

    async def _watch_trust(self) -> None:
        """Restart the OPC UA servers when the trust list changes: they read it at start."""
        seen = _listing(self.opcua_trust_dir)
        while True:
            await asyncio.sleep(_TRUST_POLL_S)
            now = _listing(self.opcua_trust_dir)
            if now == seen:
                continue
            seen = now
            log.info("simulator: trust list changed; restarting the OPC UA endpoints")
            for endpoint in self.endpoints_in_use():
                if endpoint.kind == "opcua" and isinstance(endpoint.server, OpcUaSimServer):
                    try:
                        await endpoint.server.stop()
                        await endpoint.server.start()
                    except (OSError, ValueError) as exc:
                        log.error("simulator: restarting %s: %s", endpoint.url, exc)

    def snapshot(self) -> dict[str, Any]:
        """The site now, JSON-ready: time, bus, sources, racks, devices with their values."""
        site = self.site
        clock = self.time_of_day_s
        days = int((self.start_time_s + self.t_s) // SECONDS_PER_DAY)
        sources: dict[str, Any] = {}
        for src in site.sources:
            entry: dict[str, Any] = {
                "kind": src.kind,
                "bus": src.bus,
                "p_w": self.source_p_w.get(src.id, 0.0),
                "device": src.device,
            }
            if src.id in self.pv:
                pv = self.pv[src.id]
                entry.update(
                    available_w=pv.available_w,
                    irradiance_w_m2=pv.irradiance_w_m2(),
                    limit_w=pv.limit_w,
                )
            elif src.id in self.wind:
                turbine = self.wind[src.id]
                entry.update(
                    available_w=turbine.available_w,
                    wind_mps=turbine.wind_mps,
                    state=turbine.state,
                    limit_w=turbine.limit_w,
                )
            elif src.id in self.bess:
                battery = self.bess[src.id]
                entry.update(
                    soc=battery.soc,
                    mode=self.battery_mode.get(src.id, "droop"),
                    faulted=battery.faulted,
                )
            sources[src.id] = entry
        racks = {
            r.id: {
                "bus": r.bus,
                "p_w": self.rack_p_w.get(r.id, 0.0),
                "cap_w": self.racks[r.id].cap_w,
                "computing": self.racks[r.id].computing,
                "device": r.device,
            }
            for r in site.racks
        }
        devices: dict[str, Any] = {}
        for device_id, link in self.links.items():
            state = link.state
            endpoint = link.endpoint
            devices[device_id] = {
                "protocol": link.device.protocol,
                "endpoint": endpoint.url if endpoint is not None else "",
                "unit": link.device.unit if link.device.protocol.startswith("modbus") else None,
                "profile": link.device.profile,
                "firmware": link.firmware,
                "measures": link.target,
                "values": dict(state.values),
                "setpoints": {
                    p: {"value": w.value, "age_s": self.t_s - w.t_s}
                    for p, w in state.writes.items()
                },
                "faults": faults_to_dict(state.faults),
            }
        return {
            "site": site.site.id,
            "time_s": self.t_s,
            "time_of_day": _clock_text(clock),
            "day_of_year": (self.day_of_year - 1 + days) % 365 + 1,
            "speed": self.speed,
            "step_s": self.step_s,
            "lagging": self.lagging,
            "buses": {
                b.id: {"v_v": self.bus_v[b.id], "v_pu": self.bus_v[b.id] / site.bus_v_nominal_v(b)}
                for b in site.buses
            },
            "powerflow": dict(self.powerflow),
            "sources": sources,
            "racks": racks,
            "devices": devices,
            "events": list(self.events),
        }


def _first_map(maps: list[DeviceMap]) -> tuple[DeviceMap, str]:
    """The map of a profile a new device starts on (the lowest firmware range) and the
    version it reports."""
    best: tuple[Version, DeviceMap] | None = None
    for device_map in maps:
        floors = re.findall(r"(?:>=|==|~=)\s*([0-9][0-9.]*)", device_map.map.firmware)
        version = min((Version(f) for f in floors), default=Version("1.0"))
        if best is None or version < best[0]:
            best = (version, device_map)
    assert best is not None  # for_profile never answers an empty list
    return best[1], str(best[0])


def _host_port_path(protocol: str, endpoint: str) -> tuple[str, int, str]:
    """host, port and path of "host:port", "opc.tcp://host:port/path" or "http://host:port"."""
    text = endpoint.strip()
    schemes = {"opcua": ("opc.tcp",), "redfish": ("http", "https"), "modbus-tcp": ()}[protocol]
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme not in schemes:
            raise ValueError(f"{endpoint!r}: expected host:port for {protocol}")
        if parts.scheme == "https":
            raise ValueError(f"{endpoint!r}: the simulator serves Redfish over http only")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{endpoint!r}: invalid port") from None
        if port is None or not parts.hostname:
            raise ValueError(f"{endpoint!r}: expected {parts.scheme}://host:port")
        return parts.hostname, port, parts.path if protocol == "opcua" else ""
    parsed = parse_endpoint(text)
    if parsed.is_serial:
        raise ValueError(f"{endpoint!r}: expected host:port")
    if ":" not in text:
        raise ValueError(f"{endpoint!r}: expected host:port (the simulator needs the port)")
    return parsed.host, parsed.port, ""


def _probe_bind(host: str, port: int) -> None:
    """Raise the OSError that binding host:port gives now, if any."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))


def _listing(directory: Path | None) -> str:
    if directory is None or not directory.is_dir():
        return ""
    digest = hashlib.sha256()
    for entry in sorted(directory.iterdir()):
        with contextlib.suppress(OSError):
            stat = entry.stat()
            digest.update(f"{entry.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _clock_text(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
