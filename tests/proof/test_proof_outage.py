"""A broker outage loses no energy: the reader keeps its readings and publishes them in order afterwards.

The stack runs on the simulator at a 1 s poll; the test's Mosquitto is stopped for a while (25 s here,
5 min under RENOGY_PROOF=long) and started again on the same port. The energy the aggregator counted
across the outage must equal the simulator's truth within 1 %, and while the gateway had no fresh state
it served the values as unknown. max_gap and stale_after are shortened (10 s, 8 s) so the short outage
is longer than both, as 5 minutes is at the default 30 s poll.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from tests.proof.energy_truth import true_energy_wh, true_samples, truth_records
from tests.proof.support import (
    SLAVES,
    ClientWatch,
    ProofStack,
    energy_decreases_mqtt,
    health_messages,
    proof_scale,
    reading_messages,
    record_figures,
    write_figures,
)
from tests.support.brokers import MOSQUITTO, MosquittoBroker
from tests.support.probe import MqttProbe

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(MOSQUITTO is None, reason="the outage needs a Mosquitto it can stop and start"),
]

SPEED = 10.0
OUTAGE_ENV = {
    "RENOGY_POLL_INTERVAL": "1",
    "RENOGY_SIM_LATENCY_SCALE": "0.05",
    "RENOGY_REQUEST_TIMEOUT": "0.3",
    "RENOGY_CONNECT_TIMEOUT": "2",
    "RENOGY_SIM_SEED": "3000",
    "RENOGY_SIM_SPEED": str(SPEED),  # the current changes within the outage
    "RENOGY_MAX_GAP": "10",
    "RENOGY_STALE_AFTER": "8",
}


def counter_of(probe: MqttProbe, slave: int) -> dict[str, Any] | None:
    topic = f"renogy/device/battery_{slave}/state"
    return probe.json(topic).get("counter") if topic in probe.latest else None


def counted_after(probe: MqttProbe, mono: float) -> bool:
    counters = [counter_of(probe, s) for s in SLAVES]
    return all(c is not None and (c.get("last_mono") or 0.0) > mono for c in counters)


def outbox_empty(probe: MqttProbe) -> bool:
    healths = health_messages(probe, "reader")
    # The health of a cycle is published right after its readings were queued: up to one per battery.
    return bool(healths) and (healths[-1].get("outbox") or {}).get("queued", 99) <= len(SLAVES)


@pytest.mark.timeout(proof_scale(150, 900))
async def test_broker_outage_loses_no_energy(tmp_path: Path) -> None:
    outage = proof_scale(25.0, 300.0)
    broker = MosquittoBroker(tmp_path)
    await broker.start()
    stack = ProofStack(broker.url, tmp_path, OUTAGE_ENV)
    try:
        async with MqttProbe(
            broker.url, "renogy/bt2/#", "renogy/device/#", "renogy/bridge/+/+/health"
        ) as probe:
            await stack.start()
            stack.supervise()
            watch = ClientWatch(stack.api_port)
            watch.start()
            try:
                await watch.wait_complete(60)
                started = time.monotonic()
                await probe.wait_for(lambda: counted_after(probe, started + 1), 30, "counting")
                before = {s: counter_of(probe, s) for s in SLAVES}
                await broker.stop()
                down = time.monotonic()
                await asyncio.sleep(outage)  # the outage itself: an input of the experiment
                await broker.start()
                up = time.monotonic()
                await probe.wait_for(probe.client.connected.is_set, 15, "the probe back")
                await probe.wait_for(
                    lambda: counted_after(probe, up + 2), 60, "readings after the outage counted"
                )
                await probe.wait_for(lambda: outbox_empty(probe), 30, "the reader's outbox drained")
                after = {s: counter_of(probe, s) for s in SLAVES}
                unknown_at = [
                    t for t, o, v in watch.states if o == "battery_48_power" and v is None and down < t < up
                ]
                known_again = [
                    t for t, o, v in watch.states if o == "battery_48_power" and v is not None and t > up
                ]
            except BaseException:
                print(stack.logs())
                raise
            finally:
                await watch.stop()
                await stack.stop()
    finally:
        await broker.stop()
    truth = truth_records(stack.truth_logs)
    samples = true_samples(reading_messages(probe), truth, SPEED)
    counted = {"in": 0.0, "out": 0.0}
    true = {"in": 0.0, "out": 0.0}
    per_battery = {}
    for slave in SLAVES:
        a, b = before[slave], after[slave]
        assert a is not None and b is not None
        charged, discharged, replies = true_energy_wh(
            truth[slave], samples[slave], a["last_mono"], b["last_mono"], SPEED
        )
        gained = (b["in_wh"] - a["in_wh"], b["out_wh"] - a["out_wh"])
        counted["in"] += gained[0]
        counted["out"] += gained[1]
        true["in"] += charged
        true["out"] += discharged
        per_battery[slave] = {
            "counted_wh": [round(v, 3) for v in gained],
            "truth_wh": [round(charged, 3), round(discharged, 3)],
            "replies_counted": replies,
            "seconds_counted": round(b["last_mono"] - a["last_mono"], 1),
        }
    total_counted, total_true = counted["in"] + counted["out"], true["in"] + true["out"]
    reader_health = health_messages(probe, "reader")[-1]
    figures: dict[str, Any] = {
        "outage_s": outage,
        "poll_s": 1,
        "energy_counted_wh": round(total_counted, 3),
        "energy_truth_wh": round(total_true, 3),
        "error_pct": round(100 * abs(total_counted - total_true) / total_true, 3),
        "batteries": per_battery,
        "outbox": reader_health.get("outbox"),
        "gateway_unknown_after_s": round(unknown_at[0] - down, 1) if unknown_at else None,
        "gateway_known_again_after_s": round(known_again[0] - up, 1) if known_again else None,
        "energy_decreases": len(energy_decreases_mqtt(probe)),
        "unhandled_exceptions": sum(len(v) for v in stack.unhandled().values()),
    }
    write_figures("broker_outage", figures)
    assert total_true > 1.0
    assert abs(total_counted - total_true) <= 0.01 * total_true, figures
    for key in ("in", "out"):
        assert abs(counted[key] - true[key]) <= 0.01 * max(total_true, 1.0), (key, figures)
    assert all(b["seconds_counted"] >= outage for b in per_battery.values()), per_battery
    assert unknown_at and unknown_at[0] - down <= 8 + 4, "the gateway kept serving values with no data"
    assert known_again, "values came back after the outage"
    assert not energy_decreases_mqtt(probe)
    assert not stack.unhandled(), stack.unhandled()
    assert not stack.exits, stack.exits
    record_figures("broker_outage", figures)
