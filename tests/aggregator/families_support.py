"""Readings of the device families as the reader publishes them: simulator registers -> decode -> payload."""

from __future__ import annotations

from typing import Any

import orjson

from services.simulator import models
from shared.devices import decode, read_plan, reading_payload
from shared.registers import Value
from tests.aggregator.support import BT2, TOPICS

NOON = 12 * 3600.0  # simulated time of day: the sun is up, the chargers charge
CONTROLLER_SLAVE = 1
DCC_SLAVE = 96
CONTROLLER_ID = f"controller_{BT2}_{CONTROLLER_SLAVE}"
DCC_ID = f"dcc_{BT2}_{DCC_SLAVE}"
CONTROLLER_DEFAULT = (
    "pv_power",
    "pv_voltage",
    "battery_voltage",
    "charging_current",
    "load_power",
    "controller_temperature",
    "generation_today",
    "charging_state",
    "fault",
)


def sim_values(model: models.DeviceModel, t: float = NOON) -> dict[str, Value]:
    """What a reader decodes from the simulated device at ``t`` (every block, info included)."""
    values: dict[str, Value] = {}
    for block in read_plan(model.family, info_due=True):
        registers = models.read(model, block.start, block.words, t)
        assert not isinstance(registers, int), f"{block} refused with exception {registers}"
        got, dropped = decode(model.family, block.start, registers)
        assert not dropped, dropped
        values.update(got)
    return values


def sim_body(model: models.DeviceModel, ts: float, *, bt2: str = BT2, **changes: Any) -> dict[str, Any]:
    body = reading_payload(model.family, bt2=bt2, slave_id=model.slave, ts=ts, values=sim_values(model))
    body.update(changes)
    return body


def sim_payload(model: models.DeviceModel, ts: float, **changes: Any) -> bytes:
    return orjson.dumps(sim_body(model, ts, **changes))


def controller() -> models.ControllerModel:
    return models.ControllerModel(CONTROLLER_SLAVE)


def dcc() -> models.DccModel:
    return models.DccModel(DCC_SLAVE)


def topic(kind: str, slave: int, bt2: str = BT2) -> str:
    return TOPICS.reading(bt2, slave, kind)
