"""Physical models of the simulated site: PV blocks, wind turbines, batteries, GPU racks.

Pure and clock-free: each model keeps its own time and moves on by `step(dt_s, ...)`, so a
run is the same whatever the wall clock does. Events (a cloud, a gust, a storm, a battery
fault) start at the model's current time and run out by themselves. What is random (wind
turbulence, the rhythm of a training job) comes from a `random.Random` the caller seeds,
so a run is repeatable.

Each model reports its natural positive, as the devices do: a source's output >= 0 (a
turbine's auxiliaries make it slightly negative while idle), a rack's draw >= 0, a
battery's p_w > 0 when discharging and < 0 when charging.

PV: clear-sky global horizontal irradiance (Haurwitz) from the sun's elevation at the site's
latitude, day of year and local solar time, times a cloud factor; output = rating x
G / 1000 W/m^2, capped at the rating and at the curtailment limit.

Wind: a mean speed with Ornstein-Uhlenbeck turbulence, plus gusts and storms; a cubic
power curve between cut-in and rated speed, rated output up to cut-out; above cut-out the
turbine stops and restarts only once the wind has stayed below its restart speed for its
restart delay. The output follows its target with the rotor's first-order lag.

Battery: state of charge integrated from the terminal power with charge and discharge
efficiencies; the BMS stops discharge at `soc_empty`, charge at `soc_full`, and both
during a fault. The site file's soc_min/soc_max are the controller's reserve and ceiling,
inside the BMS window.

Rack: a training job alternates compute and communication phases (0.2-3 Hz); the rack
draws the phase's demand, never less than its idle floor and never more than its power
cap, and the cap moves towards a written limit at the rack's ramp rate.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

__all__ = [
    "SECONDS_PER_DAY",
    "Battery",
    "BatteryParams",
    "Episode",
    "PvParams",
    "PvPlant",
    "RackLoad",
    "RackParams",
    "WindParams",
    "WindTurbine",
    "clear_sky_ghi_w_m2",
    "power_curve_w",
    "solar_elevation_deg",
]

SECONDS_PER_DAY = 86_400.0
_G_REF_W_M2 = 1000.0  # irradiance at which a PV block delivers its rating (STC)


@dataclass(frozen=True)
class Episode:
    """A bump in time: rises linearly over `rise_s`, holds `hold_s`, falls over `rise_s`."""

    start_s: float
    rise_s: float
    hold_s: float

    @property
    def end_s(self) -> float:
        return self.start_s + 2 * self.rise_s + self.hold_s

    def level(self, t_s: float) -> float:
        """0 before and after, 1 while held, linear in between."""
        x = t_s - self.start_s
        if x <= 0 or t_s >= self.end_s:
            return 0.0
        if self.rise_s > 0 and x < self.rise_s:
            return x / self.rise_s
        x -= self.rise_s
        if x <= self.hold_s:
            return 1.0
        x -= self.hold_s
        return 1.0 - x / self.rise_s if self.rise_s > 0 else 0.0


def solar_elevation_deg(latitude_deg: float, day_of_year: int, solar_time_s: float) -> float:
    """Elevation of the sun above the horizon (negative at night), at local solar time."""
    declination = math.radians(23.44) * math.sin(2 * math.pi * (284 + day_of_year) / 365)
    hour_angle = math.radians(15.0 * (solar_time_s / 3600.0 - 12.0))
    lat = math.radians(latitude_deg)
    sin_elevation = math.sin(lat) * math.sin(declination) + math.cos(lat) * math.cos(
        declination
    ) * math.cos(hour_angle)
    return math.degrees(math.asin(max(-1.0, min(1.0, sin_elevation))))


def clear_sky_ghi_w_m2(latitude_deg: float, day_of_year: int, solar_time_s: float) -> float:
    """Clear-sky global horizontal irradiance (Haurwitz 1945), 0 while the sun is down."""
    cos_zenith = math.sin(
        math.radians(solar_elevation_deg(latitude_deg, day_of_year, solar_time_s))
    )
    if cos_zenith <= 0.0:
        return 0.0
    return 1098.0 * cos_zenith * math.exp(-0.057 / cos_zenith)


@dataclass(frozen=True)
class PvParams:
    p_rated_w: float
    latitude_deg: float
    day_of_year: int = 172
    start_of_day_s: float = 10 * 3600.0  # local solar time when the model's clock is 0


@dataclass
class _Cloud:
    episode: Episode
    depth: float


class PvPlant:
    """One PV field behind its DC/DC block."""

    def __init__(self, params: PvParams, *, e_wh: float = 0.0) -> None:
        self.params = params
        self.t_s = 0.0
        self.e_wh = e_wh
        self.limit_w: float | None = None
        self._clouds: list[_Cloud] = []
        self.available_w = self._available(0.0)
        self.p_w = self.available_w

    @property
    def solar_time_s(self) -> float:
        return (self.params.start_of_day_s + self.t_s) % SECONDS_PER_DAY

    @property
    def day_of_year(self) -> int:
        days = int((self.params.start_of_day_s + self.t_s) // SECONDS_PER_DAY)
        return (self.params.day_of_year - 1 + days) % 365 + 1

    @property
    def limited(self) -> bool:
        return self.limit_w is not None and self.limit_w < self.available_w

    def irradiance_w_m2(self, t_s: float | None = None) -> float:
        t = self.t_s if t_s is None else t_s
        seconds = self.params.start_of_day_s + t
        day = (self.params.day_of_year - 1 + int(seconds // SECONDS_PER_DAY)) % 365 + 1
        clear = clear_sky_ghi_w_m2(self.params.latitude_deg, day, seconds % SECONDS_PER_DAY)
        return clear * self.cloud_factor(t)

    def cloud_factor(self, t_s: float | None = None) -> float:
        """Fraction of the clear-sky irradiance getting through (the thickest cloud wins)."""
        t = self.t_s if t_s is None else t_s
        shade = max((c.depth * c.episode.level(t) for c in self._clouds), default=0.0)
        return 1.0 - shade

    def cloud(self, depth: float = 0.7, ramp_s: float = 5.0, duration_s: float = 60.0) -> None:
        """A cloud from now: irradiance down by `depth` over `ramp_s`, held `duration_s`,
        back over `ramp_s`."""
        self._clouds.append(_Cloud(Episode(self.t_s, ramp_s, duration_s), depth))

    def step(self, dt_s: float, limit_w: float | None = None) -> float:
        """Advance by dt_s; the output (W) at the end of the step."""
        self.t_s += dt_s
        self._clouds = [c for c in self._clouds if c.episode.end_s > self.t_s]
        self.limit_w = limit_w
        self.available_w = self._available(self.t_s)
        p = self.available_w if limit_w is None else max(0.0, min(self.available_w, limit_w))
        self.p_w = p
        self.e_wh += p * dt_s / 3600.0
        return p

    def _available(self, t_s: float) -> float:
        rated = self.params.p_rated_w
        return min(rated, rated * self.irradiance_w_m2(t_s) / _G_REF_W_M2)


@dataclass(frozen=True)
class WindParams:
    p_rated_w: float
    cut_in_mps: float = 3.0
    rated_mps: float = 12.0
    cut_out_mps: float = 25.0
    restart_mps: float = 20.0  # after a cut-out, the wind must fall below this ...
    restart_delay_s: float = 60.0  # ... and stay below it this long
    rated_rpm: float = 14.0
    mean_mps: float = 9.0
    turbulence: float = 0.1  # turbulence intensity: sigma / mean
    turbulence_tau_s: float = 20.0  # correlation time of the turbulence
    response_tau_s: float = 1.0  # rotor and pitch: how fast the output follows its target
    aux_fraction: float = 0.001  # auxiliaries drawn while idle, as a fraction of the rating


def power_curve_w(wind_mps: float, params: WindParams) -> float:
    """What the turbine makes in a steady wind: 0 below cut-in and from cut-out on, a cubic
    rise to the rating at rated speed, the rating up to cut-out."""
    if wind_mps < params.cut_in_mps or wind_mps >= params.cut_out_mps:
        return 0.0
    if wind_mps >= params.rated_mps:
        return params.p_rated_w
    ci3 = params.cut_in_mps**3
    return params.p_rated_w * (wind_mps**3 - ci3) / (params.rated_mps**3 - ci3)


@dataclass
class _Gust:
    episode: Episode
    delta_mps: float


class WindTurbine:
    """One turbine: wind at the nacelle, the power curve, cut-out and restart, a limit."""

    IDLE = "idle"  # below cut-in
    RUNNING = "running"
    LIMITED = "limited"  # running below what the wind allows, at the limit
    STORM = "storm"  # stopped after a cut-out, waiting to restart

    def __init__(self, params: WindParams, rng: random.Random, *, e_wh: float = 0.0) -> None:
        self.params = params
        self.t_s = 0.0
        self.e_wh = e_wh
        self._rng = rng
        self._turbulence_mps = 0.0
        self._gusts: list[_Gust] = []
        self._storms: list[Episode] = []
        self._stopped = False
        self._calm_since_s: float | None = None
        self.limit_w: float | None = None
        self.wind_mps = max(0.0, params.mean_mps)
        self.available_w = power_curve_w(self.wind_mps, params)
        self.p_w = self.available_w
        self.rotor_rpm = self._rpm_target()
        self.state = self.RUNNING if self.available_w > 0 else self.IDLE

    def gust(self, delta_mps: float = 8.0, rise_s: float = 3.0, duration_s: float = 10.0) -> None:
        """A gust from now: the wind rises by `delta_mps` over `rise_s`, holds, falls back."""
        self._gusts.append(_Gust(Episode(self.t_s, rise_s, duration_s), delta_mps))

    def storm(self, duration_s: float = 60.0, rise_s: float = 5.0) -> None:
        """A storm from now: the wind rises above cut-out for `duration_s`."""
        self._storms.append(Episode(self.t_s, rise_s, duration_s))

    def step(self, dt_s: float, limit_w: float | None = None) -> float:
        """Advance by dt_s; the output (W) at the end of the step."""
        p = self.params
        self.t_s += dt_s
        self._gusts = [g for g in self._gusts if g.episode.end_s > self.t_s]
        self._storms = [s for s in self._storms if s.end_s > self.t_s]
        self.wind_mps = self._wind(dt_s)
        self._update_cut_out()
        self.limit_w = limit_w
        curve = 0.0 if self._stopped else power_curve_w(self.wind_mps, p)
        self.available_w = curve
        target = curve if limit_w is None else max(0.0, min(curve, limit_w))
        if curve <= 0.0:
            target = -p.aux_fraction * p.p_rated_w
        follow = 1.0 - math.exp(-dt_s / p.response_tau_s) if p.response_tau_s > 0 else 1.0
        self.p_w += (target - self.p_w) * follow
        self.rotor_rpm += (self._rpm_target() - self.rotor_rpm) * follow
        if self._stopped:
            self.state = self.STORM
        elif curve <= 0.0:
            self.state = self.IDLE
        elif limit_w is not None and limit_w < curve:
            self.state = self.LIMITED
        else:
            self.state = self.RUNNING
        self.e_wh += self.p_w * dt_s / 3600.0
        return self.p_w

    def _wind(self, dt_s: float) -> float:
        p = self.params
        sigma = p.turbulence * p.mean_mps
        if sigma > 0 and p.turbulence_tau_s > 0:
            # Exact discretisation of the Ornstein-Uhlenbeck process: any dt_s is fine.
            decay = math.exp(-dt_s / p.turbulence_tau_s)
            spread = sigma * math.sqrt(1.0 - decay * decay)
            self._turbulence_mps = self._turbulence_mps * decay + spread * self._rng.gauss()
        base = p.mean_mps + self._turbulence_mps
        base += sum(g.delta_mps * g.episode.level(self.t_s) for g in self._gusts)
        storm = max((s.level(self.t_s) for s in self._storms), default=0.0)
        if storm > 0:
            peak = p.cut_out_mps + 4.0
            base += storm * max(0.0, peak - base)
        return max(0.0, base)

    def _update_cut_out(self) -> None:
        p = self.params
        if self.wind_mps >= p.cut_out_mps:
            self._stopped = True
            self._calm_since_s = None
        elif self._stopped:
            if self.wind_mps >= p.restart_mps:
                self._calm_since_s = None
            elif self._calm_since_s is None:
                self._calm_since_s = self.t_s
            elif self.t_s - self._calm_since_s >= p.restart_delay_s:
                self._stopped = False
                self._calm_since_s = None

    def _rpm_target(self) -> float:
        p = self.params
        if self._stopped or self.wind_mps < p.cut_in_mps:
            return 0.0
        return p.rated_rpm * min(1.0, self.wind_mps / p.rated_mps)


@dataclass(frozen=True)
class BatteryParams:
    capacity_wh: float
    p_discharge_max_w: float
    p_charge_max_w: float
    eta_charge: float = 0.97  # energy stored / energy taken in
    eta_discharge: float = 0.97  # energy delivered / energy taken out
    soc_empty: float = 0.05  # the BMS stops discharge here
    soc_full: float = 0.98  # and charge here


class Battery:
    """One battery with its converter: state of charge, BMS limits, faults."""

    def __init__(self, params: BatteryParams, soc: float = 0.6) -> None:
        self.params = params
        self.t_s = 0.0
        self.soc = min(1.0, max(0.0, soc))
        self.p_w = 0.0
        self._fault_until_s: float | None = None

    @property
    def faulted(self) -> bool:
        return self._fault_until_s is not None and self.t_s < self._fault_until_s

    @property
    def stored_wh(self) -> float:
        return self.soc * self.params.capacity_wh

    def fault(self, duration_s: float = 30.0) -> None:
        """The converter trips now and reconnects after `duration_s`."""
        self._fault_until_s = self.t_s + duration_s

    def limits_w(
        self, charge_limit_w: float | None = None, dt_s: float | None = None
    ) -> tuple[float, float]:
        """(most charge as a negative power, most discharge) the BMS allows now; with
        dt_s, also no more than the charge left to soc_empty or soc_full lasts dt_s."""
        if self.faulted:
            return 0.0, 0.0
        p = self.params
        charge = (
            p.p_charge_max_w if charge_limit_w is None else min(p.p_charge_max_w, charge_limit_w)
        )
        low = -max(0.0, charge) if self.soc < p.soc_full else 0.0
        high = p.p_discharge_max_w if self.soc > p.soc_empty else 0.0
        if dt_s is not None and dt_s > 0:
            hours = dt_s / 3600.0
            left_wh = (self.soc - p.soc_empty) * p.capacity_wh
            room_wh = (p.soc_full - self.soc) * p.capacity_wh
            high = min(high, max(0.0, left_wh * p.eta_discharge / hours))
            low = max(low, -max(0.0, room_wh / p.eta_charge / hours))
        return low, high

    def step(self, dt_s: float, p_w: float) -> float:
        """Run at p_w (W, discharge positive) for dt_s, within the BMS limits; the power
        actually delivered. A step never carries the charge past soc_empty or soc_full."""
        p = self.params
        low, high = self.limits_w()
        power = min(high, max(low, p_w))
        hours = dt_s / 3600.0
        if power > 0 and hours > 0:
            deliverable = (self.soc - p.soc_empty) * p.capacity_wh * p.eta_discharge / hours
            power = min(power, max(0.0, deliverable))
            self.soc -= power * hours / p.eta_discharge / p.capacity_wh
        elif power < 0 and hours > 0:
            storable = (p.soc_full - self.soc) * p.capacity_wh / p.eta_charge / hours
            power = max(power, -max(0.0, storable))
            self.soc += -power * hours * p.eta_charge / p.capacity_wh
        self.soc = min(1.0, max(0.0, self.soc))
        self.t_s += dt_s
        self.p_w = power
        return power


@dataclass(frozen=True)
class RackParams:
    p_max_w: float
    ramp_w_per_s: float
    idle_w: float  # the floor: what the rack draws with its GPUs idle
    compute_w: float  # the job's draw in its compute phase (before any cap)
    comm_w: float  # and in its communication phase
    frequency_hz: float  # compute/communication cycles per second (0.2-3 Hz)
    duty: float = 0.7  # fraction of a cycle spent computing
    noise: float = 0.01  # relative jitter of the demand, step to step

    @staticmethod
    def for_rack(
        p_max_w: float, ramp_w_per_s: float, rng: random.Random, *, idle_fraction: float = 0.25
    ) -> RackParams:
        """A training job of its own rhythm and intensity, drawn from `rng`."""
        idle = idle_fraction * p_max_w
        compute = rng.uniform(0.85, 0.98) * p_max_w
        comm = idle + rng.uniform(0.3, 0.45) * (compute - idle)
        return RackParams(
            p_max_w=p_max_w,
            ramp_w_per_s=ramp_w_per_s,
            idle_w=idle,
            compute_w=compute,
            comm_w=comm,
            frequency_hz=rng.uniform(0.2, 3.0),
        )


# Relative ripple of a rack's draw held by its power cap.
CAP_RIPPLE = 0.005


class RackLoad:
    """A GPU rack running a training job under a power cap."""

    def __init__(self, params: RackParams, rng: random.Random) -> None:
        self.params = params
        self.t_s = 0.0
        self.cap_w = params.p_max_w  # the cap in force, moving towards the written limit
        self.computing = True
        self._rng = rng
        self._phase0 = rng.random()
        self.p_w = self._draw()

    def step(self, dt_s: float, limit_w: float | None = None) -> float:
        """Advance by dt_s under `limit_w` (None: the rack's own maximum); the draw (W)."""
        p = self.params
        target = p.p_max_w if limit_w is None else max(0.0, min(p.p_max_w, limit_w))
        move = p.ramp_w_per_s * dt_s
        self.cap_w += max(-move, min(move, target - self.cap_w))
        self.t_s += dt_s
        self.p_w = self._draw()
        return self.p_w

    def _draw(self) -> float:
        p = self.params
        cycle = (self.t_s * p.frequency_hz + self._phase0) % 1.0
        self.computing = cycle < p.duty
        demand = p.compute_w if self.computing else p.comm_w
        demand *= 1.0 + p.noise * self._rng.uniform(-1.0, 1.0)
        draw = max(p.idle_w, demand)
        if draw >= self.cap_w:
            # Held by its cap, the rack's capping loop regulates just below it with a ripple,
            # as a real one does: a reading pinned at the cap would look like a frozen sensor.
            return self.cap_w * (1.0 - CAP_RIPPLE * self._rng.random())
        return draw
