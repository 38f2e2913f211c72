"""Read a site file and validate all of it: TOML in, an immutable Site or every problem out.

The daemon and `edgectl check-config` both call `load_site`, so a file that passes the
check is a file the daemon accepts. Problems name the file, the key path in TOML terms
(`rack[3].p_min_w`, 0-based indexes) and what was expected. Shape and per-field checks
come from the pydantic models in `site.py`; the checks across entries (ids, references,
connectivity, a droop source) run here, only once the shape is valid, and also report
every problem they find.
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
import re
import sys
import tomllib
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from edgectl.config.site import (
    DROOP_KINDS,
    Bus,
    Control,
    Daemon,
    Device,
    Line,
    Rack,
    Site,
    SiteInfo,
    Source,
    Uplink,
)
from edgectl.errors import InputError, Problem

__all__ = ["SOURCE_KINDS", "load_site", "summary", "validate_site_dict"]

# TOML name of each array of tables -> the model of one entry, in file order.
_ENTRY_MODELS: dict[str, type[BaseModel]] = {
    "bus": Bus,
    "line": Line,
    "source": Source,
    "rack": Rack,
    "device": Device,
}
_TABLE_MODELS: dict[str, type[BaseModel]] = {
    "site": SiteInfo,
    "control": Control,
    "daemon": Daemon,
    "uplink": Uplink,
}
SOURCE_KINDS = ("pv", "wind", "bess", "grid")  # summary order: renewables, storage, grid
_TIERS = (0, 1, 2, 3)
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_MESSAGE_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*): (.+)", re.DOTALL)
# Below this many ids an unknown reference lists them all; above, only a close match.
_LIST_KNOWN_MAX = 12


def load_site(path: str | os.PathLike[str]) -> Site:
    """Read and validate a site file; raise InputError with every problem found."""
    file = os.fspath(path)
    return validate_site_dict(_read_toml(file), file)


def validate_site_dict(data: Mapping[str, Any], file: str) -> Site:
    """Validate a parsed site file; `file` only names it in the problems."""
    try:
        # TOML names only: `from_bus` or `buses` in a file is an unknown key, not an alias.
        site = Site.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise InputError(_shape_problems(exc, data, file)) from None
    problems = _cross_problems(site, file)
    if problems:
        raise InputError(problems)
    return site


def summary(site: Site) -> dict[str, Any]:
    """What a valid site holds, in plain numbers (W, Wh), for check-config and --json."""
    sources: dict[str, dict[str, Any]] = {}
    for kind in SOURCE_KINDS:
        of_kind = site.sources_of(kind)
        if not of_kind:
            continue
        entry: dict[str, Any] = {
            "count": len(of_kind),
            "p_max_w": _total(s.p_max_w for s in of_kind),
        }
        if kind == "bess":
            entry["p_charge_max_w"] = _total(s.p_charge_max_w or 0.0 for s in of_kind)
            entry["capacity_wh"] = _total(s.capacity_wh or 0.0 for s in of_kind)
        sources[kind] = entry
    return {
        "site": site.site.id,
        "v_nominal_v": site.site.v_nominal_v,
        "buses": len(site.buses),
        "lines": len(site.lines),
        "devices": len(site.devices),
        "sources": sources,
        "sources_p_max_w": _total(s.p_max_w for s in site.sources),
        "racks": {
            "count": len(site.racks),
            "p_max_w": _total(r.p_max_w for r in site.racks),
            "p_min_w": _total(r.p_min_w for r in site.racks),
            # JSON object keys are strings; keep them so here too, so both outputs agree.
            "tiers": {str(t): sum(1 for r in site.racks if r.tier == t) for t in _TIERS},
        },
    }


def _total(values: Iterable[float]) -> float:
    return float(sum(values))


def _read_toml(file: str) -> dict[str, Any]:
    """Parse a TOML file; a missing, unreadable or malformed file is one Problem."""
    try:
        raw = Path(file).read_bytes()
    except FileNotFoundError:
        raise InputError([Problem(file, "", "no such file")]) from None
    except IsADirectoryError:
        raise InputError([Problem(file, "", "is a directory, expected a TOML file")]) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise InputError([Problem(file, "", f"cannot read: {reason}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise InputError([Problem(file, "", f"not valid UTF-8 (at line {line})")]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already ends with "(at line L, column C)".
        raise InputError([Problem(file, "", f"not valid TOML: {exc}")]) from None


def _shape_problems(exc: ValidationError, data: Mapping[str, Any], file: str) -> list[Problem]:
    problems: list[Problem] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        if err["type"] == "value_error":
            problems += _validator_problems(err, loc, data, file)
            continue
        message = _message(err, loc)
        problems.append(Problem(file, _path(loc), message + _entry_label(data, loc)))
    return problems


def _validator_problems(
    err: ErrorDetails, loc: tuple[int | str, ...], data: Mapping[str, Any], file: str
) -> list[Problem]:
    """Split a model validator's "key: what; key: what" into one Problem per key."""
    text = str(err["msg"]).removeprefix("Value error, ")
    keys = _keys_of(loc)
    problems = []
    for part in text.split("; "):
        match = _MESSAGE_KEY.fullmatch(part)
        if match and match[1] in keys:
            where: tuple[int | str, ...] = (*loc, match[1])
            problems.append(Problem(file, _path(where), match[2] + _entry_label(data, where)))
        else:
            problems.append(Problem(file, _path(loc), part + _entry_label(data, loc)))
    return problems


