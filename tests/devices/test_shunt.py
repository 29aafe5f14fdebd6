"""Smart Shunt 300: the contract, plus framing of its notify-only payload."""

from __future__ import annotations

from typing import Any

import pytest

from services.simulator.models import ShuntModel, SimBank
from shared.devices import FAMILIES, BlockError, decode, read_plan
from shared.devices.shunt import payload_words
from tests.devices.contract import FamilyContract

SHUNT = FAMILIES["shunt"]


class TestShunt(FamilyContract):
    kind = "shunt"
    make_model = ShuntModel


def test_notify_only_reads_nothing() -> None:
    assert read_plan(SHUNT, True) == ()


def test_frame_without_live_header_is_refused() -> None:
    with pytest.raises(BlockError, match="not a live shunt frame"):
        decode(SHUNT, 0, [0] * 55)
    with pytest.raises(BlockError, match="55 words"):
        decode(SHUNT, 0, [0] * 12)


def test_frame_follows_the_bank_current() -> None:
    bank = SimBank()
    bank.step(-20.0, 60.0)
    values: dict[str, Any] = decode(SHUNT, 0, payload_words(ShuntModel(bank).notification(0.0)))[0]
    assert values["current"] == -20.0
    assert values["power"] == pytest.approx(values["voltage"] * -20.0, abs=0.1)
