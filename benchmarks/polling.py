"""Polling throughput: N simulated SunSpec PV devices polled at 1 Hz from one process.

The simulator runs in a second process (multiprocessing, spawn start method) and serves
the N devices over ceil(N / 100) Modbus/TCP endpoints on 127.0.0.1, up to 100 unit ids
each, as a site does behind Modbus/TCP gateways. Device i sits on endpoint i mod k, so
every endpoint's devices are spread over the whole second. The ports are picked by the
servers and reported back through a pipe.

The client (this process, one asyncio loop) identifies every device once (SunSpec
discovery), then polls each device's "fast" group every second for `--seconds` of wall
time, one task per device, device i starting i/N of a second into the window. A poll
that overruns its period does not queue a burst: the next one starts at once and ticks
that passed entirely are counted as missed.

Measured per N, over the polling window only:

- requests_per_s: Modbus reads completed by the transport (counted at ModbusEndpoint);
- polls_per_s: fast-group polls completed, against N per second scheduled;
- on_time_fraction: scheduled polls whose readings were in hand within one period of
  their scheduled instant (missed ticks and failed polls count as not on time);
- lateness p50/p99: from a poll's scheduled instant to its readings being in hand;
- start_lag p99: from a poll's scheduled instant to its start (the client's loop lag);
- client_cpu_share: time.process_time() delta / wall time (1.0 = one core saturated);
- server_cpu_share: the same for the simulator process, asked through the pipe;
- errors: failed polls and failed identifications (DeviceErrors).

The simulator and the client share the machine's cores: on a 2-core machine a
saturated simulator delays answers and the lateness figures include that.

    python benchmarks/polling.py [--devices 100,500,1000] [--seconds 10] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import math
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import pymodbus

from edgectl.devicemaps.loader import load_maps
from edgectl.devicemaps.readings import Value
from edgectl.devicemaps.schema import DeviceMap
from edgectl.drivers.modbus import ModbusDevice
from edgectl.errors import DeviceError
from edgectl.sim.modbus_server import ModbusSimServer, SimUnit
from edgectl.sim.state import DeviceState
from edgectl.transport.modbus import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    ModbusEndpoint,
    ModbusTransport,
)

DEFAULT_SIZES = (100, 500, 1000)
DEFAULT_SECONDS = 10.0
UNITS_PER_ENDPOINT = 100
MAX_UNITS_PER_ENDPOINT = 247  # Modbus unit ids 1-247
PERIOD_S = 1.0
PROFILE = "sunspec-pv"
GROUP = "fast"
TARGET_DEVICES = 1000
READY_TIMEOUT_S = 300.0
ON_TIME_GOAL = 0.99
HOST = "127.0.0.1"
SHARED_CORES_NOTE = (
    "the simulator runs in a second process on the same machine and competes with the "
    "client for its {cores} core(s); lateness includes the simulator's own delays"
)

PV_VALUES: dict[str, Value] = {
    "p_w": 123456.0,
    "e_wh": 5.0e9,
    "v_v": 812.3,
    "i_a": 152.1,
    "status": 4,
    "p_rated_w": 1.0e6,
    "limit_pct": 80.0,
    "limit_enable": 1,
    "limit_revert_s": 60,
}


def endpoint_count(devices: int, per_endpoint: int) -> int:
    return max(1, math.ceil(devices / per_endpoint))


def placement(index: int, endpoints: int) -> tuple[int, int]:
    """Device `index` -> (endpoint index, unit id): round robin over the endpoints."""
    return index % endpoints, index // endpoints + 1


def device_id(index: int) -> str:
    return f"pv{index:04d}"


def _pv_map() -> DeviceMap:
    maps = load_maps().for_profile(PROFILE)
    if len(maps) != 1:
        raise RuntimeError(f"expected one {PROFILE} map, found {len(maps)}")
    return maps[0]


# The simulator process.


def serve(conn: Connection, devices: int, per_endpoint: int) -> None:
    """Simulator process entry: serve `devices` PV devices and answer the pipe.

    Sends ("ready", ports) once every endpoint listens (or ("error", text)); then
    answers "cpu" with ("cpu", process seconds) and stops on "stop" or end of pipe.
    """
    asyncio.run(_serve(conn, devices, per_endpoint))


async def _serve(conn: Connection, devices: int, per_endpoint: int) -> None:
    servers: list[ModbusSimServer] = []
    try:
        pv_map = _pv_map()
        k = endpoint_count(devices, per_endpoint)
        units: list[list[SimUnit]] = [[] for _ in range(k)]
        for i in range(devices):
            where, unit = placement(i, k)
            values: dict[str, Value | None] = dict(PV_VALUES)
            values["p_w"] = 1000.0 + i  # each device says something of its own
            units[where].append(SimUnit(DeviceState(device_id(i), pv_map, values), unit=unit))
        ports = []
        for index, group in enumerate(units):
            server = ModbusSimServer(group, seed=index)
            servers.append(server)
            ports.append(await server.start_tcp(HOST, 0))
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        for server in servers:
            await server.stop()
        raise
    conn.send(("ready", ports))

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_message() -> None:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            message = "stop"
        if message == "cpu":
            conn.send(("cpu", time.process_time()))
        elif message == "stop":
            stop.set()

    loop.add_reader(conn.fileno(), on_message)
    try:
        await stop.wait()
    finally:
        loop.remove_reader(conn.fileno())
        for server in servers:
            await server.stop()


class Simulator:
    """The simulator process seen from the client: start, ports, CPU time, stop."""

    def __init__(self, devices: int, per_endpoint: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=serve, args=(child, devices, per_endpoint), name="polling-sim", daemon=True
        )
        self._process.start()
        child.close()
        self.ports: list[int] = self._expect("ready", READY_TIMEOUT_S)

    def cpu_s(self) -> float:
        self._conn.send("cpu")
        return float(self._expect("cpu", 30.0))

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send("stop")
        self._process.join(30.0)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5.0)
        self._conn.close()

    def _expect(self, kind: str, timeout_s: float) -> Any:
        if not self._conn.poll(timeout_s):
            self.stop()
            raise RuntimeError(f"simulator: no {kind!r} message within {timeout_s:.0f} s")
        try:
            got, payload = self._conn.recv()
        except EOFError:
            self.stop()
            raise RuntimeError(
                f"simulator exited (status {self._process.exitcode}) before {kind!r}"
            ) from None
        if got != kind:
            self.stop()
            raise RuntimeError(f"simulator: expected {kind!r}, got {got!r}: {payload}")
        return payload


# The client.


class CountingEndpoint(ModbusEndpoint):
    """A ModbusEndpoint that counts the reads it completes and the ones that fail."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(endpoint)
        self.reads = 0
        self.failed_reads = 0

    async def read_holding_registers(
        self,
        unit: int,
        address: int,
        count: int,
        *,
        device: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
    ) -> list[int]:
        try:
            words = await super().read_holding_registers(
                unit, address, count, device=device, timeout_s=timeout_s, retries=retries
            )
        except BaseException:
            self.failed_reads += 1
            raise
        self.reads += 1
        return words


