"""Load every device map under firmware_configs/, validate it, index it by profile.

A map that does not fit the schema, names a SunSpec point its model does not have, lays
two Modbus points over the same register, or whose firmware range is not a PEP 440
specifier is refused with every problem found (file, key path, what was expected), as
the site loader does. Among the maps of one profile the firmware version a device
reports chooses; a version no map covers is an UnsupportedDevice naming the device,
the version and the ranges that exist. `write_supported_md()` renders SUPPORTED.md
from the maps:

    python -m edgectl.devicemaps.loader --write-supported
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import json
import re
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from edgectl.devicemaps import sunspec
from edgectl.devicemaps.codec import TYPES
from edgectl.devicemaps.schema import (
    REGISTER_COUNT,
    DeviceMap,
    MapInfo,
    ModbusSection,
    OpcUaSection,
    Point,
    RegisterRef,
    SunSpecSection,
)
from edgectl.errors import InputError, Problem, UnsupportedDevice

__all__ = [
    "ANY_FIRMWARE",
    "REGENERATE",
    "LoadedMap",
    "MapIndex",
    "firmware_configs_root",
    "load_map",
    "load_maps",
    "main",
    "select_map",
    "supported_md",
    "validate_map_dict",
    "version_covered",
    "write_supported_md",
]

REGENERATE = "python -m edgectl.devicemaps.loader --write-supported"
SUPPORTED_MD = "SUPPORTED.md"
ANY_FIRMWARE = "*"

_SECTION_MODELS: dict[tuple[str, ...], type[BaseModel]] = {
    (): DeviceMap,
    ("map",): MapInfo,
    ("sunspec",): SunSpecSection,
    ("modbus",): ModbusSection,
    ("modbus", "fingerprint"): RegisterRef,
    ("modbus", "firmware_version"): RegisterRef,
    ("opcua",): OpcUaSection,
}
_KEY_MESSAGE = re.compile(r"([A-Za-z0-9_.\[\]]+): (.+)", re.DOTALL)
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class LoadedMap:
    """A valid map and the file it came from (relative to the firmware_configs root)."""

    file: str
    map: DeviceMap


class MapIndex:
    """Every map, by profile."""

    def __init__(self, maps: Iterable[LoadedMap]) -> None:
        self.maps = tuple(sorted(maps, key=lambda m: m.file))
        self._by_profile: dict[str, list[LoadedMap]] = {}
        for loaded in self.maps:
            self._by_profile.setdefault(loaded.map.map.profile, []).append(loaded)

    def profiles(self) -> list[str]:
        return sorted(self._by_profile)

    def for_profile(self, profile: str) -> list[DeviceMap]:
        """The maps of `profile` (one per firmware range); KeyError naming the known ones."""
        try:
            return [m.map for m in self._by_profile[profile]]
        except KeyError:
            close = difflib.get_close_matches(profile, self.profiles(), n=1)
            hint = f', did you mean "{close[0]}"?' if close else ""
            known = ", ".join(self.profiles())
            raise KeyError(
                f'no device map has profile "{profile}"{hint} (known: {known})'
            ) from None

    def file_of(self, device_map: DeviceMap) -> str:
        for loaded in self.maps:
            if loaded.map is device_map:
                return loaded.file
        raise KeyError("map not in this index")

    def select(self, profile: str, version: str | None, device: str) -> DeviceMap:
        """The map of `profile` covering firmware `version` (see select_map)."""
        return select_map(self.for_profile(profile), version, device)


def firmware_configs_root() -> Path:
    """The installed package data `edgectl.firmware_configs`, else the repository's copy."""
    try:
        found = resources.files("edgectl.firmware_configs")
    except ModuleNotFoundError:
        found = None
    if isinstance(found, Path) and found.is_dir():
        return found
    return Path(__file__).resolve().parents[2] / "firmware_configs"


def load_maps(root: Path | None = None) -> MapIndex:
    """Every *.toml under `root` (default: firmware_configs), validated; InputError if any fail."""
    base = root if root is not None else firmware_configs_root()
    loaded: list[LoadedMap] = []
    problems: list[Problem] = []
    for path in sorted(base.rglob("*.toml")):
        name = _display_name(path, base)
        try:
            loaded.append(LoadedMap(path.relative_to(base).as_posix(), load_map(path, name)))
        except InputError as exc:
            problems += exc.problems
    if not loaded and not problems:
        problems.append(Problem(str(base), "", "no device maps (*.toml) found"))
    problems += _profile_problems(loaded, base)
    if problems:
        raise InputError(problems)
    return MapIndex(loaded)


