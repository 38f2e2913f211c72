"""Power leases: the scheduler reserves green power on a rack or a tier, for a while.

A request (schemas/lease.v1.json) names a client-chosen id, exactly one of a rack or a tier,
the power p_w and a duration_s of 1 to 3600 s. It is granted out of the green headroom
(`edgectl.uplink.availability.lease_headroom`) less the other live leases, and never more
than the rack's p_max_w (a tier: the sum of its racks'), less what other leases hold there;
a grant may be less than asked, a request is never answered with an exception.

    idempotent  the same id with the same target and p_w while its lease lives is a renewal:
                granted afresh against the headroom with its own power counted as free (the
                same grant while the headroom holds, less if it shrank, up to p_w if it
                grew) and its expiry moved to now + duration_s. The same id with another
                target or power is refused. After the expiry an id is free again.
    floors      dispatch serves a lease by raising each leased rack's floor to its leased
                power for the cycle (p_min_w' = max(p_min_w, leased_w), at most p_max_w). A
                tier lease is spread over the tier's racks in proportion to their p_max_w;
                its grant is bounded so that no rack's share exceeds what is left under its
                p_max_w after the other leases.
    states      only NORMAL and DEGRADED grant or renew; in STARTING, SAFE and STOPPING every
                request is refused and the live leases run out at their expiry.
    sequence    every answer carries the next number of one counter (`seq`), from 1 when
                the book is made.
    nothing persists: leases last minutes at most, and after a restart the scheduler renews
    them (a renewal of an unknown id is a new lease), which is the recovery it needs anyway
    when the site restarted with another picture.

Times: now_s is the daemon's monotonic clock, the answers' expires_at the wall clock.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from edgectl.config.site import Site
from edgectl.kernels.dispatch import TIERS
from edgectl.uplink.availability import ACCEPTING_STATES, MIN_POWER_W, Headroom, iso_utc

LEASE_SCHEMA = "edgectl/lease/1"
LEASES_SCHEMA = "edgectl/leases/1"
ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
KEYS = ("id", "rack", "tier", "p_w", "duration_s")
DURATION_MIN_S = 1.0
DURATION_MAX_S = 3600.0


class Clock(Protocol):
    """The daemon's clocks (edgectl.app.clock.Clock has both)."""

    def monotonic(self) -> float: ...

    def wall(self) -> float: ...


@dataclass(frozen=True)
class Terms:
    """What a lease is for; the same id must always come with the same terms."""

    rack: str | None
    tier: int | None
    p_w: float

    def describe(self) -> str:
        where = f"rack {self.rack}" if self.rack is not None else f"tier {self.tier}"
        return f"{where}, {self.p_w:,.0f} W"


@dataclass
class Lease:
    """One live lease."""

    id: str
    terms: Terms
    duration_s: float
    granted_w: float
    expires_s: float  # on the monotonic clock
    racks: dict[str, float]  # rack id -> the floor this lease gives it, W
    seq: int = 0  # of the last answer about it
    renewals: int = 0


@dataclass(frozen=True)
class _Request:
    id: str
    terms: Terms
    duration_s: float


@dataclass
class _Refusal:
    reason: str
    id: str | None = None
    terms: Terms | None = None
    duration_s: float | None = None


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:40] + "...")
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return repr(value)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    x = float(value)
    return x if math.isfinite(x) else None


def parse_request(body: object) -> _Request | _Refusal:
    """The request in a body, or a refusal naming every field that is wrong."""
    if not isinstance(body, Mapping):
        return _Refusal(f"body: expected a JSON object, got {_kind(body)}")
    problems: list[str] = []
    unknown = sorted(str(k) for k in body if k not in KEYS)
    if unknown:
        problems.append(f"{', '.join(unknown)}: unknown key; expected {', '.join(KEYS)}")
    lease_id = body.get("id")
    if not isinstance(lease_id, str) or ID_RE.fullmatch(lease_id) is None:
        got = "missing" if "id" not in body else f"got {_kind(lease_id)}"
        problems.append(f"id: expected 1 to 64 characters of A-Z a-z 0-9 . _ -, {got}")
        lease_id = None
    rack, tier = body.get("rack"), body.get("tier")
    if rack is not None and not isinstance(rack, str):
        problems.append(f"rack: expected a rack id or null, got {_kind(rack)}")
    if isinstance(tier, float) and tier.is_integer():
        tier = int(tier)  # JSON does not tell 1 from 1.0, and neither does the schema
    if tier is not None and (
        isinstance(tier, bool) or not isinstance(tier, int) or not 0 <= tier < TIERS
    ):
        problems.append(f"tier: expected an integer 0..{TIERS - 1} or null, got {_kind(tier)}")
    if (rack is None) == (tier is None):
        problems.append("rack, tier: expected exactly one of them")
    p_w = _number(body.get("p_w"))
    if p_w is None or p_w <= 0:
        got = "missing" if "p_w" not in body else f"got {_kind(body.get('p_w'))}"
        problems.append(f"p_w: expected a power in W > 0, {got}")
    duration = _number(body.get("duration_s"))
    if duration is None or not DURATION_MIN_S <= duration <= DURATION_MAX_S:
        raw = body.get("duration_s")
        got = "missing" if "duration_s" not in body else f"got {_kind(raw)}"
        problems.append(f"duration_s: expected {DURATION_MIN_S:g} to {DURATION_MAX_S:g} s, {got}")
    if problems:
        return _Refusal("; ".join(problems), id=lease_id)
    assert isinstance(lease_id, str) and p_w is not None and duration is not None
    terms = Terms(
        rack if isinstance(rack, str) else None, tier if isinstance(tier, int) else None, p_w
    )
    return _Request(lease_id, terms, duration)


