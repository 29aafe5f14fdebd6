"""Adapter operations over a real D-Bus daemon, with a stand-in BlueZ serving org.bluez.Adapter1.

The daemon is a private dbus-daemon on a temporary socket, made the "system bus" for the code under
test through DBUS_SYSTEM_BUS_ADDRESS; only BlueZ itself (absent here) is played by this module.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from dbus_fast import BusType, PropertyAccess
from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface, dbus_property

from services.ops import _bluez_check
from services.reader.adapter import adapter_address, power_cycle
from tests.support.bluez import private_system_bus

ADDRESS = "00:1A:7D:DA:71:13"

pytestmark = pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="dbus-daemon not installed")


class FakeAdapter1(ServiceInterface):
    """The part of BlueZ's Adapter1 the project uses: Address, Powered (recorded), Discovering."""

    def __init__(self) -> None:
        super().__init__("org.bluez.Adapter1")
        self.powered = True
        self.powered_writes: list[bool] = []

    @dbus_property(access=PropertyAccess.READ)
    def Address(self) -> s:  # type: ignore[name-defined]  # noqa: F821 - D-Bus signature
        return ADDRESS

    @dbus_property()
    def Powered(self) -> b:  # type: ignore[name-defined]  # noqa: F821
        return self.powered

    @Powered.setter
    def Powered(self, value: b) -> None:  # type: ignore[name-defined]  # noqa: F821
        self.powered = value
        self.powered_writes.append(value)

    @dbus_property(access=PropertyAccess.READ)
    def Discovering(self) -> b:  # type: ignore[name-defined]  # noqa: F821
        return False


@pytest.fixture
def system_bus_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private dbus-daemon with a system-bus-like policy, made the system bus of this process."""
    for bus in private_system_bus(tmp_path, monkeypatch):
        yield bus.address


@pytest.fixture
async def bluez(system_bus_address: str) -> AsyncIterator[FakeAdapter1]:
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    adapter = FakeAdapter1()
    bus.export("/org/bluez/hci0", adapter)
    await bus.request_name("org.bluez")
    try:
        yield adapter
    finally:
        bus.disconnect()


async def test_adapter_address_read_from_bluez(bluez: FakeAdapter1) -> None:
    assert await adapter_address("hci0") == ADDRESS
    assert await adapter_address("hci7") is None  # no such adapter: BlueZ answers with an error


async def test_power_cycle_switches_the_adapter_off_then_on(bluez: FakeAdapter1, caplog) -> None:
    assert await power_cycle("hci0") is True
    assert bluez.powered_writes == [False, True] and bluez.powered is True
    assert "power-cycled Bluetooth adapter hci0" in caplog.text


async def test_power_cycle_of_a_missing_adapter_is_reported_not_raised(bluez: FakeAdapter1, caplog) -> None:
    with caplog.at_level(logging.ERROR):
        assert await power_cycle("hci7") is False
    assert "could not power-cycle adapter hci7 through BlueZ" in caplog.text
    assert bluez.powered_writes == []


async def test_diagnose_reports_the_adapter(bluez: FakeAdapter1) -> None:
    # _bluez_check runs its own event loop, as the diagnose command does; keep it off this one.
    result = await asyncio.to_thread(_bluez_check, "hci0")
    assert result == {"bluez_on_bus": "yes", "adapter": f"hci0 {ADDRESS}, powered True, discovering False"}
    missing = await asyncio.to_thread(_bluez_check, "hci7")
    assert missing["adapter"].startswith("hci7 not usable: org.freedesktop.DBus.Error.")


def test_diagnose_without_bluez_on_the_bus(system_bus_address: str) -> None:
    assert _bluez_check("hci0") == {"bluez_on_bus": "no (start it: systemctl start bluetooth)"}
