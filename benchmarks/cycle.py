"""The control cycle: compute time, reaction to a cloud, and the daemon's memory.

Three measurements, each read against a baseline of the same run:

1. compute   Controller.run_cycle on the reference site (856 buses, 800 racks, 53
             sources) and on a site five times its size, every source and rack given a
             device (none is contacted: write, publish and watchdog are no-ops), fed a
             synthetic snapshot that varies every cycle and follows the setpoints written.
             p50, p99 and max of the cycle's own "snapshot to setpoints" figure
             (CycleRecord.compute_s, what the daemon reports) and of the whole call, and
             their ratio to one dispatch-kernel call and one power-flow solve on the same
             site and operating points.
2. reaction  The demo site's simulator and the daemon in one event loop at speed 10 over
             the real protocols, from 09:00; a cloud (depth 0.7, 5 s ramp) 20 s in. Control
             periods from the cloud's start, and from the moment the PV output was down
             10 %, until the tier-3 racks' written limits dropped, and until the written
             rack limits fit within renewables + battery limits + grid cap. Three seeds.
3. memory    `edgectl run` as its own process on the reference site (its 12 devices served
             by a simulator in this process), 10 simulated minutes at time scale 10:
             VmRSS sampled over the run and VmHWM at its end, against a bare
             `import edgectl.app.daemon`.

    python benchmarks/cycle.py [--json] [--quick] [--parts cycle,reaction,memory]
    python benchmarks/cycle.py --parts cycle --profile /tmp/cycle.pstats
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import errno
import gc
import io
import json
import math
import os
import platform
import pstats
import select
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import tracemalloc
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from edgectl.app.clock import Clock
from edgectl.app.daemon import Daemon
from edgectl.app.logs import configure_logging
from edgectl.app.sdnotify import Notifier
from edgectl.app.writers import DEADBAND_SHARE
from edgectl.config.load import load_site
from edgectl.config.site import RENEWABLE_KINDS, Site
from edgectl.control.cycle import RENEWABLE_RESERVE, Controller, CycleRecord, Setpoints
from edgectl.control.snapshot import NO_DEVICE, DeviceHealth, RackView, Snapshot, SourceView
from edgectl.devicemaps.readings import Reading
from edgectl.drivers.roles import CURTAILED, NOT_IN_MAP
from edgectl.kernels import require_compiled
from edgectl.kernels.dispatch import FloatArray, dispatch
from edgectl.model.network import build_network
from edgectl.sim.ports import relocate
from edgectl.sim.scenario import parse_event
from edgectl.sim.site import SiteSimulator

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_SITE = ROOT / "examples" / "reference_site.toml"
DEMO_SITE = ROOT / "edgectl" / "sim" / "sites" / "demo_site.toml"
HOST = "127.0.0.1"

# 1. Compute.
CYCLES = 300
QUICK_CYCLES = 50
# Past STARTING and one whole demand window (estimate.DEMAND_WINDOW_S) before timing.
WARMUP_CYCLES = 20
SCALE = 5
CYCLE_TARGET_P99_S = 0.005
WALL0_S = 1.75e9  # the wall clock of the first cycle: fixed, so that runs compare
# The devices the bench site gives its sources and racks, by kind: protocol and profile.
DEVICE_KINDS = {
    "pv": ("modbus-tcp", "sunspec-pv"),
    "wind": ("opcua", "opcua-wind"),
    "bess": ("modbus-tcp", "sunspec-bess"),
    "rack": ("redfish", "redfish-rack"),
}
# Devices per endpoint (Modbus units behind a gateway, turbines per server, chassis per
# BMC) and the first port of each protocol; nothing listens there, nothing is contacted.
PER_ENDPOINT = {"modbus-tcp": 200, "opcua": 50, "redfish": 20}
PORT_BASE = {"modbus-tcp": 20_000, "opcua": 24_000, "redfish": 26_000}
# The synthetic site: share of its rating each renewable can give (drifting a little
# every cycle), what each rack's job would draw, and how close to its cap a rack runs.
AVAILABLE_SHARE = (0.45, 0.75)
AVAILABLE_DRIFT = 0.01
RACK_WANT_SHARE = (0.85, 1.0)
RACK_DRAW_SHARE = (0.97, 1.0)
SOC_START = (0.55, 0.65)
SOC_BAND = 0.05  # SOC kept this far inside soc_min..soc_max
BUS_V_NOISE_V = 1.0

# 2. Reaction.
REACTION_SPEED = 10.0
REACTION_START_S = 9 * 3600.0
REACTION_SEEDS = (1, 2, 3)
CLOUD_AT_S = 20.0
CLOUD: dict[str, Any] = {"kind": "cloud", "depth": 0.7, "ramp_s": 5.0, "duration_s": 120.0}
REACTION_WINDOW_S = 30.0  # simulated seconds watched after the cloud's start
TIER3 = ("r06", "r12")
PV_DROP_SHARE = 0.1
STEADY_BEFORE_S = 5.0  # a tier-3 limit that moved this long before the cloud is reported
LIMIT_DROP_W = 1.0  # below the limit before the cloud by more than rounding
REACTION_TARGET_CYCLES = 2.0
REACTION_DAEMON = '\n[daemon]\nstatus_listen = "127.0.0.1:0"\nstartup_s = 5.0\n'
TRACE_EVERY_S = 0.005  # wall; the simulator steps every 0.01 s of wall time at speed 10
PHASE_TIMEOUT_S = 120.0  # wall, for any wait on simulated time
START_ATTEMPTS = 3  # a port found free can be taken before the simulator binds it

# 3. Memory.
MEMORY_SPEED = 10.0
MEMORY_SIM_S = 600.0
QUICK_MEMORY_SIM_S = 120.0
MEMORY_FIRST_S = 30.0  # simulated seconds after "started" before the first sample
MEMORY_EVERY_S = 2.0  # wall seconds between samples (20 simulated seconds)
MEMORY_TARGET_MIB = 150.0
MEMORY_DAEMON = '\n[daemon]\nstatus_listen = "127.0.0.1:0"\n'
STARTED_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0
KILL_TIMEOUT_S = 5.0
LOG_TAIL_LINES = 20
RECORD_CYCLES = 50  # cycles whose records are weighed in this process


def _quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _ms(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50_ms": _quantile(values, 0.50) * 1e3,
        "p99_ms": _quantile(values, 0.99) * 1e3,
        "max_ms": max(values, default=math.nan) * 1e3,
        "mean_ms": (sum(values) / len(values) if values else math.nan) * 1e3,
    }


# The bench site: a site file with every source and rack instrumented, optionally scaled.

Entry = dict[str, Any]


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        # JSON's string escapes are all valid in a TOML basic string.
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    raise TypeError(f"a site file value the bench cannot write: {value!r}")


def _render(tables: Mapping[str, Entry], arrays: Mapping[str, Sequence[Entry]]) -> str:
    out: list[str] = []
    for name, table in tables.items():
        out += [f"[{name}]", *(f"{k} = {_toml_value(v)}" for k, v in table.items()), ""]
    for name, entries in arrays.items():
        for entry in entries:
            out += [f"[[{name}]]", *(f"{k} = {_toml_value(v)}" for k, v in entry.items()), ""]
    return "\n".join(out)


def _renamed(copy: int, copies: int, name: str) -> str:
    return name if copies == 1 else f"c{copy + 1}.{name}"


class _DeviceEntries:
    """[[device]] entries handed out per protocol, a fixed number per endpoint."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self._count: dict[str, int] = {}

    def add(self, device_id: str, kind: str) -> None:
        protocol, profile = DEVICE_KINDS[kind]
        n = self._count.get(protocol, 0)
        self._count[protocol] = n + 1
        port = PORT_BASE[protocol] + n // PER_ENDPOINT[protocol]
        entry: Entry = {"id": device_id, "protocol": protocol, "endpoint": f"{HOST}:{port}"}
        if protocol == "modbus-tcp":
            entry["unit"] = n % PER_ENDPOINT[protocol] + 1
        entry["profile"] = profile
        if protocol == "opcua":
            entry["security"] = "none"  # loopback endpoints that are never opened
        self.entries.append(entry)


