"""Site file loading: every class of error names the file, the key path and what was expected."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from edgectl.config import Site
from edgectl.config.load import load_site, summary, validate_site_dict
from edgectl.errors import EXIT_INPUT, InputError, Problem

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# A small valid site; each test breaks one thing in it.
BASE = """\
[site]
id = "t"
v_nominal_v = 800.0

[control]
grid_import_max_w = 100_000.0

[[bus]]
id = "main"

[[bus]]
id = "row"

[[bus]]
id = "bat"

[[line]]
id = "l-row"
from = "main"
to = "row"
r_ohm = 0.004
i_max_a = 1000.0

[[line]]
id = "l-bat"
from = "bat"
to = "main"
r_ohm = 0.002
i_max_a = 1000.0

[[source]]
id = "pv"
kind = "pv"
bus = "main"
p_max_w = 500_000.0
device = "pv-dev"

[[source]]
id = "bat"
kind = "bess"
bus = "bat"
p_max_w = 250_000.0
p_charge_max_w = 250_000.0
capacity_wh = 1_000_000.0
soc_min = 0.1
soc_max = 0.9
v_ref_v = 800.0
droop_r_ohm = 0.064
i_max_a = 345.0

[[rack]]
id = "r01"
bus = "row"
p_min_w = 36_000.0
p_max_w = 120_000.0
tier = 0
ramp_w_per_s = 24_000.0

[[rack]]
id = "r02"
bus = "row"
p_min_w = 36_000.0
p_max_w = 120_000.0
tier = 3
ramp_w_per_s = 24_000.0
device = "r02-bmc"

[[device]]
id = "pv-dev"
protocol = "modbus-tcp"
endpoint = "127.0.0.1:15020"
unit = 1
profile = "sunspec-pv"

