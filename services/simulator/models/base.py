"""What every simulated device shares: a day curve, a small 12 V bank, the Modbus answer, and the
charger (controller, DC-DC charger) that charges either that small bank or the battery physics."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from services.simulator.physics import (
    DAY,
    HOUR,
    BankPhysics,
    BankState,
    SmoothNoise,
    clear_sky,
    cloud_factor,
    ocv,
)
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
        sun = clear_sky(t)
        if not sun:
            return 0.0
        return sun * cloud_factor(self._clouds(t))


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


STEP = 5.0  # s of simulated time per integration step of a charger on its own SimBank
FULL_SOC = 0.995  # a SimBank this full takes no more charge
LFP_CELL_MAX = 3.65  # V, a charged LFP cell


class Charger:
    """A Renogy charger: inputs (PV, alternator) whose power follows the hour, an efficiency, its
    own loads, daily and lifetime counters, and the battery side of the 0x0100 block.

    On its own (``physics=None``) it charges its :class:`SimBank` on its own :data:`STEP` grid. Given
    the battery ``physics`` it is wired to the simulated packs instead (:meth:`BankPhysics.attach`):
    the physics steps it on the packs' grid, the packs carry what it delivered and its loads drew,
    and it reports the packs' voltage, state of charge and temperature. A charger whose battery
    voltage range cannot hold the bank's (a 12 V DC-DC charger on a 48 V bank) reports it in a 12 V
    frame, volts x 4/cells and amps x cells/4: the same watts.
    """

    family: DeviceFamily
    model_name: str
    efficiency: float
    idle_state: str  # the charging state while no input gives power
    replaces_solar = False  # a controller stands for the bank's panels (BankPhysics.attach)

    def __init__(
        self, slave: int, seed: int, bank: SimBank, start: float, physics: BankPhysics | None
    ) -> None:
        self.slave = slave
        self.bank = bank  # unused while coupled to ``physics``
        self.physics = physics
        self._sun = DayCurve(random.Random(f"{seed}:{self.family.kind}:{slave}"))
        self._t = start
        self._counters = Counters()
        self._inputs: dict[str, float] = {}  # W each input gives over the current step
        self._charge_a = self._draw_a = 0.0  # A into the bank / drawn by the own loads (bank frame)
        self._out_w = 0.0
        self._offered: dict[str, float] = {}
        self._full = self._curtailed = False
        self._frame = 1.0
        if physics is not None:
            cells = physics.cells
            if cells * LFP_CELL_MAX > self.family.ranges["battery_voltage"][1]:
                self._frame = 4 / cells
            self._t = physics.grid_time
            physics.attach(self, replaces_solar=self.replaces_solar)
        else:
            self._draw_a = self.draw_w(bank.soc) / bank.voltage  # its loads draw from the start

    # -- what a family says -------------------------------------------------------------------------

    def available(self, t: float, volts: float) -> dict[str, float]:
        """W each input could give at ``t`` into a battery at ``volts`` (the charger's frame)."""
        raise NotImplementedError

    def draw_w(self, soc: float) -> float:
        """W the charger's own loads draw from a bank at ``soc``."""
        return 0.0

    def generated_w(self) -> float:
        """W counted as generation (the charger's input, or its output after losses)."""
        return sum(self._inputs.values())

    # -- both modes ---------------------------------------------------------------------------------

    def _advance(self, t: float) -> None:
        if self.physics is not None:
            self.physics.advance_to(t)  # it settles this charger on every grid point on the way
            return
        bank = self.bank
        while self._t + STEP <= t:
            self._t += STEP
            volts = bank.voltage
            self._full = bank.soc >= FULL_SOC
            inputs = self.available(self._t, volts)
            self._inputs = dict.fromkeys(inputs, 0.0) if self._full else inputs
            self._out_w = self.efficiency * sum(self._inputs.values())
            self._charge_a = self._out_w / volts
            self._draw_a = self.draw_w(bank.soc) / volts
            bank.step(self._charge_a - self._draw_a, STEP)
            self._counters.add(self._t, self._charge_a, self.generated_w(), STEP)

    def offer(self, t: float, bank: BankState) -> tuple[float, float]:
        """:class:`services.simulator.physics.Charger`: what it could deliver and what it draws."""
        self._offered = self.available(t, bank.voltage * self._frame)
        charge = self.efficiency * sum(self._offered.values()) / bank.voltage
        return charge, self.draw_w(bank.soc) / bank.voltage

    def settle(self, t: float, bank: BankState, delivered: float, limited: bool) -> None:
        """:class:`services.simulator.physics.Charger`: ``delivered`` A flow over [t, t + step)
        (the physics has just asked :meth:`offer` at this ``t``)."""
        if t > self._t:  # book the step that has just ended (a re-settle at the same t books nothing)
            self._counters.add(t, self._charge_a / self._frame, self.generated_w(), t - self._t)
        self._t = t
        offered = self.efficiency * sum(self._offered.values()) / bank.voltage
        share = delivered / offered if offered else 0.0
        self._inputs = {name: watts * share for name, watts in self._offered.items()}
        self._charge_a = delivered
        self._draw_a = self.draw_w(bank.soc) / bank.voltage
        self._out_w = delivered * bank.voltage
        self._full = bank.full
        self._curtailed = limited

    def _bank(self, t: float) -> tuple[float, float, float]:
        """Volts (in the charger's frame), state of charge and battery temperature at ``t``."""
        self._advance(t)
        if self.physics is None:
            return self.bank.voltage, self.bank.soc, 20.0
        state = self.physics.state_at(t)
        return state.voltage * self._frame, state.soc, state.temperature

    def _charging_state(self) -> str:
        if self._full:
            return "floating"
        if self._curtailed:
            return "boost"  # the BMS tapers: the charger holds the voltage
        return "mppt" if self._out_w else self.idle_state

    def battery_values(self, volts: float, soc: float, temperature: float) -> dict[str, Value]:
        """The fields every charger's 0x0100 block shares (the family adds its ports)."""
        c = self._counters
        return {
            "model": self.model_name,
            "device_address": self.slave & 0xFF,
            "battery_soc": round(100 * soc),
            "battery_voltage": round(volts, 1),
            "charging_current": round(self._charge_a / self._frame, 2),
            "battery_temperature": round(temperature),
            "max_charging_power_today": round(c.max_w_today),
            "charging_ah_today": round(c.ah_today),
            "generation_today": round(c.wh_today),
            "charging_ah_total": round(c.ah_total),
            "generation_total": round(c.wh_total),
            "operating_days": c.day,
            "charging_state": self._charging_state(),
            "battery_type": "lithium",
        }