class CountingTransport(ModbusTransport):
    """A ModbusTransport whose endpoints are CountingEndpoints."""

    def __init__(self) -> None:
        super().__init__()
        self.counted: dict[str, CountingEndpoint] = {}

    def endpoint(self, endpoint: str) -> ModbusEndpoint:
        found = self.counted.get(endpoint)
        if found is None:
            found = self.counted[endpoint] = CountingEndpoint(endpoint)
        return found

    @property
    def reads(self) -> int:
        return sum(ep.reads for ep in self.counted.values())

    @property
    def failed_reads(self) -> int:
        return sum(ep.failed_reads for ep in self.counted.values())

    async def close(self) -> None:
        for ep in self.counted.values():
            await ep.close()
        self.counted.clear()


@dataclass
class PollStats:
    scheduled: int = 0
    completed: int = 0
    on_time: int = 0
    missed: int = 0
    errors: int = 0
    invalid_readings: int = 0
    lateness_s: list[float] = field(default_factory=list)
    start_lag_s: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(str(exc))


async def poll_device(
    device: ModbusDevice, first_due_s: float, end_s: float, stats: PollStats
) -> None:
    """Poll `device` every PERIOD_S from first_due_s while the due time is before end_s."""
    clock = time.monotonic
    due = first_due_s
    while due < end_s:
        now = clock()
        if now < due:
            await asyncio.sleep(due - now)
            now = clock()
        stats.scheduled += 1
        stats.start_lag_s.append(max(0.0, now - due))
        try:
            readings = await device.poll(GROUP)
        except DeviceError as exc:
            stats.error(exc)
        else:
            late = clock() - due
            stats.completed += 1
            stats.lateness_s.append(late)
            if late <= PERIOD_S:
                stats.on_time += 1
            stats.invalid_readings += sum(not r.valid for r in readings.values())
        due += PERIOD_S
        done = clock()
        # Ticks whose whole period has passed are missed, not polled in a burst.
        while due + PERIOD_S <= done and due < end_s:
            stats.scheduled += 1
            stats.missed += 1
            due += PERIOD_S


