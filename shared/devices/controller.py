"""Solar charge controllers: Rover, Rover Elite, Wanderer, Adventurer (via BT-1 or BT-2).

Register map (facts only, no code copied):
- 0x000C x 8 model (ASCII, 16 bytes), 0x001A device address (low byte), 0x0100 x 34 dynamic data,
  0xE004 battery type: cyrils/renogy-bt ``renogybt/RoverClient.py`` (sections) and
  IAmTheMitchell/renogy-ble ``src/renogy_ble/register_map.py`` ("controller").
- 0x0100 SOC %, 0x0101 battery V x0.1, 0x0102 charging A x0.01, 0x0103 high byte controller °C / low
  byte battery °C, sign-magnitude (renogy-ble ``signed_encoding="sign_magnitude"`` and its test
  ``test_controller_negative_temperatures``), 0x0104-0x0106 load V x0.1 / A x0.01 / W, 0x0107-0x0109
  PV V x0.1 / A x0.01 / W, 0x010B-0x0112 daily min/max V, max A, max W, Ah, 0x0113/0x0114 Wh today,
  0x0115 operating days, 0x0116/0x0117 over-discharge/full-charge counts, 0x0118-0x011F u32 totals
  (Ah, Wh), 0x0120 bit 15 load on, bits 8-14 brightness, low byte charging state: same sources and
  wrybread/ESP32ArduinoRenogy ``renogy_rs232.ino`` (35 data registers from 0x0100).
- Totals are Wh: renogy-ble's real RVR40 reply (tests/test_parser.py ``integration_test_data``) holds
  4988 Ah charged in total and 65 936 in 0x011C-0x011D, i.e. 65.9 kWh at about 13.2 V.
- 0x0121 (high word of the 0x0121-0x0122 fault word) bits 0-14 = fault bits B16-B30, names as in
  the Rover Modbus fault list reproduced by public Rover readers (e.g. raupulus, wrybread); 0x0121 is
  the last register of the 0x0100 x 34 block, so faults come with every cycle.
- Load switch (opt-in controls): function 6 to 0x010A, 1 = on, 0 = off: cyrils/renogy-bt
  ``renogybt/RoverClient.py`` (``set_load_params = {'function': 6, 'register': 266}``, ``set_load``)
  and renogy-ble ``src/renogy_ble/settings.py`` (boolean ``load_enabled`` at 0x010A). The state is
  read back from 0x0120 bit 15 (high byte bit 7): RoverClient ``load_status = byte 67 >> 7``, byte 67
  of the 0x0100 x 34 reply being the high byte of 0x0120. 0x010A itself is write-only (no field).
"""

from __future__ import annotations

from typing import Final

from .base import (
    BitTable,
    Block,
    ControlDef,
    DeviceFamily,
    EntityDef,
    RegField,
    fault_value,
    kwh_value,
    problem_text_value,
)

CHARGING_STATES: Final = {
    0: "deactivated",
    1: "activated",
    2: "mppt",
    3: "equalizing",
    4: "boost",
    5: "floating",
    6: "current limiting",
}
BATTERY_TYPES: Final = {1: "open", 2: "sealed", 3: "gel", 4: "lithium", 5: "custom"}
FAULTS: Final = {
    14: "charge MOS short circuit",
    13: "anti-reverse MOS short circuit",
    12: "PV panel reversely connected",
    11: "PV working point over-voltage",
    10: "PV counter current",
    9: "PV input over-voltage",
    8: "PV input short circuit",
    7: "PV input over-power",
    6: "ambient temperature too high",
    5: "controller temperature too high",
    4: "load over-power or over-current",
    3: "load short circuit",
    2: "battery under-voltage warning",
    1: "battery over-voltage",
    0: "battery over-discharge",
}

# --- what every Renogy charger (controller, DC-DC charger) shares; dcc.py reuses these ---------------

HEAD_FIELDS: Final = (
    RegField(0x000C, "model", "ascii", 8, description="product model, e.g. RNG-CTRL-RVR40, RBC50D1S-G1"),
    RegField(0x001A, "device_address", mask=0xFF, description="Modbus slave id"),
    RegField(0x0100, "battery_soc", unit="%"),
    RegField(0x0101, "battery_voltage", scale=0.1, unit="V"),
    RegField(0x0102, "charging_current", scale=0.01, unit="A"),
    RegField(0x0103, "controller_temperature", "sm8", unit="°C", shift=8),
    RegField(0x0103, "battery_temperature", "sm8", unit="°C"),
)

