"""The state machine as cycle tables: time -> what the estimate found -> the state after."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from edgectl.control.states import State, StateMachine

RECOVER_S = 10.0
STARTUP_S = 10.0
LOST = ["pv-1: p_w stale: counts as 0 W"]
UNSAFE = ["every battery lost"]


@dataclass(frozen=True)
class Row:
    """One cycle: at t_s, these inputs, then this state."""

    t_s: float
    state: State
    problems: tuple[str, ...] = ()
    safe: tuple[str, ...] = ()
    answered: bool = True


def machine(started_s: float = 0.0) -> StateMachine:
    return StateMachine(recover_s=RECOVER_S, startup_s=STARTUP_S, started_s=started_s)


def run(sm: StateMachine, rows: list[Row]) -> None:
    """Feed the rows in order, checking the state after each."""
    for row in rows:
        sm.update(
            row.t_s,
            all_answered=row.answered,
            problems=list(row.problems),
            safe_reasons=list(row.safe),
        )
        assert sm.state is row.state, (row, sm.reason)


def started(sm: StateMachine, state: State = State.NORMAL) -> StateMachine:
    """Leave STARTING at t = 0 into `state`."""
    problems = tuple(LOST) if state is State.DEGRADED else ()
    safe = tuple(UNSAFE) if state is State.SAFE else ()
    run(sm, [Row(0.0, state, problems, safe)])
    return sm


def test_starting_waits_for_every_device_then_leaves_at_once() -> None:
    sm = machine()
    run(
        sm,
        [
            Row(0.0, State.STARTING, answered=False),
            Row(4.0, State.STARTING, answered=False),
            Row(5.0, State.NORMAL, answered=True),
        ],
    )
    assert [(t.before, t.after, t.t_s) for t in sm.history] == [(State.STARTING, State.NORMAL, 5.0)]
    assert sm.since_s == 5.0


def test_starting_ends_after_startup_s_even_with_devices_silent() -> None:
    sm = machine(started_s=100.0)
    run(
        sm,
        [
            Row(100.0, State.STARTING, LOST, answered=False),
            Row(109.9, State.STARTING, LOST, answered=False),
            Row(110.0, State.DEGRADED, LOST, answered=False),
        ],
    )
    assert sm.history[-1].reason.startswith("startup_s elapsed with devices still silent")
    assert "pv-1" in sm.history[-1].reason


def test_starting_does_not_hold_back_safe_once_devices_answered() -> None:
    sm = machine()
    run(sm, [Row(0.0, State.STARTING, answered=False), Row(1.0, State.SAFE, safe=UNSAFE)])
    assert sm.reason == "every battery lost"


@pytest.mark.parametrize(
    ("start", "rows"),
    [
        (State.NORMAL, [Row(1.0, State.DEGRADED, LOST)]),
        (State.NORMAL, [Row(1.0, State.SAFE, safe=UNSAFE)]),
        (State.DEGRADED, [Row(1.0, State.SAFE, LOST, UNSAFE)]),
    ],
    ids=["normal-degraded", "normal-safe", "degraded-safe"],
)
def test_worse_states_are_entered_at_once(start: State, rows: list[Row]) -> None:
    sm = started(machine(), start)
    run(sm, rows)
    assert sm.history[-1].t_s == 1.0


def test_safe_beats_degraded_when_both_hold() -> None:
    sm = started(machine())
    run(sm, [Row(1.0, State.SAFE, LOST, UNSAFE)])
    assert sm.reason == "every battery lost"


def test_better_state_only_after_recover_s_of_the_better_condition() -> None:
    sm = started(machine(), State.DEGRADED)
    run(
        sm,
        [
            Row(1.0, State.DEGRADED),  # the input is back: the clock starts here
            Row(5.0, State.DEGRADED),
            Row(10.9, State.DEGRADED),
            Row(11.0, State.NORMAL),
        ],
    )
    last = sm.history[-1]
    assert (last.before, last.after, last.t_s) == (State.DEGRADED, State.NORMAL, 11.0)
    assert last.reason == "every input valid for 10 s"


def test_a_flap_resets_the_recovery() -> None:
    sm = started(machine(), State.DEGRADED)
    run(
        sm,
        [
            Row(1.0, State.DEGRADED),
            Row(9.0, State.DEGRADED),
            Row(10.0, State.DEGRADED, LOST),  # lost again for one cycle
            Row(11.0, State.DEGRADED),  # recovery starts over here
            Row(20.0, State.DEGRADED),
            Row(21.0, State.NORMAL),
        ],
    )
    assert [t.after for t in sm.history] == [State.DEGRADED, State.NORMAL]


def test_safe_recovers_to_degraded_then_normal_each_after_recover_s() -> None:
    sm = started(machine(), State.SAFE)
    run(
        sm,
        [
            Row(1.0, State.SAFE, LOST),  # only degraded now: waits
            Row(11.0, State.DEGRADED, LOST),
            Row(12.0, State.DEGRADED),
            Row(21.9, State.DEGRADED),
            Row(22.0, State.NORMAL),
        ],
    )
    assert [(t.before, t.after) for t in sm.history[1:]] == [
        (State.SAFE, State.DEGRADED),
        (State.DEGRADED, State.NORMAL),
    ]


def test_a_worse_condition_during_recovery_is_entered_at_once() -> None:
    sm = started(machine(), State.DEGRADED)
    run(sm, [Row(1.0, State.DEGRADED), Row(5.0, State.SAFE, safe=UNSAFE)])
    # ...and recovery from SAFE counts from when it cleared, not from t = 1.
    run(sm, [Row(6.0, State.SAFE), Row(15.9, State.SAFE), Row(16.0, State.NORMAL)])


def test_stopping_is_final() -> None:
    sm = started(machine())
    transition = sm.stop(3.0, "SIGTERM")
    assert (transition.before, transition.after, transition.reason) == (
        State.NORMAL,
        State.STOPPING,
        "SIGTERM",
    )
    run(sm, [Row(4.0, State.STOPPING), Row(50.0, State.STOPPING, safe=UNSAFE)])
    assert sm.update(60.0, all_answered=True, problems=[], safe_reasons=[]) is None
    assert sm.history[-1].after is State.STOPPING


def test_every_transition_is_returned_and_recorded_with_its_reason() -> None:
    sm = machine()
    seen = []
    for t, problems, safe in [
        (0.0, [], []),
        (1.0, LOST, []),
        (2.0, LOST, UNSAFE),
        (3.0, [], []),
        (13.0, [], []),
    ]:
        transition = sm.update(t, all_answered=True, problems=problems, safe_reasons=safe)
        if transition is not None:
            seen.append(transition)
    assert seen == sm.history
    assert [t.as_dict() for t in sm.history] == [
        {"t_s": 0.0, "from": "STARTING", "to": "NORMAL", "reason": "every input valid"},
        {"t_s": 1.0, "from": "NORMAL", "to": "DEGRADED", "reason": LOST[0]},
        {"t_s": 2.0, "from": "DEGRADED", "to": "SAFE", "reason": UNSAFE[0]},
        {"t_s": 13.0, "from": "SAFE", "to": "NORMAL", "reason": "every input valid for 10 s"},
    ]


def test_no_transition_while_the_state_holds_but_its_reason_follows() -> None:
    sm = started(machine(), State.DEGRADED)
    assert sm.update(1.0, all_answered=True, problems=["r2: silent"], safe_reasons=[]) is None
    assert sm.reason == "r2: silent"
    assert len(sm.history) == 1


def test_many_problems_are_summarised() -> None:
    sm = started(machine())
    problems = [f"pv-{k}: stale" for k in range(1, 6)]
    sm.update(1.0, all_answered=True, problems=problems, safe_reasons=[])
    assert sm.reason == "pv-1: stale; pv-2: stale; pv-3: stale; and 2 more"


def test_history_is_capped_at_the_last_50_transitions() -> None:
    sm = machine(started_s=0.0)
    sm.recover_s = 0.0  # every better state at once, so that each cycle is a transition
    for k in range(120):
        problems = LOST if k % 2 else []
        sm.update(float(k), all_answered=True, problems=problems, safe_reasons=[])
    assert len(sm.history) == 50
    assert sm.history[-1].t_s == 119.0
    assert sm.history[0].t_s == 70.0
