"""Logging set-up: JSON lines, console text, bound context, library levels, masked secrets."""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from edgectl.app.logs import (
    MASK,
    NOISY_LOGGERS,
    bind,
    configure_logging,
    get_logger,
    parse_level,
    redact,
    redact_text,
    unbind,
)

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
ANSI = "\x1b["
SECRET = "hunter2-s3cr3t"
SECRET_KEYS = [
    "password",
    "db_password",
    "passwd",
    "client_secret",
    "token",
    "access_token",
    "Authorization",
    "api_key",
    "X-Api-Key",
    "apikey",
    "private_key",
    "privateKey",
    "credential",
    "credentials",
    "cookie",
    "Set-Cookie",
]


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, root_level = root.handlers[:], root.level
    library_levels = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    was_configured, config = structlog.is_configured(), structlog.get_config()
    context = structlog.contextvars.get_contextvars()
    structlog.contextvars.clear_contextvars()
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(root_level)
    for name, level in library_levels.items():
        logging.getLogger(name).setLevel(level)
    if was_configured:
        structlog.configure(**config)
    else:
        structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(**context)


def json_records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def configured(**kw: Any) -> io.StringIO:
    stream = io.StringIO()
    configure_logging(stream=stream, **kw)
    return stream


def test_json_lines_carry_timestamp_level_event_and_bound_keys() -> None:
    out = configured(json=True)
    log = get_logger("edgectl.test")
    log.info("cycle done", p_w=1500.0, racks=3)
    log.warning("rack over cap", rack="r1")

    first, second = json_records(out)
    assert TIMESTAMP.fullmatch(first["timestamp"])
    assert first["level"] == "info"
    assert first["event"] == "cycle done"
    assert first["p_w"] == 1500.0
    assert first["racks"] == 3
    assert first["logger"] == "edgectl.test"
    assert list(first)[:3] == ["timestamp", "level", "event"]
    assert second["level"] == "warning"
    assert second["rack"] == "r1"


def test_positional_arguments_are_interpolated() -> None:
    out = configured(json=True)
    get_logger().info("read %d registers from %s", 4, "pv1")
    (record,) = json_records(out)
    assert record["event"] == "read 4 registers from pv1"
    assert record["logger"] == "edgectl"


def test_bound_context_appears_on_structlog_and_stdlib_lines() -> None:
    out = configured(json=True)
    bind(site="site-a", cycle=42)
    get_logger().info("from structlog")
    logging.getLogger("edgectl.transport.modbus").warning("from stdlib")
    unbind("cycle")
    get_logger().info("after unbind")

    first, second, third = json_records(out)
    assert (first["site"], first["cycle"]) == ("site-a", 42)
    assert (second["site"], second["cycle"]) == ("site-a", 42)
    assert third["site"] == "site-a"
    assert "cycle" not in third


def test_structlog_contextvars_can_be_used_directly() -> None:
    out = configured(json=True)
    with structlog.contextvars.bound_contextvars(cycle=7):
        get_logger().info("inside")
    get_logger().info("outside")
    inside, outside = json_records(out)
    assert inside["cycle"] == 7
    assert "cycle" not in outside


def test_a_logger_made_before_configuration_follows_it() -> None:
    log = get_logger("edgectl.early")
    out = configured(json=True)
    log.info("late")
    (record,) = json_records(out)
    assert record["event"] == "late"


def test_library_warnings_pass_and_their_info_does_not() -> None:
    out = configured(json=True, level="info")
    library = logging.getLogger("pymodbus")
    library.warning("no response from %s", "10.0.0.5:502")
    library.info("connected")
    logging.getLogger("pymodbus.client").info("frame sent")

    (record,) = json_records(out)
    assert record["logger"] == "pymodbus"
    assert record["level"] == "warning"
    assert record["event"] == "no response from 10.0.0.5:502"
    assert TIMESTAMP.fullmatch(record["timestamp"])


def test_own_stdlib_loggers_follow_the_configured_level() -> None:
    out = configured(json=True, level="info")
    logging.getLogger("edgectl.sim.site").info("site ready")
    logging.getLogger("edgectl.sim.site").debug("not shown")
    (record,) = json_records(out)
    assert record["logger"] == "edgectl.sim.site"
    assert record["event"] == "site ready"


def test_at_debug_the_libraries_are_heard() -> None:
    out = configured(json=True, level="debug")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).info("chatter")
    get_logger().debug("detail")
    records = json_records(out)
    assert [r["logger"] for r in records] == [*NOISY_LOGGERS, "edgectl"]


