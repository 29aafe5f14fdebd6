"""A Smart Shunt 300 on a bank: pushes live frames of the bank's voltage and current (no requests)."""

from __future__ import annotations

from shared.devices.base import decode
from shared.devices.shunt import SHUNT, encode_payload, payload_words
from shared.registers import Value

from .base import SimBank


class ShuntModel:
    family = SHUNT

    def __init__(self, bank: SimBank | None = None, *, slave: int = 0, starter_volts: float = 12.7) -> None:
        self.slave = slave
        self.bank = bank or SimBank()
        self.starter_volts = starter_volts

    def values(self, t: float) -> dict[str, Value]:
        del t  # the bank is advanced by whoever charges or draws it
        return {
            "voltage": round(self.bank.voltage, 3),
            "current": round(self.bank.current, 3),
            "starter_voltage": self.starter_volts,
            "soc": round(100 * self.bank.soc, 1),
            "temperature": 21.5,
        }

    def notification(self, t: float) -> bytes:
        """One 110-byte live frame, as sent on characteristic c411."""
        return encode_payload(self.values(t))


def round_trip(model: ShuntModel, t: float) -> dict[str, Value]:
    """What a reader decodes from the model's frame (for tests and the simulator's truth)."""
    return decode(SHUNT, 0, payload_words(model.notification(t)))[0]
