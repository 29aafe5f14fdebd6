"""Opt-in controls through the ESPHome API: the controller's load switch is listed only with
controls = true; a SwitchCommandRequest becomes a non-retained command on MQTT, and the switch state
follows the device's read-back (the next reading), never the request."""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aioesphomeapi.model import EntityState, SwitchInfo, SwitchState

from services.gateway import messages as ids
from services.gateway.controls import Target, target_of
from services.gateway.discovery import device_payload
from services.gateway.entities import build_catalog, fnv1_32, fnv1a_32, list_frame, state_frame
from services.gateway.proto import pb
from shared.config import Config
from shared.controls import Reason, Result
from shared.mqtt import Message
from shared.payloads import DeviceConfig
from tests.aggregator.families_support import CONTROLLER_ID, CONTROLLER_SLAVE, controller, sim_body, topic
from tests.aggregator.support import BT2, make_config
from tests.aggregator.test_agg_controls import T0, Served, core_with, feed
from tests.aggregator.test_agg_service import aggregator, health
from tests.conftest import Broker
from tests.gateway.support import TOPICS, api_client, gateway_config, running_gateway, wait_until
from tests.support.probe import MqttProbe

SWITCH_OBJECT_ID = f"{CONTROLLER_ID}_load_switch"
SWITCH_KEY = fnv1_32(SWITCH_OBJECT_ID)
COMMAND_TOPIC = TOPICS.device_command(BT2, "controller", CONTROLLER_SLAVE)
RESULT_TOPIC = TOPICS.device_result(BT2, "controller", CONTROLLER_SLAVE)
COMMAND_FILTER = TOPICS.command_filter()
CONTROLLER_ENTITIES = 9  # the default profile's controller entities, without the switch


def controller_config(*, controls: bool) -> DeviceConfig:
    """The controller's device document exactly as the aggregator builds it."""
    core = core_with(controls=controls)
    feed(core, T0, load_on=False)
    config, _state = Served(core).at(T0)
    return config


# --- the catalog (pure) --------------------------------------------------------------------------


def test_catalog_lists_the_load_switch_only_with_controls_on() -> None:
    catalog = build_catalog({CONTROLLER_ID: controller_config(controls=True)}, 1)
    switches = [e for e in catalog.entities if e.switch]
    assert [(e.key, e.object_id, e.device_id) for e in switches] == [
        (SWITCH_KEY, SWITCH_OBJECT_ID, fnv1a_32(CONTROLLER_ID))
    ]
    frame = list_frame(switches[0])
    assert frame.msg_type == ids.LIST_SWITCH
    listed = pb.ListEntitiesSwitchResponse.FromString(frame.payload)
    assert (listed.object_id, listed.key, listed.name, listed.icon, listed.device_class) == (
        SWITCH_OBJECT_ID,
        SWITCH_KEY,
        "Load switch",
        "",
        "outlet",
    )
    assert not listed.assumed_state  # HA shows the state we send: the read-back
    flat = pb.ListEntitiesSwitchResponse.FromString(list_frame(switches[0], device_name="Charger").payload)
    assert (flat.name, flat.device_id) == ("Charger Load switch", 0)
    assert catalog.list_frames.count(frame) == 1

    off = build_catalog({CONTROLLER_ID: controller_config(controls=False)}, 1)
    assert [e for e in off.entities if e.switch] == []
    assert all(f.msg_type != ids.LIST_SWITCH for f in off.list_frames)
    assert len(off.entities) == CONTROLLER_ENTITIES == len(catalog.entities) - 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, (True, False)), (False, (False, False)), (None, (False, True)), (1.0, (False, True))],
)
def test_switch_state_is_true_false_or_missing(value: Any, expected: tuple[bool, bool]) -> None:
    catalog = build_catalog({CONTROLLER_ID: controller_config(controls=True)}, 1)
    entity = catalog.by_ref[(CONTROLLER_ID, "load_switch")]
    frame = state_frame(entity, value)
    assert frame.msg_type == ids.SWITCH_STATE
    msg = pb.SwitchStateResponse.FromString(frame.payload)
    assert (msg.key, msg.device_id) == (SWITCH_KEY, fnv1a_32(CONTROLLER_ID))
    assert (msg.state, msg.missing_state) == expected


def test_target_of_a_switch_key_and_why_other_keys_have_none() -> None:
    catalog = build_catalog({CONTROLLER_ID: controller_config(controls=True)}, 1)
    target = target_of(catalog, SWITCH_KEY)
    assert target == Target(CONTROLLER_ID, "Charge controller 3D0E #1", BT2, "controller", 1, "load_switch")
    assert target_of(catalog, 12345) == "no entity has key 12345"
    sensor = catalog.by_ref[(CONTROLLER_ID, "pv_power")]
    assert (
        target_of(catalog, sensor.key) == f"{sensor.object_id} (key {sensor.key}) is a sensor, not a switch"
    )


