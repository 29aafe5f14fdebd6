"""Shared fixtures: real brokers (Mosquitto on a free port, embedded amqtt)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.support.brokers import MOSQUITTO, AmqttBroker, MosquittoBroker

# Property tests judge values, not speed: on a loaded 2-core CI machine generation and examples are slow,
# so hypothesis's timing checks (deadline, too_slow) would fail tests for the machine's load.
settings.register_profile("project", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("project")

Broker = MosquittoBroker | AmqttBroker


async def _start(kind: str, tmp_path: Path) -> Broker:
    if kind == "mosquitto":
        if MOSQUITTO is None:
            pytest.skip(
                "mosquitto binary not installed (apt-get install mosquitto); amqtt variant still runs"
            )
        broker: Broker = MosquittoBroker(tmp_path)
    else:
        broker = AmqttBroker()
    await broker.start()
    return broker


@pytest.fixture(params=["mosquitto", "amqtt"])
async def broker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Broker]:
    """Each test runs against both brokers."""
    started = await _start(request.param, tmp_path)
    yield started
    await started.stop()


@pytest.fixture
async def mosquitto(tmp_path: Path) -> AsyncIterator[Broker]:
    """Mosquitto where available, else amqtt (for tests that need only one broker)."""
    started = await _start("mosquitto" if MOSQUITTO else "amqtt", tmp_path)
    yield started
    await started.stop()
