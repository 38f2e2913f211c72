"""The simulator's physical models on their own: no clock, no servers, fixed seeds."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgectl.sim.physics import (
    Battery,
    BatteryParams,
    PvParams,
    PvPlant,
    RackLoad,
    RackParams,
    WindParams,
    WindTurbine,
    clear_sky_ghi_w_m2,
    power_curve_w,
    solar_elevation_deg,
)

DT = 0.1
HOUR = 3600.0


def run(model: PvPlant | WindTurbine, seconds: float, limit_w: float | None = None) -> list[float]:
    return [model.step(DT, limit_w) for _ in range(round(seconds / DT))]


def pv_at(clock_s: float, latitude_deg: float = 37.5, day: int = 172) -> PvPlant:
    return PvPlant(PvParams(400_000.0, latitude_deg, day_of_year=day, start_of_day_s=clock_s))


def test_clear_sky_is_zero_at_night_and_peaks_at_solar_noon() -> None:
    minutes = range(0, 24 * 60, 5)
    ghi = [clear_sky_ghi_w_m2(37.5, 172, m * 60.0) for m in minutes]
    night = [g for m, g in zip(minutes, ghi, strict=True) if m < 4 * 60 or m >= 20 * 60]
    assert night and all(g == 0.0 for g in night)
    peak_minute = max(zip(ghi, minutes, strict=True))[1]
    assert abs(peak_minute - 12 * 60) <= 5
    assert 950.0 < max(ghi) < 1050.0  # Haurwitz, sun 76 degrees up
    # Morning and afternoon mirror each other about solar noon.
    assert clear_sky_ghi_w_m2(37.5, 172, 9 * HOUR) == pytest.approx(
        clear_sky_ghi_w_m2(37.5, 172, 15 * HOUR)
    )


@pytest.mark.parametrize(("latitude", "day"), [(37.5, 172), (37.5, 355), (60.0, 172), (0.0, 80)])
def test_noon_sun_stands_where_the_latitude_puts_it(latitude: float, day: int) -> None:
    declination = 23.44 * math.sin(2 * math.pi * (284 + day) / 365)
    expected = 90.0 - abs(latitude - declination)
    assert solar_elevation_deg(latitude, day, 12 * HOUR) == pytest.approx(expected, abs=1e-6)


def test_pv_output_follows_the_sun_and_the_latitude() -> None:
    pv = pv_at(0.0)
    hourly = []
    for _ in range(24):
        hourly.append(pv.p_w)
        for _ in range(60):
            pv.step(60.0)  # any step: the model has no clock of its own
    assert hourly[0] == hourly[2] == hourly[22] == 0.0
    assert hourly.index(max(hourly)) in (11, 12)
    assert max(hourly) <= 400_000.0
    # In December the sun is lower, further north more so.
    south, north = pv_at(12 * HOUR, 20.0, 355), pv_at(12 * HOUR, 55.0, 355)
    assert south.available_w > 2 * north.available_w > 0


def test_cloud_takes_70_percent_within_5_s_and_passes() -> None:
    pv = pv_at(10 * HOUR)
    run(pv, 1.0)
    before = pv.p_w
    pv.cloud(depth=0.7, ramp_s=5.0, duration_s=20.0)
    halfway = run(pv, 2.5)[-1]
    assert 0.55 * before < halfway < 0.75 * before
    shaded = run(pv, 2.5)[-1]
    assert shaded == pytest.approx(0.3 * before, rel=0.01)
    assert run(pv, 20.0)[-1] == pytest.approx(0.3 * before, rel=0.02)
    recovered = run(pv, 6.0)[-1]
    assert recovered == pytest.approx(before, rel=0.02)


def test_pv_curtailment_caps_the_output_not_what_is_available() -> None:
    pv = pv_at(11 * HOUR)
    p = pv.step(DT, limit_w=100_000.0)
    assert p == 100_000.0
    assert pv.available_w > 300_000.0
    assert pv.limited
    assert pv.step(DT, None) == pv.available_w


def test_wind_power_curve() -> None:
    params = WindParams(2_000_000.0, cut_in_mps=3.0, rated_mps=12.0, cut_out_mps=25.0)
    for v in (0.0, 1.0, 2.99):
        assert power_curve_w(v, params) == 0.0
    rising = [power_curve_w(v, params) for v in (3.5, 5.0, 8.0, 11.0, 11.9)]
    assert all(0 < a < b < 2_000_000.0 for a, b in itertools.pairwise(rising))
    for v in (12.0, 15.0, 20.0, 24.99):
        assert power_curve_w(v, params) == 2_000_000.0
    for v in (25.0, 30.0, 50.0):
        assert power_curve_w(v, params) == 0.0


def calm(p_rated_w: float = 400_000.0, **kwargs: float) -> WindTurbine:
    """A turbine in a steady wind (no turbulence), seeded all the same."""
    params = WindParams(p_rated_w, turbulence=0.0, **kwargs)
    return WindTurbine(params, random.Random(1))


def test_turbine_cuts_out_in_a_storm_and_restarts_after_it() -> None:
    turbine = calm(mean_mps=14.0, restart_delay_s=30.0)
    run(turbine, 5.0)
    assert turbine.p_w == pytest.approx(400_000.0, rel=1e-3)
    turbine.storm(duration_s=20.0)
    run(turbine, 10.0)
    assert turbine.state == WindTurbine.STORM
    assert turbine.wind_mps >= 25.0
    assert turbine.available_w == 0.0
    assert turbine.p_w < 0.01 * 400_000.0  # braking with the rotor's lag
    run(turbine, 5.0)
    assert turbine.p_w <= 0.0
    assert turbine.rotor_rpm < 0.1
    # The storm falls away 20 + 2 x 5 s after it began (below the restart speed from
    # 28 s on); the turbine waits 30 s of calm, then runs.
    run(turbine, 30.0)
    assert turbine.state == WindTurbine.STORM
    run(turbine, 20.0)
    assert turbine.state == WindTurbine.RUNNING
    assert turbine.p_w > 390_000.0


def test_gust_raises_the_wind_and_the_output_then_passes() -> None:
    turbine = calm(mean_mps=7.0)
    run(turbine, 10.0)
    before_wind, before_p = turbine.wind_mps, turbine.p_w
    turbine.gust(delta_mps=5.0, rise_s=2.0, duration_s=5.0)
    run(turbine, 4.0)
    assert turbine.wind_mps == pytest.approx(before_wind + 5.0)
    assert turbine.p_w > 1.5 * before_p
    run(turbine, 15.0)
    assert turbine.wind_mps == pytest.approx(before_wind)
    assert turbine.p_w == pytest.approx(before_p, rel=1e-3)


def test_turbine_limit_and_idle_auxiliaries() -> None:
    turbine = calm(mean_mps=14.0)
    run(turbine, 10.0, limit_w=150_000.0)
    assert turbine.p_w == pytest.approx(150_000.0, rel=1e-3)
    assert turbine.state == WindTurbine.LIMITED
    assert turbine.available_w == 400_000.0
    idle = calm(mean_mps=2.0)
    run(idle, 10.0)
    assert idle.state == WindTurbine.IDLE
    assert -1_000.0 < idle.p_w < 0.0  # auxiliaries: 0.1 % of the rating


def test_turbulence_is_seeded() -> None:
    a = WindTurbine(WindParams(400_000.0), random.Random(7))
    b = WindTurbine(WindParams(400_000.0), random.Random(7))
    winds = [(a.step(DT), b.step(DT)) for _ in range(600)]
    assert all(x == y for x, y in winds)
    assert len({round(x) for x, _ in winds}) > 10  # and it does move


BESS = BatteryParams(
    capacity_wh=2_000_000.0,
    p_discharge_max_w=500_000.0,
    p_charge_max_w=400_000.0,
    eta_charge=0.95,
    eta_discharge=0.96,
    soc_empty=0.05,
    soc_full=0.98,
)


def hold(battery: Battery, p_w: float, seconds: float, dt: float = 1.0) -> list[float]:
    return [battery.step(dt, p_w) for _ in range(round(seconds / dt))]


def test_soc_integrates_power_with_the_efficiencies() -> None:
    battery = Battery(BESS, soc=0.5)
    hold(battery, 300_000.0, HOUR)
    assert battery.soc == pytest.approx(0.5 - 300_000.0 / 0.96 / 2_000_000.0)
    after_discharge = battery.soc
    hold(battery, -200_000.0, HOUR)
    assert battery.soc == pytest.approx(after_discharge + 200_000.0 * 0.95 / 2_000_000.0)
    # Any step size integrates the same energy.
    fine = Battery(BESS, soc=0.5)
    hold(fine, 300_000.0, HOUR, dt=0.1)
    assert fine.soc == pytest.approx(0.5 - 300_000.0 / 0.96 / 2_000_000.0)


def test_bms_stops_discharge_at_empty_and_charge_at_full() -> None:
    battery = Battery(BESS, soc=0.1)
    delivered = hold(battery, 500_000.0, HOUR)
    assert battery.soc == pytest.approx(0.05)
    assert delivered[0] == 500_000.0
    assert delivered[-1] == 0.0
    assert battery.limits_w() == (-400_000.0, 0.0)
    # Charging is limited by the converter (400 kW), then stops at full.
    taken = hold(battery, -600_000.0, 6 * HOUR)
    assert taken[0] == -400_000.0
    assert taken[-1] == 0.0
    assert battery.soc == pytest.approx(0.98)
    assert battery.limits_w() == (0.0, 500_000.0)
    assert battery.limits_w(charge_limit_w=100_000.0) == (0.0, 500_000.0)
    # Over a given step, no more than what is left above empty.
    battery.soc = 0.05 + 1e-6
    low, high = battery.limits_w(dt_s=1.0)
    assert high == pytest.approx(1e-6 * 2_000_000.0 * 0.96 * 3600.0)
    assert low == -400_000.0


def test_charge_limit_and_fault() -> None:
    battery = Battery(BESS, soc=0.5)
    assert battery.limits_w(charge_limit_w=100_000.0) == (-100_000.0, 500_000.0)
    battery.fault(duration_s=10.0)
    assert battery.faulted
    assert battery.limits_w() == (0.0, 0.0)
    assert hold(battery, 400_000.0, 5.0)[-1] == 0.0
    assert battery.soc == 0.5
    hold(battery, 0.0, 5.0)
    assert not battery.faulted
    assert battery.step(1.0, 400_000.0) == 400_000.0


def rack(seed: int = 3) -> RackLoad:
    rng = random.Random(seed)
    return RackLoad(RackParams.for_rack(120_000.0, 24_000.0, rng), rng)


def test_rack_follows_a_lowered_limit_with_its_ramp_and_never_exceeds_it() -> None:
    load = rack()
    draws = [load.step(DT) for _ in range(50)]
    assert max(draws) > 100_000.0
    caps, draws = [], []
    for _ in range(100):
        draws.append(load.step(DT, limit_w=60_000.0))
        caps.append(load.cap_w)
    # The cap moves at the ramp (24 kW/s): 60 kW in 2.5 s, never faster.
    steps = [a - b for a, b in zip([120_000.0, *caps], caps, strict=False)]
    assert all(s <= 24_000.0 * DT + 1e-6 for s in steps)
    assert caps[23] > 60_000.0  # after 2.4 s
    assert caps[24] == pytest.approx(60_000.0)  # after 2.5 s
    assert all(d <= c + 1e-9 for d, c in zip(draws, caps, strict=True))
    assert max(draws[24:]) <= 60_000.0
    assert max(draws[24:]) == pytest.approx(60_000.0, rel=0.01)  # the compute phase
    # Raised again, it climbs at the same ramp.
    up = [load.step(DT, limit_w=120_000.0) for _ in range(10)]
    assert load.cap_w == pytest.approx(84_000.0)
    assert max(up) <= 84_000.0


def test_rack_swings_between_phases_above_its_idle_floor() -> None:
    load = rack()
    floor = load.params.idle_w
    assert floor == 30_000.0
    assert 0.2 <= load.params.frequency_hz <= 3.0
    draws, phases = [], []
    for _ in range(200):
        draws.append(load.step(DT))
        phases.append(load.computing)
    assert True in phases and False in phases
    assert max(draws) - min(draws) > 0.25 * 120_000.0
    assert min(draws) >= floor
    # Switches phase about 2 x frequency times a second (sampled every 0.1 s).
    switches = sum(a != b for a, b in itertools.pairwise(phases))
    assert switches >= 2 * load.params.frequency_hz * 20 * 0.5


def test_racks_differ_by_seed_and_repeat_with_it() -> None:
    a, b, c = rack(1), rack(1), rack(2)
    run_a = [a.step(DT) for _ in range(100)]
    assert run_a == [b.step(DT) for _ in range(100)]
    assert run_a != [c.step(DT) for _ in range(100)]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    limits=st.lists(
        st.one_of(st.none(), st.floats(0.0, 150_000.0, allow_nan=False)), min_size=1, max_size=40
    ),
)
def test_rack_draw_stays_under_its_cap_and_the_cap_under_its_ramp(
    seed: int, limits: list[float | None]
) -> None:
    load = rack(seed)
    for limit in limits:
        cap_before = load.cap_w
        for _ in range(5):
            draw = load.step(DT, limit)
            assert draw <= load.cap_w + 1e-9
            assert draw >= min(load.cap_w, load.params.idle_w) - 1e-9
        assert abs(load.cap_w - cap_before) <= 5 * 24_000.0 * DT + 1e-6
        assert 0.0 <= load.cap_w <= 120_000.0
