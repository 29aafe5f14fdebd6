"""The shared MQTT client against real brokers: retained republish, will, reconnect."""

from __future__ import annotations

import asyncio

from shared.config import MqttConfig
from shared.mqtt import MqttClient, parse_url
from tests.support.probe import MqttProbe


def test_parse_url() -> None:
    assert str(parse_url("mqtt://broker")) == "mqtt://broker:1883"
    assert str(parse_url("mqtts://broker")) == "mqtts://broker:8883"
    assert str(parse_url("10.0.0.2:1884")) == "mqtt://10.0.0.2:1884"


async def test_retained_publish_and_will(broker) -> None:
    client = MqttClient(MqttConfig(url=broker.url), "t-will", will=("t/state", b"offline"))
    client.publish("t/state", b"online", retain=True)
    await client.start()
    assert await client.wait_connected(10)
    async with MqttProbe(broker.url, "t/#") as probe:
        await probe.wait_for(lambda: probe.latest.get("t/state"), what="online")
        assert probe.latest["t/state"].payload == b"online"
        # Dropping the socket without DISCONNECT fires the last will.
        client._client.socket().close()
        await probe.wait_for(lambda: probe.latest["t/state"].payload == b"offline", what="will")
        # The client reconnects by itself and republishes its retained state.
        await probe.wait_for(lambda: probe.latest["t/state"].payload == b"online", what="republish")
    await client.stop()


async def test_republish_after_broker_restart(broker) -> None:
    client = MqttClient(MqttConfig(url=broker.url, reconnect_max_delay=1), "t-restart")
    await client.start()
    assert await client.wait_connected(10)
    client.publish("t/a", b"1", retain=True)
    await broker.stop()
    client.publish("t/a", b"2", retain=True)  # while the broker is away: kept for the reconnect
    await broker.start()
    assert await client.wait_connected(15)
    async with MqttProbe(broker.url, "t/#") as probe:
        await probe.wait_for(lambda: probe.latest.get("t/a") and probe.latest["t/a"].payload == b"2")
    await client.stop()


async def test_messages_reach_the_event_loop(broker) -> None:
    got: list[tuple[str, bytes]] = []
    done = asyncio.Event()

    def on_message(message) -> None:
        got.append((message.topic, message.payload))
        done.set()

    client = MqttClient(MqttConfig(url=broker.url), "t-sub", on_message=on_message)
    client.subscribe("x/#")
    await client.start()
    assert await client.wait_connected(10)
    async with MqttProbe(broker.url) as probe:
        probe.publish("x/1", b"hello")
        await asyncio.wait_for(done.wait(), 10)
    assert ("x/1", b"hello") in got
    await client.stop()