def load_map(path: Path, name: str | None = None) -> DeviceMap:
    """One map file, validated; `name` names it in problems (default: the path)."""
    file = name or str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError([Problem(file, "", f"cannot read: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError:
        raise InputError([Problem(file, "", "not valid UTF-8")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError([Problem(file, "", f"not valid TOML: {exc}")]) from None
    return validate_map_dict(data, file)


def validate_map_dict(data: Mapping[str, Any], file: str) -> DeviceMap:
    """Validate a parsed map; `file` only names it in the problems."""
    try:
        # JSON mode: strict, yet a TOML array is a valid tuple (range = [lo, hi]).
        device_map = DeviceMap.model_validate_json(json.dumps(data, default=str))
    except ValidationError as exc:
        raise InputError(_shape_problems(exc, file)) from None
    found = [*_firmware_problems(device_map)]
    if device_map.map.protocol == "sunspec":
        found += _sunspec_problems(device_map)
    elif device_map.map.protocol == "modbus":
        found += _modbus_problems(device_map)
    if found:
        raise InputError([Problem(file, path, message) for path, message in found])
    return device_map


def version_covered(firmware: str, version: Version) -> bool:
    """Whether a map's firmware range (PEP 440 specifiers, or "*") covers `version`."""
    if firmware.strip() == ANY_FIRMWARE:
        return True
    return SpecifierSet(firmware).contains(version, prereleases=True)


def select_map(maps: Sequence[DeviceMap], version: str | None, device: str) -> DeviceMap:
    """The map among `maps` (one profile) whose firmware range covers `version`.

    `version` None means the device does not say; that is fine only for a single map
    written for any firmware. Anything uncovered is UnsupportedDevice.
    """
    if not maps:
        raise UnsupportedDevice(device, "no device map to choose from")
    first = maps[0].map
    what = f"{first.vendor} {first.model} (profile {first.profile!r})"
    ranges = "; ".join(f'"{m.map.firmware}"' for m in maps)
    if version is None:
        if len(maps) == 1 and maps[0].map.firmware.strip() == ANY_FIRMWARE:
            return maps[0]
        raise UnsupportedDevice(
            device, f"{what} does not report a firmware version; the maps cover {ranges}"
        )
    try:
        parsed = Version(version)
    except InvalidVersion:
        if len(maps) == 1 and maps[0].map.firmware.strip() == ANY_FIRMWARE:
            return maps[0]
        raise UnsupportedDevice(
            device, f"{what} reports firmware {version!r}, not a version number"
        ) from None
    for candidate in maps:
        if version_covered(candidate.map.firmware, parsed):
            return candidate
    raise UnsupportedDevice(
        device,
        f"firmware {version} of {what} is not covered by any device map "
        f"(known firmware ranges: {ranges})",
    )


def supported_md(index: MapIndex) -> str:
    """SUPPORTED.md: one row per map."""
    lines = [
        "# Supported devices",
        "",
        f"Generated from the device maps in firmware_configs/ by `{REGENERATE}`;",
        "do not edit by hand. A site's `[[device]]` names a map by its profile; among the",
        "maps of one profile the firmware version the device reports chooses.",
        "",
        "| Protocol | Vendor | Model | Firmware | Role | Profile | Document | Points |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = sorted(
        index.maps,
        key=lambda m: (m.map.map.protocol, m.map.map.vendor, m.map.map.model, m.file),
    )
    for loaded in rows:
        info = loaded.map.map
        cells = [
            info.protocol,
            info.vendor,
            f"[{info.model}]({loaded.file})",
            info.firmware,
            info.role,
            info.profile,
            info.document,
            ", ".join(loaded.map.points),
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_supported_md(root: Path | None = None) -> Path:
    """Write SUPPORTED.md next to the maps; returns its path."""
    base = root if root is not None else firmware_configs_root()
    target = base / SUPPORTED_MD
    target.write_text(supported_md(load_maps(base)), encoding="utf-8")
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgectl.devicemaps.loader",
        description="Validate the device maps; optionally regenerate SUPPORTED.md.",
    )
    parser.add_argument("--write-supported", action="store_true", help="write SUPPORTED.md")
    parser.add_argument("--root", type=Path, help="maps directory (default: firmware_configs)")
    args = parser.parse_args(argv)
    try:
        if args.write_supported:
            print(f"wrote {write_supported_md(args.root)}")
        else:
            index = load_maps(args.root)
            print(f"{len(index.maps)} device maps, {len(index.profiles())} profiles: all valid")
    except InputError as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    return 0


def _display_name(path: Path, base: Path) -> str:
    return (Path(base.name) / path.relative_to(base)).as_posix()


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _shape_problems(exc: ValidationError, file: str) -> list[Problem]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        if err["type"] == "value_error":
            text = str(err["msg"]).removeprefix("Value error, ")
            for part in text.split("; "):
                match = _KEY_MESSAGE.fullmatch(part)
                if match:
                    prefix = _path(loc)
                    path = f"{prefix}.{match[1]}" if prefix else match[1]
                    problems.append(Problem(file, path, match[2]))
                else:
                    problems.append(Problem(file, _path(loc), part))
            continue
        problems.append(Problem(file, _path(loc), _message(err, loc)))
    return problems


def _message(err: ErrorDetails, loc: tuple[int | str, ...]) -> str:
    kind = err["type"]
    got = _describe(err.get("input"))
    if kind == "missing":
        return "missing required key"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        text = f"unknown key (allowed: {', '.join(allowed)})"
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        return f'{text}, did you mean "{close[0]}"?' if close else text
    if kind == "literal_error":
        return f"expected {(err.get('ctx') or {}).get('expected', 'an allowed value')}, got {got}"
    return f"{str(err['msg']).lower()}, got {got}"


def _allowed_keys(table: tuple[int | str, ...]) -> list[str]:
    key = tuple(str(k) for k in table)
    model = Point if len(key) == 2 and key[0] == "points" else _SECTION_MODELS.get(key)
    return list(model.model_fields) if model is not None else []


def _path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            key = part if _BARE_KEY.fullmatch(part) else json.dumps(part)
            out += f".{key}" if out else key
    return out


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)


def _firmware_problems(device_map: DeviceMap) -> Iterable[tuple[str, str]]:
    firmware = device_map.map.firmware.strip()
    if firmware == ANY_FIRMWARE:
        return
    try:
        SpecifierSet(firmware)
    except InvalidSpecifier:
        yield (
            "map.firmware",
            f'expected "*" or PEP 440 version specifiers such as ">=2.0,<3", got {firmware!r}',
        )


def _unit_key(units: str) -> str:
    """A SunSpec unit as a map states it: "% WMax" and "Pct" are "%", "Secs" is "s"."""
    units = units.strip()
    if units.startswith("%") or units == "Pct":
        return "%"
    return {"Secs": "s"}.get(units, units)


def _sunspec_problems(device_map: DeviceMap) -> Iterable[tuple[str, str]]:
    section = device_map.sunspec
    if section is None:
        return
    models = section.models
    for model_id in models:
        if model_id not in sunspec.model_ids():
            yield "sunspec.models", f"no SunSpec definition for model {model_id}"
    if models[0] != 1:
        yield "sunspec.models", "must start with 1: model 1 (common) opens every SunSpec chain"
    if len(set(models)) != len(models):
        yield "sunspec.models", "lists a model more than once"
    used: dict[str, str] = {}
    for name, point in device_map.points.items():
        if point.sunspec is None:
            continue
        where = f"points.{name}.sunspec"
        model_text, point_name = point.sunspec.split(".", 1)
        model_id = int(model_text)
        if model_id not in sunspec.model_ids():
            continue  # reported above or by the schema
        definition = sunspec.model_def(model_id)
        pdef = definition.points.get(point_name)
        if pdef is None:
            close = difflib.get_close_matches(point_name, list(definition.points), n=1)
            hint = f', did you mean "{model_id}.{close[0]}"?' if close else ""
            yield (
                where,
                f'model {model_id} ({definition.name}) has no point "{point_name}" '
                f"in its fixed block{hint}",
            )
            continue
        if point.sunspec in used:
            yield where, f"{point.sunspec} is already point {used[point.sunspec]}"
        used[point.sunspec] = name
        if point.access == "rw" and pdef.access != "RW":
            yield f"points.{name}.access", f"{point.sunspec} is read-only in model {model_id}"
        expected = _unit_key(pdef.units)
        if point.unit != expected:
            yield (
                f"points.{name}.unit",
                f'{point.sunspec} is in "{pdef.units}" per model {model_id}, so the unit is '
                f'"{expected}" (a SunSpec point keeps its model\'s unit), got "{point.unit}"',
            )


def _modbus_problems(device_map: DeviceMap) -> Iterable[tuple[str, str]]:
    section = device_map.modbus
    spans: list[tuple[int, int, str]] = []  # first register, past-the-end, key path
    if section is not None:
        for key in ("fingerprint", "firmware_version"):
            ref: RegisterRef | None = getattr(section, key)
            if ref is None:
                continue
            count = ref.size if ref.type == "string" else REGISTER_COUNT[ref.type]
            spans.append((ref.address, ref.address + count, f"modbus.{key}"))
            if key == "fingerprint" and ref.equals is None:
                yield "modbus.fingerprint.equals", "required: the value that identifies the device"
            if key == "firmware_version":
                yield from _firmware_ref_problems(ref)
    for name, point in device_map.points.items():
        if point.type is None or point.address is None:
            continue
        size = TYPES[point.type].size
        if point.type == "string":
            count = point.size or 1
        else:
            count = size
            if point.size is not None and point.size != size:
                yield (
                    f"points.{name}.size",
                    f"a {point.type} takes {size} registers, got {point.size}",
                )
        spans.append((point.address, point.address + count, f"points.{name}.address"))
        if point.scale == 0:
            yield f"points.{name}.scale", "must not be 0"
    spans.sort()
    for (start, end, path), (next_start, next_end, next_path) in itertools.pairwise(spans):
        if next_start < end:
            yield (
                next_path,
                f"registers {next_start}-{next_end - 1} overlap {path.removesuffix('.address')} "
                f"(registers {start}-{end - 1})",
            )
    for _, end, path in spans:
        if end > 0x10000:
            yield path, f"runs past the last register 65535 (ends at {end - 1})"


def _firmware_ref_problems(ref: RegisterRef) -> Iterable[tuple[str, str]]:
    path = "modbus.firmware_version"
    if ref.encoding == "major_minor" and ref.type != "u16":
        yield f"{path}.type", f'encoding "major_minor" needs type "u16", got "{ref.type}"'
    if ref.encoding == "string" and ref.type != "string":
        yield f"{path}.type", f'encoding "string" needs type "string", got "{ref.type}"'
    if ref.encoding == "integer" and ref.type in ("string", "f32"):
        yield f"{path}.type", f'encoding "integer" needs an integer type, got "{ref.type}"'


def _profile_problems(loaded: Sequence[LoadedMap], base: Path) -> list[Problem]:
    """Checks across the maps of one profile."""
    problems: list[Problem] = []
    by_profile: dict[str, list[LoadedMap]] = {}
    for item in loaded:
        by_profile.setdefault(item.map.map.profile, []).append(item)
    for profile, items in by_profile.items():
        first = items[0]
        for item in items[1:]:
            file = _display_name(base / item.file, base)
            for key in ("protocol", "role"):
                mine, theirs = getattr(item.map.map, key), getattr(first.map.map, key)
                if mine != theirs:
                    problems.append(
                        Problem(
                            file,
                            f"map.{key}",
                            f'profile "{profile}" is {key} "{theirs}" in {first.file}, '
                            f'got "{mine}"',
                        )
                    )
        if len(items) < 2:
            continue
        for item in items:
            file = _display_name(base / item.file, base)
            section = item.map.modbus
            if item.map.map.protocol == "modbus" and (
                section is None or section.fingerprint is None or section.firmware_version is None
            ):
                problems.append(
                    Problem(
                        file,
                        "modbus",
                        f'profile "{profile}" has several maps: each needs a fingerprint and a '
                        "firmware_version to choose between them",
                    )
                )
        problems += _overlapping_ranges(items, base)
    return problems


def _overlapping_ranges(items: Sequence[LoadedMap], base: Path) -> list[Problem]:
    """Two maps of one profile covering one firmware version: which applies is undecided."""
    specs = {item.file: item.map.map.firmware.strip() for item in items}
    probes: set[Version] = {Version("0"), Version("9999")}
    for spec in specs.values():
        for part in re.findall(r"[0-9][0-9A-Za-z.!+]*", spec):
            try:
                version = Version(part.rstrip("."))
            except InvalidVersion:
                continue
            probes.add(version)
            probes.add(Version(".".join(str(n) for n in (*version.release, 0, 1))))
    problems = []
    for i, item in enumerate(items):
        for other in items[:i]:
            shared = sorted(
                v
                for v in probes
                if version_covered(specs[item.file], v) and version_covered(specs[other.file], v)
            )
            if shared:
                problems.append(
                    Problem(
                        _display_name(base / item.file, base),
                        "map.firmware",
                        f'"{specs[item.file]}" overlaps "{specs[other.file]}" of {other.file} '
                        f"(both cover {shared[0]})",
                    )
                )
    return problems


if __name__ == "__main__":
    sys.exit(main())
