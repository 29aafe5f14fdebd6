"""The aggregator service against real brokers (Mosquitto and amqtt): documents, bad input, recovery."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.aggregator.service import EXIT_CONFIG, Aggregator, run
from shared.config import Config
from shared.payloads import parse_device_config
from tests.aggregator.support import (
    BANK_KEYS,
    BATTERY_TABLE,
    BT2,
    CURRENTS,
    DEVICES,
    OTHER_BT2,
    SLAVES,
    TOPICS,
    VOLTAGE,
    energy_kwh,
    make_config,
    publish_all,
    reading_payload,
    reading_topic,
    state,
)
from tests.support.probe import MqttProbe


@asynccontextmanager
async def aggregator(config: Config, **options: Any) -> AsyncIterator[Aggregator]:
    options = {"tick_interval": 0.1, "health_interval": 0.2, "recovery_wait": 0.3, **options}
    service = Aggregator(config, **options)
    task = asyncio.create_task(service.run())
    try:
        yield service
    finally:
        service.runtime.request_stop()
        assert await asyncio.wait_for(task, 10) == 0


def health(probe: MqttProbe) -> dict[str, Any]:
    topic = TOPICS.bridge_health("aggregator", "default")
    return probe.json(topic) if topic in probe.latest else {}


async def test_five_devices_55_entities_and_consistent_values(broker, tmp_path: Path) -> None:
    config = make_config(broker.url, tmp_path)
    t0 = time.time() - 70
    async with MqttProbe(broker.url, "renogy/device/#", "renogy/bridge/aggregator/#") as probe:
        publish_all(probe, t0)
        async with aggregator(config):
            await probe.wait_for(lambda: all(state(probe, d) for d in DEVICES), what="five device states")
            publish_all(probe, t0 + 60)
            # amqtt may deliver retained readings twice, so count integrations rather than readings.
            await probe.wait_for(
                lambda: health(probe).get("integration", {}).get("integrated") == 4, what="4 integrations"
            )
            await probe.wait_for(lambda: (state(probe, "bank") or {}).get("energy_in", 0) > 0, what="energy")
            configs = {d: parse_device_config(probe.latest[TOPICS.device_config(d)].payload) for d in DEVICES}
            assert sum(len(c.entities) for c in configs.values()) == 55
            for device, device_config in configs.items():
                for entity in device_config.entities:
                    assert (entity.unit, entity.device_class, entity.state_class, entity.accuracy) == (
                        BATTERY_TABLE[entity.key]
                    ), (device, entity.key)
            assert tuple(e.key for e in configs["bank"].entities) == BANK_KEYS
            assert configs["battery_49"].device.via_device == "bank"
            values = {d: state(probe, d) for d in DEVICES}
            for slave in SLAVES:
                battery = values[f"battery_{slave}"]
                power = VOLTAGE * CURRENTS[slave]
                assert battery["power"] == round(power, 2)
                assert battery["current"] == CURRENTS[slave]
                assert battery["battery_level"] == round(100 * 49.84 / 50, 2)
                assert battery["energy_in"] == pytest.approx(energy_kwh(max(power, 0), 60), abs=1e-4)
                assert battery["energy_out"] == pytest.approx(energy_kwh(min(power, 0), 60), abs=1e-4)
            bank = values["bank"]
            assert bank["power"] == round(sum(VOLTAGE * i for i in CURRENTS.values()), 2)
            assert bank["capacity"] == 200.0 and bank["remaining_charge"] == round(4 * 49.84, 3)
            total_out = sum(values[f"battery_{s}"]["energy_out"] for s in SLAVES)
            assert bank["energy_out"] == pytest.approx(total_out, abs=2e-4)
            assert health(probe)["devices_published"] == 5 and health(probe)["persist_count"] >= 1
        presence = TOPICS.bridge_state("aggregator", "default")
        await probe.wait_for(lambda: probe.json(presence)["state"] == "offline", what="offline on stop")


MALFORMED: list[bytes] = [
    b"not json",
    b"{",
    b"[1, 2, 3]",
    b"null",
    b'"text"',
    b'{"schema": 2}',
    b'{"voltage": NaN}',
    b'{"schema": 1, "ts": 1e999}',
]


def malformed_readings(slave: int, ts: float) -> list[bytes]:
    good = orjson.loads(reading_payload(slave, ts))
    variants = [{k: v for k, v in good.items() if k != key} for key in ("ts", "bt2", "slave_id")]
    variants += [
        {**good, "voltage": "52.4"},
        {**good, "current": True},
        {**good, "ts": "yesterday"},
        {**good, "cell_voltages": "3.3"},
        {**good, "voltage": 120.0},
        {**good, "current": 900.0},
        {**good, "remaining_charge": 70.0},
        {**good, "slave_id": slave + 1},
        {**good, "bt2": OTHER_BT2},
        {**good, "temperatures": [20, 300]},
        {**good, "capacity": -5},
    ]
    return MALFORMED + [orjson.dumps(v) for v in variants]


async def test_flood_of_malformed_readings_changes_nothing(
    broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(broker.url, tmp_path)
    t0 = time.time() - 70
    async with MqttProbe(broker.url, "renogy/device/#", "renogy/bridge/aggregator/#") as probe:
        publish_all(probe, t0)
        async with aggregator(config) as service:
            await probe.wait_for(lambda: all(state(probe, d) for d in DEVICES), what="five device states")
            published = len([m for m in probe.messages if "/device/" in m.topic])
            before = {d: state(probe, d) for d in DEVICES}
            sent = 0
            with caplog.at_level(logging.WARNING, logger="services.aggregator"):
                for _ in range(10):
                    for slave in SLAVES:
                        for payload in malformed_readings(slave, t0 + 30):
                            probe.publish(reading_topic(slave), payload)
                            sent += 1
                await probe.wait_for(
                    lambda: sum(health(probe).get("readings_dropped", {}).values()) == sent,
                    timeout=20,
                    what=f"{sent} drops counted",
                )
            assert [m for m in probe.messages if "/device/" in m.topic][published:] == []
            assert {d: state(probe, d) for d in DEVICES} == before
            dropped = health(probe)["readings_dropped"]
            kinds = {"not_json", "missing_key", "wrong_type", "implausible", "identity_mismatch"}
            assert kinds <= dropped.keys()
            warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(warnings) <= 25, "the drop log must be rate-limited"
            # Still alive and publishing.
            publish_all(probe, t0 + 60, retain=False)
            await probe.wait_for(
                lambda: (state(probe, "battery_48") or {}).get("energy_out", 0) > 0,
                what="a valid reading after the flood",
            )
            assert service.runtime.mqtt.connected.is_set()


async def test_lost_state_file_recovers_from_retained_states(broker, tmp_path: Path) -> None:
    config = make_config(broker.url, tmp_path)
    t0 = time.time() - 130
    async with MqttProbe(broker.url, "renogy/device/#") as probe:
        publish_all(probe, t0)
        async with aggregator(config) as first:
            await probe.wait_for(lambda: all(state(probe, d) for d in DEVICES), what="states")
            publish_all(probe, t0 + 60)
            await probe.wait_for(lambda: (state(probe, "bank") or {}).get("energy_in", 0) > 0, what="energy")
        before = {d: state(probe, d) for d in DEVICES}
        first.store.path.unlink()
        mark = len(probe.messages)
        async with aggregator(config, recovery_wait=1.0) as second:
            # The retained reading (t0 + 60) arrives with the retained states: no restart from zero.
            await probe.wait_for(lambda: second.settled, what="recovery")
            publish_all(probe, t0 + 120, retain=True)
            await probe.wait_for(
                lambda: (
                    (state(probe, "battery_48") or {}).get("energy_out", 0)
                    > before["battery_48"]["energy_out"] + 0.01
                ),
                what="counting on",
            )
            assert second.recovered_from == "retained" and second.core.stats.recovered >= 4
        for message in probe.messages[mark:]:
            device = TOPICS.parse_device(message.topic)
            if device and device[1] == "state" and message.payload:
                values = orjson.loads(message.payload)["values"]
                for key in ("energy_in", "energy_out"):
                    assert values[key] >= before[device[0]][key], (message.topic, key)
        expected = before["battery_48"]["energy_out"] + energy_kwh(VOLTAGE * CURRENTS[48], 60)
        assert state(probe, "battery_48")["energy_out"] == pytest.approx(expected, abs=2e-4)


def set_aside(directory: Path) -> list[Path]:
    return list(directory.glob("aggregator-default.json.corrupt-*"))


async def test_corrupt_state_file_is_set_aside(mosquitto, tmp_path: Path) -> None:
    config = make_config(mosquitto.url, tmp_path)
    path = tmp_path / "aggregator-default.json"
    path.write_bytes(b"\x00garbage")
    async with MqttProbe(mosquitto.url, "renogy/device/#") as probe:
        publish_all(probe, time.time())
        async with aggregator(config) as service:
            await probe.wait_for(lambda: all(state(probe, d) for d in DEVICES), what="states")
            assert service.recovered_from == "retained"
    assert len(set_aside(tmp_path)) == 1
    assert orjson.loads(path.read_bytes())["schema"] == 1


async def test_same_slave_on_two_bt2s_and_its_resolution(
    mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = time.time()
    async with MqttProbe(mosquitto.url, "renogy/device/#") as probe:
        probe.publish(reading_topic(48), reading_payload(48, now), retain=True)
        async with aggregator(make_config(mosquitto.url, tmp_path / "a")):
            await probe.wait_for(lambda: state(probe, "battery_48"), what="battery 48")
            with caplog.at_level(logging.ERROR, logger="services.aggregator"):
                payload = reading_payload(48, now, bt2=OTHER_BT2, voltage=26.0)
                probe.publish(reading_topic(48, OTHER_BT2), payload, retain=True)
                await probe.wait_for(
                    lambda: any("aggregator.batteries" in r.getMessage() for r in caplog.records),
                    what="the conflict error",
                )
            assert state(probe, "battery_48")["voltage"] == 52.4
        override = [{"bt2": OTHER_BT2, "slave_id": 48, "id": "battery_48_b", "name": "Battery 48 (shed)"}]
        resolved = make_config(mosquitto.url, tmp_path / "b", **{"aggregator.batteries": override})
        async with aggregator(resolved):
            await probe.wait_for(lambda: state(probe, "battery_48_b"), what="the second battery 48")
            assert state(probe, "battery_48_b")["voltage"] == 26.0
            config_doc = probe.json(TOPICS.device_config("battery_48_b"))
            assert config_doc["device"]["name"] == "Battery 48 (shed)"
            bank_config = TOPICS.device_config("bank")
            await probe.wait_for(
                lambda: probe.json(bank_config)["device"]["model"] == "2 x RBT50LFP48S", what="a bank of two"
            )


async def test_extended_profile_with_reader_health(mosquitto, tmp_path: Path) -> None:
    config = make_config(mosquitto.url, tmp_path, **{"aggregator.profile": "extended"})
    now = time.time()
    reader_health = {
        "schema": 1,
        "ts": now,
        "bt2": BT2,
        "rssi": -61,
        "link_quality": 97,
        "batteries": {"48": {"link_quality": 95}},
    }
    async with MqttProbe(mosquitto.url, "renogy/device/#") as probe:
        probe.publish(reading_topic(48), reading_payload(48, now, other_alarms=0), retain=True)
        probe.publish(TOPICS.bridge_health("reader", "default"), orjson.dumps(reader_health), retain=True)
        probe.publish(TOPICS.bridge_health("reader", "other"), b"{broken", retain=True)
        async with aggregator(config):
            await probe.wait_for(lambda: (state(probe, "battery_48") or {}).get("rssi") == -61, what="rssi")
            values = state(probe, "battery_48")
            assert values["link_quality"] == 95 and values["alarm"] is False
            entities = probe.json(TOPICS.device_config("battery_48"))["entities"]
            assert {e["platform"] for e in entities} == {"sensor", "binary_sensor", "text_sensor"}
            assert (values["model"], values["firmware"]) == ("RBT50LFP48S", "V104")
        probe.client.clear_retained(TOPICS.bridge_health("reader", "other"))


async def test_invalid_bank_config_exits_with_config_error(tmp_path: Path) -> None:
    banks = [{"id": "x", "batteries": []}]
    config = make_config("mqtt://127.0.0.1:1", tmp_path, **{"aggregator.banks": banks})
    assert await run(config) == EXIT_CONFIG