def bench_site_text(text: str, copies: int = 1) -> str:
    """The site with a device for every pv, wind, bess source and rack, `copies` times."""
    # The site's own [[device]] entries are replaced; the copies' first buses are joined
    # in a chain by lines rated as the site's first line, so that they are one network.
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    data = tomllib.loads(text)
    tables: dict[str, Entry] = {k: dict(v) for k, v in data.items() if isinstance(v, dict)}
    if copies > 1:
        tables["site"]["id"] = f"{tables['site']['id']}-x{copies}"
        control = tables.setdefault("control", {})
        control["grid_import_max_w"] = float(control["grid_import_max_w"]) * copies
    buses: list[Entry] = data.get("bus", [])
    lines: list[Entry] = data.get("line", [])
    arrays: dict[str, list[Entry]] = {"bus": [], "line": [], "source": [], "rack": []}
    devices = _DeviceEntries()
    for c in range(copies):

        def name(text: str, copy: int = c) -> str:
            return _renamed(copy, copies, text)

        arrays["bus"] += [{**bus, "id": name(bus["id"])} for bus in buses]
        arrays["line"] += [
            {**ln, "id": name(ln["id"]), "from": name(ln["from"]), "to": name(ln["to"])}
            for ln in lines
        ]
        if c > 0:
            tie: Entry = {
                "id": f"tie-{c}-{c + 1}",
                "from": _renamed(c - 1, copies, buses[0]["id"]),
                "to": name(buses[0]["id"]),
                "r_ohm": lines[0]["r_ohm"],
                "i_max_a": lines[0]["i_max_a"],
            }
            arrays["line"].append(tie)
        for table, kind_of in (("source", "kind"), ("rack", "")):
            for entry in data.get(table, []):
                out = {k: v for k, v in entry.items() if k != "device"}
                out["id"], out["bus"] = name(entry["id"]), name(entry["bus"])
                kind = str(entry[kind_of]) if kind_of else "rack"
                if kind in DEVICE_KINDS:
                    out["device"] = f"{table}-{out['id']}"
                    devices.add(out["device"], kind)
                arrays[table].append(out)
    return _render(tables, {**arrays, "device": devices.entries})


def load_bench_site(site_path: str | Path, copies: int = 1) -> Site:
    """The bench variant of a site file, checked by the site loader as any site is."""
    text = bench_site_text(Path(site_path).read_text(encoding="utf-8"), copies)
    with tempfile.TemporaryDirectory(prefix="edgectl-cycle-") as tmp:
        path = Path(tmp) / "site.toml"
        path.write_text(text, encoding="utf-8")
        return load_site(str(path))


# The synthetic snapshot.


