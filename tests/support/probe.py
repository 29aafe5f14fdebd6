"""A real MQTT client for tests: collects messages and waits for conditions (no sleeps)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from typing import Any

import orjson

from shared.config import MqttConfig
from shared.mqtt import Message, MqttClient

_ids = itertools.count()


class MqttProbe:
    """Subscribes to filters and keeps every message; `wait_for` polls a predicate on each arrival."""

    def __init__(self, url: str, *filters: str) -> None:
        self.messages: list[Message] = []
        self.latest: dict[str, Message] = {}
        self._changed = asyncio.Event()
        self.client = MqttClient(MqttConfig(url=url), f"test-probe-{next(_ids)}", on_message=self._on_message)
        for topic_filter in filters:
            self.client.subscribe(topic_filter)

    async def __aenter__(self) -> MqttProbe:
        await self.client.start()
        if not await self.client.wait_subscribed(10):
            raise TimeoutError("probe could not connect to the broker and subscribe")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.stop()

    def _on_message(self, message: Message) -> None:
        self.messages.append(message)
        if message.payload:
            self.latest[message.topic] = message
        else:
            self.latest.pop(message.topic, None)
        self._changed.set()

    def json(self, topic: str) -> Any:
        return orjson.loads(self.latest[topic].payload)

    def publish(self, topic: str, payload: bytes | dict[str, Any], *, retain: bool = False) -> None:
        data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        self.client.publish(topic, data, retain=retain)

    async def wait_for(
        self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition"
    ) -> Any:
        """Wait until predicate() is truthy (checked on every message); returns its value."""
        async with asyncio.timeout(timeout):
            while True:
                result = predicate()
                if result:
                    return result
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.5)
        raise AssertionError(f"timed out waiting for {what}")  # pragma: no cover