# Model, device address and battery type: read at start and every info interval.
INFO_BLOCKS: Final = (Block(0x000C, 8, "info"), Block(0x001A, 1, "info"), Block(0xE004, 1, "info"))

# 0x010B-0x011F: the daily and lifetime statistics (a DC-DC charger maps a subset of them).
STAT_FIELDS: Final = (
    RegField(0x010B, "battery_min_voltage_today", scale=0.1, unit="V"),
    RegField(0x010C, "battery_max_voltage_today", scale=0.1, unit="V"),
    RegField(0x010D, "max_charging_current_today", scale=0.01, unit="A"),
    RegField(0x010E, "max_discharging_current_today", scale=0.01, unit="A"),
    RegField(0x010F, "max_charging_power_today", unit="W"),
    RegField(0x0110, "max_discharging_power_today", unit="W"),
    RegField(0x0111, "charging_ah_today", unit="Ah"),
    RegField(0x0112, "discharging_ah_today", unit="Ah"),
    RegField(0x0113, "generation_today", unit="Wh"),
    RegField(0x0114, "consumption_today", unit="Wh"),
    RegField(0x0115, "operating_days", unit="d"),
    RegField(0x0116, "over_discharge_count"),
    RegField(0x0117, "full_charge_count"),
    RegField(0x0118, "charging_ah_total", "u32", 2, unit="Ah"),
    RegField(0x011A, "discharging_ah_total", "u32", 2, unit="Ah"),
    RegField(0x011C, "generation_total", "u32", 2, unit="Wh"),
    RegField(0x011E, "consumption_total", "u32", 2, unit="Wh"),
)


def port_fields(address: int, port: str) -> tuple[RegField, RegField, RegField]:
    """A port's V x0.1, A x0.01 and W at ``address`` .. +2 (load, PV, alternator, solar)."""
    return (
        RegField(address, f"{port}_voltage", scale=0.1, unit="V"),
        RegField(address + 1, f"{port}_current", scale=0.01, unit="A"),
        RegField(address + 2, f"{port}_power", unit="W"),
    )


def stat_fields(*names: str) -> tuple[RegField, ...]:
    """The statistics fields named, in register order."""
    return tuple(f for f in STAT_FIELDS if f.name in names)


def battery_ranges(volts: float, amps: float, watts: int, wh_today: int) -> dict[str, tuple[float, float]]:
    """Ranges of the battery side and the daily charge statistics of a charger of this size."""
    return {
        "battery_soc": (0, 100),
        "battery_voltage": (0.0, volts),
        "charging_current": (0.0, amps),
        "controller_temperature": (-40, 100),
        "battery_temperature": (-40, 100),
        "battery_min_voltage_today": (0.0, volts),
        "battery_max_voltage_today": (0.0, volts),
        "max_charging_current_today": (0.0, amps),
        "max_charging_power_today": (0, watts),
        "generation_today": (0, wh_today),
    }


def port_ranges(port: str, volts: float, amps: float, watts: int) -> dict[str, tuple[float, float]]:
    return {f"{port}_voltage": (0.0, volts), f"{port}_current": (0.0, amps), f"{port}_power": (0, watts)}


MEAS: Final = "measurement"
TOTAL: Final = "total_increasing"


def measured(
    key: str, name: str, unit: str, kind: str, accuracy: int, *, value: str = "", extended: bool = False
) -> EntityDef:
    """A measurement sensor (``kind`` = its device class) of field ``value`` (default: ``key``)."""
    return EntityDef(key, name, value or key, unit, kind, MEAS, accuracy, extended=extended)


BATTERY_VOLTAGE: Final = measured("battery_voltage", "Battery voltage", "V", "voltage", 1)
CHARGING_CURRENT: Final = measured("charging_current", "Charging current", "A", "current", 2)
CONTROLLER_TEMPERATURE: Final = measured(
    "controller_temperature", "Controller temperature", "°C", "temperature", 0
)
GENERATION_TODAY: Final = EntityDef(
    "generation_today", "Generation today", kwh_value("generation_today"), "kWh", "energy", TOTAL, 3
)
BATTERY_SOC: Final = measured("battery_soc", "Battery level", "%", "battery", 0, extended=True)
BATTERY_TEMPERATURE: Final = measured(
    "battery_temperature", "Battery temperature", "°C", "temperature", 0, extended=True
)
GENERATION_TOTAL: Final = EntityDef(
    "generation_total",
    "Generation total",
    kwh_value("generation_total"),
    "kWh",
    "energy",
    TOTAL,
    3,
    extended=True,
)
MODEL: Final = EntityDef(
    "model", "Model", "model", platform="text_sensor", extended=True, category="diagnostic"
)


