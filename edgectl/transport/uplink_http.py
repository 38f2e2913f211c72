"""The compute scheduler over HTTP(S): each upstream record POSTed as JSON, one at a time.

Every request carries `Authorization: Bearer <token>` (the token read from its file at
construction and again whenever the scheduler answers 401, so a rotated token is picked up
without a restart), `X-Edgectl-Seq` (the record's sequence number: the scheduler drops a
duplicate by it) and `X-Edgectl-Kind`. The token never appears in a log line or an error.
Plain http is allowed only to a loopback host: anywhere else the token would travel in
clear. TLS is always verified, against `ca_file` when given, else the system's CAs.
Redirects are not followed: they could carry the token to another host.

What an answer means: 2xx, and 409 ("already have it"), is delivered; 401, 408, 429 and
5xx are worth retrying (`retryable`); any other status is a problem with that record or
the configuration (`retryable` False): the caller keeps retrying it but reports it loudly.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import ssl
import time
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from edgectl.errors import (
    DeviceTimeout,
    DeviceUnreachable,
    InputError,
    Problem,
    ProtocolError,
)
from edgectl.transport.certs import ca_context, read_secret

__all__ = ["DEFAULT_TIMEOUT_S", "HttpSink", "Record", "UplinkStatusError", "is_loopback"]

DEFAULT_TIMEOUT_S = 10.0
# Statuses after which the same request may well succeed later.
_RETRYABLE_STATUSES = frozenset({401, 408, 429})
_EXCERPT_CHARS = 200


class Record(Protocol):
    """What an uplink sends: a sequence number, a kind and a JSON body."""

    @property
    def seq(self) -> int: ...

    @property
    def kind(self) -> Literal["report", "audit"]: ...

    @property
    def body(self) -> bytes: ...


class UplinkStatusError(ProtocolError):
    """The scheduler answered with a status that is not a delivery."""

    def __init__(
        self, device: str, status: int, detail: str, *, retry_after_s: float | None = None
    ) -> None:
        self.status = status
        self.detail = detail
        self.retry_after_s = retry_after_s
        super().__init__(device, f"HTTP {status}: {detail}")
        self.retryable = status in _RETRYABLE_STATUSES or status >= 500


class HttpSink:
    """POSTs records to one scheduler URL."""

    def __init__(
        self,
        url: str,
        *,
        token_file: Path | None = None,
        ca_file: Path | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.url = _check_url(url)
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.timeout_s = timeout_s
        self.token_file = token_file
        self.ca_file = ca_file
        self._ssl = _ssl_context(self.url, ca_file)
        self._token = _read_token(token_file) if token_file is not None else None
        self._session: aiohttp.ClientSession | None = None

    async def send(self, record: Record) -> None:
        """POST one record; returns once the scheduler accepted it (2xx or 409)."""
        status, raw, headers = await self._post(record)
        if status == 401 and self.token_file is not None:
            fresh = _read_token(self.token_file)
            if fresh != self._token:
                # A rotated token: try it at once rather than after a back-off.
                self._token = fresh
                status, raw, headers = await self._post(record)
        if 200 <= status < 300 or status == 409:
            return
        if status == 401:
            detail = (
                f"the token in {self.token_file} was refused (re-read, unchanged)"
                if self.token_file is not None
                else "the scheduler wants a token: give token_file"
            )
        elif 300 <= status < 400:
            detail = f"redirect to {headers.get('Location', '?')!r} not followed"
        else:
            detail = _excerpt(raw) or "no body"
        raise UplinkStatusError(
            self.url, status, detail, retry_after_s=_retry_after(headers.get("Retry-After"))
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=2, ssl=self._ssl),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            )
        return self._session

    async def _post(self, record: Record) -> tuple[int, bytes, dict[str, str]]:
        headers = {
            "Content-Type": "application/json",
            "X-Edgectl-Seq": str(record.seq),
            "X-Edgectl-Kind": record.kind,
        }
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        session = self._open()
        try:
            async with (
                asyncio.timeout(self.timeout_s),
                session.post(
                    self.url, data=record.body, headers=headers, allow_redirects=False
                ) as resp,
            ):
                # Read to the end so that the connection is kept for the next record.
                raw = await resp.read()
                return resp.status, raw, dict(resp.headers)
        # TimeoutError first: aiohttp's own timeouts are also connection errors.
        except TimeoutError:
            raise DeviceTimeout(self.url, f"no answer within {self.timeout_s:g} s") from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise _untrusted(self.url, exc, self.ca_file) from None
        except aiohttp.ClientConnectionError as exc:
            raise DeviceUnreachable(self.url, _describe(exc)) from None
        except aiohttp.ClientError as exc:
            raise DeviceUnreachable(self.url, _describe(exc)) from None


def is_loopback(host: str) -> bool:
    """True for "localhost" and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    problem: str | None = None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problem = "expected an http:// or https:// URL with a host"
    elif parts.username is not None or parts.password is not None:
        # Never echo such a URL: its password would land in the logs.
        safe = urlunsplit((parts.scheme, parts.hostname, parts.path, "", ""))
        raise InputError([Problem(safe, "", "credentials in the URL; give token_file instead")])
    elif parts.scheme == "http" and not is_loopback(parts.hostname):
        problem = "plain http to a host that is not loopback: the token would travel in clear"
    else:
        try:
            parts.port  # noqa: B018  (raises on a malformed port)
        except ValueError:
            problem = "invalid port"
    if problem is not None:
        raise InputError([Problem(url, "", problem)])
    return url


def _ssl_context(url: str, ca_file: Path | None) -> ssl.SSLContext | bool:
    if not url.startswith("https://"):
        if ca_file is not None:
            raise InputError([Problem(str(ca_file), "", f"a CA file is only for https, not {url}")])
        return True
    return ca_context(ca_file)


def _read_token(path: Path) -> str:
    token = read_secret(path, "token").strip()
    if not token:
        raise InputError([Problem(str(path), "", "the token file is empty")])
    if any(c.isspace() or not c.isprintable() for c in token):
        raise InputError([Problem(str(path), "", "the token must be one line without spaces")])
    return token


def _untrusted(
    url: str, exc: aiohttp.ClientConnectorCertificateError, ca_file: Path | None
) -> DeviceUnreachable:
    reason = getattr(exc.certificate_error, "verify_message", None) or str(exc.certificate_error)
    trust = f"the CA in {ca_file}" if ca_file is not None else "the system's CAs"
    error = DeviceUnreachable(url, f"TLS certificate not trusted by {trust}: {reason}")
    # A certificate does not become trusted by waiting: this needs an operator.
    error.retryable = False
    return error


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _excerpt(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    text = " ".join(text.split())
    return text[:_EXCERPT_CHARS] + ("..." if len(text) > _EXCERPT_CHARS else "")


def _describe(exc: aiohttp.ClientError) -> str:
    # aiohttp's messages name host, port and OS error, never headers or credentials.
    return str(exc) or type(exc).__name__
