"""Inverter-chargers (RIV series, e.g. RIV4835CSH1S) behind a BT-2.

Register map (facts only):
- 4000 x 10: AC input V x0.1, input A x0.01, AC output V x0.1, output A x0.01, output Hz x0.01,
  battery V x0.1, temperature °C x0.1 (4000-4006), input Hz x0.01 (4009); 4109 device id; 4311 x 8
  model (ASCII); 4327 x 7: SOC %, battery charging A x0.1 signed (- = discharging), PV V x0.1, PV A
  x0.1, PV W, charging state, charging W; 4408 x 6: load A x0.1, load W, load VA, line charging A
  x0.1 (4412), load % (4413): cyrils/renogy-bt ``renogybt/InverterClient.py`` (sections and
  scales) and IAmTheMitchell/renogy-ble ``tests/test_riv4835csh1s.py`` (real RIV4835CSH1S replies at
  slave 0x20; signed charging current; the RIV4835CSH1S refuses 4311, so the model read is info-only
  and optional).
- Charging states: cyrils ``CHARGING_STATE`` (0 deactivated, 1 constant current, 2 constant voltage,
  4 floating, 6 battery activation, 7 battery disconnecting).
"""

from __future__ import annotations

from typing import Final

from .base import Block, DeviceFamily, EntityDef, RegField
from .controller import BATTERY_SOC, BATTERY_VOLTAGE, MODEL, measured

CHARGING_STATES: Final = {
    0: "deactivated",
    1: "constant current",
    2: "constant voltage",
    4: "floating",
    6: "battery activation",
    7: "battery disconnecting",
}

FIELDS: Final = (
    RegField(4000, "input_voltage", scale=0.1, unit="V"),
    RegField(4001, "input_current", scale=0.01, unit="A"),
    RegField(4002, "output_voltage", scale=0.1, unit="V"),
    RegField(4003, "output_current", scale=0.01, unit="A"),
    RegField(4004, "output_frequency", scale=0.01, unit="Hz"),
    RegField(4005, "battery_voltage", scale=0.1, unit="V"),
    RegField(4006, "temperature", "s16", scale=0.1, unit="°C"),
    RegField(4009, "input_frequency", scale=0.01, unit="Hz"),
    RegField(4109, "device_address"),
    RegField(4311, "model", "ascii", 8),
    RegField(4327, "battery_soc", unit="%"),
    RegField(4328, "charging_current", "s16", scale=0.1, unit="A"),
    RegField(4329, "pv_voltage", scale=0.1, unit="V"),
    RegField(4330, "pv_current", scale=0.1, unit="A"),
    RegField(4331, "pv_power", unit="W"),
    RegField(4332, "charging_state", enum=CHARGING_STATES),
    RegField(4333, "charging_power", unit="W"),
    RegField(4408, "load_current", scale=0.1, unit="A"),
    RegField(4409, "load_active_power", unit="W"),
    RegField(4410, "load_apparent_power", unit="VA"),
    RegField(4412, "line_charging_current", scale=0.1, unit="A"),
    RegField(4413, "load_percentage", unit="%"),
)

BLOCKS: Final = (
    Block(4000, 10, "cycle"),
    Block(4327, 7, "cycle"),
    Block(4408, 6, "cycle"),
    Block(4109, 1, "info"),
    Block(4311, 8, "info"),
)

RANGES: Final[dict[str, tuple[float, float]]] = {
    "input_voltage": (0.0, 280.0),
    "input_current": (0.0, 60.0),
    "output_voltage": (0.0, 280.0),
    "output_current": (0.0, 60.0),
    "output_frequency": (0.0, 70.0),
    "input_frequency": (0.0, 70.0),
    "battery_voltage": (0.0, 70.0),
    "temperature": (-40.0, 120.0),
    "battery_soc": (0, 100),
    "charging_current": (-250.0, 250.0),
    "pv_voltage": (0.0, 500.0),
    "pv_current": (0.0, 100.0),
    "pv_power": (0, 10_000),
    "charging_power": (0, 10_000),
    "load_current": (0.0, 100.0),
    "load_active_power": (0, 10_000),
    "load_apparent_power": (0, 10_000),
    "line_charging_current": (0.0, 250.0),
    "load_percentage": (0, 200),
}

ENTITIES: Final = (
    measured("output_power", "AC output power", "W", "power", 0, value="load_active_power"),
    measured("output_voltage", "AC output voltage", "V", "voltage", 1),
    measured("output_current", "AC output current", "A", "current", 2),
    measured("output_frequency", "AC output frequency", "Hz", "frequency", 2),
    measured("input_voltage", "AC input voltage", "V", "voltage", 1),
    BATTERY_VOLTAGE,
    measured("pv_power", "PV power", "W", "power", 0),
    measured("temperature", "Temperature", "°C", "temperature", 1),
    EntityDef(
        "charging_state",
        "Charging state",
        "charging_state",
        platform="text_sensor",
        icon="mdi:battery-charging",
    ),
    # extended profile
    measured("load_apparent_power", "Load apparent power", "VA", "apparent_power", 0, extended=True),
    EntityDef(
        "load_percentage",
        "Load",
        "load_percentage",
        "%",
        None,
        "measurement",
        0,
        extended=True,
        icon="mdi:gauge",
    ),
    measured("input_frequency", "AC input frequency", "Hz", "frequency", 2, extended=True),
    measured("charging_current", "Battery current", "A", "current", 1, extended=True),
    measured("charging_power", "Charging power", "W", "power", 0, extended=True),
    measured("pv_voltage", "PV voltage", "V", "voltage", 1, extended=True),
    BATTERY_SOC,
    MODEL,
)

INVERTER: Final = DeviceFamily(
    kind="inverter",
    title="Inverter",
    fields=FIELDS,
    blocks=BLOCKS,
    ranges=RANGES,
    identity=("model", "device_address"),
    entities=ENTITIES,
    default_slave=0x20,
    sources=(
        "cyrils/renogy-bt renogybt/InverterClient.py",
        "IAmTheMitchell/renogy-ble tests/test_riv4835csh1s.py",
    ),
    notes="no fault register is documented by the sources; no problem entity",
)