class SyntheticSite:
    """Valid readings of every source and rack that follow the setpoints written."""

    # A little different every cycle: racks draw near the caps they were given, PV and
    # wind give what their limits let through, the batteries carry the difference.

    def __init__(self, site: Site, seed: int = 0) -> None:
        self.site = site
        self.rng = np.random.default_rng(seed)
        self.renewables = [s for s in site.sources if s.kind in RENEWABLE_KINDS]
        self.batteries = site.sources_of("bess")
        rng = self.rng
        self.rated = np.array([s.p_max_w for s in self.renewables])
        self.share = rng.uniform(*AVAILABLE_SHARE, len(self.renewables))
        self.limit = self.rated.copy()
        self._renewable_index = {s.id: i for i, s in enumerate(self.renewables)}
        self.rack_p_max = np.array([r.p_max_w for r in site.racks])
        self.rack_want = self.rack_p_max * rng.uniform(*RACK_WANT_SHARE, len(site.racks))
        self.rack_cap = self.rack_p_max.copy()  # a BMC holds its rating until written
        self._rack_index = {r.id: i for i, r in enumerate(site.racks)}
        self.soc = rng.uniform(*SOC_START, len(self.batteries))
        self.soc_low = np.array([(b.soc_min or 0.0) + SOC_BAND for b in self.batteries])
        self.soc_high = np.array([(b.soc_max or 1.0) - SOC_BAND for b in self.batteries])
        self.capacity_wh = np.array([b.capacity_wh or 1.0 for b in self.batteries])
        self.bess_p_max = np.array([b.p_max_w for b in self.batteries])
        self.bess_p_charge = np.array([b.p_charge_max_w or 0.0 for b in self.batteries])
        self.v_nominal = {b.id: site.bus_v_nominal_v(b) for b in site.buses}
        self.writes = 0
        self._next: Snapshot | None = None
        self._last_t_s: float | None = None

    def written(self, setpoints: Setpoints) -> None:
        """The controller's write: caps and limits in force from the next snapshot on."""
        self.writes += 1
        for rid, cap in setpoints.racks.items():
            self.rack_cap[self._rack_index[rid]] = cap
        for sid, limit in setpoints.sources.items():
            self.limit[self._renewable_index[sid]] = limit

    def take(self, now_s: float) -> Snapshot:
        """The controller's snapshot source: the snapshot prepared for this cycle."""
        snap = self._next
        if snap is None or snap.t_s != now_s:
            raise RuntimeError(f"no snapshot prepared for t = {now_s}")
        self._next = None
        return snap

    def prepare(self, now_s: float) -> None:
        """Build the next cycle's snapshot, outside the timed cycle."""
        # The daemon's snapshot is a copy of what the pollers hold: measured apart, as
        # take_snapshot over the real drivers.
        rng = self.rng
        dt = 0.0 if self._last_t_s is None else now_s - self._last_t_s
        self._last_t_s = now_s
        self.share = np.clip(
            self.share * (1.0 + rng.normal(0.0, AVAILABLE_DRIFT, self.share.size)),
            *AVAILABLE_SHARE,
        )
        available = self.share * self.rated
        output = np.minimum(available, self.limit)
        held = output < available - 1e-6
        draw = np.minimum(self.rack_want, self.rack_cap) * rng.uniform(
            *RACK_DRAW_SHARE, self.rack_cap.size
        )
        n_bess = len(self.batteries)
        bess_p = np.zeros(n_bess)
        if n_bess:
            share = (float(draw.sum()) - float(output.sum())) / n_bess
            bess_p = np.clip(np.full(n_bess, share), -self.bess_p_charge, self.bess_p_max)
            self.soc = np.clip(
                self.soc - bess_p * dt / 3600.0 / self.capacity_wh, self.soc_low, self.soc_high
            )
        health = DeviceHealth(answered_t_s=now_s)
        silent = DeviceHealth()
        absent = Reading.invalid(NO_DEVICE, "W", now_s)
        unmapped = Reading.invalid(NOT_IN_MAP, "W", now_s)
        sources: dict[str, SourceView] = {}
        k_ren = k_bess = 0
        volts = rng.normal(0.0, BUS_V_NOISE_V, len(self.site.sources))
        for j, src in enumerate(self.site.sources):
            if src.device is None:
                sources[src.id] = SourceView(
                    src.id, src.kind, None, silent, absent, absent, absent, absent, absent
                )
                continue
            v = Reading.ok(self.v_nominal[src.bus] + float(volts[j]), "V", now_s)
            if src.kind in RENEWABLE_KINDS:
                k = k_ren
                k_ren += 1
                p = float(output[k])
                if held[k]:
                    # As the drivers report a source held back by its limit.
                    avail = Reading.invalid(CURTAILED, "W", now_s, p)
                else:
                    avail = Reading.ok(float(available[k]), "W", now_s)
                sources[src.id] = SourceView(
                    src.id,
                    src.kind,
                    src.device,
                    health,
                    Reading.ok(p, "W", now_s),
                    avail,
                    Reading.ok(float(self.limit[k]), "W", now_s),
                    unmapped,
                    v,
                )
            elif src.kind == "bess":
                k = k_bess
                k_bess += 1
                sources[src.id] = SourceView(
                    src.id,
                    src.kind,
                    src.device,
                    health,
                    Reading.ok(float(bess_p[k]), "W", now_s),
                    unmapped,
                    unmapped,
                    Reading.ok(float(self.soc[k]), "", now_s),
                    v,
                )
            else:
                sources[src.id] = SourceView(
                    src.id, src.kind, src.device, health, unmapped, unmapped, unmapped, unmapped, v
                )
        racks: dict[str, RackView] = {}
        for i, rack in enumerate(self.site.racks):
            if rack.device is None:
                racks[rack.id] = RackView(rack.id, None, silent, absent, absent)
                continue
            racks[rack.id] = RackView(
                rack.id,
                rack.device,
                health,
                Reading.ok(float(draw[i]), "W", now_s),
                Reading.ok(float(self.rack_cap[i]), "W", now_s),
            )
        self._next = Snapshot(t_s=now_s, sources=sources, racks=racks)


# 1. Compute time of one cycle.


def _discard(_: CycleRecord) -> None:
    """Publish and watchdog: nothing to do here."""


def _verify_point(site: Site, record: CycleRecord) -> tuple[dict[str, float], dict[str, float]]:
    """The operating point the cycle's verification solved first, as injections by id."""
    # As Controller.verify: renewables less their reserve, every rack on at its cap, the
    # others at their assumed draw.
    est, result = record.estimate, record.result
    on = (result.rack_on != 0) & est.rack_controllable
    draw = np.where(on, result.rack_cap_w, est.rack_fixed_w)
    renewables = [s for s in site.sources if s.kind in RENEWABLE_KINDS]
    keep = 1.0 - RENEWABLE_RESERVE
    sources = {s.id: keep * float(result.renewable_p_w[i]) for i, s in enumerate(renewables)}
    racks = {r.id: float(draw[i]) for i, r in enumerate(site.racks)}
    return sources, racks


def _snapshot_copy_s(site: Site, samples: int) -> list[float]:
    """Times of take_snapshot over the site's real drivers, as the daemon's cycle runs it."""
    # Never polled: no I/O, and every reading is invalid ("not read yet").
    from edgectl.control.snapshot import take_snapshot
    from edgectl.drivers.registry import DeviceRegistry

    registry = DeviceRegistry(site)
    try:
        drivers = registry.drivers()
        health = {d: DeviceHealth(answered_t_s=0.0) for d in drivers}
        out = []
        for k in range(samples):
            t0 = time.perf_counter()
            take_snapshot(site, drivers, health, float(k))
            out.append(time.perf_counter() - t0)
        return out
    finally:
        asyncio.run(registry.close())


def measure_cycle(
    site_path: str | Path,
    cycles: int = CYCLES,
    *,
    copies: int = 1,
    warmup: int = WARMUP_CYCLES,
    seed: int = 0,
    profiler: cProfile.Profile | None = None,
) -> dict[str, Any]:
    """Figures of `cycles` timed cycles of the site's bench variant, and its baselines."""
    # `copies` times the site's size; `warmup` untimed cycles first.
    if cycles < 1 or warmup < 0:
        raise ValueError(f"cycles must be >= 1 and warmup >= 0, got {cycles}, {warmup}")
    site = load_bench_site(site_path, copies)
    synth = SyntheticSite(site, seed)
    controller = Controller(
        site,
        started_s=0.0,
        snapshot_source=synth.take,
        all_answered=lambda: True,
        write=synth.written,
        publish=_discard,
        watchdog=_discard,
    )
    period = site.control.period_s
    compute_s: list[float] = []
    call_s: list[float] = []
    states: dict[str, int] = {}
    passes: list[int] = []
    verified = 0
    kernel_cases = []
    points = []
    for k in range(warmup + cycles):
        now = k * period
        synth.prepare(now)
        timed = k >= warmup
        if profiler is not None and timed:
            profiler.enable()
        t0 = time.perf_counter()
        record = controller.run_cycle(now, WALL0_S + now)
        elapsed = time.perf_counter() - t0
        if profiler is not None and timed:
            profiler.disable()
        if not timed:
            continue
        compute_s.append(record.compute_s)
        call_s.append(elapsed)
        states[record.state.name] = states.get(record.state.name, 0) + 1
        passes.append(record.verification.passes)
        verified += record.verification.verified
        kernel_cases.append((record.params, record.inputs))
        points.append(_verify_point(site, record))

    # Baselines on the same site and the same cycles' inputs, after the timed run.
    kernel_s = []
    for params, inputs in kernel_cases:
        t0 = time.perf_counter()
        dispatch(params, inputs)
        kernel_s.append(time.perf_counter() - t0)
    net = build_network(site)
    injections: list[FloatArray] = [net.injections(src, racks) for src, racks in points]
    net.powerflow.solve(injections[0])  # from the flat start: the cycles' solves are warm
    solve_s = []
    iterations = []
    for s in injections:
        t0 = time.perf_counter()
        result = net.powerflow.solve(s)
        solve_s.append(time.perf_counter() - t0)
        iterations.append(result.iterations)
    copy_s = _snapshot_copy_s(site, cycles)

    compute = _ms(compute_s)
    kernel_p50 = _quantile(kernel_s, 0.5)
    solve_p50 = _quantile(solve_s, 0.5)
    return {
        "site": site.site.id,
        "copies": copies,
        "buses": len(site.buses),
        "lines": len(site.lines),
        "sources": len(site.sources),
        "racks": len(site.racks),
        "devices": len(site.devices),
        "uninstrumented_sources": [s.id for s in site.sources if s.device is None],
        "warmup_cycles": warmup,
        "samples": len(compute_s),
        "compute": compute,
        "run_cycle": _ms(call_s),
        "dispatch": _ms(kernel_s),
        "solve": _ms(solve_s),
        "snapshot_copy": _ms(copy_s),
        "solve_iterations_mean": sum(iterations) / len(iterations),
        "verify_passes_mean": sum(passes) / len(passes),
        "verify_passes_max": max(passes),
        "verified_share": verified / len(compute_s),
        "states": states,
        "setpoints_written": synth.writes,
        "ratio_to_dispatch": compute["p50_ms"] / (kernel_p50 * 1e3),
        "ratio_to_solve": compute["p50_ms"] / (solve_p50 * 1e3),
        "compute_s": compute_s,
    }


