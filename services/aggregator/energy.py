"""Energy counters: trapezoid integration of power samples, split at zero crossings (pure).

One counter per battery, and per device of a family that names a power field to integrate
(``DeviceFamily.energy_power``: the Smart Shunt).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any

from shared.payloads import MAX_PACK_POWER_W

SECONDS_PER_HOUR = 3600.0
# Largest total one battery's counter may hold (50,000 kWh: a 10 kWh pack cycled daily for 13 years);
# a state file or retained state above it is not a counter this system produced.
MAX_COUNTER_WH = 5e7


class Step(enum.Enum):
    """What a sample did to a counter."""

    FIRST = "first"
    INTEGRATED = "integrated"
    GAP = "gap"
    DUPLICATE = "duplicate"
    OUT_OF_ORDER = "out_of_order"
    NO_POWER = "no_power"
    RESTART = "restart"  # the reader restarted (new boot_id): its monotonic clock did too, so no interval
    CLOCK_STEP = "clock_step"  # the sample's time went back by more than max_gap: counting restarts there


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
    """Monotonic Wh totals of one battery (or shunt) plus the sample the next interval starts from.

    The anchor (the last sample) holds the reader's wall time and, from readers that send it, its boot
    id and monotonic time. Between two samples of one boot the interval is measured on the monotonic
    clock, so a step of either host's wall clock (NTP after fake-hwclock, a manual change) neither stops
    nor inflates counting. Without monotonic time the wall times are used, as before.
    """

    in_wh: float = 0.0
    out_wh: float = 0.0
    last_ts: float | None = None
    last_power: float | None = None
    last_boot: str | None = None
    last_mono: float | None = None

    def add(
        self,
        ts: float,
        power: float | None,
        max_gap: float,
        *,
        boot: str | None = None,
        mono: float | None = None,
    ) -> Step:
        """Integrate from the previous sample to this one, unless it is a duplicate, older, or after a gap."""
        if power is None or not math.isfinite(power) or not math.isfinite(ts):
            return Step.NO_POWER
        if mono is not None and not math.isfinite(mono):
            mono = None
        if self.last_ts is None or self.last_power is None:
            self._anchor(ts, power, boot, mono)
            return Step.FIRST
        if mono is not None and self.last_mono is not None and boot is not None and boot == self.last_boot:
            return self._integrate(mono - self.last_mono, (ts, power, boot, mono), max_gap)
        if boot is not None and self.last_boot is not None and boot != self.last_boot:
            if ts < self.last_ts:
                return Step.OUT_OF_ORDER  # most likely a late copy of the earlier boot's reading
            self._anchor(ts, power, boot, mono)
            return Step.RESTART
        # No monotonic time on one side: wall time it is.
        if ts < self.last_ts - max_gap:
            self._anchor(ts, power, boot, mono)
            return Step.CLOCK_STEP
        return self._integrate(ts - self.last_ts, (ts, power, boot, mono), max_gap)

    def _integrate(
        self, dt: float, sample: tuple[float, float, str | None, float | None], max_gap: float
    ) -> Step:
        ts, power, boot, mono = sample
        if dt == 0:
            return Step.DUPLICATE
        if dt < -max_gap and mono is not None and self.last_mono is not None:
            # Monotonic time does not go back within a boot: the anchor cannot be trusted (a forged or
            # mangled copy); start again here rather than refuse every later reading.
            self._anchor(ts, power, boot, mono)
            return Step.CLOCK_STEP
        if dt < 0:
            return Step.OUT_OF_ORDER
        assert self.last_power is not None
        if dt > max_gap:
            self._anchor(ts, power, boot, mono)
            return Step.GAP
        charged, discharged = trapezoid(0.0, self.last_power, dt, power)
        self.in_wh += charged
        self.out_wh += discharged
        self._anchor(ts, power, boot, mono)
        return Step.INTEGRATED

    def _anchor(self, ts: float, power: float, boot: str | None, mono: float | None) -> None:
        self.last_ts, self.last_power = ts, power
        self.last_boot, self.last_mono = (
            (boot, mono) if boot is not None and mono is not None else (None, None)
        )

    def raise_to(self, in_wh: float | None, out_wh: float | None, tolerance: float = 1e-6) -> bool:
        """Take the larger of each total and another copy of it (recovery); True when one grew."""
        grew = False
        if in_wh is not None and math.isfinite(in_wh) and in_wh > self.in_wh + tolerance:
            self.in_wh, grew = in_wh, True
        if out_wh is not None and math.isfinite(out_wh) and out_wh > self.out_wh + tolerance:
            self.out_wh, grew = out_wh, True
        return grew

    def adopt(self, copy: EnergyCounter, max_gap: float) -> bool:
        """Take another copy's totals where they are larger (the retained state, newer than the file),
        resuming from whichever sample is newer without counting any interval twice; True when one grew."""
        if not (copy.in_wh > self.in_wh + 1e-6 or copy.out_wh > self.out_wh + 1e-6):
            return False
        live = EnergyCounter(0.0, 0.0, self.last_ts, self.last_power, self.last_boot, self.last_mono)
        self.in_wh, self.out_wh = max(self.in_wh, copy.in_wh), max(self.out_wh, copy.out_wh)
        self.last_ts, self.last_power = copy.last_ts, copy.last_power
        self.last_boot, self.last_mono = copy.last_boot, copy.last_mono
        if live.last_ts is not None and live.last_power is not None:
            if self.last_ts is None:
                self._anchor(live.last_ts, live.last_power, live.last_boot, live.last_mono)
            else:
                # Our own sample, if newer than the copy's, is integrated from it (or starts after a gap);
                # if older, the copy's sample stays the anchor.
                self.add(live.last_ts, live.last_power, max_gap, boot=live.last_boot, mono=live.last_mono)
        return True

    def forget_anchor(self) -> None:
        self.last_ts = self.last_power = self.last_mono = None
        self.last_boot = None

    def to_json(self, *, anchor: bool = True) -> dict[str, Any]:
        """The totals and (unless `anchor` is false) the last sample."""
        keep = anchor and self.last_ts is not None
        return {
            "in_wh": self.in_wh,
            "out_wh": self.out_wh,
            "last_ts": self.last_ts if keep else None,
            "last_power": self.last_power if keep else None,
            "last_boot": self.last_boot if keep else None,
            "last_mono": self.last_mono if keep else None,
        }

    @classmethod
    def from_json(cls, obj: Any) -> EnergyCounter:
        """Rebuild from to_json(); ValueError when a value is missing, negative or not finite."""
        if not isinstance(obj, dict):
            raise ValueError("counter is not an object")
        totals = [_finite(obj.get(key), key) for key in ("in_wh", "out_wh")]
        if any(value is None or value < 0 for value in totals):
            raise ValueError("counter totals must be non-negative numbers")
        if any(value is not None and value > MAX_COUNTER_WH for value in totals):
            raise ValueError(f"counter totals must be at most {MAX_COUNTER_WH / 1000:.0f} kWh")
        last_ts = _finite(obj.get("last_ts"), "last_ts")
        last_power = _finite(obj.get("last_power"), "last_power")
        if last_power is not None and abs(last_power) > MAX_PACK_POWER_W:
            raise ValueError(f"last_power must be within +-{MAX_PACK_POWER_W:.0f} W")
        if (last_ts is None) != (last_power is None):
            raise ValueError("counter anchor is half set")
        last_mono = _finite(obj.get("last_mono"), "last_mono")
        boot = obj.get("last_boot")
        if not (boot is None or (isinstance(boot, str) and len(boot) <= 64)) or (boot is None) != (
            last_mono is None
        ):
            raise ValueError("counter boot id and monotonic time must be set together")
        if last_ts is None:
            boot, last_mono = None, None
        return cls(totals[0] or 0.0, totals[1] or 0.0, last_ts, last_power, boot, last_mono)


def counter_json(counter: EnergyCounter, now: float, max_ahead: float) -> dict[str, Any]:
    """The copy saved and published: an anchor ahead of this host's clock is left out (after a restart
    it would make every reading until that time look out of order)."""
    future = counter.last_ts is not None and counter.last_ts > now + max_ahead
    return counter.to_json(anchor=not future)


def _finite(value: Any, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number")
    return float(value)
