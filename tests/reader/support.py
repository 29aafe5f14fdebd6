"""The real reader on the simulator, in-process, against a real broker; truth checks of what it published."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import orjson

from services.reader.service import Backends, Reader
from services.reader.simulate import SIM_ADAPTER_ADDRESS
from services.simulator import (
    BankSimulator,
    SimBT2Client,
    SimConfig,
    SimScanner,
    register_simulator,
    unregister_simulator,
)
from shared import registers
from shared.config import load_config
from shared.modbus import ReadRequest, ReadResponse, ResponseAssembler
from tests.support.probe import MqttProbe

FAST_SIM = SimConfig(latency_scale=0.02, advert_interval=0.05)


@asynccontextmanager
async def reader_on_sim(
    broker_url: str, sim_config: SimConfig = FAST_SIM, *, controls: bool = False, **settings: Any
) -> AsyncIterator[tuple[Reader, BankSimulator, MqttProbe]]:
    """A started Reader (MQTT up, scanner running) on a fresh simulator, plus a probe on renogy/#."""
    overrides = {
        "controls": controls,
        "mqtt.url": broker_url,
        "reader.request_timeout": 0.3,
        "reader.connect_timeout": 2.0,
        "reader.scan_timeout": 2.0,
        "reader.batteries": list(sim_config.batteries),
        **{f"reader.{key}": value for key, value in settings.items()},
    }
    config = load_config(environ={}, overrides=overrides)
    sim = BankSimulator.from_config(sim_config)
    register_simulator(sim)
    reader = Reader(config, Backends(SimBT2Client, SimScanner, SIM_ADAPTER_ADDRESS, sim))
    async with MqttProbe(broker_url, "renogy/#") as probe:
        await reader.start()
        assert await reader.runtime.mqtt.wait_subscribed(10)
        try:
            yield reader, sim, probe
        finally:
            await reader.shutdown()
            unregister_simulator(sim)
            sim.close()


async def read_plan_settled(reader: Reader) -> None:
    """Read everything twice: the second cycle asks each pack for the merged read once (the default
    pack refuses it), so from then on a cycle is 5042 x 7 then 5000 x 34 for each battery."""
    assert await reader.cycle() == 4
    assert await reader.cycle() == 4
    assert set(reader.poller.read_plan().values()) == {"split"}


def with_sim(**changes: Any) -> SimConfig:
    return replace(FAST_SIM, **changes)


def readings(probe: MqttProbe, slave: int | None = None) -> list[dict[str, Any]]:
    """Every reading the probe saw (retained replays included), oldest first."""
    out = []
    for message in probe.messages:
        if message.topic.endswith("/reading") and message.payload:
            body = orjson.loads(message.payload)
            if slave is None or body["slave_id"] == slave:
                out.append(body)
    return out


def first_cycle(
    probe: MqttProbe, slaves: tuple[int, ...]
) -> dict[int, tuple[dict[str, Any], dict[str, Any]]]:
    """Each battery's two readings of a fresh start: its values, then the same sample (time, monotonic
    time, frames) with its info blocks and identity."""
    out = {}
    for slave in slaves:
        values, full = readings(probe, slave)[:2]
        assert (full["ts"], full["mono"]) == (values["ts"], values["mono"]), slave
        assert full["raw"].items() >= values["raw"].items() and {"5100", "5104"} <= full["raw"].keys()
        assert "model" not in values and "status1" not in values and "5104" not in values["raw"]
        out[slave] = (values, full)
    return out


def assert_truthful(reading: dict[str, Any], sim: BankSimulator) -> None:
    """Every frame in the reading is one the simulator sent as a genuine reply, and the values are its values."""
    slave = reading["slave_id"]
    assert reading["raw"], "a published reading carries at least one frame"
    for start_text, frame_hex in reading["raw"].items():
        start, frame = int(start_text), bytes.fromhex(frame_hex)
        assert sim.truth.is_genuine(slave, start, frame), f"battery {slave} block {start}: frame not genuine"
        words = (len(frame) - 5) // 2
        (response,) = ResponseAssembler(ReadRequest(slave, start, words)).feed(frame)
        assert isinstance(response, ReadResponse)
        decoded = registers.decode_block(start, response.registers)
        for key in (
            "current",
            "voltage",
            "remaining_charge",
            "capacity",
            "cycle_count",
            "cell_voltages",
            "temperatures",
            "status1",
            "status2",
            "serial",
            "model",
            "firmware",
        ):
            if key in decoded and key in reading:
                assert reading[key] == decoded[key], f"battery {slave} {key}"


async def cycles_until(reader: Reader, predicate: Any, limit: int = 10) -> int:
    """Run cycles until predicate() holds; returns how many it took."""
    for count in range(1, limit + 1):
        await reader.cycle()
        if predicate():
            return count
    raise AssertionError(f"condition not reached in {limit} cycles")
