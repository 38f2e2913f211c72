"""The controller's states, their triggers and their hysteresis.

    STARTING  from start until every device has answered once, or startup_s at most.
              Cycles run and are published, but nothing is written.
    NORMAL    every input valid.
    DEGRADED  some input lost or distrusted (a source or rack silent, stale, invalid, a
              rack ignoring its limit): decisions use the estimator's conservative values.
    SAFE      the site picture cannot be trusted: every battery lost, the bus voltage
              measurement lost, or most renewable sources silent. Racks are capped to what
              the batteries and the grid can sustain for ride_through_s, tier 3 first;
              renewables are not counted and not curtailed.
    STOPPING  SIGTERM: one last SAFE decision is written, then the daemon exits.

A worse state is entered at once (the staleness limit already delayed the trigger); a
better one only after its condition has held for recover_s without a break, so a device
that flaps does not make the controller flap. Every transition is returned with its
reason, for the log and the status API.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class State(enum.IntEnum):
    """Ordered by severity, so that max() is the worse of two."""

    STARTING = 0
    NORMAL = 1
    DEGRADED = 2
    SAFE = 3
    STOPPING = 4


@dataclass(frozen=True)
class Transition:
    t_s: float
    before: State
    after: State
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {
            "t_s": self.t_s,
            "from": self.before.name,
            "to": self.after.name,
            "reason": self.reason,
        }


@dataclass
class StateMachine:
    """Decides the state each cycle from what the estimate found."""

    recover_s: float
    startup_s: float
    started_s: float
    state: State = State.STARTING
    reason: str = "starting: waiting for every device to answer once"
    since_s: float = 0.0
    _better_since_s: float | None = None
    history: list[Transition] = field(default_factory=list)

    def update(
        self,
        now_s: float,
        *,
        all_answered: bool,
        problems: list[str],
        safe_reasons: list[str],
    ) -> Transition | None:
        """The state for this cycle; the transition if it changed."""
        if self.state is State.STOPPING:
            return None
        if safe_reasons:
            wanted, why = State.SAFE, "; ".join(safe_reasons)
        elif problems:
            wanted, why = State.DEGRADED, _summary(problems)
        else:
            wanted, why = State.NORMAL, "every input valid"
        if self.state is State.STARTING:
            if not all_answered and now_s - self.started_s < self.startup_s:
                return None
            if not all_answered:
                why = f"startup_s elapsed with devices still silent; {why}"
            return self._go(now_s, wanted, why)
        if wanted > self.state:
            self._better_since_s = None
            return self._go(now_s, wanted, why)
        if wanted == self.state:
            self._better_since_s = None
            self.reason = why
            return None
        # Better: only once it has held for recover_s.
        if self._better_since_s is None:
            self._better_since_s = now_s
        if now_s - self._better_since_s < self.recover_s:
            return None
        return self._go(now_s, wanted, f"{why} for {self.recover_s:g} s")

    def stop(self, now_s: float, reason: str) -> Transition:
        return self._go(now_s, State.STOPPING, reason)

    def _go(self, now_s: float, state: State, reason: str) -> Transition:
        transition = Transition(now_s, self.state, state, reason)
        self.state, self.reason, self.since_s = state, reason, now_s
        self._better_since_s = None
        self.history.append(transition)
        del self.history[:-50]
        return transition


def _summary(problems: list[str], shown: int = 3) -> str:
    text = "; ".join(problems[:shown])
    if len(problems) > shown:
        text += f"; and {len(problems) - shown} more"
    return text
