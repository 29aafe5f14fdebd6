"""The shared MQTT client against real brokers: retained republish, will, reconnect."""

from __future__ import annotations

import asyncio

from shared.config import MqttConfig
from shared.mqtt import MqttClient, parse_url
from tests.support.probe import MqttProbe
from tests.support.relay import TcpRelay


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
    # Connected is not enough: a publish sent before the broker acknowledged x/# is not delivered.
    assert await client.wait_subscribed(10)
    async with MqttProbe(broker.url) as probe:
        probe.publish("x/1", b"hello")
        await asyncio.wait_for(done.wait(), 10)
    assert ("x/1", b"hello") in got
    await client.stop()


async def test_subscribed_waits_for_the_brokers_acknowledgement(broker) -> None:
    """`subscribed` follows the SUBACK, not the SUBSCRIBE sent: with the broker's answer held in a relay
    the client is connected but not subscribed; once the answer passes, a publish reaches it."""
    got = asyncio.Event()
    relay = TcpRelay(broker.port)
    await relay.start()
    client = MqttClient(MqttConfig(url=relay.url), "t-suback", on_message=lambda message: got.set())
    try:
        await client.start()
        assert await client.wait_subscribed(10), "no subscriptions: subscribed with the connection"
        relay.hold_downstream()
        client.subscribe("y/#")
        assert client.connected.is_set() and not client.subscribed.is_set()
        relay.release_downstream()
        assert await client.wait_subscribed(10)
        async with MqttProbe(broker.url) as probe:
            probe.publish("y/1", b"after the suback")
            await asyncio.wait_for(got.wait(), 10)
    finally:
        await client.stop()
        await relay.stop()
    assert not client.subscribed.is_set(), "stop() ends the subscriptions"


async def test_stop_survives_pahos_loop_stop_race(broker) -> None:
    """paho's network thread sets ``_thread = None`` when it ends; ending between loop_stop's None check
    and its join raised AttributeError out of stop() (seen as a reader traceback at shutdown). The
    interleaving is forced here: the comparison loop_stop makes right after its check ends the thread."""
    client = MqttClient(MqttConfig(url=broker.url), "t-race")
    await client.start()
    assert await client.wait_connected(10)
    paho_client = client._client
    real_thread = paho_client._thread

    class EndsOnCompare:
        def __ne__(self, other: object) -> bool:
            paho_client._thread_terminate = True
            paho_client.disconnect()
            real_thread.join(10)  # its finally clears paho_client._thread, as in the race
            paho_client._thread = None
            return True

        __hash__ = object.__hash__

    paho_client._thread = EndsOnCompare()
    await client.stop()
    assert not real_thread.is_alive()