class LeaseBook:
    """The live leases of one site, their floors for dispatch, and the answers to requests."""

    def __init__(self, site: Site, clock: Clock) -> None:
        self.site = site
        self.clock = clock
        self._racks = {r.id: r for r in site.racks}
        self._leases: dict[str, Lease] = {}
        self._ended: list[Lease] = []  # past expiry, not yet returned by expire()
        self._seq = 0

    def retarget(self, site: Site) -> list[str]:
        """Take a reloaded site: the leases keep running, but one that holds power on a rack
        the site no longer has ends now (reported by the next expire()); their ids."""
        self.site = site
        self._racks = {r.id: r for r in site.racks}
        gone = [x for x in self._leases.values() if not set(x.racks) <= set(self._racks)]
        for lease in gone:
            del self._leases[lease.id]
            self._ended.append(lease)
        return [x.id for x in gone]

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _sweep(self, now_s: float) -> None:
        for lease in [x for x in self._leases.values() if x.expires_s <= now_s]:
            del self._leases[lease.id]
            self._ended.append(lease)

    def request(self, body: object, now_s: float, headroom: Headroom) -> dict[str, Any]:
        """Grant, renew or refuse the lease a request body asks for; the answer."""
        self._sweep(now_s)
        parsed = parse_request(body)
        if isinstance(parsed, _Refusal):
            return self._refused(parsed)
        if headroom.state not in ACCEPTING_STATES:
            reason = f"state {headroom.state.name}: no new leases"
            return self._refused(_Refusal(reason, parsed.id, parsed.terms, parsed.duration_s))
        live = self._leases.get(parsed.id)
        if live is not None and live.terms != parsed.terms:
            return self._refused(
                _Refusal(
                    f"id already used with other terms ({live.terms.describe()})",
                    parsed.id,
                    parsed.terms,
                    parsed.duration_s,
                )
            )
        others = [x for x in self._leases.values() if x.id != parsed.id]
        grant, racks, why = self._grant(parsed.terms, others, headroom)
        if grant < MIN_POWER_W:
            if live is not None:
                why += f"; lease {live.id} keeps {live.granted_w:,.0f} W until its expiry"
            return self._refused(_Refusal(why, parsed.id, parsed.terms, parsed.duration_s))
        lease = Lease(
            id=parsed.id,
            terms=parsed.terms,
            duration_s=parsed.duration_s,
            granted_w=grant,
            expires_s=now_s + parsed.duration_s,
            racks=racks,
            renewals=0 if live is None else live.renewals + 1,
        )
        self._leases[lease.id] = lease
        return self._answer(lease, "granted", now_s, why, renewed=live is not None)

    def request_json(self, raw: bytes | str, now_s: float, headroom: Headroom) -> dict[str, Any]:
        """request() of a body as received (POST /v1/leases, <prefix>/leases/request)."""
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return self._refused(_Refusal(f"body: not valid JSON ({exc})"))
        return self.request(body, now_s, headroom)

    def _grant(
        self, terms: Terms, others: list[Lease], headroom: Headroom
    ) -> tuple[float, dict[str, float], str]:
        """How much to grant, spread over which racks, and why it is less than asked."""
        held: dict[str, float] = {}
        for other in others:
            for rid, w in other.racks.items():
                held[rid] = held.get(rid, 0.0) + w
        if terms.rack is not None:
            rack = self._racks.get(terms.rack)
            if rack is None:
                return 0.0, {}, f"unknown rack {terms.rack}"
            if rack.device is None:
                return 0.0, {}, f"rack {rack.id}: no device, its cap cannot be set"
            members = [rack]
            where = f"rack {rack.id}"
        else:
            members = [r for r in self.site.racks if r.tier == terms.tier and r.device is not None]
            if not members:
                return 0.0, {}, f"tier {terms.tier}: no racks whose cap can be set"
            where = f"tier {terms.tier}"
        total = sum(r.p_max_w for r in members)
        # The most whose proportional spread fits under every member's p_max_w.
        limit = min(max(0.0, r.p_max_w - held.get(r.id, 0.0)) * total / r.p_max_w for r in members)
        free = headroom.green_w - sum(x.granted_w for x in others)
        if limit < MIN_POWER_W:
            leased = sum(held.get(r.id, 0.0) for r in members)
            return 0.0, {}, f"{where}: no power left under p_max_w ({leased:,.0f} W leased)"
        if free < MIN_POWER_W:
            return 0.0, {}, f"no headroom: {max(0.0, free):,.0f} W available"
        grant = min(terms.p_w, limit, free)
        why = ""
        if grant < terms.p_w:
            if grant == free:
                why = f"less than asked: {free:,.0f} W of green headroom free"
            else:
                why = f"less than asked: {where} can take {limit:,.0f} W more"
        racks = {r.id: grant * r.p_max_w / total for r in members}
        return grant, racks, why

    def _refused(self, refusal: _Refusal) -> dict[str, Any]:
        terms = refusal.terms
        return {
            "schema": LEASE_SCHEMA,
            "seq": self._next_seq(),
            "id": refusal.id,
            "state": "refused",
            "rack": terms.rack if terms else None,
            "tier": terms.tier if terms else None,
            "p_w": terms.p_w if terms else None,
            "duration_s": refusal.duration_s,
            "granted_w": 0.0,
            "racks": {},
            "renewed": False,
            "expires_at": None,
            "expires_in_s": 0.0,
            "reason": refusal.reason,
        }

    def _answer(
        self, lease: Lease, state: str, now_s: float, reason: str = "", *, renewed: bool = False
    ) -> dict[str, Any]:
        lease.seq = self._next_seq()
        return self._document(lease, state, now_s, reason, renewed=renewed)

    def _document(
        self, lease: Lease, state: str, now_s: float, reason: str, *, renewed: bool
    ) -> dict[str, Any]:
        offset = self.clock.wall() - self.clock.monotonic()
        return {
            "schema": LEASE_SCHEMA,
            "seq": lease.seq,
            "id": lease.id,
            "state": state,
            "rack": lease.terms.rack,
            "tier": lease.terms.tier,
            "p_w": lease.terms.p_w,
            "duration_s": lease.duration_s,
            "granted_w": lease.granted_w if state == "granted" else 0.0,
            "racks": dict(lease.racks) if state == "granted" else {},
            "renewed": renewed,
            "expires_at": iso_utc(lease.expires_s + offset),
            "expires_in_s": max(0.0, lease.expires_s - now_s),
            "reason": reason,
        }

    def expire(self, now_s: float) -> list[dict[str, Any]]:
        """Drop the leases past their expiry; an "expired" answer for each (call every cycle)."""
        self._sweep(now_s)
        ended, self._ended = self._ended, []
        return [self._answer(x, "expired", now_s, "not renewed before its expiry") for x in ended]

    def floors(self, now_s: float) -> dict[str, float]:
        """The leased power per rack id for dispatch at now_s (at most the rack's p_max_w)."""
        out: dict[str, float] = {}
        for lease in self._leases.values():
            if lease.expires_s <= now_s:
                continue
            for rid, w in lease.racks.items():
                out[rid] = out.get(rid, 0.0) + w
        return {rid: min(w, self._racks[rid].p_max_w) for rid, w in out.items()}

    def leased_w(self, now_s: float) -> float:
        """The power of the live leases at now_s, W."""
        return sum(x.granted_w for x in self._leases.values() if x.expires_s > now_s)

    def list(self, now_s: float | None = None) -> dict[str, Any]:
        """The live leases, for GET /v1/leases."""
        now = self.clock.monotonic() if now_s is None else now_s
        live = [x for x in self._leases.values() if x.expires_s > now]
        return {
            "schema": LEASES_SCHEMA,
            "site": self.site.site.id,
            "seq": self._next_seq(),
            "timestamp": iso_utc(self.clock.wall() + now - self.clock.monotonic()),
            "leased_w": sum(x.granted_w for x in live),
            "floors_w": self.floors(now),
            "leases": [self._document(x, "granted", now, "", renewed=x.renewals > 0) for x in live],
        }