def charging_state_entity(icon: str) -> EntityDef:
    return EntityDef("charging_state", "Charging state", "charging_state", platform="text_sensor", icon=icon)


def fault_entity(tables: tuple[BitTable, ...]) -> EntityDef:
    """The problem binary sensor: on while any bit of ``tables`` is set."""
    return EntityDef("fault", "Fault", fault_value(tables), device_class="problem", platform="binary_sensor")


def problems_entity(tables: tuple[BitTable, ...]) -> EntityDef:
    """The extended profile's text of the problem bits set."""
    return EntityDef(
        "problems",
        "Problems",
        problem_text_value(tables),
        platform="text_sensor",
        extended=True,
        icon="mdi:alert-circle-outline",
        category="diagnostic",
    )


# --- the controller ------------------------------------------------------------------------------

FIELDS: Final = (
    *HEAD_FIELDS,
    *port_fields(0x0104, "load"),
    *port_fields(0x0107, "pv"),
    *STAT_FIELDS,
    RegField(0x0120, "load_on", shift=15, mask=1, flag=True),
    RegField(0x0120, "load_brightness", shift=8, mask=0x7F, unit="%"),
    RegField(0x0120, "charging_state", mask=0xFF, enum=CHARGING_STATES),
    RegField(0x0121, "faults", description="fault bits B16-B30 of 0x0121-0x0122"),
    RegField(0xE004, "battery_type", enum=BATTERY_TYPES),
)

BLOCKS: Final = (Block(0x0100, 34, "cycle"), *INFO_BLOCKS)

# A 12/24/48 V controller: battery <= 70 V, PV input <= 150 V (Rover Elite/Adventurer max is below).
RANGES: Final[dict[str, tuple[float, float]]] = {
    **battery_ranges(70.0, 100.0, 6_000, 60_000),
    **port_ranges("load", 70.0, 100.0, 6_000),
    **port_ranges("pv", 150.0, 100.0, 6_000),
    "max_discharging_current_today": (0.0, 100.0),
    "max_discharging_power_today": (0, 6_000),
    "consumption_today": (0, 60_000),
    "load_brightness": (0, 100),
}

_TABLES: Final = (BitTable("faults", FAULTS),)

ENTITIES: Final = (
    measured("pv_power", "PV power", "W", "power", 0),
    measured("pv_voltage", "PV voltage", "V", "voltage", 1),
    BATTERY_VOLTAGE,
    CHARGING_CURRENT,
    measured("load_power", "Load power", "W", "power", 0),
    CONTROLLER_TEMPERATURE,
    GENERATION_TODAY,
    charging_state_entity("mdi:solar-power"),
    fault_entity(_TABLES),
    # extended profile
    measured("pv_current", "PV current", "A", "current", 2, extended=True),
    measured("load_voltage", "Load voltage", "V", "voltage", 1, extended=True),
    measured("load_current", "Load current", "A", "current", 2, extended=True),
    EntityDef("load", "Load", "load_on", device_class="power", platform="binary_sensor", extended=True),
    BATTERY_SOC,
    BATTERY_TEMPERATURE,
    GENERATION_TOTAL,
    EntityDef(
        "consumption_today",
        "Consumption today",
        kwh_value("consumption_today"),
        "kWh",
        "energy",
        TOTAL,
        3,
        extended=True,
    ),
    problems_entity(_TABLES),
    MODEL,
)

LOAD_REGISTER: Final = 0x010A
# Its own key: the extended profile's "load" binary sensor shows the same bit without controls.
LOAD_SWITCH: Final = ControlDef(
    "load_switch", "Load switch", LOAD_REGISTER, readback="load_on", device_class="outlet"
)

CONTROLLER: Final = DeviceFamily(
    kind="controller",
    title="Charge controller",
    fields=FIELDS,
    blocks=BLOCKS,
    ranges=RANGES,
    identity=("model", "device_address"),
    status_bits=_TABLES,
    entities=ENTITIES,
    default_slave=0xFF,
    controls=(LOAD_SWITCH,),
    sources=(
        "cyrils/renogy-bt renogybt/RoverClient.py",
        "IAmTheMitchell/renogy-ble src/renogy_ble/register_map.py, tests/test_parser.py, "
        "src/renogy_ble/settings.py",
        "wrybread/ESP32ArduinoRenogy renogy_rs232.ino",
    ),
)