[[device]]
id = "r02-bmc"
protocol = "redfish"
endpoint = "127.0.0.1:18080"
profile = "redfish-rack"
"""


def _block(lines: list[str], table: str, index: int | None) -> tuple[int, int]:
    """Line range [start, end) of [table] or of the index-th [[table]], header included."""
    header = f"[{table}]" if index is None else f"[[{table}]]"
    starts = [i for i, line in enumerate(lines) if line.strip() == header]
    start = starts[index or 0]
    end = start + 1
    while end < len(lines) and not lines[end].startswith("["):
        end += 1
    return start, end


def with_key(text: str, table: str, index: int | None, key: str, value: str | None) -> str:
    """Set (value is TOML text), add or, with None, remove one key of one table."""
    lines = text.splitlines()
    start, end = _block(lines, table, index)
    at = [i for i in range(start + 1, end) if lines[i].split("=")[0].strip() == key]
    if value is None:
        assert at, f"{table}[{index}] has no key {key}"
        del lines[at[0]]
    elif at:
        lines[at[0]] = f"{key} = {value}"
    else:
        lines.insert(start + 1, f"{key} = {value}")
    return "\n".join(lines) + "\n"


def without_entry(text: str, table: str, index: int) -> str:
    """Drop the index-th [[table]] entry."""
    lines = text.splitlines()
    start, end = _block(lines, table, index)
    return "\n".join(lines[:start] + lines[end:]) + "\n"


def extra_line(line_id: str, a: str, b: str) -> str:
    """TOML of one more [[line]] entry, to append to a site."""
    return f'\n[[line]]\nid = "{line_id}"\nfrom = "{a}"\nto = "{b}"\nr_ohm = 0.01\ni_max_a = 10.0\n'


def write(tmp_path: Path, text: str, name: str = "site.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> list[Problem]:
    with pytest.raises(InputError) as info:
        load_site(path)
    assert info.value.exit_code == EXIT_INPUT
    problems = info.value.problems
    for problem in problems:
        # Every line an operator sees starts with the file.
        assert str(problem).startswith(f"{path}: ")
        assert problem.file == str(path)
    return problems


def only_problem(path: Path) -> Problem:
    problems = problems_of(path)
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0]


def test_base_site_is_valid(tmp_path: Path) -> None:
    site = load_site(write(tmp_path, BASE))
    assert isinstance(site, Site)
    assert [b.id for b in site.buses] == ["main", "row", "bat"]
    assert site.lines[1].from_bus == "bat"
    assert site.lines[1].to_bus == "main"
    assert site.control.period_s == 1.0  # defaults fill what the file leaves out


def test_unknown_key(tmp_path: Path) -> None:
    path = write(tmp_path, with_key(BASE, "rack", 1, "p_maxw", "1.0"))
    problem = only_problem(path)
    assert problem.path == "rack[1].p_maxw"
    assert problem.message.startswith("unknown key (allowed: id, bus, p_min_w, p_max_w, tier,")
    assert 'did you mean "p_max_w"?' in problem.message
    assert problem.message.endswith('(rack "r02")')


def test_unknown_key_at_top_level_and_in_a_table(tmp_path: Path) -> None:
    text = "colour = 1\n" + with_key(BASE, "control", None, "periode_s", "1.0")
    problems = problems_of(write(tmp_path, text))
    assert {p.path for p in problems} == {"colour", "control.periode_s"}
    top = next(p for p in problems if p.path == "colour")
    assert top.message == (
        "unknown key (allowed: site, control, bus, line, source, rack, device, daemon, uplink)"
    )


def test_python_field_names_are_not_toml_keys(tmp_path: Path) -> None:
    # The model accepts from_bus in Python; the file must say `from`.
    text = with_key(with_key(BASE, "line", 0, "from", None), "line", 0, "from_bus", '"main"')
    problems = problems_of(write(tmp_path, text))
    assert [(p.path, p.message) for p in problems] == [
        ("line[0].from", 'missing required key (line "l-row")'),
        (
            "line[0].from_bus",
            'unknown key (allowed: id, from, to, r_ohm, i_max_a), did you mean "from"? '
            '(line "l-row")',
        ),
    ]


def test_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path, with_key(BASE, "rack", 0, "p_max_w", '"12"'))
    problem = only_problem(path)
    assert problem.path == "rack[0].p_max_w"
    assert problem.message == "expected a number, got string '12' (rack \"r01\")"
    assert str(problem) == f"{path}: rack[0].p_max_w: {problem.message}"


@pytest.mark.parametrize(
    ("table", "index", "key", "value", "message"),
    [
        ("rack", 1, "tier", "1.0", 'expected an integer, got number 1.0 (rack "r02")'),
        ("rack", 1, "ramp_w_per_s", "true", 'expected a number, got boolean true (rack "r02")'),
        ("site", None, "id", "5", "expected a string, got integer 5"),
        ("site", None, "v_nominal_v", "inf", "expected a finite number, got number inf"),
        (
            "source",
            0,
            "kind",
            '"solar"',
            "expected 'pv', 'wind', 'bess' or 'grid', got string 'solar' (source \"pv\")",
        ),
        ("device", 0, "endpoint", '""', 'must not be empty (device "pv-dev")'),
        ("device", 0, "unit", "256", 'must be at most 255, got 256 (device "pv-dev")'),
        ("control", None, "period_s", "0.01", "must be at least 0.1, got 0.01"),
        ("control", None, "v_min_pu", "1.0", "must be less than 1, got 1"),
        ("control", None, "v_max_pu", "0.99", "must be greater than 1, got 0.99"),
        ("rack", 0, "tier", "4", 'must be at most 3, got 4 (rack "r01")'),
        ("line", 0, "i_max_a", "{ a = 1 }", 'expected a number, got a table (line "l-row")'),
    ],
)
def test_wrong_value_messages(
    tmp_path: Path, table: str, index: int | None, key: str, value: str, message: str
) -> None:
    problem = only_problem(write(tmp_path, with_key(BASE, table, index, key, value)))
    assert problem.path == (f"{table}.{key}" if index is None else f"{table}[{index}].{key}")
    assert problem.message == message


def test_missing_key(tmp_path: Path) -> None:
    problem = only_problem(write(tmp_path, with_key(BASE, "rack", 0, "bus", None)))
    assert problem.path == "rack[0].bus"
    assert problem.message == 'missing required key (rack "r01")'


def _required_keys() -> list[tuple[str, int | None, str]]:
    """Every key of BASE that a site file must have, as (table, index, key)."""
    keys: list[tuple[str, int | None, str]] = [
        ("site", None, "id"),
        ("site", None, "v_nominal_v"),
        ("control", None, "grid_import_max_w"),
        ("bus", 1, "id"),
    ]
    keys += [("line", 1, k) for k in ("id", "from", "to", "r_ohm", "i_max_a")]
    keys += [("source", 0, k) for k in ("id", "kind", "bus", "p_max_w")]
    keys += [
        ("source", 1, k)
        for k in (
            "p_charge_max_w",
            "capacity_wh",
            "soc_min",
            "soc_max",
            "v_ref_v",
            "droop_r_ohm",
            "i_max_a",
        )
    ]
    keys += [("rack", 1, k) for k in ("id", "bus", "p_min_w", "p_max_w", "tier", "ramp_w_per_s")]
    keys += [("device", 1, k) for k in ("id", "protocol", "endpoint", "profile")]
    return keys


@pytest.mark.parametrize(("table", "index", "key"), _required_keys())
def test_every_required_key_is_reported_missing(
    tmp_path: Path, table: str, index: int | None, key: str
) -> None:
    problem = only_problem(write(tmp_path, with_key(BASE, table, index, key, None)))
    assert problem.path == (f"{table}.{key}" if index is None else f"{table}[{index}].{key}")
    assert problem.message.startswith("missing required key")


def test_kind_specific_keys(tmp_path: Path) -> None:
    text = with_key(BASE, "source", 0, "v_ref_v", "800.0")
    text = with_key(text, "source", 1, "droop_r_ohm", None)
    problems = problems_of(write(tmp_path, text))
    assert [(p.path, p.message) for p in problems] == [
        (
            "source[0].v_ref_v",
            'not a key of kind "pv" (only for kinds bess and grid) (source "pv")',
        ),
        ("source[1].droop_r_ohm", 'missing required key for kind "bess" (source "bat")'),
    ]


def test_missing_tables_and_empty_arrays() -> None:
    data = tomllib.loads(BASE)
    del data["control"]
    data["bus"] = []
    del data["source"]
    with pytest.raises(InputError) as info:
        validate_site_dict(data, "x.toml")
    assert [(p.path, p.message) for p in info.value.problems] == [
        ("control", "missing required table [control]"),
        ("bus", "at least one [[bus]] entry is required"),
        ("source", "missing: at least one [[source]] entry is required"),
    ]


def test_entry_that_is_not_a_table() -> None:
    data = tomllib.loads(BASE)
    data["bus"] = ["main", *data["bus"]]
    data["line"] = {"id": "x"}
    with pytest.raises(InputError) as info:
        validate_site_dict(data, "x.toml")
    assert [(p.path, p.message) for p in info.value.problems] == [
        ("bus[0]", "expected a table, got string 'main'"),
        ("line", "expected an array of tables ([[line]]), got a table"),
    ]


def test_duplicate_id(tmp_path: Path) -> None:
    problem = only_problem(write(tmp_path, with_key(BASE, "rack", 1, "id", '"r01"')))
    assert problem.path == "rack[1].id"
    assert problem.message == 'duplicate id "r01" (first used by rack[0])'


def test_same_id_in_different_arrays_is_fine(tmp_path: Path) -> None:
    # Bus "bat" and source "bat" live in different namespaces.
    site = load_site(write(tmp_path, BASE))
    assert site.buses[2].id == site.sources[1].id == "bat"


def test_unknown_bus_reference(tmp_path: Path) -> None:
    problem = only_problem(write(tmp_path, with_key(BASE, "line", 0, "to", '"rwo"')))
    assert problem.path == "line[0].to"
    assert problem.message == 'unknown bus "rwo", did you mean "row"? (line "l-row")'


def test_unknown_bus_reference_lists_the_buses_when_there_are_few(tmp_path: Path) -> None:
    problem = only_problem(write(tmp_path, with_key(BASE, "source", 0, "bus", '"dc"')))
    assert problem.path == "source[0].bus"
    assert problem.message == 'unknown bus "dc" (known: main, row, bat) (source "pv")'


def test_unknown_device_reference(tmp_path: Path) -> None:
    problem = only_problem(write(tmp_path, with_key(BASE, "rack", 1, "device", '"r02-bcm"')))
    assert problem.path == "rack[1].device"
    assert problem.message == 'unknown device "r02-bcm", did you mean "r02-bmc"? (rack "r02")'


def test_device_used_twice(tmp_path: Path) -> None:
    problem = only_problem(write(tmp_path, with_key(BASE, "rack", 0, "device", '"r02-bmc"')))
    assert problem.path == "rack[1].device"
    assert problem.message.startswith('device "r02-bmc" is already used by rack[0]')


def test_two_devices_on_one_modbus_address(tmp_path: Path) -> None:
    text = BASE + (
        '\n[[device]]\nid = "other"\nprotocol = "modbus-tcp"\n'
        'endpoint = "127.0.0.1:15020"\nprofile = "sunspec-pv"\n'
    )
    problem = only_problem(write(tmp_path, text))
    assert problem.path == "device[2].unit"
    assert problem.message.startswith('same Modbus address as device[0] ("pv-dev")')
    # A second unit behind the same gateway is a different address.
    load_site(write(tmp_path, text.replace('id = "other"', 'id = "other"\nunit = 2')))


def test_line_from_a_bus_to_itself(tmp_path: Path) -> None:
    text = BASE + extra_line("l-loop", "row", "row")
    problem = only_problem(write(tmp_path, text))
    assert problem.path == "line[2].to"
    assert problem.message == 'same bus as from ("row"), a line must join two buses (line "l-loop")'


def test_disconnected_bus(tmp_path: Path) -> None:
    problem = only_problem(write(tmp_path, BASE + '\n[[bus]]\nid = "island"\n'))
    assert problem.path == "bus[3]"
    assert problem.message == 'not connected to bus "main" (bus "island")'


def test_disconnected_part_names_every_bus_of_it(tmp_path: Path) -> None:
    text = BASE + '\n[[bus]]\nid = "far"\n\n[[bus]]\nid = "farther"\n'
    text += extra_line("l-far", "far", "farther")
    problems = problems_of(write(tmp_path, text))
    assert [p.path for p in problems] == ["bus[3]", "bus[4]"]


@pytest.mark.parametrize("value", ["0.0", "-0.004"])
def test_non_positive_resistance(tmp_path: Path, value: str) -> None:
    problem = only_problem(write(tmp_path, with_key(BASE, "line", 1, "r_ohm", value)))
    assert problem.path == "line[1].r_ohm"
    got = value.removesuffix(".0")
    assert problem.message == f'must be greater than 0, got {got} (line "l-bat")'


def test_non_positive_droop_resistance(tmp_path: Path) -> None:
    problem = only_problem(write(tmp_path, with_key(BASE, "source", 1, "droop_r_ohm", "0")))
    assert problem.path == "source[1].droop_r_ohm"
    assert problem.message == 'must be greater than 0, got 0 (source "bat")'


def test_p_min_above_p_max(tmp_path: Path) -> None:
    problem = only_problem(write(tmp_path, with_key(BASE, "rack", 1, "p_min_w", "130_000.0")))
    assert problem.path == "rack[1].p_min_w"
    assert problem.message == 'must not exceed p_max_w, got 130000 > 120000 (rack "r02")'


@pytest.mark.parametrize("soc_min", ["0.9", "0.95"])
def test_soc_min_not_below_soc_max(tmp_path: Path, soc_min: str) -> None:
    problem = only_problem(write(tmp_path, with_key(BASE, "source", 1, "soc_min", soc_min)))
    assert problem.path == "source[1].soc_min"
    assert problem.message == f'must be below soc_max, got {soc_min} >= 0.9 (source "bat")'


def test_no_droop_source(tmp_path: Path) -> None:
    problem = only_problem(write(tmp_path, without_entry(BASE, "source", 1)))
    assert problem.path == "source"
    assert "nothing would hold the bus voltage" in problem.message
    assert '"bess" or "grid"' in problem.message


def test_a_grid_tie_alone_holds_the_bus(tmp_path: Path) -> None:
    grid = (
        '\n[[source]]\nid = "grid"\nkind = "grid"\nbus = "main"\np_max_w = 24_000.0\n'
        "v_ref_v = 800.0\ndroop_r_ohm = 1.0\ni_max_a = 33.0\n"
    )
    site = load_site(write(tmp_path, without_entry(BASE, "source", 1) + grid))
    assert [s.id for s in site.sources if s.is_droop] == ["grid"]


def test_bad_toml_syntax_names_the_line(tmp_path: Path) -> None:
    text = BASE.replace("p_max_w = 500_000.0", "p_max_w = 500 kW")
    line = text.splitlines().index("p_max_w = 500 kW") + 1
    problem = only_problem(write(tmp_path, text))
    assert problem.path == ""
    assert problem.message.startswith("not valid TOML: ")
    assert f"line {line}," in problem.message


def test_duplicate_toml_key_is_a_syntax_error(tmp_path: Path) -> None:
    text = BASE.replace('id = "t"\n', 'id = "t"\nid = "u"\n')
    problem = only_problem(write(tmp_path, text))
    assert problem.message.startswith("not valid TOML: ")
    assert "line 3," in problem.message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_bytes(b'[site]\nid = "\xff"\n')
    problem = only_problem(path)
    assert problem.message == "not valid UTF-8 (at line 2)"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    problem = only_problem(path)
    assert problem == Problem(str(path), "", "no such file")
    assert str(problem) == f"{path}: no such file"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    problem = only_problem(tmp_path)
    assert "is a directory" in problem.message


def test_several_errors_are_all_reported(tmp_path: Path) -> None:
    text = with_key(BASE, "site", None, "v_nominal_v", '"800"')
    text = with_key(text, "control", None, "green_share_min", "1.5")
    text = with_key(text, "line", 0, "r_ohm", "-1.0")
    text = with_key(text, "rack", 1, "p_min_w", "130_000.0")
    text = with_key(text, "source", 1, "soc_min", "0.95")
    text = with_key(text, "device", 1, "protocl", '"redfish"')
    path = write(tmp_path, text)
    problems = problems_of(path)
    assert [p.path for p in problems] == [
        "site.v_nominal_v",
        "control.green_share_min",
        "line[0].r_ohm",
        "source[1].soc_min",
        "rack[1].p_min_w",
        "device[1].protocl",
    ]
    with pytest.raises(InputError) as info:
        load_site(path)
    # The exception's text is one line per problem, as the CLI prints it.
    assert str(info.value).splitlines() == [str(p) for p in problems]


def test_several_cross_entry_errors_are_all_reported_in_file_order(tmp_path: Path) -> None:
    text = with_key(BASE, "source", 0, "device", '"nope"')
    text = with_key(text, "rack", 0, "bus", '"roe"')
    text = with_key(text, "line", 0, "to", '"main"')
    text = without_entry(text, "source", 1) + '\n[[bus]]\nid = "row"\n'
    problems = problems_of(write(tmp_path, text))
    assert [p.path for p in problems] == [
        "bus[1]",
        "bus[3].id",
        "line[0].to",
        "source[0].device",
        "source",
        "rack[0].bus",
    ]
    assert problems[0].message == 'not connected to bus "main" (bus "row")'


def test_cross_entry_checks_wait_for_a_valid_shape(tmp_path: Path) -> None:
    # A duplicate id next to a type error: the type error alone is reported, since the
    # entries cannot be compared until each has its type.
    text = with_key(with_key(BASE, "rack", 1, "id", '"r01"'), "rack", 0, "tier", '"0"')
    problem = only_problem(write(tmp_path, text))
    assert problem.path == "rack[0].tier"


def test_validate_site_dict_names_the_given_file() -> None:
    data: dict[str, Any] = tomllib.loads(BASE)
    data["rack"][0]["p_max_w"] = "12"
    with pytest.raises(InputError) as info:
        validate_site_dict(data, "/etc/edgectl/site.toml")
    assert str(info.value) == (
        "/etc/edgectl/site.toml: rack[0].p_max_w: expected a number, got string '12' (rack \"r01\")"
    )


def test_quoted_keys_stay_readable(tmp_path: Path) -> None:
    problem = only_problem(write(tmp_path, with_key(BASE, "site", None, '"two words"', "1")))
    assert problem.path == 'site."two words"'


def test_summary_of_base_site(tmp_path: Path) -> None:
    facts = summary(load_site(write(tmp_path, BASE)))
    assert facts == {
        "site": "t",
        "v_nominal_v": 800.0,
        "buses": 3,
        "lines": 2,
        "devices": 2,
        "sources": {
            "pv": {"count": 1, "p_max_w": 500_000.0},
            "bess": {
                "count": 1,
                "p_max_w": 250_000.0,
                "p_charge_max_w": 250_000.0,
                "capacity_wh": 1_000_000.0,
            },
        },
        "sources_p_max_w": 750_000.0,
        "racks": {
            "count": 2,
            "p_max_w": 240_000.0,
            "p_min_w": 72_000.0,
            "tiers": {"0": 1, "1": 0, "2": 0, "3": 1},
        },
    }


@pytest.mark.parametrize("name", ["small_site.toml", "reference_site.toml"])
def test_example_files_load(name: str) -> None:
    site = load_site(EXAMPLES / name)
    assert site.racks
    assert any(s.is_droop for s in site.sources)


def test_small_example_summary() -> None:
    facts = summary(load_site(EXAMPLES / "small_site.toml"))
    assert facts["site"] == "demo-small"
    assert (facts["buses"], facts["lines"]) == (6, 6)
    assert {k: v["count"] for k, v in facts["sources"].items()} == {
        "pv": 3,
        "wind": 2,
        "bess": 2,
        "grid": 1,
    }
    assert facts["racks"]["count"] == 12
    assert facts["racks"]["tiers"] == {"0": 2, "1": 4, "2": 4, "3": 2}


OPCUA_DEVICE = """
[[device]]
id = "wt"
protocol = "opcua"
endpoint = "127.0.0.1:4840"
profile = "opcua-wind"
"""


def test_opcua_is_secure_unless_the_file_says_none(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, BASE + OPCUA_DEVICE))
    paths = [p.path for p in problems]
    assert paths == [
        "device[2].certificate",
        "device[2].private_key",
        "device[2].server_certificate",
    ]
    assert 'write security = "none"' in problems[0].message
    site = load_site(write(tmp_path, BASE + OPCUA_DEVICE + 'security = "none"\n'))
    assert site.devices[2].security == "none"
    files = 'certificate = "c.der"\nprivate_key = "c.pem"\nserver_certificate = "s.der"\n'
    secure = load_site(write(tmp_path, BASE + OPCUA_DEVICE + files))
    assert secure.devices[2].security == "Basic256Sha256-SignAndEncrypt"


def test_security_keys_belong_to_opcua_only(tmp_path: Path) -> None:
    text = with_key(BASE, "device", 0, "security", '"none"')
    problem = only_problem(write(tmp_path, text))
    assert problem.path == "device[0].security"
    assert 'only for protocol "opcua"' in problem.message
    text = BASE + OPCUA_DEVICE + 'security = "none"\ncertificate = "c.der"\n'
    problem = only_problem(write(tmp_path, text))
    assert (problem.path, problem.message.split(" (")[0]) == (
        "device[2].certificate",
        'not used with security = "none"',
    )


def test_daemon_table_refuses_bad_values_with_key_paths(tmp_path: Path) -> None:
    text = BASE + '\n[daemon]\nrecover_s = -1.0\nstatus = "x"\n'
    problems = problems_of(write(tmp_path, text))
    assert {p.path for p in problems} == {"daemon.recover_s", "daemon.status"}