def test_mqtt_discovery_leaves_the_switch_to_the_esphome_api() -> None:
    body = device_payload(
        controller_config(controls=True), topics=TOPICS, node="n", aggregator_instance="default"
    )
    assert "load_switch" not in body["cmps"] and "pv_power" in body["cmps"]


# --- end to end: real broker, aggregator, gateway and aioesphomeapi client; a stand-in reader ------


def with_controls(config: Config) -> Config:
    return dataclasses.replace(config, controls=True)


def commands(probe: MqttProbe) -> list[Message]:
    return [m for m in probe.messages if TOPICS.parse_device_command(m.topic) and b'"key"' in m.payload]


def answer(
    probe: MqttProbe, command: dict[str, Any], reason: Reason | None, state: bool, detail: str
) -> None:
    """The reader's result for a command (shared.controls.Result, as the reader publishes it)."""
    result = Result(reason, detail, command["id"], command["key"], state)
    probe.publish(RESULT_TOPIC, orjson.dumps(result.payload(time.time())))


def log_lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def switch_states(states: list[EntityState]) -> list[SwitchState]:
    return [s for s in states if isinstance(s, SwitchState) and s.key == SWITCH_KEY]


async def not_retained(url: str, command_id: str) -> bool:
    """A client subscribing after the command gets no retained copy: the broker sends retained
    messages on subscribe, before this client's own marker published afterwards comes back."""
    marker = TOPICS.device_command(BT2, "controller", 99)
    async with MqttProbe(url, COMMAND_FILTER) as late:
        late.publish(marker, b"marker")
        await late.wait_for(lambda: marker in late.latest, what="the marker")
    return not any(command_id.encode() in m.payload for m in late.messages)


