"""Device families as data: one module per kind, one registry.

``FAMILIES[kind]`` is the :class:`~shared.devices.base.DeviceFamily` of ``battery``, ``controller``,
``dcc``, ``inverter`` or ``shunt``; :func:`decode` and :func:`read_plan` work on any of them. See
docs/devices.md for adding a kind.
"""

from __future__ import annotations

from typing import Final

from .base import (
    KINDS,
    BitTable,
    Block,
    BlockError,
    DeviceFamily,
    DeviceKind,
    EntityDef,
    RegField,
    decode,
    encode,
    entity_values,
    mapped_registers,
    problems,
    read_plan,
    reading_payload,
)
from .battery import BATTERY
from .controller import CONTROLLER
from .dcc import DCC
from .inverter import INVERTER
from .shunt import SHUNT

FAMILIES: Final[dict[DeviceKind, DeviceFamily]] = {
    f.kind: f for f in (BATTERY, CONTROLLER, DCC, INVERTER, SHUNT)
}
assert tuple(FAMILIES) == KINDS


def family(kind: str) -> DeviceFamily:
    """The family of ``kind``; ValueError naming the known kinds otherwise (for CLI/config errors)."""
    for known, fam in FAMILIES.items():
        if known == kind:
            return fam
    raise ValueError(f"unknown device kind {kind!r} (known: {', '.join(FAMILIES)})")


__all__ = [
    "FAMILIES",
    "KINDS",
    "BitTable",
    "Block",
    "BlockError",
    "DeviceFamily",
    "DeviceKind",
    "EntityDef",
    "RegField",
    "decode",
    "encode",
    "entity_values",
    "family",
    "mapped_registers",
    "problems",
    "read_plan",
    "reading_payload",
]
