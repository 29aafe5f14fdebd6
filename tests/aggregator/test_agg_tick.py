"""The aggregator works on deadlines, not on a fixed 2 s tick: while nothing changes it evaluates no
document, yet a value still turns unknown when its staleness deadline falls due, and the extended
profile still refreshes read_age every 2 s (docs/entities.md). Real Mosquitto, real service, real time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from services.aggregator.service import TICK_INTERVAL, Aggregator
from shared.config import Config
from tests.aggregator.support import (
    DEVICES,
    SLAVES,
    TOPICS,
    make_config,
    reading_payload,
    reading_topic,
    state,
)
from tests.support.probe import MqttProbe

STALE_IN = 5.0  # s until battery 48's reading goes stale (its ts is this much short of stale_after)
ON_TIME = 0.5  # s; how late "unknown" may reach a subscriber after the deadline (old tick: up to 2 s)


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[Aggregator]:
    service = Aggregator(config, recovery_wait=0.3)  # the real tick and health intervals
    task = asyncio.create_task(service.run())
    try:
        yield service
    finally:
        service.runtime.request_stop()
        assert await asyncio.wait_for(task, 10) == 0


def count_evaluations(service: Aggregator, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Monotonic times of every document evaluation (core.pending), the real method still doing the work."""
    calls: list[float] = []
    real = service.core.pending

    def pending(now: float, mono: float | None = None) -> Any:
        calls.append(time.monotonic())
        return real(now, mono)

    monkeypatch.setattr(service.core, "pending", pending)
    return calls


async def test_idle_means_no_evaluation_and_a_stale_value_turns_unknown_on_time(
    mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(mosquitto.url, tmp_path)
    stale_after = config.aggregator_stale_after
    async with (
        MqttProbe(mosquitto.url, "renogy/device/#") as probe,
        running(config) as service,
    ):
        evaluations = count_evaluations(service, monkeypatch)
        await probe.wait_for(lambda: service.settled, what="recovery done")
        wall = time.time()
        due = time.monotonic() + STALE_IN  # battery 48's voltage goes stale then
        for slave in SLAVES:
            ts = wall - (stale_after - STALE_IN) if slave == 48 else wall
            probe.publish(reading_topic(slave), reading_payload(slave, ts))
        await probe.wait_for(
            lambda: all((state(probe, d) or {}).get("power") is not None for d in DEVICES), what="5 states"
        )
        quiet_from = time.monotonic() + 0.3  # the four readings' own evaluations are over by then
        await probe.wait_for(
            lambda: (state(probe, "battery_48") or {}).get("voltage", 0) is None,
            timeout=STALE_IN + 5,
            what="battery 48 unknown",
        )
        late = time.monotonic() - due
        quiet = [t for t in evaluations if quiet_from <= t < due]
    window = due - quiet_from
    assert not quiet, (
        f"{len(quiet)} evaluations in {window:.1f} s with nothing changing (one per tick before)"
    )
    assert 0 <= late <= ON_TIME, f"battery 48 turned unknown {late:+.2f} s after its deadline"
    assert (state(probe, "battery_49") or {}).get("voltage") is not None  # only the stale one changed
    assert probe.latest[TOPICS.device_state("bank")]  # the bank followed its member


async def test_the_extended_profile_still_refreshes_read_age_every_tick(
    mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(mosquitto.url, tmp_path, **{"aggregator.profile": "extended"})
    topic = TOPICS.device_state("battery_48")
    async with (
        MqttProbe(mosquitto.url, topic) as probe,
        running(config) as service,
    ):
        await probe.wait_for(lambda: service.settled, what="recovery done")
        probe.publish(reading_topic(48), reading_payload(48, time.time()))
        await probe.wait_for(lambda: topic in probe.latest, what="battery 48's state")
        first = len(probe.messages)
        ages: list[float] = []

        def refreshed() -> bool:
            ages[:] = [probe.json(topic)["values"]["read_age"]] if topic in probe.latest else []
            return len(probe.messages) - first >= 2

        started = time.monotonic()
        await probe.wait_for(refreshed, timeout=3 * TICK_INTERVAL + 2, what="two refreshes")
        took = time.monotonic() - started
    assert took <= 2 * TICK_INTERVAL + 1.0, f"two read_age refreshes took {took:.1f} s"
    assert ages and ages[0] >= TICK_INTERVAL - 0.5, ages
