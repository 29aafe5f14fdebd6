"""A battery at one slave id, answered from today's bank physics (services/simulator/physics.py)."""

from __future__ import annotations

from services.simulator.physics import BankPhysics
from shared import registers
from shared.devices.battery import BATTERY
from shared.registers import Family, Value


class BatteryModel:
    family = BATTERY

    def __init__(self, physics: BankPhysics, slave: int, variant: Family = Family.BT2) -> None:
        self.physics = physics
        self.slave = slave
        self.variant = variant

    def values(self, t: float) -> dict[str, Value]:
        return self.physics.values(self.slave, t)

    def answer_read(self, start: int, count: int, t: float) -> list[int] | int:
        """Battery registers are sparse (arrays, gaps): the V1.7 map decides, not the blocks."""
        if not registers.block_is_mapped(start, count):
            return 0x02
        return registers.encode_block(start, count, self.values(t), family=self.variant)