def test_stdlib_extra_fields_become_keys() -> None:
    out = configured(json=True)
    logging.getLogger("aiohttp.client").warning("slow", extra={"device": "bmc1", "t_s": 2.5})
    (record,) = json_records(out)
    assert (record["device"], record["t_s"]) == ("bmc1", 2.5)
    assert "message" not in record


@pytest.mark.parametrize(("level", "shown"), [("warning", ["w", "e"]), ("error", ["e"])])
def test_level_filters_structlog_records(level: str, shown: list[str]) -> None:
    out = configured(json=True, level=level)
    log = get_logger()
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert [r["event"] for r in json_records(out)] == shown


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("debug", logging.DEBUG),
        ("INFO", logging.INFO),
        ("Warning", logging.WARNING),
        ("error", logging.ERROR),
        (logging.WARNING, logging.WARNING),
        (10, logging.DEBUG),
    ],
)
def test_levels_by_name_or_number(given: str | int, expected: int) -> None:
    assert parse_level(given) == expected


@pytest.mark.parametrize("given", ["verbose", "", "inf", 15, True])
def test_an_unknown_level_is_refused(given: str | int) -> None:
    with pytest.raises(ValueError, match=r"log level .*expected one of debug, info, warning"):
        configure_logging(level=given, stream=io.StringIO())


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_secret_keys_are_masked_in_structlog_records(key: str) -> None:
    out = configured(json=True)
    get_logger().info("connecting", **{key: SECRET, "host": "10.0.0.5"})
    text = out.getvalue()
    (record,) = json_records(out)
    assert SECRET not in text
    assert record[key] == MASK
    assert record["host"] == "10.0.0.5"


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_secret_keys_are_masked_in_stdlib_records(key: str) -> None:
    out = configured(json=True)
    logging.getLogger("asyncua").warning("session", extra={key: SECRET})
    (record,) = json_records(out)
    assert SECRET not in out.getvalue()
    assert record[key] == MASK


def test_nested_secrets_are_masked_and_the_rest_kept() -> None:
    out = configured(json=True)
    config = {
        "broker": {"host": "fleet.example", "auth": {"username": "gw1", "password": SECRET}},
        "devices": [{"id": "bmc1", "api_key": SECRET}, ("tuple", {"token": SECRET})],
        "credentials": {"user": "gw1", "key": SECRET},
    }
    get_logger().info("config loaded", config=config)
    (record,) = json_records(out)
    assert SECRET not in out.getvalue()
    broker = record["config"]["broker"]
    assert broker["host"] == "fleet.example"
    assert broker["auth"] == {"username": "gw1", "password": MASK}
    assert record["config"]["devices"][0] == {"id": "bmc1", "api_key": MASK}
    assert record["config"]["devices"][1] == ["tuple", {"token": MASK}]
    assert record["config"]["credentials"] == MASK
    # The caller's data is left as it was.
    assert config["broker"]["auth"]["password"] == SECRET  # type: ignore[index]


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (f"Authorization: Bearer {SECRET}", "Authorization: ***"),
        (f"header Bearer {SECRET}.x-y_z==", "header Bearer ***"),
        (f"sent bearer {SECRET}", "sent bearer ***"),
        ("auth Basic dXNlcjpwYXNzd29yZA==", "auth Basic ***"),
        (f"mqtt://gw1:{SECRET}@fleet.example:8883/site", "mqtt://gw1:***@fleet.example:8883/site"),
        (f"https://admin:p@ss{SECRET}@bmc1/redfish/v1", "https://admin:***@bmc1/redfish/v1"),
        (
            f"GET /v1/report?site=a&access_token={SECRET}&n=2",
            "GET /v1/report?site=a&access_token=***&n=2",
        ),
        (f"{{'user': 'gw1', 'password': '{SECRET}'}}", "{'user': 'gw1', 'password': '***'}"),
        (f"DeviceCreds(user='gw1', secret={SECRET})", "DeviceCreds(user='gw1', secret=***)"),
        ("http://10.0.0.5:8080/path@v1", "http://10.0.0.5:8080/path@v1"),
        ("rack r1 capped to 12000 W", "rack r1 capped to 12000 W"),
    ],
)
def test_credentials_in_text_are_masked(text: str, masked: str) -> None:
    out = configured(json=True)
    get_logger().info(text, detail=text)
    logging.getLogger("aiohttp").warning("%s", text)
    structlog_record, stdlib_record = json_records(out)
    assert SECRET not in out.getvalue()
    assert structlog_record["event"] == masked
    assert structlog_record["detail"] == masked
    assert stdlib_record["event"] == masked


