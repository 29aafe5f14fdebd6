"""Opt-in Home Assistant MQTT discovery: payloads, templates, and the gateway publishing them on a broker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from services.gateway.discovery import (
    BINARY_TEMPLATE,
    DEVICE_AVAILABLE_TEMPLATE,
    VALUE_TEMPLATE,
    device_payload,
)
from services.gateway.service import Gateway
from shared.config import ConfigError, load_config
from shared.payloads import DeviceConfig, DeviceInfo, EntitySpec
from shared.topics import Topics
from tests.gateway.support import bank_config, battery_config
from tests.support.brokers import free_port
from tests.support.probe import MqttProbe

TOPICS = Topics()
BATTERY_TOPIC = "homeassistant/device/renogy-bt-proxy_battery_48/config"
BANK_TOPIC = "homeassistant/device/renogy-bt-proxy_bank/config"


def test_off_by_default_and_prefix_validated() -> None:
    config = load_config(environ={})
    assert config.gateway.discovery is False and config.gateway.discovery_prefix == "homeassistant"
    assert load_config(environ={"RENOGY_HA_DISCOVERY": "yes"}).gateway.discovery is True
    with pytest.raises(ConfigError, match=r"gateway\.discovery_prefix"):
        load_config(environ={"RENOGY_HA_DISCOVERY_PREFIX": "home/#"})


def test_device_payload_of_a_battery() -> None:
    payload = device_payload(
        battery_config(48), topics=TOPICS, node="renogy-bt-proxy", aggregator_instance="default"
    )
    assert payload["dev"] == {
        "ids": ["renogy-bt-proxy_battery_48"],
        "name": "Battery 48",
        "mf": "Renogy",
        "mdl": "RBT50LFP48S",
        "sn": "22RBH4A051020048",
        "via_device": "renogy-bt-proxy_bank",
    }
    assert payload["state_topic"] == "renogy/device/battery_48/state" and payload["qos"] == 1
    assert payload["availability_mode"] == "all"
    assert [a["topic"] for a in payload["availability"]] == [
        "renogy/bridge/aggregator/default/state",
        "renogy/device/battery_48/state",
    ]
    components = payload["cmps"]
    assert len(components) == 12
    assert len({c["unique_id"] for c in components.values()}) == 12
    energy = components["energy_in"]
    assert energy == {
        "p": "sensor",
        "name": "Energy in",
        "unique_id": "renogy-bt-proxy_battery_48_energy_in",
        "value_template": "{{ value_json['values'].get('energy_in') }}",
        "device_class": "energy",
        "unit_of_measurement": "kWh",
        "state_class": "total_increasing",
        "suggested_display_precision": 3,
    }
    bank = device_payload(bank_config(), topics=TOPICS, node="renogy-bt-proxy", aggregator_instance="default")
    assert "via_device" not in bank["dev"] and len(bank["cmps"]) == 7


def test_binary_sensor_component_has_no_unit() -> None:
    config = DeviceConfig(
        DeviceInfo(id="battery_48", name="Battery 48"),
        (
            EntitySpec(key="heater_on", name="Heater", platform="binary_sensor", device_class="heat"),
            EntitySpec(
                key="cell_delta", name="Cell delta", unit="V", entity_category="diagnostic", accuracy=3
            ),
        ),
    )
    components = device_payload(config, topics=TOPICS, node="n", aggregator_instance="default")["cmps"]
    assert components["heater_on"]["p"] == "binary_sensor"
    assert (
        "unit_of_measurement" not in components["heater_on"] and "state_class" not in components["heater_on"]
    )
    assert components["cell_delta"]["entity_category"] == "diagnostic"


def test_text_sensor_component_is_a_plain_sensor() -> None:
    config = DeviceConfig(
        DeviceInfo(id="battery_48", name="Battery 48"),
        (
            EntitySpec(
                key="firmware",
                name="Firmware",
                icon="mdi:chip",
                entity_category="diagnostic",
                platform="text_sensor",
                accuracy=2,
                device_class="firmware",
            ),
        ),
    )
    components = device_payload(config, topics=TOPICS, node="n", aggregator_instance="default")["cmps"]
    # HA's MQTT "text" platform is writable; a read-only text is a sensor without unit, class or precision.
    assert components["firmware"] == {
        "p": "sensor",
        "name": "Firmware",
        "unique_id": "n_battery_48_firmware",
        "value_template": "{{ value_json['values'].get('firmware') }}",
        "icon": "mdi:chip",
        "entity_category": "diagnostic",
    }


def test_templates_render_like_home_assistant() -> None:
    sandbox = pytest.importorskip("jinja2.sandbox", reason="jinja2 not installed: templates not rendered")
    env = sandbox.ImmutableSandboxedEnvironment()
    state = {
        "schema": 1,
        "ts": 1.0,
        "values": {
            "power": -170.8,
            "current": None,
            "heater_on": True,
            "model": "RBT50LFP48S",
            "serial": None,
        },
    }

    def render(template: str, doc: dict[str, Any] = state) -> str:
        return str(env.from_string(template).render(value_json=doc))

    assert render(VALUE_TEMPLATE.format(key="power")) == "-170.8"
    assert render(VALUE_TEMPLATE.format(key="current")) == "None"  # HA shows "None" as unknown
    assert render(BINARY_TEMPLATE.format(key="heater_on")) == "ON"
    assert render(BINARY_TEMPLATE.format(key="missing")) == "None"
    assert render(VALUE_TEMPLATE.format(key="model")) == "RBT50LFP48S"
    assert render(VALUE_TEMPLATE.format(key="serial")) == "None"
    assert render(DEVICE_AVAILABLE_TEMPLATE) == "online"
    assert render(DEVICE_AVAILABLE_TEMPLATE, {"values": {"power": None}}) == "offline"


async def test_gateway_publishes_clears_and_republishes_discovery(mosquitto: Any, tmp_path: Path) -> None:
    config = load_config(
        environ={
            "RENOGY_MQTT_URL": mosquitto.url,
            "RENOGY_STATE_DIR": str(tmp_path),
            "RENOGY_API_PORT": str(free_port()),
            "RENOGY_API_BIND": "127.0.0.1",
            "RENOGY_MDNS": "false",
            "RENOGY_HA_DISCOVERY": "true",
        }
    )
    async with MqttProbe(mosquitto.url, "homeassistant/#") as probe, Gateway(config) as gateway:
        assert gateway.discovery is not None
        for device in (battery_config(48), bank_config((48,))):
            probe.publish(TOPICS.device_config(device.device.id), device.to_payload(), retain=True)
        await probe.wait_for(
            lambda: BATTERY_TOPIC in probe.latest and BANK_TOPIC in probe.latest, what="discovery"
        )
        assert orjson.loads(probe.latest[BATTERY_TOPIC].payload)["dev"]["name"] == "Battery 48"
        await probe.wait_for(lambda: gateway.registry.device_count == 2, what="gateway serving the devices")

        sent = sum(1 for m in probe.messages if m.topic == BATTERY_TOPIC)
        probe.publish("homeassistant/status", b"online")
        await probe.wait_for(
            lambda: sum(1 for m in probe.messages if m.topic == BATTERY_TOPIC) > sent,
            what="republish on birth",
        )
        assert gateway.discovery.republished == 1

        probe.publish(TOPICS.device_config("battery_48"), b"", retain=True)
        await probe.wait_for(lambda: BATTERY_TOPIC not in probe.latest, what="discovery cleared")
        assert BANK_TOPIC in probe.latest

    async with MqttProbe(mosquitto.url, "homeassistant/#") as fresh:
        await fresh.wait_for(lambda: BANK_TOPIC in fresh.latest, what="retained discovery of the bank")
        assert BATTERY_TOPIC not in fresh.latest
