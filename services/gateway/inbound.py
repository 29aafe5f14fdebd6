"""MQTT messages in: validated with the shared parsers and routed to the registry or the Bluetooth hub."""

from __future__ import annotations

import asyncio
import logging

from services.gateway.bluetooth import BluetoothHub, parse_advertisements, parse_scanner_state
from services.gateway.registry import Registry
from shared.mqtt import Message
from shared.payloads import PayloadError, loads_object, parse_device_config, parse_device_state
from shared.service import RepeatFilter
from shared.topics import Topics

_LOGGER = logging.getLogger(__name__)


class Inbound:
    """Dispatches the gateway's MQTT subscriptions; bad payloads are logged (rate-limited) and dropped."""

    def __init__(
        self,
        topics: Topics,
        reader_instance: str,
        registry: Registry,
        bluetooth: BluetoothHub,
        *,
        stale_after: float | None = None,
    ) -> None:
        self.topics = topics
        # A device whose state document has not arrived for this long is served as unknown: the aggregator
        # republishes every state at least every stale_after / 3, so silence means the aggregator, the
        # broker or our connection to it is gone (docs/entities.md, Freshness).
        self.stale_after = stale_after
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        self.registry = registry
        self.bluetooth = bluetooth
        self.advertisements_topic = topics.advertisements(reader_instance)
        self.scanner_topic = topics.scanner_state(reader_instance)
        self.reader_state_topic = topics.bridge_state("reader", reader_instance)
        self.bad_payloads = 0
        self._repeat = RepeatFilter(_LOGGER)

    @property
    def filters(self) -> list[tuple[str, int]]:
        """(topic filter, QoS) to subscribe to."""
        return [
            (self.topics.device_filter, 1),
            (self.advertisements_topic, 0),
            (self.scanner_topic, 1),
            (self.reader_state_topic, 1),
        ]

    def handle(self, message: Message) -> None:
        topic = message.topic
        try:
            if topic == self.advertisements_topic:
                self._advertisements(message)
            elif topic == self.scanner_topic:
                if message.payload:
                    self.bluetooth.set_status(parse_scanner_state(message.payload))
            elif topic == self.reader_state_topic:
                if message.payload and loads_object(message.payload).get("state") == "offline":
                    self.bluetooth.reader_offline()
            else:
                device = self.topics.parse_device(topic)
                if device is None:
                    return  # not ours: amqtt may deliver retained messages nobody subscribed to
                ref, kind = device
                if kind == "config":
                    self._config(ref, message.payload)
                elif message.payload:
                    state = parse_device_state(message.payload)
                    self.registry.set_state(ref, state)
                    self._arm_expiry(ref)
        except PayloadError as exc:
            self.bad_payloads += 1
            self._repeat.failure(topic, "dropping a bad payload on %s: %s", topic, exc)
            return
        self._repeat.success(topic)

    def _arm_expiry(self, ref: str) -> None:
        """Measured from arrival on the loop's monotonic clock (the document's `ts` is another host's wall
        time): a retained copy served after a reconnect counts as fresh for at most stale_after too."""
        if self.stale_after is None:
            return
        old = self._expiry.pop(ref, None)
        if old is not None:
            old.cancel()
        delay = self.stale_after
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - handle() is always called on the loop by the service
            return
        self._expiry[ref] = loop.call_later(delay, self._expire, ref)

    def _expire(self, ref: str) -> None:
        self._expiry.pop(ref, None)
        if self.registry.expire(ref):
            _LOGGER.warning(
                "device %s: no state for %.0f s (aggregator or broker gone?); its values are unknown until "
                "one arrives",
                ref,
                self.stale_after,
            )

    def _config(self, ref: str, payload: bytes) -> None:
        if not payload:
            if self.registry.set_config(ref, None):
                _LOGGER.info("device %s removed", ref)
            return
        config = parse_device_config(payload)
        if config.device.id != ref:
            raise PayloadError(f"device.id {config.device.id!r} differs from the topic's {ref!r}")
        if self.registry.set_config(ref, config):
            _LOGGER.info("device %s (%s): %d entities", ref, config.device.name, len(config.entities))

    def _advertisements(self, message: Message) -> None:
        batch = parse_advertisements(message.payload)
        if batch.rejected:
            self.bad_payloads += 1
            self._repeat.failure(
                f"{message.topic}#items",
                "dropping %d bad advertisement(s) on %s: %s",
                len(batch.rejected),
                message.topic,
                batch.rejected[0],
            )
        self.bluetooth.add(batch)
