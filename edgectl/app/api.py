"""The daemon's local status API: what `edgectl status` and `edgectl dump-cycles` read.

    GET /v1/status        the status document: state, cycle timing, bus, sources, racks,
                          green share and the last decision
    GET /v1/cycles        the flight recorder: the last cycles' snapshots and decisions;
                          ?last=N for the last N only (N a whole number from 1)
    GET /v1/health        {"state": ..., "reason": ..., "ok": ...}: ok (HTTP 200) while the
                          cycle runs on a site picture it trusts, state NORMAL or DEGRADED;
                          not ok (HTTP 503) while STARTING, in SAFE, STOPPING, or when the
                          state is unknown, so that a probe needs only the status code

Answers are JSON; an error is {"error": "<one line>"} with its status: 400 for a bad
query, 403 for a Host header that is not loopback's, 404 for an unknown path, 405 for a
method other than GET, 500 when the provider of the documents failed (logged; the server
goes on serving). There is no authentication: the API listens on loopback TCP or on a
unix socket (mode 0660) only, and answers only requests addressed to loopback, so that a
web page open on the gateway cannot read it through a rebound DNS name.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import logging
import math
import re
import socket
import stat
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Handler

from edgectl.errors import UsageError
from edgectl.transport.local_api import format_listen, parse_listen

__all__ = ["HEALTHY_STATES", "StatusApi", "StatusProvider"]

log = logging.getLogger(__name__)

# States in which the cycle decides on inputs it trusts (DEGRADED: conservatively).
HEALTHY_STATES = frozenset({"NORMAL", "DEGRADED"})
_SOCKET_MODE = 0o660
_LAST = re.compile(r"[0-9]{1,9}")
_ROUTES = "/v1/status, /v1/cycles, /v1/health"
_UPLINK_ROUTES = "/v1/availability, /v1/leases, /v1/openapi.json, /metrics"
_SERVED = web.AppKey("served", str)
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StatusProvider(Protocol):
    """What the daemon hands the API: the documents it serves, built on request."""

    def status(self) -> dict[str, Any]:
        """The status document of GET /v1/status."""

    def cycles(self, last: int | None = None) -> dict[str, Any]:
        """The flight recorder document: every recorded cycle, or the `last` ones."""


class UplinkProvider(Protocol):
    """The scheduler's side of the API: availability, leases, metrics, the OpenAPI document."""

    def availability(self) -> dict[str, Any]:
        """GET /v1/availability: the latest availability report."""

    def leases_document(self) -> dict[str, Any]:
        """GET /v1/leases: the leases in force."""

    def request_lease(self, body: object) -> tuple[int, dict[str, Any]]:
        """POST /v1/leases: the HTTP status and the answer (granted or refused, with why)."""

    def exposition(self) -> bytes:
        """GET /metrics: the Prometheus text format."""

    def openapi(self) -> dict[str, Any]:
        """GET /v1/openapi.json."""


