"""SunSpec model layouts, generated from the JSON model definitions pysunspec2 ships.

No offset is typed by hand: every layout comes from `sunspec2/models/json/model_<id>.json`
(the sunspec/models repository). Offsets count registers from the model's ID register
(ID at 0, L at 1), so a point's address is the model's start address plus its offset.
Repeating groups start after the fixed block; their first instance's offset is exposed
(and for a group without nested groups, any instance's). A device is found by
`discover`: "SunS" at base 40000, 0 or 50000 (that order), then a walk over the
(ID, L) headers using the L the device reports until the end model 0xFFFF.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Any, Final, Literal

from edgectl.errors import ProtocolError, UnsupportedDevice

__all__ = [
    "BASE_ADDRESSES",
    "END_MODEL_ID",
    "SUNS_MARKER",
    "Discovery",
    "GroupDef",
    "ModelDef",
    "ModelInstance",
    "PointDef",
    "discover",
    "model_def",
    "model_ids",
]

BASE_ADDRESSES: Final = (40000, 0, 50000)  # 0-based protocol addresses, in search order
SUNS_MARKER: Final = (0x5375, 0x6E53)  # "SunS"
END_MODEL_ID: Final = 0xFFFF
HEADER_LENGTH: Final = 2  # ID and L; a model's L counts the registers after them
# Longest chain walked before the device is taken to be broken (a loop or garbage).
_MAX_MODELS = 512

ReadRegisters = Callable[[int, int], Awaitable[list[int]]]


@dataclass(frozen=True, slots=True)
class PointDef:
    """One point of a model definition."""

    name: str
    offset: int  # registers from the model's ID register (or from the group instance)
    type: str  # SunSpec type: int16, uint16, sunssf, acc32, string, float32, ...
    size: int  # registers
    sf: str | int | None  # scale-factor point name, fixed power of ten, or none
    units: str
    access: Literal["R", "RW"]
    mandatory: bool
    static: bool
    symbols: Mapping[str, int]  # enum values or bitfield bit positions by name
    label: str


@dataclass(frozen=True, slots=True)
class GroupDef:
    """A repeating (or fixed-count) group and the offset of its first instance."""

    name: str
    # From the model's ID register (top level) or the enclosing instance (nested); None
    # when it follows a group whose instance count the device decides.
    offset: int | None
    count: int | str  # instances: a number (0: as many as fit in L) or a count point's name
    fixed_length: int  # registers of one instance's own points
    points: Mapping[str, PointDef]  # offsets relative to the instance start
    groups: tuple[GroupDef, ...]

    @property
    def length(self) -> int | None:
        """Registers of one instance, or None when a nested group's count varies."""
        total = self.fixed_length
        for group in self.groups:
            if not isinstance(group.count, int) or group.count == 0:
                return None
            inner = group.length
            if inner is None:
                return None
            total += group.count * inner
        return total

    def instance_offset(self, index: int) -> int:
        """Offset of instance `index` (0-based); needs a fixed instance length."""
        length = self.length
        if self.offset is None or length is None:
            raise ValueError(f"group {self.name}: instance offsets depend on the device")
        return self.offset + index * length


@dataclass(frozen=True, slots=True)
class ModelDef:
    """A model: its fixed block and its groups."""

    id: int
    name: str
    label: str
    length: int  # L of the fixed part (registers after ID and L, fixed-count groups included)
    points: Mapping[str, PointDef]
    groups: tuple[GroupDef, ...]

    def point(self, name: str) -> PointDef:
        try:
            return self.points[name]
        except KeyError:
            raise KeyError(f"model {self.id} ({self.name}) has no point {name!r}") from None

    def group(self, name: str) -> GroupDef:
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(f"model {self.id} ({self.name}) has no group {name!r}")

    def length_with(self, instances: Mapping[str, int]) -> int:
        """L for the given instance counts of the top-level variable groups."""
        total = self.length
        for group in self.groups:
            if isinstance(group.count, int) and group.count > 0:
                continue
            length = group.length
            if length is None:
                raise ValueError(f"model {self.id}: group {group.name} has nested groups")
            total += instances.get(group.name, 0) * length
        return total


@cache
def model_ids() -> tuple[int, ...]:
    """Every model id with a definition, ascending."""
    ids = []
    for entry in _json_dir().iterdir():
        stem = entry.name.removesuffix(".json")
        if stem.startswith("model_") and stem[6:].isdigit():
            ids.append(int(stem[6:]))
    return tuple(sorted(ids))


