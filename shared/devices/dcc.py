"""DC-DC chargers with MPPT (DCC30S, DCC50S, RBC2125DS): alternator and solar input, house battery.

Register map (facts only):
- 0x000C x 8 model, 0x001A device address, 0x0100 x 30 dynamic data, 0x0120 x 7 state, 0xE004
  battery type: cyrils/renogy-bt ``renogybt/DCChargerClient.py`` (sections 256 x 30, 288 x 3) and
  IAmTheMitchell/renogy-ble ``src/renogy_ble/register_map.py`` ("dcc", "DCC Charger Controller
  Modbus Protocol V1.0"; 288 x 7).
- 0x0100 SOC %, 0x0101 battery V x0.1, 0x0102 total charging A x0.01, 0x0103 controller/battery °C
  bytes (sign-magnitude as on the Rover), 0x0104-0x0106 alternator V x0.1 / A x0.01 / W,
  0x0107-0x0109 solar V x0.1 / A x0.01 / W, 0x010B-0x010D daily min/max V, max A, 0x010F max W,
  0x0111 Ah today, 0x0113 Wh today, 0x0115-0x0117 days and counts, 0x0118 u32 Ah total, 0x011C u32
  Wh total; 0x0120 low byte charging state, 0x0121/0x0122 fault words, 0x0124 output W, 0x0125
  charging mode, 0x0126 ignition: renogy-ble (confirmed by its DCC50S capture: output 267 W while the
  alternator read 265 W, mode 4 with state 2 = mppt).
- Fault bit names: cyrils ``DCChargerClient.parse_state`` (bits 11, 10, 9, 8, 4, 3 of 0x0121 and 12,
  9, 7, 6, 5, 2, 1, 0 of 0x0122; read here as whole 16-bit words, an inference: their code reads
  one byte of each).
"""

from __future__ import annotations

from typing import Final

from .base import (
    BitTable,
    Block,
    DeviceFamily,
    EntityDef,
    RegField,
    fault_value,
    kwh_value,
    problem_text_value,
)

CHARGING_STATES: Final = {
    0: "standby",
    1: "activated",
    2: "mppt",
    3: "equalizing",
    4: "boost",
    5: "floating",
    6: "current limiting",
    8: "alternator direct",
}
CHARGING_MODES: Final = {
    0: "standby",
    1: "alternator to house",
    2: "house to starter",
    3: "solar to house",
    4: "solar and alternator to house",
    5: "solar to starter",
}
BATTERY_TYPES: Final = {0: "custom", 1: "open", 2: "sealed", 3: "gel", 4: "lithium"}
FAULTS_HIGH: Final = {
    11: "low temperature shutdown",
    10: "BMS over-charge protection",
    9: "starter battery reverse polarity",
    8: "alternator over-voltage",
    4: "alternator over-current",
    3: "controller over-temperature 2",
}
FAULTS_LOW: Final = {
    12: "solar reverse polarity",
    9: "solar over-voltage",
    7: "solar over-current",
    6: "battery over-temperature",
    5: "controller over-temperature",
    2: "battery low voltage",
    1: "battery over-voltage",
    0: "battery over-discharge",
}

FIELDS: Final = (
    RegField(0x000C, "model", "ascii", 8),
    RegField(0x001A, "device_address", mask=0xFF),
    RegField(0x0100, "battery_soc", unit="%"),
    RegField(0x0101, "battery_voltage", scale=0.1, unit="V"),
    RegField(0x0102, "charging_current", scale=0.01, unit="A"),
    RegField(0x0103, "controller_temperature", "sm8", unit="°C", shift=8),
    RegField(0x0103, "battery_temperature", "sm8", unit="°C"),
    RegField(0x0104, "alternator_voltage", scale=0.1, unit="V"),
    RegField(0x0105, "alternator_current", scale=0.01, unit="A"),
    RegField(0x0106, "alternator_power", unit="W"),
    RegField(0x0107, "solar_voltage", scale=0.1, unit="V"),
    RegField(0x0108, "solar_current", scale=0.01, unit="A"),
    RegField(0x0109, "solar_power", unit="W"),
    RegField(0x010B, "battery_min_voltage_today", scale=0.1, unit="V"),
    RegField(0x010C, "battery_max_voltage_today", scale=0.1, unit="V"),
    RegField(0x010D, "max_charging_current_today", scale=0.01, unit="A"),
    RegField(0x010F, "max_charging_power_today", unit="W"),
    RegField(0x0111, "charging_ah_today", unit="Ah"),
    RegField(0x0113, "generation_today", unit="Wh"),
    RegField(0x0115, "operating_days", unit="d"),
    RegField(0x0116, "over_discharge_count"),
    RegField(0x0117, "full_charge_count"),
    RegField(0x0118, "charging_ah_total", "u32", 2, unit="Ah"),
    RegField(0x011C, "generation_total", "u32", 2, unit="Wh"),
    RegField(0x0120, "charging_state", mask=0xFF, enum=CHARGING_STATES),
    RegField(0x0121, "faults_high"),
    RegField(0x0122, "faults_low"),
    RegField(0x0124, "output_power", unit="W"),
    RegField(0x0125, "charging_mode", enum=CHARGING_MODES),
    RegField(0x0126, "ignition", flag=True),
    RegField(0xE004, "battery_type", enum=BATTERY_TYPES),
)