def cycle_part(cycles: int, profile_path: str | None) -> dict[str, Any]:
    """The reference site and its five-fold copy; the target's verdict."""
    reference = measure_cycle(REFERENCE_SITE, cycles)
    scaled = measure_cycle(REFERENCE_SITE, cycles, copies=SCALE)
    p99_ms = reference["compute"]["p99_ms"]
    part: dict[str, Any] = {
        "cycles": cycles,
        "results": [reference, scaled],
        "target": {
            "criterion": f"compute p99 <= {CYCLE_TARGET_P99_S * 1e3:g} ms on the reference site",
            "met": p99_ms <= CYCLE_TARGET_P99_S * 1e3,
            "p99_ms": p99_ms,
            "over_ms": max(0.0, p99_ms - CYCLE_TARGET_P99_S * 1e3),
        },
    }
    if profile_path is not None:
        profiler = cProfile.Profile()
        measure_cycle(REFERENCE_SITE, cycles, profiler=profiler)
        profiler.dump_stats(profile_path)
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
        part["profile"] = {"path": profile_path, "top_tottime": text.getvalue()}
    for result in part["results"]:
        del result["compute_s"]  # the samples are for the caller, not the document
    return part


# 2. Reaction to a cloud.


@dataclass
class Trace:
    """What the simulated site did and was told, sampled every simulator step or so."""

    t_s: list[float] = field(default_factory=list)
    pv_w: list[float] = field(default_factory=list)
    limits_w: list[float] = field(default_factory=list)  # sum of the rack limits in force
    supply_w: list[float] = field(default_factory=list)  # renewables + batteries + grid cap
    writes: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # (t_s, W)


def _written_w(sim: SiteSimulator, device: str | None, p_max_w: float) -> tuple[float, float]:
    """(when, value) of the last limit written to a rack's device."""
    # Never written: the rating, which a BMC holds until told otherwise, since -inf.
    write = sim.links[device].state.writes.get("limit_w") if device is not None else None
    if write is None or not isinstance(write.value, int | float):
        return -math.inf, p_max_w
    return write.t_s, float(write.value)


async def _trace(sim: SiteSimulator, trace: Trace) -> None:
    site = sim.site
    pv = [s.id for s in site.sources if s.kind == "pv"]
    renewables = [s.id for s in site.sources if s.kind in RENEWABLE_KINDS]
    battery_w = sum(s.p_max_w for s in site.sources_of("bess"))
    grid_w = site.control.grid_import_max_w
    while True:
        trace.t_s.append(sim.t_s)
        trace.pv_w.append(sum(sim.source_p_w.get(s, 0.0) for s in pv))
        supply = sum(sim.source_p_w.get(s, 0.0) for s in renewables) + battery_w + grid_w
        trace.supply_w.append(supply)
        total = 0.0
        for rack in site.racks:
            t_s, value = _written_w(sim, rack.device, rack.p_max_w)
            total += value
            if rack.id in TIER3:
                seen = trace.writes.setdefault(rack.id, [])
                if math.isfinite(t_s) and (not seen or seen[-1][0] != t_s):
                    seen.append((t_s, value))
        trace.limits_w.append(total)
        await asyncio.sleep(TRACE_EVERY_S)


