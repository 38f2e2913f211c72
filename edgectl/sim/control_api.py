"""The simulator's control API: a small HTTP service on 127.0.0.1 to watch and disturb it.

    GET    /v1/sim               the site now: simulated time and speed, bus voltages,
                                 sources, racks, and every device with its served values,
                                 setpoints in force and faults
    GET    /v1/faults            every device's faults
    POST   /v1/faults/{device}   set the device's faults: a JSON object of DeviceFaults
                                 fields (offline, timeout, garbage, not_implemented, stuck:
                                 booleans; latency_s: seconds; points: point names, [] for
                                 all) and an optional duration_s after which they clear;
                                 the body replaces the device's faults (absent = off)
    DELETE /v1/faults/{device}   clear them
    POST   /v1/events            an event now, as in scenario files without `at`:
                                 {"kind": "cloud", "depth": 0.7, "ramp_s": 5, ...}

Answers are JSON. A request the simulator cannot take gets a 4xx status and a body of
one line, {"error": "<what was wrong, naming the key>"}: 400 for a bad body, 404 for an
unknown device or path, 405 for a wrong method. Nothing here is authenticated: it
listens on loopback only and is a test bench's, never a site's.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from edgectl.errors import InputError
from edgectl.sim._http import serve
from edgectl.sim.scenario import faults_to_dict, parse_event, parse_faults
from edgectl.sim.site import SiteSimulator

__all__ = ["ControlApi"]

log = logging.getLogger(__name__)

_MAX_BODY_BYTES = 64 * 1024


class ControlApi:
    """The HTTP control API of one SiteSimulator."""

    def __init__(self, sim: SiteSimulator, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sim = sim
        self.host = host
        self._port = port
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        if self._runner is None:
            raise RuntimeError("control API not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> int:
        """Listen (port 0: any free port); answers the bound port."""
        if self._runner is not None:
            raise RuntimeError("control API already started")
        app = web.Application(middlewares=[_json_errors], client_max_size=_MAX_BODY_BYTES)
        app.router.add_get("/v1/sim", self._get_sim)
        app.router.add_get("/v1/faults", self._get_faults)
        app.router.add_post("/v1/faults/{device}", self._post_faults)
        app.router.add_delete("/v1/faults/{device}", self._delete_faults)
        app.router.add_post("/v1/events", self._post_event)
        self._runner, self._port = await serve(app, self.host, self._port)
        return self._port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ControlApi:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def _get_sim(self, request: web.Request) -> web.Response:
        return _json(self.sim.snapshot())

    async def _get_faults(self, request: web.Request) -> web.Response:
        return _json({d: faults_to_dict(link.state.faults) for d, link in self.sim.links.items()})

    async def _post_faults(self, request: web.Request) -> web.Response:
        device = self._device(request)
        body = await _body(request)
        points = frozenset(self.sim.links[device].state.device_map.points)
        try:
            faults, duration_s = parse_faults(body, points, source="body")
        except InputError as exc:
            raise _bad(exc) from None
        self.sim.set_faults(device, faults, duration_s)
        log.info("control API: %s faults %s", device, faults_to_dict(faults))
        return _json(
            {"device": device, "faults": faults_to_dict(self.sim.links[device].state.faults)}
        )

    async def _delete_faults(self, request: web.Request) -> web.Response:
        device = self._device(request)
        self.sim.clear_faults(device)
        log.info("control API: %s faults cleared", device)
        return _json(
            {"device": device, "faults": faults_to_dict(self.sim.links[device].state.faults)}
        )

    async def _post_event(self, request: web.Request) -> web.Response:
        body = await _body(request)
        try:
            event = parse_event(body, self.sim.targets(), source="body")
        except InputError as exc:
            raise _bad(exc) from None
        problem = self.sim.check(event)
        if problem is not None:
            raise web.HTTPBadRequest(text=f"body: {problem}")
        await self.sim.apply(event)
        return _json({"time_s": self.sim.t_s, "event": self.sim.events[-1]})

    def _device(self, request: web.Request) -> str:
        device = request.match_info["device"]
        if device not in self.sim.links:
            known = ", ".join(self.sim.links) or "none"
            raise web.HTTPNotFound(text=f"no device {device!r} in the site (known: {known})")
        return device


async def _body(request: web.Request) -> Any:
    raw = await request.read()  # larger than _MAX_BODY_BYTES: 413 from aiohttp
    if not raw.strip():
        raise web.HTTPBadRequest(text="body: expected a JSON object, got nothing")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise web.HTTPBadRequest(text=f"body: not valid JSON: {exc}") from None


def _bad(exc: InputError) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text="; ".join(str(p) for p in exc.problems))


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(_plain(data), allow_nan=False) + "\n",
        status=status,
        content_type="application/json",
    )


def _plain(value: Any) -> Any:
    """JSON-ready data: NaN and infinities (not JSON) as null, sets as sorted lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(_plain(v) for v in value)
    return value


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
    except Exception as exc:  # the simulator must outlive a request it could not serve
        log.exception("control API: %s %s failed", request.method, request.path)
        message = f"{type(exc).__name__}: {exc}"
        return _json({"error": " ".join(message.split())}, status=500)


def _default(exc: web.HTTPException, request: web.Request) -> str:
    if exc.status == 404:
        return f"no such resource: {request.path}"
    if exc.status == 405:
        return f"method {request.method} not allowed on {request.path}"
    return f"{exc.status} {exc.reason}"