def _message(err: ErrorDetails, loc: tuple[int | str, ...]) -> str:
    """Pydantic's error as an operator reads it: what was expected, what was found."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    got = _describe(err.get("input"))
    key = loc[-1] if loc else ""
    if kind == "missing":
        if len(loc) == 1 and key in _TABLE_MODELS:
            return f"missing required table [{key}]"
        if len(loc) == 1 and key in _ENTRY_MODELS:
            return f"missing: at least one [[{key}]] entry is required"
        return "missing required key"
    if kind == "extra_forbidden":
        allowed = _keys_of(loc[:-1])
        text = f"unknown key (allowed: {', '.join(allowed)})"
        close = difflib.get_close_matches(str(key), allowed, n=1)
        return f'{text}, did you mean "{close[0]}"?' if close else text
    expected = {
        "float_type": "a number",
        "int_type": "an integer",
        "string_type": "a string",
        "bool_type": "true or false",
        "finite_number": "a finite number",
    }
    if kind in expected:
        return f"expected {expected[kind]}, got {got}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"expected a table, got {got}"
    if kind == "list_type":
        if len(loc) == 1 and key in _ENTRY_MODELS:
            return f"expected an array of tables ([[{key}]]), got {got}"
        return f"expected an array, got {got}"
    if kind == "literal_error":
        return f"expected {ctx.get('expected', 'one of the allowed values')}, got {got}"
    bounds = {
        "greater_than": ("gt", "must be greater than"),
        "greater_than_equal": ("ge", "must be at least"),
        "less_than": ("lt", "must be less than"),
        "less_than_equal": ("le", "must be at most"),
    }
    if kind in bounds:
        name, words = bounds[kind]
        return f"{words} {_number(ctx.get(name))}, got {_number(err.get('input'))}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "too_short":
        if len(loc) == 1 and key in _ENTRY_MODELS:
            return f"at least one [[{key}]] entry is required"
        return f"needs at least {ctx.get('min_length')} entries"
    # Any other pydantic check: its own sentence, plus what was found.
    return f"{str(err['msg']).lower()}, got {got}"


def _keys_of(table: tuple[int | str, ...]) -> list[str]:
    """The TOML keys allowed in the table at `table` (() is the top level)."""
    if not table:
        model: type[BaseModel] = Site
    elif table[0] in _TABLE_MODELS:
        model = _TABLE_MODELS[str(table[0])]
    elif table[0] in _ENTRY_MODELS:
        model = _ENTRY_MODELS[str(table[0])]
    else:
        return []
    return [field.alias or name for name, field in model.model_fields.items()]


def _path(loc: Sequence[int | str]) -> str:
    """A pydantic loc as a TOML key path: ("rack", 3, "p_min_w") -> rack[3].p_min_w."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        key = part if _BARE_KEY.fullmatch(part) else _quote(part)
        out += f".{key}" if out else key
    return out


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _entry_label(data: Mapping[str, Any], loc: Sequence[int | str]) -> str:
    """' (rack "r04")' for a problem inside an entry that has a usable id, else ''."""
    if len(loc) < 2 or loc[0] not in _ENTRY_MODELS or not isinstance(loc[1], int):
        return ""
    if len(loc) > 2 and loc[2] == "id":
        return ""
    entries = data.get(str(loc[0]))
    if not isinstance(entries, list) or not 0 <= loc[1] < len(entries):
        return ""
    entry = entries[loc[1]]
    entry_id = entry.get("id") if isinstance(entry, dict) else None
    if not isinstance(entry_id, str) or not entry_id:
        return ""
    return f' ({loc[0]} "{entry_id}")'