def _quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def run_client(
    ports: Sequence[int],
    devices: int,
    seconds: float,
    sim: Simulator | None,
    profiler: cProfile.Profile | None = None,
) -> dict[str, Any]:
    """Identify `devices` devices on `ports`, poll them for `seconds`, return the figures."""
    pv_map = _pv_map()
    transport = CountingTransport()
    endpoints = [f"{HOST}:{port}" for port in ports]
    fleet = []
    for i in range(devices):
        where, unit = placement(i, len(ports))
        fleet.append(
            ModbusDevice(
                device_id(i),
                endpoints[where],
                unit,
                pv_map,
                transport,
                timeout_s=DEFAULT_TIMEOUT_S,
                retries=DEFAULT_RETRIES,
            )
        )
    stats = PollStats()
    try:
        t_identify = time.monotonic()
        outcomes = await asyncio.gather(
            *(d.connect_and_identify() for d in fleet), return_exceptions=True
        )
        identify_s = time.monotonic() - t_identify
        identify_reads = transport.reads
        identified = []
        discovery_errors = 0
        for device, outcome in zip(fleet, outcomes, strict=True):
            if isinstance(outcome, DeviceError):
                discovery_errors += 1
                stats.error_samples.append(str(outcome))
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                identified.append(device)

        reads_before = transport.reads
        failed_before = transport.failed_reads
        server_cpu0 = sim.cpu_s() if sim is not None else math.nan
        if profiler is not None:
            profiler.enable()
        t0 = time.monotonic()
        cpu0 = time.process_time()
        end = t0 + seconds
        n = max(1, len(identified))
        await asyncio.gather(
            *(
                poll_device(device, t0 + PERIOD_S * i / n, end, stats)
                for i, device in enumerate(identified)
            )
        )
        # The window is `seconds` long even when the last polls end before it does.
        if (rest := end - time.monotonic()) > 0:
            await asyncio.sleep(rest)
        cpu1 = time.process_time()
        t1 = time.monotonic()
        if profiler is not None:
            profiler.disable()
        server_cpu1 = sim.cpu_s() if sim is not None else math.nan
        reads = transport.reads - reads_before
        failed_reads = transport.failed_reads - failed_before
    finally:
        await transport.close()

    wall = t1 - t0
    return {
        "devices": devices,
        "endpoints": len(ports),
        "seconds": round(wall, 3),
        "requests_per_s": reads / wall,
        "requests_per_poll": reads / stats.completed if stats.completed else math.nan,
        "polls_per_s": stats.completed / wall,
        "target_polls_per_s": devices / PERIOD_S,
        "polls_scheduled": stats.scheduled,
        "polls_completed": stats.completed,
        "polls_missed": stats.missed,
        "on_time_fraction": stats.on_time / stats.scheduled if stats.scheduled else 0.0,
        "lateness_p50_s": _quantile(stats.lateness_s, 0.50),
        "lateness_p99_s": _quantile(stats.lateness_s, 0.99),
        "lateness_max_s": max(stats.lateness_s, default=math.nan),
        "start_lag_p99_s": _quantile(stats.start_lag_s, 0.99),
        "client_cpu_share": (cpu1 - cpu0) / wall,
        "client_cpu_per_request_us": (cpu1 - cpu0) / reads * 1e6 if reads else math.nan,
        "server_cpu_share": (server_cpu1 - server_cpu0) / wall,
        "errors": stats.errors + discovery_errors,
        "poll_errors": stats.errors,
        "discovery_errors": discovery_errors,
        "failed_requests": failed_reads,
        "invalid_readings": stats.invalid_readings,
        "error_samples": stats.error_samples,
        "identify_s": identify_s,
        "identify_requests": identify_reads,
    }


def bench(
    devices: int,
    seconds: float,
    per_endpoint: int = UNITS_PER_ENDPOINT,
    profiler: cProfile.Profile | None = None,
) -> dict[str, Any]:
    """One size: start the simulator, run the client in a fresh loop, stop the simulator."""
    sim = Simulator(devices, per_endpoint)
    try:
        return asyncio.run(run_client(sim.ports, devices, seconds, sim, profiler))
    finally:
        sim.stop()


def target_met(row: dict[str, Any]) -> bool:
    """Every poll on time (to ON_TIME_GOAL), no error, and the client under one core."""
    return bool(
        row["on_time_fraction"] >= ON_TIME_GOAL
        and row["errors"] == 0
        and row["client_cpu_share"] < 1.0
    )