async def _until(sim: SiteSimulator, t_s: float, run: asyncio.Task[int]) -> None:
    """Wait for simulated time t_s, bounded in wall time; fail if the daemon ended."""
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    while sim.t_s < t_s:
        if run.done():
            raise RuntimeError(f"the daemon ended at t = {sim.t_s:.1f} s: {run.result()!r}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"simulated time stuck at {sim.t_s:.1f} s (waiting for {t_s})")
        await asyncio.sleep(0.01)


async def _started(make: Callable[[], tuple[SiteSimulator, Path]]) -> tuple[SiteSimulator, Path]:
    """A simulator from make() listening; made again on ports taken in the meantime."""
    for attempt in range(START_ATTEMPTS):
        sim, site_file = make()
        try:
            await sim.start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or attempt == START_ATTEMPTS - 1:
                raise
            continue
        return sim, site_file
    raise AssertionError("unreachable")


def _cycles(t_s: float | None, since_s: float | None, period_s: float) -> float | None:
    if t_s is None or since_s is None:
        return None
    return (t_s - since_s) / period_s


def _worst(values: Sequence[float | None]) -> float | None:
    """The largest value; None (never reached) is worse than any."""
    if any(v is None for v in values):
        return None
    return max((v for v in values if v is not None), default=None)


def reaction_figures(
    trace: Trace, t0: float, site: Site, records: Sequence[CycleRecord]
) -> dict[str, Any]:
    """Reaction times of one run, from its trace and the daemon's records."""
    period = site.control.period_s
    start = next(i for i, t in enumerate(trace.t_s) if t >= t0)
    pv0 = trace.pv_w[start]
    pv_drop_t = next(
        (
            t
            for t, p in zip(trace.t_s[start:], trace.pv_w[start:], strict=True)
            if p <= (1.0 - PV_DROP_SHARE) * pv0
        ),
        None,
    )
    before: dict[str, float] = {}
    dropped: dict[str, float | None] = {}
    moving = False
    p_max = {r.id: r.p_max_w for r in site.racks}
    for rid in TIER3:
        writes = trace.writes.get(rid, [])
        earlier = [v for t, v in writes if t <= t0]
        before[rid] = earlier[-1] if earlier else p_max[rid]
        recent = [v for t, v in writes if t0 - STEADY_BEFORE_S < t <= t0]
        moving |= any(abs(v - before[rid]) > LIMIT_DROP_W for v in recent)
        dropped[rid] = next(
            (t for t, v in writes if t > t0 and v < before[rid] - LIMIT_DROP_W), None
        )
    tier3_t = (
        None
        if any(t is None for t in dropped.values())
        else max(t for t in dropped.values() if t is not None)
    )
    # A writer leaves a change within its deadband unwritten: the written limits may sit
    # that much above the caps decided.
    slack = DEADBAND_SHARE * sum(r.p_max_w for r in site.racks)
    fits = [
        lim <= sup + slack
        for lim, sup in zip(trace.limits_w[start:], trace.supply_w[start:], strict=True)
    ]
    times = trace.t_s[start:]
    bad = [i for i, ok in enumerate(fits) if not ok]
    if not bad:
        fit_t: float | None = t0
    elif bad[-1] + 1 < len(fits):
        fit_t = times[bad[-1] + 1]
    else:
        fit_t = None
    # The shortfall: from the first sample whose limits exceed the supply. Until then the
    # site had headroom and nothing needed to move; from then on the controller is late.
    short_t = times[bad[0]] if bad else None
    longest = 0.0
    for i in bad:
        if i == 0 or fits[i - 1]:
            back = next((j for j in range(i, len(fits)) if fits[j]), None)
            end_t = times[back] if back is not None else math.inf
            longest = max(longest, end_t - times[i])
    last_t = tier3_t if tier3_t is not None else times[-1]
    # When the cycle decided the lower tier-3 caps, against the cap in force at the cloud's
    # start: what is left of the reaction after that is the write reaching the device.
    index = {r.id: i for i, r in enumerate(site.racks)}
    decided: list[float | None] = []
    held = [r for r in records if r.t_s <= t0]
    for rid in TIER3:
        i = index[rid]
        cap0 = float(held[-1].caps_w[i]) if held else p_max[rid]
        decided.append(
            next(
                (r.t_s for r in records if r.t_s > t0 and r.caps_w[i] < cap0 - LIMIT_DROP_W),
                None,
            )
        )
    decided_t = _worst(decided)
    return {
        "cloud_at_s": t0,
        "pv_before_kw": pv0 / 1e3,
        "pv_drop_s": None if pv_drop_t is None else pv_drop_t - t0,
        "tier3_before_kw": {r: v / 1e3 for r, v in before.items()},
        "tier3_after_kw": {r: trace.writes[r][-1][1] / 1e3 for r in TIER3 if trace.writes.get(r)},
        "tier3_drop_s": {r: None if t is None else t - t0 for r, t in dropped.items()},
        "tier3_moving_before_cloud": moving,
        "tier3_cycles": _cycles(tier3_t, t0, period),
        "tier3_cycles_after_pv_drop": _cycles(tier3_t, pv_drop_t, period),
        "tier3_cycles_run": sum(1 for r in records if t0 < r.t_s <= last_t),
        "tier3_decided_s": None if decided_t is None else decided_t - t0,
        "tier3_write_lag_s": None if decided_t is None or tier3_t is None else tier3_t - decided_t,
        "fit_lost": bool(bad),
        "fit_cycles": _cycles(fit_t, t0, period),
        "fit_cycles_after_pv_drop": _cycles(fit_t, pv_drop_t, period) if bad else None,
        "short_at_s": None if short_t is None else short_t - t0,
        "tier3_cycles_after_short": _cycles(tier3_t, short_t, period),
        "fit_cycles_after_short": _cycles(fit_t, short_t, period),
        "shortfall_longest_cycles": None if math.isinf(longest) else longest / period,
        "limits_max_over_supply_kw": max(
            lim - sup
            for lim, sup in zip(trace.limits_w[start:], trace.supply_w[start:], strict=True)
        )
        / 1e3,
        "samples": len(times),
    }


async def _reaction_run(seed: int, tmp: Path) -> dict[str, Any]:
    def make() -> tuple[SiteSimulator, Path]:
        text, _ = relocate(DEMO_SITE.read_text(encoding="utf-8"))
        site_file = tmp / "site.toml"
        site_file.write_text(text + REACTION_DAEMON, encoding="utf-8")
        sim = SiteSimulator(
            load_site(str(site_file)),
            site_file=str(site_file),
            speed=REACTION_SPEED,
            seed=seed,
            start_time_s=REACTION_START_S,
        )
        return sim, site_file

    sim, site_file = await _started(make)
    trace = Trace()
    tracer: asyncio.Task[None] | None = None
    run: asyncio.Task[int] | None = None
    try:
        daemon = Daemon(
            str(site_file),
            state_dir=tmp / "state",
            clock=Clock(REACTION_SPEED, source=sim.now),
            notifier=Notifier(None),
        )
        tracer = asyncio.create_task(_trace(sim, trace))
        run = asyncio.create_task(daemon.run(install_signals=False))
        await _until(sim, CLOUD_AT_S, run)
        state_before = daemon.controller.state.name
        t0 = sim.t_s
        await sim.apply(parse_event(CLOUD, sim.targets()))
        await _until(sim, t0 + REACTION_WINDOW_S, run)
        figures = reaction_figures(trace, t0, daemon.site, list(daemon.records))
        figures.update(
            seed=seed,
            state_before_cloud=state_before,
            state_after=daemon.controller.state.name,
            overruns=daemon.times.overruns,
            simulator_lagging=sim.lagging,
        )
        return figures
    finally:
        if run is not None:
            daemon.request_stop("benchmark over")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(run, STOP_TIMEOUT_S)
        if tracer is not None:
            tracer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tracer
        await sim.stop()


@contextlib.contextmanager
def _logs_to(path: Path) -> Iterator[None]:
    """This process's warnings as JSON lines in a file while the block runs."""
    # An in-process daemon's and the simulator's: kept out of the printed figures.
    with path.open("w", encoding="utf-8") as log:
        configure_logging(json=True, level="warning", stream=log)
        try:
            yield
        finally:
            configure_logging(json=False, level="warning", stream=sys.stderr)


def _warnings(path: Path) -> list[str]:
    # The stop at each run's end is logged as a warning too: not one of the run's.
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line for line in lines if '"after": "STOPPING"' not in line]


