"""Values the simulated devices serve in the device tests, in map units (engineering units
of each map point), chosen to exercise every point type."""

from __future__ import annotations

PV = {
    "p_w": 123456.0,
    "e_wh": 5.0e9,
    "v_v": 812.3,
    "i_a": 152.1,
    "status": 4,
    "p_rated_w": 1.0e6,
    "limit_pct": 80.0,
    "limit_enable": 1,
    "limit_revert_s": 60,
}
BESS = {
    "soc": 55.25,
    "soh": 97.5,
    "p_w": -250000.0,
    "v_v": 780.5,
    "i_a": -320.4,
    "state": 3,
    "e_rated_wh": 2.0e6,
    "p_charge_max_w": 5.0e5,
    "p_discharge_max_w": 5.0e5,
    "heartbeat": 17,
    "charge_limit_w": 4.0e5,
    "storage_mode": 3,
    "discharge_rate_pct": 50.0,
    "charge_rate_pct": 25.0,
    "rate_revert_s": 30,
}
VOLTARIS = {
    "p_w": 123456.0,
    "e_wh": 123456789.0,
    "v_v": 801.7,
    "i_a": 153.9,
    "status": 3,
    "p_rated_w": 5.0e5,
    "temp_c": 41.3,
    "limit_w": 4.5e5,
    "limit_revert_s": 120,
}
WIND = {
    "p_w": 2_345_678.5,
    "e_wh": 123_456_789_012.25,
    "status": 3,
    "rotor_rpm": 11.7,
    "wind_mps": 9.3,
    "available_w": 2_600_000.0,
    "limit_w": 3_000_000.0,
    "heartbeat": 41,
}
RACK = {"p_w": 374.0, "limit_w": 500.0, "limit_min_w": 150.0, "limit_max_w": 1000.0}
