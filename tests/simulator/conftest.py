"""Fixtures for the simulator tests: a manual clock, simulators that clean up, and a connected link."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic

from services.simulator import (
    NOTIFY_CHAR_UUID,
    WRITE_CHAR_UUID,
    BankSimulator,
    SimBT2Client,
    SimConfig,
    register_simulator,
    unregister_simulator,
)
from shared.modbus import AssemblerEvent, ReadRequest, ResponseAssembler


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


SimFactory = Callable[..., BankSimulator]


@pytest.fixture
def make_sim() -> Iterator[SimFactory]:
    """Build registered simulators from SimConfig overrides; unregister and close them afterwards."""
    made: list[BankSimulator] = []

    def factory(clock: Callable[[], float] | None = None, **overrides: Any) -> BankSimulator:
        config = dataclasses.replace(SimConfig(), **overrides)
        sim = BankSimulator.from_config(config, clock=clock)
        register_simulator(sim)
        made.append(sim)
        return sim

    yield factory
    for sim in made:
        unregister_simulator(sim)
        sim.close()


class Link:
    """A connected BleakClient on a simulator, subscribed to fff1, with a reply helper."""

    def __init__(self, sim: BankSimulator) -> None:
        self.sim = sim
        self.client = BleakClient(sim.address, disconnected_callback=self.on_disconnect, backend=SimBT2Client)
        self.notifications: asyncio.Queue[bytes] = asyncio.Queue()
        self.disconnects = 0

    @property
    def backend(self) -> SimBT2Client:
        backend = self.client._backend
        assert isinstance(backend, SimBT2Client)
        return backend

    def on_notify(self, _char: BleakGATTCharacteristic, data: bytearray) -> None:
        self.notifications.put_nowait(bytes(data))

    def on_disconnect(self, _client: BleakClient) -> None:
        self.disconnects += 1

    async def drained(self) -> None:
        """Wait until every planned notification has been delivered."""
        async with asyncio.timeout(5.0):
            await self.backend.drained()

    def received(self) -> list[bytes]:
        out = []
        while not self.notifications.empty():
            out.append(self.notifications.get_nowait())
        return out

    async def read(self, request: ReadRequest, within: float = 2.0) -> list[AssemblerEvent]:
        """Write one request and return the assembler events up to the first complete frame."""
        assembler = ResponseAssembler(request)
        await self.client.write_gatt_char(WRITE_CHAR_UUID, request.encode(), response=False)
        events: list[AssemblerEvent] = []
        async with asyncio.timeout(within):
            while not any(not _is_garbage(e) for e in events):
                events += assembler.feed(await self.notifications.get())
        return events


def _is_garbage(event: AssemblerEvent) -> bool:
    return getattr(event, "kind", None) == "garbage"


LinkFactory = Callable[..., Any]


@pytest.fixture
async def link(make_sim: SimFactory) -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await link(**config_overrides)`` gives a connected, subscribed Link (latency_scale 0)."""
    links: list[Link] = []

    async def factory(**overrides: Any) -> Link:
        overrides.setdefault("latency_scale", 0.0)
        sim = make_sim(**overrides)
        connection = Link(sim)
        await connection.client.connect()
        await connection.client.start_notify(NOTIFY_CHAR_UUID, connection.on_notify)
        links.append(connection)
        return connection

    yield factory
    for connection in links:
        await connection.client.disconnect()
