"""Counters behind the reader's health topic (pure)."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

WINDOW = 100


@dataclass(slots=True)
class BatteryStats:
    recent: deque[bool] = field(default_factory=lambda: deque(maxlen=WINDOW))
    last_good_ts: float | None = None
    consecutive_failures: int = 0

    @property
    def link_quality(self) -> int:
        return round(100 * sum(self.recent) / len(self.recent)) if self.recent else 0


@dataclass(slots=True)
class ReaderStats:
    """Request outcomes (good requests of the last 100 = link quality), errors by kind, cycle timing."""

    recent: deque[bool] = field(default_factory=lambda: deque(maxlen=WINDOW))
    errors: Counter[str] = field(default_factory=Counter)
    batteries: dict[int, BatteryStats] = field(default_factory=dict)
    cycles: int = 0
    last_cycle_s: float | None = None
    last_cycle_floor_s: float | None = None
    readings_published: int = 0

    def battery(self, slave: int) -> BatteryStats:
        return self.batteries.setdefault(slave, BatteryStats())

    def request_ok(self, slave: int, ts: float) -> None:
        self.recent.append(True)
        stats = self.battery(slave)
        stats.recent.append(True)
        stats.last_good_ts = ts
        stats.consecutive_failures = 0

    def request_failed(self, slave: int | None, kind: str) -> None:
        self.errors[kind] += 1
        if slave is None:
            return
        self.recent.append(False)
        stats = self.battery(slave)
        stats.recent.append(False)
        stats.consecutive_failures += 1

    @property
    def link_quality(self) -> int:
        return round(100 * sum(self.recent) / len(self.recent)) if self.recent else 0

    def as_health(self) -> dict[str, Any]:
        return {
            "cycles": self.cycles,
            "last_cycle_s": None if self.last_cycle_s is None else round(self.last_cycle_s, 4),
            "last_cycle_floor_s": None
            if self.last_cycle_floor_s is None
            else round(self.last_cycle_floor_s, 4),
            "link_quality": self.link_quality,
            "errors": dict(self.errors),
            "readings_published": self.readings_published,
            "batteries": {
                str(slave): {
                    "link_quality": stats.link_quality,
                    "last_good_ts": stats.last_good_ts,
                    "consecutive_failures": stats.consecutive_failures,
                }
                for slave, stats in sorted(self.batteries.items())
            },
        }
