"""Power leases: grants and partial grants, every refusal, renewals, expiry, the floors
dispatch gets, the sequence numbers, and bad bodies refused by name, never raised."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from edgectl.config.site import Site
from edgectl.control.states import State
from edgectl.uplink.availability import Headroom
from edgectl.uplink.leases import LEASE_SCHEMA, LeaseBook

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "schemas" / "lease.v1.json").read_text("utf-8"))
WALL0 = 1_750_500_000.0
PLENTY = Headroom(State.NORMAL, 1_000_000.0)


def check(doc: Any, part: str) -> None:
    """doc is valid as the schema's `part` (request, answer or list) and as a lease document."""
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    sub = {"$ref": f"#/$defs/{part}", "$defs": SCHEMA["$defs"]}
    jsonschema.Draft202012Validator(sub).validate(json.loads(json.dumps(doc)))
    jsonschema.Draft202012Validator(SCHEMA).validate(json.loads(json.dumps(doc)))


def invalid(doc: Any, part: str) -> bool:
    sub = {"$ref": f"#/$defs/{part}", "$defs": SCHEMA["$defs"]}
    return not jsonschema.Draft202012Validator(sub).is_valid(doc)


class FakeClock:
    """Monotonic time set by the test; wall time a fixed offset from it."""

    def __init__(self) -> None:
        self.t_s = 100.0

    def monotonic(self) -> float:
        return self.t_s

    def wall(self) -> float:
        return WALL0 + self.t_s


