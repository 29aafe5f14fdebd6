"""Battery physics of a bank of RBT50LFP48S packs, evaluated in simulated time (pure, deterministic).

State advances on a fixed grid of ``step`` simulated seconds: the current is constant within a
step (quantised to the register's 0.01 A), so the charge counted equals the integral of the
reported current exactly and a reading depends only on the seed and the simulated time, never on
when or how often it was asked for.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from shared.registers import CELL_VOLTAGE_RANGE, TEMPERATURE_RANGE, Value

DAY = 86_400.0
HOUR = 3_600.0

# LFP open-circuit voltage per cell against state of charge: knees at both ends, ~3.3 V plateau.
_OCV_SOC = (0.0, 0.01, 0.03, 0.06, 0.10, 0.20, 0.35, 0.50, 0.65, 0.80, 0.90, 0.95, 0.98, 0.995, 1.0)
_OCV_VOLT = (2.50, 2.80, 3.02, 3.15, 3.21, 3.26, 3.29, 3.30, 3.31, 3.33, 3.34, 3.36, 3.39, 3.45, 3.52)

NOMINAL_CELL_VOLTS = 3.3  # V, an LFP cell on its plateau
CELL_RESISTANCE = 0.0015  # ohm, per cell
CHARGE_CURRENT_LIMIT = 55.0  # A, per pack (register 5051)
DISCHARGE_CURRENT_LIMIT = 55.0  # A, per pack (register 5052, negative there)
TAPER_START = 0.95  # SOC where the BMS starts tapering the charge current
TAIL_CURRENT = 0.5  # A; charging ends when the tapering current falls below this
FULL_SOC = 0.995  # SOC reported as "fully charged" (status2 bit 11)
EMPTY_FRACTION = 1e-4  # below this the BMS treats the pack as empty and opens the discharge MOSFET
DISCHARGE_RESUME_SOC = 0.05  # SOC at which a pack cut off when empty accepts discharge again
THERMAL_TAU = 3.0 * HOUR  # s, pack to ambient
THERMAL_CAPACITY = 25_000.0  # J/K, about 25 kg of pack

# Status bits (V1.7 spec, see shared/registers.py and the brief §3.1).
S1_CHARGE_MOSFET = 1 << 1
S1_DISCHARGE_MOSFET = 1 << 2
S1_MODULE_POWER = 1 << 3
S1_CELL_UNDER_VOLTAGE = 1 << 7
S2_CELL_LOW_WARN = 1 << 0
S2_CELL_HIGH_WARN = 1 << 1
S2_MODULE_LOW_WARN = 1 << 2
S2_MODULE_HIGH_WARN = 1 << 3
S2_CHARGE_LOW_TEMP = 1 << 4
S2_CHARGE_HIGH_TEMP = 1 << 5
S2_DISCHARGE_LOW_TEMP = 1 << 6
S2_DISCHARGE_HIGH_TEMP = 1 << 7
S2_OBSERVED_BIT9 = 1 << 9  # reserved in the spec, yet set in every captured RBT50LFP48S reply
S2_FULLY_CHARGED = 1 << 11
S2_DISCHARGING = 1 << 14
S2_CHARGING = 1 << 15
CD_CHARGE_ENABLE = 1 << 7
CD_DISCHARGE_ENABLE = 1 << 6


def ocv(soc: float) -> float:
    """Open-circuit voltage of one LFP cell at ``soc`` (0..1, clamped)."""
    soc = min(1.0, max(0.0, soc))
    i = bisect.bisect_right(_OCV_SOC, soc)
    if i >= len(_OCV_SOC):
        return _OCV_VOLT[-1]
    s0, s1 = _OCV_SOC[i - 1], _OCV_SOC[i]
    v0, v1 = _OCV_VOLT[i - 1], _OCV_VOLT[i]
    return v0 + (v1 - v0) * (soc - s0) / (s1 - s0)


@dataclass(frozen=True, slots=True)
class PackSpec:
    """The fixed identity of one pack; defaults are an RBT50LFP48S."""

    slave: int
    serial: str = "22RBH4A051020000"
    capacity: float = 50.0
    model: str = "RBT50LFP48S"
    firmware: str = "V104"
    cells: int = 15
    sensors: int = 15
    manufacturer: str = "RENOGY"


def default_packs(slaves: Sequence[int], *, distinct_serials: bool = False) -> tuple[PackSpec, ...]:
    """RBT50LFP48S packs at these ids; the second reads 49.995 Ah as in the captured bank."""
    packs = []
    for index, slave in enumerate(slaves):
        serial = f"22RBH4A0510{20000 + index:05d}" if distinct_serials else "22RBH4A051020000"
        packs.append(PackSpec(slave, serial=serial, capacity=49.995 if index == 1 else 50.0))
    return tuple(packs)


class SmoothNoise:
    """Deterministic smooth noise in -1..1: a mean of seeded sines."""

    __slots__ = ("_terms",)

    def __init__(self, rng: random.Random, periods: Sequence[float]) -> None:
        self._terms: tuple[tuple[float, float], ...] = tuple(
            (2.0 * math.pi / (p * rng.uniform(0.8, 1.25)), rng.uniform(0.0, 2.0 * math.pi)) for p in periods
        )

    def __call__(self, t: float) -> float:
        total = 0.0
        for w, phase in self._terms:
            total += math.sin(w * t + phase)
        return total / len(self._terms)


def clear_sky(t: float) -> float:
    """Irradiance 0..1 of a cloudless day at simulated time ``t``: sunrise 06:00, sunset 19:00."""
    hour = (t % DAY) / HOUR
    if not 6.0 < hour < 19.0:
        return 0.0
    return math.pow(math.sin(math.pi * (hour - 6.0) / 13.0), 1.3)


def cloud_factor(noise: float) -> float:
    """The share of the clear-sky irradiance that passes seeded clouds (``noise`` in -1..1)."""
    return min(1.0, max(0.15, 0.72 + 0.45 * noise))


class BankProfile:
    """Net bank current over simulated time: solar charging by day, loads by night, idle spells at 0 A."""

    def __init__(self, rng: random.Random, packs: int) -> None:
        self.solar_peak = rng.uniform(8.0, 12.0) * packs
        self.base_load = rng.uniform(1.5, 2.5) * packs
        self.evening_load = rng.uniform(3.0, 5.0) * packs
        self._clouds = SmoothNoise(rng, (420.0, 1_380.0, 4_260.0, 9_000.0))
        self._load = SmoothNoise(rng, (97.0, 610.0, 2_700.0))
        self._idle = SmoothNoise(rng, (1_900.0, 5_300.0, 14_000.0))

    def solar(self, t: float) -> float:
        """Charging current from the panels (A, >= 0)."""
        sun = clear_sky(t)
        if not sun:
            return 0.0
        return self.solar_peak * sun * cloud_factor(self._clouds(t))

    def load(self, t: float) -> float:
        """Current drawn by the loads (A, >= 0); zero during idle spells."""
        if self._idle(t) > 0.3:
            return 0.0
        hour = (t % DAY) / HOUR
        evening = math.sin(math.pi * (hour - 17.0) / 6.0) if 17.0 < hour < 23.0 else 0.0
        return max(0.0, self.base_load * (1.0 + 0.4 * self._load(t)) + self.evening_load * evening)

    def net(self, t: float) -> float:
        """Bank current, + = charging."""
        return self.solar(t) - self.load(t)


def ambient_model(rng: random.Random) -> tuple[float, SmoothNoise, SmoothNoise]:
    return rng.uniform(10.0, 24.0), SmoothNoise(rng, (3 * DAY, 7 * DAY)), SmoothNoise(rng, (1_800.0, 5_000.0))


class PackState:
    """Mutable state of one pack on the grid, plus its fixed manufacturing spread."""

    __slots__ = (
        "cell_offsets",
        "cell_resistance",
        "current",
        "cycles_base",
        "discharge_cut",
        "discharged",
        "remaining",
        "sensor_gradient",
        "sensor_offsets",
        "share",
        "spec",
        "temperature",
    )

    def __init__(self, spec: PackSpec, rng: random.Random, soc: float, temperature: float) -> None:
        self.spec = spec
        self.remaining = spec.capacity * soc
        self.temperature = temperature
        self.current = 0.0
        self.discharged = 0.0
        self.discharge_cut = False
        self.cycles_base = rng.randint(3, 60)
        self.share = 1.0 + rng.uniform(-0.04, 0.04)
        self.cell_offsets = tuple(rng.uniform(-0.006, 0.006) for _ in range(spec.cells))
        self.cell_resistance = tuple(CELL_RESISTANCE * rng.uniform(0.9, 1.1) for _ in range(spec.cells))
        self.sensor_offsets = tuple(rng.uniform(-0.6, 0.6) for _ in range(spec.sensors))
        self.sensor_gradient = tuple(rng.uniform(0.0, 1.0) for _ in range(spec.sensors))

    @property
    def soc(self) -> float:
        return self.remaining / self.spec.capacity

    @property
    def resistance(self) -> float:
        return sum(self.cell_resistance)


@dataclass(frozen=True, slots=True)
class PackReading:
    """The true physical state of one pack at one simulated instant (not yet quantised)."""

    slave: int
    sim_time: float
    current: float
    remaining: float
    capacity: float
    soc: float
    cell_voltages: tuple[float, ...]
    temperatures: tuple[float, ...]
    ambient: float
    cycle_count: int
    discharge_cut: bool

    @property
    def voltage(self) -> float:
        return sum(self.cell_voltages)


@dataclass(frozen=True, slots=True)
class BankState:
    """What a charger wired to the bank sees of it (see :class:`Charger`)."""

    voltage: float  # V at the terminals: the packs' mean (they are in parallel)
    soc: float  # charge / capacity of the whole bank, 0..1
    current: float  # A into the bank, + = charging
    temperature: float  # °C, the packs' mean
    full: bool  # every pack's BMS refuses more charge


class Charger(Protocol):
    """A device that charges the bank and may draw it (a charge controller, a DC-DC charger).

    The physics drives it on its own grid, so what flows depends only on seed and simulated time:
    at every grid point ``t`` it asks :meth:`offer` for the amps the charger could push into the
    bank and the amps its own loads draw over the next step, lets the BMS take what it will, and
    tells :meth:`settle` the amps actually delivered (less than offered when the bank is full or
    tapering, ``limited``; a full bank still takes what the loads draw).
    """

    def offer(self, t: float, bank: BankState) -> tuple[float, float]: ...

    def settle(self, t: float, bank: BankState, delivered: float, limited: bool) -> None: ...


CURRENT_QUANTUM = 0.01  # A, the current register's step


def _quantise_current(current: float) -> float:
    """Truncate toward zero to the register's 0.01 A so limits computed on the raw value still hold."""
    return math.trunc(current * 100.0) / 100.0


