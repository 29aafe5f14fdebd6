"""Charge controllers: the contract, plus the PV day curve, bank charging and fault bits."""

from __future__ import annotations

from typing import Any

from services.simulator.models import ControllerModel, SimBank
from services.simulator.physics import DAY, HOUR
from shared.devices import FAMILIES, decode, entity_values, problems
from tests.devices.contract import FamilyContract

CONTROLLER = FAMILIES["controller"]


class TestController(FamilyContract):
    kind = "controller"
    make_model = ControllerModel


def _reading(model: ControllerModel, t: float) -> dict[str, Any]:
    values, dropped = decode(CONTROLLER, 0x0100, _read(model, t))
    assert dropped == []
    return values


def _read(model: ControllerModel, t: float) -> list[int]:
    from services.simulator.models import read

    registers = read(model, 0x0100, 34, t)
    assert isinstance(registers, list)
    return registers


def test_pv_follows_the_day_and_charges_the_bank() -> None:
    bank = SimBank(200.0, 0.3)
    model = ControllerModel(bank=bank, pv_peak_w=400.0, load_w=20.0, start=0.0)
    night = _reading(model, 3 * HOUR)
    assert night["pv_power"] == 0 and night["charging_state"] == "deactivated"
    soc_morning = bank.soc
    noon = _reading(model, 12.5 * HOUR)
    assert noon["pv_power"] > 100 and noon["charging_state"] == "mppt"
    assert bank.soc > soc_morning  # the controller charged the simulated bank
    evening = _reading(model, 23 * HOUR)
    assert evening["pv_power"] == 0
    soc_evening = bank.soc
    _reading(model, DAY + 5 * HOUR)
    assert bank.soc < soc_evening  # the load drew it overnight


def test_daily_generation_only_grows_within_a_day_and_resets_at_midnight() -> None:
    model = ControllerModel(start=0.0)
    today: list[Any] = [
        entity_values(CONTROLLER, _reading(model, h * HOUR))["generation_today"] for h in range(7, 24)
    ]
    assert today == sorted(today) and today[-1] > 0
    tomorrow = entity_values(CONTROLLER, _reading(model, DAY + 1 * HOUR))["generation_today"]
    assert tomorrow == 0.0
    total: Any = entity_values(CONTROLLER, _reading(model, DAY + 2 * HOUR), "extended")["generation_total"]
    assert isinstance(total, float) and total >= today[-1]


def test_fault_bits_become_a_problem_and_text() -> None:
    registers = [0] * 34
    registers[0x21] = 1 << 14 | 1 << 5  # 0x0121: charge MOS short, controller over-temperature
    values, _ = decode(CONTROLLER, 0x0100, registers)
    assert problems(CONTROLLER, values) == ["controller temperature too high", "charge MOS short circuit"]
    states = entity_values(CONTROLLER, values, "extended")
    assert states["fault"] is True
    assert states["problems"] == "controller temperature too high, charge MOS short circuit"
    assert entity_values(CONTROLLER, decode(CONTROLLER, 0x0100, [0] * 34)[0])["fault"] is False


def test_negative_temperatures_are_sign_magnitude() -> None:
    registers = [0] * 34
    registers[3] = 0x81 << 8 | 0x90  # renogy-ble: 0x81 -> -1 °C, 0x90 -> -16 °C
    values, _ = decode(CONTROLLER, 0x0100, registers)
    assert values["controller_temperature"] == -1 and values["battery_temperature"] == -16


def test_unknown_charging_state_is_dropped_not_published() -> None:
    registers = [0] * 34
    registers[0x20] = 0x0009
    values, dropped = decode(CONTROLLER, 0x0100, registers)
    assert "charging_state" not in values
    assert dropped == ["charging_state code 9 is not a known charging state"]
