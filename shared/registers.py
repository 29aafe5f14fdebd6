"""The Renogy smart-battery register map as one declarative table, and the decoder it drives.

Addresses, widths and scales follow the Lithium Iron Battery BMS Modbus Protocol V1.7, confirmed by
every published capture: cells and module voltage 0.1 V, temperatures 0.1 °C signed, current int16
0.01 A (+ = charging) except on built-in-Bluetooth "Pro" packs (0.1 A), capacities u32 high word
first in mAh. The field names are the keys of the MQTT reading payload.

Families (how a pack is found and what its registers mean differs; see docs/batteries.md):
BT-2 and built-in ``BT-TH-*`` packs, ``RNGRBP*``/``RNGC*`` Pro packs (0.1 A), and ``RNGPRO*`` packs
(0.01 A like a BT-2; their 5100-5106 alarm/status words do not follow V1.7, so they are not read
as alarms, as renogy-ble does).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Literal

Kind = Literal["u16", "s16", "u32", "ascii"]
# list[float | None]: a cell or temperature series with a sensor outside its range dropped (null).
Value = int | float | str | list[float] | list[int] | list[float | None]


class Family(StrEnum):
    """Battery families that differ in how they scale the current register (and read alarms)."""

    BT2 = "bt2"  # packs behind a BT-2 (and older built-in BT-TH-* packs): 0.01 A
    PRO = "pro"  # built-in-Bluetooth RNGRBP*/RNGC* packs: 0.1 A
    # Built-in-Bluetooth RNGPRO* packs (e.g. RBT12500LFP-SHBT): 0.01 A and 0.1 V cells like a BT-2
    # (renogy-ble's real capture: -2.01 A), but 5100-5106 carry non-alarm bytes (0x00AA in 5101).
    RNGPRO = "rngpro"


CURRENT_SCALE: Final[dict[Family, float]] = {Family.BT2: 0.01, Family.PRO: 0.1, Family.RNGPRO: 0.01}
BT2_NAME_PREFIX: Final = "BT-TH-"
PRO_NAME_PREFIXES: Final = ("RNGRBP", "RNGC")
RNGPRO_NAME_PREFIXES: Final = ("RNGPRO",)
# The manufacturer-data key of Pro packs (renogy-ble, renogy-ha, aiobmsble). It is the 4C:E1 OUI of
# their MAC read little-endian, not a company id; a BT-2's key is likewise its own MAC's first bytes.
PRO_MANUFACTURER_ID: Final = 0xE14C
# Decoded fields an RNGPRO pack's 5100 x 8 / 5104 x 28 replies hold but that are not V1.7 alarms there
# (renogy-ble parse_battery_mosfet_status reports no fault for the family: it ignores 5100-5106, the
# cell voltage, cell temperature and other alarm words and Status1; the MOSFET bits of Status1 and the
# heater bit of Status2 decode correctly and are kept).
RNGPRO_IGNORED: Final = ("cell_voltage_alarms", "cell_temperature_alarms", "other_alarms", "status1")


def family_for_name(ble_name: str | None) -> Family:
    """The family implied by a BLE advertised name (padded names are common; strip first)."""
    name = (ble_name or "").strip().upper()
    if name.startswith(RNGPRO_NAME_PREFIXES):
        return Family.RNGPRO
    return Family.PRO if name.startswith(PRO_NAME_PREFIXES) else Family.BT2


def family_for_advertisement(ble_name: str | None, manufacturer_data: Mapping[int, bytes]) -> Family | None:
    """The family of a Renogy battery advertisement, None for anything else.

    The name decides when there is one (``RNGPRO*``, ``RNGRBP*``/``RNGC*``, ``BT-TH-*``); without a
    known name, the Pro manufacturer id 0xE14C means a Pro pack, as renogy-ble decides.
    """
    name = (ble_name or "").strip()
    if name.upper().startswith((*RNGPRO_NAME_PREFIXES, *PRO_NAME_PREFIXES)) or name.startswith(
        BT2_NAME_PREFIX
    ):
        return family_for_name(name)
    return Family.PRO if PRO_MANUFACTURER_ID in manufacturer_data else None


@dataclass(frozen=True, slots=True)
class Field:
    """One register field. ``count_field`` marks an array whose used length is another field."""

    address: int
    words: int
    name: str
    kind: Kind
    scale: float = 1.0
    unit: str | None = None
    count_field: str | None = None
    description: str = ""

    @property
    def end(self) -> int:
        return self.address + self.words

    @property
    def is_array(self) -> bool:
        return self.count_field is not None


REGISTER_MAP: Final[tuple[Field, ...]] = (
    Field(5000, 1, "cell_count", "u16", description="number of cells in series (<= 16)"),
    Field(5001, 16, "cell_voltages", "u16", 0.1, "V", "cell_count", "cell voltages; unused cells read 0"),
    Field(5017, 1, "temperature_count", "u16", description="number of cell temperature sensors (<= 16)"),
    Field(5018, 16, "temperatures", "s16", 0.1, "°C", "temperature_count", "cell temperatures"),
    Field(5035, 1, "bms_temperature", "s16", 0.1, "°C", description="BMS board temperature"),
    Field(5036, 1, "environment_temperature_count", "u16"),
    Field(5037, 2, "environment_temperatures", "s16", 0.1, "°C", "environment_temperature_count"),
    Field(5039, 1, "heater_temperature_count", "u16"),
    Field(5040, 2, "heater_temperatures", "s16", 0.1, "°C", "heater_temperature_count"),
    Field(
        5042, 1, "current", "s16", 0.01, "A", description="pack current, + = charging (0.1 A on Pro packs)"
    ),
    Field(5043, 1, "voltage", "u16", 0.1, "V", description="module voltage"),
    Field(5044, 2, "remaining_charge", "u32", 0.001, "Ah"),
    Field(5046, 2, "capacity", "u32", 0.001, "Ah", description="total (full) capacity"),
    Field(5048, 1, "cycle_count", "u16"),
    Field(5049, 1, "charge_voltage_limit", "u16", 0.1, "V"),
    Field(5050, 1, "discharge_voltage_limit", "u16", 0.1, "V"),
    Field(5051, 1, "charge_current_limit", "u16", 0.01, "A"),
    Field(5052, 1, "discharge_current_limit", "s16", 0.01, "A"),
    Field(5100, 2, "cell_voltage_alarms", "u32", description="2 bits per cell: 01 low, 10 high, 11 other"),
    Field(5102, 2, "cell_temperature_alarms", "u32", description="2 bits per sensor"),
    Field(5104, 2, "other_alarms", "u32", description="BMS/env/heater temperature and current alarms"),
    Field(5106, 1, "status1", "u16", description="protection flags and MOSFET state"),
    Field(5107, 1, "status2", "u16", description="warnings, heater, fully charged"),
    Field(5108, 1, "status3", "u16", description="bit k-1: cell k voltage error"),
    Field(5109, 1, "charge_discharge_status", "u16"),
    Field(5110, 8, "serial", "ascii", description="serial number (not unique across packs)"),
    Field(5118, 1, "manufacture_version", "ascii"),
    Field(5119, 2, "mainline_version", "ascii"),
    Field(5121, 1, "comm_protocol_version", "ascii"),
    Field(5122, 8, "model", "ascii"),
    Field(5130, 2, "firmware", "ascii"),
    Field(5132, 10, "manufacturer", "ascii"),
    Field(5223, 1, "device_address", "u16", description="Modbus slave id"),
)

FIELDS_BY_NAME: Final[dict[str, Field]] = {f.name: f for f in REGISTER_MAP}
MAPPED_REGISTERS: Final[frozenset[int]] = frozenset(
    address for f in REGISTER_MAP for address in range(f.address, f.end)
)

# "Reserve" words between mapped fields; 5034 gave no answer in a register scan of a real pack.
RESERVED_REGISTERS: Final[frozenset[int]] = frozenset({5034})

# Blocks the reader requests: (start, words).
BLOCK_STATUS: Final = (5042, 7)  # current, voltage, remaining, capacity, cycle count
BLOCK_CELLS: Final = (5000, 34)  # cell count + 16 cells, temperature count + 16 temperatures
BLOCK_INFO: Final = (5104, 28)  # alarms, status words, serial, versions, model, firmware
# Cell voltage and temperature alarm words: the first half of the 5100 x 8 read renogy-ble and
# aiobmsble use; 5104 x 28 starts just after them.
BLOCK_CELL_ALARMS: Final = (5100, 4)
BLOCKS_INFO: Final = (BLOCK_CELL_ALARMS, BLOCK_INFO)  # read at start and every reader.info_interval
# Cells and status in one read (5000-5048): 1 exchange, not 2. It spans the reserved 5034, which a
# pack may refuse (exception 02, or silence), and 49 words, which one may find too long (03): the
# reader then falls back to MERGED_PARTS for that pack.
BLOCK_MERGED: Final = (BLOCK_CELLS[0], BLOCK_STATUS[0] + BLOCK_STATUS[1] - BLOCK_CELLS[0])
MERGED_PARTS: Final = (BLOCK_CELLS, BLOCK_STATUS)

# Physical ranges; a decoded value outside them is never published.
CELL_VOLTAGE_RANGE: Final = (2.0, 4.5)
TEMPERATURE_RANGE: Final = (-40.0, 90.0)
VOLTAGE_RANGE: Final = (0.0, 80.0)
MAX_ABS_CURRENT: Final = 500.0
CAPACITY_RANGE: Final = (0.0, 2000.0)
REMAINING_MAX_RATIO: Final = 1.2

_STATUS1_BITS: Final = {1: "charge_mosfet_on", 2: "discharge_mosfet_on"}
_STATUS2_BITS: Final = {11: "fully_charged", 13: "heater_on"}
# Status1 (5106) protection bits, V1.7; bits 1-3 are MOSFET and power-source state, not problems.
STATUS1_PROTECTIONS: Final = {
    0: "short circuit",
    4: "charge over-current 2",
    5: "discharge over-current 2",
    6: "module over-voltage",
    7: "cell under-voltage",
    8: "cell over-voltage",
    9: "charge over-current 1",
    10: "discharge over-current 1",
    11: "discharge under-temperature",
    12: "discharge over-temperature",
    13: "charge under-temperature",
    14: "charge over-temperature",
    15: "module under-voltage",
}
STATUS1_PROTECTION_MASK: Final = sum(1 << bit for bit in STATUS1_PROTECTIONS)  # 0xFFF1
# 5104-5105 "other alarm info": 2-bit fields by their low bit (V1.7); the other bits are reserved.
OTHER_ALARMS: Final = {
    30: "BMS board temperature",
    28: "environment temperature 1",
    26: "environment temperature 2",
    24: "heater temperature 1",
    22: "heater temperature 2",
    20: "charge current",
    18: "discharge current",
}
_ALARM_LEVEL: Final = {1: "low", 2: "high", 3: "alarm"}  # 01 below lower limit, 10 above upper, 11 other


class BlockError(ValueError):
    """A block that cannot be decoded or holds physically impossible values."""


def block_is_mapped(start: int, words: int, *, reserved_ok: bool = False) -> bool:
    """A real battery answers exception 02 when a read touches an unmapped register; ``reserved_ok``: a
    pack that answers the reserved words inside the map (RESERVED_REGISTERS) too."""
    allowed = MAPPED_REGISTERS | RESERVED_REGISTERS if reserved_ok else MAPPED_REGISTERS
    return all(address in allowed for address in range(start, start + words))


def block_slice(start: int, registers: Sequence[int], part_start: int, part_words: int) -> list[int]:
    """The words of block ``part_start`` x ``part_words`` inside a read of ``registers`` at ``start``."""
    offset = part_start - start
    if offset < 0 or offset + part_words > len(registers):
        raise ValueError(f"{part_start}x{part_words} is not inside {start}x{len(registers)}")
    return list(registers[offset : offset + part_words])


def fields_in_block(start: int, words: int) -> list[Field]:
    """Fields wholly inside the block, and arrays that start inside it but run past its end (a read
    of 5017 x 5 holds the count and the first 4 temperatures)."""
    end = start + words
    return [f for f in REGISTER_MAP if start <= f.address < end and (f.end <= end or f.is_array)]


def _word_value(kind: Kind, words: Sequence[int]) -> int:
    if kind == "u16":
        return words[0]
    if kind == "s16":
        return words[0] - 0x10000 if words[0] & 0x8000 else words[0]
    return (words[0] << 16) | words[1]


def _ascii(words: Sequence[int]) -> str:
    raw = b"".join(w.to_bytes(2, "big") for w in words)
    return raw.replace(b"\x00", b" ").decode("ascii", errors="replace").strip()


def _scaled(raw: int, scale: float) -> float:
    # Round to the register's resolution so 0.1 * 34 prints as 3.4, not 3.4000000000000004.
    digits = max(0, -math.floor(math.log10(scale))) if scale < 1 else 0
    return round(raw * scale, digits)


def decode_block(start: int, registers: Sequence[int], *, family: Family = Family.BT2) -> dict[str, Value]:
    """Decode every field that lies wholly inside the block ``start .. start+len(registers)``, and an
    array that starts inside it as far as the block goes.

    Arrays are cut to their count when the count register is in the block. Flags derived from the
    status words are added as booleans. For ``Family.RNGPRO`` the words that are not alarms on those
    packs (``RNGPRO_IGNORED``) are left out. Raises BlockError for a count larger than its array.
    """
    out: dict[str, Value] = {}
    for field in fields_in_block(start, len(registers)):
        words = registers[field.address - start : field.end - start]
        if field.kind == "ascii":
            out[field.name] = _ascii(words)
            continue
        scale = CURRENT_SCALE[family] if field.name == "current" else field.scale
        if field.is_array:
            values = [_word_value(field.kind, [w]) for w in words]
            count = out.get(field.count_field or "")
            if isinstance(count, int):
                if count > field.words:
                    raise BlockError(f"{field.count_field} = {count} exceeds the {field.words} registers")
                values = values[:count]
            out[field.name] = [_scaled(v, scale) for v in values]
        elif scale == 1.0:
            out[field.name] = _word_value(field.kind, words)
        else:
            out[field.name] = _scaled(_word_value(field.kind, words), scale)
    for status, bits in (("status1", _STATUS1_BITS), ("status2", _STATUS2_BITS)):
        word = out.get(status)
        if isinstance(word, int):
            for bit, flag in bits.items():
                out[flag] = bool(word >> bit & 1)
    if family is Family.RNGPRO:
        for name in RNGPRO_IGNORED:
            out.pop(name, None)
    return out


def encode_block(
    start: int, words: int, values: Mapping[str, Value], *, family: Family = Family.BT2
) -> list[int]:
    """Inverse of :func:`decode_block` (the simulator's side); unmapped or absent fields read 0."""
    registers = [0] * words
    for field in fields_in_block(start, words):
        if field.name not in values:
            continue
        value = values[field.name]
        offset = field.address - start
        if field.kind == "ascii":
            raw = str(value).encode("ascii")[: 2 * field.words].ljust(2 * field.words, b"\x00")
            for k in range(field.words):
                registers[offset + k] = int.from_bytes(raw[2 * k : 2 * k + 2], "big")
            continue
        scale = CURRENT_SCALE[family] if field.name == "current" else field.scale
        items = list(value) if isinstance(value, list) else [value]
        raws = [0 if v is None else _to_raw(float(v), scale) for v in items]
        if field.kind == "u32":
            registers[offset] = raws[0] >> 16 & 0xFFFF
            registers[offset + 1] = raws[0] & 0xFFFF
        else:
            for k, raw_value in enumerate(raws[: min(field.words, words - offset)]):
                registers[offset + k] = raw_value & 0xFFFF
    return registers


def _to_raw(value: float, scale: float) -> int:
    return round(value / scale)


def check_plausible(values: Mapping[str, Value]) -> None:
    """Raise BlockError naming the first value outside its physical range."""

    def within(name: str, low: float, high: float) -> None:
        value = values.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and not low <= value <= high:
            raise BlockError(f"{name} = {value} outside {low}..{high}")

    within("voltage", *VOLTAGE_RANGE)
    within("current", -MAX_ABS_CURRENT, MAX_ABS_CURRENT)
    within("capacity", *CAPACITY_RANGE)
    remaining, capacity = values.get("remaining_charge"), values.get("capacity")
    if (
        isinstance(remaining, float)
        and isinstance(capacity, float)
        and not 0 <= remaining <= REMAINING_MAX_RATIO * capacity
    ):
        raise BlockError(f"remaining_charge = {remaining} Ah with capacity {capacity} Ah")
    for name, (low, high) in (("cell_voltages", CELL_VOLTAGE_RANGE), ("temperatures", TEMPERATURE_RANGE)):
        series = values.get(name)
        if isinstance(series, list):
            for index, item in enumerate(series, start=1):
                if item is not None and not low <= item <= high:
                    raise BlockError(f"{name}[{index}] = {item} outside {low}..{high}")


# Per-sensor series: one sensor outside its range is dropped (None), not the whole block.
SENSOR_SERIES: Final = {
    "cell_voltages": (CELL_VOLTAGE_RANGE, "V"),
    "temperatures": (TEMPERATURE_RANGE, "°C"),
}


def screen_sensors(values: dict[str, Value]) -> list[str]:
    """Replace every cell voltage or temperature outside its range by None; say which and why.

    A broken thermistor (0x8000, or below -40 °C) or one cell reading 0 says nothing about the other
    sensors of a CRC-checked frame, so only that sensor is dropped.
    """
    dropped: list[str] = []
    for name, ((low, high), unit) in SENSOR_SERIES.items():
        series = values.get(name)
        if not isinstance(series, list):
            continue
        scale = FIELDS_BY_NAME[name].scale
        screened: list[float | None] = []
        for index, item in enumerate(series, start=1):
            if item is not None and not low <= item <= high:
                raw = round(item / scale) & 0xFFFF
                dropped.append(f"{name}[{index}] = {item} {unit} outside {low}..{high} (raw 0x{raw:04X})")
                screened.append(None)
            else:
                screened.append(item)
        values[name] = screened
    return dropped


def decode_screened(
    start: int, registers: Sequence[int], *, family: Family = Family.BT2
) -> tuple[dict[str, Value], list[str]]:
    """Decode a block, drop single sensors outside their range (None) and refuse the block (BlockError)
    if a pack value (voltage, current, capacity, remaining charge) is outside its range. Returns the
    values and one line per dropped sensor, for the caller to log with its context."""
    values = decode_block(start, registers, family=family)
    dropped = screen_sensors(values)
    check_plausible(values)
    return values, dropped


def decode_checked(start: int, registers: Sequence[int], *, family: Family = Family.BT2) -> dict[str, Value]:
    """:func:`decode_screened` without the list of dropped sensors."""
    return decode_screened(start, registers, family=family)[0]


def _int_word(status: Mapping[str, object], name: str) -> int | None:
    value = status.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _two_bit_fields(word: int, label: str, count: int = 16) -> list[str]:
    return [
        label.format(k=k + 1, level=_ALARM_LEVEL[word >> 2 * k & 3])
        for k in range(count)
        if word >> 2 * k & 3
    ]


def problems(status: Mapping[str, object]) -> list[str] | None:
    """Every alarm and protection a battery's alarm and status words report, in register order.

    Reads 5100-5105 (2-bit alarm fields), Status1 (5106) protection bits and Status3 (5108) cell
    voltage errors. [] = none; None = none of these words known. Status1 bits 1-3 (MOSFETs, power
    source) are state, not problems; Status2 warnings are not problems either.
    """
    out: list[str] = []
    known = False
    cells = _int_word(status, "cell_voltage_alarms")
    if cells is not None:
        known = True
        out += _two_bit_fields(cells, "cell {k} voltage {level}")
    sensors = _int_word(status, "cell_temperature_alarms")
    if sensors is not None:
        known = True
        out += _two_bit_fields(sensors, "cell temperature {k} {level}")
    other = _int_word(status, "other_alarms")
    if other is not None:
        known = True
        fields = 0
        for bit, name in OTHER_ALARMS.items():
            fields |= 3 << bit
            if level := other >> bit & 3:
                out.append(f"{name} {_ALARM_LEVEL[level]}")
        if reserved := other & ~fields & 0xFFFFFFFF:
            out.append(f"other alarm bits 0x{reserved:08X}")
    status1 = _int_word(status, "status1")
    if status1 is not None:
        known = True
        out += [name for bit, name in sorted(STATUS1_PROTECTIONS.items()) if status1 >> bit & 1]
    status3 = _int_word(status, "status3")
    if status3 is not None:
        known = True
        out += [f"cell {k + 1} voltage error" for k in range(16) if status3 >> k & 1]
    return out if known else None


def consistency_warnings(start: int, words: int, values: Mapping[str, Value]) -> list[str]:
    """Signs that a frame is not the reply to ``start`` x ``words`` (for the ``decode`` command)."""
    warnings: list[str] = []
    unmapped = [a for a in range(start, start + words) if a not in MAPPED_REGISTERS]
    if unmapped:
        warnings.append(
            f"a battery refuses a read of {start} x {words} (register {unmapped[0]} is not mapped): "
            "is this the reply to another register?"
        )
    if values.get("cell_count") == 0:
        warnings.append("cell_count = 0: no pack has no cells; is this the reply to another register?")
    for field in REGISTER_MAP:
        text = values.get(field.name)
        if (
            field.kind == "ascii"
            and isinstance(text, str)
            and any(not c.isprintable() or c == "\ufffd" for c in text)
        ):
            warnings.append(f"{field.name} = {text!r} is not text; is this the reply to another register?")
    return warnings
