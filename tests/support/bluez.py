"""The private system bus and the stand-in BlueZ for tests of the real bleak BlueZ backend."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from services.reader.service import Backends, Reader
from services.simulator import BankSimulator, SimConfig
from services.simulator.bluez import PrivateSystemBus, StandInBlueZ
from services.simulator.bluez.bus import ENV
from shared.config import load_config
from tests.support.probe import MqttProbe

HAVE_DBUS = shutil.which("dbus-daemon") is not None
needs_dbus = pytest.mark.skipif(not HAVE_DBUS, reason="dbus-daemon not installed (apt-get install dbus)")

FAST_SIM = SimConfig(latency_scale=0.02, advert_interval=0.05)


def private_system_bus(
    directory: Path, monkeypatch: pytest.MonkeyPatch, **options: Any
) -> Iterator[PrivateSystemBus]:
    """A private dbus-daemon made the system bus of this process (the body of the fixtures)."""
    bus = PrivateSystemBus(directory, **options)
    bus.start()
    monkeypatch.setenv(ENV, bus.address)
    try:
        yield bus
    finally:
        bus.close()


@asynccontextmanager
async def reader_on_bluez(
    broker_url: str, bluez: StandInBlueZ, sim: BankSimulator, **settings: Any
) -> AsyncIterator[tuple[Reader, MqttProbe]]:
    """A started Reader with bleak's own BlueZ backend (Backends(None, None)) on the stand-in."""
    overrides = {
        "mqtt.url": broker_url,
        "reader.request_timeout": 0.5,
        "reader.connect_timeout": 3.0,
        "reader.scan_timeout": 3.0,
        "reader.batteries": list(sim.slaves),
        **{f"reader.{key}": value for key, value in settings.items()},
    }
    config = load_config(environ={}, overrides=overrides)
    reader = Reader(config, Backends(None, None))
    async with MqttProbe(broker_url, "renogy/#") as probe:
        await reader.start()
        assert await reader.runtime.mqtt.wait_subscribed(10)
        try:
            yield reader, probe
        finally:
            await reader.shutdown()


@asynccontextmanager
async def standin(
    bus: PrivateSystemBus, sim_config: SimConfig = FAST_SIM, **options: Any
) -> AsyncIterator[tuple[StandInBlueZ, BankSimulator]]:
    sim = BankSimulator.from_config(sim_config)
    bluez = StandInBlueZ([sim], bus_address=bus.address, **options)
    await bluez.start()
    try:
        yield bluez, sim
    finally:
        await bluez.stop()
        sim.close()


def with_sim(**changes: Any) -> SimConfig:
    return replace(FAST_SIM, **changes)


def fast_backoff(reader: Reader) -> None:
    """Retry connects at once in tests (the production backoff starts at 1 s)."""
    from services.reader.recovery import Backoff

    reader.backoff = Backoff(initial=0.05, maximum=0.2)


async def cycles_until(reader: Reader, predicate: Any, limit: int = 20) -> int:
    """Run cycles until predicate() holds (each cycle is deadline-bounded by the reader's timeouts)."""
    for count in range(1, limit + 1):
        await reader.cycle()
        if predicate():
            return count
    raise AssertionError(f"condition not reached in {limit} cycles")


async def wait_until(predicate: Any, timeout: float = 5.0, what: str = "condition") -> None:
    """Poll predicate() every 50 ms until it holds; AssertionError after ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                if predicate():
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None
