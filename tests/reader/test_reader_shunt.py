"""The reader reads a Smart Shunt 300 (its own BLE device, notify-only) on the simulator, against a real
broker: throttled readings equal to frames the shunt sent, bad frames dropped and logged, a silent
shunt reconnected, a lost link reconnected, and the BT-2 cycle never held up by the shunt."""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson

from services.reader.service import Backends, Reader
from services.reader.simulate import SIM_ADAPTER_ADDRESS
from services.simulator import (
    SIM_SHUNT_ADDRESS,
    BankSimulator,
    ShuntPeripheral,
    SimBT2Client,
    SimScanner,
    register_simulator,
    unregister_simulator,
)
from services.simulator.devices import SimPeripheralClient
from shared.config import load_config
from shared.devices.base import decode
from shared.devices.payload import parse_family_reading
from shared.devices.shunt import SHUNT, payload_words
from shared.topics import Topics, bt2_id
from tests.reader.support import with_sim
from tests.support.logs import recording
from tests.support.probe import MqttProbe

SIM = with_sim(batteries=(48, 49))
SHUNT_ID = bt2_id(SIM_SHUNT_ADDRESS)
TOPIC = Topics("renogy").reading(SHUNT_ID, 0, "shunt")
INTERVAL = 0.4  # reader.poll_interval: at most one shunt reading per this many seconds


@asynccontextmanager
async def shunt_reader(
    broker_url: str, *, silence: float = 5.0, faults: tuple[str, ...] = (), **settings: Any
) -> AsyncIterator[tuple[Reader, ShuntPeripheral, MqttProbe]]:
    """A started Reader on the simulator with simulator.shunt on: it reads the simulated shunt."""
    overrides = {
        "mqtt.url": broker_url,
        "simulator.shunt": True,
        "reader.batteries": list(SIM.batteries),
        "reader.poll_interval": INTERVAL,
        "reader.request_timeout": 0.3,
        "reader.connect_timeout": 1.0,
        "reader.scan_timeout": 2.0,
        **{f"reader.{key}": value for key, value in settings.items()},
    }
    config = load_config(environ={}, overrides=overrides)
    sim = BankSimulator.from_config(SIM)
    register_simulator(sim)
    backends = Backends(SimBT2Client, SimScanner, SIM_ADAPTER_ADDRESS, sim, proxy_client=SimPeripheralClient)
    reader = Reader(config, backends)
    assert reader.shunt is not None and reader.shunt.address == SIM_SHUNT_ADDRESS
    reader.shunt.silence_timeout = silence
    async with MqttProbe(broker_url, "renogy/#") as probe:
        await reader.start()
        shunt = reader.sim_shunt
        assert isinstance(shunt, ShuntPeripheral)
        shunt.faults.extend(faults)
        assert await reader.runtime.mqtt.wait_subscribed(10)
        try:
            yield reader, shunt, probe
        finally:
            await reader.shutdown()
            unregister_simulator(sim)
            sim.close()


def shunt_readings(probe: MqttProbe) -> list[dict[str, Any]]:
    return [orjson.loads(m.payload) for m in probe.messages if m.topic == TOPIC and m.payload]


def sent_values(shunt: ShuntPeripheral) -> list[dict[str, Any]]:
    """What each genuine frame the shunt sent decodes to (garbage frames have no values)."""
    out = []
    for _at, frame in shunt.sent:
        try:
            out.append(decode(SHUNT, 0, payload_words(frame))[0])
        except ValueError:
            continue
    return out


def values_of(body: dict[str, Any]) -> dict[str, Any]:
    return dict(parse_family_reading(SHUNT, orjson.dumps(body), bt2=SHUNT_ID, slave_id=0).values)


