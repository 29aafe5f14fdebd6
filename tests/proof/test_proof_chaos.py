"""Chaos: the broker restarted mid-run, and every service SIGKILLed at random moments.

After each event every service reconnects and republishes its retained state, a client sees all 55
entities again within 5 s, no counted energy is lost (energy never decreases, over MQTT or at the
client), and a restarted gateway binds its port at once. Short forms run in `make test`; `make chaos`
runs the long ones (RENOGY_PROOF=long: 10 broker restarts, 50 SIGKILLs of each service).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import statistics
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.proof.support import (
    DEVICES,
    ENTITIES,
    SLAVES,
    STACK_TIMING,
    ClientWatch,
    ProofStack,
    Truth,
    audit_reading,
    energy_decreases_mqtt,
    latest_energy,
    mosquitto_stack,
    proof_scale,
    reading_messages,
    record_figures,
    write_figures,
)
from tests.support.brokers import MOSQUITTO, MosquittoBroker, port_open, wait_port
from tests.support.probe import MqttProbe
from tests.support.stack import SERVICES, api_snapshot

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(MOSQUITTO is None, reason="chaos needs a Mosquitto it can stop and start"),
]

RECOVERY_LIMIT = 5.0
CHAOS_ENV = {
    "RENOGY_POLL_INTERVAL": "0.5",
    **STACK_TIMING,
    "RENOGY_SIM_SEED": "2000",
    # Physics x10: values change every cycle, so fresh updates show at the client at once after an event.
    "RENOGY_SIM_SPEED": "10",
}
RETAINED = [
    *(f"renogy/bridge/{service}/default/state" for service in SERVICES),
    *(f"renogy/device/{device}/config" for device in DEVICES),
    *(f"renogy/device/{device}/state" for device in DEVICES),
    *(f"renogy/bt2/c464e3383d0e/battery/{slave}/reading" for slave in SLAVES),
]


def chaos_stack(
    tmp_path: Path,
) -> contextlib.AbstractAsyncContextManager[tuple[MosquittoBroker, ProofStack, MqttProbe, ClientWatch]]:
    return mosquitto_stack(tmp_path, CHAOS_ENV, "renogy/bt2/#", "renogy/device/#", "renogy/bridge/+/+/state")


async def fresh_retained(url: str, timeout: float) -> float:
    """Seconds until a new subscriber finds every retained topic, the services 'online'."""
    started = time.monotonic()
    async with MqttProbe(url, "renogy/#") as fresh:

        def ready() -> bool:
            if not all(topic in fresh.latest for topic in RETAINED):
                return False
            return all(fresh.json(f"renogy/bridge/{s}/default/state")["state"] == "online" for s in SERVICES)

        await fresh.wait_for(ready, timeout, "every retained topic republished")
    return time.monotonic() - started


async def entities_back(port: int, since: float) -> float:
    """Seconds from ``since`` until a new client lists all entities and gets a state for each."""
    snapshot = await api_snapshot(port, expect_entities=ENTITIES, timeout=RECOVERY_LIMIT + 5)
    assert len(snapshot.entities) == ENTITIES
    return time.monotonic() - since


async def updates_reach(watch: ClientWatch, since: float, timeout: float) -> float:
    """Seconds from ``since`` until the watching client has received a fresh value of every battery's power."""
    wanted = {f"battery_{s}_power" for s in SLAVES}

    async with asyncio.timeout(timeout):
        while True:
            seen = {o for t, o, v in watch.states if t > since and v is not None}
            if seen >= wanted:
                return time.monotonic() - since
            await asyncio.sleep(0.05)  # polling the watch's own record
    raise AssertionError("unreachable")  # pragma: no cover


def assert_truthful(stack: ProofStack, probe: MqttProbe) -> int:
    truth = Truth.load(stack.truth_logs)
    readings = reading_messages(probe)
    wrong = [p for r in readings for p in audit_reading(r, truth)]
    assert not wrong, wrong[:5]
    return len(readings)


@pytest.mark.timeout(proof_scale(90, 1800))
async def test_chaos_broker_restart(tmp_path: Path) -> None:
    restarts = proof_scale(1, 10)
    rng = random.Random(7)
    figures: dict[str, list[float]] = {
        "down_s": [],
        "retained_back_s": [],
        "entities_back_s": [],
        "updates_back_s": [],
    }
    async with chaos_stack(tmp_path) as (broker, stack, probe, watch):
        for _ in range(restarts):
            # Let the stack run between restarts: readings flowing again, so the audit covers every phase.
            await probe.wait_for(
                partial(_readings_since, probe, len(reading_messages(probe)), 8), 30, "readings"
            )
            before = latest_energy(probe)
            await broker.stop()
            down = rng.uniform(0.5, 3.0)
            # The outage itself: an input of the experiment, not a wait for a condition.
            await asyncio.sleep(down)
            await broker.start()
            back = time.monotonic()
            figures["down_s"].append(round(down, 2))
            figures["retained_back_s"].append(round(await fresh_retained(broker.url, RECOVERY_LIMIT), 2))
            figures["entities_back_s"].append(round(await entities_back(stack.api_port, back), 2))
            figures["updates_back_s"].append(round(await updates_reach(watch, back, RECOVERY_LIMIT), 2))
            await probe.wait_for(probe.client.connected.is_set, 10, "the probe back")
            await probe.wait_for(partial(_energy_caught_up, probe, before), 10, "energy republished")
        reconnects = {s: stack[s].log().count("reconnected to MQTT broker") for s in SERVICES}
    readings = assert_truthful(stack, probe)
    summary: dict[str, Any] = {
        "restarts": restarts,
        **{f"{k}_max": max(v) for k, v in figures.items()},
        **{f"{k}_median": statistics.median(v) for k, v in figures.items()},
        "service_reconnects": reconnects,
        "energy_decreases": len(energy_decreases_mqtt(probe)) + len(watch.energy_decreases()),
        "readings_audited": readings,
        "unhandled_exceptions": sum(len(v) for v in stack.unhandled().values()),
    }
    write_figures("chaos_broker", summary)
    assert all(count >= restarts for count in reconnects.values()), reconnects
    assert (
        max(figures["entities_back_s"]) <= RECOVERY_LIMIT and max(figures["updates_back_s"]) <= RECOVERY_LIMIT
    )
    assert max(figures["retained_back_s"]) <= RECOVERY_LIMIT
    assert not energy_decreases_mqtt(probe) and not watch.energy_decreases()
    assert not stack.unhandled(), stack.unhandled()
    assert not stack.exits, stack.exits
    record_figures("chaos_broker", summary)


