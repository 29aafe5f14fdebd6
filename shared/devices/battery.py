"""Renogy smart LFP batteries: the existing table of shared/registers.py as a device family.

Nothing is redefined here: fields, blocks, ranges and the decoder are those of shared/registers.py
(V1.7 protocol; sources in that module's docstring), so behaviour is unchanged. The three variants
are :class:`shared.registers.Family` (``bt2``, ``pro``, ``rngpro``: current scale and alarm words);
together with BT-2 + built-in ``BT-TH-*`` packs these are the four battery kinds.

Hub slaves are not a family. Batteries behind a Communication Hub (slave ids 0x30-0x37, probed by
renogy-ble ``src/renogy_ble/hub.py`` ``HUB_BATTERY_SLAVE_IDS``) answer the same registers with the
same scales and get the same entities; only *which slave ids to probe* differs, which is a discovery
detail (:data:`HUB_SLAVE_IDS`), not a register map.

Entities: :data:`ENTITIES` (one battery) and :data:`BANK_ENTITIES` (the bank over its batteries).
Unlike the other families' tables, their values are not decoded fields: each names an attribute of
the aggregator's ``BatteryView`` / ``BankView`` (services/aggregator/model.py), which adds what no
single reading holds (energy counters, freshness, link quality, sums over the bank);
services/aggregator/entities.py serves them. The 4-battery default profile is 4 x 12 battery + 7 bank
= 55 entities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Final

from shared import registers
from shared.registers import Family

from .base import Block, DeviceFamily, EntityDef, RegField, Values

HUB_SLAVE_IDS: Final = tuple(range(0x30, 0x38))
FACTORY_SLAVE: Final = 0xF7


# The same fields as registers.REGISTER_MAP, for listing (describe, docs); decoding goes through
# shared.registers so arrays, counts and the pack-level refusals stay exactly as today.
def _field(f: registers.Field) -> RegField:
    return RegField(f.address, f.name, f.kind, f.words, f.scale, f.unit, description=f.description)


def _decode(start: int, words: Sequence[int], variant: str | None) -> tuple[Values, list[str]]:
    family = Family(variant) if variant is not None else Family.BT2
    if not registers.fields_in_block(start, len(words)):
        raise registers.BlockError(f"{start} x {len(words)} holds no battery field")
    return registers.decode_screened(start, words, family=family)


BLOCKS: Final = (
    Block(*registers.BLOCK_STATUS, "cycle"),
    Block(*registers.BLOCK_CELLS, "cycle"),
    *(Block(start, words, "info") for start, words in registers.BLOCKS_INFO),
)

RANGES: Final[dict[str, tuple[float, float]]] = {
    "voltage": registers.VOLTAGE_RANGE,
    "current": (-registers.MAX_ABS_CURRENT, registers.MAX_ABS_CURRENT),
    "capacity": registers.CAPACITY_RANGE,
    "cell_voltages": registers.CELL_VOLTAGE_RANGE,
    "temperatures": registers.TEMPERATURE_RANGE,
}

MEAS: Final = "measurement"
TOTAL: Final = "total_increasing"
DIAG: Final = "diagnostic"

# value = a BatteryView attribute (see the module docstring).
ENTITIES: Final = (
    EntityDef("power", "Power", "power", "W", "power", MEAS, 1),
    EntityDef("voltage", "Voltage", "voltage", "V", "voltage", MEAS, 2),
    EntityDef("current", "Current", "current", "A", "current", MEAS, 2),
    EntityDef("battery_level", "Battery level", "battery_level", "%", "battery", MEAS, 1),
    EntityDef("capacity", "Capacity", "capacity", "Ah", None, MEAS, 1),
    EntityDef("remaining_charge", "Remaining charge", "remaining_charge", "Ah", None, MEAS, 2),
    EntityDef("energy_in", "Energy in", "energy_in_kwh", "kWh", "energy", TOTAL, 3),
    EntityDef("energy_out", "Energy out", "energy_out_kwh", "kWh", "energy", TOTAL, 3),
    EntityDef("cell_voltage_min", "Cell voltage min", "cell_voltage_min", "V", "voltage", MEAS, 3),
    EntityDef("cell_voltage_max", "Cell voltage max", "cell_voltage_max", "V", "voltage", MEAS, 3),
    EntityDef("temperature_min", "Temperature min", "temperature_min", "°C", "temperature", MEAS, 1),
    EntityDef("temperature_max", "Temperature max", "temperature_max", "°C", "temperature", MEAS, 1),
    # extended profile
    EntityDef(
        "cell_voltage_delta",
        "Cell voltage delta",
        "cell_voltage_delta",
        "V",
        "voltage",
        MEAS,
        3,
        extended=True,
        icon="mdi:battery-heart-variant",
    ),
    EntityDef(
        "cycle_count", "Cycle count", "cycles", None, None, TOTAL, extended=True, icon="mdi:battery-sync"
    ),
    EntityDef("time_to_full", "Time to full", "time_to_full", "h", "duration", MEAS, 1, extended=True),
    EntityDef("time_to_empty", "Time to empty", "time_to_empty", "h", "duration", MEAS, 1, extended=True),
    EntityDef(
        "temperature_average",
        "Temperature",
        "temperature_average",
        "°C",
        "temperature",
        MEAS,
        1,
        extended=True,
    ),
    EntityDef(
        "charging",
        "Charging",
        "charging",
        device_class="battery_charging",
        platform="binary_sensor",
        extended=True,
    ),
    EntityDef("alarm", "Alarm", "alarm", device_class="problem", platform="binary_sensor", extended=True),
    EntityDef(
        "problems",
        "Problems",
        "problem_text",
        platform="text_sensor",
        extended=True,
        icon="mdi:alert-circle-outline",
        category=DIAG,
    ),
    EntityDef("fully_charged", "Fully charged", "fully_charged", platform="binary_sensor", extended=True),
    EntityDef("heater", "Heater", "heater_on", device_class="heat", platform="binary_sensor", extended=True),
    EntityDef(
        "charge_mosfet",
        "Charge MOSFET",
        "charge_mosfet_on",
        device_class="power",
        platform="binary_sensor",
        extended=True,
        category=DIAG,
    ),
    EntityDef(
        "discharge_mosfet",
        "Discharge MOSFET",
        "discharge_mosfet_on",
        device_class="power",
        platform="binary_sensor",
        extended=True,
        category=DIAG,
    ),
    EntityDef("read_age", "Read age", "read_age", "s", "duration", MEAS, extended=True, category=DIAG),
    EntityDef("rssi", "RSSI", "rssi", "dBm", "signal_strength", MEAS, extended=True, category=DIAG),
    EntityDef(
        "link_quality",
        "Link quality",
        "link_quality",
        "%",
        None,
        MEAS,
        extended=True,
        icon="mdi:link-variant",
        category=DIAG,
    ),
    # The pack's identity (5104 block, read every reader.info_interval): kept, never stale.
    EntityDef(
        "model",
        "Model",
        "model",
        platform="text_sensor",
        extended=True,
        icon="mdi:battery-outline",
        category=DIAG,
    ),
    EntityDef(
        "serial",
        "Serial number",
        "serial",
        platform="text_sensor",
        extended=True,
        icon="mdi:barcode",
        category=DIAG,
    ),
    EntityDef(
        "firmware",
        "Firmware",
        "firmware",
        platform="text_sensor",
        extended=True,
        icon="mdi:chip",
        category=DIAG,
    ),
)

# The bank's entities are the battery's of the same key (its view sums the same attributes over the
# bank's batteries), in the bank's own order, plus the count of batteries online.
_BATTERY_BY_KEY: Final = {e.key: e for e in ENTITIES}
_BANK_KEYS: Final = (
    "power",
    "current",
    "capacity",
    "remaining_charge",
    "battery_level",
    "energy_in",
    "energy_out",
)
_BANK_EXTENDED_KEYS: Final = ("voltage", "cell_voltage_delta", "time_to_full", "time_to_empty", "alarm")
BANK_ENTITIES: Final = (
    *(_BATTERY_BY_KEY[key] for key in _BANK_KEYS),
    # extended profile (the voltage, a mean over the batteries, only there)
    *(replace(_BATTERY_BY_KEY[key], extended=True) for key in _BANK_EXTENDED_KEYS),
    EntityDef(
        "batteries_online",
        "Batteries online",
        "batteries_online",
        state_class=MEAS,
        extended=True,
        icon="mdi:battery-check",
        category=DIAG,
    ),
)

BATTERY: Final = DeviceFamily(
    kind="battery",
    title="Battery",
    fields=tuple(_field(f) for f in registers.REGISTER_MAP),
    blocks=BLOCKS,
    ranges=RANGES,
    identity=("model", "serial", "firmware", "manufacturer", "device_address"),
    entities=ENTITIES,
    default_slave=FACTORY_SLAVE,
    variants=tuple(f.value for f in Family),
    custom_decode=_decode,
    sources=("shared/registers.py (Lithium Iron Battery BMS Modbus Protocol V1.7 and captures)",),
    notes="entities: computed by the aggregator from its battery and bank views; "
    "status/problems: shared.registers.problems",
)