class BankPhysics:
    """N packs sharing one bank current; deterministic for a given seed and simulated time."""

    def __init__(
        self, packs: Sequence[PackSpec], *, seed: int = 0, start: float = 10 * HOUR, step: float = 5.0
    ) -> None:
        if not packs:
            raise ValueError("a bank needs at least one pack")
        rng = random.Random(f"{seed}:physics")
        self.step = step
        self.start = start
        self.profile = BankProfile(rng, len(packs))
        self._ambient_base, self._ambient_slow, self._ambient_fast = ambient_model(rng)
        soc = rng.uniform(0.55, 0.85)
        ambient = self.ambient(start)
        self.packs: dict[int, PackState] = {
            spec.slave: PackState(spec, rng, min(1.0, max(0.05, soc + rng.uniform(-0.03, 0.03))), ambient)
            for spec in packs
        }
        self._jitter = {slave: SmoothNoise(rng, (37.0, 151.0)) for slave in self.packs}
        self._index = 0
        self.chargers: list[Charger] = []
        self.profile_solar = True  # False once a charge controller stands for the bank's panels
        self._set_currents(start)

    @property
    def cells(self) -> int:
        """Cells in series (the packs are in parallel)."""
        return max(pack.spec.cells for pack in self.packs.values())

    def attach(self, charger: Charger, *, replaces_solar: bool = False) -> None:
        """Wire ``charger`` to the bank from the current grid point on. ``replaces_solar``: it is
        the bank's panels, so the profile's own solar current stops (its loads stay: the house)."""
        self.chargers.append(charger)
        if replaces_solar:
            self.profile_solar = False
        self._set_currents(self.grid_time)

    def house_load(self, t: float) -> float:
        """Amps the house draws from the bank besides the attached chargers' own loads."""
        return self.profile.load(t)

    def state_at(self, t: float) -> BankState:
        """The bank as a charger sees it at simulated time ``t``."""
        readings = [self.reading(slave, t) for slave in self.packs]
        return BankState(
            voltage=sum(r.voltage for r in readings) / len(readings),
            soc=sum(r.remaining for r in readings) / sum(r.capacity for r in readings),
            current=sum(r.current for r in readings),
            temperature=sum(sum(r.temperatures) / len(r.temperatures) for r in readings) / len(readings),
            full=self._full(),
        )

    @property
    def grid_time(self) -> float:
        """Simulated time of the last grid point reached."""
        return self.start + self._index * self.step

    def ambient(self, t: float) -> float:
        """Air temperature around the bank (°C)."""
        hour = (t % DAY) / HOUR
        daily = 5.0 * math.sin(2.0 * math.pi * (hour - 9.0) / 24.0)
        return self._ambient_base + daily + 3.0 * self._ambient_slow(t) + 0.5 * self._ambient_fast(t)

    def advance_to(self, t: float) -> None:
        """Integrate the grid up to the last point at or before ``t``."""
        target = math.floor((t - self.start) / self.step)
        while self._index < target:
            self._step()

    def reading(self, slave: int, t: float) -> PackReading:
        """The true state of one pack at simulated time ``t`` (clamped to the start)."""
        t = max(t, self.start)
        self.advance_to(t)
        pack = self.packs[slave]
        elapsed = t - self.grid_time
        current = pack.current
        remaining = min(pack.spec.capacity, max(0.0, pack.remaining + current * elapsed / HOUR))
        discharged = pack.discharged + max(0.0, -current) * elapsed / HOUR
        ambient = self.ambient(t)
        temperature = self._temperature_after(pack, self.ambient(self.grid_time), elapsed)
        soc = remaining / pack.spec.capacity
        cells = _cell_voltages(pack, soc, current)
        heat = current * current * pack.resistance / 10.0  # terminals run warmer than the middle
        temps = tuple(
            min(TEMPERATURE_RANGE[1], max(TEMPERATURE_RANGE[0], temperature + offset + heat * gradient))
            for offset, gradient in zip(pack.sensor_offsets, pack.sensor_gradient, strict=True)
        )
        return PackReading(
            slave=slave,
            sim_time=t,
            current=current,
            remaining=remaining,
            capacity=pack.spec.capacity,
            soc=soc,
            cell_voltages=cells,
            temperatures=temps,
            ambient=ambient,
            cycle_count=pack.cycles_base + int(discharged / pack.spec.capacity),
            discharge_cut=pack.discharge_cut,
        )

    def values(self, slave: int, t: float) -> dict[str, Value]:
        """Every register field of one pack at ``t``, keyed as in shared.registers.REGISTER_MAP."""
        return register_values(self.packs[slave].spec, self.reading(slave, t))

    def _temperature_after(self, pack: PackState, ambient: float, elapsed: float) -> float:
        steady = ambient + pack.current**2 * pack.resistance * THERMAL_TAU / THERMAL_CAPACITY
        return steady + (pack.temperature - steady) * math.exp(-elapsed / THERMAL_TAU)

    def _step(self) -> None:
        t = self.grid_time
        ambient = self.ambient(t)
        for pack in self.packs.values():
            pack.temperature = self._temperature_after(pack, ambient, self.step)
            pack.remaining = min(
                pack.spec.capacity, max(0.0, pack.remaining + pack.current * self.step / HOUR)
            )
            pack.discharged += max(0.0, -pack.current) * self.step / HOUR
            if pack.current <= 0 and pack.remaining <= EMPTY_FRACTION * pack.spec.capacity:
                pack.discharge_cut = True
            elif pack.discharge_cut and pack.soc >= DISCHARGE_RESUME_SOC:
                pack.discharge_cut = False
        self._index += 1
        self._set_currents(self.grid_time)

    def _limit(self, pack: PackState, demand: float) -> float:
        """What the BMS lets through of ``demand`` amps during the next step."""
        if demand > 0:
            taper = CHARGE_CURRENT_LIMIT * max(0.0, (1.0 - pack.soc) / (1.0 - TAPER_START))
            if taper < TAIL_CURRENT:
                return 0.0  # charge terminated: the tail current has fallen below the cut-off
            headroom = (pack.spec.capacity - pack.remaining) * HOUR / self.step
            return min(demand, CHARGE_CURRENT_LIMIT, taper, headroom)
        if pack.discharge_cut:
            return 0.0
        return max(demand, -DISCHARGE_CURRENT_LIMIT, -pack.remaining * HOUR / self.step)

    def _full(self) -> bool:
        return all(self._limit(pack, 1.0) == 0.0 for pack in self.packs.values())

    def _set_currents(self, t: float) -> None:
        if not self.chargers:
            self._share(self.profile.net(t), t, exact=False)
            return
        # The chargers see the bank as it ended the last step (its current still flowing), its
        # voltage from the mean cell (the cells' spread would cost a curve look-up per cell and step).
        packs = self.packs.values()
        bank = BankState(
            voltage=sum(p.spec.cells * ocv(p.soc) + p.current * p.resistance for p in packs)
            / len(self.packs),
            soc=sum(p.remaining for p in packs) / sum(p.spec.capacity for p in packs),
            current=sum(p.current for p in packs),
            temperature=sum(p.temperature for p in packs) / len(self.packs),
            full=self._full(),
        )
        offers = [charger.offer(t, bank) for charger in self.chargers]
        supply = sum(charge for charge, _ in offers)
        solar = self.profile.solar(t) if self.profile_solar else 0.0
        net = supply + solar - sum(draw for _, draw in offers) - self.profile.load(t)
        taken = self._share(net, t, exact=True)
        # What the BMS (and the 0.01 A steps) did not take of a charging bank, the chargers did not
        # deliver: so they report exactly what went in. A discharge held back is the house's.
        cut = min(supply, max(0.0, net - taken)) if net > 0 else 0.0
        limited = cut > CURRENT_QUANTUM * len(self.packs)  # more than the 0.01 A steps: the BMS
        for (charge, _), charger in zip(offers, self.chargers, strict=True):
            charger.settle(t, bank, charge * (1.0 - cut / supply) if supply else 0.0, limited)

    def _share(self, net: float, t: float, *, exact: bool) -> float:
        """Split ``net`` amps over the packs by their share, with a little jitter, inside their BMS
        limits; returns the bank current that flows. ``exact``: the packs' demands add up to ``net``
        (with chargers attached the bank current must be what they delivered); otherwise the jitter
        adds a little, as the profile always had it."""
        jitter = {slave: 1.0 + 0.015 * self._jitter[slave](t) for slave in self.packs}
        if exact:
            weight = sum(pack.share * jitter[slave] for slave, pack in self.packs.items())
            demands = {slave: net * pack.share * jitter[slave] / weight for slave, pack in self.packs.items()}
        else:
            weight = sum(p.share for p in self.packs.values())
            demands = {slave: net * pack.share / weight * jitter[slave] for slave, pack in self.packs.items()}
        allowed = {slave: self._limit(self.packs[slave], d) for slave, d in demands.items()}
        # Packs held back by their BMS push the rest of the bank current onto the others.
        leftover = sum(demands.values()) - sum(allowed.values())
        free = [s for s in self.packs if allowed[s] == demands[s] and demands[s] != 0.0]
        if free and abs(leftover) > 1e-9:
            for slave in free:
                allowed[slave] = self._limit(self.packs[slave], demands[slave] + leftover / len(free))
        for slave, pack in self.packs.items():
            pack.current = _quantise_current(allowed[slave])
        return sum(pack.current for pack in self.packs.values())