def reaction_part(seeds: Sequence[int] = REACTION_SEEDS) -> dict[str, Any]:
    """One run per seed, each with a fresh simulator, daemon and event loop."""
    runs = []
    with tempfile.TemporaryDirectory(prefix="edgectl-reaction-") as tmp:
        log_path = Path(tmp) / "warnings.log"
        with _logs_to(log_path):
            for seed in seeds:
                run_dir = Path(tmp) / f"seed-{seed}"
                run_dir.mkdir()
                runs.append(asyncio.run(_reaction_run(seed, run_dir)))
        warnings = _warnings(log_path)
    # Figures counted from a shortfall exist only in runs that had one.
    always = ("pv_drop_s", "tier3_cycles", "tier3_cycles_after_pv_drop", "fit_cycles")
    if_short = (
        "short_at_s",
        "tier3_cycles_after_short",
        "fit_cycles_after_pv_drop",
        "fit_cycles_after_short",
        "shortfall_longest_cycles",
    )
    short = [r for r in runs if r["fit_lost"]]
    worst = {k: _worst([r[k] for r in runs]) for k in always}
    worst.update({k: _worst([r[k] for r in short]) if short else None for k in if_short})
    limit = REACTION_TARGET_CYCLES

    def within(*keys: str) -> bool:
        values = [worst[k] for k in keys]
        return all(v is not None and v <= limit for v in values)

    fit_keys: tuple[str, ...] = ("fit_cycles_after_pv_drop",) if short else ()
    return {
        "speed": REACTION_SPEED,
        "start_time_s": REACTION_START_S,
        "cloud": CLOUD,
        "window_s": REACTION_WINDOW_S,
        "runs": runs,
        "worst": worst,
        "warnings": len(warnings),  # the daemon's and the simulator's, one process
        "warning_samples": warnings[:3],
        "target": {
            "criterion": (
                f"tier-3 limits down, and the limits within the supply, <= {limit:g} "
                f"cycles after the PV output fell {PV_DROP_SHARE:.0%} (worst of {len(runs)})"
            ),
            "met": within("tier3_cycles_after_pv_drop", *fit_keys),
            "criterion_from_shortfall": (
                f"the limits within the supply again <= {limit:g} cycles after they first "
                "exceeded it"
            ),
            "met_from_shortfall": within("fit_cycles_after_short") if short else None,
        },
    }


# 3. The daemon's memory.