def run(
    sizes: Sequence[int],
    seconds: float,
    per_endpoint: int = UNITS_PER_ENDPOINT,
    profile_path: str | None = None,
) -> dict[str, Any]:
    """Every size, as the JSON document `--json` prints."""
    cores = os.cpu_count() or 1
    results = []
    for n in sizes:
        profiler = cProfile.Profile() if profile_path is not None else None
        results.append(bench(n, seconds, per_endpoint, profiler))
        if profiler is not None and profile_path is not None:
            path = profile_path if len(sizes) == 1 else f"{profile_path}.{n}"
            profiler.dump_stats(path)
    document: dict[str, Any] = {
        "benchmark": "polling",
        "profile": PROFILE,
        "group": GROUP,
        "period_s": PERIOD_S,
        "units_per_endpoint": per_endpoint,
        "cpu_count": cores,
        "python": platform.python_version(),
        "pymodbus": pymodbus.__version__,
        "profiled": profile_path is not None,
        "note": SHARED_CORES_NOTE.format(cores=cores),
        "results": results,
    }
    target = next((r for r in results if r["devices"] == TARGET_DEVICES), None)
    if target is not None:
        document["target"] = {
            "devices": TARGET_DEVICES,
            "met": target_met(target),
            "criterion": (
                f"on_time_fraction >= {ON_TIME_GOAL}, errors == 0, client_cpu_share < 1.0"
            ),
        }
    return document


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1e3:.1f}"


def print_text(document: dict[str, Any]) -> None:
    print(
        f"Modbus/TCP polling at {1 / document['period_s']:g} Hz: SunSpec PV devices "
        f"({document['group']} group), up to {document['units_per_endpoint']} per endpoint"
    )
    if document["profiled"]:
        print("PROFILED: cProfile inflates the client's CPU; these are not throughput figures")
    header = (
        f"{'devices':>7} {'endpts':>6} {'req/s':>8} {'polls/s':>8} {'on time':>8} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'lag99 ms':>8} {'client':>7} {'sim':>6} {'errors':>6}"
    )
    print(header)
    for r in document["results"]:
        print(
            f"{r['devices']:>7} {r['endpoints']:>6} {r['requests_per_s']:>8.0f} "
            f"{r['polls_per_s']:>8.1f} {r['on_time_fraction']:>8.3f} "
            f"{_ms(r['lateness_p50_s']):>7} {_ms(r['lateness_p99_s']):>7} "
            f"{_ms(r['start_lag_p99_s']):>8} {r['client_cpu_share']:>6.0%} "
            f"{r['server_cpu_share']:>5.0%} {r['errors']:>6}"
        )
    print(
        "client, sim: share of one core over the polling window (client: this process, "
        "one asyncio loop; sim: the simulator process)"
    )
    print(f"note: {document['note']}")
    for r in document["results"]:
        for sample in r["error_samples"]:
            print(f"  {r['devices']} devices, error: {sample}")
    target = document.get("target")
    if target is not None:
        verdict = "met" if target["met"] else "NOT met"
        print(
            f"target {target['devices']} devices at 1 Hz within one core: {verdict} "
            f"({target['criterion']})"
        )


def _no_nan(value: Any) -> Any:
    """NaN (a figure with nothing to measure) as JSON null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected sizes like 100,500,1000") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be positive")
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="polling.py", description="Modbus polling throughput against a simulated site"
    )
    parser.add_argument(
        "--devices",
        type=_sizes,
        default=list(DEFAULT_SIZES),
        metavar="N,N,...",
        help="fleet sizes (default 100,500,1000)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=DEFAULT_SECONDS,
        metavar="S",
        help="polling window per size (default 10)",
    )
    parser.add_argument(
        "--per-endpoint",
        type=int,
        default=UNITS_PER_ENDPOINT,
        metavar="N",
        help=f"devices per simulated TCP endpoint (default {UNITS_PER_ENDPOINT})",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="run the client's polling window under cProfile and dump the stats to FILE",
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    if not 1 <= args.per_endpoint <= MAX_UNITS_PER_ENDPOINT:
        parser.error(f"--per-endpoint must be 1-{MAX_UNITS_PER_ENDPOINT}")
    if not args.json:
        print(
            f"polling {', '.join(map(str, args.devices))} devices for {args.seconds:g} s each ...",
            file=sys.stderr,
        )
    document = run(args.devices, args.seconds, args.per_endpoint, args.profile)
    if args.json:
        json.dump(_no_nan(document), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_text(document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