def site() -> Site:
    racks = [
        ("a1", 0, 100_000.0, "a1"),
        ("b1", 1, 100_000.0, "b1"),
        ("b2", 1, 300_000.0, "b2"),
        ("c1", 2, 50_000.0, None),  # no device: a fixed load
    ]
    return Site.model_validate(
        {
            "site": {"id": "lease-site", "v_nominal_v": 800.0},
            "control": {"grid_import_max_w": 0.0},
            "bus": [{"id": "main"}],
            "source": [{"id": "pv", "kind": "pv", "bus": "main", "p_max_w": 1e6}],
            "rack": [
                {
                    "id": rid,
                    "bus": "main",
                    "p_min_w": 10_000.0,
                    "p_max_w": p_max,
                    "tier": tier,
                    "ramp_w_per_s": 10_000.0,
                    "device": device,
                }
                for rid, tier, p_max, device in racks
            ],
        }
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def book(clock: FakeClock) -> LeaseBook:
    return LeaseBook(site(), clock)


def ask(
    book: LeaseBook,
    now_s: float = 100.0,
    headroom: Headroom = PLENTY,
    **body: Any,
) -> dict[str, Any]:
    body.setdefault("id", "job-1")
    body.setdefault("p_w", 50_000.0)
    body.setdefault("duration_s", 60.0)
    if "tier" not in body:
        body.setdefault("rack", "a1")
    answer = book.request(body, now_s, headroom)
    check(answer, "answer")
    check({k: v for k, v in body.items() if v is not None}, "request")
    return answer


def test_grant_in_full(book: LeaseBook) -> None:
    a = ask(book)
    assert a["schema"] == LEASE_SCHEMA
    assert a["state"] == "granted" and a["granted_w"] == 50_000.0 and a["reason"] == ""
    assert a["racks"] == {"a1": 50_000.0} and not a["renewed"]
    assert a["expires_in_s"] == 60.0
    assert a["expires_at"] == "2025-06-21T10:02:40.000Z"  # WALL0 + 100 s + 60 s
    assert book.floors(100.0) == {"a1": 50_000.0}
    assert book.leased_w(100.0) == 50_000.0


def test_grant_less_than_asked(book: LeaseBook) -> None:
    small = Headroom(State.NORMAL, 30_000.0)
    a = ask(book, headroom=small)
    assert a["state"] == "granted" and a["granted_w"] == 30_000.0
    assert "headroom" in a["reason"]
    # Never more than the rack's p_max_w, whatever the headroom.
    b = ask(book, id="big", rack="b1", p_w=250_000.0)
    assert b["granted_w"] == 100_000.0 and "rack b1" in b["reason"]


def test_other_leases_take_their_share_of_the_headroom(book: LeaseBook) -> None:
    room = Headroom(State.NORMAL, 120_000.0)
    assert ask(book, headroom=room, id="x", rack="b2", p_w=100_000.0)["granted_w"] == 100_000.0
    second = ask(book, headroom=room, id="y", rack="b2", p_w=100_000.0)
    assert second["granted_w"] == pytest.approx(20_000.0)
    third = ask(book, headroom=room, id="z", rack="b2")
    assert third["state"] == "refused" and third["reason"] == "no headroom: 0 W available"
    # And of the rack: a1 is full once leased to its p_max_w.
    ask(book, id="f1", rack="a1", p_w=100_000.0)
    full = ask(book, id="f2", rack="a1")
    assert full["state"] == "refused" and "rack a1: no power left under p_max_w" in full["reason"]


@pytest.mark.parametrize(
    ("body", "headroom", "reason"),
    [
        ({"rack": "r99"}, PLENTY, "unknown rack r99"),
        ({"rack": "c1"}, PLENTY, "rack c1: no device"),
        ({"tier": 3, "rack": None}, PLENTY, "tier 3: no racks"),
        ({}, Headroom(State.SAFE, 1e6), "state SAFE: no new leases"),
        ({}, Headroom(State.STARTING, 1e6), "state STARTING: no new leases"),
        ({}, Headroom(State.STOPPING, 1e6), "state STOPPING: no new leases"),
        ({}, Headroom(State.NORMAL, 0.0), "no headroom: 0 W available"),
        ({}, Headroom(State.NORMAL, -5_000.0), "no headroom: 0 W available"),
    ],
)
def test_refusals(book: LeaseBook, body: dict[str, Any], headroom: Headroom, reason: str) -> None:
    a = ask(book, headroom=headroom, **body)
    assert a["state"] == "refused" and reason in a["reason"]
    assert a["granted_w"] == 0.0 and a["expires_at"] is None and a["expires_in_s"] == 0.0
    assert a["id"] == "job-1" and book.floors(100.0) == {}


def test_degraded_still_grants(book: LeaseBook) -> None:
    assert ask(book, headroom=Headroom(State.DEGRADED, 1e6))["state"] == "granted"


def test_a_tier_written_as_a_whole_float_is_that_tier(book: LeaseBook) -> None:
    # JSON does not tell 1 from 1.0, and neither does the schema's "integer".
    a = ask(book, tier=1.0, rack=None)
    assert a["state"] == "granted" and a["tier"] == 1 and isinstance(a["tier"], int)


def test_renewal_moves_the_expiry_and_keeps_the_grant(book: LeaseBook) -> None:
    first = ask(book, now_s=100.0)
    again = ask(book, now_s=130.0, duration_s=120.0)
    assert again["state"] == "granted" and again["renewed"]
    assert again["granted_w"] == first["granted_w"]
    assert again["expires_in_s"] == 120.0
    assert again["expires_at"] == "2025-06-21T10:04:10.000Z"  # WALL0 + 130 + 120
    assert book.floors(200.0) == {"a1": 50_000.0}  # alive past the first expiry (160)
    # The lease's own power counts as free on renewal: the same headroom renews in full...
    assert ask(book, now_s=140.0, headroom=Headroom(State.NORMAL, 50_000.0))["granted_w"] == 50e3
    # ... and a headroom that shrank grants less.
    shrunk = ask(book, now_s=150.0, headroom=Headroom(State.NORMAL, 20_000.0))
    assert shrunk["renewed"] and shrunk["granted_w"] == 20_000.0


def test_a_renewal_in_safe_is_refused_and_the_lease_runs_out(book: LeaseBook) -> None:
    ask(book, now_s=100.0)
    refused = ask(book, now_s=120.0, headroom=Headroom(State.SAFE, 1e6))
    assert refused["state"] == "refused" and refused["reason"] == "state SAFE: no new leases"
    assert book.floors(150.0) == {"a1": 50_000.0}
    assert book.floors(160.0) == {}


def test_same_id_other_terms_is_refused(book: LeaseBook) -> None:
    ask(book)
    for other in ({"p_w": 60_000.0}, {"rack": "b1"}, {"tier": 1, "rack": None}):
        a = ask(book, now_s=110.0, **other)
        assert a["state"] == "refused"
        assert a["reason"].startswith("id already used with other terms")
    assert book.floors(110.0) == {"a1": 50_000.0}


def test_expiry(book: LeaseBook, clock: FakeClock) -> None:
    ask(book, now_s=100.0)
    ask(book, now_s=100.0, id="job-2", rack="b1", duration_s=10.0)
    assert book.expire(105.0) == []
    (gone,) = book.expire(110.0)
    check(gone, "answer")
    assert gone["id"] == "job-2" and gone["state"] == "expired"
    assert gone["granted_w"] == 0.0 and gone["expires_in_s"] == 0.0
    assert book.floors(110.0) == {"a1": 50_000.0}
    # floors() never counts a lease past its expiry, even before expire() has run.
    assert book.floors(160.0) == {}
    # An id is free again once its lease expired: other terms make a new lease.
    fresh = ask(book, now_s=170.0, p_w=80_000.0)
    assert fresh["state"] == "granted" and not fresh["renewed"]
    (old,) = book.expire(170.0)
    assert old["id"] == "job-1" and old["p_w"] == 50_000.0


def test_floors_of_rack_and_tier_leases(book: LeaseBook) -> None:
    # Tier 1: b1 (100 kW) and b2 (300 kW) share in proportion to their p_max_w.
    tier = ask(book, id="t", tier=1, rack=None, p_w=200_000.0)
    assert tier["granted_w"] == 200_000.0
    assert tier["racks"] == {"b1": pytest.approx(50_000.0), "b2": pytest.approx(150_000.0)}
    ask(book, id="r", rack="b1", p_w=30_000.0)
    assert book.floors(100.0) == {"b1": pytest.approx(80_000.0), "b2": pytest.approx(150_000.0)}
    # A second tier lease fits the proportional spread under every rack's p_max_w: b1 has
    # 20 kW left, so the tier can take 20 kW x 400 / 100 = 80 kW more.
    more = ask(book, id="t2", tier=1, rack=None, p_w=300_000.0)
    assert more["granted_w"] == pytest.approx(80_000.0) and "tier 1" in more["reason"]
    floors = book.floors(100.0)
    assert floors["b1"] == pytest.approx(100_000.0) and floors["b2"] <= 300_000.0


def test_seq_is_monotonic_over_every_answer(book: LeaseBook) -> None:
    seqs = [
        ask(book)["seq"],
        book.request({"id": "bad id!"}, 100.0, PLENTY)["seq"],
        ask(book, headroom=Headroom(State.SAFE, 0.0))["seq"],
        ask(book, now_s=120.0)["seq"],
        book.list(120.0)["seq"],
    ]
    seqs += [x["seq"] for x in book.expire(1_000.0)]
    seqs.append(book.request(None, 1_000.0, PLENTY)["seq"])
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs[0] == 1


def test_list(book: LeaseBook, clock: FakeClock) -> None:
    ask(book, now_s=100.0)
    ask(book, now_s=100.0, id="t", tier=1, rack=None, p_w=40_000.0, duration_s=600.0)
    clock.t_s = 130.0
    doc = book.list()
    check(doc, "list")
    assert doc["site"] == "lease-site" and doc["leased_w"] == 90_000.0
    assert [x["id"] for x in doc["leases"]] == ["job-1", "t"]
    assert doc["leases"][0]["expires_in_s"] == 30.0
    assert doc["floors_w"] == book.floors(130.0)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (None, "body"),
        ([1, 2], "body"),
        ("lease", "body"),
        ({"rack": "a1", "p_w": 1.0, "duration_s": 60.0}, "id"),
        ({"id": "", "rack": "a1", "p_w": 1.0, "duration_s": 60.0}, "id"),
        ({"id": "x" * 65, "rack": "a1", "p_w": 1.0, "duration_s": 60.0}, "id"),
        ({"id": "a b", "rack": "a1", "p_w": 1.0, "duration_s": 60.0}, "id"),
        ({"id": 7, "rack": "a1", "p_w": 1.0, "duration_s": 60.0}, "id"),
        ({"id": "j", "p_w": 1.0, "duration_s": 60.0}, "rack, tier"),
        ({"id": "j", "rack": "a1", "tier": 0, "p_w": 1.0, "duration_s": 60.0}, "rack, tier"),
        ({"id": "j", "rack": 5, "p_w": 1.0, "duration_s": 60.0}, "rack"),
        ({"id": "j", "tier": 4, "p_w": 1.0, "duration_s": 60.0}, "tier"),
        ({"id": "j", "tier": True, "p_w": 1.0, "duration_s": 60.0}, "tier"),
        ({"id": "j", "tier": 1.5, "p_w": 1.0, "duration_s": 60.0}, "tier"),
        ({"id": "j", "rack": "a1", "duration_s": 60.0}, "p_w"),
        ({"id": "j", "rack": "a1", "p_w": 0, "duration_s": 60.0}, "p_w"),
        ({"id": "j", "rack": "a1", "p_w": -5.0, "duration_s": 60.0}, "p_w"),
        ({"id": "j", "rack": "a1", "p_w": "50", "duration_s": 60.0}, "p_w"),
        ({"id": "j", "rack": "a1", "p_w": True, "duration_s": 60.0}, "p_w"),
        ({"id": "j", "rack": "a1", "p_w": float("nan"), "duration_s": 60.0}, "p_w"),
        ({"id": "j", "rack": "a1", "p_w": 1.0}, "duration_s"),
        ({"id": "j", "rack": "a1", "p_w": 1.0, "duration_s": 0.5}, "duration_s"),
        ({"id": "j", "rack": "a1", "p_w": 1.0, "duration_s": 3601}, "duration_s"),
        ({"id": "j", "rack": "a1", "p_w": 1.0, "duration_s": 60.0, "prio": 1}, "prio"),
    ],
)
def test_bad_bodies_are_refused_naming_the_field(book: LeaseBook, body: Any, field: str) -> None:
    a = book.request(body, 100.0, PLENTY)
    check(a, "answer")
    assert a["state"] == "refused" and a["reason"].startswith(f"{field}:")
    assert book.floors(100.0) == {}
    if isinstance(body, dict) and field != "p_w":  # NaN is not JSON: skip it in the schema
        assert invalid(body, "request"), "the schema must refuse it too"


def test_a_body_with_several_problems_names_them_all(book: LeaseBook) -> None:
    a = book.request({"id": "", "p_w": -1, "duration_s": 0}, 100.0, PLENTY)
    for name in ("id:", "rack, tier:", "p_w:", "duration_s:"):
        assert name in a["reason"]
    assert a["id"] is None


def test_raw_bodies_as_received(book: LeaseBook) -> None:
    ok = book.request_json(
        b'{"id": "m1", "rack": "b2", "p_w": 5e4, "duration_s": 30}', 100.0, PLENTY
    )
    assert ok["state"] == "granted" and ok["granted_w"] == 50_000.0
    for raw in (b"{not json", b"\xff\xfe", ""):
        a = book.request_json(raw, 100.0, PLENTY)
        check(a, "answer")
        assert a["state"] == "refused" and a["reason"].startswith("body: not valid JSON")
