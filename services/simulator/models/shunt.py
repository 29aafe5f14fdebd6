"""A Smart Shunt 300 on a bank: pushes live frames of the bank's voltage and current (no requests)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from shared.devices.base import decode
from shared.devices.shunt import SHUNT, encode_payload, payload_words
from shared.registers import Value

from .base import SimBank


class BankState(NamedTuple):
    """What the shunt measures at one instant: volts, amps (+ = charging), state of charge 0..1."""

    voltage: float
    current: float
    soc: float


class ShuntModel:
    family = SHUNT

    def __init__(
        self,
        bank: SimBank | None = None,
        *,
        slave: int = 0,
        starter_volts: float = 12.7,
        measure: Callable[[float], BankState] | None = None,
    ) -> None:
        """``measure(t)`` (when given) reads another bank model at simulated time ``t``, e.g. the battery
        simulator's physics; otherwise the shunt sits on ``bank``."""
        self.slave = slave
        self.bank = bank or SimBank()
        self.starter_volts = starter_volts
        self._measure = measure

    def state(self, t: float) -> BankState:
        if self._measure is not None:
            return self._measure(t)
        return BankState(self.bank.voltage, self.bank.current, self.bank.soc)

    def values(self, t: float) -> dict[str, Value]:
        # Without ``measure`` the bank is advanced by whoever charges or draws it, not by t.
        state = self.state(t)
        return {
            "voltage": round(state.voltage, 3),
            "current": round(state.current, 3),
            "starter_voltage": self.starter_volts,
            "soc": round(100 * state.soc, 1),
            "temperature": 21.5,
        }

    def notification(self, t: float) -> bytes:
        """One 110-byte live frame, as sent on characteristic c411."""
        return encode_payload(self.values(t))


def round_trip(model: ShuntModel, t: float) -> dict[str, Value]:
    """What a reader decodes from the model's frame (for tests and the simulator's truth)."""
    return decode(SHUNT, 0, payload_words(model.notification(t)))[0]
