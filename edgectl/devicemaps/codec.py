"""Registers <-> engineering values, in plain Python (struct), independent of any Modbus library.

A register is an unsigned 16-bit integer, bytes big-endian inside it; a multi-register
value is high word first unless its word order is "little". Engineering value =
raw x scale x 10^sf + offset, where sf is a fixed power of ten or (SunSpec) read from a
scale-factor register on the device. Decoding never raises: whatever the registers hold,
the answer is a Reading, invalid with a reason when the value cannot be trusted
(wrong register count, a "not implemented" sentinel, an unimplemented or implausible
scale factor, NaN, out of range). pysunspec2 treats an unimplemented scale factor as 0;
here it makes the value invalid. Encoding (for writes) refuses with ValueError, naming
the point, a value outside the point's range or one the registers cannot represent.
"""

from __future__ import annotations

import ipaddress
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from edgectl.devicemaps.readings import (
    NOT_A_NUMBER,
    NOT_IMPLEMENTED,
    OUT_OF_RANGE,
    SF_NOT_IMPLEMENTED,
    Reading,
    Value,
)
from edgectl.devicemaps.schema import ModbusSection, Point
from edgectl.devicemaps.sunspec import PointDef

__all__ = [
    "SF_OUT_OF_RANGE",
    "SF_UNREAD",
    "TYPES",
    "WRONG_LENGTH",
    "PointCodec",
    "TypeInfo",
    "decode_scale_factor",
    "modbus_codec",
    "not_implemented_registers",
    "sunspec_codec",
]

WordOrder = Literal["big", "little"]
Kind = Literal["uint", "int", "float", "string", "ipaddr", "ipv6addr", "eui48", "pad"]

# Reasons specific to decoding registers (the shared ones live in readings.py).
WRONG_LENGTH = "wrong register count"
SF_OUT_OF_RANGE = "scale factor out of range"
SF_UNREAD = "scale factor not read"
BAD_REGISTER = "register value not 16-bit"
BAD_TEXT = "not valid text"
SF_LIMIT: Final = 10  # SunSpec's JSON schema allows scale factors -10..10


@dataclass(frozen=True, slots=True)
class TypeInfo:
    """How a type sits in registers and which raw value means "not implemented"."""

    kind: Kind
    size: int  # registers; 0 for strings (the point gives its size)
    sentinel: int | None  # raw unsigned value (whole width); None: none or by kind


def _t(kind: Kind, size: int, sentinel: int | None) -> TypeInfo:
    return TypeInfo(kind, size, sentinel)


# Modbus map types (schema.RegisterType) and SunSpec types; sentinels as pysunspec2's mb.py.
TYPES: Final[dict[str, TypeInfo]] = {
    "u16": _t("uint", 1, 0xFFFF),
    "i16": _t("int", 1, 0x8000),
    "u32": _t("uint", 2, 0xFFFF_FFFF),
    "i32": _t("int", 2, 0x8000_0000),
    "u64": _t("uint", 4, 0xFFFF_FFFF_FFFF_FFFF),
    "i64": _t("int", 4, 0x8000_0000_0000_0000),
    "f32": _t("float", 2, None),
    "string": _t("string", 0, None),
    "uint16": _t("uint", 1, 0xFFFF),
    "enum16": _t("uint", 1, 0xFFFF),
    "bitfield16": _t("uint", 1, 0xFFFF),
    "count": _t("uint", 1, 0xFFFF),
    "acc16": _t("uint", 1, 0),
    "int16": _t("int", 1, 0x8000),
    "sunssf": _t("int", 1, 0x8000),
    "pad": _t("pad", 1, None),
    "uint32": _t("uint", 2, 0xFFFF_FFFF),
    "enum32": _t("uint", 2, 0xFFFF_FFFF),
    "bitfield32": _t("uint", 2, 0xFFFF_FFFF),
    "acc32": _t("uint", 2, 0),
    "int32": _t("int", 2, 0x8000_0000),
    "ipaddr": _t("ipaddr", 2, 0),
    "uint64": _t("uint", 4, 0xFFFF_FFFF_FFFF_FFFF),
    "acc64": _t("uint", 4, 0),
    "int64": _t("int", 4, 0x8000_0000_0000_0000),
    "float32": _t("float", 2, None),
    "float64": _t("float", 4, None),
    "ipv6addr": _t("ipv6addr", 8, 0),
    "eui48": _t("eui48", 4, 0xFFFF_FFFF_FFFF),  # low 48 bits all ones
}
_NAN_WORDS: Final = {2: 0x7FC0_0000, 4: 0x7FF8_0000_0000_0000}