def _memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, MiB."""
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = float(rest.split()[0]) / 1024.0  # kB
    return found["VmRSS"], found["VmHWM"]


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Terminate, then kill: the process is gone when this returns."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(KILL_TIMEOUT_S)


def baseline_memory() -> dict[str, float]:
    """RSS of a Python process that imported edgectl.app.daemon and nothing else."""
    code = (
        "import sys\nimport edgectl.app.daemon\n"
        "sys.stdout.write('ready\\n')\nsys.stdout.flush()\nsys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        ready, _, _ = select.select([proc.stdout], [], [], STARTED_TIMEOUT_S)
        if not ready or proc.stdout.readline() != b"ready\n":
            raise RuntimeError("the baseline process did not import edgectl.app.daemon")
        rss, hwm = _memory_mib(proc.pid)
        proc.stdin.close()
        proc.wait(STOP_TIMEOUT_S)
    finally:
        _stop_process(proc)
    return {"rss_mib": rss, "hwm_mib": hwm}


def _log_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                out.append(entry)
    return out


def _tail(path: Path) -> str:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(lines[-LOG_TAIL_LINES:])


@contextlib.contextmanager
def _daemon_process(
    site_file: Path, state_dir: Path, log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`edgectl run` as its own process, logging JSON lines to log_path; stopped on exit."""
    args = [
        sys.executable,
        "-m",
        "edgectl",
        "run",
        "--config",
        str(site_file),
        "--state-dir",
        str(state_dir),
        "--time-scale",
        str(MEMORY_SPEED),
        "--log-format",
        "json",
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            yield proc
        finally:
            _stop_process(proc)


async def _wait_exit(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Let the loop (the simulator) run while the daemon stops; bounded."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def _memory_run(sim_s: float, tmp: Path) -> dict[str, Any]:
    def make() -> tuple[SiteSimulator, Path]:
        text, _ = relocate(REFERENCE_SITE.read_text(encoding="utf-8"))
        site_file = tmp / "reference_site.toml"
        site_file.write_text(text + MEMORY_DAEMON, encoding="utf-8")
        sim = SiteSimulator(
            load_site(str(site_file)), site_file=str(site_file), speed=MEMORY_SPEED, seed=1
        )
        return sim, site_file

    sim, site_file = await _started(make)
    log_path = tmp / "daemon.log"
    samples: list[tuple[float, float]] = []
    try:
        with _daemon_process(site_file, tmp / "state", log_path) as proc:
            deadline = time.monotonic() + STARTED_TIMEOUT_S
            while not any(e.get("event") == "started" for e in _log_lines(log_path)):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the daemon did not start:\n{_tail(log_path)}")
                await asyncio.sleep(0.05)
            started = time.monotonic()
            sim_started_s = sim.t_s
            end = started + sim_s / MEMORY_SPEED
            due = started + MEMORY_FIRST_S / MEMORY_SPEED
            while True:
                now = time.monotonic()
                if proc.poll() is not None:
                    raise RuntimeError(f"the daemon exited ({proc.returncode}):\n{_tail(log_path)}")
                if now >= due or now >= end:
                    rss, hwm = _memory_mib(proc.pid)
                    samples.append(((now - started) * MEMORY_SPEED, rss))
                    due += MEMORY_EVERY_S
                if now >= end:
                    break
                await asyncio.sleep(max(0.0, min(due, end) - time.monotonic()))
            sim_ran_s = sim.t_s - sim_started_s
            proc.send_signal(signal.SIGTERM)
            await _wait_exit(proc, STOP_TIMEOUT_S)
            exit_code = proc.poll()
        lagging = sim.lagging
    finally:
        await sim.stop()
    log = _log_lines(log_path)
    summaries = [e for e in log if e.get("event") == "cycle summary"]
    last = summaries[-1] if summaries else {}
    changes = [
        f"{e.get('before')} -> {e.get('after')}: {e.get('reason')}"
        for e in log
        if e.get("event") == "state changed" and e.get("after") != "STOPPING"
    ]
    start_mib, end_mib = samples[0][1], samples[-1][1]
    # The flight recorder keeps recorder_cycles cycles: until it is full, every cycle
    # adds one record (its snapshot and decision) that nothing frees.
    site = load_site(str(site_file))
    recorder_s = site.daemon.recorder_cycles * site.control.period_s
    full = [r for t, r in samples if t >= recorder_s]
    minutes = (samples[-1][0] - samples[0][0]) / 60.0
    return {
        "simulated_s": sim_s,
        "rss_start_mib": start_mib,
        "rss_end_mib": end_mib,
        "rss_max_sampled_mib": max(r for _, r in samples),
        "hwm_mib": hwm,
        "growth_mib": end_mib - start_mib,
        "growth_mib_per_simulated_min": (end_mib - start_mib) / minutes if minutes else math.nan,
        "samples": [{"t_s": round(t, 1), "rss_mib": round(r, 2)} for t, r in samples],
        "exit_code": exit_code,
        "simulator_ran_s": sim_ran_s,
        "simulator_lagging": lagging,
        "recorder_cycles": site.daemon.recorder_cycles,
        "recorder_full_at_s": recorder_s,
        "rss_recorder_full_mib": full[0] if full else None,
        "growth_after_recorder_full_mib": end_mib - full[0] if full else None,
        "daemon_state_changes": changes,
        "daemon_state": last.get("state"),
        "daemon_cycle_p99_ms": last.get("p99_ms"),
        "daemon_overruns": last.get("overruns"),
        "daemon_warnings": sum(1 for e in log if e.get("level") in ("warning", "error")),
        "devices": len(sim.links),
    }


def record_size_kib(site_path: str | Path, cycles: int = RECORD_CYCLES) -> float:
    """KiB one cycle's record (snapshot, estimate, decision) holds on the site as it is."""
    # The controller in this process, its snapshot taken from the site's own drivers
    # (never polled), every record kept as the daemon's flight recorder keeps them.
    from edgectl.control.snapshot import take_snapshot
    from edgectl.drivers.registry import DeviceRegistry

    site = load_site(str(site_path))
    registry = DeviceRegistry(site)
    try:
        drivers = registry.drivers()
        health = {d: DeviceHealth(answered_t_s=0.0) for d in drivers}
        records: list[CycleRecord] = []
        controller = Controller(
            site,
            started_s=0.0,
            snapshot_source=lambda now: take_snapshot(site, drivers, health, now),
            all_answered=lambda: True,
            write=lambda _: None,
            publish=records.append,
            watchdog=_discard,
        )
        period = site.control.period_s
        for k in range(WARMUP_CYCLES):
            controller.run_cycle(k * period, WALL0_S + k * period)
        records.clear()
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for k in range(WARMUP_CYCLES, WARMUP_CYCLES + cycles):
                controller.run_cycle(k * period, WALL0_S + k * period)
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        return grown / len(records) / 1024.0
    finally:
        asyncio.run(registry.close())


def memory_part(sim_s: float) -> dict[str, Any]:
    """The baseline process, then the daemon on the reference site."""
    baseline = baseline_memory()
    record_kib = record_size_kib(REFERENCE_SITE)
    with tempfile.TemporaryDirectory(prefix="edgectl-memory-") as tmp:
        log_path = Path(tmp) / "warnings.log"
        with _logs_to(log_path):
            daemon = asyncio.run(_memory_run(sim_s, Path(tmp)))
        warnings = _warnings(log_path)
    daemon["simulator_warnings"] = len(warnings)
    daemon["simulator_warning_samples"] = warnings[:3]
    peak = daemon["hwm_mib"]
    return {
        "speed": MEMORY_SPEED,
        "baseline": baseline,
        "daemon": daemon,
        "over_baseline_mib": daemon["rss_end_mib"] - baseline["rss_mib"],
        "record_kib": record_kib,
        "recorder_full_mib": record_kib * daemon["recorder_cycles"] / 1024.0,
        "target": {
            "criterion": f"RSS <= {MEMORY_TARGET_MIB:g} MiB (VmHWM, the peak)",
            "met": peak <= MEMORY_TARGET_MIB,
            "over_mib": max(0.0, peak - MEMORY_TARGET_MIB),
        },
    }


# The document.

PARTS = ("cycle", "reaction", "memory")


def run(parts: Sequence[str], quick: bool, profile_path: str | None = None) -> dict[str, Any]:
    """Every part asked for, as the JSON document `--json` prints."""
    require_compiled()
    document: dict[str, Any] = {
        "benchmark": "cycle",
        "quick": quick,
        "cpu_count": os.cpu_count() or 1,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    if "cycle" in parts:
        document["cycle"] = cycle_part(QUICK_CYCLES if quick else CYCLES, profile_path)
    if "reaction" in parts:
        document["reaction"] = reaction_part()
    if "memory" in parts:
        document["memory"] = memory_part(QUICK_MEMORY_SIM_S if quick else MEMORY_SIM_S)
    return document


def _num(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _verdict(target: Mapping[str, Any]) -> str:
    return "met" if target["met"] else "NOT met"


def _print_cycle(part: Mapping[str, Any], out: IO[str]) -> None:
    print(
        f"Cycle compute, snapshot to setpoints: {part['cycles']} cycles after "
        f"{part['results'][0]['warmup_cycles']} untimed, every pv/wind/bess source and rack "
        "instrumented, synthetic snapshot",
        file=out,
    )
    print(
        f"{'site':<14} {'buses':>5} {'racks':>5} {'srcs':>4} | {'p50':>6} {'p99':>6} "
        f"{'max':>6} | {'call p99':>8} | {'dispatch':>8} {'solve':>6} {'passes':>6} "
        f"{'snap':>6} | {'x disp':>6} {'x solve':>7}",
        file=out,
    )
    for r in part["results"]:
        c = r["compute"]
        print(
            f"{r['site']:<14} {r['buses']:>5} {r['racks']:>5} {r['sources']:>4} | "
            f"{c['p50_ms']:>6.2f} {c['p99_ms']:>6.2f} {c['max_ms']:>6.2f} | "
            f"{r['run_cycle']['p99_ms']:>8.2f} | {r['dispatch']['p50_ms']:>8.3f} "
            f"{r['solve']['p50_ms']:>6.3f} {r['verify_passes_mean']:>6.2f} "
            f"{r['snapshot_copy']['p50_ms']:>6.2f} | {r['ratio_to_dispatch']:>6.1f} "
            f"{r['ratio_to_solve']:>7.1f}",
            file=out,
        )
    print(
        "ms; p50/p99/max: CycleRecord.compute_s; call: the whole run_cycle (plus accounts, "
        "reasons, memory); dispatch, solve: p50 of one kernel call and one warm power-flow "
        "solve on the same cycles' inputs; passes: solves per cycle; snap: take_snapshot "
        "over the real drivers (in the daemon's figure, not in compute here); x: compute "
        "p50 over that baseline's p50",
        file=out,
    )
    for r in part["results"]:
        states = ", ".join(f"{k} {v}" for k, v in r["states"].items())
        print(
            f"  {r['site']}: states {states}; verified {r['verified_share']:.0%}; "
            f"uninstrumented: {', '.join(r['uninstrumented_sources']) or 'none'}",
            file=out,
        )
    t = part["target"]
    over = f", {t['over_ms']:.2f} ms over" if not t["met"] else ""
    print(f"target {t['criterion']}: {_verdict(t)} (p99 {t['p99_ms']:.2f} ms{over})", file=out)
    if "profile" in part:
        print(f"profile written to {part['profile']['path']}", file=out)


def _print_reaction(part: Mapping[str, Any], out: IO[str]) -> None:
    cloud = part["cloud"]
    print(
        f"\nReaction to a cloud (depth {cloud['depth']}, ramp {cloud['ramp_s']:g} s) on the "
        f"demo site at speed {part['speed']:g}: control periods (1 s) until ...",
        file=out,
    )
    print(
        f"{'':>5} {'at s':>10} | {'tier-3 limits down, from':>26} | "
        f"{'limits fit the supply, from':>28} | {'longest':>7}",
        file=out,
    )
    print(
        f"{'seed':>5} {'-10%':>4} {'short':>5} | {'cloud':>8} {'pv -10%':>8} {'short':>8} | "
        f"{'cloud':>8} {'pv -10%':>9} {'short':>9} | {'short':>7}",
        file=out,
    )

    def row(label: str, r: Mapping[str, Any]) -> str:
        return (
            f"{label:>5} {_num(r['pv_drop_s'], 1):>4} {_num(r['short_at_s'], 1):>5} | "
            f"{_num(r['tier3_cycles']):>8} {_num(r['tier3_cycles_after_pv_drop']):>8} "
            f"{_num(r['tier3_cycles_after_short']):>8} | {_num(r['fit_cycles']):>8} "
            f"{_num(r['fit_cycles_after_pv_drop']):>9} {_num(r['fit_cycles_after_short']):>9} "
            f"| {_num(r['shortfall_longest_cycles']):>7}"
        )

    for r in part["runs"]:
        print(row(str(r["seed"]), r), file=out)
    print(row("worst", part["worst"]), file=out)
    print(
        "at s: seconds after the cloud's start when the PV output was down 10 % and when "
        "the written rack limits first exceeded renewables + battery p_max + grid cap "
        "(short; '-': never, the limits fit throughout); longest: the longest stretch "
        "they exceeded it",
        file=out,
    )
    for r in part["runs"]:
        before = ", ".join(f"{k} {v:.1f}" for k, v in r["tier3_before_kw"].items())
        after = ", ".join(f"{k} {v:.1f}" for k, v in r["tier3_after_kw"].items())
        print(
            f"  seed {r['seed']}: PV {r['pv_before_kw']:.0f} kW before; tier-3 limits "
            f"{before} kW before, {after} kW at the end (moving before the cloud: "
            f"{r['tier3_moving_before_cloud']}); lower caps decided "
            f"{_num(r['tier3_decided_s'], 1)} s after the cloud's start, on the devices "
            f"{_num(r['tier3_write_lag_s'], 2)} s later; limits over supply by at most "
            f"{r['limits_max_over_supply_kw']:.1f} kW; {r['state_before_cloud']} -> "
            f"{r['state_after']}, overruns {r['overruns']}",
            file=out,
        )
    t = part["target"]
    print(f"target {t['criterion']}: {_verdict(t)}", file=out)
    if t["met_from_shortfall"] is not None:
        verdict = "met" if t["met_from_shortfall"] else "NOT met"
        print(
            f"  counted from the shortfall ({t['criterion_from_shortfall']}): {verdict}", file=out
        )


def _print_memory(part: Mapping[str, Any], out: IO[str]) -> None:
    d, b = part["daemon"], part["baseline"]
    print(
        f"\nDaemon memory: `edgectl run` on the reference site ({d['devices']} devices), "
        f"{d['simulated_s'] / 60:g} simulated minutes at time scale {part['speed']:g}",
        file=out,
    )
    print(f"{'':<32} {'MiB':>8}", file=out)
    rows: list[tuple[str, float]] = [
        ("baseline: import only", b["rss_mib"]),
        (f"RSS after {MEMORY_FIRST_S:g} s", d["rss_start_mib"]),
        ("RSS at the end", d["rss_end_mib"]),
        ("peak (VmHWM)", d["hwm_mib"]),
        ("end over baseline", part["over_baseline_mib"]),
        ("growth per simulated min", d["growth_mib_per_simulated_min"]),
    ]
    rows.append(
        (
            f"recorder: {d['recorder_cycles']} x {part['record_kib']:.0f} KiB",
            part["recorder_full_mib"],
        ),
    )
    if d["rss_recorder_full_mib"] is not None:
        rows += [
            (f"RSS at {d['recorder_full_at_s']:g} s (recorder full)", d["rss_recorder_full_mib"]),
            ("growth after that", d["growth_after_recorder_full_mib"]),
        ]
    for label, value in rows:
        print(f"{label:<32} {value:>8.1f}", file=out)
    cells = [f"{s['t_s']:>5.0f} s {s['rss_mib']:>6.1f}" for s in d["samples"]]
    print("  RSS (MiB) over simulated time since the daemon started:", file=out)
    for i in range(0, len(cells), 6):
        print("   " + "  ".join(cells[i : i + 6]), file=out)
    print(
        f"  daemon: last summary {d['daemon_state']}, cycle p99 "
        f"{_num(d['daemon_cycle_p99_ms'], 1)} ms, overruns {d['daemon_overruns']}, "
        f"warnings {d['daemon_warnings']}, exit {d['exit_code']}; simulator "
        f"warnings {d['simulator_warnings']}, ran "
        f"{d['simulator_ran_s']:.0f} simulated s{' (lagging)' if d['simulator_lagging'] else ''}",
        file=out,
    )
    for change in d["daemon_state_changes"]:
        print(f"  state changed {change}", file=out)
    t = part["target"]
    print(f"target {t['criterion']}: {_verdict(t)}", file=out)


def print_text(document: Mapping[str, Any], out: IO[str] = sys.stdout) -> None:
    print(
        f"{document['cpu_count']} cores, Python {document['python']}"
        f"{', quick' if document['quick'] else ''}",
        file=out,
    )
    if "cycle" in document:
        _print_cycle(document["cycle"], out)
    if "reaction" in document:
        _print_reaction(document["reaction"], out)
    if "memory" in document:
        _print_memory(document["memory"], out)


def _no_nan(value: Any) -> Any:
    """NaN (nothing to measure) as JSON null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nan(v) for v in value]
    return value


def _parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if not parts or unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: expected some of {','.join(PARTS)}")
    return parts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cycle.py", description="control cycle: compute time, reaction, daemon memory"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_CYCLES} cycles, {QUICK_MEMORY_SIM_S / 60:g} simulated minutes of memory",
    )
    parser.add_argument(
        "--parts",
        type=_parts,
        default=list(PARTS),
        metavar="P,P",
        help=f"which parts to run (default {','.join(PARTS)})",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="also run the reference site's cycles under cProfile, stats to FILE",
    )
    args = parser.parse_args(argv)
    if args.profile and "cycle" not in args.parts:
        parser.error("--profile profiles the cycle part: add cycle to --parts")
    if not args.json:
        print(f"running {', '.join(args.parts)} ...", file=sys.stderr)
    document = run(args.parts, args.quick, args.profile)
    if args.json:
        json.dump(_no_nan(document), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_text(document)
        if "profile" in document.get("cycle", {}):
            print(document["cycle"]["profile"]["top_tottime"], file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
