"""Renogy Smart Shunt 300 (``RTMShunt300*``): notify-only, no Modbus requests.

The shunt pushes 110-byte live frames on characteristic ``0000c411-…`` that start with the header
``42 57 01 19``; there is no known checksum (IAmTheMitchell/renogy-ble ``src/renogy_ble/shunt.py``
``SHUNT_LIVE_HEADER``, ``SHUNT_EXPECTED_PAYLOAD_LENGTH``; cyrils/renogy-bt ``renogybt/ShuntClient.py``
checks byte 1 == 87 = 0x57). Byte offsets (big-endian, facts from both): current 21-23 signed x0.001 A
(+ = charging), battery voltage 25-27 x0.001 V, starter voltage 30-31 x0.001 V, SOC 34-35 x0.1 %,
temperature 66-67 x0.1 °C. Plausibility as renogy-ble: voltage 6..80 V, |current| <= 500 A.

To share the Modbus families' signature the payload is handled as its 55 big-endian words:
``decode(SHUNT, 0, words)``; :func:`payload_words` converts a notification.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from shared.registers import BlockError

from .base import Block, DeviceFamily, EntityDef, Values, scaled

LIVE_HEADER: Final = bytes.fromhex("42570119")
PAYLOAD_LENGTH: Final = 110
NOTIFY_UUID: Final = "0000c411-0000-1000-8000-00805f9b34fb"


@dataclass(frozen=True, slots=True)
class ByteField:
    offset: int
    length: int
    name: str
    scale: float
    unit: str
    signed: bool = False


BYTE_FIELDS: Final = (
    ByteField(21, 3, "current", 0.001, "A", signed=True),
    ByteField(25, 3, "voltage", 0.001, "V"),
    ByteField(30, 2, "starter_voltage", 0.001, "V"),
    ByteField(34, 2, "soc", 0.1, "%"),
    ByteField(66, 2, "temperature", 0.1, "°C"),
)

RANGES: Final[dict[str, tuple[float, float]]] = {
    "current": (-500.0, 500.0),
    "voltage": (6.0, 80.0),
    "starter_voltage": (0.0, 35.0),
    "soc": (0.0, 100.0),
    "temperature": (-40.0, 100.0),
    "power": (-10_000.0, 10_000.0),
}


def payload_words(payload: bytes) -> list[int]:
    """A notification as big-endian words (an odd trailing byte is padded with 0)."""
    data = payload + b"\x00" * (len(payload) % 2)
    return [int.from_bytes(data[k : k + 2], "big") for k in range(0, len(data), 2)]


def words_payload(words: Sequence[int]) -> bytes:
    return b"".join((w & 0xFFFF).to_bytes(2, "big") for w in words)


def _decode(start: int, registers: Sequence[int], variant: str | None) -> tuple[Values, list[str]]:
    del variant  # one shunt model
    if start != 0 or len(registers) != PAYLOAD_LENGTH // 2:
        raise BlockError(
            f"a shunt frame is {PAYLOAD_LENGTH // 2} words from 0, got {start} x {len(registers)}"
        )
    payload = words_payload(registers)
    if not payload.startswith(LIVE_HEADER):
        raise BlockError(f"not a live shunt frame (header {payload[:4].hex()}, expected {LIVE_HEADER.hex()})")
    values: Values = {}
    dropped: list[str] = []
    for f in BYTE_FIELDS:
        raw = int.from_bytes(payload[f.offset : f.offset + f.length], "big", signed=f.signed)
        value = scaled(raw, f.scale)
        low, high = RANGES[f.name]
        if low <= value <= high:
            values[f.name] = value
        else:
            dropped.append(f"{f.name} = {value} {f.unit} outside {low}..{high} (raw 0x{raw & 0xFFFFFF:X})")
    voltage, current = values.get("voltage"), values.get("current")
    if isinstance(voltage, int | float) and isinstance(current, int | float):
        power = round(voltage * current, 1)
        low, high = RANGES["power"]
        if low <= power <= high:
            values["power"] = power
        else:
            dropped.append(f"power = {power} W outside {low}..{high}")
    return values, dropped


def encode_payload(values: Values) -> bytes:
    """A live frame holding ``values`` (the simulator's side); unknown bytes read 0."""
    payload = bytearray(PAYLOAD_LENGTH)
    payload[: len(LIVE_HEADER)] = LIVE_HEADER
    for f in BYTE_FIELDS:
        value = values.get(f.name)
        if isinstance(value, int | float):
            raw = round(value / f.scale)
            payload[f.offset : f.offset + f.length] = raw.to_bytes(f.length, "big", signed=f.signed)
    return bytes(payload)


MEAS: Final = "measurement"

ENTITIES: Final = (
    EntityDef("power", "Power", "power", "W", "power", MEAS, 1),
    EntityDef("voltage", "Voltage", "voltage", "V", "voltage", MEAS, 2),
    EntityDef("current", "Current", "current", "A", "current", MEAS, 2),
    EntityDef("battery_level", "Battery level", "soc", "%", "battery", MEAS, 1),
    EntityDef("temperature", "Temperature", "temperature", "°C", "temperature", MEAS, 1),
    EntityDef(
        "starter_voltage", "Starter voltage", "starter_voltage", "V", "voltage", MEAS, 2, extended=True
    ),
)

SHUNT: Final = DeviceFamily(
    kind="shunt",
    title="Smart Shunt",
    fields=(),
    blocks=(Block(0, PAYLOAD_LENGTH // 2, "notify"),),
    ranges=RANGES,
    identity=(),
    entities=ENTITIES,
    default_slave=0,
    transport="notify",
    custom_decode=_decode,
    sources=(
        "IAmTheMitchell/renogy-ble src/renogy_ble/shunt.py, tests/test_shunt.py",
        "cyrils/renogy-bt renogybt/ShuntClient.py, tests/test_shunt_client.py",
    ),
    energy_power="power",  # the aggregator serves energy_in / energy_out of it (not values of the frame)
    notes="identity is the BLE address (RTMShunt300<serial> name); the frame carries no known energy "
    "total: energy_in / energy_out are the aggregator's counters of power, integrated like a battery's "
    "(services/aggregator/energy.py) and kept in its state file",
)
