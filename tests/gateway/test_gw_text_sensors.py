"""Text sensors end to end: the payload contract, the gateway's messages, and the real client.

The battery's model, serial number and firmware are text sensors of the aggregator's extended
profile; these tests drive the documents the real aggregator core produces through the gateway.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any

import orjson
import pytest
from aioesphomeapi.model import (
    EntityCategory,
    EntityState,
    SensorInfo,
    TextSensorInfo,
    TextSensorState,
)
from hypothesis import given
from hypothesis import strategies as st

from services.aggregator.banks import Layout
from services.aggregator.core import AggregatorCore, Settings
from services.gateway import messages as ids
from services.gateway.entities import build_catalog, fnv1_32, fnv1a_32, state_frame
from services.gateway.proto import pb
from services.gateway.registry import Registry
from shared.payloads import (
    MAX_TEXT_VALUE,
    DeviceConfig,
    DeviceInfo,
    DeviceState,
    EntitySpec,
    PayloadError,
    parse_device_config,
    parse_device_state,
)
from tests.aggregator.support import reading
from tests.conftest import Broker
from tests.gateway.support import (
    TOPICS,
    api_client,
    bare_server,
    gateway_config,
    running_gateway,
    wait_entities,
    wait_until,
)
from tests.gateway.test_gw_legacy_clients import raw_client
from tests.support.probe import MqttProbe

T0 = 1_795_524_654.0
TEXT_KEYS = ("model", "serial", "firmware")
IDENTITY = {"model": "RBT50LFP48S", "serial": "22RBH4A051020048", "firmware": "V104"}

MODEL = EntitySpec(
    key="model",
    name="Model",
    icon="mdi:battery-outline",
    entity_category="diagnostic",
    platform="text_sensor",
)
POWER = EntitySpec(key="power", name="Power", unit="W", device_class="power", state_class="measurement")


def _battery(*specs: EntitySpec) -> DeviceConfig:
    return DeviceConfig(DeviceInfo(id="battery_48", name="Battery 48"), specs)


def _has_control(text: str) -> bool:
    return any(unicodedata.category(char) == "Cc" for char in text)


# --- the payload contract ---------------------------------------------------------------------

printable = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=MAX_TEXT_VALUE)
too_long = st.text(
    st.characters(blacklist_categories=("Cc", "Cs")), min_size=MAX_TEXT_VALUE + 1, max_size=300
)
with_control = st.builds(
    lambda head, ctl, tail: (head + ctl + tail)[:MAX_TEXT_VALUE],
    st.text(max_size=20),
    st.characters(whitelist_categories=("Cc",)),
    st.text(max_size=20),
).filter(_has_control)


@given(printable)
def test_text_values_round_trip(text: str) -> None:
    state = DeviceState(T0, {"model": text, "power": -170.8, "alarm": True, "gone": None})
    assert parse_device_state(state.to_payload()) == state


@given(st.one_of(too_long, with_control))
def test_bad_text_values_are_rejected_with_the_key(text: str) -> None:
    payload = DeviceState(T0, {"power": 1.0, "serial": text}).to_payload()
    with pytest.raises(PayloadError, match=r"values\['serial'\] must be a string of at most 64 characters"):
        parse_device_state(payload)


@pytest.mark.parametrize("value", [[], {}, ["RBT50LFP48S"], {"model": "x"}])
def test_other_value_types_are_still_rejected(value: Any) -> None:
    payload = orjson.dumps({"schema": 1, "ts": T0, "values": {"model": value}})
    with pytest.raises(
        PayloadError, match=r"values\['model'\] must be a finite number, true/false, a string"
    ):
        parse_device_state(payload)


def test_text_sensor_platform_round_trips_and_unknown_platforms_are_rejected() -> None:
    config = _battery(POWER, MODEL)
    assert parse_device_config(config.to_payload()) == config
    body = orjson.loads(config.to_payload())
    body["entities"][1]["platform"] = "text"
    with pytest.raises(PayloadError, match=r"entities\[1\]\.platform 'text' is unknown"):
        parse_device_config(orjson.dumps(body))


# --- the gateway's messages -------------------------------------------------------------------


def test_text_sensor_listing_and_states() -> None:
    registry = Registry()
    registry.set_config("battery_48", _battery(POWER, MODEL))
    listed = registry.catalog.list_frames
    assert [f.msg_type for f in listed] == [ids.LIST_SENSOR, ids.LIST_TEXT_SENSOR, ids.LIST_DONE]
    info = pb.ListEntitiesTextSensorResponse.FromString(listed[1].payload)
    assert (info.object_id, info.key, info.name) == ("battery_48_model", fnv1_32("battery_48_model"), "Model")
    assert info.device_id == fnv1a_32("battery_48") and info.entity_category == 2
    assert info.icon == "mdi:battery-outline"

    unknown = {f.msg_type: f for f in registry.initial_frames()}[ids.TEXT_SENSOR_STATE]
    assert pb.TextSensorStateResponse.FromString(unknown.payload).missing_state

    changed = registry.set_state("battery_48", DeviceState(T0, {"model": "RBT50LFP48S", "power": 5.0}))
    by_type = {f.msg_type: pb.TextSensorStateResponse.FromString(f.payload) for f in changed}
    text = by_type[ids.TEXT_SENSOR_STATE]
    assert (text.key, text.state, text.missing_state) == (info.key, "RBT50LFP48S", False)
    assert text.device_id == fnv1a_32("battery_48")
    assert registry.set_state("battery_48", DeviceState(T0 + 1, {"model": "RBT50LFP48S"})) == []
    (gone,) = registry.set_state("battery_48", DeviceState(T0 + 2, {"model": None}))
    assert pb.TextSensorStateResponse.FromString(gone.payload).missing_state


def test_values_of_the_wrong_kind_are_missing_states() -> None:
    catalog = build_catalog({"battery_48": _battery(POWER, MODEL)}, 1)
    power, model = catalog.entities
    sensor = pb.SensorStateResponse.FromString(state_frame(power, "52 W").payload)
    assert sensor.missing_state
    for value in (5.0, True):
        text = pb.TextSensorStateResponse.FromString(state_frame(model, value).payload)
        assert text.missing_state and text.state == ""
    heater = EntitySpec(key="heater", name="Heater", platform="binary_sensor")
    (binary,) = build_catalog({"battery_48": _battery(heater)}, 1).entities
    assert pb.BinarySensorStateResponse.FromString(state_frame(binary, "on").payload).missing_state


def test_flat_catalog_puts_text_sensors_on_the_main_device() -> None:
    registry = Registry()
    registry.set_config("battery_48", _battery(POWER, MODEL))
    registry.set_state("battery_48", DeviceState(T0, {"model": "RBT50LFP48S"}))
    flat = registry.catalog.flat_list_frames
    assert flat[1].msg_type == ids.LIST_TEXT_SENSOR
    info = pb.ListEntitiesTextSensorResponse.FromString(flat[1].payload)
    assert (info.name, info.device_id, info.object_id) == ("Battery 48 Model", 0, "battery_48_model")
    states = {f.msg_type: f for f in registry.initial_frames(flat=True)}
    text = pb.TextSensorStateResponse.FromString(states[ids.TEXT_SENSOR_STATE].payload)
    assert (text.state, text.device_id) == ("RBT50LFP48S", 0)
    pushed: list[Any] = []
    registry.flat_state_listeners.append(pushed.extend)
    registry.set_state("battery_48", DeviceState(T0 + 1, {"model": "RBT100LFP12S"}))
    (frame,) = pushed
    assert pb.TextSensorStateResponse.FromString(frame.payload).device_id == 0


# --- with real clients --------------------------------------------------------------------------


def _aggregator_documents() -> list[tuple[str, bytes]]:
    """What the real aggregator core publishes in the extended profile for two batteries."""
    settings = Settings(profile="extended", max_gap=90.0, stale_after=90.0, info_stale_after=1800.0)
    core = AggregatorCore(Layout(), settings, started=T0)
    for slave in (48, 49):
        core.accept(reading(slave, T0), T0)
    out = core.pending(T0 + 1)
    return [
        (
            (TOPICS.device_config if item.kind == "config" else TOPICS.device_state)(item.device_id),
            item.payload,
        )
        for item in out
    ]


async def test_real_client_lists_and_reads_the_identity_text_sensors(broker: Broker, tmp_path: Path) -> None:
    documents = _aggregator_documents()
    configs = {t: parse_device_config(p) for t, p in documents if t.endswith("/config")}
    total = sum(len(c.entities) for c in configs.values())
    config = gateway_config(broker.url, tmp_path)
    async with MqttProbe(broker.url) as probe:
        for topic, payload in documents:
            probe.publish(topic, payload, retain=True)
        async with running_gateway(config) as gateway:
            await wait_entities(gateway, total)
            await wait_until(
                lambda: gateway.registry.value("battery_49", "firmware") == "V104", what="states"
            )
            async with api_client(gateway.port) as client:
                info = await client.device_info()
                entities, _ = await client.list_entities_services()
                texts = {e.object_id: e for e in entities if isinstance(e, TextSensorInfo)}
                # The extended profile's other text sensor: `problems` (the alarm's reasons, issue 14).
                identity = {k: e for k, e in texts.items() if not k.endswith("_problems")}
                assert sorted(texts) == sorted([*identity, "battery_48_problems", "battery_49_problems"])
                assert sorted(identity) == sorted(f"battery_{s}_{k}" for s in (48, 49) for k in TEXT_KEYS)
                assert not any(isinstance(e, SensorInfo) and e.object_id in texts for e in entities)
                devices = {d.device_id: d.name for d in info.devices}
                model = texts["battery_48_model"]
                assert (model.name, model.icon, model.entity_category) == (
                    "Model",
                    "mdi:battery-outline",
                    EntityCategory.DIAGNOSTIC,
                )
                assert devices[model.device_id] == "Battery 48"
                assert texts["battery_48_serial"].name == "Serial number"
                assert texts["battery_49_firmware"].name == "Firmware"

                states: list[EntityState] = []
                client.subscribe_states(states.append)
                await wait_until(lambda: len({s.key for s in states}) >= total, what="initial states")
                by_key = {s.key: s for s in states}
                for slave in (48, 49):
                    expected = {**IDENTITY, "serial": f"22RBH4A0510200{slave}"}
                    for key in TEXT_KEYS:
                        state = by_key[fnv1_32(f"battery_{slave}_{key}")]
                        assert isinstance(state, TextSensorState)
                        assert (state.state, state.missing_state) == (expected[key], False)
                        assert state.device_id == fnv1a_32(f"battery_{slave}")

                states.clear()
                update = DeviceState(T0 + 600, {"firmware": "V105", "model": None})
                probe.publish(TOPICS.device_state("battery_48"), update.to_payload(), retain=True)
                await wait_until(lambda: len(states) >= 2, what="pushed text updates")
                pushed = {s.key: s for s in states}
                firmware = pushed[fnv1_32("battery_48_firmware")]
                assert isinstance(firmware, TextSensorState) and firmware.state == "V105"
                model_state = pushed[fnv1_32("battery_48_model")]
                assert isinstance(model_state, TextSensorState) and model_state.missing_state


async def test_client_without_sub_devices_gets_flat_text_sensors(tmp_path: Path) -> None:
    async with bare_server(tmp_path, configs=[_battery(POWER, MODEL)]) as server:
        server.registry.set_state("battery_48", DeviceState(T0, {"model": "RBT50LFP48S", "power": 1.0}))
        async with raw_client(server.port) as client:
            hello = pb.HelloRequest(
                client_info="Home Assistant 2025.4.4", api_version_major=1, api_version_minor=10
            )
            client.send(hello, pb.AuthenticationRequest())
            await client.until(pb.AuthenticationResponse)
            client.send(pb.DeviceInfoRequest(), pb.ListEntitiesRequest())
            await client.until(pb.ListEntitiesDoneResponse)
            (text,) = client.parsed(pb.ListEntitiesTextSensorResponse)
            assert (text.name, text.device_id, text.object_id) == ("Battery 48 Model", 0, "battery_48_model")
            client.send(pb.SubscribeStatesRequest())
            (state,) = await client.until(pb.TextSensorStateResponse)
            assert (state.key, state.state, state.device_id) == (text.key, "RBT50LFP48S", 0)