def _cell_voltages(pack: PackState, soc: float, current: float) -> tuple[float, ...]:
    return tuple(
        min(CELL_VOLTAGE_RANGE[1], max(CELL_VOLTAGE_RANGE[0], ocv(soc + offset) + current * r))
        for offset, r in zip(pack.cell_offsets, pack.cell_resistance, strict=True)
    )


def register_values(spec: PackSpec, reading: PackReading) -> dict[str, Value]:
    """Map a reading onto the named register fields (status words derived consistently)."""
    cells = reading.cell_voltages
    temps = reading.temperatures
    current = reading.current
    voltage = reading.voltage
    pack_temp = sum(temps) / len(temps)

    status1 = S1_MODULE_POWER | S1_CHARGE_MOSFET
    if not reading.discharge_cut:
        status1 |= S1_DISCHARGE_MOSFET
    else:
        status1 |= S1_CELL_UNDER_VOLTAGE
    status2 = S2_OBSERVED_BIT9
    if reading.soc >= FULL_SOC:
        status2 |= S2_FULLY_CHARGED
    if current > 0:
        status2 |= S2_CHARGING
    elif current < 0:
        status2 |= S2_DISCHARGING
    if min(cells) < 2.9:
        status2 |= S2_CELL_LOW_WARN
    if max(cells) > 3.6:
        status2 |= S2_CELL_HIGH_WARN
    if voltage < 44.0:
        status2 |= S2_MODULE_LOW_WARN
    if voltage > 54.0:
        status2 |= S2_MODULE_HIGH_WARN
    if current > 0 and pack_temp < 5.0:
        status2 |= S2_CHARGE_LOW_TEMP
    if current > 0 and pack_temp > 45.0:
        status2 |= S2_CHARGE_HIGH_TEMP
    if current < 0 and pack_temp < -10.0:
        status2 |= S2_DISCHARGE_LOW_TEMP
    if current < 0 and pack_temp > 55.0:
        status2 |= S2_DISCHARGE_HIGH_TEMP
    status3 = 0
    cell_alarms = 0
    for index, volts in enumerate(cells):
        if volts < 2.6 or volts > 3.75:
            status3 |= 1 << index
        if reading.discharge_cut and volts < 2.8:
            cell_alarms |= 0b01 << (2 * index)
    charge_discharge = CD_CHARGE_ENABLE | (0 if reading.discharge_cut else CD_DISCHARGE_ENABLE)

    return {
        "cell_count": spec.cells,
        "cell_voltages": list(cells),
        "temperature_count": spec.sensors,
        "temperatures": list(temps),
        "bms_temperature": 0.0,  # reads 0 on the dumped 48 V pack
        "environment_temperature_count": 2,
        "environment_temperatures": [reading.ambient, reading.ambient + 0.4],
        "heater_temperature_count": 0,
        "heater_temperatures": [0.0, 0.0],
        "current": current,
        "voltage": voltage,
        "remaining_charge": reading.remaining,
        "capacity": reading.capacity,
        "cycle_count": reading.cycle_count,
        "charge_voltage_limit": 55.5,
        "discharge_voltage_limit": 41.6,
        "charge_current_limit": CHARGE_CURRENT_LIMIT,
        "discharge_current_limit": -DISCHARGE_CURRENT_LIMIT,
        "cell_voltage_alarms": cell_alarms,
        "cell_temperature_alarms": 0,
        "other_alarms": 0,
        "status1": status1,
        "status2": status2,
        "status3": status3,
        "charge_discharge_status": charge_discharge,
        "serial": spec.serial,
        "manufacture_version": "01",
        "mainline_version": "0001",
        "comm_protocol_version": "19",
        "model": spec.model,
        "firmware": spec.firmware,
        "manufacturer": spec.manufacturer,
        "device_address": spec.slave,
    }
