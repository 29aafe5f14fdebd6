"""DC-DC chargers: the contract, plus alternator charging with the ignition."""

from __future__ import annotations

from typing import Any

from services.simulator.models import DccModel, read
from services.simulator.physics import HOUR
from shared.devices import FAMILIES, decode, entity_values
from tests.devices.contract import FamilyContract

DCC = FAMILIES["dcc"]


class TestDcc(FamilyContract):
    kind = "dcc"
    make_model = DccModel


def _state(model: DccModel, t: float) -> dict[str, Any]:
    registers = read(model, 0x0120, 7, t)
    assert isinstance(registers, list)
    return decode(DCC, 0x0120, registers)[0]


def test_alternator_charges_only_while_the_engine_runs() -> None:
    model = DccModel(start=0.0)
    driving = _state(model, 8.5 * HOUR)
    assert driving["ignition"] is True and driving["output_power"] > 0
    assert driving["charging_mode"] in ("alternator to house", "solar and alternator to house")
    night = _state(model, 23 * HOUR)
    assert night["ignition"] is False and night["charging_mode"] == "standby" and night["output_power"] == 0


def test_fault_words_raise_the_problem_sensor() -> None:
    values, _ = decode(DCC, 0x0120, [0x0002, 1 << 9, 1 << 1, 0, 0, 0, 0])
    states = entity_values(DCC, values, "extended")
    assert states["fault"] is True
    assert states["problems"] == "starter battery reverse polarity, battery over-voltage"
