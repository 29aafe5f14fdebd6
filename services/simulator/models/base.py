"""What every simulated device shares: a day curve, a small 12 V bank, and the Modbus answer."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from services.simulator.physics import DAY, HOUR, SmoothNoise, ocv
from shared.devices.base import DeviceFamily, encode, mapped_registers
from shared.registers import Value

EXC_ILLEGAL_FUNCTION = 0x01
EXC_ILLEGAL_ADDRESS = 0x02
EXC_ILLEGAL_VALUE = 0x03


@dataclass(frozen=True, slots=True)
class WriteRefused:
    """A write answered with Modbus exception ``code`` (01, 02, 03)."""

    code: int


class DeviceModel(Protocol):
    """A simulated device at one slave id: its register values at simulated time ``t``."""

    family: DeviceFamily
    slave: int

    def values(self, t: float) -> dict[str, Value]: ...


def answer_read(model: DeviceModel, start: int, count: int, t: float) -> list[int] | int:
    """The registers a real device returns for ``start`` x ``count``, or exception code 02 when the
    read touches a register outside the family's blocks (as a real device refuses it)."""
    mapped = mapped_registers(model.family)
    if not all(address in mapped for address in range(start, start + count)):
        return EXC_ILLEGAL_ADDRESS
    return encode(model.family, start, count, model.values(t))


class DayCurve:
    """Irradiance 0..1 over simulated time: sunrise 06:00, sunset 19:00, seeded clouds."""

    def __init__(self, rng: random.Random) -> None:
        self._clouds = SmoothNoise(rng, (420.0, 1_380.0, 4_260.0))

    def __call__(self, t: float) -> float:
        hour = (t % DAY) / HOUR
        if not 6.0 < hour < 19.0:
            return 0.0
        sun = math.pow(math.sin(math.pi * (hour - 6.0) / 13.0), 1.3)
        return sun * min(1.0, max(0.15, 0.72 + 0.45 * self._clouds(t)))


class SimBank:
    """An LFP bank (``cells`` in series: 4 = 12 V, 16 = 48 V) the chargers charge and the loads draw."""

    def __init__(self, capacity_ah: float = 200.0, soc: float = 0.6, cells: int = 4) -> None:
        self.capacity_ah = capacity_ah
        self.cells = cells
        self.soc = soc
        self.current = 0.0  # A, + = charging

    def step(self, current: float, dt: float) -> None:
        self.current = current
        self.soc = min(1.0, max(0.0, self.soc + current * dt / HOUR / self.capacity_ah))

    @property
    def voltage(self) -> float:
        return self.cells * ocv(self.soc) + 0.0025 * self.cells * self.current


class Counters:
    """Daily and lifetime counters of a charger (Ah, Wh); the daily ones reset at midnight."""

    def __init__(self) -> None:
        self.day = 0
        self.ah_today = self.wh_today = self.ah_total = self.wh_total = 0.0
        self.max_w_today = 0.0

    def add(self, t: float, amps: float, watts: float, dt: float) -> None:
        day = int(t // DAY)
        if day != self.day:
            self.day, self.ah_today, self.wh_today, self.max_w_today = day, 0.0, 0.0, 0.0
        self.ah_today += amps * dt / HOUR
        self.wh_today += watts * dt / HOUR
        self.ah_total += amps * dt / HOUR
        self.wh_total += watts * dt / HOUR
        self.max_w_today = max(self.max_w_today, watts)


def clamp(values: Mapping[str, Value], family: DeviceFamily) -> dict[str, Value]:
    """Keep numbers inside the family's ranges (a model never reports an impossible value)."""
    out = dict(values)
    for name, (low, high) in family.ranges.items():
        value = out.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = type(value)(min(high, max(low, value)))
    return out
