"""Batteries: the contract over today's shared/registers.py table, unchanged behaviour, hub slaves."""

from __future__ import annotations

from services.aggregator import entities
from services.simulator.models import BatteryModel
from services.simulator.physics import BankPhysics, default_packs
from shared import registers
from shared.devices import FAMILIES, decode, read_plan
from shared.devices.battery import ENTITY_TABLE, HUB_SLAVE_IDS
from shared.registers import Family
from tests.devices.contract import FamilyContract, load_vectors, vector_registers

BATTERY = FAMILIES["battery"]


def _model() -> BatteryModel:
    return BatteryModel(BankPhysics(default_packs([0x30])), 0x30)


class TestBattery(FamilyContract):
    kind = "battery"
    make_model = _model

    # Battery entities live in services/aggregator/entities.py (computed from the bank view) until a
    # later wave moves them; these two contract checks are replaced by the ones below.
    def test_every_entity_computable_from_a_simulated_reading(self) -> None:
        module, name = ENTITY_TABLE.split(":")
        assert getattr(entities, name) is entities.BATTERY and module == entities.__name__

    def test_entities_are_well_formed(self) -> None:
        assert BATTERY.entities == ()


def test_default_profile_for_four_batteries_stays_55_entities() -> None:
    per_battery = len(entities.for_profile(entities.BATTERY, "default"))
    bank = len(entities.for_profile(entities.BANK, "default"))
    assert 4 * per_battery + bank == 55


def test_decode_is_exactly_the_registers_decoder() -> None:
    for vector in load_vectors("battery"):
        words = vector_registers(vector)
        family = Family(vector["variant"])
        assert decode(BATTERY, vector["register"], words, variant=vector["variant"]) == (
            registers.decode_screened(vector["register"], words, family=family)
        )


def test_read_plan_is_todays_reader_cadence() -> None:
    every = [(b.start, b.words) for b in read_plan(BATTERY, False)]
    assert every == [registers.BLOCK_STATUS, registers.BLOCK_CELLS]
    assert [(b.start, b.words) for b in read_plan(BATTERY, True)] == [*every, *registers.BLOCKS_INFO]


def test_hub_slaves_are_battery_ids_not_a_family() -> None:
    assert tuple(range(0x30, 0x38)) == HUB_SLAVE_IDS
    assert "hub" not in FAMILIES