async def test_shunt_reading_is_published_throttled_and_true(mosquitto) -> None:
    async with shunt_reader(mosquitto.url) as (reader, shunt, probe):
        await probe.wait_for(lambda: len(shunt_readings(probe)) >= 4, what="four shunt readings")
        bodies = shunt_readings(probe)
        genuine = sent_values(shunt)
        for body in bodies:
            assert body["kind"] == "shunt" and body["bt2"] == SHUNT_ID and body["slave_id"] == 0
            assert body["boot_id"] == reader.runtime.boot_id and body["mono"] > 0 and body["complete"]
            values = values_of(body)
            assert set(values) == {"voltage", "current", "starter_voltage", "soc", "temperature", "power"}
            assert values in genuine, "every published value set is one the shunt sent"
            assert 40.0 < values["voltage"] < 60.0  # the simulated 48 V bank, not the model's 12 V default
        # The shunt notifies every 0.02 s here; readings go out at most once per poll interval.
        gaps = [b["mono"] - a["mono"] for a, b in itertools.pairwise(bodies)]
        assert all(gap >= INTERVAL - 0.1 for gap in gaps), gaps
        assert reader.shunt is not None and reader.shunt.handler.frames > 2 * len(bodies)
        assert shunt.connects == 1


async def test_garbage_frame_is_dropped_with_a_log_line(mosquitto) -> None:
    with recording("services.reader.shunt", logging.WARNING) as logs:
        async with shunt_reader(mosquitto.url) as (reader, shunt, probe):
            assert reader.shunt is not None
            await probe.wait_for(lambda: shunt_readings(probe), what="a shunt reading")
            shunt.send_garbage(3)
            await probe.wait_for(lambda: reader.shunt.handler.bad_frames == 3, what="three bad frames")
            seen = len(shunt_readings(probe))
            await probe.wait_for(lambda: len(shunt_readings(probe)) >= seen + 2, what="readings after them")
            genuine = sent_values(shunt)
            assert all(values_of(body) in genuine for body in shunt_readings(probe))
            assert shunt.connects == 1  # a bad frame is dropped, the link kept
    lines = [r.getMessage() for r in logs.records if "bad notification" in r.getMessage()]
    assert len(lines) == 1, lines  # rate-limited: one line for the burst
    assert SIM_SHUNT_ADDRESS in lines[0] and "not a live shunt frame" in lines[0] and "frame 4200" in lines[0]


async def test_silent_shunt_is_reconnected_and_logged_once(mosquitto) -> None:
    with recording("services.reader.shunt", logging.WARNING) as logs:
        async with shunt_reader(mosquitto.url, silence=0.5) as (reader, shunt, probe):
            assert reader.shunt is not None
            for connects in (2, 3):
                await probe.wait_for(lambda: shunt_readings(probe), what="a shunt reading")
                frames = len(shunt.sent)
                seen = len(shunt_readings(probe))
                shunt.stop_notifying()
                await probe.wait_for(lambda n=connects: shunt.connects == n, what="a reconnect")
                await probe.wait_for(lambda n=seen: len(shunt_readings(probe)) > n, what="readings again")
                assert len(shunt.sent) > frames
            assert reader.shunt.stalls == 2
    stalls = [r.getMessage() for r in logs.records if "no live frame" in r.getMessage()]
    assert len(stalls) == 1, stalls
    assert "power-cycle the shunt" in stalls[0]


async def test_lost_link_is_reconnected(mosquitto) -> None:
    async with shunt_reader(mosquitto.url) as (reader, shunt, probe):
        await probe.wait_for(lambda: shunt_readings(probe), what="a shunt reading")
        seen = len(shunt_readings(probe))
        shunt.drop_link()
        await probe.wait_for(lambda: shunt.connects == 2, what="a reconnect")
        await probe.wait_for(lambda: len(shunt_readings(probe)) > seen, what="readings again")
        assert reader.shunt is not None and reader.shunt.connected


async def test_a_hanging_shunt_does_not_hold_up_the_bt2_cycle(mosquitto) -> None:
    # The shunt's first connect never returns: its deadline (reader.connect_timeout) ends it, and the
    # BT-2's batteries are read meanwhile.
    async with shunt_reader(mosquitto.url, faults=("connect_hang",)) as (reader, shunt, probe):
        assert await reader.cycle() == len(SIM.batteries)
        assert reader.shunt is not None and not reader.shunt.connected and shunt.connects == 0
        await probe.wait_for(lambda: shunt_readings(probe), what="a shunt reading after the retry")
        assert shunt.connects == 1 and reader.shunt.last_error is None
