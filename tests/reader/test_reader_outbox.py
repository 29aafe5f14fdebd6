"""The reader's outbox: readings kept while the broker is away, published in order when it is back."""

from __future__ import annotations

import asyncio

import pytest

from services.reader.outbox import MAX_READINGS, Outbox, capacity_for
from shared.config import MqttConfig
from shared.mqtt import MqttClient
from tests.support.brokers import MOSQUITTO, MosquittoBroker
from tests.support.probe import MqttProbe
from tests.support.relay import TcpRelay

TOPIC = "renogy/bt2/c464e3383d0e/battery/48/reading"


def test_capacity_covers_the_outage_buffer_and_is_bounded() -> None:
    assert capacity_for(86400, 30, 4) == 11_520  # 24 h at the default poll
    assert capacity_for(86400, 0, 4) == MAX_READINGS  # back to back: bounded
    assert capacity_for(0, 30, 4) == 4


@pytest.mark.skipif(MOSQUITTO is None, reason="needs the mosquitto binary")
async def test_readings_survive_an_outage_in_order_and_the_oldest_are_dropped(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The reader's link to the broker is cut (a relay between them), the probe stays subscribed: every
    reading kept meanwhile arrives once, in order, the oldest beyond the capacity dropped with a count.
    (Restarting the broker instead raced the probe's own re-subscription against the drain: the gated
    variant below covers the restart, where the reader waits for the aggregator.)"""
    broker = MosquittoBroker(tmp_path)
    await broker.start()
    relay = TcpRelay(broker.port)
    await relay.start()
    client = MqttClient(MqttConfig(url=relay.url, reconnect_max_delay=0.2), "test-outbox")
    outbox = Outbox(client, capacity=50)
    try:
        async with MqttProbe(broker.url, "renogy/bt2/#") as probe:
            await client.start()
            assert await client.wait_connected(10)
            outbox.put(TOPIC, b"0")
            await probe.wait_for(lambda: len(probe.messages) == 1, what="a reading live")
            # Acknowledged before the cut; else QoS 1 sends it again after the reconnect (by design).
            await probe.wait_for(lambda: outbox.published == 1, what="the live reading acknowledged")
            relay.cut()
            await asyncio.wait_for(_disconnected(client), 10)
            for i in range(1, 81):  # 80 readings while the broker is unreachable: 30 dropped as the oldest
                outbox.put(TOPIC, str(i).encode())
            assert len(outbox) == 50 and outbox.dropped == 30
            assert [int(m.payload) for m in probe.messages if not m.retain] == [0]  # nothing got through
            relay.restore()
            await probe.wait_for(lambda: not len(outbox), 30, "the outbox drained")
            await probe.wait_for(
                lambda: any(m.payload == b"80" and not m.retain for m in probe.messages), 30, "the newest"
            )
        live = [int(m.payload) for m in probe.messages if not m.retain]
        # In order, each once, the 30 oldest dropped; before them only copies of the acknowledged 0: the
        # client restores its retained topics on every reconnect (a broker restarted without persistence).
        assert live[-50:] == list(range(31, 81)) and set(live[:-50]) == {0}, live
        assert outbox.published == 51 and outbox.health()["dropped"] == 30
    finally:
        await outbox.close()
        await client.stop()
        await relay.stop()
        await broker.stop()


async def _disconnected(client: MqttClient) -> None:
    while True:
        if not client.connected.is_set():
            return
        await asyncio.sleep(0.02)  # polling the client's own flag


@pytest.mark.skipif(MOSQUITTO is None, reason="needs a Mosquitto it can stop and start")
async def test_backlog_waits_for_the_aggregator_after_a_reconnect(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A broker restarted without sessions delivers QoS 1 only to subscriptions that exist again."""
    broker = MosquittoBroker(tmp_path)
    await broker.start()
    client = MqttClient(MqttConfig(url=broker.url, reconnect_max_delay=0.2), "test-outbox-gated")
    outbox = Outbox(client, capacity=50)
    outbox.gated = True
    try:
        await client.start()
        assert await client.wait_connected(10)
        await broker.stop()
        await asyncio.wait_for(_disconnected(client), 10)
        for i in range(10):
            outbox.put(TOPIC, str(i).encode())
        await broker.start()
        assert await client.wait_connected(15)
        assert len(outbox) == 10  # held: no aggregator has announced itself since the reconnect
        outbox.consumer_online()
        await asyncio.wait_for(outbox._drained.wait(), 15)
        assert outbox.published == 10 and not len(outbox)
    finally:
        await outbox.close()
        await client.stop()
        await broker.stop()
