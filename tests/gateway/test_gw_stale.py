"""The gateway serves a device as unknown once its state document stopped arriving for stale_after."""

from __future__ import annotations

import asyncio

import orjson

from services.gateway.bluetooth import BluetoothHub
from services.gateway.inbound import Inbound
from services.gateway.registry import Registry
from shared.mqtt import Message
from shared.payloads import DeviceConfig, DeviceInfo, EntitySpec
from shared.topics import Topics

TOPICS = Topics()


def _config() -> bytes:
    return DeviceConfig(
        DeviceInfo(id="battery_48", name="Battery 48"),
        (EntitySpec(key="power", name="Power", unit="W"), EntitySpec(key="energy_in", name="Energy in")),
    ).to_payload()


def _state(power: float) -> bytes:
    return orjson.dumps({"schema": 1, "ts": 1.0, "values": {"power": power, "energy_in": 1.5}})


async def test_values_become_unknown_without_fresh_state_documents() -> None:
    registry = Registry()
    inbound = Inbound(TOPICS, "default", registry, BluetoothHub(), stale_after=0.3)
    inbound.handle(Message(TOPICS.device_config("battery_48"), _config(), True))
    inbound.handle(Message(TOPICS.device_state("battery_48"), _state(-170.0), True))
    assert registry.value("battery_48", "power") == -170.0
    for power in (-171.0, -172.0, -173.0):  # refreshed in time: stays known
        await asyncio.sleep(0.2)  # the interval between documents: an input of the test
        inbound.handle(Message(TOPICS.device_state("battery_48"), _state(power), False))
        assert registry.value("battery_48", "power") == power
    await asyncio.sleep(0.45)  # longer than stale_after without a document
    assert registry.value("battery_48", "power") is None
    assert registry.value("battery_48", "energy_in") is None
    frames = registry.initial_frames()
    assert len(frames) == 2
    inbound.handle(Message(TOPICS.device_state("battery_48"), _state(-1.0), False))
    assert registry.value("battery_48", "power") == -1.0
