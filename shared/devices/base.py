"""A device family as data, and the pure functions that every family shares.

A :class:`DeviceFamily` holds everything that differs between Renogy device kinds: its register
fields, the blocks the reader requests and how often (every cycle or every info interval),
plausibility ranges, identity fields, status-bit tables and the Home Assistant entity table. The
reader, aggregator, simulator and ``decode`` command iterate over :data:`shared.devices.FAMILIES`
instead of naming battery fields. Nothing here does I/O.

Screening rule (all kinds): a numeric field outside its range, an enum code the family does not
know, or text that is not printable is *dropped* (left out of the values, one line in ``dropped``),
never published; a block that cannot be decoded at all raises :class:`BlockError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast, get_args

from shared.payloads import MAX_TEXT_VALUE, EntitySpec, Platform, StateValue
from shared.registers import BlockError, Value
from shared.topics import SCHEMA

__all__ = [
    "BitTable",
    "Block",
    "BlockError",
    "ControlDef",
    "DeviceFamily",
    "EntityDef",
    "RegField",
    "decode",
    "encode",
    "entity_values",
    "fault_value",
    "kwh_value",
    "mapped_registers",
    "problem_text_value",
    "problems",
    "problems_in",
    "read_plan",
    "reading_payload",
]

DeviceKind = Literal["battery", "controller", "dcc", "inverter", "shunt"]
# The one list of kinds (shared.topics.READING_KINDS and shared.config.BUS_KINDS repeat it: they
# cannot import this package cheaply, tests/devices/test_kinds.py checks that they agree).
KINDS: Final[tuple[DeviceKind, ...]] = get_args(DeviceKind)
Cadence = Literal["cycle", "info", "notify"]
# u16/s16: one register; u32/s32: two registers, high word first; sm8: a sign-magnitude byte (bit 7 =
# minus) selected by ``shift``; ascii: ``words`` registers of text, NUL/space padded.
FieldKind = Literal["u16", "s16", "u32", "s32", "sm8", "ascii"]
Values = dict[str, Value]
Decoder = Callable[[int, Sequence[int], str | None], tuple[Values, list[str]]]
EntityValue = Callable[[Mapping[str, Value]], StateValue]


@dataclass(frozen=True, slots=True)
class RegField:
    """One decoded value. ``shift``/``mask`` select bits of a single register (a byte, a flag);
    ``enum`` turns the raw code into text; ``flag`` turns it into a boolean."""

    address: int
    name: str
    kind: FieldKind = "u16"
    words: int = 1
    scale: float = 1.0
    unit: str | None = None
    shift: int = 0
    mask: int | None = None
    enum: Mapping[int, str] | None = None
    flag: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        expected = {"u32": 2, "s32": 2}.get(self.kind)
        if expected is not None and self.words != expected:
            raise ValueError(f"{self.name}: a {self.kind} field spans {expected} registers")

    @property
    def end(self) -> int:
        return self.address + self.words


@dataclass(frozen=True, slots=True)
class Block:
    """A read the reader issues: ``start`` x ``words``; cadence ``info`` = at start and every
    reader.info_interval, ``notify`` = pushed by the device (no request)."""

    start: int
    words: int
    cadence: Cadence = "cycle"

    @property
    def end(self) -> int:
        return self.start + self.words


@dataclass(frozen=True, slots=True)
class BitTable:
    """Problem bits of one decoded integer field: bit number -> problem text."""

    field: str
    bits: Mapping[int, str]


@dataclass(frozen=True, slots=True)
class EntityDef:
    """A Home Assistant entity as data. ``value`` is a decoded field name or a small pure function of
    the decoded reading (the battery family's name attributes of the aggregator's views instead, see
    shared/devices/battery.py); ``extended`` entities exist only in the extended profile."""

    key: str
    name: str
    value: str | EntityValue
    unit: str | None = None
    device_class: str | None = None
    state_class: str | None = None
    accuracy: int = 0
    platform: Platform = "sensor"
    extended: bool = False
    icon: str | None = None
    category: str | None = None

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
        """An energy counter: published rounded down, so a retained copy never exceeds the counter."""
        return self.device_class == "energy"

    def compute(self, reading: Mapping[str, Value]) -> StateValue:
        raw = self.value(reading) if callable(self.value) else reading.get(self.value)
        return _state(raw, self.platform)


@dataclass(frozen=True, slots=True)
class ControlDef:
    """A register the user may write (opt-in ``controls``), shown as an ESPHome switch.

    ``on``/``off`` are the raw values written to ``register`` with function 6; ``readback`` is the
    decoded boolean field that reports the device's actual state. The switch state is that field,
    read back after the write and on every poll, never the value requested.
    """

    key: str
    name: str
    register: int
    readback: str
    on: int = 1
    off: int = 0
    device_class: str | None = "switch"
    icon: str | None = None
    platform: Literal["switch"] = "switch"

    def __post_init__(self) -> None:
        if not (0 <= self.register <= 0xFFFF and 0 <= self.on <= 0xFFFF and 0 <= self.off <= 0xFFFF):
            raise ValueError(f"{self.key}: register and values must be 0..65535")
        if self.on == self.off:
            raise ValueError(f"{self.key}: on and off must differ")

    def raw(self, state: bool) -> int:
        return self.on if state else self.off

    @property
    def spec(self) -> EntitySpec:
        return EntitySpec(
            key=self.key,
            name=self.name,
            device_class=self.device_class,
            icon=self.icon,
            # cast: shared.payloads.Platform does not list "switch" yet (the gateway wiring adds it).
            platform=cast(Platform, self.platform),
        )

    def compute(self, reading: Mapping[str, Value]) -> bool | None:
        """The switch state from a decoded reading: the read-back field, None while unknown."""
        value = reading.get(self.readback)
        return value if isinstance(value, bool) else None


@dataclass(frozen=True, slots=True)
class DeviceFamily:
    """Everything that is specific to one device kind. ``custom_decode`` replaces the table-driven
    decoder (batteries keep shared/registers.py; the shunt's notification is not Modbus)."""

    kind: DeviceKind
    title: str
    fields: tuple[RegField, ...]
    blocks: tuple[Block, ...]
    ranges: Mapping[str, tuple[float, float]]
    identity: tuple[str, ...]
    status_bits: tuple[BitTable, ...] = ()
    entities: tuple[EntityDef, ...] = ()
    default_slave: int = 0xFF
    variants: tuple[str, ...] = ()
    transport: Literal["modbus", "notify"] = "modbus"
    custom_decode: Decoder | None = None
    sources: tuple[str, ...] = ()
    notes: str = ""
    controls: tuple[ControlDef, ...] = ()
    # The decoded power field (W, + = charging) the aggregator integrates into energy counters, served as
    # two more entities, energy_in / energy_out (kWh; services/aggregator/devices.py); None: no counters.
    energy_power: str | None = None
    _by_name: dict[str, RegField] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name.update({f.name: f for f in self.fields})
        # Controls share the device's entity key space (one ESPHome object id each).
        names = [e.key for e in self.entities] + [c.key for c in self.controls]
        if len(names) != len(set(names)):
            raise ValueError(f"{self.kind}: duplicate entity keys")
        for control in self.controls:
            readback = self._by_name.get(control.readback)
            if readback is None or not readback.flag:
                raise ValueError(
                    f"{self.kind}: control {control.key} reads back {control.readback!r}, not a flag"
                )

    def get_field(self, name: str) -> RegField | None:
        return self._by_name.get(name)

    def get_control(self, key: str) -> ControlDef | None:
        return next((c for c in self.controls if c.key == key), None)


def read_plan(family: DeviceFamily, info_due: bool) -> tuple[Block, ...]:
    """The blocks to request this cycle, in table order: every-cycle blocks, plus the info blocks
    when ``info_due`` (first cycle, then every reader.info_interval). Notify-only kinds read none."""
    return tuple(b for b in family.blocks if b.cadence == "cycle" or (info_due and b.cadence == "info"))


def mapped_registers(family: DeviceFamily) -> frozenset[int]:
    """Registers a real device answers: every register of every block (a device refuses a read
    touching anything else with exception 02)."""
    return frozenset(a for b in family.blocks if b.cadence != "notify" for a in range(b.start, b.end))


def fields_in(family: DeviceFamily, start: int, words: int) -> list[RegField]:
    end = start + words
    return [f for f in family.fields if start <= f.address and f.end <= end]


def _raw(f: RegField, words: Sequence[int]) -> int:
    if f.kind in ("u32", "s32"):
        value = words[0] << 16 | words[1]
        return value - (1 << 32) if f.kind == "s32" and value & 0x8000_0000 else value
    word = words[0]
    if f.kind == "s16":
        return word - 0x10000 if word & 0x8000 else word
    word >>= f.shift
    if f.kind == "sm8":
        byte = word & 0xFF
        return -(byte & 0x7F) if byte & 0x80 else byte
    return word & f.mask if f.mask is not None else word


def scaled(raw: int, scale: float) -> int | float:
    """Round to the register's resolution so 0.1 * 34 prints as 3.4."""
    if scale == 1.0:
        return raw
    digits = max(0, -math.floor(math.log10(scale))) if scale < 1 else 0
    return round(raw * scale, digits)


def _ascii(words: Sequence[int]) -> str:
    raw = b"".join(w.to_bytes(2, "big") for w in words)
    return raw.replace(b"\x00", b" ").decode("ascii", errors="replace").strip()


def decode(
    family: DeviceFamily, start: int, registers: Sequence[int], *, variant: str | None = None
) -> tuple[Values, list[str]]:
    """Decode the reply to ``start`` x ``len(registers)``: every field wholly inside it, screened.

    Returns (values, dropped): ``dropped`` has one line per value left out (outside its range,
    unknown code, not text), for the caller to log with its context. Raises BlockError, and only
    BlockError, for a block that cannot be decoded (no field of this kind in it, words outside
    0..65535, or what the family's own decoder refuses).
    """
    if any(not 0 <= w <= 0xFFFF for w in registers):
        raise BlockError("register values must be 0..65535")
    if variant is not None and variant not in family.variants:
        raise BlockError(f"unknown {family.kind} variant {variant!r} (known: {', '.join(family.variants)})")
    if family.custom_decode is not None:
        return family.custom_decode(start, registers, variant)
    fields = fields_in(family, start, len(registers))
    if not fields:
        raise BlockError(f"{start} x {len(registers)} holds no {family.kind} field")
    values: Values = {}
    dropped: list[str] = []
    for f in fields:
        words = registers[f.address - start : f.end - start]
        if f.kind == "ascii":
            text = _ascii(words)
            if any(not c.isprintable() or c == "\ufffd" for c in text):
                dropped.append(f"{f.name} = {text!r} is not text")
            else:
                values[f.name] = text
            continue
        raw = _raw(f, words)
        if f.enum is not None:
            if raw in f.enum:
                values[f.name] = f.enum[raw]
            else:
                dropped.append(f"{f.name} code {raw} is not a known {f.name.replace('_', ' ')}")
            continue
        if f.flag:
            values[f.name] = bool(raw)
            continue
        value = scaled(raw, f.scale)
        limits = family.ranges.get(f.name)
        if limits is not None and not limits[0] <= value <= limits[1]:
            unit = f" {f.unit}" if f.unit else ""
            dropped.append(
                f"{f.name} = {value}{unit} outside {limits[0]}..{limits[1]} (raw 0x{raw & 0xFFFFFFFF:X})"
            )
            continue
        values[f.name] = value
    return values, dropped


def _to_raw(f: RegField, value: Value) -> int:
    if f.enum is not None:
        codes = {text: code for code, text in f.enum.items()}
        return codes[str(value)]
    if isinstance(value, bool):
        return int(value)
    if not isinstance(value, int | float):
        raise TypeError(f"{f.name}: {value!r} is not a number")
    raw = round(float(value) / f.scale)
    if f.kind == "sm8":
        return (0x80 | min(-raw, 0x7F)) if raw < 0 else min(raw, 0x7F)
    return raw


def encode(family: DeviceFamily, start: int, words: int, values: Mapping[str, Value]) -> list[int]:
    """Inverse of :func:`decode` for table-driven families (the simulator's side): unlisted
    registers and absent fields read 0; bit fields are OR-ed into their register."""
    registers = [0] * words
    for f in fields_in(family, start, words):
        if f.name not in values:
            continue
        offset = f.address - start
        value = values[f.name]
        if f.kind == "ascii":
            raw_text = str(value).encode("ascii")[: 2 * f.words].ljust(2 * f.words, b"\x00")
            for k in range(f.words):
                registers[offset + k] = int.from_bytes(raw_text[2 * k : 2 * k + 2], "big")
            continue
        raw = _to_raw(f, value)
        if f.kind in ("u32", "s32"):
            raw &= 0xFFFF_FFFF
            registers[offset] = raw >> 16
            registers[offset + 1] = raw & 0xFFFF
        elif f.kind == "s16":
            registers[offset] = raw & 0xFFFF
        else:
            mask = 0xFF if f.kind == "sm8" else (f.mask if f.mask is not None else 0xFFFF)
            registers[offset] |= (raw & mask) << f.shift
    return registers


def problems_in(tables: Sequence[BitTable], reading: Mapping[str, Value]) -> list[str] | None:
    """Problems the status bits report, in table order; [] = none, None = no status word known."""
    out: list[str] = []
    known = False
    for table in tables:
        word = reading.get(table.field)
        if isinstance(word, int) and not isinstance(word, bool):
            known = True
            out += [text for bit, text in sorted(table.bits.items()) if word >> bit & 1]
    return out if known else None


def problems(family: DeviceFamily, reading: Mapping[str, Value]) -> list[str] | None:
    """:func:`problems_in` for a family's status-bit tables."""
    return problems_in(family.status_bits, reading)


def fault_value(tables: Sequence[BitTable]) -> EntityValue:
    """Entity value: True when any problem bit is set (a ``problem`` binary sensor)."""

    def value(reading: Mapping[str, Value]) -> StateValue:
        found = problems_in(tables, reading)
        return None if found is None else bool(found)

    return value


def problem_text_value(tables: Sequence[BitTable]) -> EntityValue:
    """Entity value: the problems as one short text ("none" when there are none)."""

    def value(reading: Mapping[str, Value]) -> StateValue:
        found = problems_in(tables, reading)
        return None if found is None else (", ".join(found) or "none")[:MAX_TEXT_VALUE]

    return value


def kwh_value(name: str) -> EntityValue:
    """Entity value: a Wh register field in kWh."""

    def value(reading: Mapping[str, Value]) -> StateValue:
        wh = reading.get(name)
        return round(wh / 1000, 3) if isinstance(wh, int | float) and not isinstance(wh, bool) else None

    return value


def _state(raw: object, platform: Platform) -> StateValue:
    if raw is None:
        return None
    if platform == "binary_sensor":
        return bool(raw)
    if platform == "text_sensor":
        return str(raw)
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        return None
    return float(raw)


def entity_values(
    family: DeviceFamily, reading: Mapping[str, Value], profile: str = "default"
) -> dict[str, StateValue]:
    """Every entity's state for one decoded reading (None = unknown), in table order."""
    if profile not in ("default", "extended"):
        raise ValueError(f"unknown profile {profile!r}")
    return {e.key: e.compute(reading) for e in family.entities if profile == "extended" or not e.extended}


def reading_payload(
    family: DeviceFamily, *, bt2: str, slave_id: int, ts: float, values: Mapping[str, Value]
) -> dict[str, Any]:
    """The MQTT reading body for ``renogy/bt2/<bt2>/<kind>/<slave_id>/reading``: flat like today's
    battery reading, plus ``kind``; dropped values are absent."""
    return {"schema": SCHEMA, "kind": family.kind, "ts": ts, "bt2": bt2, "slave_id": slave_id, **values}
