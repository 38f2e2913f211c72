"""Registers <-> values: every type, word order, scale and SunSpec scale factor, and the
promise that decoding never raises."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgectl.devicemaps.codec import (
    SF_OUT_OF_RANGE,
    TYPES,
    WRONG_LENGTH,
    PointCodec,
    decode_scale_factor,
    modbus_codec,
    not_implemented_registers,
    sunspec_codec,
)
from edgectl.devicemaps.readings import (
    NOT_A_NUMBER,
    NOT_IMPLEMENTED,
    OUT_OF_RANGE,
    SF_NOT_IMPLEMENTED,
)
from edgectl.devicemaps.schema import ModbusSection, Point
from edgectl.devicemaps.sunspec import model_def


@pytest.mark.parametrize(
    ("type_name", "registers", "value"),
    [
        ("u16", [0xFFFE], 65534),
        ("i16", [0xFFFF], -1),
        ("u32", [0x0001, 0x0002], 0x10002),
        ("i32", [0xFFFF, 0xFFFE], -2),
        ("u64", [0, 0, 1, 0], 0x10000),
        ("i64", [0xFFFF] * 4, -1),
        ("acc32", [0, 7], 7),
        ("f32", list(struct.unpack(">HH", struct.pack(">f", 1.5))), 1.5),
    ],
)
def test_decodes_each_type_big_endian(type_name: str, registers: list[int], value: float) -> None:
    reading = PointCodec("p", type_name).decode(registers, 1.0)
    assert reading.valid and reading.value == value and reading.t_s == 1.0


def test_little_word_order_swaps_registers_not_bytes() -> None:
    big = PointCodec("p", "u32")
    little = PointCodec("p", "u32", word_order="little")
    assert big.encode(0x12345678) == [0x1234, 0x5678]
    assert little.encode(0x12345678) == [0x5678, 0x1234]
    assert little.decode([0x5678, 0x1234], 0).value == 0x12345678


def test_scale_and_offset() -> None:
    codec = PointCodec("t", "i16", unit="C", scale=0.1, offset=-40.0)
    assert codec.decode([655], 0).value == pytest.approx(25.5)
    assert codec.encode(25.5) == [655]
    assert PointCodec("p", "u16", scale=0.1).decode([1234], 0).value == 123.4  # exact


def test_sunspec_scale_factor_register() -> None:
    codec = PointCodec("p_w", "int16", unit="W", sf_register=True, sentinels=True)
    assert codec.decode([1234], 0, sf_raw=0xFFFE).value == 12.34  # sf -2
    assert codec.decode([1234], 0, sf_raw=3).value == 1234000.0
    assert codec.encode(12.34, sf_raw=0xFFFE) == [1234]
    assert codec.lsb(0xFFFE) == pytest.approx(0.01)


def test_unimplemented_scale_factor_makes_the_value_invalid() -> None:
    # pysunspec2 reads such a value as if sf were 0; a controller must not.
    codec = PointCodec("p_w", "int16", sf_register=True, sentinels=True)
    reading = codec.decode([1234], 0, sf_raw=0x8000)
    assert not reading.valid and reading.reason == SF_NOT_IMPLEMENTED
    assert not codec.decode([1234], 0, sf_raw=11).valid
    assert codec.decode([1234], 0, sf_raw=11).reason.startswith(SF_OUT_OF_RANGE)
    assert not codec.decode([1234], 0, sf_raw=None).valid
    with pytest.raises(ValueError, match="p_w"):
        codec.encode(1.0, sf_raw=0x8000)


def test_decode_scale_factor() -> None:
    assert decode_scale_factor(0xFFFD) == (-3, "")
    assert decode_scale_factor(10) == (10, "")
    assert decode_scale_factor(0x8000)[0] is None
    assert decode_scale_factor(0xFFF5)[0] is None  # -11


# The sentinel table of the SunSpec specification (and pysunspec2's mb.py).
SENTINELS = {
    "int16": [0x8000],
    "sunssf": [0x8000],
    "uint16": [0xFFFF],
    "enum16": [0xFFFF],
    "bitfield16": [0xFFFF],
    "count": [0xFFFF],
    "acc16": [0],
    "acc32": [0, 0],
    "acc64": [0, 0, 0, 0],
    "int32": [0x8000, 0],
    "uint32": [0xFFFF, 0xFFFF],
    "enum32": [0xFFFF, 0xFFFF],
    "bitfield32": [0xFFFF, 0xFFFF],
    "int64": [0x8000, 0, 0, 0],
    "uint64": [0xFFFF] * 4,
    "float32": [0x7FC0, 0],
    "ipaddr": [0, 0],
    "ipv6addr": [0] * 8,
}


@pytest.mark.parametrize(("type_name", "registers"), sorted(SENTINELS.items()))
def test_not_implemented_sentinels(type_name: str, registers: list[int]) -> None:
    assert not_implemented_registers(type_name) == registers
    reading = PointCodec("p", type_name, sentinels=True).decode(registers, 0)
    assert not reading.valid and reading.reason == NOT_IMPLEMENTED


def test_string_sentinel_is_a_leading_nul() -> None:
    codec = PointCodec("sn", "string", size=4, sentinels=True)
    assert not_implemented_registers("string", 4) == [0, 0, 0, 0]
    assert codec.decode([0x0041, 0, 0, 0], 0).reason == NOT_IMPLEMENTED
    assert codec.decode(codec.encode("AB12"), 0).value == "AB12"


def test_an_int16_filled_with_ffff_is_minus_one_not_a_sentinel() -> None:
    reading = PointCodec("p", "int16", sentinels=True).decode([0xFFFF], 0)
    assert reading.valid and reading.value == -1


def test_vendor_registers_have_no_sentinels_unless_the_map_says_so() -> None:
    assert PointCodec("p", "u16").decode([0xFFFF], 0).valid
    assert PointCodec("p", "u16", sentinels=True).decode([0xFFFF], 0).reason == NOT_IMPLEMENTED


def test_nan_and_range() -> None:
    nan = list(struct.unpack(">HH", struct.pack(">f", math.nan)))
    assert PointCodec("p", "f32").decode(nan, 0).reason == NOT_A_NUMBER
    codec = PointCodec("soc", "u16", range=(0.0, 100.0))
    reading = codec.decode([101], 0)
    assert not reading.valid and reading.reason.startswith(OUT_OF_RANGE) and reading.value == 101


def test_wrong_length_and_junk_registers_are_invalid_not_errors() -> None:
    codec = PointCodec("p", "u32")
    assert codec.decode([1], 0).reason.startswith(WRONG_LENGTH)
    assert not codec.decode([1, 0x10000], 0).valid
    assert not codec.decode([-1, 0], 0).valid


def test_encode_refuses_what_it_cannot_write_naming_the_point() -> None:
    codec = PointCodec("limit_w", "u16", unit="W", scale=100.0, range=(0.0, 550000.0))
    with pytest.raises(ValueError, match=r"limit_w.*outside its range"):
        codec.encode(600000.0)
    with pytest.raises(ValueError, match=r"limit_w.*not representable"):
        codec.encode(7e6, check_range=False)
    with pytest.raises(ValueError, match="limit_w"):
        codec.encode(math.nan)
    with pytest.raises(ValueError, match="limit_w"):
        codec.encode("12")
    with pytest.raises(ValueError, match=r"lim.*not-implemented"):
        PointCodec("lim", "uint16", sentinels=True).encode(0xFFFF)
    with pytest.raises(ValueError, match="name"):
        PointCodec("name", "string", size=2).encode("too long")


def test_codecs_from_maps() -> None:
    point = Point(sunspec="103.W", unit="W", range=(0.0, 1e6))
    codec = sunspec_codec("p_w", point, model_def(103).point("W"))
    assert (codec.type, codec.sf_register, codec.sentinels, codec.count) == ("int16", True, True, 1)
    vendor = Point(address=102, type="u32", word_order="little", scale=1000.0, unit="Wh")
    codec = modbus_codec("e_wh", vendor, ModbusSection(word_order="big", sunspec_sentinels=True))
    assert (codec.word_order, codec.scale, codec.sentinels) == ("little", 1000.0, True)


codecs = st.builds(
    PointCodec,
    name=st.just("p"),
    type=st.sampled_from(sorted(t for t in TYPES if t != "string")),
    word_order=st.sampled_from(["big", "little"]),
    scale=st.sampled_from([1.0, 0.1, 0.01, 10.0, 100.0, 1000.0, -1.0, 0.25]),
    offset=st.sampled_from([0.0, -40.0, 273.15]),
    sf=st.one_of(st.none(), st.integers(-3, 3)),
    sf_register=st.booleans(),
    range=st.one_of(st.none(), st.just((-1e6, 1e6))),
    sentinels=st.booleans(),
)
string_codecs = st.builds(
    PointCodec,
    name=st.just("s"),
    type=st.just("string"),
    size=st.integers(1, 8),
    sentinels=st.booleans(),
)
register_lists = st.lists(
    st.one_of(st.integers(0, 0xFFFF), st.integers(-5, 0x1FFFF)), min_size=0, max_size=10
)


@settings(max_examples=400, deadline=None)
@given(
    codec=st.one_of(codecs, string_codecs),
    registers=register_lists,
    sf_raw=st.one_of(st.none(), st.integers(0, 0xFFFF)),
)
def test_decode_never_raises(codec: PointCodec, registers: list[int], sf_raw: int | None) -> None:
    reading = codec.decode(registers, 5.0, sf_raw)
    assert reading.t_s == 5.0
    assert reading.valid or reading.reason


int_types = sorted(t for t, info in TYPES.items() if info.kind in ("int", "uint"))


@settings(max_examples=300, deadline=None)
@given(
    type_name=st.sampled_from(int_types),
    word_order=st.sampled_from(["big", "little"]),
    scale=st.sampled_from([1.0, 0.1, 0.01, 10.0, 100.0, 1000.0, 0.25]),
    sf_raw=st.one_of(st.none(), st.integers(-3, 4).map(lambda sf: sf & 0xFFFF)),
    fraction=st.floats(0.0, 1.0),
)
def test_encode_decode_round_trip_within_one_lsb(
    type_name: str, word_order: str, scale: float, sf_raw: int | None, fraction: float
) -> None:
    codec = PointCodec(
        "p",
        type_name,
        word_order=word_order,  # type: ignore[arg-type]  # drawn from the two
        scale=scale,
        sf_register=sf_raw is not None,
        sentinels=True,
    )
    lsb = codec.lsb(sf_raw)
    assert lsb is not None
    width = 16 * codec.count
    signed = TYPES[type_name].kind == "int"
    # Stay off the type's extremes (sentinels and rounding at the edge); 32-bit is plenty.
    span = min((1 << (width - 1)) - 2, 1 << 31)
    low, high = (-span, span) if signed else (1, span)
    value = (low + fraction * (high - low)) * lsb
    decoded = codec.decode(codec.encode(value, sf_raw), 0.0, sf_raw)
    assert decoded.valid, decoded.reason
    assert isinstance(decoded.value, int | float)
    assert abs(decoded.value - value) <= lsb * (0.5 + 1e-9) + abs(value) * 1e-12


@settings(max_examples=200, deadline=None)
@given(value=st.floats(-3e38, 3e38, allow_nan=False), word_order=st.sampled_from(["big", "little"]))
def test_float_round_trip(value: float, word_order: str) -> None:
    codec = PointCodec("f", "f32", word_order=word_order)  # type: ignore[arg-type]
    decoded = codec.decode(codec.encode(value), 0.0)
    assert decoded.valid
    assert decoded.value == pytest.approx(value, rel=2**-23, abs=1e-38)
