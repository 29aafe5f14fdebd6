"""Parse an untrusted reading payload of a device family (reader -> aggregator), as strictly as batteries.

The reader screens every value when it decodes registers, but anyone who can publish on the broker can
publish a reading, so each value is screened again here: a known field must have its type (a number, an
enum text the family knows, true/false, text), be finite, and lie inside the family's range (or, for a
field without one, inside what its registers can hold). Any violation raises
:class:`~shared.payloads.PayloadError` with one line naming the key; the caller drops the whole message,
like :func:`shared.payloads.parse_reading` does for batteries. Keys the family does not know are ignored
(a newer reader may send more).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from shared.payloads import PayloadError, clean_text, loads_object
from shared.registers import Value

from .base import DeviceFamily, RegField

ENVELOPE: Final = frozenset({"schema", "kind", "ts", "bt2", "slave_id", "complete", "boot_id", "mono"})
MAX_TEXT: Final = 64
# What a register of each kind can hold (raw units), for fields without a plausibility range.
_RAW_LIMITS: Final = {
    "u16": (0, 0xFFFF),
    "s16": (-0x8000, 0x7FFF),
    "u32": (0, 0xFFFF_FFFF),
    "s32": (-0x8000_0000, 0x7FFF_FFFF),
    "sm8": (-0x7F, 0x7F),
}


@dataclass(frozen=True, slots=True)
class FamilyReading:
    """One device's screened reading of one cycle; absent values were not read (or were dropped)."""

    kind: str
    ts: float
    bt2: str
    slave_id: int
    values: Mapping[str, Value] = field(default_factory=dict)
    boot_id: str | None = None
    mono: float | None = None


def value_names(family: DeviceFamily) -> frozenset[str]:
    """Every value a reading of this family may carry (register fields, plus ranged custom values)."""
    return frozenset(f.name for f in family.fields) | frozenset(family.ranges)


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadError(f"{key!r} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise PayloadError(f"{key!r} is not finite")
    return value


def _limits(family: DeviceFamily, reg: RegField | None, key: str) -> tuple[float, float] | None:
    ranged = family.ranges.get(key)
    if ranged is not None:
        return ranged
    if reg is None or reg.kind == "ascii":
        return None
    low, high = _RAW_LIMITS[reg.kind]
    if reg.mask is not None:
        low, high = 0, reg.mask
    return low * reg.scale, high * reg.scale


def _screen(family: DeviceFamily, key: str, value: Any) -> Value:
    reg = family.get_field(key)
    if reg is not None and reg.enum is not None:
        if not isinstance(value, str) or value not in reg.enum.values():
            raise PayloadError(
                f"implausible value: {key} = {str(value)[:32]!r} is not a known {key.replace('_', ' ')}"
            )
        return value
    if reg is not None and reg.flag:
        if not isinstance(value, bool):
            raise PayloadError(f"{key!r} must be true or false")
        return value
    if reg is not None and reg.kind == "ascii":
        limit = min(MAX_TEXT, 2 * reg.words)
        if not isinstance(value, str) or len(value) > limit:
            raise PayloadError(f"{key!r} must be a string of at most {limit} characters")
        return clean_text(value) or ""
    number = _number(key, value)
    if any(table.field == key for table in family.status_bits) and not isinstance(number, int):
        raise PayloadError(f"{key!r} must be an integer (a status word)")
    limits = _limits(family, reg, key)
    if limits is not None and not limits[0] <= number <= limits[1]:
        raise PayloadError(f"implausible value: {key} = {number} outside {limits[0]}..{limits[1]}")
    return number


def parse_family_reading(
    family: DeviceFamily,
    payload: bytes | bytearray | str,
    *,
    bt2: str | None = None,
    slave_id: int | None = None,
) -> FamilyReading:
    """Validate a reading of ``family``; the topic's identity (when given) must agree with the body."""
    obj = loads_object(payload)
    kind = obj.get("kind")
    if kind != family.kind:
        raise PayloadError(f"body kind {str(kind)[:32]!r} differs from topic {family.kind!r}")
    ts = obj.get("ts")
    if ts is None:
        raise PayloadError("missing 'ts'")
    if _number("ts", ts) <= 0:
        raise PayloadError("'ts' must be a positive epoch time")
    body_bt2 = obj.get("bt2")
    if body_bt2 is None:
        raise PayloadError("missing 'bt2'")
    if not isinstance(body_bt2, str) or len(body_bt2) > 12:
        raise PayloadError("'bt2' must be a string of at most 12 characters")
    slave = obj.get("slave_id")
    if isinstance(slave, bool) or not isinstance(slave, int) or not 0 <= slave < 256:
        raise PayloadError("'slave_id' must be an integer 0..255")
    if bt2 is not None and body_bt2 != bt2:
        raise PayloadError(f"body bt2 {body_bt2!r} differs from topic {bt2!r}")
    if slave_id is not None and slave != slave_id:
        raise PayloadError(f"body slave_id {slave} differs from topic {slave_id}")
    mono = obj.get("mono")
    if mono is not None and _number("mono", mono) < 0:
        raise PayloadError("'mono' must be a non-negative number of seconds")
    boot_id = obj.get("boot_id")
    if boot_id is not None and (not isinstance(boot_id, str) or len(boot_id) > 64):
        raise PayloadError("'boot_id' must be a string of at most 64 characters")
    names = value_names(family)
    values: dict[str, Value] = {}
    for key, value in obj.items():
        if key in ENVELOPE or key not in names or value is None:
            continue
        screened = _screen(family, key, value)
        if screened != "":
            values[key] = screened
    return FamilyReading(
        kind=family.kind,
        ts=float(ts),
        bt2=body_bt2,
        slave_id=slave,
        values=values,
        boot_id=clean_text(boot_id),
        mono=None if mono is None else float(mono),
    )
