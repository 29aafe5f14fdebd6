"""`renogy-proxy run --simulate --sim-devices battery:48 --sim-shunt`: the reader reads the simulated
Smart Shunt 300 over its own BLE connection, and a real aioesphomeapi client lists the shunt's entities
with the values the reader published, and its energy counters (the aggregator's, of the shunt's power)
as Home Assistant's Energy dashboard takes them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
from aioesphomeapi import EntityInfo, SensorInfo, SensorStateClass

from services.simulator import SIM_SHUNT_ADDRESS
from shared.devices.shunt import SHUNT
from shared.topics import Topics, bt2_id
from tests.e2e.support import running_stack, snapshot
from tests.support.probe import MqttProbe

SHUNT_ID = bt2_id(SIM_SHUNT_ADDRESS)
REF = f"shunt_{SHUNT_ID}_0"
SERVED = [e.key for e in SHUNT.entities if not e.extended]
ENERGY = ("energy_in", "energy_out")


def _ready(by_id: dict[str, EntityInfo]) -> bool:
    return {f"{REF}_{key}" for key in SERVED} | {"battery_48_battery_level"} <= set(by_id)


async def _snapshot(port: int, timeout: float) -> tuple[dict[str, EntityInfo], dict[int, Any]]:
    """The shunt's entities by object id and their states, once the gateway lists them all."""
    return await snapshot(port, timeout, _ready, "the shunt")


async def test_run_serves_the_shunt(mosquitto, tmp_path: Path) -> None:
    topic = Topics().reading(SHUNT_ID, 0, "shunt")
    state_topic = Topics().device_state(REF)
    async with (
        running_stack(
            tmp_path, mosquitto.url, "--sim-devices", "battery:48", "--sim-shunt", "--poll-interval", "2"
        ) as port,
        MqttProbe(mosquitto.url, topic, state_topic) as probe,
    ):
        entities, states = await _snapshot(port, timeout=60)
        assert all(entities[f"{REF}_{key}"].key in states for key in SERVED), "a shunt entity without a state"
        keys = {key: entities[f"{REF}_{key}"].key for key in ("voltage", "current", "battery_level")}
        fields = {"voltage": "voltage", "current": "current", "battery_level": "soc"}

        async def agree() -> bool:
            _entities, now = await _snapshot(port, timeout=20)
            published = orjson.loads(probe.latest[topic].payload)
            return all(
                abs(float(now[keys[key]].state) - float(published[field])) < 0.006
                for key, field in fields.items()
            )

        await probe.wait_for(lambda: topic in probe.latest, what="a shunt reading")
        deadline = time.monotonic() + 30
        while not await agree():  # the bank moves; wait until both sides show one reading
            assert time.monotonic() < deadline, "the API's shunt values never equalled the published ones"
        voltage = float(orjson.loads(probe.latest[topic].payload)["voltage"])
        assert 40.0 < voltage < 60.0  # the simulated 48 V battery bank

        for key in ENERGY:
            info = entities[f"{REF}_{key}"]
            assert isinstance(info, SensorInfo), info
            assert (info.unit_of_measurement, info.device_class, info.state_class) == (
                "kWh",
                "energy",
                SensorStateClass.TOTAL_INCREASING,
            )

        def counted() -> bool:  # the exact counter of the retained state: at least 0.0001 kWh
            if state_topic not in probe.latest:
                return False
            counter = orjson.loads(probe.latest[state_topic].payload)["counter"]
            return counter["in_wh"] + counter["out_wh"] >= 0.2

        await probe.wait_for(counted, timeout=60, what="shunt energy counted")

        async def energy_agrees() -> bool:
            _entities, now = await _snapshot(port, timeout=20)
            served = [float(now[entities[f"{REF}_{key}"].key].state) for key in ENERGY]
            values = orjson.loads(probe.latest[state_topic].payload)["values"]
            return sum(served) > 0 and all(  # float32 on the wire
                abs(got - values[key]) < 1e-6 for got, key in zip(served, ENERGY, strict=True)
            )

        deadline = time.monotonic() + 30
        while not await energy_agrees():  # the counters move with every reading
            assert time.monotonic() < deadline, "the API's shunt energy never equalled the published one"
