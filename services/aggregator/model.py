"""The latest good value of every battery field with its time; fresh views of batteries and banks (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.aggregator.energy import EnergyCounter
from shared.payloads import Reading, StateValue
from shared.registers import problems

READING_FIELDS = (
    "voltage",
    "current",
    "remaining_charge",
    "capacity",
    "cycle_count",
    "cell_voltages",
    "temperatures",
)
IDENTITY_FIELDS = ("model", "serial", "firmware")  # static facts of a pack: kept, never stale
MIN_CURRENT = 0.1  # A; below this, time to full/empty is unknown rather than practically infinite
Value = StateValue


class Rejected(Exception):
    """A valid reading that cannot be served (a slave id conflict, a future time); `reason` keys health."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Stamp:
    """When a reading was taken: the reader's wall time, boot and monotonic time (for ordering), and
    `at`, the same moment on the aggregator's monotonic clock (for freshness, whatever the wall clocks do).
    """

    ts: float
    at: float
    boot: str | None = None
    mono: float | None = None

    def not_older_than(self, held: Stamp) -> bool:
        """Whether a reading with this stamp may replace a value held with `held`."""
        if (
            self.boot is not None
            and self.boot == held.boot
            and self.mono is not None
            and held.mono is not None
        ):
            return self.mono >= held.mono
        if self.boot is not None and held.boot is not None and self.boot != held.boot:
            return True  # the reader restarted: its newest boot wins, whatever its wall clock says
        return self.ts >= held.ts


@dataclass(slots=True)
class Battery:
    """One battery (one BT-2 and slave id) as far as the readings told us."""

    device_id: str
    bt2: str
    slave_id: int
    name: str
    bank_id: str | None
    counter: EnergyCounter = field(default_factory=EnergyCounter)
    values: dict[str, tuple[Any, Stamp]] = field(default_factory=dict)
    status: dict[str, tuple[int | bool, Stamp]] = field(default_factory=dict)
    model: str | None = None
    serial: str | None = None
    firmware: str | None = None
    last: Stamp | None = None
    last_seen: float = 0.0  # the aggregator's monotonic time of the last accepted reading
    appeared: bool = False

    @property
    def last_ts(self) -> float | None:
        return None if self.last is None else self.last.ts

    def update(self, reading: Reading, stamp: Stamp | None = None) -> None:
        """Keep each field's newest value; an older reading fills only fields it has newer values of."""
        stamp = stamp or Stamp(reading.ts, reading.ts, reading.boot_id, reading.mono)
        for name in READING_FIELDS:
            value = getattr(reading, name)
            held = self.values.get(name)
            if value is not None and (held is None or stamp.not_older_than(held[1])):
                self.values[name] = (value, stamp)
        for key, flag in reading.status.items():
            held_status = self.status.get(key)
            if held_status is None or stamp.not_older_than(held_status[1]):
                self.status[key] = (flag, stamp)
        newest = self.last is None or stamp.not_older_than(self.last)
        for name in IDENTITY_FIELDS:
            text = getattr(reading, name)
            # The reader reads these every info interval only; a reading without them keeps what we have.
            if text and (newest or getattr(self, name) is None):
                setattr(self, name, text)
        if newest:
            self.last = stamp

    def forget_readings(self) -> None:
        """Drop everything read so far (another battery took this device over); the counter totals stay."""
        self.values.clear()
        self.status.clear()
        self.model = self.serial = self.firmware = None
        self.last = None
        self.counter.forget_anchor()

    def fresh(self, name: str, now: float, horizon: float) -> Any:
        """The value when it was read at most `horizon` s ago (`now` on the aggregator's monotonic clock)."""
        held = self.values.get(name)
        return held[0] if held is not None and now - held[1].at <= horizon else None

    def view(
        self, now: float, stale_after: float, info_stale_after: float, link: LinkInfo | None = None
    ) -> BatteryView:
        # link.ts is on the aggregator's monotonic clock (AggregatorCore.link), like `now`.
        link = link if link is not None and now - link.ts <= stale_after else None
        return BatteryView(
            voltage=self.fresh("voltage", now, stale_after),
            current=self.fresh("current", now, stale_after),
            remaining_charge=self.fresh("remaining_charge", now, stale_after),
            capacity=self.fresh("capacity", now, stale_after),
            cycle_count=self.fresh("cycle_count", now, stale_after),
            cell_voltages=self.fresh("cell_voltages", now, stale_after),
            temperatures=self.fresh("temperatures", now, stale_after),
            status={k: v for k, (v, stamp) in self.status.items() if now - stamp.at <= info_stale_after},
            energy_in_kwh=self.counter.in_wh / 1000,
            energy_out_kwh=self.counter.out_wh / 1000,
            read_age=None if self.last is None else max(0.0, now - self.last.at),
            rssi=link.rssi if link else None,
            link_quality=link.battery_link_quality.get(self.slave_id) if link else None,
            model=self.model,
            serial=self.serial,
            firmware=self.firmware,
        )


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """What the reader's health says about one BT-2 link."""

    ts: float
    rssi: float | None
    link_quality: float | None
    battery_link_quality: Mapping[int, float]


def _known(series: tuple[float | None, ...] | None) -> list[float]:
    """The sensors of a series that were read (the reader publishes a dropped sensor as null)."""
    return [v for v in series or () if v is not None]


def _extreme(series: tuple[float | None, ...] | None, pick: Any) -> float | None:
    known = _known(series)
    return pick(known) if known else None


def _clamp_level(remaining: float, capacity: float) -> float | None:
    return None if capacity <= 0 else min(100.0, max(0.0, 100 * remaining / capacity))


