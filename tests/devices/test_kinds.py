"""The device kinds are listed once (shared.devices.base.KINDS); the two modules that cannot import
that package without a cycle or its import cost keep copies, which must agree with the families."""

from __future__ import annotations

from shared.config import BUS_KINDS
from shared.devices import FAMILIES, KINDS
from shared.topics import READING_KINDS


def test_every_kind_has_a_reading_topic() -> None:
    # shared.topics is imported by shared.devices (via shared.payloads): it cannot import it back.
    assert READING_KINDS == KINDS == tuple(FAMILIES)


def test_bus_kinds_are_the_families_read_over_modbus() -> None:
    # The Smart Shunt pushes BLE notifications of its own: it is no kind:slave of reader.devices.
    assert tuple(kind for kind, family in FAMILIES.items() if family.transport == "modbus") == BUS_KINDS
    assert "shunt" not in BUS_KINDS
