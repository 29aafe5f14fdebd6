"""Fixtures: a private system bus per test, and the stand-in BlueZ on it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from services.simulator import BankSimulator
from services.simulator.bluez import PrivateSystemBus, StandInBlueZ
from tests.support.bluez import HAVE_DBUS, private_system_bus, standin


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not HAVE_DBUS:
        skip = pytest.mark.skip(reason="dbus-daemon not installed (apt-get install dbus)")
        for item in items:
            if "tests/bluez/" in str(item.fspath):
                item.add_marker(skip)


@pytest.fixture
def system_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateSystemBus]:
    yield from private_system_bus(tmp_path / "bus", monkeypatch)


@pytest.fixture
async def bluez(system_bus: PrivateSystemBus) -> AsyncIterator[tuple[StandInBlueZ, BankSimulator]]:
    async with standin(system_bus) as pair:
        yield pair
