"""Green-power accounting: energy by kind and rack, window, grid budget, persisted form."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from edgectl.control.accounting import BUCKET_S, KINDS, SLACK_SPREAD_S, Accounts

HOUR_S = 3600.0
WINDOW_S = 86_400.0
WALL0 = 1_700_000_000.0  # a wall-clock instant, s


def add(
    accounts: Accounts,
    *,
    dt_s: float = HOUR_S,
    wall_s: float = WALL0,
    window_s: float = WINDOW_S,
    sources: dict[str, float] | None = None,
    racks: dict[str, float] | None = None,
    grid_w: float = 0.0,
    losses_w: float = 0.0,
) -> None:
    accounts.add(
        dt_s=dt_s,
        wall_s=wall_s,
        window_s=window_s,
        source_kind_p_w=sources or {},
        rack_p_w=racks or {},
        grid_w=grid_w,
        losses_w=losses_w,
    )


def test_energy_is_integrated_by_kind_with_battery_directions_apart() -> None:
    a = Accounts()
    add(a, sources={"pv": 1_000.0, "wind": 500.0, "bess": 200.0}, grid_w=100.0, losses_w=10.0)
    add(a, dt_s=1800.0, sources={"pv": -5.0, "bess": -400.0}, grid_w=-50.0)
    assert a.energy_wh == {
        "pv": 1_000.0,  # a source's own consumption at night is not counted
        "wind": 500.0,
        "bess_discharge": 200.0,
        "bess_charge": 200.0,
        "grid": 100.0,  # the tie does not export: negative import counts nothing
        "racks": 0.0,
        "losses": 10.0,
    }


def test_energy_is_integrated_by_rack_and_summed_for_the_racks() -> None:
    a = Accounts()
    add(a, racks={"r1": 100_000.0, "r2": 50_000.0})
    add(a, dt_s=36.0, racks={"r1": 100_000.0, "r2": -1.0})
    assert a.rack_wh == pytest.approx({"r1": 101_000.0, "r2": 50_000.0})
    assert a.energy_wh["racks"] == pytest.approx(151_000.0)


@pytest.mark.parametrize("dt_s", [0.0, -1.0, math.nan, math.inf])
def test_no_energy_is_counted_for_a_non_positive_or_non_finite_interval(dt_s: float) -> None:
    a = Accounts()
    add(a, dt_s=dt_s, sources={"pv": 1_000.0}, racks={"r1": 1_000.0}, grid_w=1_000.0)
    assert a.energy_wh == dict.fromkeys(KINDS, 0.0)
    assert a.rack_wh == {} and a.buckets == {}


def test_the_window_counts_racks_and_grid_per_minute_bucket() -> None:
    a = Accounts()
    add(a, dt_s=60.0, wall_s=WALL0, racks={"r1": 60_000.0}, grid_w=6_000.0)
    add(a, dt_s=60.0, wall_s=WALL0 + BUCKET_S, racks={"r1": 60_000.0}, grid_w=0.0)
    assert len(a.buckets) == 2
    assert a.window(WALL0 + BUCKET_S, WINDOW_S) == pytest.approx((2_000.0, 100.0))


def test_the_rolling_window_drops_old_buckets() -> None:
    window_s = 3_600.0
    a = Accounts()
    add(a, dt_s=60.0, wall_s=WALL0, window_s=window_s, racks={"r1": 60_000.0}, grid_w=60_000.0)
    # Still inside the window an hour minus a minute later.
    assert a.window(WALL0 + window_s - BUCKET_S, window_s) == pytest.approx((1_000.0, 1_000.0))
    # Out of the window two hours later, even before the next add drops it.
    assert a.window(WALL0 + 2 * window_s, window_s) == (0.0, 0.0)
    later = WALL0 + 2 * window_s
    add(a, dt_s=60.0, wall_s=later, window_s=window_s, racks={"r1": 60_000.0})
    assert list(a.buckets) == [int(later // BUCKET_S)]
    assert a.energy_wh["racks"] == pytest.approx(2_000.0)  # the counters keep everything


def test_green_share_is_one_minus_grid_over_racks() -> None:
    a = Accounts()
    assert a.green_share(WALL0, WINDOW_S) is None  # the racks drew nothing yet
    add(a, racks={"r1": 1_000.0}, grid_w=250.0)
    assert a.green_share(WALL0, WINDOW_S) == pytest.approx(0.75)
    add(a, racks={"r1": 0.0}, grid_w=5_000.0)
    assert a.green_share(WALL0, WINDOW_S) == 0.0  # never below 0


def test_grid_budget_with_an_empty_window_is_k_times_green() -> None:
    a = Accounts()
    # g = 0.8: k = 0.25.
    assert a.grid_budget_w(WALL0, WINDOW_S, 0.8, 400_000.0) == pytest.approx(100_000.0)
    assert a.grid_budget_w(WALL0, WINDOW_S, 0.5, 400_000.0) == pytest.approx(400_000.0)
    assert a.grid_budget_w(WALL0, WINDOW_S, 0.8, 0.0) == 0.0


def test_grid_budget_grows_with_the_window_slack() -> None:
    a = Accounts()
    add(a, racks={"r1": 10_000.0}, grid_w=0.0)  # 10 kWh of racks, all green
    slack_w = 0.2 * 10_000.0 * HOUR_S / SLACK_SPREAD_S
    budget = a.grid_budget_w(WALL0, WINDOW_S, 0.8, 400_000.0)
    assert budget == pytest.approx(100_000.0 + slack_w)


def test_grid_budget_shrinks_down_to_zero_when_the_window_is_behind() -> None:
    a = Accounts()
    add(a, racks={"r1": 10_000.0}, grid_w=5_000.0)  # 50 % green against 80 %
    owed_w = (5_000.0 - 0.2 * 10_000.0) * HOUR_S / SLACK_SPREAD_S
    assert a.grid_budget_w(WALL0, WINDOW_S, 0.8, 40_000.0) == pytest.approx(10_000.0 - owed_w)
    assert a.grid_budget_w(WALL0, WINDOW_S, 0.8, 4_000.0) == 0.0


def test_grid_budget_limits_of_the_green_share() -> None:
    a = Accounts()
    add(a, racks={"r1": 10_000.0}, grid_w=5_000.0)
    assert a.grid_budget_w(WALL0, WINDOW_S, 0.0, 0.0) == math.inf  # no green share asked
    assert a.grid_budget_w(WALL0, WINDOW_S, 1.0, 1e9) == 0.0  # no import at all


def test_as_dict_round_trips_through_json() -> None:
    a = Accounts()
    add(a, sources={"pv": 1_000.0, "bess": -300.0}, racks={"r1": 900.0}, grid_w=50.0)
    add(a, dt_s=60.0, wall_s=WALL0 + 600.0, racks={"r2": 60_000.0}, grid_w=6_000.0)
    again = Accounts.from_dict(json.loads(json.dumps(a.as_dict())))
    assert again == a
    assert again.grid_budget_w(WALL0 + 600.0, WINDOW_S, 0.8, 1e5) == a.grid_budget_w(
        WALL0 + 600.0, WINDOW_S, 0.8, 1e5
    )


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"energy_wh": [1, 2], "rack_wh": "x", "buckets": 5},
        {"energy_wh": None, "rack_wh": None, "buckets": None},
    ],
    ids=["empty", "wrong-types", "nulls"],
)
def test_from_dict_starts_from_zero_for_missing_or_malformed_parts(data: dict[str, Any]) -> None:
    assert Accounts.from_dict(data) == Accounts()


def test_from_dict_keeps_the_good_parts_and_drops_the_bad_ones() -> None:
    data = {
        "energy_wh": {"pv": 5.0, "wind": -1.0, "grid": "12", "racks": math.nan, "nope": 3.0},
        "rack_wh": {"r1": 7.0, "r2": -7.0, "r3": math.inf, "r4": "7"},
        "buckets": {
            "100": [1.0, 2.0],
            "-3": [1.0, 0.5],
            "abc": [1.0, 1.0],
            "101": [1.0],
            "102": [1.0, math.nan],
            "103": "1,2",
        },
    }
    a = Accounts.from_dict(data)
    assert a.energy_wh == {**dict.fromkeys(KINDS, 0.0), "pv": 5.0}
    assert a.rack_wh == {"r1": 7.0}
    assert a.buckets == {100: [1.0, 2.0], -3: [1.0, 0.5]}


@pytest.mark.parametrize("key", ["--5", "²"])
def test_from_dict_drops_a_bucket_whose_key_is_not_an_integer(key: str) -> None:
    a = Accounts.from_dict({"buckets": {key: [1.0, 0.0], "7": [2.0, 1.0]}})
    assert a.buckets == {7: [2.0, 1.0]}


def test_from_dict_drops_a_bucket_with_negative_energy() -> None:
    a = Accounts.from_dict({"buckets": {str(int(WALL0 // BUCKET_S)): [0.0, -1e9]}})
    assert a.buckets == {}
    assert a.grid_budget_w(WALL0, WINDOW_S, 0.8, 0.0) == 0.0


def test_from_dict_drops_booleans() -> None:
    a = Accounts.from_dict(
        {"energy_wh": {"pv": True}, "rack_wh": {"r1": True}, "buckets": {"5": [True, False]}}
    )
    assert a == Accounts()
