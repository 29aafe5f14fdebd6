"""When to reconnect, power-cycle the adapter, or give up (pure decisions, no I/O).

Docker and systemd restart a process that exits, but not one that is merely stuck, so the reader
escalates on its own: a streak of cycles without a single good reading first forces a reconnect,
then an adapter power-cycle through BlueZ, and finally exits non-zero for the supervisor.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    NONE = "none"
    RECONNECT = "reconnect"
    RESET_ADAPTER = "reset_adapter"
    EXIT = "exit"


@dataclass(slots=True)
class Watchdog:
    """Counts cycles without a good reading and says what to do at each threshold."""

    cycles: int
    adapter_reset: bool = True
    bad_cycles: int = 0

    def cycle_done(self, good_readings: int) -> Action:
        if good_readings:
            self.bad_cycles = 0
            return Action.NONE
        self.bad_cycles += 1
        if self.bad_cycles == self.cycles:
            return Action.RECONNECT
        if self.bad_cycles == 2 * self.cycles:
            return Action.RESET_ADAPTER if self.adapter_reset else Action.RECONNECT
        if self.bad_cycles >= 3 * self.cycles:
            return Action.EXIT
        return Action.NONE


@dataclass(slots=True)
class Backoff:
    """Capped exponential delay between connection attempts, reset on success."""

    initial: float = 1.0
    maximum: float = 60.0
    factor: float = 2.0
    failures: int = 0

    def next_delay(self) -> float:
        # The first retry goes at once; then initial, initial*factor, ... up to maximum.
        delay = min(self.maximum, self.initial * self.factor ** (self.failures - 1)) if self.failures else 0.0
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0