BLOCKS: Final = (
    Block(0x0100, 30, "cycle"),
    Block(0x0120, 7, "cycle"),
    Block(0x000C, 8, "info"),
    Block(0x001A, 1, "info"),
    Block(0xE004, 1, "info"),
)

# 12/24 V house battery; alternator side <= 32 V, solar input <= 50 V (DCC50S: 25 V Voc max is lower).
RANGES: Final[dict[str, tuple[float, float]]] = {
    "battery_soc": (0, 100),
    "battery_voltage": (0.0, 35.0),
    "charging_current": (0.0, 60.0),
    "controller_temperature": (-40, 100),
    "battery_temperature": (-40, 100),
    "alternator_voltage": (0.0, 35.0),
    "alternator_current": (0.0, 60.0),
    "alternator_power": (0, 2_000),
    "solar_voltage": (0.0, 60.0),
    "solar_current": (0.0, 60.0),
    "solar_power": (0, 2_000),
    "battery_min_voltage_today": (0.0, 35.0),
    "battery_max_voltage_today": (0.0, 35.0),
    "max_charging_current_today": (0.0, 60.0),
    "max_charging_power_today": (0, 2_000),
    "generation_today": (0, 30_000),
    "output_power": (0, 2_000),
}

_TABLES: Final = (BitTable("faults_high", FAULTS_HIGH), BitTable("faults_low", FAULTS_LOW))
MEAS: Final = "measurement"
TOTAL: Final = "total_increasing"

ENTITIES: Final = (
    EntityDef("output_power", "Output power", "output_power", "W", "power", MEAS, 0),
    EntityDef("alternator_power", "Alternator power", "alternator_power", "W", "power", MEAS, 0),
    EntityDef("alternator_voltage", "Alternator voltage", "alternator_voltage", "V", "voltage", MEAS, 1),
    EntityDef("pv_power", "PV power", "solar_power", "W", "power", MEAS, 0),
    EntityDef("pv_voltage", "PV voltage", "solar_voltage", "V", "voltage", MEAS, 1),
    EntityDef("battery_voltage", "Battery voltage", "battery_voltage", "V", "voltage", MEAS, 1),
    EntityDef("charging_current", "Charging current", "charging_current", "A", "current", MEAS, 2),
    EntityDef(
        "controller_temperature",
        "Controller temperature",
        "controller_temperature",
        "°C",
        "temperature",
        MEAS,
        0,
    ),
    EntityDef(
        "generation_today", "Generation today", kwh_value("generation_today"), "kWh", "energy", TOTAL, 3
    ),
    EntityDef(
        "charging_state", "Charging state", "charging_state", platform="text_sensor", icon="mdi:car-battery"
    ),
    EntityDef("fault", "Fault", fault_value(_TABLES), device_class="problem", platform="binary_sensor"),
    # extended profile
    EntityDef("charging_mode", "Charging mode", "charging_mode", platform="text_sensor", extended=True),
    EntityDef(
        "ignition", "Ignition", "ignition", device_class="power", platform="binary_sensor", extended=True
    ),
    EntityDef(
        "alternator_current",
        "Alternator current",
        "alternator_current",
        "A",
        "current",
        MEAS,
        2,
        extended=True,
    ),
    EntityDef("pv_current", "PV current", "solar_current", "A", "current", MEAS, 2, extended=True),
    EntityDef("battery_soc", "Battery level", "battery_soc", "%", "battery", MEAS, 0, extended=True),
    EntityDef(
        "battery_temperature",
        "Battery temperature",
        "battery_temperature",
        "°C",
        "temperature",
        MEAS,
        0,
        extended=True,
    ),
    EntityDef(
        "generation_total",
        "Generation total",
        kwh_value("generation_total"),
        "kWh",
        "energy",
        TOTAL,
        3,
        extended=True,
    ),
    EntityDef(
        "problems",
        "Problems",
        problem_text_value(_TABLES),
        platform="text_sensor",
        extended=True,
        icon="mdi:alert-circle-outline",
        category="diagnostic",
    ),
    EntityDef("model", "Model", "model", platform="text_sensor", extended=True, category="diagnostic"),
)

DCC: Final = DeviceFamily(
    kind="dcc",
    title="DC-DC charger",
    fields=FIELDS,
    blocks=BLOCKS,
    ranges=RANGES,
    identity=("model", "device_address"),
    status_bits=_TABLES,
    entities=ENTITIES,
    default_slave=0xFF,
    sources=(
        "cyrils/renogy-bt renogybt/DCChargerClient.py",
        "IAmTheMitchell/renogy-ble src/renogy_ble/register_map.py, tests/test_parser.py",
        "neilsheps/Renogy-BT2-Reader README.md (DCC30S capture)",
    ),
)
