"""Batteries: the contract over today's shared/registers.py table, unchanged behaviour, hub slaves."""

from __future__ import annotations

import orjson

from services.aggregator import entities
from services.aggregator.banks import Layout
from services.aggregator.core import AggregatorCore, Settings
from services.aggregator.model import BankView, BatteryView
from services.simulator.models import BatteryModel
from services.simulator.physics import BankPhysics, default_packs
from shared import registers
from shared.devices import FAMILIES, decode, read_plan, reading_payload
from shared.devices.battery import BANK_ENTITIES, HUB_SLAVE_IDS
from shared.payloads import PLATFORMS, STATE_CLASSES, parse_reading
from shared.registers import Family
from tests.devices.contract import START, FamilyContract, load_vectors, vector_registers

BATTERY = FAMILIES["battery"]


def _model() -> BatteryModel:
    return BatteryModel(BankPhysics(default_packs([0x30])), 0x30)


class TestBattery(FamilyContract):
    kind = "battery"
    make_model = _model

    # Battery entity values name attributes of the aggregator's views, not decoded fields (see
    # shared/devices/battery.py): these two contract checks are replaced by ones over the views.
    def test_every_entity_computable_from_a_simulated_reading(self) -> None:
        assert tuple(e.definition for e in entities.BATTERY) == BATTERY.entities
        assert tuple(e.definition for e in entities.BANK) == BANK_ENTITIES
        core = AggregatorCore(Layout(), Settings(profile="extended"), started=START)
        values, _ = self.sim_reading(self.model(), START)
        body = reading_payload(BATTERY, bt2="aabbccddeeff", slave_id=0x30, ts=START, values=values)
        core.accept(parse_reading(orjson.dumps(body)), START)
        view = core.view(core.batteries["battery_48"], START)
        for entity in entities.BATTERY:
            kind = {"sensor": (int, float), "binary_sensor": bool, "text_sensor": str}[entity.platform]
            value = entity.value(view)
            assert value is None or isinstance(value, kind), f"{entity.key} = {value!r}"
            assert value is not None or entity.extended, f"{entity.key} unknown from {sorted(values)}"

    def test_entities_are_well_formed(self) -> None:
        for table, view in ((BATTERY.entities, BatteryView), (BANK_ENTITIES, BankView)):
            for entity in table:
                assert entity.platform in PLATFORMS and (entity.state_class or "") in STATE_CLASSES
                if entity.device_class == "energy":
                    assert entity.unit == "kWh" and entity.state_class == "total_increasing", entity.key
                if entity.platform != "sensor":
                    assert entity.unit is None and entity.state_class is None, entity.key
                assert isinstance(entity.value, str) and hasattr(view, entity.value), entity.key


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
