"""The Home Assistant entities: one declarative table per device kind (docs/entities.md is the prose)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from services.aggregator.model import BankView, BatteryView, Value
from shared.payloads import EntitySpec, Platform

V = TypeVar("V", BatteryView, BankView)
PROFILES: Final = ("default", "extended")
MEAS: Final = "measurement"
TOTAL: Final = "total_increasing"
DIAG: Final = "diagnostic"


@dataclass(frozen=True, slots=True)
class Entity(Generic[V]):
    """An entity's Home Assistant metadata, how its value is computed, and whether only `extended` has it."""

    key: str
    name: str
    unit: str | None
    device_class: str | None
    state_class: str | None
    accuracy: int
    value: Callable[[V], Value]
    extended: bool = False
    icon: str | None = None
    category: str | None = None
    platform: Platform = "sensor"

    @property
    def spec(self) -> EntitySpec:
        return EntitySpec(
            key=self.key,
            name=self.name,
            unit=self.unit,
            device_class=self.device_class,
            state_class=self.state_class,
            accuracy=self.accuracy,
            icon=self.icon,
            entity_category=self.category,
            platform=self.platform,
        )

    @property
    def energy(self) -> bool:
        return self.device_class == "energy"


BATTERY: Final[tuple[Entity[BatteryView], ...]] = (
    Entity("power", "Power", "W", "power", MEAS, 1, lambda b: b.power),
    Entity("voltage", "Voltage", "V", "voltage", MEAS, 2, lambda b: b.voltage),
    Entity("current", "Current", "A", "current", MEAS, 2, lambda b: b.current),
    Entity("battery_level", "Battery level", "%", "battery", MEAS, 1, lambda b: b.battery_level),
    Entity("capacity", "Capacity", "Ah", None, MEAS, 1, lambda b: b.capacity),
    Entity("remaining_charge", "Remaining charge", "Ah", None, MEAS, 2, lambda b: b.remaining_charge),
    Entity("energy_in", "Energy in", "kWh", "energy", TOTAL, 3, lambda b: b.energy_in_kwh),
    Entity("energy_out", "Energy out", "kWh", "energy", TOTAL, 3, lambda b: b.energy_out_kwh),
    Entity("cell_voltage_min", "Cell voltage min", "V", "voltage", MEAS, 3, lambda b: b.cell_voltage_min),
    Entity("cell_voltage_max", "Cell voltage max", "V", "voltage", MEAS, 3, lambda b: b.cell_voltage_max),
    Entity("temperature_min", "Temperature min", "°C", "temperature", MEAS, 1, lambda b: b.temperature_min),
    Entity("temperature_max", "Temperature max", "°C", "temperature", MEAS, 1, lambda b: b.temperature_max),
    # extended profile
    Entity(
        "cell_voltage_delta",
        "Cell voltage delta",
        "V",
        "voltage",
        MEAS,
        3,
        lambda b: b.cell_voltage_delta,
        extended=True,
        icon="mdi:battery-heart-variant",
    ),
    Entity(
        "cycle_count",
        "Cycle count",
        None,
        None,
        TOTAL,
        0,
        lambda b: b.cycles,
        extended=True,
        icon="mdi:battery-sync",
    ),
    Entity("time_to_full", "Time to full", "h", "duration", MEAS, 1, lambda b: b.time_to_full, extended=True),
    Entity(
        "time_to_empty", "Time to empty", "h", "duration", MEAS, 1, lambda b: b.time_to_empty, extended=True
    ),
    Entity(
        "temperature_average",
        "Temperature",
        "°C",
        "temperature",
        MEAS,
        1,
        lambda b: b.temperature_average,
        extended=True,
    ),
    Entity(
        "charging",
        "Charging",
        None,
        "battery_charging",
        None,
        0,
        lambda b: b.charging,
        extended=True,
        platform="binary_sensor",
    ),
    Entity(
        "alarm", "Alarm", None, "problem", None, 0, lambda b: b.alarm, extended=True, platform="binary_sensor"
    ),
    Entity(
        "problems",
        "Problems",
        None,
        None,
        None,
        0,
        lambda b: b.problem_text,
        extended=True,
        icon="mdi:alert-circle-outline",
        category=DIAG,
        platform="text_sensor",
    ),
    Entity(
        "fully_charged",
        "Fully charged",
        None,
        None,
        None,
        0,
        lambda b: b.flag("fully_charged"),
        extended=True,
        platform="binary_sensor",
    ),
    Entity(
        "heater",
        "Heater",
        None,
        "heat",
        None,
        0,
        lambda b: b.flag("heater_on"),
        extended=True,
        platform="binary_sensor",
    ),
    Entity(
        "charge_mosfet",
        "Charge MOSFET",
        None,
        "power",
        None,
        0,
        lambda b: b.flag("charge_mosfet_on"),
        extended=True,
        category=DIAG,
        platform="binary_sensor",
    ),
    Entity(
        "discharge_mosfet",
        "Discharge MOSFET",
        None,
        "power",
        None,
        0,
        lambda b: b.flag("discharge_mosfet_on"),
        extended=True,
        category=DIAG,
        platform="binary_sensor",
    ),
    Entity(
        "read_age", "Read age", "s", "duration", MEAS, 0, lambda b: b.read_age, extended=True, category=DIAG
    ),
    Entity("rssi", "RSSI", "dBm", "signal_strength", MEAS, 0, lambda b: b.rssi, extended=True, category=DIAG),
    Entity(
        "link_quality",
        "Link quality",
        "%",
        None,
        MEAS,
        0,
        lambda b: b.link_quality,
        extended=True,
        icon="mdi:link-variant",
        category=DIAG,
    ),
    # The pack's identity (5104 block, read every reader.info_interval): kept, never stale.
    Entity(
        "model",
        "Model",
        None,
        None,
        None,
        0,
        lambda b: b.model,
        extended=True,
        icon="mdi:battery-outline",
        category=DIAG,
        platform="text_sensor",
    ),
    Entity(
        "serial",
        "Serial number",
        None,
        None,
        None,
        0,
        lambda b: b.serial,
        extended=True,
        icon="mdi:barcode",
        category=DIAG,
        platform="text_sensor",
    ),
    Entity(
        "firmware",
        "Firmware",
        None,
        None,
        None,
        0,
        lambda b: b.firmware,
        extended=True,
        icon="mdi:chip",
        category=DIAG,
        platform="text_sensor",
    ),
)

