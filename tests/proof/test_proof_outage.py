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

from tests.proof.energy_truth import audit_energy
from tests.proof.support import (
    SLAVES,
    STACK_TIMING,
    counted_after,
    counter_of,
    energy_decreases_mqtt,
    health_messages,
    mosquitto_stack,
    outbox_empty,
    proof_scale,
    reading_messages,
    record_figures,
    write_figures,
)
from tests.support.brokers import MOSQUITTO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(MOSQUITTO is None, reason="the outage needs a Mosquitto it can stop and start"),
]

SPEED = 10.0
OUTAGE_ENV = {
    "RENOGY_POLL_INTERVAL": "1",
    **STACK_TIMING,
    "RENOGY_SIM_SEED": "3000",
    "RENOGY_SIM_SPEED": str(SPEED),  # the current changes within the outage
    "RENOGY_MAX_GAP": "10",
    "RENOGY_STALE_AFTER": "8",
}


@pytest.mark.timeout(proof_scale(150, 900))
async def test_broker_outage_loses_no_energy(tmp_path: Path) -> None:
    outage = proof_scale(25.0, 300.0)
    filters = ("renogy/bt2/#", "renogy/device/#", "renogy/bridge/+/+/health")
    async with mosquitto_stack(tmp_path, OUTAGE_ENV, *filters) as (broker, stack, probe, watch):
        started = time.monotonic()
        await probe.wait_for(lambda: counted_after(probe, started + 1), 30, "counting")
        before = {s: counter_of(probe, s) for s in SLAVES}
        await broker.stop()
        down = time.monotonic()
        await asyncio.sleep(outage)  # the outage itself: an input of the experiment
        await broker.start()
        up = time.monotonic()
        await probe.wait_for(probe.client.connected.is_set, 15, "the probe back")
        await probe.wait_for(lambda: counted_after(probe, up + 2), 60, "readings after the outage counted")
        await probe.wait_for(lambda: outbox_empty(probe), 30, "the reader's outbox drained")
        after = {s: counter_of(probe, s) for s in SLAVES}
        unknown_at = [
            t for t, o, v in watch.states if o == "battery_48_power" and v is None and down < t < up
        ]
        known_again = [t for t, o, v in watch.states if o == "battery_48_power" and v is not None and t > up]
    energy = audit_energy(reading_messages(probe), stack.truth_logs, before, after, SPEED)
    reader_health = health_messages(probe, "reader")[-1]
    figures: dict[str, Any] = {
        "outage_s": outage,
        "poll_s": 1,
        **energy.figures(),
        "outbox": reader_health.get("outbox"),
        "gateway_unknown_after_s": round(unknown_at[0] - down, 1) if unknown_at else None,
        "gateway_known_again_after_s": round(known_again[0] - up, 1) if known_again else None,
        "energy_decreases": len(energy_decreases_mqtt(probe)),
        "unhandled_exceptions": sum(len(v) for v in stack.unhandled().values()),
    }
    write_figures("broker_outage", figures)
    assert not energy.problems(), (energy.problems(), figures)
    assert all(b["seconds_counted"] >= outage for b in energy.batteries.values()), energy.batteries
    assert unknown_at and unknown_at[0] - down <= 8 + 4, "the gateway kept serving values with no data"
    assert known_again, "values came back after the outage"
    assert not energy_decreases_mqtt(probe)
    assert not stack.unhandled(), stack.unhandled()
    assert not stack.exits, stack.exits
    record_figures("broker_outage", figures)