def not_implemented_registers(type_name: str, size: int = 0) -> list[int]:
    """The registers a SunSpec device serves for a point it does not implement."""
    info = TYPES[type_name]
    count = size or info.size
    if info.kind == "string":
        return [0] * count
    if info.kind == "float":
        word = _NAN_WORDS[count]
    elif info.kind == "pad" or info.sentinel is None:
        word = 0
    else:
        word = info.sentinel
    return [(word >> (16 * (count - 1 - i))) & 0xFFFF for i in range(count)]


def decode_scale_factor(raw: int | None) -> tuple[int | None, str]:
    """A scale-factor register as (sf, "") or (None, reason)."""
    if raw is None:
        return None, SF_UNREAD
    if raw == 0x8000:
        return None, SF_NOT_IMPLEMENTED
    sf = raw - 0x10000 if raw >= 0x8000 else raw
    if not -SF_LIMIT <= sf <= SF_LIMIT:
        return None, f"{SF_OUT_OF_RANGE} ({sf})"
    return sf, ""


@dataclass(frozen=True, slots=True)
class PointCodec:
    """How one point's registers become a value and back."""

    name: str
    type: str  # a key of TYPES
    size: int = 0  # registers; 0: the type's own size
    unit: str = ""
    word_order: WordOrder = "big"
    scale: float = 1.0
    offset: float = 0.0
    sf: int | None = None  # fixed power of ten (a SunSpec definition's integer sf)
    sf_register: bool = False  # scaled by 10^sf read from a register, given to decode/encode
    range: tuple[float, float] | None = None
    sentinels: bool = False  # the SunSpec "not implemented" values apply

    def __post_init__(self) -> None:
        info = TYPES[self.type]
        if info.kind == "string" and self.size < 1:
            raise ValueError(f"point {self.name}: a string needs a size in registers")
        if info.kind != "string" and self.size not in (0, info.size):
            raise ValueError(f"point {self.name}: {self.type} takes {info.size} registers")
        if self.scale == 0 or not math.isfinite(self.scale):
            raise ValueError(f"point {self.name}: scale must be finite and non-zero")

    @property
    def count(self) -> int:
        """Registers the point occupies."""
        return self.size or TYPES[self.type].size

    def lsb(self, sf_raw: int | None = None) -> float | None:
        """Value of one raw step (integer types), None for floats, text or an unusable sf."""
        kind = TYPES[self.type].kind
        if kind not in ("uint", "int", "pad"):
            return None
        factor = self._factor(sf_raw)[0]
        return None if factor is None else abs(factor)

    def decode(self, registers: Sequence[int], t_s: float, sf_raw: int | None = None) -> Reading:
        """The Reading for `registers` read at `t_s`; `sf_raw` is the scale-factor register."""
        if len(registers) != self.count:
            return self._bad(f"{WRONG_LENGTH}: expected {self.count}, got {len(registers)}", t_s)
        if not all(type(r) is int and 0 <= r <= 0xFFFF for r in registers):
            return self._bad(BAD_REGISTER, t_s)
        info = TYPES[self.type]
        words = list(registers)
        if self.word_order == "little" and info.kind in ("uint", "int", "float"):
            words.reverse()
        raw = 0
        for word in words:
            raw = raw << 16 | word
        if info.kind == "string":
            return self._decode_text(words, t_s)
        if self.sentinels and info.sentinel is not None:
            # eui48 sits in the low 48 bits of its 4 registers
            compared = raw & 0xFFFF_FFFF_FFFF if info.kind == "eui48" else raw
            if compared == info.sentinel:
                return self._bad(NOT_IMPLEMENTED, t_s)
        if info.kind == "ipaddr":
            return Reading.ok(str(ipaddress.IPv4Address(raw)), self.unit, t_s)
        if info.kind == "ipv6addr":
            return Reading.ok(str(ipaddress.IPv6Address(raw)), self.unit, t_s)
        if info.kind == "eui48":
            mac = raw & 0xFFFF_FFFF_FFFF
            return Reading.ok(":".join(f"{b:02X}" for b in mac.to_bytes(6, "big")), self.unit, t_s)
        number: int | float
        if info.kind == "float":
            fmt = ">f" if len(words) == 2 else ">d"
            number = struct.unpack(fmt, raw.to_bytes(2 * len(words), "big"))[0]
            if not math.isfinite(number):
                reason = NOT_IMPLEMENTED if self.sentinels and math.isnan(number) else NOT_A_NUMBER
                return self._bad(reason, t_s)
        elif info.kind == "int" and raw >> (16 * len(words) - 1):
            number = raw - (1 << (16 * len(words)))
        else:
            number = raw
        factor, reason = self._factor(sf_raw)
        if factor is None:
            return self._bad(reason, t_s, number)
        value = self._scaled(number, factor)
        if not math.isfinite(value):
            return self._bad(NOT_A_NUMBER, t_s)
        if self.range is not None and not self.range[0] <= value <= self.range[1]:
            return self._bad(
                f"{OUT_OF_RANGE}: {value} not in [{self.range[0]}, {self.range[1]}]", t_s, value
            )
        return Reading.ok(value, self.unit, t_s)

    def encode(
        self, value: Value, sf_raw: int | None = None, *, check_range: bool = True
    ) -> list[int]:
        """Registers holding `value`; ValueError (naming the point) if it cannot."""
        info = TYPES[self.type]
        if info.kind == "string":
            return self._encode_text(value)
        if info.kind in ("ipaddr", "ipv6addr", "eui48"):
            return self._encode_address(value, info)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"point {self.name}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"point {self.name}: {value} is not a finite number")
        if check_range and self.range is not None and not self.range[0] <= value <= self.range[1]:
            raise ValueError(
                f"point {self.name}: {self._quantity(value)} outside its range "
                f"[{self.range[0]}, {self.range[1]}]"
            )
        factor, reason = self._factor(sf_raw)
        if factor is None:
            raise ValueError(f"point {self.name}: cannot encode, {reason}")
        raw_value = (value - self.offset) / factor
        width = 16 * self.count
        if info.kind == "float":
            fmt = ">f" if self.count == 2 else ">d"
            try:
                packed = struct.pack(fmt, raw_value)
            except OverflowError:
                raise self._unrepresentable(value) from None
            raw = int.from_bytes(packed, "big")
        else:
            rounded = round(raw_value)
            low, high = (0, (1 << width) - 1)
            if info.kind == "int":
                low, high = -(1 << (width - 1)), (1 << (width - 1)) - 1
            if not low <= rounded <= high:
                raise self._unrepresentable(value)
            raw = rounded & ((1 << width) - 1)
            if self.sentinels and raw == info.sentinel:
                raise ValueError(
                    f"point {self.name}: {value} encodes as the type's not-implemented value"
                )
        words = [(raw >> (16 * (self.count - 1 - i))) & 0xFFFF for i in range(self.count)]
        if self.word_order == "little":
            words.reverse()
        return words

    def _factor(self, sf_raw: int | None) -> tuple[float | None, str]:
        """raw -> engineering multiplier, or None with the reason the scale is unusable."""
        power = self.sf or 0
        if self.sf_register:
            sf, reason = decode_scale_factor(sf_raw)
            if sf is None:
                return None, reason
            power += sf
        return self.scale * 10.0**power, ""

    def _scaled(self, number: int | float, factor: float) -> int | float:
        if isinstance(number, int) and factor == 1.0 and self.offset == 0.0:
            return number
        # Divide by a whole divisor where there is one: 1234 / 10 is 123.4, 1234 * 0.1 is not.
        divisor = 1.0 / factor
        if abs(divisor) > 1.0 and abs(divisor - round(divisor)) < 1e-9 * abs(divisor):
            return number / round(divisor) + self.offset
        return number * factor + self.offset

    def _decode_text(self, words: list[int], t_s: float) -> Reading:
        data = b"".join(w.to_bytes(2, "big") for w in words)
        if self.sentinels and data[:1] == b"\0":
            return self._bad(NOT_IMPLEMENTED, t_s)
        try:
            text = data.rstrip(b"\0").decode("utf-8")
        except UnicodeDecodeError:
            return self._bad(BAD_TEXT, t_s)
        return Reading.ok(text, self.unit, t_s)

    def _encode_text(self, value: Value) -> list[int]:
        if not isinstance(value, str):
            raise ValueError(f"point {self.name}: expected text, got {value!r}")
        data = value.encode("utf-8")
        if len(data) > 2 * self.count:
            raise ValueError(
                f"point {self.name}: {value!r} is {len(data)} bytes, "
                f"the point holds {2 * self.count}"
            )
        if self.sentinels and (not data or data[:1] == b"\0"):
            raise ValueError(f"point {self.name}: empty text reads as not implemented")
        data = data.ljust(2 * self.count, b"\0")
        return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]

    def _encode_address(self, value: Value, info: TypeInfo) -> list[int]:
        if not isinstance(value, str):
            raise ValueError(f"point {self.name}: expected an address as text, got {value!r}")
        try:
            if info.kind == "ipaddr":
                raw = int(ipaddress.IPv4Address(value))
            elif info.kind == "ipv6addr":
                raw = int(ipaddress.IPv6Address(value))
            else:
                raw = int(value.replace(":", "").replace("-", ""), 16)
                if raw >> 48:
                    raise ValueError(value)
        except ValueError:
            raise ValueError(f"point {self.name}: {value!r} is not a {self.type}") from None
        return [(raw >> (16 * (self.count - 1 - i))) & 0xFFFF for i in range(self.count)]

    def _unrepresentable(self, value: float) -> ValueError:
        return ValueError(
            f"point {self.name}: {self._quantity(value)} is not representable as {self.type} "
            f"with scale {self.scale}"
        )

    def _quantity(self, value: float) -> str:
        return f"{value} {self.unit}" if self.unit else str(value)

    def _bad(self, reason: str, t_s: float, value: Value | None = None) -> Reading:
        return Reading.invalid(reason, self.unit, t_s, value)


def modbus_codec(name: str, point: Point, section: ModbusSection | None) -> PointCodec:
    """The codec of a point of a vendor (protocol "modbus") map."""
    if point.type is None:
        raise ValueError(f"point {name}: no register type")
    return PointCodec(
        name=name,
        type=point.type,
        size=(point.size or 0) if point.type == "string" else 0,
        unit=point.unit,
        word_order=point.word_order or (section.word_order if section else "big"),
        scale=point.scale,
        offset=point.offset,
        sf_register=point.scale_factor_address is not None,
        range=point.range,
        sentinels=bool(section and section.sunspec_sentinels),
    )


def sunspec_codec(name: str, point: Point, definition: PointDef) -> PointCodec:
    """The codec of a point of a SunSpec map: type, size and scale from the definition."""
    return PointCodec(
        name=name,
        type=definition.type,
        size=definition.size if definition.type == "string" else 0,
        unit=point.unit,
        sf=definition.sf if isinstance(definition.sf, int) else None,
        sf_register=isinstance(definition.sf, str),
        range=point.range,
        sentinels=True,
    )
