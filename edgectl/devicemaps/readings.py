"""What a driver hands up for every point: a value that may always be invalid.

Decoding never raises: NaN, a SunSpec "not implemented" sentinel, an unimplemented scale
factor, a value outside its plausible range or one that stopped changing each become an
invalid Reading with a reason, and the control layer decides what an invalid value means.
"""

from __future__ import annotations

from dataclasses import dataclass

Value = float | int | str


@dataclass(frozen=True, slots=True)
class Reading:
    """One point's value with its unit, the (monotonic) time it was read, and validity."""

    value: Value | None
    unit: str
    t_s: float
    valid: bool
    reason: str = ""  # why it is invalid; empty when valid

    @staticmethod
    def ok(value: Value, unit: str, t_s: float) -> Reading:
        return Reading(value, unit, t_s, True)

    @staticmethod
    def invalid(reason: str, unit: str, t_s: float, value: Value | None = None) -> Reading:
        return Reading(value, unit, t_s, False, reason)

    def age_s(self, now_s: float) -> float:
        return now_s - self.t_s

    def usable(self, now_s: float, stale_s: float) -> bool:
        """Valid and not older than stale_s at now_s."""
        return self.valid and now_s - self.t_s <= stale_s


# Reasons, shared so that tests and the status API can match on them.
NOT_IMPLEMENTED = "not implemented (SunSpec sentinel)"
SF_NOT_IMPLEMENTED = "scale factor not implemented"
NOT_A_NUMBER = "not a number"
OUT_OF_RANGE = "out of range"
FROZEN = "value frozen"
NO_ANSWER = "no answer"
STALE = "stale"
