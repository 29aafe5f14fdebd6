"""Renogy smart LFP batteries: the existing table of shared/registers.py as a device family.

Nothing is redefined here: fields, blocks, ranges and the decoder are those of shared/registers.py
(V1.7 protocol; sources in that module's docstring), so behaviour is unchanged. The three variants
are :class:`shared.registers.Family` (``bt2``, ``pro``, ``rngpro``: current scale and alarm words);
together with BT-2 + built-in ``BT-TH-*`` packs these are the four battery kinds.

Hub slaves are not a family. Batteries behind a Communication Hub (slave ids 0x30-0x37, probed by
renogy-ble ``src/renogy_ble/hub.py`` ``HUB_BATTERY_SLAVE_IDS``) answer the same registers with the
same scales and get the same entities; only *which slave ids to probe* differs, which is a discovery
detail (:data:`HUB_SLAVE_IDS`), not a register map.

Entities: the battery and bank tables stay in services/aggregator/entities.py (``BATTERY``, ``BANK``)
until a later wave moves them here; :data:`ENTITY_TABLE` names them. The 4-battery default profile
is 4 x 12 battery + 7 bank = 55 entities.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from shared import registers
from shared.registers import Family

from .base import Block, DeviceFamily, RegField, Values

HUB_SLAVE_IDS: Final = tuple(range(0x30, 0x38))
FACTORY_SLAVE: Final = 0xF7
ENTITY_TABLE: Final = "services.aggregator.entities:BATTERY"


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

BATTERY: Final = DeviceFamily(
    kind="battery",
    title="Battery",
    fields=tuple(_field(f) for f in registers.REGISTER_MAP),
    blocks=BLOCKS,
    ranges=RANGES,
    identity=("model", "serial", "firmware", "manufacturer", "device_address"),
    entities=(),
    default_slave=FACTORY_SLAVE,
    variants=tuple(f.value for f in Family),
    custom_decode=_decode,
    sources=("shared/registers.py (Lithium Iron Battery BMS Modbus Protocol V1.7 and captures)",),
    notes=f"entities: {ENTITY_TABLE}; status/problems: shared.registers.problems",
)
