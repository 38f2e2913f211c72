"""One control cycle, top to bottom. Open this file first.

Every control.period_s the daemon calls `Controller.run_cycle(now_s, wall_s)`:

    1. snapshot  a frozen copy of what the pollers hold (no I/O, nothing changes under it)
    2. estimate  what dispatch may count on, conservatively; which inputs were lost
    3. state     NORMAL, DEGRADED or SAFE from what was lost (edgectl.control.states)
    4. dispatch  the compiled kernel: rack caps tier by tier, batteries, grid, curtailment
    5. verify    the DC power flow of the decision; racks reduced until it holds
    6. write     setpoints handed to the device writers, never awaited
    7. publish   energy accounts, the flight recorder, the status document
    8. watchdog  kicked only here, at the end of a completed cycle

The controller itself does no I/O and reads no clock: the daemon passes the time in and
gives it a snapshot source, a setpoint sink and publishers (edgectl.app.daemon).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from edgectl.config.site import RENEWABLE_KINDS, Site
from edgectl.control.accounting import Accounts
from edgectl.control.estimate import (
    Estimate,
    Memory,
    charge_limits_w,
    default_stale_s,
    estimate,
    reserve_soc,
)
from edgectl.control.snapshot import Snapshot
from edgectl.control.states import State, StateMachine, Transition
from edgectl.control.verify import Verification, Verifier
from edgectl.kernels.dispatch import (
    DispatchInput,
    DispatchParams,
    DispatchResult,
    FloatArray,
    dispatch,
)
from edgectl.model.dispatch_input import params_from_site

# Renewables are curtailed to the racks' mean draw plus this share of it, plus charging.
USE_MARGIN = 0.05
# A curtailment below this share of the rating is not worth a limit: write the rating.
CURTAIL_MIN_SHARE = 0.01
# A battery reaching its reserve is taken off droop and its output ramped down by this
# share of its p_max_w per cycle, while the caps follow the supply that is left.
HOLD_RAMP_SHARE = 0.1
# A battery held at its reserve is released to droop once this far above it.
RESERVE_RELEASE_SOC = 0.01
# Share of the renewables' output the verified point must survive losing at once.
RENEWABLE_RESERVE = 0.2
# A rack the power flow cut may ask for this share of its p_max_w more per cycle again.
NET_LIMIT_RECOVERY_SHARE = 0.02
# Energy is counted for at most this many periods when cycles were late.
MAX_COUNTED_PERIODS = 5.0


@dataclass(frozen=True)
class BatterySetpoint:
    """droop: the battery holds the bus, charging capped; hold: pinned at p_w (<= 0)."""

    mode: str
    p_w: float
    charge_limit_w: float


@dataclass(frozen=True)
class Setpoints:
    """What one cycle writes, by device id, in W."""

    racks: dict[str, float]
    sources: dict[str, float]  # pv and wind limits
    batteries: dict[str, BatterySetpoint]


@dataclass
class CycleRecord:
    """Everything one cycle saw and decided, for the recorder and the status API."""

    cycle: int
    t_s: float
    wall_s: float
    state: State
    transition: Transition | None
    snapshot: Snapshot
    estimate: Estimate
    params: DispatchParams
    inputs: DispatchInput
    result: DispatchResult
    verification: Verification
    caps_w: FloatArray  # the caps in force after this cycle (parked racks at p_min_w)
    rack_on: np.ndarray  # bool: on after this cycle (dispatch's, less what verify parked)
    setpoints: Setpoints | None  # None while STARTING: nothing is written
    grid_budget_w: float
    grid_w: float  # grid import counted this cycle
    reasons: list[str] = field(default_factory=list)
    compute_s: float = 0.0  # snapshot to setpoints, on the process clock


class Controller:
    """The cycle of one site, with the state it carries from one cycle to the next."""

    def __init__(
        self,
        site: Site,
        *,
        started_s: float,
        snapshot_source: Callable[[float], Snapshot],
        all_answered: Callable[[], bool],
        write: Callable[[Setpoints], None],
        publish: Callable[[CycleRecord], None],
        watchdog: Callable[[CycleRecord], None],
        accounts: Accounts | None = None,
        leases: Callable[[float], Mapping[str, float]] | None = None,
    ) -> None:
        self.site = site
        # Leased power per rack id, from the scheduler's leases in force at a time.
        self._leases = leases
        self.base_params = params_from_site(site)
        self.verifier = Verifier(site)
        self.memory = Memory()
        self.states = StateMachine(
            recover_s=site.daemon.recover_s, startup_s=site.daemon.startup_s, started_s=started_s
        )
        self.accounts = accounts if accounts is not None else Accounts()
        self.stale_s = default_stale_s(site)
        self.cycle = 0
        self._snapshot_source = snapshot_source
        self._all_answered = all_answered
        self._write = write
        self._publish = publish
        self._watchdog = watchdog
        # The caps of the last operating point that verified: never written above.
        self.last_verified_w: FloatArray = np.array([r.p_min_w for r in site.racks])
        self._p_min = np.array([r.p_min_w for r in site.racks])
        self._step = np.array([r.ramp_w_per_s for r in site.racks]) * site.control.period_s
        self._renewables = [s for s in site.sources if s.kind in RENEWABLE_KINDS]
        self._batteries = site.sources_of("bess")
        self._has_rack_device = np.array([r.device is not None for r in site.racks])
        self.losses_w = 0.0  # line losses of the last verified point, W

    @property
    def state(self) -> State:
        return self.states.state

    def adopt(self, old: Controller) -> None:
        """Carry what the old controller knew over a reload: its state, its memory of the
        racks and batteries that still exist, and the cycle count."""
        racks = {r.id for r in self.site.racks}
        batteries = {s.id for s in self._batteries}
        self.memory.racks = {k: v for k, v in old.memory.racks.items() if k in racks}
        self.memory.batteries = {k: v for k, v in old.memory.batteries.items() if k in batteries}
        self.memory.last_t_s = old.memory.last_t_s
        old.states.recover_s = self.states.recover_s
        old.states.startup_s = self.states.startup_s
        self.states = old.states
        self.cycle = old.cycle
        if [r.id for r in old.site.racks] == [r.id for r in self.site.racks]:
            p_max = np.array([r.p_max_w for r in self.site.racks])
            self.last_verified_w = np.minimum(old.last_verified_w, p_max)

    def run_cycle(self, now_s: float, wall_s: float, *, stopping: bool = False) -> CycleRecord:
        """One cycle: the phases in order (see the module docstring)."""
        t0 = time.perf_counter()
        self.cycle += 1
        snap = self._snapshot_source(now_s)
        est = estimate(self.site, self.base_params, snap, self.memory, stale_s=self.stale_s)
        transition = self.update_state(now_s, est, stopping)
        params, inputs, budget = self.dispatch_inputs(est, now_s, wall_s)
        result = dispatch(params, inputs)
        batteries = self.batteries(est, result)
        verification = self.verify(est, inputs, result, batteries)
        caps, on, setpoints = self.setpoints(est, result, verification, batteries)
        compute_s = time.perf_counter() - t0
        if setpoints is not None:
            self._write(setpoints)
        record = CycleRecord(
            cycle=self.cycle,
            t_s=now_s,
            wall_s=wall_s,
            state=self.state,
            transition=transition,
            snapshot=snap,
            estimate=est,
            params=params,
            inputs=inputs,
            result=result,
            verification=verification,
            caps_w=caps,
            rack_on=on,
            setpoints=setpoints,
            grid_budget_w=budget,
            grid_w=self.account(snap, est, verification, now_s, wall_s),
            reasons=self.reasons(est, result, verification),
            compute_s=compute_s,
        )
        self.remember(record)
        self._publish(record)
        self._watchdog(record)
        return record

    def update_state(self, now_s: float, est: Estimate, stopping: bool) -> Transition | None:
        if stopping:
            return self.states.stop(now_s, "stop requested: writing SAFE setpoints")
        return self.states.update(
            now_s,
            all_answered=self._all_answered(),
            problems=[str(p) for p in est.problems],
            safe_reasons=est.safe_reasons,
        )

    def dispatch_inputs(
        self, est: Estimate, now_s: float, wall_s: float
    ) -> tuple[DispatchParams, DispatchInput, float]:
        """The kernel's parameters and inputs for the state the controller is in."""
        params = self.base_params
        available, soc = est.renewable_available_w, est.battery_soc
        if self.state in (State.SAFE, State.STOPPING):
            # What batteries and grid sustain for ride_through_s; renewables not counted.
            sustain, soc = self._sustainable(now_s)
            params = dataclasses.replace(
                params,
                battery_p_max_w=sustain,
                battery_p_charge_max_w=np.zeros_like(sustain),
                ride_through_s=0.0,
            )
            available = np.zeros_like(available)
            budget = self.site.control.grid_import_max_w
        else:
            if any(est.battery_lost):
                params = dataclasses.replace(
                    params,
                    battery_p_max_w=est.battery_p_max_w,
                    battery_p_charge_max_w=est.battery_p_charge_max_w,
                )
            budget = self.accounts.grid_budget_w(
                wall_s,
                self.site.control.green_window_s,
                self.site.control.green_share_min,
                est.green_available_w,
            )
        floors = self._leases(now_s) if self._leases is not None else {}
        if floors and self.state not in (State.SAFE, State.STOPPING):
            # A lease is served as the rack's floor: before any unleased demand of its tier.
            leased = np.array([floors.get(r.id, 0.0) for r in self.site.racks])
            params = dataclasses.replace(
                params,
                rack_p_min_w=np.minimum(
                    np.maximum(params.rack_p_min_w, leased), params.rack_p_max_w
                ),
            )
        demand = np.minimum(est.rack_demand_w, self._net_limits())
        inputs = DispatchInput(
            renewable_available_w=available,
            battery_soc=soc,
            rack_demand_w=demand,
            rack_cap_w=est.rack_cap_w,
            rack_on=est.rack_on,
            rack_off_s=est.rack_off_s,
            grid_budget_w=budget if math.isfinite(budget) else math.nan,
            # The network's losses are a load the sources carry too: last cycle's estimate.
            fixed_load_w=est.fixed_load_w + self.losses_w,
        )
        return params, inputs, budget

    def _net_limits(self) -> FloatArray:
        """Per rack, the most the power flow lately allowed (p_max_w when it did not cut)."""
        out = np.array([r.p_max_w for r in self.site.racks])
        for i, rack in enumerate(self.site.racks):
            mem = self.memory.racks.get(rack.id)
            if mem is not None:
                out[i] = min(out[i], mem.net_limit_w)
        return out

    def _sustainable(self, now_s: float) -> tuple[FloatArray, FloatArray]:
        """Per battery: the power it sustains for ride_through_s from its last known charge
        (discharging at full power since it was read), and that charge."""
        params = self.base_params
        ride = max(self.site.control.ride_through_s, params.period_s)
        sustain = np.zeros(params.n_batteries)
        soc = params.battery_soc_min.copy()
        for k, bid in enumerate(params.battery_ids):
            mem = self.memory.batteries.get(bid)
            if mem is None or mem.soc is None:
                continue
            capacity, p_max = float(params.battery_capacity_wh[k]), float(params.battery_p_max_w[k])
            now_soc = mem.soc - p_max * max(0.0, now_s - mem.t_s) / 3600.0 / capacity
            energy_wh = max(0.0, now_soc - float(params.battery_soc_min[k])) * capacity
            sustain[k] = min(p_max, energy_wh * 3600.0 / ride)
            soc[k] = max(now_soc, float(params.battery_soc_min[k]))
        return sustain, soc

    def verify(
        self,
        est: Estimate,
        inputs: DispatchInput,
        result: DispatchResult,
        batteries: dict[str, BatterySetpoint],
    ) -> Verification:
        """The decision's worst operating point through the power flow."""
        on = (result.rack_on != 0) & est.rack_controllable
        draw = np.where(on, result.rack_cap_w, est.rack_fixed_w)
        # Reductions stay within the ramp: a cap that stays on moves at most one step.
        floor = np.where(
            inputs.rack_on != 0, np.maximum(self._p_min, inputs.rack_cap_w - self._step), 0.0
        )
        # Verified with RENEWABLE_RESERVE of the renewables gone: a cloud front takes 70 %
        # of the PV in seconds, and the batteries must still hold the bus while the caps
        # follow, a cycle or two later.
        keep = 1.0 - RENEWABLE_RESERVE
        sources: dict[str, float] = {
            s.id: keep * float(result.renewable_p_w[i]) for i, s in enumerate(self._renewables)
        }
        # A battery held at its reserve and charging takes part of the surplus; with the
        # renewables short its charge is the first to give (the next cycle lowers it, a held
        # setpoint moving up at once), before any rack's cap, which follows its ramp. In the
        # point the grid tie covers at most half its headroom of the shortfall and the held
        # batteries' charge, in proportion, the rest: a margin both ways, neither a deficit
        # beyond the tie nor a surplus that nothing absorbs (an import-only tie, every
        # battery held).
        shortfall = RENEWABLE_RESERVE * float(result.renewable_p_w.sum())
        headroom = max(0.0, self.site.control.grid_import_max_w - float(result.grid_p_w.sum()))
        held = {b: sp.p_w for b, sp in batteries.items() if sp.mode == "hold"}
        charging = -sum(min(0.0, p) for p in held.values())
        give = max(0.0, shortfall - 0.5 * headroom)
        relief = min(1.0, give / charging) if charging > 0.0 else 0.0
        for bid, p_w in held.items():
            sources[bid] = p_w * (1.0 - relief) if p_w < 0.0 else p_w
        return self.verifier.verify(
            draw, on, sources, frozenset(held), floor_w=np.minimum(floor, draw)
        )

    def setpoints(
        self,
        est: Estimate,
        result: DispatchResult,
        verification: Verification,
        batteries: dict[str, BatterySetpoint],
    ) -> tuple[FloatArray, np.ndarray, Setpoints | None]:
        """Caps in force after this cycle, which racks are on, and what to write (None
        while STARTING)."""
        on = (result.rack_on != 0) & est.rack_controllable
        if verification.parked is not None:
            on &= ~verification.parked
        caps = np.where(on, verification.rack_cap_w, 0.0)
        if verification.verified:
            self.last_verified_w = np.where(on, caps, self._p_min)
        else:
            caps = np.minimum(caps, self.last_verified_w)
        parked = est.rack_controllable & ~on
        caps_in_force = np.where(parked, self._p_min, caps)
        if self.state is State.STARTING:
            return caps_in_force, on, None
        racks = {
            r.id: float(caps_in_force[i])
            for i, r in enumerate(self.site.racks)
            if r.device is not None and est.rack_controllable[i]
        }
        sources: dict[str, float] = {}
        if self.state not in (State.SAFE, State.STOPPING):
            share = self._use_share(est)
            for i, src in enumerate(self._renewables):
                if src.device is None:
                    continue
                available = float(est.renewable_available_w[i])
                limit = min(float(result.renewable_p_w[i]), share * available)
                # A source held back is let up by its probe each cycle, not at once: it
                # could give far more than the lower bound that is known of it.
                free = not est.renewable_held[i] and available - limit <= (
                    CURTAIL_MIN_SHARE * src.p_max_w
                )
                sources[src.id] = src.p_max_w if free else limit
        return caps_in_force, on, Setpoints(racks=racks, sources=sources, batteries=batteries)

    def _use_share(self, est: Estimate) -> float:
        """The share of the renewables' availability the site can use now, 0..1.

        Dispatch budgets the racks' caps, the most they may draw; curtailment must follow
        what they do draw, or the surplus has nowhere to go once the batteries are full and
        the bus rises until the converters derate on their own. The use: the racks' mean
        draw over the demand window, plus USE_MARGIN of it for their swings (the batteries
        cover the rest), plus what the batteries may charge, plus the losses.
        """
        available = float(est.renewable_available_w.sum())
        if available <= 0.0:
            return 1.0
        draw = 0.0
        for i, rack in enumerate(self.site.racks):
            mem = self.memory.racks.get(rack.id)
            if mem is not None and mem.draws and est.rack_controllable[i]:
                draw += sum(mem.draws) / len(mem.draws)
            else:
                draw += float(est.rack_draw_w[i])
        charge = charge_limits_w(self.base_params, est.battery_soc, est.battery_p_charge_max_w)
        use = draw * (1.0 + USE_MARGIN) + float(charge.sum()) + self.losses_w
        return min(1.0, use / available)

    def batteries(self, est: Estimate, result: DispatchResult) -> dict[str, BatterySetpoint]:
        """Each reachable battery's mode: on its droop, or held at its reserve (pinned at a
        setpoint ramping down to the dispatched charge)."""
        out: dict[str, BatterySetpoint] = {}
        safe = self.state in (State.SAFE, State.STOPPING)
        reserve = self.base_params.battery_soc_min if safe else reserve_soc(self.base_params)
        charge = charge_limits_w(self.base_params, est.battery_soc, est.battery_p_charge_max_w)
        for k, src in enumerate(self._batteries):
            mem = self.memory.batteries.get(src.id)
            if src.device is None or est.battery_lost[k] or mem is None:
                continue
            soc = float(est.battery_soc[k])
            if soc <= reserve[k] and not mem.held:
                # From what it delivers now: the racks need a few cycles to follow.
                mem.held = True
                now_w = float(est.battery_p_w[k])
                mem.hold_w = max(0.0, now_w) if math.isfinite(now_w) else 0.0
            elif soc > reserve[k] + RESERVE_RELEASE_SOC:
                mem.held = False
            if mem.held:
                target = min(0.0, float(result.battery_p_w[k]))
                step = HOLD_RAMP_SHARE * float(self.base_params.battery_p_max_w[k])
                mem.hold_w = max(target, mem.hold_w - step)
                out[src.id] = BatterySetpoint("hold", mem.hold_w, float(charge[k]))
            else:
                out[src.id] = BatterySetpoint("droop", 0.0, float(charge[k]))
        return out


    def account(
        self, snap: Snapshot, est: Estimate, verification: Verification, now_s: float, wall_s: float
    ) -> float:
        """Count this cycle's energy; the grid import it counted, W."""
        last = self.memory.last_t_s
        period = self.site.control.period_s
        dt = 0.0 if last is None else min(now_s - last, MAX_COUNTED_PERIODS * period)
        by_kind: dict[str, float] = {}
        grid_measured: float | None = None
        for src in self.site.sources:
            view = snap.sources[src.id]
            if not view.p_w.usable(now_s, self.stale_s) or not isinstance(
                view.p_w.value, int | float
            ):
                continue
            p = float(view.p_w.value)
            if src.kind == "grid":
                grid_measured = (grid_measured or 0.0) + p
            else:
                by_kind[src.kind] = by_kind.get(src.kind, 0.0) + p
        racks = {r.id: float(est.rack_draw_w[i]) for i, r in enumerate(self.site.racks)}
        losses = verification.losses_w
        if grid_measured is None:
            supplied = by_kind.get("pv", 0.0) + by_kind.get("wind", 0.0) + by_kind.get("bess", 0.0)
            grid_measured = max(0.0, sum(racks.values()) + losses - supplied)
        self.accounts.add(
            dt_s=dt,
            wall_s=wall_s,
            window_s=self.site.control.green_window_s,
            source_kind_p_w=by_kind,
            rack_p_w=racks,
            grid_w=grid_measured,
            losses_w=losses,
        )
        return grid_measured

    def remember(self, record: CycleRecord) -> None:
        """Carry the decision into the next cycle's memory (nothing while STARTING)."""
        self.memory.last_t_s = record.t_s
        if record.verification.converged:
            self.losses_w = record.verification.losses_w
        if record.setpoints is None:
            return
        est = record.estimate
        for i, rack in enumerate(self.site.racks):
            mem = self.memory.racks.get(rack.id)
            if mem is None or not est.rack_controllable[i]:
                continue
            now_on = bool(record.rack_on[i])
            # What the power flow allowed, held against the next cycles' demand so that
            # dispatch does not ask again at once for what verification just took away.
            if record.verification.reductions.get(rack.id, 0.0) > 0.0:
                mem.net_limit_w = float(record.caps_w[i])
            else:
                mem.net_limit_w += NET_LIMIT_RECOVERY_SHARE * rack.p_max_w
            if mem.on and not now_on:
                mem.off_since_s = record.t_s
            mem.on = now_on
            mem.cap_w = float(record.caps_w[i]) if now_on else 0.0

    def reasons(
        self, est: Estimate, result: DispatchResult, verification: Verification
    ) -> list[str]:
        """Why the decision is what it is, in a few lines for a person."""
        out: list[str] = []
        if self.state in (State.SAFE, State.STOPPING):
            out.append(f"{self.state.name}: {self.states.reason}")
        for t in range(4):
            short = float(result.unserved_w_by_tier[t])
            if short > 1.0:
                out.append(
                    f"tier {t} short {short / 1e3:,.1f} kW of "
                    f"{float(result.demand_w_by_tier[t]) / 1e3:,.1f} kW demand"
                )
        if result.shed:
            out.append(f"{result.shed} racks switched off (parked at p_min_w)")
        if result.started:
            out.append(f"{result.started} racks started")
        curtailed = float(result.renewable_curtailed_w.sum())
        if curtailed > 1.0 and self.state not in (State.SAFE, State.STOPPING):
            out.append(f"renewables curtailed by {curtailed / 1e3:,.1f} kW")
        if est.fixed_load_w > 0:
            out.append(f"fixed loads {est.fixed_load_w / 1e3:,.1f} kW (racks not capped)")
        if verification.reduced_w > 1.0:
            out.append(
                f"power flow: caps reduced by {verification.reduced_w / 1e3:,.1f} kW "
                f"({'; '.join(verification.violations[:2]) or 'limits'})"
            )
        if not verification.verified:
            out.append("power flow did not verify: caps held at the last verified point")
        out.extend(str(p) for p in est.problems[:5])
        return out
