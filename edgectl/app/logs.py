"""Logging of the daemon: structlog and standard-library records through one renderer.

`configure_logging()` sends every record, from `get_logger()` and from
`logging.getLogger(...)` alike (pymodbus, asyncua, aiohttp, edgectl modules), to one
handler on the root logger: JSON lines for journald, or a console rendering on a TTY.
Context bound with `bind()` (or `structlog.contextvars` directly, e.g.
`bound_contextvars(cycle=n)` around one cycle) is carried by every line, and secrets are
masked before anything is rendered.

Loggers from `get_logger()` follow the configuration in force when they log, so a
module-level `log = get_logger(__name__)` is fine; a logger returned by `.bind()` keeps
the configuration in force when it was bound, so bind after `configure_logging()`.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, TextIO, cast

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

__all__ = [
    "LEVELS",
    "MASK",
    "NOISY_LOGGERS",
    "bind",
    "configure_logging",
    "get_logger",
    "parse_level",
    "redact",
    "redact_text",
    "unbind",
]

LEVELS: Mapping[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
# Client libraries that log every reconnect and frame at INFO.
NOISY_LOGGERS = ("pymodbus", "asyncua", "aiohttp")
MASK = "***"

_HANDLER_NAME = "edgectl"
_DEFAULT_LOGGER = "edgectl"

# Key names are compared with separators removed, so api_key, apiKey and X-Api-Key match.
_SECRET_KEY_PARTS = (
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "apikey",
    "privatekey",
    "credential",
    "cookie",
)
_KEY_SEPARATORS = re.compile(r"[\s_.-]")
_SECRET_KEY_PATTERN = (
    r"password|passwd|secret|token|authorization|api[_-]?key|private[_-]?key|credential|cookie"
)
# key=value and key: value in free text (query strings, str() of dicts and dataclasses,
# connection strings). Each pattern starts only where a word starts and never backtracks
# into a word it consumed, so that a long blob of text costs linear time.
_SECRET_PAIR = re.compile(
    rf"(?<![\w.-])(?=[\w.-]*?(?:{_SECRET_KEY_PATTERN}))(?P<key>[\w.-]++)(?P<quote>['\"]?)"
    r"(?P<sep>\s*[=:]\s*)"
    r"(?P<value>\"[^\"]*\"|'[^']*'|(?:(?:Bearer|Basic)\s+)?[^\s&;,'\"()\[\]{}<>]+)",
    re.IGNORECASE,
)
# Header schemes are case-insensitive; masking a prose word after "basic" is the cheaper
# mistake.
_AUTH_SCHEME = re.compile(r"\b(?P<scheme>Bearer|Basic)\s+[A-Za-z0-9._~+/-]+=*", re.IGNORECASE)
# The password may hold an unescaped "@": the greedy match ends at the last one before
# the host.
_URL_PASSWORD = re.compile(
    r"(?<![a-z0-9+.-])(?P<head>[a-z][a-z0-9+.-]*+://[^\s:/?#@]*+):[^\s/?#]*@", re.IGNORECASE
)
# Deeper structures are rendered as text (and masked as text) rather than walked.
_MAX_DEPTH = 8
# The record's own attributes, and those other formatters add to it, are not extras.
_RECORD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)


def configure_logging(
    *, json: bool | None = None, level: str | int = "info", stream: TextIO | None = None
) -> None:
    """Route structlog and standard-library logging to `stream` as JSON lines or console text."""
    threshold = parse_level(level)
    out = sys.stderr if stream is None else stream
    tty = _isatty(out)
    as_json = not tty if json is None else json

    structlog.configure(
        processors=[
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=_stdlib_logger,
        # A cached logger would keep the level and chain of its first use past a
        # reconfiguration.
        cache_logger_on_first_use=False,
    )

    handler = logging.StreamHandler(out)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[_add_extra],
            processors=_render_chain(as_json, colors=tty and "NO_COLOR" not in os.environ),
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(threshold)
    # At DEBUG the libraries inherit the root level; otherwise only their warnings pass.
    noisy_level = logging.NOTSET if threshold <= logging.DEBUG else max(threshold, logging.WARNING)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(noisy_level)


def get_logger(name: str | None = None) -> FilteringBoundLogger:
    """A structlog logger named `name` (default "edgectl"), shown as the "logger" key."""
    return cast(FilteringBoundLogger, structlog.get_logger(name or _DEFAULT_LOGGER))


def bind(**values: Any) -> None:
    """Add `values` to every line logged from this context (task or thread) on."""
    structlog.contextvars.bind_contextvars(**values)


def unbind(*keys: str) -> None:
    """Stop adding `keys` to the lines logged from this context."""
    structlog.contextvars.unbind_contextvars(*keys)


def parse_level(level: str | int) -> int:
    """The `logging` level for a name ("debug", "info", "warning", "error") or number."""
    if isinstance(level, bool):
        raise ValueError(f"log level {level!r}: expected one of {_level_names()}")
    if isinstance(level, int):
        if level in LEVELS.values():
            return level
        raise ValueError(
            f"log level {level}: expected one of {_level_names()} or their numbers "
            f"{sorted(set(LEVELS.values()))}"
        )
    number = LEVELS.get(level.strip().lower())
    if number is None:
        raise ValueError(f"unknown log level {level!r}: expected one of {_level_names()}")
    return number


def redact(value: Any, *, _depth: int = 0) -> Any:
    """A copy of `value` with secrets masked: values under secret-like keys, and in text."""
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if _depth >= _MAX_DEPTH:
        return redact_text(str(value))
    if isinstance(value, Mapping):
        return {
            k: MASK if _is_secret_key(str(k)) else redact(v, _depth=_depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, tuple):
        return tuple(redact(v, _depth=_depth + 1) for v in value)
    if isinstance(value, list | set | frozenset):
        return [redact(v, _depth=_depth + 1) for v in value]
    # Objects would be rendered through their repr or str, which may hold a URL or a
    # password field: render them here, where the text can still be masked.
    return redact_text(str(value))


def redact_text(text: str) -> str:
    """`text` with secret key=value pairs, Bearer/Basic credentials and URL passwords masked."""
    text = _SECRET_PAIR.sub(_mask_pair, text)
    text = _AUTH_SCHEME.sub(lambda m: f"{m['scheme']} {MASK}", text)
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}:{MASK}@", text)


def _mask_pair(match: re.Match[str]) -> str:
    value = match["value"]
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{match['key']}{match['quote']}{match['sep']}{quote}{MASK}{quote}"


@lru_cache(maxsize=1024)
def _is_secret_key(key: str) -> bool:
    folded = _KEY_SEPARATORS.sub("", key.lower())
    return any(part in folded for part in _SECRET_KEY_PARTS)


def _level_names() -> str:
    return ", ".join(name for name in LEVELS if name != "warn")


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        # A closed or file-less stream is no terminal.
        return False


def _stdlib_logger(*args: Any) -> logging.Logger:
    return logging.getLogger(args[0] if args else _DEFAULT_LOGGER)


def _render_chain(as_json: bool, *, colors: bool) -> list[Processor]:
    # The shared steps run on both kinds of record, so stdlib lines carry the bound
    # context, the same timestamp and level, and are masked the same way.
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        _add_timestamp,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
    ]
    if as_json:
        return [
            *shared,
            # Before masking, so that secrets in exception messages are masked too; the
            # traceback becomes one string, which keeps the record on one line.
            structlog.processors.format_exc_info,
            _redact_event,
            _lead_keys,
            structlog.processors.JSONRenderer(),
        ]
    renderer = structlog.dev.ConsoleRenderer(
        colors=colors,
        # Locals of a frame can hold credentials that no pattern recognises.
        exception_formatter=(
            structlog.dev.RichTracebackFormatter(show_locals=False)
            if colors
            else structlog.dev.plain_traceback
        ),
    )
    return [*shared, _redact_event, _masking_output(renderer)]


def _add_timestamp(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    # The record's creation time, not the time of formatting.
    record: logging.LogRecord = event_dict["_record"]
    stamp = datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds")
    event_dict["timestamp"] = stamp.replace("+00:00", "Z")
    return event_dict


def _add_extra(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    record: logging.LogRecord = event_dict["_record"]
    for key, value in record.__dict__.items():
        if key not in _RECORD_ATTRIBUTES:
            event_dict.setdefault(key, value)
    return event_dict


def _redact_event(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    # The console renderer formats exc_info itself; its output is masked as text.
    exc_info = event_dict.pop("exc_info", None)
    masked: EventDict = redact(event_dict)
    if exc_info is not None:
        masked["exc_info"] = exc_info
    return masked


def _lead_keys(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    # So that a line read in the journal starts with when, how bad, what and where from.
    lead = {
        k: event_dict.pop(k) for k in ("timestamp", "level", "event", "logger") if k in event_dict
    }
    return {**lead, **event_dict}


def _masking_output(
    renderer: Callable[[WrappedLogger, str, EventDict], str],
) -> Processor:
    def render(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
        return redact_text(renderer(logger, method_name, event_dict))

    return render
