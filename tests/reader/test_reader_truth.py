"""The reader against the simulator through a real broker: what it publishes is the simulator's truth."""

from __future__ import annotations

import pytest

from tests.reader.support import assert_truthful, first_cycle, reader_on_sim, readings, with_sim

SLAVES = (48, 49, 50, 51)


@pytest.mark.parametrize("mtu", [251, 23])
async def test_every_battery_published_and_truthful(broker, mtu: int) -> None:
    async with reader_on_sim(broker.url, with_sim(mtu=mtu)) as (reader, sim, probe):
        assert await reader.cycle() == 4
        await probe.wait_for(lambda: len(readings(probe)) == 8, what="8 readings")
        for values, reading in first_cycle(probe, SLAVES).values():
            assert values["complete"] is True and set(values["raw"]) == {"5042", "5000"}
            assert reading["complete"] is True and reading["bt2"] == "c464e3383d0e"
            assert len(reading["cell_voltages"]) == 15 and len(reading["temperatures"]) == 15
            assert reading["model"] == "RBT50LFP48S" and reading["serial"] == "22RBH4A051020000"
            assert set(reading["raw"]) == {"5042", "5000", "5100", "5104"}
        for reading in readings(probe):
            assert_truthful(reading, sim)
        topic = "renogy/bridge/reader/default/health"
        # The reader publishes its health at start too; the one after the cycle counts the readings.
        await probe.wait_for(lambda: topic in probe.latest and probe.json(topic)["cycles"] >= 1)
        health = probe.json(topic)
        assert (
            health["bt2"] == "c464e3383d0e" and health["errors"] == {} and health["readings_published"] == 8
        )


async def test_info_block_read_at_start_then_at_its_interval(mosquitto) -> None:
    async with reader_on_sim(mosquitto.url, info_interval=3600) as (reader, sim, probe):
        await reader.cycle()
        await reader.cycle()
        await probe.wait_for(lambda: len(readings(probe, 48)) >= 3)
        _values, first, second = readings(probe, 48)[:3]  # the first cycle's two readings, the second's
        assert {"5100", "5104"} <= first["raw"].keys() and {"5100", "5104"}.isdisjoint(second["raw"])
        assert first["cell_voltage_alarms"] == 0 and first["cell_temperature_alarms"] == 0
        # Identity stays on every reading; the alarm/status words only where they were read.
        assert second["model"] == "RBT50LFP48S" and "status1" not in second
        assert "cell_voltage_alarms" not in second
        assert_truthful(second, sim)


async def test_cell_undervoltage_alarm_published_from_the_5100_block(mosquitto) -> None:
    async with reader_on_sim(mosquitto.url) as (reader, sim, probe):
        pack = sim.physics.packs[49]
        pack.remaining, pack.discharge_cut = 0.0, True  # emptied: the BMS has cut discharge
        await reader.cycle()
        await probe.wait_for(lambda: len(readings(probe, 49)) >= 2 and len(readings(probe, 48)) >= 2)
        flagged = readings(probe, 49)[1]  # the second reading of the cycle: the one with the 5100 block
        cells = flagged["cell_voltages"]
        expected = sum(0b01 << (2 * i) for i, volts in enumerate(cells) if volts < 2.8)
        assert expected and flagged["cell_voltage_alarms"] == expected
        assert readings(probe, 48)[1]["cell_voltage_alarms"] == 0
        assert_truthful(flagged, sim)


async def test_silent_battery_is_backed_off_not_blocking_the_others(mosquitto, caplog) -> None:
    async with reader_on_sim(mosquitto.url, with_sim(batteries=(48, 49)), batteries=[48, 49, 52]) as (
        reader,
        _sim,
        probe,
    ):
        for _ in range(4):
            assert await reader.cycle() == 2
        assert reader.watchdog.bad_cycles == 0
        assert "battery 52 has not answered for 2 cycles" in caplog.text
        attempts_on_52 = reader.stats.battery(52).consecutive_failures
        assert attempts_on_52 < 4 * (1 + reader.cfg.retries)  # skipped in some cycles
        assert all(r["slave_id"] in (48, 49) for r in readings(probe))


async def test_poll_loop_keeps_interval_and_health(mosquitto) -> None:
    async with reader_on_sim(mosquitto.url, poll_interval=0.2) as (reader, _sim, probe):
        import asyncio

        loop_task = asyncio.create_task(reader._poll_loop())
        health_topic = "renogy/bridge/reader/default/health"
        await probe.wait_for(lambda: health_topic in probe.latest and probe.json(health_topic)["cycles"] >= 3)
        reader.runtime.request_stop()
        await loop_task
        health = probe.json(health_topic)
        assert health["link_quality"] == 100 and health["connected"] is True
        assert health["last_cycle_floor_s"] > 0 and health["last_cycle_s"] >= health["last_cycle_floor_s"]