BANK: Final[tuple[Entity[BankView], ...]] = (
    Entity("power", "Power", "W", "power", MEAS, 1, lambda k: k.power),
    Entity("current", "Current", "A", "current", MEAS, 2, lambda k: k.current),
    Entity("capacity", "Capacity", "Ah", None, MEAS, 1, lambda k: k.capacity),
    Entity("remaining_charge", "Remaining charge", "Ah", None, MEAS, 2, lambda k: k.remaining_charge),
    Entity("battery_level", "Battery level", "%", "battery", MEAS, 1, lambda k: k.battery_level),
    Entity("energy_in", "Energy in", "kWh", "energy", TOTAL, 3, lambda k: k.energy_in_kwh),
    Entity("energy_out", "Energy out", "kWh", "energy", TOTAL, 3, lambda k: k.energy_out_kwh),
    # extended profile
    Entity("voltage", "Voltage", "V", "voltage", MEAS, 2, lambda k: k.voltage, extended=True),
    Entity(
        "cell_voltage_delta",
        "Cell voltage delta",
        "V",
        "voltage",
        MEAS,
        3,
        lambda k: k.cell_voltage_delta,
        extended=True,
        icon="mdi:battery-heart-variant",
    ),
    Entity("time_to_full", "Time to full", "h", "duration", MEAS, 1, lambda k: k.time_to_full, extended=True),
    Entity(
        "time_to_empty", "Time to empty", "h", "duration", MEAS, 1, lambda k: k.time_to_empty, extended=True
    ),
    Entity(
        "alarm", "Alarm", None, "problem", None, 0, lambda k: k.alarm, extended=True, platform="binary_sensor"
    ),
    Entity(
        "batteries_online",
        "Batteries online",
        None,
        None,
        MEAS,
        0,
        lambda k: k.batteries_online,
        extended=True,
        icon="mdi:battery-check",
        category=DIAG,
    ),
)


def for_profile(table: tuple[Entity[V], ...], profile: str) -> tuple[Entity[V], ...]:
    """The entities of one device kind in a profile ('default' or 'extended'), in table order."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}")
    return tuple(entity for entity in table if profile == "extended" or not entity.extended)
