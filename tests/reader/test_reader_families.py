"""The real reader on the simulator against a real Mosquitto: family readings on their topics, and
opt-in controls (write, read-back, result, the reading following; off; retained; refused)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson

from services.reader.service import Reader
from shared.controls import command_payload, parse_result
from shared.devices import family
from shared.devices.payload import parse_family_reading
from shared.topics import Topics, bt2_id
from tests.reader.support import reader_on_sim, with_sim
from tests.support.probe import MqttProbe

SIM = with_sim(batteries=(48,), devices=(("controller", 1), ("dcc", 96), ("inverter", 32)))
BT2 = bt2_id(SIM.address)
TOPICS = Topics("renogy")


def _device_readings(probe: MqttProbe, kind: str, slave: int) -> list[dict[str, Any]]:
    topic = TOPICS.reading(BT2, slave, kind)
    return [orjson.loads(m.payload) for m in probe.messages if m.topic == topic and m.payload]


def _results(probe: MqttProbe, kind: str, slave: int) -> list[Any]:
    topic = TOPICS.device_result(BT2, kind, slave)
    return [(m, parse_result(m.payload)) for m in probe.messages if m.topic == topic]


def _command(state: bool, command_id: str) -> bytes:
    return orjson.dumps(command_payload("load_switch", state, command_id, time.time() + 30))


async def _reader_subscribed(probe: MqttProbe) -> None:
    """The reader publishes its state after sending its SUBSCRIBEs on the same connection, and the broker
    handles one connection's packets in order: once the probe sees that state, a command is delivered.
    (Without this wait a command published at once raced the reader's subscription and was lost.)"""
    await probe.wait_for(
        lambda: TOPICS.bridge_state("reader", "default") in probe.latest, what="the reader's state"
    )


@asynccontextmanager
async def _running(reader: Reader) -> AsyncIterator[None]:
    """The reader's own poll loop in the background (commands then also arrive between cycles)."""
    task = asyncio.create_task(reader._poll_loop())
    try:
        yield
    finally:
        reader.runtime.stop_event.set()
        await asyncio.wait_for(task, 10)


async def test_family_readings_are_published_and_parse(mosquitto) -> None:
    devices = ["controller:1", "dcc:96", "inverter:32"]
    async with reader_on_sim(mosquitto.url, SIM, devices=devices) as (reader, _sim, probe):
        await reader.cycle()
        for kind, slave in (("controller", 1), ("dcc", 96), ("inverter", 32)):
            topic = TOPICS.reading(BT2, slave, kind)
            # The second reading of the first cycle: the one with the identity.
            await probe.wait_for(
                lambda topic=topic: topic in probe.latest and "model" in probe.json(topic), what=topic
            )
            message = probe.latest[topic]
            parsed = parse_family_reading(family(kind), message.payload, bt2=BT2, slave_id=slave)
            assert parsed.boot_id == reader.runtime.boot_id and parsed.mono is not None
            assert parsed.values["model"] and "battery_voltage" in parsed.values
        battery = probe.json(TOPICS.reading(BT2, 48))
        assert "kind" not in battery and battery["raw"]  # batteries keep today's body
        health = await probe.wait_for(
            lambda: probe.latest.get(TOPICS.bridge_health("reader", "default")), what="health"
        )
        assert orjson.loads(health.payload)["readings_published"] == 8  # values, then identity


async def test_control_on_writes_reads_back_and_the_reading_follows(mosquitto) -> None:
    async with (
        reader_on_sim(
            mosquitto.url,
            SIM,
            controls=True,
            devices=["controller:1"],
            bt2_address=SIM.address,
            poll_interval=30,
        ) as (reader, _sim, probe),
        _running(reader),
    ):
        await probe.wait_for(lambda: _device_readings(probe, "controller", 1), what="a first reading")
        assert _device_readings(probe, "controller", 1)[-1]["load_on"] is True
        probe.publish(TOPICS.device_command(BT2, "controller", 1), _command(False, "off-1"))
        (message, result), *_ = await probe.wait_for(lambda: _results(probe, "controller", 1), what="result")
        assert result.ok and result.state is False and result.command_id == "off-1", result
        assert not message.retain
        await probe.wait_for(
            lambda: _device_readings(probe, "controller", 1)[-1]["load_on"] is False, what="load off"
        )


async def test_control_off_answers_controls_disabled(mosquitto) -> None:
    async with reader_on_sim(mosquitto.url, SIM, devices=["controller:1"], bt2_address=SIM.address) as (
        reader,
        sim,
        probe,
    ):
        await reader.cycle()
        await _reader_subscribed(probe)
        probe.publish(TOPICS.device_command(BT2, "controller", 1), _command(False, "off-2"))
        (_message, result), *_ = await probe.wait_for(lambda: _results(probe, "controller", 1), what="result")
        assert result.reason == "controls_disabled" and result.command_id == "off-2"
        assert sim.devices[1].values(sim.sim_time())["load_on"] is True


async def test_a_retained_command_is_ignored(mosquitto) -> None:
    topic = TOPICS.device_command(BT2, "controller", 1)
    async with MqttProbe(mosquitto.url, topic) as early:
        early.publish(topic, _command(False, "stale-1"), retain=True)
        await early.wait_for(lambda: topic in early.latest, what="the retained command stored")
    async with reader_on_sim(
        mosquitto.url, SIM, controls=True, devices=["controller:1"], bt2_address=SIM.address
    ) as (reader, sim, probe):
        await probe.wait_for(lambda: topic in probe.latest, what="the retained command replayed")
        await reader.cycle()
        # A fresh command after the retained one: once its result is in, the retained one was seen and ignored.
        probe.publish(TOPICS.device_command(BT2, "controller", 1), _command(True, "fresh-1"))
        await probe.wait_for(lambda: reader.poller.pending_commands, what="the fresh command queued")
        await reader.cycle()
        results = await probe.wait_for(lambda: _results(probe, "controller", 1), what="result")
        assert [r.command_id for _m, r in results] == ["fresh-1"]
        assert sim.devices[1].values(sim.sim_time())["load_on"] is True


async def test_a_refused_write_is_device_refused(mosquitto) -> None:
    sim = with_sim(batteries=(48,), devices=(("dcc", 96),))  # a DC-DC charger taken for a controller
    async with (
        reader_on_sim(
            mosquitto.url,
            sim,
            controls=True,
            devices=["controller:96"],
            bt2_address=sim.address,
            poll_interval=30,
        ) as (reader, _sim, probe),
        _running(reader),
    ):
        await _reader_subscribed(probe)
        probe.publish(TOPICS.device_command(BT2, "controller", 96), _command(True, "on-96"))
        (_m, result), *_ = await probe.wait_for(lambda: _results(probe, "controller", 96), what="result")
    assert result.reason == "device_refused" and "exception 0x02" in result.detail, result
