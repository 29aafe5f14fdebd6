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

from .base import BitTable, Block, DeviceFamily, EntityDef, RegField
from .controller import (
    BATTERY_SOC,
    BATTERY_TEMPERATURE,
    BATTERY_VOLTAGE,
    CHARGING_CURRENT,
    CONTROLLER_TEMPERATURE,
    GENERATION_TODAY,
    GENERATION_TOTAL,
    HEAD_FIELDS,
    INFO_BLOCKS,
    MODEL,
    battery_ranges,
    charging_state_entity,
    fault_entity,
    measured,
    port_fields,
    port_ranges,
    problems_entity,
    stat_fields,
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
    *HEAD_FIELDS,
    *port_fields(0x0104, "alternator"),
    *port_fields(0x0107, "solar"),
    *stat_fields(
        "battery_min_voltage_today",
        "battery_max_voltage_today",
        "max_charging_current_today",
        "max_charging_power_today",
        "charging_ah_today",
        "generation_today",
        "operating_days",
        "over_discharge_count",
        "full_charge_count",
        "charging_ah_total",
        "generation_total",
    ),
    RegField(0x0120, "charging_state", mask=0xFF, enum=CHARGING_STATES),
    RegField(0x0121, "faults_high"),
    RegField(0x0122, "faults_low"),
    RegField(0x0124, "output_power", unit="W"),
    RegField(0x0125, "charging_mode", enum=CHARGING_MODES),
    RegField(0x0126, "ignition", flag=True),
    RegField(0xE004, "battery_type", enum=BATTERY_TYPES),
)

BLOCKS: Final = (Block(0x0100, 30, "cycle"), Block(0x0120, 7, "cycle"), *INFO_BLOCKS)

# 12/24 V house battery; alternator side <= 32 V, solar input <= 50 V (DCC50S: 25 V Voc max is lower).
RANGES: Final[dict[str, tuple[float, float]]] = {
    **battery_ranges(35.0, 60.0, 2_000, 30_000),
    **port_ranges("alternator", 35.0, 60.0, 2_000),
    **port_ranges("solar", 60.0, 60.0, 2_000),
    "output_power": (0, 2_000),
}

_TABLES: Final = (BitTable("faults_high", FAULTS_HIGH), BitTable("faults_low", FAULTS_LOW))

ENTITIES: Final = (
    measured("output_power", "Output power", "W", "power", 0),
    measured("alternator_power", "Alternator power", "W", "power", 0),
    measured("alternator_voltage", "Alternator voltage", "V", "voltage", 1),
    measured("pv_power", "PV power", "W", "power", 0, value="solar_power"),
    measured("pv_voltage", "PV voltage", "V", "voltage", 1, value="solar_voltage"),
    BATTERY_VOLTAGE,
    CHARGING_CURRENT,
    CONTROLLER_TEMPERATURE,
    GENERATION_TODAY,
    charging_state_entity("mdi:car-battery"),
    fault_entity(_TABLES),
    # extended profile
    EntityDef("charging_mode", "Charging mode", "charging_mode", platform="text_sensor", extended=True),
    EntityDef(
        "ignition", "Ignition", "ignition", device_class="power", platform="binary_sensor", extended=True
    ),
    measured("alternator_current", "Alternator current", "A", "current", 2, extended=True),
    measured("pv_current", "PV current", "A", "current", 2, value="solar_current", extended=True),
    BATTERY_SOC,
    BATTERY_TEMPERATURE,
    GENERATION_TOTAL,
    problems_entity(_TABLES),
    MODEL,
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
