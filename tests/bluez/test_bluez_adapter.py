"""The adapter operations and the `diagnose` BlueZ checks against the stand-in BlueZ."""

from __future__ import annotations

import asyncio

from services.ops import _bluez_check
from services.reader.adapter import adapter_address, power_cycle
from services.simulator.bluez import DEFAULT_ADAPTER_ADDRESS


async def test_adapter_address_and_power_cycle_on_the_standin(bluez) -> None:
    standin, _sim = bluez
    assert await adapter_address("hci0") == DEFAULT_ADAPTER_ADDRESS
    assert await adapter_address("hci7") is None
    assert await power_cycle("hci0") is True
    assert standin.powered_writes == [False, True] and standin.powered is True


async def test_power_cycle_refused_by_rfkill_is_reported(bluez, caplog) -> None:
    standin, _sim = bluez
    standin.rfkill(True)
    assert await power_cycle("hci0") is False
    assert (
        "could not power-cycle adapter hci0 through BlueZ" in caplog.text
        and "Blocked through rfkill" in caplog.text
    )


async def test_diagnose_checks_on_the_standin(bluez) -> None:
    standin, _sim = bluez
    result = await asyncio.to_thread(_bluez_check, "hci0")
    assert result == {
        "bluez_on_bus": "yes",
        "adapter": f"hci0 {DEFAULT_ADAPTER_ADDRESS}, powered True, discovering False",
    }
    await standin.stop()
    assert (await asyncio.to_thread(_bluez_check, "hci0"))["bluez_on_bus"].startswith("no")
