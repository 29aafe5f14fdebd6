"""The whole reader with bleak's own BlueZ backend (no custom backend) on the stand-in BlueZ."""

from __future__ import annotations

import pytest

from services.simulator.bluez import PrivateSystemBus
from tests.reader.support import assert_truthful, first_cycle, readings
from tests.support.bluez import reader_on_bluez, standin, with_sim

SLAVES = (48, 49, 50, 51)
HEALTH = "renogy/bridge/reader/default/health"


@pytest.mark.parametrize("mtu", [251, 23])
async def test_readings_through_bleak_bluez_equal_the_truth(
    mosquitto, system_bus: PrivateSystemBus, mtu: int
) -> None:
    async with (
        standin(system_bus, with_sim(mtu=mtu)) as (bluez, sim),
        reader_on_bluez(mosquitto.url, bluez, sim) as (reader, probe),
    ):
        assert await reader.cycle() == 4
        await probe.wait_for(lambda: len(readings(probe)) == 8, what="8 readings")
        for _values, reading in first_cycle(probe, SLAVES).values():
            assert reading["complete"] is True and reading["bt2"] == "c464e3383d0e"
            assert set(reading["raw"]) == {"5042", "5000", "5100", "5104"}
        for reading in readings(probe):
            assert_truthful(reading, sim)
        assert reader.link is not None and reader.link.mtu == mtu
        assert type(reader.link.backend_object).__name__ == "BleakClientBlueZDBus"
        await probe.wait_for(lambda: HEALTH in probe.latest and probe.json(HEALTH)["readings_published"] == 8)
        health = probe.json(HEALTH)
        assert health["backend"] == "BleakClientBlueZDBus"
        assert health["errors"] == {} and health["connected"] is True
        assert health["scanner"]["state"] == "running" and health["scanner"]["advertisements"] > 0
        # One connection, through bluetoothd's own calls; the advertisements came over D-Bus too.
        assert bluez.connects == 1 and bluez.tree.calls["StartDiscovery"] >= 1
        assert reader.adapter_address == bluez.adapter_address
