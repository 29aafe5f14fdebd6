"""The real aioesphomeapi client against the gateway, fed through real MQTT brokers."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

from aioesphomeapi.api_pb2 import PingRequest, PingResponse  # type: ignore[attr-defined]
from aioesphomeapi.client import APIClient
from aioesphomeapi.model import (
    BinarySensorInfo,
    BluetoothProxyFeature,
    EntityState,
    LogLevel,
    SensorInfo,
    SensorState,
    SensorStateClass,
)

from services.gateway.entities import fnv1_32, fnv1a_32
from tests.conftest import Broker
from tests.gateway.support import (
    BATTERY_SPECS,
    SLAVES,
    TOPICS,
    all_configs,
    api_client,
    battery_config,
    battery_state,
    gateway_config,
    publish_devices,
    running_gateway,
    wait_entities,
    wait_until,
)
from tests.support.probe import MqttProbe

_STATE_CLASSES = {
    "measurement": SensorStateClass.MEASUREMENT,
    "total_increasing": SensorStateClass.TOTAL_INCREASING,
}


async def test_full_session(broker: Broker, tmp_path: Path) -> None:
    config = gateway_config(broker.url, tmp_path, name="renogy-test", friendly_name="Renogy Test")
    async with MqttProbe(broker.url) as probe:
        publish_devices(probe, all_configs())
        async with running_gateway(config) as gateway:
            await wait_entities(gateway, 55)
            await wait_until(lambda: gateway.registry.value("battery_51", "power") is not None, what="states")
            async with api_client(gateway.port) as client:
                version = client.api_version
                assert version is not None and (version.major, version.minor) == (1, 19)
                info, entities, _ = await _info_and_entities(client)
                _check_device_info(info)
                _check_entities(info, entities)
                caps = await client.device_capabilities()
                assert caps.bluetooth_proxy.feature_flags == info.bluetooth_proxy_feature_flags
                assert caps.bluetooth_proxy.mac_address == info.bluetooth_mac_address

                states: list[EntityState] = []
                client.subscribe_states(states.append)
                await wait_until(lambda: len(states) >= 55, what="initial states")
                by_key = {s.key: s for s in states}
                assert len(by_key) == 55
                power = by_key[fnv1_32("battery_48_power")]
                assert isinstance(power, SensorState) and math.isclose(power.state, -170.8, rel_tol=1e-5)
                assert power.device_id == fnv1a_32("battery_48")
                assert by_key[fnv1_32("battery_48_temperature_max")].missing_state  # type: ignore[attr-defined]
                bank_power = by_key[fnv1_32("bank_power")]  # no bank state published
                assert isinstance(bank_power, SensorState) and bank_power.missing_state

                states.clear()
                probe.publish(
                    TOPICS.device_state("battery_49"), battery_state(49, offset=5.0).to_payload(), retain=True
                )
                await wait_until(lambda: states, what="pushed update")
                assert [s.key for s in states] == [fnv1_32("battery_49_power")]
                assert math.isclose(states[0].state, -165.8, rel_tol=1e-5)  # type: ignore[attr-defined]

                pong = await client._get_connection().send_message_await_response(PingRequest(), PingResponse)
                assert pong is not None
            await wait_until(lambda: not gateway.server.connections, what="client gone")  # type: ignore[union-attr]


async def _info_and_entities(client: APIClient) -> Any:
    info, (entities, services) = await asyncio.gather(client.device_info(), client.list_entities_services())
    return info, entities, services


def _check_device_info(info: Any) -> None:
    assert info.name == "renogy-test"
    assert info.friendly_name == "Renogy Test"
    assert info.mac_address == "02:AA:BB:CC:DD:EE"
    assert info.esphome_version.count(".") == 2 and int(info.esphome_version.split(".")[0]) >= 2026
    assert info.project_version
    assert info.manufacturer == "Renogy"
    assert info.model == "BT-2 ESPHome proxy"
    # Home Assistant shows a dotted project_name's two parts as manufacturer and model
    # (esphome/manager.py _async_setup_device_registry): they must read the same as the fields.
    manufacturer, model = info.project_name.split(".")
    assert (manufacturer, model) == (info.manufacturer, info.model)
    # Active proxy on (reader.proxy_slots 2 by default): ACTIVE_CONNECTIONS needs REMOTE_CACHING, or
    # aioesphomeapi refuses to connect; PAIRING is implemented, CACHE_CLEARING is not (BlueZ's cache).
    assert info.bluetooth_proxy_feature_flags == (
        BluetoothProxyFeature.PASSIVE_SCAN
        | BluetoothProxyFeature.ACTIVE_CONNECTIONS
        | BluetoothProxyFeature.REMOTE_CACHING
        | BluetoothProxyFeature.PAIRING
        | BluetoothProxyFeature.RAW_ADVERTISEMENTS
        | BluetoothProxyFeature.FEATURE_STATE_AND_MODE
    )
    assert info.bluetooth_mac_address and info.bluetooth_mac_address != info.mac_address
    assert info.api_encryption_supported
    names = {d.name for d in info.devices}
    assert names == {"Battery Bank", *(f"Battery {s}" for s in SLAVES)}


def _check_entities(info: Any, entities: list[Any]) -> None:
    assert len(entities) == 55
    assert all(isinstance(e, SensorInfo) for e in entities)
    assert len({e.key for e in entities}) == 55
    assert len({e.object_id for e in entities}) == 55
    device_ids = {d.device_id: d.name for d in info.devices}
    per_device: dict[str, int] = {}
    for entity in entities:
        assert entity.key == fnv1_32(entity.object_id)
        device_name = device_ids[entity.device_id]
        per_device[device_name] = per_device.get(device_name, 0) + 1
        # object ids are bank_<key> or battery_NN_<key>
        key = entity.object_id[5:] if entity.object_id.startswith("bank_") else entity.object_id[11:]
        _, name, unit, device_class, state_class, accuracy = BATTERY_SPECS[key]
        served = (entity.name, entity.unit_of_measurement, entity.device_class or None)
        assert served == (name, unit, device_class), entity
        assert entity.accuracy_decimals == accuracy
        assert entity.state_class == _STATE_CLASSES[state_class]
    assert per_device == {"Battery Bank": 7, **{f"Battery {s}": 12 for s in SLAVES}}


async def test_reconnect_after_entity_set_change(mosquitto: Broker, tmp_path: Path) -> None:
    config = gateway_config(mosquitto.url, tmp_path)
    async with MqttProbe(mosquitto.url) as probe:
        publish_devices(probe, all_configs())
        async with running_gateway(config) as gateway:
            await wait_entities(gateway, 55)
            stopped: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

            async def on_stop(expected: bool) -> None:
                if not stopped.done():
                    stopped.set_result(expected)

            client = APIClient("127.0.0.1", gateway.port, None, client_info="pytest")
            await client.connect(on_stop=on_stop, login=True)
            _, entities, _ = await _info_and_entities(client)
            assert len(entities) == 55
            # Identical republish (aggregator reconnect) does not disturb the client ...
            publish_devices(probe, all_configs(), states=False)
            # ... a fifth battery does, once, after the debounce.
            publish_devices(probe, [battery_config(52)])
            assert await asyncio.wait_for(stopped, 10) is True
            await client.connect(login=True)
            info, entities, _ = await _info_and_entities(client)
            assert len(entities) == 67
            assert "Battery 52" in {d.name for d in info.devices}
            await client.disconnect()


async def test_several_clients_and_logs(mosquitto: Broker, tmp_path: Path) -> None:
    config = gateway_config(mosquitto.url, tmp_path)
    async with MqttProbe(mosquitto.url) as probe:
        publish_devices(probe, all_configs())
        async with running_gateway(config) as gateway:
            await wait_entities(gateway, 55)
            clients = [APIClient("127.0.0.1", gateway.port, None, client_info=f"c{i}") for i in range(5)]
            await asyncio.gather(*(c.connect(login=True) for c in clients))
            received: list[list[EntityState]] = [[] for _ in clients]
            for client, sink in zip(clients, received, strict=True):
                await client.list_entities_services()
                client.subscribe_states(sink.append)
            await wait_until(lambda: all(len(r) >= 55 for r in received), what="initial states everywhere")
            logs: list[Any] = []
            clients[0].subscribe_logs(logs.append, log_level=LogLevel.LOG_LEVEL_WARN)
            await asyncio.sleep(0.05)
            for sink in received:
                sink.clear()
            update = battery_state(50, offset=2.0).to_payload()
            probe.publish(TOPICS.device_state("battery_50"), update, retain=True)
            probe.publish(TOPICS.device_state("battery_50"), b"{not json", retain=False)
            await wait_until(lambda: all(r for r in received), what="update on every client")
            await wait_until(lambda: logs, what="a streamed log record")
            assert b"bad payload" in logs[0].message
            assert gateway.health()["clients"] == 5
            await asyncio.gather(*(c.disconnect() for c in clients))


async def test_binary_sensor_served(mosquitto: Broker, tmp_path: Path) -> None:
    from shared.payloads import DeviceConfig, DeviceInfo, DeviceState, EntitySpec

    spec = EntitySpec(key="heater_on", name="Heater", platform="binary_sensor", device_class="heat")
    doc = DeviceConfig(DeviceInfo(id="battery_48", name="Battery 48"), (spec,))
    config = gateway_config(mosquitto.url, tmp_path)
    async with MqttProbe(mosquitto.url) as probe:
        probe.publish(TOPICS.device_config("battery_48"), doc.to_payload(), retain=True)
        probe.publish(
            TOPICS.device_state("battery_48"), DeviceState(1.0, {"heater_on": True}).to_payload(), retain=True
        )
        async with running_gateway(config) as gateway:
            await wait_entities(gateway, 1)
            await wait_until(lambda: gateway.registry.value("battery_48", "heater_on") is not None)
            async with api_client(gateway.port) as client:
                entities, _ = await client.list_entities_services()
                assert isinstance(entities[0], BinarySensorInfo) and entities[0].device_class == "heat"
                states: list[EntityState] = []
                client.subscribe_states(states.append)
                await wait_until(lambda: states)
                assert states[0].state is True  # type: ignore[attr-defined]


async def test_health_and_bad_payloads(mosquitto: Broker, tmp_path: Path) -> None:
    config = gateway_config(mosquitto.url, tmp_path)
    health_topic = TOPICS.bridge_health("gateway", "default")
    state_topic = TOPICS.bridge_state("gateway", "default")
    async with MqttProbe(mosquitto.url, health_topic, state_topic) as probe:
        publish_devices(probe, all_configs())
        probe.publish(TOPICS.device_config("battery_99"), b'{"schema": 1, "device": {}}', retain=True)
        # The body's device id differs from the topic's.
        probe.publish(TOPICS.device_config("battery_98"), battery_config(48).to_payload(), retain=True)
        async with running_gateway(config, health_interval=0.2) as gateway:
            await wait_entities(gateway, 55)

            def health_with_entities() -> Any:
                body = probe.json(health_topic) if health_topic in probe.latest else {}
                return body if body.get("entities") == 55 else None

            health = await probe.wait_for(health_with_entities, what="health with 55 entities")
            assert health["devices"] == 5 and health["clients"] == 0
            assert health["bad_payloads"] >= 2
            assert probe.json(state_topic)["state"] == "online"
        await probe.wait_for(lambda: probe.json(state_topic)["state"] == "offline", what="offline on stop")