def _describe(value: Any) -> str:
    """A TOML value named by its TOML type: string '12', integer 5, a table."""
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value!r}"  # 1.0, not 1: the type is the point here
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dt.datetime):
        return f"date-time {value.isoformat()}"
    if isinstance(value, dt.date):
        return f"date {value.isoformat()}"
    if isinstance(value, dt.time):
        return f"time {value.isoformat()}"
    return repr(value)


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def _cross_problems(site: Site, file: str) -> list[Problem]:
    """Checks across entries; the shape is valid, so every field has its type."""
    found = [
        *_duplicate_ids(site),
        *_line_ends(site),
        *_bus_references(site),
        *_device_references(site),
        *_modbus_addresses(site),
        *_islands(site),
        *_droop_present(site),
    ]
    # In file order, so an operator can fix the file top to bottom.
    found.sort(key=lambda item: _file_order(item[0]))
    return [Problem(file, path, message) for path, message in found]


def _file_order(path: str) -> tuple[int, int]:
    """Sort key of a key path: its array in file order, then its index."""
    match = re.match(r"([a-z]+)(?:\[(\d+)\])?", path)
    table, index = (match[1], match[2]) if match else ("", None)
    rank = list(_ENTRY_MODELS).index(table) if table in _ENTRY_MODELS else len(_ENTRY_MODELS)
    return rank, int(index) if index is not None else sys.maxsize


def _tables(site: Site) -> dict[str, Sequence[Bus | Line | Source | Rack | Device]]:
    return {
        "bus": site.buses,
        "line": site.lines,
        "source": site.sources,
        "rack": site.racks,
        "device": site.devices,
    }


def _duplicate_ids(site: Site) -> Iterable[tuple[str, str]]:
    for table, entries in _tables(site).items():
        first: dict[str, int] = {}
        for i, entry in enumerate(entries):
            if entry.id in first:
                yield (
                    f"{table}[{i}].id",
                    f'duplicate id "{entry.id}" (first used by {table}[{first[entry.id]}])',
                )
            else:
                first[entry.id] = i


def _unknown(what: str, name: str, known: Sequence[str]) -> str:
    """'unknown bus "b9"' with a hint: the close match, or every id when there are few."""
    text = f'unknown {what} "{name}"'
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f'{text}, did you mean "{close[0]}"?'
    if not known:
        return f"{text}, the file has no [[{what}]] entry"
    if len(known) <= _LIST_KNOWN_MAX:
        return f"{text} (known: {', '.join(known)})"
    return text


def _line_ends(site: Site) -> Iterable[tuple[str, str]]:
    for i, line in enumerate(site.lines):
        if line.from_bus == line.to_bus:
            yield (
                f"line[{i}].to",
                f'same bus as from ("{line.to_bus}"), a line must join two buses '
                f'(line "{line.id}")',
            )