def _time_to_full(current: float | None, remaining: float | None, capacity: float | None) -> float | None:
    if current is None or remaining is None or capacity is None or current < MIN_CURRENT:
        return None
    return max(capacity - remaining, 0.0) / current


def _time_to_empty(current: float | None, remaining: float | None) -> float | None:
    if current is None or remaining is None or current > -MIN_CURRENT:
        return None
    return remaining / -current


@dataclass(frozen=True, slots=True)
class BatteryView:
    """The fresh values of one battery at one moment; None = unknown."""

    voltage: float | None = None
    current: float | None = None
    remaining_charge: float | None = None
    capacity: float | None = None
    cycle_count: int | None = None
    cell_voltages: tuple[float | None, ...] | None = None
    temperatures: tuple[float | None, ...] | None = None
    status: Mapping[str, int | bool] = field(default_factory=dict)
    energy_in_kwh: float = 0.0
    energy_out_kwh: float = 0.0
    read_age: float | None = None
    rssi: float | None = None
    link_quality: float | None = None
    model: str | None = None
    serial: str | None = None
    firmware: str | None = None

    @property
    def power(self) -> float | None:
        return None if self.voltage is None or self.current is None else self.voltage * self.current

    @property
    def battery_level(self) -> float | None:
        if self.remaining_charge is None or self.capacity is None:
            return None
        return _clamp_level(self.remaining_charge, self.capacity)

    @property
    def cell_voltage_min(self) -> float | None:
        return _extreme(self.cell_voltages, min)

    @property
    def cell_voltage_max(self) -> float | None:
        return _extreme(self.cell_voltages, max)

    @property
    def cell_voltage_delta(self) -> float | None:
        cells = _known(self.cell_voltages)
        return max(cells) - min(cells) if cells else None

    @property
    def temperature_min(self) -> float | None:
        return _extreme(self.temperatures, min)

    @property
    def temperature_max(self) -> float | None:
        return _extreme(self.temperatures, max)

    @property
    def temperature_average(self) -> float | None:
        known = _known(self.temperatures)
        return sum(known) / len(known) if known else None

    @property
    def charging(self) -> bool | None:
        """Charging when at least MIN_CURRENT flows in (below it the sign is noise)."""
        return None if self.current is None else self.current >= MIN_CURRENT

    @property
    def time_to_full(self) -> float | None:
        return _time_to_full(self.current, self.remaining_charge, self.capacity)

    @property
    def time_to_empty(self) -> float | None:
        return _time_to_empty(self.current, self.remaining_charge)

    @property
    def problems(self) -> list[str] | None:
        """The alarms and protection trips of the alarm and status words (shared.registers.problems)."""
        return problems(self.status)

    @property
    def alarm(self) -> bool | None:
        found = self.problems
        return None if found is None else bool(found)

    @property
    def problem_text(self) -> str | None:
        found = self.problems
        if found is None:
            return None
        # The count first: a long list is cut at the text limit (64 characters) when published.
        return "none" if not found else found[0] if len(found) == 1 else f"{len(found)}: " + ", ".join(found)

    @property
    def cycles(self) -> float | None:
        return None if self.cycle_count is None else float(self.cycle_count)

    def flag(self, key: str) -> bool | None:
        value = self.status.get(key)
        return None if value is None else bool(value)

    # The reader's status flags by name, so that the entity table names them like any other value.
    @property
    def fully_charged(self) -> bool | None:
        return self.flag("fully_charged")

    @property
    def heater_on(self) -> bool | None:
        return self.flag("heater_on")

    @property
    def charge_mosfet_on(self) -> bool | None:
        return self.flag("charge_mosfet_on")

    @property
    def discharge_mosfet_on(self) -> bool | None:
        return self.flag("discharge_mosfet_on")


def _sum(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


@dataclass(frozen=True, slots=True)
class BankView:
    """A bank: sums over its fresh members, energy over every member's counter (never below the floors)."""

    members: tuple[BatteryView, ...]
    floor_in_kwh: float = 0.0
    floor_out_kwh: float = 0.0

    @property
    def power(self) -> float | None:
        return _sum([m.power for m in self.members])

    @property
    def current(self) -> float | None:
        return _sum([m.current for m in self.members])

    @property
    def voltage(self) -> float | None:
        known = [m.voltage for m in self.members if m.voltage is not None]
        return sum(known) / len(known) if known else None

    @property
    def capacity(self) -> float | None:
        return _sum([m.capacity for m in self.members])

    @property
    def remaining_charge(self) -> float | None:
        return _sum([m.remaining_charge for m in self.members])

    @property
    def battery_level(self) -> float | None:
        pairs = [
            (m.remaining_charge, m.capacity)
            for m in self.members
            if m.remaining_charge is not None and m.capacity is not None
        ]
        if not pairs:
            return None
        return _clamp_level(sum(r for r, _ in pairs), sum(c for _, c in pairs))

    @property
    def energy_in_kwh(self) -> float:
        return max(sum(m.energy_in_kwh for m in self.members), self.floor_in_kwh)

    @property
    def energy_out_kwh(self) -> float:
        return max(sum(m.energy_out_kwh for m in self.members), self.floor_out_kwh)

    @property
    def cell_voltage_delta(self) -> float | None:
        cells = [v for m in self.members for v in _known(m.cell_voltages)]
        return max(cells) - min(cells) if cells else None

    @property
    def time_to_full(self) -> float | None:
        return _time_to_full(self.current, self.remaining_charge, self.capacity)

    @property
    def time_to_empty(self) -> float | None:
        return _time_to_empty(self.current, self.remaining_charge)

    @property
    def alarm(self) -> bool | None:
        known = [m.alarm for m in self.members if m.alarm is not None]
        return any(known) if known else None

    @property
    def batteries_online(self) -> float:
        return float(sum(1 for m in self.members if m.power is not None))