def test_objects_are_masked_through_their_text() -> None:
    class Endpoint:
        def __str__(self) -> str:
            return f"opc.tcp://operator:{SECRET}@turbine-3:4840"

    out = configured(json=True)
    get_logger().info("connecting", endpoint=Endpoint())
    (record,) = json_records(out)
    assert record["endpoint"] == "opc.tcp://operator:***@turbine-3:4840"


def test_redact_leaves_plain_values_alone() -> None:
    assert redact({"p_w": 1.5, "on": True, "n": None, "id": "pv1"}) == {
        "p_w": 1.5,
        "on": True,
        "n": None,
        "id": "pv1",
    }


def test_exceptions_render_on_one_json_line() -> None:
    out = configured(json=True)
    log = get_logger()
    try:
        raise ValueError(f"device refused Bearer {SECRET}")
    except ValueError:
        log.exception("write failed", device="bess1")
        logging.getLogger("edgectl.transport.redfish").exception("stdlib write failed")

    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    for line in lines:
        record = json.loads(line)
        assert record["level"] == "error"
        assert "exc_info" not in record
        assert record["exception"].startswith("Traceback (most recent call last):")
        assert "ValueError: device refused Bearer ***" in record["exception"]
    assert SECRET not in out.getvalue()


def test_console_mode_writes_text_without_colours_off_a_tty() -> None:
    out = configured(json=False)
    bind(site="site-a")
    get_logger("edgectl.test").info("cycle done", p_w=1500.0, password=SECRET)
    logging.getLogger("pymodbus").warning("no response")
    try:
        raise RuntimeError(f"url mqtt://gw1:{SECRET}@broker")
    except RuntimeError:
        get_logger().exception("uplink down")

    text = out.getvalue()
    assert ANSI not in text
    assert SECRET not in text
    assert not text.lstrip().startswith("{")
    lines = text.splitlines()
    assert "cycle done" in lines[0]
    assert "p_w=1500.0" in lines[0]
    assert "site=site-a" in lines[0]
    assert "password=***" in lines[0]
    assert "[edgectl.test]" in lines[0]
    assert "no response" in lines[1]
    assert "[pymodbus]" in lines[1]
    assert "RuntimeError: url mqtt://gw1:***@broker" in text
    for line in lines:
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)


def test_default_is_json_off_a_tty_and_console_on_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    piped = configured()
    get_logger().info("to the journal")
    assert json_records(piped)[0]["event"] == "to the journal"

    tty = TtyStream()
    configure_logging(stream=tty)
    get_logger().info("to a terminal")
    assert "to a terminal" in tty.getvalue()
    assert ANSI in tty.getvalue()
    assert not tty.getvalue().startswith("{")


def test_no_color_turns_colours_off_on_a_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    tty = TtyStream()
    configure_logging(stream=tty)
    get_logger().info("plain")
    assert "plain" in tty.getvalue()
    assert ANSI not in tty.getvalue()


def test_json_can_be_forced_on_a_tty() -> None:
    tty = TtyStream()
    configure_logging(json=True, stream=tty)
    get_logger().info("forced")
    assert json_records(tty)[0]["event"] == "forced"


def test_reconfiguring_does_not_duplicate_records() -> None:
    configure_logging(json=True, stream=io.StringIO())
    first = configured(json=True)
    second = configured(json=True, level="debug")
    get_logger().debug("once")
    logging.getLogger("edgectl.x").warning("stdlib once")

    assert first.getvalue() == ""
    assert [r["event"] for r in json_records(second)] == ["once", "stdlib once"]
    ours = [h for h in logging.getLogger().handlers if h.get_name() == "edgectl"]
    assert len(ours) == 1


def test_reconfiguring_back_from_debug_quietens_the_libraries() -> None:
    configured(json=True, level="debug")
    out = configured(json=True, level="info")
    logging.getLogger("asyncua").info("chatter")
    get_logger().debug("detail")
    assert out.getvalue() == ""


@pytest.mark.parametrize("blob", ["x." * 50_000, "password" * 12_500, "a://b:" * 16_000])
def test_masking_a_long_blob_takes_linear_time(blob: str) -> None:
    # A backtracking pattern takes tens of seconds on these; a linear one milliseconds.
    start = time.perf_counter()
    redact_text(blob)
    assert time.perf_counter() - start < 2.0
