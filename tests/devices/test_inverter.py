"""Inverters: the contract, plus AC output and the signed battery current."""

from __future__ import annotations

from services.simulator.models import InverterModel, read
from services.simulator.physics import HOUR
from shared.devices import FAMILIES, decode
from tests.devices.contract import FamilyContract

INVERTER = FAMILIES["inverter"]


class TestInverter(FamilyContract):
    kind = "inverter"
    make_model = InverterModel


def test_ac_output_and_evening_load() -> None:
    model = InverterModel(start=0.0)
    registers = read(model, 4000, 10, 3 * HOUR)
    assert isinstance(registers, list)
    night = decode(INVERTER, 4000, registers)[0]
    assert night["output_voltage"] == 120.0 and night["output_frequency"] == 60.0
    load = read(model, 4408, 6, 20 * HOUR)
    assert isinstance(load, list)
    power = decode(INVERTER, 4408, load)[0]["load_active_power"]
    assert isinstance(power, int) and power > 150


def test_model_read_is_refused_when_the_block_is_incomplete() -> None:
    # 4311 x 9 runs past the mapped model block: a real device answers exception 02
    assert read(InverterModel(), 4311, 9, 0.0) == 0x02