def _bus_references(site: Site) -> Iterable[tuple[str, str]]:
    known = list(dict.fromkeys(b.id for b in site.buses))
    ids = set(known)
    refs: list[tuple[str, str, str]] = []
    for i, line in enumerate(site.lines):
        refs.append((f"line[{i}].from", line.from_bus, f'line "{line.id}"'))
        refs.append((f"line[{i}].to", line.to_bus, f'line "{line.id}"'))
    refs += [(f"source[{i}].bus", s.bus, f'source "{s.id}"') for i, s in enumerate(site.sources)]
    refs += [(f"rack[{i}].bus", r.bus, f'rack "{r.id}"') for i, r in enumerate(site.racks)]
    for path, bus, owner in refs:
        if bus not in ids:
            yield path, f"{_unknown('bus', bus, known)} ({owner})"


def _device_references(site: Site) -> Iterable[tuple[str, str]]:
    known = list(dict.fromkeys(d.id for d in site.devices))
    ids = set(known)
    users: dict[str, str] = {}  # device id -> path of the entry that uses it first
    entries: list[tuple[str, Source | Rack]] = [
        *((f"source[{i}]", s) for i, s in enumerate(site.sources)),
        *((f"rack[{i}]", r) for i, r in enumerate(site.racks)),
    ]
    for where, entry in entries:
        device = entry.device
        if device is None:
            continue
        owner = f'{where.split("[")[0]} "{entry.id}"'
        if device not in ids:
            yield f"{where}.device", f"{_unknown('device', device, known)} ({owner})"
        elif device in users:
            # One device answers for one source or rack: two entries sharing it would
            # double-count its power and fight over its setpoint.
            yield (
                f"{where}.device",
                f'device "{device}" is already used by {users[device]}, '
                f"a device serves one source or rack ({owner})",
            )
        else:
            users[device] = where


def _modbus_addresses(site: Site) -> Iterable[tuple[str, str]]:
    # Several devices may share a Modbus gateway (endpoint) but not its unit id: the
    # second would read and write the first one's registers.
    first: dict[tuple[str, int], int] = {}
    for i, device in enumerate(site.devices):
        if not device.protocol.startswith("modbus"):
            continue
        address = (device.endpoint, device.unit)
        if address in first:
            j = first[address]
            yield (
                f"device[{i}].unit",
                f'same Modbus address as device[{j}] ("{site.devices[j].id}"): endpoint '
                f'{device.endpoint}, unit {device.unit} (device "{device.id}")',
            )
        else:
            first[address] = i


def _islands(site: Site) -> Iterable[tuple[str, str]]:
    """Buses that no chain of lines joins to the first bus."""
    neighbours: dict[str, set[str]] = {b.id: set() for b in site.buses}
    if any(ln.from_bus not in neighbours or ln.to_bus not in neighbours for ln in site.lines):
        # A line with a mistyped end is reported as such; which buses it was meant to
        # join is unknown, so islands found without it would only repeat that problem.
        return
    for line in site.lines:
        neighbours[line.from_bus].add(line.to_bus)
        neighbours[line.to_bus].add(line.from_bus)
    root = site.buses[0].id
    reached = {root}
    queue = deque([root])
    while queue:
        for other in neighbours[queue.popleft()] - reached:
            reached.add(other)
            queue.append(other)
    reported: set[str] = set()
    for i, bus in enumerate(site.buses):
        if bus.id not in reached and bus.id not in reported:
            reported.add(bus.id)
            yield f"bus[{i}]", f'not connected to bus "{root}" (bus "{bus.id}")'


def _droop_present(site: Site) -> Iterable[tuple[str, str]]:
    if not any(s.is_droop for s in site.sources):
        kinds = " or ".join(f'"{k}"' for k in DROOP_KINDS)
        yield (
            "source",
            f"no droop-controlled source (kind {kinds}): nothing would hold the bus voltage",
        )