async def test_switch_follows_the_read_back_never_the_request(
    mosquitto: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.gateway.controls")
    reading = topic("controller", CONTROLLER_SLAVE)
    async with (
        MqttProbe(mosquitto.url, COMMAND_FILTER, "renogy/bridge/aggregator/#") as reader,
        aggregator(with_controls(make_config(mosquitto.url, tmp_path / "agg"))),
    ):
        await reader.wait_for(lambda: health(reader).get("settled"), what="aggregator settled")
        reader.publish(reading, orjson.dumps(sim_body(controller(), time.time(), load_on=False)), retain=True)
        async with running_gateway(with_controls(gateway_config(mosquitto.url, tmp_path / "gw"))) as gateway:
            await wait_until(
                lambda: gateway.registry.value(CONTROLLER_ID, "load_switch") is False, what="off"
            )
            async with api_client(gateway.port) as client:
                entities, _ = await client.list_entities_services()
                listed = [e for e in entities if isinstance(e, SwitchInfo)]
                assert [(e.object_id, e.key, e.name, e.device_class) for e in listed] == [
                    (SWITCH_OBJECT_ID, SWITCH_KEY, "Load switch", "outlet")
                ]
                states: list[EntityState] = []
                client.subscribe_states(states.append)
                await wait_until(lambda: switch_states(states), what="the initial switch state")
                assert [(s.state, s.missing_state) for s in switch_states(states)] == [(False, False)]

                # On: the command goes out; the state moves only with the next reading.
                before = time.time()
                client.switch_command(SWITCH_KEY, True)
                sent = await reader.wait_for(lambda: commands(reader), what="the command on MQTT")
                assert [m.topic for m in sent] == [COMMAND_TOPIC] and not sent[0].retain
                command = orjson.loads(sent[0].payload)
                assert set(command) == {"schema", "id", "key", "state", "deadline"}
                assert (command["schema"], command["key"], command["state"]) == (1, "load_switch", True)
                assert re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", command["id"])
                assert before < command["deadline"] <= time.time() + 30
                assert await not_retained(mosquitto.url, command["id"])
                answer(reader, command, None, True, "load_switch is on (read back)")
                await wait_until(lambda: log_lines(caplog, "load_switch is on (read back)"), what="ok logged")
                assert gateway.registry.value(CONTROLLER_ID, "load_switch") is False  # not the request
                assert [s.state for s in switch_states(states)] == [False]
                reader.publish(
                    reading, orjson.dumps(sim_body(controller(), time.time(), load_on=True)), retain=True
                )
                await wait_until(lambda: switch_states(states)[-1].state, what="on after the read-back")
                assert [s.state for s in switch_states(states)] == [False, True]

                # Off, but the device reports on (e.g. a low-voltage disconnect would be the reverse).
                client.switch_command(SWITCH_KEY, False)
                sent = await reader.wait_for(lambda: commands(reader)[1:], what="the second command")
                command = orjson.loads(sent[0].payload)
                assert command["state"] is False
                answer(
                    reader,
                    command,
                    Reason.READBACK_MISMATCH,
                    True,
                    "load_switch reads back on after writing off",
                )
                line = await wait_until(
                    lambda: log_lines(caplog, "readback_mismatch"), what="the refusal logged"
                )
                assert line == [
                    "Charge controller 3D0E #1 load_switch not switched off: readback_mismatch: "
                    "load_switch reads back on after writing off"
                ]
                # The reader with controls = false refuses too: one line, state unchanged.
                client.switch_command(SWITCH_KEY, False)
                sent = await reader.wait_for(lambda: commands(reader)[2:], what="the third command")
                answer(reader, orjson.loads(sent[0].payload), Reason.DISABLED, False, "controls are off")
                await wait_until(
                    lambda: log_lines(caplog, "controls_disabled"), what="controls_disabled logged"
                )
                assert len(log_lines(caplog, "not switched")) == 2
                assert gateway.registry.value(CONTROLLER_ID, "load_switch") is True
                assert [s.state for s in switch_states(states)] == [False, True]
                assert gateway.controls is not None and gateway.controls.pending == {}


async def test_unknown_keys_and_a_silent_reader_are_one_log_line_each(
    mosquitto: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.gateway.controls")
    async with (
        MqttProbe(mosquitto.url, COMMAND_FILTER, "renogy/bridge/aggregator/#") as reader,
        aggregator(with_controls(make_config(mosquitto.url, tmp_path / "agg"))),
    ):
        await reader.wait_for(lambda: health(reader).get("settled"), what="aggregator settled")
        reading = orjson.dumps(sim_body(controller(), time.time(), load_on=True))
        reader.publish(topic("controller", CONTROLLER_SLAVE), reading, retain=True)
        async with running_gateway(with_controls(gateway_config(mosquitto.url, tmp_path / "gw"))) as gateway:
            controls = gateway.controls
            assert controls is not None
            controls.ahead, controls.grace = 0.3, 0.2  # the reader never answers here
            await wait_until(lambda: gateway.registry.value(CONTROLLER_ID, "load_switch") is True, what="on")
            sensor = gateway.registry.catalog.by_ref[(CONTROLLER_ID, "pv_power")].key
            async with api_client(gateway.port) as client:
                for key in (12345, 12345, sensor):
                    client.switch_command(key, True)
                await wait_until(lambda: controls.refused == 3, what="three refusals")
                assert len(log_lines(caplog, "ignoring a switch command")) == 1  # rate-limited
                client.switch_command(SWITCH_KEY, False)
                await reader.wait_for(lambda: commands(reader), what="the command")
                line = await wait_until(
                    lambda: log_lines(caplog, "no result from the reader"), what="timeout"
                )
                assert len(line) == 1 and line[0].startswith(
                    "Charge controller 3D0E #1 load_switch not switched off"
                )
                assert controls.pending == {}
                assert gateway.registry.value(CONTROLLER_ID, "load_switch") is True
            assert len(commands(reader)) == 1  # none for the unknown keys


async def test_controls_off_no_switch_and_commands_ignored(
    mosquitto: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="services.gateway.server")
    async with (
        MqttProbe(mosquitto.url, COMMAND_FILTER, "renogy/bridge/aggregator/#") as reader,
        aggregator(make_config(mosquitto.url, tmp_path / "agg")),
    ):
        await reader.wait_for(lambda: health(reader).get("settled"), what="aggregator settled")
        reading = orjson.dumps(sim_body(controller(), time.time(), load_on=True))
        reader.publish(topic("controller", CONTROLLER_SLAVE), reading, retain=True)
        async with running_gateway(gateway_config(mosquitto.url, tmp_path / "gw")) as gateway:
            assert gateway.controls is None
            await wait_until(
                lambda: gateway.registry.entity_count == CONTROLLER_ENTITIES, what="the controller"
            )
            async with api_client(gateway.port) as client:
                entities, _ = await client.list_entities_services()
                assert not [e for e in entities if isinstance(e, SwitchInfo)]
                assert SWITCH_OBJECT_ID not in {e.object_id for e in entities}
                for _ in range(3):
                    client.switch_command(SWITCH_KEY, True)
                off: Callable[[], list[str]] = lambda: log_lines(caplog, "controls are off")  # noqa: E731
                await wait_until(off, what="the ignored command logged")
                await client.device_info()  # a round trip: every command before it was handled
                assert len(off()) == 1  # rate-limited
        marker = TOPICS.device_command(BT2, "controller", 99)
        reader.publish(marker, b"marker")
        await reader.wait_for(lambda: marker in reader.latest, what="the marker")
        assert commands(reader) == []
