"""Schema of a device map: one TOML file in firmware_configs/ per vendor, model and
firmware range. A map ties logical points (p_w, soc, limit_w, heartbeat, ...) to the wire.

Layout of a file (`firmware_configs/<protocol>/<vendor>/<model>_<firmware>.toml`):

    [map]
    profile = "sunspec-pv"        # what a site's [[device]].profile names
    vendor = "..."                # with model and firmware: what SUPPORTED.md lists
    model = "..."
    firmware = "*"                # PEP 440 specifier such as ">=2.0,<3"; "*" for any
    protocol = "sunspec"          # sunspec | modbus | opcua | redfish
    role = "pv"                   # pv | wind | bess | rack | meter
    document = "..."              # the vendor document or standard the map follows

    [sunspec]                     # protocol sunspec: the models the device must carry
    models = [1, 103, 120, 123, 160]

    [modbus]                      # protocol modbus: how a device is recognised
    word_order = "big"            # default for every point
    fingerprint = { address = 0, type = "string", size = 8, equals = "ACME-DCX" }
    firmware_version = { address = 16, type = "u16", encoding = "major_minor" }
    sunspec_sentinels = false     # true: 0xFFFF, 0x8000, NaN, ... mean "no value" as in SunSpec

    [opcua]                       # protocol opcua
    namespace_uri = "urn:edgectl:wind-turbine"

    [points.p_w]                  # one table per logical point
    unit = "W"
    range = [0.0, 5e6]            # plausible values; outside -> invalid
    access = "r"                  # r | rw
    poll = "fast"                 # fast | slow | once
    # and where it lives, by protocol:
    sunspec = "103.W"             # model.point (scale factor from the model definition)
    address = 100                 # modbus: 0-based protocol address of a holding register
    type = "i32"                  # modbus: u16 i16 u32 i32 u64 f32 acc32 string
    word_order = "little"         # modbus: overrides the map's default
    scale = 0.1                   # modbus: engineering = raw * scale (+ offset)
    scale_factor_address = 101    # modbus: or a SunSpec-style 10^sf register
    node = "WTUR.W"               # opcua: path below the device's object, in namespace_uri
    variant = "Float"             # opcua: the variable's variant type (writes must match)
    path = "Controls/PowerLimit"  # redfish: below /redfish/v1/Chassis/{chassis}/
    field = "SetPoint"            # redfish: JSON field (dots for nesting, [0] for arrays)

A point's `scale` turns the wire value into the point's unit: a map whose register counts
kW has scale = 1000 and unit "W"; percentages of a rating are converted by the driver.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Protocol = Literal["sunspec", "modbus", "opcua", "redfish"]
Role = Literal["pv", "wind", "bess", "rack", "meter"]
RegisterType = Literal["u16", "i16", "u32", "i32", "u64", "i64", "f32", "acc32", "string"]
WordOrder = Literal["big", "little"]

# Registers each type occupies (string: `size` registers).
REGISTER_COUNT: dict[str, int] = {
    "u16": 1,
    "i16": 1,
    "u32": 2,
    "i32": 2,
    "u64": 4,
    "i64": 4,
    "f32": 2,
    "acc32": 2,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class MapInfo(_Strict):
    profile: str = Field(min_length=1)
    vendor: str = Field(min_length=1)
    model: str = Field(min_length=1)
    firmware: str = "*"
    protocol: Protocol
    role: Role
    document: str = Field(min_length=1)


class RegisterRef(_Strict):
    """A register read to recognise a device or its firmware."""

    address: int = Field(ge=0, le=65535)
    type: RegisterType
    size: int = Field(default=1, ge=1, le=64)  # registers, for strings
    equals: str | None = None  # fingerprint: the value the device must hold
    encoding: Literal["major_minor", "integer", "string"] = "integer"


class ModbusSection(_Strict):
    word_order: WordOrder = "big"
    fingerprint: RegisterRef | None = None
    firmware_version: RegisterRef | None = None
    # The vendor marks a value it cannot give with SunSpec's "not implemented" value of the
    # register type (u16 0xFFFF, i16 0x8000, u32 0xFFFFFFFF, f32 NaN, ...).
    sunspec_sentinels: bool = False


class SunSpecSection(_Strict):
    models: list[int] = Field(min_length=1)


class OpcUaSection(_Strict):
    namespace_uri: str = Field(min_length=1)


class Point(_Strict):
    unit: str = ""
    range: tuple[float, float] | None = None
    access: Literal["r", "rw"] = "r"
    poll: Literal["fast", "slow", "once"] = "fast"
    # staleness: a value older than this many seconds is invalid
    stale_s: float = Field(default=5.0, gt=0)
    # A live measurement always moves: a non-zero value that stays bit-identical this long
    # is a frozen sensor or a stuck register, and becomes invalid. Unset: not watched
    # (setpoints, states, and outputs held exactly by a limit legitimately stay put).
    frozen_s: float | None = Field(default=None, gt=0)
    # sunspec
    sunspec: str | None = Field(default=None, pattern=r"^\d+\.[A-Za-z0-9_]+$")
    # modbus
    address: int | None = Field(default=None, ge=0, le=65535)
    type: RegisterType | None = None
    size: int | None = Field(default=None, ge=1, le=64)
    word_order: WordOrder | None = None
    scale: float = 1.0
    offset: float = 0.0
    scale_factor_address: int | None = Field(default=None, ge=0, le=65535)
    # opcua
    node: str | None = None
    variant: (
        Literal[
            "Float",
            "Double",
            "Int16",
            "UInt16",
            "Int32",
            "UInt32",
            "Int64",
            "UInt64",
            "Boolean",
            "String",
        ]
        | None
    ) = None
    # redfish
    path: str | None = None
    field: str | None = None

    @model_validator(mode="after")
    def _range_ordered(self) -> Point:
        if self.range is not None and self.range[0] > self.range[1]:
            raise ValueError(f"range: lower bound above upper bound {list(self.range)}")
        return self


# Which point keys each protocol requires and allows.
POINT_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "sunspec": (("sunspec",), ()),
    "modbus": (
        ("address", "type"),
        ("size", "word_order", "scale", "offset", "scale_factor_address"),
    ),
    "opcua": (("node", "variant"), ("scale", "offset")),
    "redfish": (("path", "field"), ("scale", "offset")),
}
_WIRE_KEYS = (
    "sunspec",
    "address",
    "type",
    "size",
    "word_order",
    "scale_factor_address",
    "node",
    "variant",
    "path",
    "field",
)


class DeviceMap(_Strict):
    map: MapInfo
    sunspec: SunSpecSection | None = None
    modbus: ModbusSection | None = None
    opcua: OpcUaSection | None = None
    points: dict[str, Point] = Field(min_length=1)

    @model_validator(mode="after")
    def _sections_match_protocol(self) -> DeviceMap:
        protocol = self.map.protocol
        problems: list[str] = []
        for section in ("sunspec", "modbus", "opcua"):
            present = getattr(self, section) is not None
            if section == protocol and not present and section != "modbus":
                problems.append(f"{section}: section required for protocol {protocol!r}")
            if section != protocol and present:
                problems.append(f"{section}: section not allowed for protocol {protocol!r}")
        required, optional = POINT_KEYS[protocol]
        for name, point in self.points.items():
            for key in required:
                if getattr(point, key) is None:
                    problems.append(f"points.{name}.{key}: required for protocol {protocol!r}")
            for key in _WIRE_KEYS:
                if key not in required + optional and getattr(point, key) is not None:
                    problems.append(f"points.{name}.{key}: not a key of protocol {protocol!r}")
            if protocol == "modbus" and point.type == "string" and point.size is None:
                problems.append(f"points.{name}.size: required for a string")
            if protocol == "sunspec" and point.sunspec is not None and self.sunspec is not None:
                model = int(point.sunspec.split(".")[0])
                if model not in self.sunspec.models:
                    problems.append(
                        f"points.{name}.sunspec: model {model} is not in sunspec.models"
                    )
        if problems:
            raise ValueError("; ".join(problems))
        return self
