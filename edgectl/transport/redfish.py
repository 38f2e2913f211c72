"""Redfish over HTTP(S): one client per BMC endpoint, JSON objects in and out.

The only module that imports aiohttp's client. Every failure leaves as an edgectl error:
no answer within the timeout is DeviceTimeout, a connection that cannot be opened or is
lost is DeviceUnreachable, an HTTP error status is RedfishStatusError (a ProtocolError)
carrying the status and the service's own message.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from edgectl.errors import (
    DeviceTimeout,
    DeviceUnreachable,
    InputError,
    Problem,
    ProtocolError,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "Json",
    "RedfishAuth",
    "RedfishClient",
    "RedfishStatusError",
]

log = logging.getLogger(__name__)

Json = dict[str, Any]

DEFAULT_TIMEOUT_S = 2.0
# A BMC serves only a few connections at once; more only queue up inside it.
_MAX_CONNECTIONS = 4
# Statuses after which the same request may well succeed later.
_RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class RedfishAuth:
    """How to authenticate to a BMC: HTTP basic auth or a session token (X-Auth-Token).

    Holds file paths only, never a secret, so it may be logged and shown. The files are
    read when a client opens its session, and again when the BMC answers 401.
    """

    username: str | None = None
    password_file: Path | None = None
    token_file: Path | None = None

    def __post_init__(self) -> None:
        basic = self.username is not None or self.password_file is not None
        if basic and (self.username is None or self.password_file is None):
            raise ValueError("basic auth needs both a username and a password_file")
        if basic and self.token_file is not None:
            raise ValueError("choose basic auth or a session token, not both")

    @classmethod
    def basic(cls, username: str, password_file: str | os.PathLike[str]) -> RedfishAuth:
        return cls(username=username, password_file=Path(password_file))

    @classmethod
    def session(cls, token_file: str | os.PathLike[str]) -> RedfishAuth:
        return cls(token_file=Path(token_file))

    def headers(self) -> dict[str, str]:
        """The authentication header, with the secret read from its file now."""
        if self.token_file is not None:
            return {"X-Auth-Token": _read_secret(self.token_file).strip()}
        if self.username is not None and self.password_file is not None:
            # Only the line ending is dropped: spaces may belong to a password.
            password = _read_secret(self.password_file).rstrip("\r\n")
            pair = f"{self.username}:{password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
        return {}


def _read_secret(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError([Problem(str(path), "", f"cannot read: {reason}")]) from None
    except UnicodeDecodeError:
        raise InputError([Problem(str(path), "", "not valid UTF-8")]) from None


class RedfishStatusError(ProtocolError):
    """The BMC answered with an HTTP error status."""

    def __init__(self, device: str, status: int, detail: str, where: str) -> None:
        self.status = status
        self.detail = detail  # the Redfish message, or the HTTP reason phrase
        super().__init__(device, f"{where}: HTTP {status}: {detail}")
        self.retryable = status in _RETRYABLE_STATUSES


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    reason: str
    body: Any  # the decoded JSON, None for an empty body
    etag: str | None
    raw: bytes


class RedfishClient:
    """One BMC endpoint ("http://host:port" or "https://host[:port]"): GET and PATCH of
    Redfish resources by absolute path ("/redfish/v1/...")."""

    def __init__(
        self,
        endpoint: str,
        *,
        device: str | None = None,
        auth: RedfishAuth | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.endpoint = _check_endpoint(endpoint)
        self.device = device or self.endpoint
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.timeout_s = timeout_s
        self._auth = auth or RedfishAuth()
        self._ssl = _ssl_context(self.endpoint, ca_file)
        self._session: aiohttp.ClientSession | None = None
        self._auth_headers: dict[str, str] = {}
        self._etags: dict[str, str] = {}

    async def __aenter__(self) -> RedfishClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def etag(self, path: str) -> str | None:
        """The ETag of `path` as last read, if the BMC gave one."""
        return self._etags.get(path)

    async def get(self, path: str) -> tuple[Json, str | None]:
        """The resource at `path` and its ETag (header, else `@odata.etag`; None if neither)."""
        reply = await self._exchange("GET", path, None, None)
        self._raise_for_status(reply, "GET", path)
        body = self._object(reply, "GET", path)
        etag = reply.etag
        if etag is None and isinstance(body.get("@odata.etag"), str):
            etag = body["@odata.etag"]
        if etag is None:
            self._etags.pop(path, None)
        else:
            self._etags[path] = etag
        return body, etag

    async def patch(self, path: str, body: Mapping[str, Any], etag: str | None = None) -> Json:
        """PATCH `body` onto `path` with If-Match set to `etag` or, without one, to the ETag
        last read for `path`. Answers the resource the BMC returns ({} for 204 No Content).

        On 412 Precondition Failed the resource is read again and the PATCH sent once more
        with the fresh ETag: the bodies edgectl sends are absolute setpoints, so writing the
        same body over a newer version loses nothing.
        """
        if_match = etag if etag is not None else self._etags.get(path)
        reply = await self._exchange("PATCH", path, body, if_match)
        if reply.status == 412 and if_match is not None:
            log.info("%s: PATCH %s: ETag no longer current, reading it again", self.device, path)
            _, if_match = await self.get(path)
            reply = await self._exchange("PATCH", path, body, if_match)
        self._raise_for_status(reply, "PATCH", path)
        # The resource changed: its new ETag is the one answered, or unknown.
        if reply.etag is None:
            self._etags.pop(path, None)
        else:
            self._etags[path] = reply.etag
        if reply.body is None:
            return {}
        return self._object(reply, "PATCH", path)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._etags.clear()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._auth_headers = self._auth.headers()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=_MAX_CONNECTIONS, ssl=self._ssl),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                headers={"Accept": "application/json", "OData-Version": "4.0"},
            )
        return self._session

    async def _exchange(
        self, method: str, path: str, body: Mapping[str, Any] | None, if_match: str | None
    ) -> _Reply:
        """One request; on 401 the credentials are read again and, if they changed (a
        rotated token), the request is sent once more."""
        reply = await self._send(method, path, body, if_match)
        if reply.status == 401 and (self._auth.token_file or self._auth.password_file):
            fresh = self._auth.headers()
            if fresh != self._auth_headers:
                self._auth_headers = fresh
                reply = await self._send(method, path, body, if_match)
        return reply

    async def _send(
        self, method: str, path: str, body: Mapping[str, Any] | None, if_match: str | None
    ) -> _Reply:
        if not path.startswith("/"):
            raise ValueError(f"path must be absolute, got {path!r}")
        session = self._open()
        headers = dict(self._auth_headers)
        if if_match is not None:
            headers["If-Match"] = if_match
        data: bytes | None = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body, allow_nan=False).encode()
        where = f"{method} {path}"
        try:
            async with (
                asyncio.timeout(self.timeout_s),
                session.request(method, self.endpoint + path, data=data, headers=headers) as resp,
            ):
                raw = await resp.read()
                status, reason, etag = resp.status, resp.reason or "", resp.headers.get("ETag")
        # TimeoutError first: aiohttp's own timeouts are also connection errors.
        except TimeoutError:
            raise DeviceTimeout(
                self.device, f"{where}: no answer within {self.timeout_s:g} s"
            ) from None
        except aiohttp.ClientConnectionError as exc:
            raise DeviceUnreachable(self.device, f"{where}: {_describe(exc)}") from None
        except aiohttp.ClientError as exc:
            raise ProtocolError(self.device, f"{where}: {_describe(exc)}") from None
        decoded: Any = None
        if raw.strip():
            try:
                decoded = json.loads(raw)
            except ValueError:
                decoded = _NOT_JSON
        return _Reply(status, reason, decoded, etag, raw)

    def _raise_for_status(self, reply: _Reply, method: str, path: str) -> None:
        if 200 <= reply.status < 300:
            return
        detail = _redfish_message(reply.body) or reply.reason or "no reason given"
        raise RedfishStatusError(self.device, reply.status, detail, f"{method} {path}")

    def _object(self, reply: _Reply, method: str, path: str) -> Json:
        if not isinstance(reply.body, dict):
            what = "not JSON" if reply.body is _NOT_JSON else "not a JSON object"
            excerpt = reply.raw[:60].decode("utf-8", "replace")
            raise ProtocolError(self.device, f"{method} {path}: answer is {what}: {excerpt!r}")
        return reply.body


_NOT_JSON = object()


def _redfish_message(body: Any) -> str:
    """`error.@Message.ExtendedInfo[0].Message`, else `error.message`, else ""."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return ""
    error = body["error"]
    info = error.get("@Message.ExtendedInfo")
    if isinstance(info, list) and info and isinstance(info[0], dict):
        message = info[0].get("Message")
        if isinstance(message, str) and message:
            return message
    message = error.get("message")
    return message if isinstance(message, str) else ""


def _describe(exc: aiohttp.ClientError) -> str:
    # aiohttp's messages name host, port and OS error, never headers or credentials.
    return str(exc) or type(exc).__name__


def _check_endpoint(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"endpoint must be http://host[:port] or https://..., got {endpoint!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("endpoint must not carry credentials; give them as RedfishAuth")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"endpoint must be scheme://host[:port] only, got {endpoint!r}")
    try:
        parts.port  # noqa: B018  (raises on a malformed port)
    except ValueError:
        raise ValueError(f"endpoint has an invalid port: {endpoint!r}") from None
    return f"{parts.scheme}://{parts.netloc}"


def _ssl_context(endpoint: str, ca_file: str | os.PathLike[str] | None) -> ssl.SSLContext | bool:
    """Certificate verification is never turned off: https trusts `ca_file` (a BMC's own CA
    or self-signed certificate) or, without it, the system's CAs."""
    if not endpoint.startswith("https://"):
        if ca_file is not None:
            raise ValueError("ca_file is only for https endpoints")
        return True
    if ca_file is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=os.fspath(ca_file))
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        problem = Problem(os.fspath(ca_file), "", f"cannot use as a CA file: {reason}")
        raise InputError([problem]) from None
