"""Energy counters: trapezoid integration of power samples, split at zero crossings (pure)."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any

SECONDS_PER_HOUR = 3600.0


class Step(enum.Enum):
    """What a sample did to a counter."""

    FIRST = "first"
    INTEGRATED = "integrated"
    GAP = "gap"
    DUPLICATE = "duplicate"
    OUT_OF_ORDER = "out_of_order"
    NO_POWER = "no_power"


def trapezoid(t0: float, p0: float, t1: float, p1: float) -> tuple[float, float]:
    """Energy (Wh) charged and discharged between two power samples; a sign change splits the interval."""
    dt = t1 - t0
    if dt <= 0:
        return 0.0, 0.0
    if p0 >= 0 and p1 >= 0:
        return (p0 + p1) / 2 * dt / SECONDS_PER_HOUR, 0.0
    if p0 <= 0 and p1 <= 0:
        return 0.0, -(p0 + p1) / 2 * dt / SECONDS_PER_HOUR
    # Power is linear between the samples, so it crosses zero at t0 + dt * p0 / (p0 - p1): two triangles.
    crossing = min(max(dt * p0 / (p0 - p1), 0.0), dt)  # clamped: float error must not make an area negative
    first = abs(p0) * crossing / 2 / SECONDS_PER_HOUR
    second = abs(p1) * (dt - crossing) / 2 / SECONDS_PER_HOUR
    return (first, second) if p0 > 0 else (second, first)


@dataclass(slots=True)
class EnergyCounter:
    """Monotonic Wh totals of one battery plus the sample the next interval starts from."""

    in_wh: float = 0.0
    out_wh: float = 0.0
    last_ts: float | None = None
    last_power: float | None = None

    def add(self, ts: float, power: float | None, max_gap: float) -> Step:
        """Integrate from the previous sample to this one, unless it is a duplicate, older, or after a gap."""
        if power is None or not math.isfinite(power) or not math.isfinite(ts):
            return Step.NO_POWER
        if self.last_ts is None or self.last_power is None:
            self.last_ts, self.last_power = ts, power
            return Step.FIRST
        if ts == self.last_ts:
            return Step.DUPLICATE
        if ts < self.last_ts:
            return Step.OUT_OF_ORDER
        if ts - self.last_ts > max_gap:
            self.last_ts, self.last_power = ts, power
            return Step.GAP
        charged, discharged = trapezoid(self.last_ts, self.last_power, ts, power)
        self.in_wh += charged
        self.out_wh += discharged
        self.last_ts, self.last_power = ts, power
        return Step.INTEGRATED

    def raise_to(self, in_wh: float | None, out_wh: float | None, tolerance: float = 1e-6) -> bool:
        """Take the larger of each total and another copy of it (recovery); True when one grew."""
        grew = False
        if in_wh is not None and math.isfinite(in_wh) and in_wh > self.in_wh + tolerance:
            self.in_wh, grew = in_wh, True
        if out_wh is not None and math.isfinite(out_wh) and out_wh > self.out_wh + tolerance:
            self.out_wh, grew = out_wh, True
        return grew

    def forget_anchor(self) -> None:
        self.last_ts = self.last_power = None

    def to_json(self) -> dict[str, Any]:
        return {
            "in_wh": self.in_wh,
            "out_wh": self.out_wh,
            "last_ts": self.last_ts,
            "last_power": self.last_power,
        }

    @classmethod
    def from_json(cls, obj: Any) -> EnergyCounter:
        """Rebuild from to_json(); ValueError when a value is missing, negative or not finite."""
        if not isinstance(obj, dict):
            raise ValueError("counter is not an object")
        totals = [_finite(obj.get(key), key) for key in ("in_wh", "out_wh")]
        if any(value is None or value < 0 for value in totals):
            raise ValueError("counter totals must be non-negative numbers")
        last_ts = _finite(obj.get("last_ts"), "last_ts")
        last_power = _finite(obj.get("last_power"), "last_power")
        if (last_ts is None) != (last_power is None):
            raise ValueError("counter anchor is half set")
        return cls(totals[0] or 0.0, totals[1] or 0.0, last_ts, last_power)


def _finite(value: Any, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number")
    return float(value)