def _readings_since(probe: MqttProbe, seen: int, more: int) -> bool:
    return len(reading_messages(probe)) >= seen + more


def _online_again(probe: MqttProbe, topic: str, old_boot: str) -> bool:
    state = probe.json(topic)
    return bool(state["state"] == "online" and state["boot_id"] != old_boot)


def _energy_caught_up(probe: MqttProbe, before: dict[str, float]) -> bool:
    now = latest_energy(probe)
    return all(now.get(key, -1.0) >= value for key, value in before.items())


@pytest.mark.timeout(proof_scale(110, 3600))
async def test_chaos_sigkill(tmp_path: Path) -> None:
    kills = proof_scale(1, 50)
    rng = random.Random(11)
    order = [service for service in SERVICES for _ in range(kills)]
    rng.shuffle(order)
    times: dict[str, dict[str, list[float]]] = {s: {"entities_back_s": [], "online_s": []} for s in SERVICES}
    bind_s: list[float] = []
    async with chaos_stack(tmp_path) as (_broker, stack, probe, watch):
        await probe.wait_for(lambda: len(reading_messages(probe)) >= 8, 30, "readings flowing")
        for service in order:
            await asyncio.sleep(rng.uniform(0.0, 1.5))  # a random moment in the service's work
            state_topic = f"renogy/bridge/{service}/default/state"
            old_boot = probe.json(state_topic)["boot_id"]
            await stack.kill(service)
            await stack.start_service(service)  # restarted at once, as docker or the supervisor would
            started = time.monotonic()
            if service == "gateway":
                await wait_port(stack.api_port, timeout=RECOVERY_LIMIT)
                bind_s.append(time.monotonic() - started)
            await probe.wait_for(
                partial(_online_again, probe, state_topic, old_boot),
                RECOVERY_LIMIT,
                f"{service} online again",
            )
            times[service]["online_s"].append(time.monotonic() - started)
            times[service]["entities_back_s"].append(await entities_back(stack.api_port, started))
            if service == "gateway":
                await watch.wait_complete(RECOVERY_LIMIT)
        # A graceful restart with a client connected binds at once too (no TIME_WAIT trouble).
        await stack.kill("gateway", signal.SIGTERM)
        await stack.start_service("gateway")
        started = time.monotonic()
        await wait_port(stack.api_port, timeout=RECOVERY_LIMIT)
        bind_s.append(time.monotonic() - started)
        await entities_back(stack.api_port, started)
        await watch.wait_complete(RECOVERY_LIMIT)
        # The reader of the last start reads and publishes (earlier ones may have been killed before their
        # first reading: a kill can follow a restart within a second).
        boot = probe.json("renogy/bridge/reader/default/state")["boot_id"]
        await probe.wait_for(
            lambda: any(r["boot_id"] == boot for r in reading_messages(probe)),
            30,
            "a reading of the last reader",
        )
    readings = assert_truthful(stack, probe)
    summary: dict[str, Any] = {
        "kills_per_service": kills,
        **{
            f"{service}_{name}_max": round(max(values), 2)
            for service, series in times.items()
            for name, values in series.items()
        },
        "gateway_bind_s_max": round(max(bind_s), 2),
        "gateway_bind_s_median": round(statistics.median(bind_s), 2),
        "gateway_starts": stack["gateway"].starts,
        "unexpected_exits": [f"{e.service}:{e.code}" for e in stack.exits],
        "client_reconnects": watch.connects,
        "energy_decreases": len(energy_decreases_mqtt(probe)) + len(watch.energy_decreases()),
        "readings_audited": readings,
        "unhandled_exceptions": sum(len(v) for v in stack.unhandled().values()),
    }
    write_figures("chaos_sigkill", summary)
    for service, series in times.items():
        assert max(series["entities_back_s"]) <= RECOVERY_LIMIT, (service, series)
    assert not stack.exits, stack.exits  # no crash loop: each service started once per kill
    assert stack["gateway"].starts == kills + 2
    assert not energy_decreases_mqtt(probe), energy_decreases_mqtt(probe)[:5]
    assert not watch.energy_decreases(), watch.energy_decreases()[:5]
    assert not stack.unhandled(), stack.unhandled()
    assert port_open(stack.api_port) is False  # stopped cleanly at the end
    record_figures("chaos_sigkill", summary)
