"""The daemon's local status API as a client sees it: its address, and one GET of JSON.

`edgectl run` serves the API on loopback, at "HOST:PORT" (the host a loopback address:
the API has no authentication) or at "unix:/path/to/socket". `parse_listen` is the one
reading of such an address, for the server and its clients alike; `fetch_json` asks the
API for one document. Failures leave as edgectl errors: no daemon there (refused, no such
socket, no answer in time) is DeviceUnreachable, an error status or an answer that is not
JSON is ProtocolError.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import os
import re
from typing import Any

import aiohttp

from edgectl.errors import DeviceUnreachable, ProtocolError

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_TIMEOUT_S",
    "fetch_json",
    "format_listen",
    "parse_listen",
]

DEFAULT_ADDRESS = "127.0.0.1:8470"
DEFAULT_TIMEOUT_S = 3.0
# sockaddr_un.sun_path holds 108 bytes on Linux, the terminating NUL included.
_SUN_PATH_MAX = 107
_PORT = re.compile(r"[0-9]{1,5}")
_HINT = "is the daemon running? (edgectl run --config SITE serves its status API there)"


def parse_listen(text: str) -> tuple[str, int] | str:
    """(host, port) for "HOST:PORT", the socket path for "unix:/path"; ValueError if neither.

    The host must be a loopback address (127.0.0.0/8, ::1, or localhost, read as
    127.0.0.1); an IPv6 host goes in brackets, "[::1]:8470". Port 0 is accepted (a server
    then binds any free port). The ValueError says what is wrong without repeating `text`:
    the caller names where the text came from.
    """
    if text.startswith("unix:"):
        path = text.removeprefix("unix:")
        if not path:
            raise ValueError("unix: needs a socket path, e.g. unix:/run/edgectl/status.sock")
        if "\0" in path:
            raise ValueError("the socket path contains a NUL character")
        size = len(os.fsencode(path))
        if size > _SUN_PATH_MAX:
            raise ValueError(
                f"the socket path is {size} bytes long; a unix socket path holds at most "
                f"{_SUN_PATH_MAX}"
            )
        return path
    host, colon, port_text = text.rpartition(":")
    if not colon or not host:
        raise ValueError("expected HOST:PORT (such as 127.0.0.1:8470) or unix:/path/to/socket")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("an IPv6 host goes in brackets, such as [::1]:8470")
    if not _PORT.fullmatch(port_text):
        raise ValueError(f"the port {port_text!r} is not a number from 0 to 65535")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"the port {port} is not a number from 0 to 65535")
    if host.lower() == "localhost":
        return "127.0.0.1", port
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"the host {host!r} is not an IP address (give 127.0.0.1, [::1] or localhost)"
        ) from None
    if not ip.is_loopback:
        raise ValueError(
            f"the host {ip} is not a loopback address: the status API has no "
            "authentication, so it listens on loopback only (127.0.0.1 or [::1])"
        )
    return str(ip), port


def format_listen(where: tuple[str, int] | str) -> str:
    """An address as parse_listen reads it: "127.0.0.1:8470", "[::1]:8470", "unix:/path"."""
    if isinstance(where, str):
        return f"unix:{where}"
    host, port = where
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def fetch_json(address: str, path: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
    """GET `path` ("/v1/status", query included) from the status API at `address`; the
    decoded JSON answer. ValueError for an address parse_listen refuses."""
    where = parse_listen(address)
    if not path.startswith("/"):
        raise ValueError(f"path must be absolute, got {path!r}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    device = f"status API {address}"
    connector: aiohttp.BaseConnector
    if isinstance(where, str):
        connector = aiohttp.UnixConnector(path=where)
        # The host names nothing on a unix socket; the server checks it is loopback's.
        url = "http://localhost" + path
    else:
        connector = aiohttp.TCPConnector()
        url = f"http://{format_listen(where)}{path}"
    try:
        async with (
            asyncio.timeout(timeout_s),
            aiohttp.ClientSession(connector=connector) as session,
            session.get(url, headers={"Accept": "application/json"}, allow_redirects=False) as resp,
        ):
            raw = await resp.read()
            status, reason = resp.status, resp.reason or ""
    # TimeoutError first: aiohttp's own timeouts are also connection errors.
    except TimeoutError:
        raise DeviceUnreachable(
            device, f"GET {path}: no answer within {timeout_s:g} s: {_HINT}"
        ) from None
    except aiohttp.ClientConnectorError as exc:
        raise DeviceUnreachable(device, _cannot_connect(exc, where)) from None
    except aiohttp.ClientConnectionError as exc:
        raise DeviceUnreachable(
            device, f"GET {path}: connection lost ({_describe(exc)}): {_HINT}"
        ) from None
    except aiohttp.ClientError as exc:
        raise ProtocolError(device, f"GET {path}: not an HTTP answer: {_describe(exc)}") from None
    try:
        body = json.loads(raw) if raw.strip() else None
    except (ValueError, UnicodeDecodeError):
        excerpt = raw[:60].decode("utf-8", "replace")
        raise ProtocolError(
            device,
            f"GET {path}: HTTP {status}, answer is not JSON: {excerpt!r} "
            "(is something other than the edgectl status API serving there?)",
        ) from None
    if not 200 <= status < 300:
        detail = body.get("error") if isinstance(body, dict) else None
        message = detail if isinstance(detail, str) and detail else reason or "no reason given"
        raise ProtocolError(device, f"GET {path}: HTTP {status}: {' '.join(message.split())}")
    return body


def _cannot_connect(exc: aiohttp.ClientConnectorError, where: tuple[str, int] | str) -> str:
    code = exc.os_error.errno
    if code == errno.ECONNREFUSED:
        return f"connection refused: {_HINT}"
    if code == errno.ENOENT and isinstance(where, str):
        return f"no socket at {where}: {_HINT}"
    if code == errno.EACCES and isinstance(where, str):
        # The daemon makes its socket for its own user and group only (mode 0660).
        return f"permission denied on {where}: run as the daemon's user or a member of its group"
    reason = exc.os_error.strerror or _describe(exc)
    return f"cannot connect: {reason}: {_HINT}"


def _describe(exc: aiohttp.ClientError) -> str:
    return str(exc) or type(exc).__name__
