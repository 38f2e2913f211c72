"""Scenario files for `edgectl sim`: scripted events at given moments of simulated time.

A scenario is a TOML file; every key is checked, and a problem names the file, the key
path (`event[2].depth`, 0-based) and what was expected:

    [scenario]                    # optional
    name = "cloud front"
    description = "..."

    [[event]]
    at = 600.0                    # seconds of simulated time from the start (>= 0)
    kind = "cloud"                # what happens; the other keys depend on the kind
    depth = 0.7                   # ...

Kinds and their keys (defaults in brackets; "source" and "device" name ids of the site):

    cloud          PV irradiance down by `depth` [0.7] over `ramp_s` [5], held `duration_s`
                   [60], back over `ramp_s`. `source`: one pv source [every pv source].
    gust           wind up by `delta_mps` [8] over `rise_s` [3], held `duration_s` [10], back
                   over `rise_s`. `source`: one wind source [every wind source].
    cutout         a storm: the wind rises above the cut-out speed for `duration_s` [60]; the
                   turbine stops and restarts once the wind has calmed. `source` [every wind].
    battery_fault  the battery's converter trips (0 W, state FAULT) for `duration_s` [30].
                   `source`: one bess source [every bess source].
    reboot         `device` restarts: every written setpoint is cleared, and it answers
                   nothing for `duration_s` [0] while it boots.
    firmware       `device` comes back from a firmware update reporting `version` (a
                   string); a Modbus device then serves the device map that covers it.
    fault          `device` shows faults: `offline`, `timeout`, `garbage`, `not_implemented`,
                   `stuck`, `ignore_setpoints` (true/false), `latency_s` (>= 0), `points`
                   (point names; [] for all); they replace the device's faults and clear
                   after `duration_s` [never].
    clear_faults   `device` loses every fault.

Instead of `source`, the physical events also take `device`: the device of a source.
The control API (`POST /v1/events`) takes the same events as JSON, without `at`.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgectl.errors import InputError, Problem
from edgectl.sim.faults import DeviceFaults

__all__ = [
    "EVENT_KINDS",
    "BatteryFault",
    "ClearFaults",
    "Cloud",
    "Cutout",
    "Event",
    "Fault",
    "Firmware",
    "Gust",
    "Reboot",
    "Scenario",
    "Scheduled",
    "Targets",
    "event_to_dict",
    "faults_to_dict",
    "load_scenario",
    "parse_event",
    "parse_faults",
    "validate_scenario_dict",
]


@dataclass(frozen=True)
class Cloud:
    sources: tuple[str, ...]  # pv source ids; every pv source when it was not narrowed
    depth: float = 0.7
    ramp_s: float = 5.0
    duration_s: float = 60.0


@dataclass(frozen=True)
class Gust:
    sources: tuple[str, ...]
    delta_mps: float = 8.0
    rise_s: float = 3.0
    duration_s: float = 10.0


@dataclass(frozen=True)
class Cutout:
    sources: tuple[str, ...]
    duration_s: float = 60.0


@dataclass(frozen=True)
class BatteryFault:
    sources: tuple[str, ...]
    duration_s: float = 30.0


@dataclass(frozen=True)
class Reboot:
    device: str
    duration_s: float = 0.0


@dataclass(frozen=True)
class Firmware:
    device: str
    version: str


@dataclass(frozen=True)
class Fault:
    device: str
    faults: DeviceFaults
    duration_s: float | None = None


@dataclass(frozen=True)
class ClearFaults:
    device: str


Event = Cloud | Gust | Cutout | BatteryFault | Reboot | Firmware | Fault | ClearFaults

EVENT_KINDS: dict[str, type[Event]] = {
    "cloud": Cloud,
    "gust": Gust,
    "cutout": Cutout,
    "battery_fault": BatteryFault,
    "reboot": Reboot,
    "firmware": Firmware,
    "fault": Fault,
    "clear_faults": ClearFaults,
}
_KIND_OF: dict[type[Event], str] = {cls: kind for kind, cls in EVENT_KINDS.items()}
# Source kind each physical event acts on.
_SOURCE_KIND = {"cloud": "pv", "gust": "wind", "cutout": "wind", "battery_fault": "bess"}
_FAULT_FLAGS = ("offline", "timeout", "garbage", "not_implemented", "stuck", "ignore_setpoints")
# Numbers of each physical event other than duration_s: (low, high, low is exclusive).
_NUMBERS: dict[str, dict[str, tuple[float | None, float | None, bool]]] = {
    "cloud": {"depth": (0.0, 1.0, False), "ramp_s": (0.0, None, False)},
    "gust": {"delta_mps": (0.0, 60.0, True), "rise_s": (0.0, None, False)},
    "cutout": {},
    "battery_fault": {},
}


@dataclass(frozen=True)
class Targets:
    """What events may name: sources by kind, devices with their points and sources."""

    sources: Mapping[str, str]  # source id -> kind
    devices: Mapping[str, frozenset[str]]  # device id -> its map's point names
    device_source: Mapping[str, str] = field(default_factory=dict)  # device id -> source id


@dataclass(frozen=True)
class Scheduled:
    """An event and when it happens (seconds of simulated time), with where it was written."""

    at_s: float
    event: Event
    where: str


@dataclass(frozen=True)
class Scenario:
    file: str
    name: str
    description: str
    events: tuple[Scheduled, ...]  # in time order (file order among equal times)


def load_scenario(path: str | os.PathLike[str], targets: Targets) -> Scenario:
    """Read and validate a scenario file; InputError with every problem found."""
    file = os.fspath(path)
    try:
        data = tomllib.loads(Path(file).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError([Problem(file, "", "no such file")]) from None
    except IsADirectoryError:
        raise InputError([Problem(file, "", "is a directory, expected a TOML file")]) from None
    except UnicodeDecodeError:
        raise InputError([Problem(file, "", "not valid UTF-8")]) from None
    except OSError as exc:
        raise InputError([Problem(file, "", f"cannot read: {exc.strerror or exc}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError([Problem(file, "", f"not valid TOML: {exc}")]) from None
    return validate_scenario_dict(data, file, targets)


def validate_scenario_dict(data: Mapping[str, Any], file: str, targets: Targets) -> Scenario:
    """Validate a parsed scenario; `file` only names it in the problems."""
    problems: list[Problem] = []
    unknown = sorted(set(data) - {"scenario", "event"})
    problems += [
        Problem(file, _key(k), "unknown key (allowed: [scenario], [[event]])") for k in unknown
    ]
    name = description = ""
    header = data.get("scenario", {})
    if not isinstance(header, dict):
        problems.append(Problem(file, "scenario", f"expected a table, got {_describe(header)}"))
    else:
        for key, value in header.items():
            if key not in ("name", "description"):
                problems.append(
                    Problem(
                        file, f"scenario.{_key(key)}", "unknown key (allowed: name, description)"
                    )
                )
            elif not isinstance(value, str):
                problems.append(
                    Problem(file, f"scenario.{key}", f"expected a string, got {_describe(value)}")
                )
        name = str(header.get("name", ""))
        description = str(header.get("description", ""))
    raw_events = data.get("event", [])
    if not isinstance(raw_events, list):
        problems.append(
            Problem(
                file,
                "event",
                f"expected an array of tables ([[event]]), got {_describe(raw_events)}",
            )
        )
        raw_events = []
    events: list[Scheduled] = []
    for i, raw in enumerate(raw_events):
        where = f"event[{i}]"
        if not isinstance(raw, dict):
            problems.append(Problem(file, where, f"expected a table, got {_describe(raw)}"))
            continue
        found: list[tuple[str, str]] = []
        at_s = _number(raw, "at", found, low=0.0, required=True)
        body = {k: v for k, v in raw.items() if k != "at"}
        event = _parse(body, targets, found)
        problems += [Problem(file, f"{where}.{key}" if key else where, msg) for key, msg in found]
        if event is not None and at_s is not None and not found:
            events.append(Scheduled(at_s, event, where))
    if problems:
        raise InputError(problems)
    events.sort(key=lambda s: s.at_s)
    return Scenario(file, name, description, tuple(events))


def parse_event(data: Any, targets: Targets, *, source: str = "request") -> Event:
    """One event given as JSON (the control API): InputError naming `source` and the key."""
    if not isinstance(data, dict):
        raise InputError([Problem(source, "", f"expected a JSON object, got {_describe(data)}")])
    found: list[tuple[str, str]] = []
    if "at" in data:
        found.append(("at", "not here: an event sent to the API happens now"))
    event = _parse({k: v for k, v in data.items() if k != "at"}, targets, found)
    if found or event is None:
        raise InputError([Problem(source, key, msg) for key, msg in found])
    return event


def parse_faults(
    data: Any, points: frozenset[str], *, source: str = "request"
) -> tuple[DeviceFaults, float | None]:
    """A DeviceFaults body (JSON object) and its optional duration_s, validated."""
    if not isinstance(data, dict):
        raise InputError([Problem(source, "", f"expected a JSON object, got {_describe(data)}")])
    found: list[tuple[str, str]] = []
    allowed = (*_FAULT_FLAGS, "latency_s", "points", "duration_s")
    _unknown(data, allowed, found)
    faults, duration_s = _faults(data, points, found)
    if found:
        raise InputError([Problem(source, key, msg) for key, msg in found])
    return faults, duration_s


def event_to_dict(event: Event) -> dict[str, Any]:
    """An event as JSON-ready data, in the vocabulary it was written in."""
    out: dict[str, Any] = {"kind": _KIND_OF[type(event)]}
    if isinstance(event, Fault):
        out["device"] = event.device
        out.update(faults_to_dict(event.faults))
        if event.duration_s is not None:
            out["duration_s"] = event.duration_s
        return out
    for key, value in vars(event).items():
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def faults_to_dict(faults: DeviceFaults) -> dict[str, Any]:
    return {
        "offline": faults.offline,
        "latency_s": faults.latency_s,
        "timeout": faults.timeout,
        "garbage": faults.garbage,
        "not_implemented": faults.not_implemented,
        "stuck": faults.stuck,
        "ignore_setpoints": faults.ignore_setpoints,
        "points": sorted(faults.points),
    }


def _parse(data: Mapping[str, Any], targets: Targets, found: list[tuple[str, str]]) -> Event | None:
    """The event in `data` (without `at`), or None with the problems added to `found`."""
    kind = data.get("kind")
    if kind is None:
        found.append(("kind", f"missing required key (one of: {', '.join(EVENT_KINDS)})"))
        return None
    if not isinstance(kind, str) or kind not in EVENT_KINDS:
        found.append(("kind", f"expected one of {', '.join(EVENT_KINDS)}, got {_describe(kind)}"))
        return None
    before = len(found)
    event: Event | None = None
    if kind in _SOURCE_KIND:
        event = _physical(kind, data, targets, found)
    elif kind == "reboot":
        _unknown(data, ("kind", "device", "duration_s"), found)
        device = _device(data, targets, found)
        duration = _number(data, "duration_s", found, low=0.0)
        if device is not None:
            event = Reboot(device, 0.0 if duration is None else duration)
    elif kind == "firmware":
        _unknown(data, ("kind", "device", "version"), found)
        device = _device(data, targets, found)
        version = data.get("version")
        if version is None:
            found.append(("version", "missing required key (the firmware version, a string)"))
        elif not isinstance(version, str) or not version.strip():
            found.append(("version", f"expected a version string, got {_describe(version)}"))
        elif device is not None:
            event = Firmware(device, version.strip())
    elif kind == "fault":
        allowed = ("kind", "device", *_FAULT_FLAGS, "latency_s", "points", "duration_s")
        _unknown(data, allowed, found)
        device = _device(data, targets, found)
        points = targets.devices.get(device, frozenset()) if device is not None else frozenset()
        faults, duration = _faults(data, points, found, check_points=device is not None)
        if device is not None:
            event = Fault(device, faults, duration)
    else:
        _unknown(data, ("kind", "device"), found)
        device = _device(data, targets, found)
        if device is not None:
            event = ClearFaults(device)
    return event if len(found) == before else None


def _physical(
    kind: str, data: Mapping[str, Any], targets: Targets, found: list[tuple[str, str]]
) -> Event | None:
    bounds = {**_NUMBERS[kind], "duration_s": (0.0, None, False)}
    _unknown(data, ("kind", "source", "device", *bounds), found)
    values: dict[str, float] = {}
    for key, (low, high, exclusive) in bounds.items():
        value = _number(data, key, found, low=low, high=high, low_exclusive=exclusive)
        if value is not None:
            values[key] = value
    sources = _sources(data, _SOURCE_KIND[kind], targets, found)
    if sources is None:
        return None
    if kind == "cloud":
        return Cloud(sources, **values)
    if kind == "gust":
        return Gust(sources, **values)
    if kind == "cutout":
        return Cutout(sources, **values)
    return BatteryFault(sources, **values)


def _sources(
    data: Mapping[str, Any], kind: str, targets: Targets, found: list[tuple[str, str]]
) -> tuple[str, ...] | None:
    """The sources of `kind` an event acts on: the one named, or all of them."""
    every = tuple(s for s, k in targets.sources.items() if k == kind)
    if "source" in data and "device" in data:
        found.append(("device", "give either source or device, not both"))
        return None
    if "device" in data:
        device = _device(data, targets, found)
        if device is None:
            return None
        source = targets.device_source.get(device)
        if source is None or targets.sources.get(source) != kind:
            found.append(("device", f"{device!r} is not the device of a {kind} source"))
            return None
        return (source,)
    if "source" not in data:
        if not every:
            found.append(("kind", f"the site has no {kind} source"))
            return None
        return every
    name = data["source"]
    if not isinstance(name, str):
        found.append(("source", f"expected a source id (a string), got {_describe(name)}"))
        return None
    if targets.sources.get(name) != kind:
        known = ", ".join(every) or "none"
        what = "no such source" if name not in targets.sources else f"not a {kind} source"
        found.append(("source", f"{name!r}: {what} (the {kind} sources: {known})"))
        return None
    return (name,)


def _device(data: Mapping[str, Any], targets: Targets, found: list[tuple[str, str]]) -> str | None:
    name = data.get("device")
    if name is None:
        found.append(("device", "missing required key (a device id of the site)"))
        return None
    if not isinstance(name, str):
        found.append(("device", f"expected a device id (a string), got {_describe(name)}"))
        return None
    if name not in targets.devices:
        known = ", ".join(targets.devices) or "none"
        found.append(("device", f"no device {name!r} in the site (known: {known})"))
        return None
    return name


def _faults(
    data: Mapping[str, Any],
    points: frozenset[str],
    found: list[tuple[str, str]],
    *,
    check_points: bool = True,
) -> tuple[DeviceFaults, float | None]:
    faults = DeviceFaults()
    for flag in _FAULT_FLAGS:
        value = data.get(flag, False)
        if isinstance(value, bool):
            setattr(faults, flag, value)
        else:
            found.append((flag, f"expected true or false, got {_describe(value)}"))
    latency = _number(data, "latency_s", found, low=0.0, high=3600.0)
    faults.latency_s = 0.0 if latency is None else latency
    chosen = data.get("points", [])
    if not isinstance(chosen, list) or not all(isinstance(p, str) for p in chosen):
        found.append(("points", f"expected a list of point names, got {_describe(chosen)}"))
    else:
        unknown = sorted(set(chosen) - points) if check_points else []
        if unknown:
            has = ", ".join(sorted(points))
            found.append(
                ("points", f"not points of the device: {', '.join(unknown)} (it has: {has})")
            )
        faults.points = set(chosen)
    duration = _number(data, "duration_s", found, low=0.0, low_exclusive=True)
    return faults, duration


def _number(
    data: Mapping[str, Any],
    key: str,
    found: list[tuple[str, str]],
    *,
    low: float | None = None,
    high: float | None = None,
    low_exclusive: bool = False,
    required: bool = False,
) -> float | None:
    """The number at `key` (None if absent), checked against its bounds."""
    if key not in data:
        if required:
            found.append((key, "missing required key (seconds of simulated time)"))
        return None
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        found.append((key, f"expected a number, got {_describe(value)}"))
        return None
    number = float(value)
    if not math.isfinite(number):
        found.append((key, f"expected a finite number, got {_describe(value)}"))
        return None
    if low is not None and (number <= low if low_exclusive else number < low):
        words = "greater than" if low_exclusive else "at least"
        found.append((key, f"must be {words} {low:g}, got {number:g}"))
        return None
    if high is not None and number > high:
        found.append((key, f"must be at most {high:g}, got {number:g}"))
        return None
    return number


def _unknown(data: Mapping[str, Any], allowed: Sequence[str], found: list[tuple[str, str]]) -> None:
    for key in data:
        if key not in allowed:
            found.append((_key(str(key)), f"unknown key (allowed: {', '.join(allowed)})"))


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else f'"{key}"'


_DESCRIBE: dict[type, Callable[[Any], str]] = {
    bool: lambda v: "true" if v else "false",
    str: lambda v: f'"{v}"' if len(v) <= 40 else f'"{v[:40]}..."',
    list: lambda _: "an array",
    dict: lambda _: "a table",
}


def _describe(value: Any) -> str:
    """A found value as an operator reads it."""
    if value is None:
        return "nothing (null)"
    describe = _DESCRIBE.get(type(value))
    return describe(value) if describe is not None else repr(value)