@cache
def model_def(model_id: int) -> ModelDef:
    """The layout of model `model_id`; KeyError if there is no definition for it."""
    source = _json_dir() / f"model_{model_id}.json"
    if not source.is_file():
        raise KeyError(f"no SunSpec definition for model {model_id}")
    data = json.loads(source.read_text(encoding="utf-8"))
    top = data["group"]
    points, end = _points(top.get("points", []))
    groups, length = _groups(top.get("groups", []), end)
    return ModelDef(
        id=int(data["id"]),
        name=str(top["name"]),
        label=str(top.get("label", "")),
        length=(length if length is not None else end) - HEADER_LENGTH,
        points=points,
        groups=groups,
    )


def _json_dir() -> Any:
    return resources.files("sunspec2") / "models" / "json"


def _points(defs: list[dict[str, Any]]) -> tuple[Mapping[str, PointDef], int]:
    out: dict[str, PointDef] = {}
    offset = 0
    for d in defs:
        size = int(d["size"])
        out[d["name"]] = PointDef(
            name=str(d["name"]),
            offset=offset,
            type=str(d["type"]),
            size=size,
            sf=d.get("sf"),
            units=str(d.get("units", "")),
            access="RW" if d.get("access") == "RW" else "R",
            mandatory=d.get("mandatory") == "M",
            static=d.get("static") == "S",
            symbols=MappingProxyType({s["name"]: int(s["value"]) for s in d.get("symbols", [])}),
            label=str(d.get("label", "")),
        )
        offset += size
    return MappingProxyType(out), offset


def _groups(defs: list[dict[str, Any]], start: int) -> tuple[tuple[GroupDef, ...], int | None]:
    """Groups laid out from `start`; also the end offset when every count is fixed."""
    out = []
    offset: int | None = start
    for d in defs:
        points, fixed = _points(d.get("points", []))
        nested, _ = _groups(d.get("groups", []), fixed)
        raw_count = d.get("count", 1)
        count: int | str = raw_count if isinstance(raw_count, int) else str(raw_count)
        group = GroupDef(str(d["name"]), offset, count, fixed, points, nested)
        out.append(group)
        length = group.length
        if offset is not None and isinstance(count, int) and count > 0 and length is not None:
            offset += count * length
        else:
            offset = None  # what follows depends on the device's instance count
    return tuple(out), offset


@dataclass(frozen=True, slots=True)
class ModelInstance:
    """One model found on a device: where its ID register is and the L it reports."""

    id: int
    address: int
    length: int

    @property
    def end(self) -> int:
        """Address just past the model."""
        return self.address + HEADER_LENGTH + self.length

    def holds(self, point: PointDef) -> bool:
        """Whether the device's L covers `point` (older devices report shorter models)."""
        return point.offset + point.size <= HEADER_LENGTH + self.length


@dataclass(frozen=True, slots=True)
class Discovery:
    """A device's SunSpec map: its base address and its models in chain order."""

    base: int
    models: tuple[ModelInstance, ...]

    def __iter__(self) -> Iterator[ModelInstance]:
        return iter(self.models)

    def find(self, model_id: int) -> ModelInstance | None:
        """The first instance of `model_id` in the chain, if any."""
        return next((m for m in self.models if m.id == model_id), None)

    @property
    def ids(self) -> list[int]:
        return [m.id for m in self.models]


async def discover(
    read: ReadRegisters, device: str, *, bases: tuple[int, ...] = BASE_ADDRESSES
) -> Discovery:
    """Find the SunSpec base and walk the model chain.

    `read(address, count)` returns holding registers or raises a DeviceError; a
    ProtocolError (the device answered with an exception) at a base means "not here",
    any other DeviceError propagates. A device with no marker at any base, or a chain
    that runs off the register space, is an UnsupportedDevice.
    """
    tried = []
    for base in bases:
        try:
            head = await read(base, 4)
        except ProtocolError as exc:
            tried.append(f"{base}: {exc}")
            continue
        if tuple(head[:2]) != SUNS_MARKER:
            tried.append(f"{base}: no SunS marker")
            continue
        return Discovery(base, await _walk(read, device, base + 2, head[2], head[3]))
    raise UnsupportedDevice(device, "no SunSpec map found (" + "; ".join(tried) + ")")


async def _walk(
    read: ReadRegisters, device: str, address: int, model_id: int, length: int
) -> tuple[ModelInstance, ...]:
    models: list[ModelInstance] = []
    while model_id != END_MODEL_ID:
        if len(models) >= _MAX_MODELS:
            raise UnsupportedDevice(device, f"SunSpec chain longer than {_MAX_MODELS} models")
        model = ModelInstance(model_id, address, length)
        models.append(model)
        address = model.end
        if address + HEADER_LENGTH > 0x10000:
            raise UnsupportedDevice(
                device, f"SunSpec chain runs past the register space after model {model_id}"
            )
        try:
            model_id, length = await read(address, 2)
        except ProtocolError:
            # Some devices do not serve an L after the end model.
            (model_id,) = await read(address, 1)
            if model_id != END_MODEL_ID:
                raise
    return tuple(models)
