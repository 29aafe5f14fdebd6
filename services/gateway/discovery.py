"""Opt-in Home Assistant MQTT discovery of the aggregator's device documents (setting gateway.discovery).

The ESPHome API already gives Home Assistant every entity, so this is off by default and meant for
users who want the values through HA's MQTT integration instead. One retained device-based
discovery message per device (``<prefix>/device/<node>_<device id>/config``) whose components read
the device's retained state document. An entity is available only while the aggregator is online
and its device has at least one known value. Configs are published again whenever Home Assistant
announces itself on ``<prefix>/status``, because a broker may have lost them since.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

import orjson

from shared.mqtt import Message
from shared.payloads import DeviceConfig, EntitySpec, PayloadError, parse_device_config
from shared.service import VERSION
from shared.topics import Topics

_LOGGER = logging.getLogger(__name__)

ORIGIN: Final = "renogy-bt-esphome-proxy"
# `values` is also a dict method, so index it; an unknown value renders as "None", which HA shows as unknown.
VALUE_TEMPLATE: Final = "{{{{ value_json['values'].get('{key}') }}}}"
BINARY_TEMPLATE: Final = (
    "{{% set v = value_json['values'].get('{key}') %}}"
    "{{{{ 'None' if v is none else ('ON' if v else 'OFF') }}}}"
)
DEVICE_AVAILABLE_TEMPLATE: Final = (
    "{{ 'online' if value_json['values'].values() | reject('none') | list | count > 0 else 'offline' }}"
)
BRIDGE_AVAILABLE_TEMPLATE: Final = "{{ value_json.state }}"

Publish = Callable[[str, bytes], object]


def discovery_id(node: str, device_id: str) -> str:
    """The HA device identifier and topic level: node name (a-z0-9-) + device id (a-z0-9_)."""
    return f"{node}_{device_id}"


def component(spec: EntitySpec, unique_id: str) -> dict[str, Any]:
    """One entry of the `cmps` map.

    A text sensor is an MQTT `sensor` without unit, state class or precision (Home Assistant's MQTT
    `text` platform is a writable text); its unknown value renders as "None" like a number's.
    """
    binary = spec.platform == "binary_sensor"
    text = spec.platform == "text_sensor"
    out: dict[str, Any] = {
        "p": "sensor" if text else spec.platform,
        "name": spec.name,
        "unique_id": unique_id,
        "value_template": (BINARY_TEMPLATE if binary else VALUE_TEMPLATE).format(key=spec.key),
    }
    if spec.device_class and not text:  # HA's non-numeric sensors allow only enum/timestamp classes
        out["device_class"] = spec.device_class
    if not binary and not text:
        if spec.unit:
            out["unit_of_measurement"] = spec.unit
        if spec.state_class:
            out["state_class"] = spec.state_class
        out["suggested_display_precision"] = spec.accuracy
    if spec.icon:
        out["icon"] = spec.icon
    if spec.entity_category == "diagnostic":  # HA allows no "config" category on read-only entities
        out["entity_category"] = "diagnostic"
    return out


def device_payload(
    config: DeviceConfig, *, topics: Topics, node: str, aggregator_instance: str
) -> dict[str, Any]:
    """The device-based discovery document of one device document."""
    info = config.device
    uid = discovery_id(node, info.id)
    optional = {"mf": info.manufacturer, "mdl": info.model, "sn": info.serial}
    device: dict[str, Any] = {"ids": [uid], "name": info.name, **{k: v for k, v in optional.items() if v}}
    if info.via_device:
        device["via_device"] = discovery_id(node, info.via_device)
    state_topic = topics.device_state(info.id)
    return {
        "dev": device,
        "o": {"name": ORIGIN, "sw": VERSION},
        # Switches (opt-in controls) only through the ESPHome API: an MQTT switch needs a command topic.
        "cmps": {
            spec.key: component(spec, f"{uid}_{spec.key}") for spec in config.entities if spec.platform != "switch"
        },
        "state_topic": state_topic,
        "qos": 1,
        "availability_mode": "all",
        "availability": [
            {
                "topic": topics.bridge_state("aggregator", aggregator_instance),
                "value_template": BRIDGE_AVAILABLE_TEMPLATE,
            },
            {"topic": state_topic, "value_template": DEVICE_AVAILABLE_TEMPLATE},
        ],
    }


class Discovery:
    """Follows device documents and keeps one retained discovery message per device on the broker."""

    def __init__(
        self,
        publish: Publish,
        clear: Callable[[str], None],
        topics: Topics,
        *,
        prefix: str,
        node: str,
        aggregator_instance: str,
    ) -> None:
        self._publish = publish
        self._clear = clear
        self.topics = topics
        self.prefix = prefix
        self.node = node
        self.aggregator_instance = aggregator_instance
        self.status_topic = f"{prefix}/status"
        self.published: dict[str, bytes] = {}  # discovery topic -> payload
        self.republished = 0

    @property
    def filters(self) -> list[tuple[str, int]]:
        """Topic filters beyond the gateway's own (device documents are already subscribed)."""
        return [(self.status_topic, 1)]

    def topic_for(self, device_id: str) -> str:
        return f"{self.prefix}/device/{discovery_id(self.node, device_id)}/config"

    def handle(self, message: Message) -> None:
        """Look at every gateway message; acts on device configs and Home Assistant's birth message."""
        if message.topic == self.status_topic:
            if message.payload.strip().lower() == b"online":
                self.republish()
            return
        device = self.topics.parse_device(message.topic)
        if device is None or device[1] != "config":
            return
        device_id = device[0]
        topic = self.topic_for(device_id)
        if not message.payload:
            if self.published.pop(topic, None) is not None:
                self._clear(topic)
                _LOGGER.info("Home Assistant discovery of %s removed", device_id)
            return
        try:
            config = parse_device_config(message.payload)
        except PayloadError:
            return  # the gateway's inbound handler logs it
        if config.device.id != device_id:
            return
        payload = orjson.dumps(
            device_payload(
                config, topics=self.topics, node=self.node, aggregator_instance=self.aggregator_instance
            )
        )
        if self.published.get(topic) == payload:
            return
        self.published[topic] = payload
        self._publish(topic, payload)
        _LOGGER.debug(
            "Home Assistant discovery of %s: %d entities on %s", device_id, len(config.entities), topic
        )

    def republish(self) -> None:
        """Send every discovery message again (Home Assistant came online)."""
        self.republished += 1
        _LOGGER.info(
            "Home Assistant is online: publishing discovery of %d devices again", len(self.published)
        )
        for topic, payload in self.published.items():
            self._publish(topic, payload)
