"""SunSpec layouts generated from the model definitions, checked against pysunspec2's own
layout code, and discovery over a register space held in a dict."""

from __future__ import annotations

import struct

import pytest
import sunspec2.device as peer

from edgectl.devicemaps import sunspec
from edgectl.devicemaps.sunspec import END_MODEL_ID, SUNS_MARKER, discover, model_def, model_ids
from edgectl.errors import DeviceTimeout, ProtocolError, UnsupportedDevice


def _peer_model(model_id: int, length: int, counts: dict[str, int]) -> peer.Model:
    registers = [0] * (2 + length)
    registers[0], registers[1] = model_id, length
    definition = model_def(model_id)
    for name, value in counts.items():
        registers[definition.point(name).offset] = value
    data = struct.pack(f">{len(registers)}H", *registers)
    return peer.Model(model_id=model_id, model_len=length, data=data)


def test_every_definition_is_loaded() -> None:
    ids = model_ids()
    assert len(ids) > 100
    assert {1, 103, 120, 123, 124, 160, 701, 704, 713, 714, 802, 803} <= set(ids)


@pytest.mark.parametrize("model_id", model_ids())
def test_fixed_block_matches_pysunspec2(model_id: int) -> None:
    definition = model_def(model_id)
    # Variable groups with no instance: the fixed block alone (groups are tested below).
    counts = {g.count: 0 for g in definition.groups if isinstance(g.count, str)}
    reference = _peer_model(model_id, definition.length, counts)
    assert list(definition.points) == list(reference.points)
    for name, pdef in definition.points.items():
        assert pdef.offset == reference.points[name].offset, name
        assert pdef.size == reference.points[name].len, name


def test_offsets_from_the_notes() -> None:
    assert model_def(1).length == 66
    w = model_def(103).point("W")
    assert (w.offset, w.type, w.sf, w.units, w.access, w.mandatory) == (
        14,
        "int16",
        "W_SF",
        "W",
        "R",
        True,
    )
    assert model_def(103).point("W_SF").offset == 15
    assert model_def(123).point("WMaxLimPct").offset == 5
    assert model_def(123).point("WMaxLim_Ena").offset == 9
    assert model_def(123).point("WMaxLimPct").access == "RW"
    assert model_def(103).point("St").symbols["MPPT"] == 4
    assert model_def(802).point("CtrlHb").offset == 19
    assert model_def(124).point("InOutWRte_RvrtTms").offset == 15
    assert [g.offset for g in model_def(704).groups] == [59, 61, 63, 65]
    assert model_def(704).length == 65


@pytest.mark.parametrize(
    ("model_id", "group", "count_point", "expected"),
    [
        (160, "module", "N", [10, 30]),
        (803, "string", "NStr", [28, 60]),
        (714, "Prt", "NPrt", [20, 45]),
    ],
)
def test_repeating_groups_match_pysunspec2(
    model_id: int, group: str, count_point: str, expected: list[int]
) -> None:
    definition = model_def(model_id)
    gdef = definition.group(group)
    assert gdef.count in (0, count_point)
    length = definition.length_with({group: 2})
    reference = _peer_model(model_id, length, {count_point: 2})
    assert [g.offset for g in reference.groups[group]] == expected
    assert [gdef.instance_offset(i) for i in range(2)] == expected
    for name, pdef in gdef.points.items():
        assert (
            gdef.instance_offset(1) + pdef.offset == reference.groups[group][1].points[name].offset
        )


def test_nested_group_first_instance() -> None:
    crv = model_def(705).group("Crv")
    assert crv.offset == 15
    assert crv.groups[0].offset == 10  # Pt[0] inside Crv[0]: 25 from the model start
    assert crv.length is None  # the points per curve come from the device
    with pytest.raises(ValueError):
        crv.instance_offset(1)


def _space(base: int, models: list[tuple[int, int]], *, end_l: bool = True) -> dict[int, int]:
    regs = {base: SUNS_MARKER[0], base + 1: SUNS_MARKER[1]}
    address = base + 2
    for model_id, length in models:
        regs[address], regs[address + 1] = model_id, length
        for i in range(length):
            regs[address + 2 + i] = 0
        address += 2 + length
    regs[address] = END_MODEL_ID
    if end_l:
        regs[address + 1] = 0
    return regs


def _reader(regs: dict[int, int], calls: list[tuple[int, int]] | None = None):  # type: ignore[no-untyped-def]
    async def read(address: int, count: int) -> list[int]:
        if calls is not None:
            calls.append((address, count))
        if any(a not in regs for a in range(address, address + count)):
            raise ProtocolError("dev", "Modbus exception 2 (illegal data address)")
        return [regs[a] for a in range(address, address + count)]

    return read


async def test_discovery_walks_with_the_device_length() -> None:
    # An older device: model 1 with L = 65, not the definition's 66.
    regs = _space(40000, [(1, 65), (103, 50), (123, 24)])
    found = await discover(_reader(regs), "dev")
    assert found.base == 40000
    assert found.ids == [1, 103, 123]
    assert [m.address for m in found] == [40002, 40069, 40121]
    assert not found.models[0].holds(model_def(1).point("Pad"))
    assert found.find(103) is not None and found.find(160) is None


async def test_discovery_tries_40000_then_0_then_50000() -> None:
    calls: list[tuple[int, int]] = []
    found = await discover(_reader(_space(50000, [(1, 66)]), calls), "dev")
    assert found.base == 50000
    assert [c[0] for c in calls[:3]] == [40000, 0, 50000]


async def test_end_model_without_length() -> None:
    found = await discover(_reader(_space(0, [(1, 66), (802, 62)], end_l=False)), "dev")
    assert found.ids == [1, 802]


async def test_no_marker_is_unsupported() -> None:
    regs = dict.fromkeys(range(40000, 40010), 0)
    with pytest.raises(UnsupportedDevice, match="no SunSpec map"):
        await discover(_reader(regs), "dev")


async def test_chain_off_the_register_space_is_unsupported() -> None:
    regs = _space(0, [(1, 66)])
    regs[70] = 999  # where the end model was
    regs[71] = 0xFFF0
    with pytest.raises(UnsupportedDevice, match="past the register space"):
        await discover(_reader(regs), "dev")


async def test_transport_errors_propagate() -> None:
    async def dead(address: int, count: int) -> list[int]:
        raise DeviceTimeout("dev", "no answer")

    with pytest.raises(DeviceTimeout):
        await discover(dead, "dev")


def test_header_length_constant() -> None:
    assert sunspec.HEADER_LENGTH == 2
    assert sunspec.BASE_ADDRESSES == (40000, 0, 50000)
