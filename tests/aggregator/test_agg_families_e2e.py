"""Device families end to end: readings on their topics -> real aggregator -> real broker -> real gateway
-> a real aioesphomeapi client, beside a 4-battery bank that keeps its 55 entities."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
from aioesphomeapi.model import (
    BinarySensorInfo,
    BinarySensorState,
    EntityState,
    SensorInfo,
    SensorState,
    SensorStateClass,
    TextSensorInfo,
    TextSensorState,
)

from services.gateway.entities import fnv1a_32
from tests.aggregator.families_support import (
    CONTROLLER_ID,
    CONTROLLER_SLAVE,
    DCC_ID,
    DCC_SLAVE,
    controller,
    dcc,
    sim_body,
    sim_values,
    topic,
)
from tests.aggregator.support import make_config, publish_all
from tests.aggregator.test_agg_service import aggregator, health
from tests.conftest import Broker
from tests.gateway.support import api_client, gateway_config, running_gateway, wait_entities, wait_until
from tests.support.probe import MqttProbe

BATTERY_ENTITIES = 55  # 4 batteries x 12 + the bank's 7 (default profile)
CONTROLLER_ENTITIES = 9  # 7 sensors, charging state (text), fault (binary)
DCC_ENTITIES = 11


async def test_controller_and_dcc_reach_the_api_client_beside_the_bank(
    mosquitto: Broker, tmp_path: Path
) -> None:
    ts = time.time()
    truth = {CONTROLLER_ID: sim_values(controller()), DCC_ID: sim_values(dcc())}
    total = BATTERY_ENTITIES + CONTROLLER_ENTITIES + DCC_ENTITIES
    async with (
        MqttProbe(mosquitto.url, "renogy/device/#", "renogy/bridge/aggregator/#") as probe,
        aggregator(make_config(mosquitto.url, tmp_path / "agg")) as service,
    ):
        await probe.wait_for(lambda: health(probe).get("settled"), what="aggregator settled")
        # Hostile ones first: the service drops them and keeps serving.
        probe.publish(
            topic("controller", CONTROLLER_SLAVE),
            orjson.dumps(sim_body(controller(), ts, pv_voltage=999.9)),
        )
        probe.publish(topic("dcc", CONTROLLER_SLAVE), orjson.dumps(sim_body(controller(), ts)))
        await probe.wait_for(
            lambda: sum(service.core.stats.dropped.values()) >= 2, what="the hostile readings dropped"
        )
        dropped = dict(service.core.stats.dropped)
        assert dropped == {"implausible": 1, "identity_mismatch": 1}, dropped
        publish_all(probe, ts)
        probe.publish(
            topic("controller", CONTROLLER_SLAVE), orjson.dumps(sim_body(controller(), ts)), retain=True
        )
        probe.publish(topic("dcc", DCC_SLAVE), orjson.dumps(sim_body(dcc(), ts)), retain=True)
        async with running_gateway(gateway_config(mosquitto.url, tmp_path / "gw")) as gateway:
            await wait_entities(gateway, total)
            await wait_until(
                lambda: gateway.registry.value(DCC_ID, "charging_state") == "mppt", what="dcc state"
            )
            async with api_client(gateway.port) as client:
                info = await client.device_info()
                entities, _ = await client.list_entities_services()
                states: list[EntityState] = []
                client.subscribe_states(states.append)
                await wait_until(lambda: len({s.key for s in states}) >= total, what="every initial state")

    by_id = {e.object_id: e for e in entities}
    by_key: dict[int, Any] = {s.key: s for s in states}
    assert len(by_id) == total
    battery_side = [o for o in by_id if o.startswith(("battery_", "bank_"))]
    assert len(battery_side) == BATTERY_ENTITIES
    devices = {d.device_id: d.name for d in info.devices}
    assert devices[fnv1a_32(CONTROLLER_ID)] == "Charge controller 3D0E #1"
    assert devices[fnv1a_32(DCC_ID)] == "DC-DC charger 3D0E #96"
    for ref, pv_field in ((CONTROLLER_ID, "pv_power"), (DCC_ID, "solar_power")):
        pv_power = by_id[f"{ref}_pv_power"]
        assert isinstance(pv_power, SensorInfo) and pv_power.unit_of_measurement == "W"
        state = by_key[pv_power.key]
        assert (
            isinstance(state, SensorState) and state.state == truth[ref][pv_field] and not state.missing_state
        )
        pv_voltage = by_id[f"{ref}_pv_voltage"]
        assert isinstance(pv_voltage, SensorInfo) and pv_voltage.device_class == "voltage"
        assert not by_key[pv_voltage.key].missing_state
        generation = by_id[f"{ref}_generation_today"]
        assert isinstance(generation, SensorInfo)
        assert (generation.unit_of_measurement, generation.state_class) == (
            "kWh",
            SensorStateClass.TOTAL_INCREASING,
        )
        wh = truth[ref]["generation_today"]
        assert isinstance(wh, int) and abs(by_key[generation.key].state - wh / 1000) < 1e-6
        charging = by_id[f"{ref}_charging_state"]
        assert isinstance(charging, TextSensorInfo)
        text = by_key[charging.key]
        assert isinstance(text, TextSensorState) and (text.state, text.missing_state) == ("mppt", False)
        fault = by_id[f"{ref}_fault"]
        assert isinstance(fault, BinarySensorInfo) and fault.device_class == "problem"
        flag = by_key[fault.key]
        assert isinstance(flag, BinarySensorState) and (flag.state, flag.missing_state) == (False, False)
        assert fault.device_id == fnv1a_32(ref)