class StatusApi:
    """The status API of one daemon, at `listen` ("HOST:PORT" on loopback or "unix:/path").

    The provider is called on the event loop that serves the request, between cycles:
    its documents need no locking, and must be cheap to build.
    """

    def __init__(
        self, provider: StatusProvider, listen: str, *, uplink: UplinkProvider | None = None
    ) -> None:
        self.provider = provider
        self.uplink = uplink
        self.listen = listen
        self._runner: web.AppRunner | None = None
        self._bound: tuple[str, int] | str | None = None
        self._socket_file: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket

    @property
    def url(self) -> str:
        """Where the API is bound: "http://127.0.0.1:PORT" (the real port) or "unix:/path"."""
        if self._bound is None:
            raise RuntimeError("status API not started")
        if isinstance(self._bound, str):
            return format_listen(self._bound)
        return "http://" + format_listen(self._bound)

    async def start(self) -> None:
        """Bind and serve; UsageError naming the address when it cannot be listened on."""
        if self._runner is not None:
            raise RuntimeError("status API already started")
        try:
            where = parse_listen(self.listen)
        except ValueError as exc:
            raise UsageError(f"status API address {self.listen!r}: {exc}") from None
        sock = self._unix_socket(where) if isinstance(where, str) else self._tcp_socket(where)
        runner = web.AppRunner(
            self._app(), handle_signals=False, access_log=None, shutdown_timeout=1.0
        )
        try:
            await runner.setup()
            await web.SockSite(runner, sock).start()
        except BaseException:
            await runner.cleanup()
            sock.close()
            self._remove_socket_file(where)
            raise
        self._runner = runner
        if isinstance(where, str):
            self._bound = where
        else:
            self._bound = (where[0], int(sock.getsockname()[1]))
        log.info("status API listening on %s", self.url)

    async def stop(self) -> None:
        """Stop serving; a unix socket file this API made is removed."""
        if self._runner is None:
            return
        await self._runner.cleanup()
        self._runner = None
        if self._bound is not None:
            self._remove_socket_file(self._bound)
        self._bound = None

    async def __aenter__(self) -> StatusApi:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[_json_errors, _loopback_only], client_max_size=4096)
        app.router.add_get("/v1/status", self._get_status)
        app.router.add_get("/v1/cycles", self._get_cycles)
        app.router.add_get("/v1/health", self._get_health)
        app[_SERVED] = _ROUTES
        if self.uplink is not None:
            app[_SERVED] = f"{_ROUTES}, {_UPLINK_ROUTES}"
            uplink = self.uplink

            async def availability(_: web.Request) -> web.Response:
                return _json(uplink.availability())

            async def leases(_: web.Request) -> web.Response:
                return _json(uplink.leases_document())

            async def openapi(_: web.Request) -> web.Response:
                return _json(uplink.openapi())

            app.router.add_get("/v1/availability", availability)
            app.router.add_get("/v1/leases", leases)
            app.router.add_post("/v1/leases", self._post_lease)
            app.router.add_get("/v1/openapi.json", openapi)
            app.router.add_get("/metrics", self._get_metrics)
        return app

    async def _post_lease(self, request: web.Request) -> web.Response:
        assert self.uplink is not None
        try:
            body = json.loads(await request.text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise web.HTTPBadRequest(text=f"body: not JSON: {exc}") from None
        status, answer = self.uplink.request_lease(body)
        return _json(answer, status=status)

    async def _get_metrics(self, request: web.Request) -> web.Response:
        assert self.uplink is not None
        return web.Response(
            body=self.uplink.exposition(), headers={"Content-Type": METRICS_CONTENT_TYPE}
        )

    async def _get_status(self, request: web.Request) -> web.Response:
        return _json(self.provider.status())

    async def _get_cycles(self, request: web.Request) -> web.Response:
        text = request.query.get("last")
        last: int | None = None
        if text is not None:
            if not _LAST.fullmatch(text) or int(text) == 0:
                raise web.HTTPBadRequest(
                    text=f"last: expected a whole number of cycles from 1, got {text!r}"
                )
            last = int(text)
        return _json(self.provider.cycles(last))

    async def _get_health(self, request: web.Request) -> web.Response:
        document = self.provider.status()
        state = document.get("state")
        ok = state in HEALTHY_STATES
        body = {"state": state, "reason": document.get("state_reason"), "ok": ok}
        return _json(body, status=200 if ok else 503)

    def _tcp_socket(self, where: tuple[str, int]) -> socket.socket:
        family = socket.AF_INET6 if ":" in where[0] else socket.AF_INET
        try:
            return socket.create_server(where, family=family)
        except OSError as exc:
            raise self._cannot_listen(exc) from None

    def _unix_socket(self, path: str) -> socket.socket:
        self._clear_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            raise self._cannot_listen(exc) from None
        try:
            # Bound but not yet listening, nobody can connect: the mode holds from the start.
            Path(path).chmod(_SOCKET_MODE)
            info = Path(path).stat()
        except OSError as exc:
            sock.close()
            with contextlib.suppress(OSError):
                Path(path).unlink()
            raise self._cannot_listen(exc) from None
        self._socket_file = (info.st_dev, info.st_ino)
        return sock

    def _clear_stale_socket(self, path: str) -> None:
        """Remove a socket file nobody listens on (left by a daemon that is gone)."""
        try:
            info = Path(path).lstat()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._cannot_listen(exc) from None
        if not stat.S_ISSOCK(info.st_mode):
            raise UsageError(
                f"status API address {self.listen!r}: {path} exists and is not a socket; "
                "refusing to replace it"
            )
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.setblocking(False)  # a full backlog must not block: it means in use
            try:
                probe.connect(path)
            except ConnectionRefusedError:
                pass
            except FileNotFoundError:
                return
            except BlockingIOError:
                raise self._in_use() from None
            except OSError as exc:
                raise self._cannot_listen(exc) from None
            else:
                raise self._in_use()
        try:
            Path(path).unlink(missing_ok=True)
        except OSError as exc:
            raise self._cannot_listen(exc) from None
        log.info("status API: removed the stale socket %s", path)

    def _remove_socket_file(self, where: tuple[str, int] | str) -> None:
        if not isinstance(where, str) or self._socket_file is None:
            return
        # Only our own: another daemon may have taken the path over since.
        with contextlib.suppress(OSError):
            info = Path(where).lstat()
            if (info.st_dev, info.st_ino) == self._socket_file:
                Path(where).unlink()
        self._socket_file = None

    def _in_use(self) -> UsageError:
        return UsageError(
            f"status API address {self.listen!r}: already in use "
            "(is another edgectl run serving there?)"
        )

    def _cannot_listen(self, exc: OSError) -> UsageError:
        if exc.errno == errno.EADDRINUSE:
            return self._in_use()
        reason = exc.strerror or str(exc) or type(exc).__name__
        return UsageError(f"status API address {self.listen!r}: cannot listen: {reason}")


def _json(data: Any, status: int = 200) -> web.Response:
    try:
        text = json.dumps(data, allow_nan=False)
    except (TypeError, ValueError):
        # NaN, infinities or sets somewhere in the document: JSON has none of them.
        text = json.dumps(_plain(data), allow_nan=False)
    return web.Response(
        text=text + "\n",
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _plain(value: Any) -> Any:
    """JSON-ready data: NaN and infinities as null (unknown), sets as sorted lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(_plain(v) for v in value)
    return value


def _is_loopback_host(header: str) -> bool:
    """Whether a Host header ("localhost:8470", "[::1]:8470", "127.0.0.1") names loopback."""
    if header.startswith("["):
        name = header[1 : header.find("]")]
    else:
        name = header.rpartition(":")[0] if ":" in header else header
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@web.middleware
async def _loopback_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a request addressed to any other name than loopback's."""
    header = request.headers.get("Host")
    if header and not _is_loopback_host(header):
        raise web.HTTPForbidden(
            text=f"Host {header!r} refused: the status API answers requests to loopback only"
        )
    return await handler(request)


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every HTTP error as one line of JSON: {"error": "..."}."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        generic = (None, "", exc.reason, f"{exc.status}: {exc.reason}")
        message = _default(exc, request) if exc.text in generic else str(exc.text)
        return _json({"error": " ".join(message.split())}, status=exc.status)
    except Exception as exc:  # the daemon must outlive a document it could not build
        log.warning(
            "status API: %s %s failed: %s: %s",
            request.method,
            request.path,
            type(exc).__name__,
            exc,
            exc_info=True,
        )
        message = f"could not build the answer: {type(exc).__name__}: {exc}"
        return _json({"error": " ".join(message.split())}, status=500)


def _default(exc: web.HTTPException, request: web.Request) -> str:
    if exc.status == 404:
        served = request.app.get(_SERVED, _ROUTES)
        return f"no such resource: {request.path} (the API serves {served})"
    if exc.status == 405:
        allowed = "GET or POST" if request.path == "/v1/leases" else "GET only"
        return f"method {request.method} not allowed on {request.path} ({allowed})"
    return f"{exc.status} {exc.reason}"
