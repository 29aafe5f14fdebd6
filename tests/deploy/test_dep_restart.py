"""End to end as compose runs it: kill -9 each service in turn, restart it, and Home Assistant's view recovers.

Separate processes, a real Mosquitto, configuration through the environment (tests/support/stack.py).
After every restart all 55 entities are back with states in a real aioesphomeapi client within
5 s of the kill, the restarted service has demonstrably done its job again, and no energy counter
ever went backwards, neither in any state document on MQTT nor in the API.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson

from tests.deploy.support import cli
from tests.support.probe import MqttProbe
from tests.support.stack import ApiSnapshot, Stack, api_snapshot

RECOVERY_LIMIT = 5.0
ENERGY_KEYS = ("energy_in", "energy_out")
DEVICES = ("battery_48", "battery_49", "battery_50", "battery_51", "bank")


def energies(snapshot: ApiSnapshot) -> dict[str, float]:
    out = {}
    for device in DEVICES:
        for key in ENERGY_KEYS:
            value = snapshot.value(f"{device}_{key}")
            assert value is not None, f"{device}_{key} has no state"
            out[f"{device}_{key}"] = value
    return out


def assert_counters_never_decreased(probe: MqttProbe) -> int:
    """Every energy value in every published device state, in arrival order, per entity."""
    last: dict[str, float] = {}
    checked = 0
    for message in probe.messages:
        if not message.topic.endswith("/state") or "/device/" not in message.topic or not message.payload:
            continue
        device = message.topic.split("/")[-2]
        values = orjson.loads(message.payload)["values"]
        for key in ENERGY_KEYS:
            value = values.get(key)
            if value is None:
                continue
            name = f"{device}_{key}"
            assert value >= last.get(name, 0.0), f"{name} went back from {last[name]} to {value}"
            last[name] = value
            checked += 1
    return checked


def online_pid(probe: MqttProbe, service: str) -> int | None:
    topic = f"renogy/bridge/{service}/default/state"
    if topic not in probe.latest:
        return None
    state = probe.json(topic)
    return int(state["pid"]) if state.get("state") == "online" else None


def reader_recovered(probe: MqttProbe, pid: int) -> bool:
    """The new reader is online and every battery has a reading from it (its boot id)."""
    if online_pid(probe, "reader") != pid:
        return False
    boot = probe.json("renogy/bridge/reader/default/state")["boot_id"]
    readings = [probe.json(t) for t in probe.latest if t.endswith("/reading")]
    return len(readings) == 4 and all(r.get("boot_id") == boot for r in readings)


def aggregator_recovered(probe: MqttProbe, pid: int, since: float) -> bool:
    """The new aggregator is online and has published a fresh state of every device."""
    if online_pid(probe, "aggregator") != pid:
        return False
    topics = [f"renogy/device/{device}/state" for device in DEVICES]
    return all(t in probe.latest and probe.json(t)["ts"] >= since for t in topics)


async def test_kill_and_restart_each_service_in_turn(mosquitto: Any, tmp_path: Path) -> None:
    stack = Stack(mosquitto.url, tmp_path)
    filters = ("renogy/bridge/+/+/state", "renogy/bt2/+/battery/+/reading", "renogy/device/+/state")
    async with MqttProbe(mosquitto.url, *filters) as probe:
        await stack.start()
        try:
            baseline = await api_snapshot(stack.api_port, expect_entities=55, timeout=30)
            before = energies(baseline)
            timings = {}
            for name in ("reader", "aggregator", "gateway"):
                killed_at, killed_wall = time.monotonic(), time.time()
                await stack[name].kill()
                await stack[name].start()
                pid = stack[name].pid
                if name == "reader":
                    await probe.wait_for(
                        lambda pid=pid: reader_recovered(probe, pid), RECOVERY_LIMIT, "reader"
                    )
                elif name == "aggregator":
                    await probe.wait_for(
                        lambda pid=pid, since=killed_wall: aggregator_recovered(probe, pid, since),
                        RECOVERY_LIMIT,
                        "aggregator",
                    )
                left = RECOVERY_LIMIT - (time.monotonic() - killed_at)
                assert left > 0, f"{name}: no recovery within {RECOVERY_LIMIT} s"
                snapshot = await api_snapshot(stack.api_port, expect_entities=55, timeout=left)
                timings[name] = time.monotonic() - killed_at
                assert timings[name] <= RECOVERY_LIMIT, f"{name} took {timings[name]:.1f} s"
                assert len(snapshot.entities) == 55
                missing = [
                    oid for oid, e in snapshot.entities.items() if snapshot.states[e.key].missing_state
                ]
                assert not missing, f"after restarting {name}: no state for {missing}"
                after = energies(snapshot)
                for entity, value in before.items():
                    assert after[entity] >= value, (
                        f"{entity} went back from {value} to {after[entity]} ({name})"
                    )
                before = after
            print("recovery after kill -9:", {k: round(v, 2) for k, v in timings.items()})
            assert assert_counters_never_decreased(probe) > 0
            status = await asyncio.to_thread(
                cli, "status", env={k: v for k, v in stack["gateway"].env.items() if k.startswith("RENOGY_")}
            )
            assert status.code == 0, status.out + status.err
        except BaseException:
            print(stack.logs())
            raise
        finally:
            await stack.stop()
