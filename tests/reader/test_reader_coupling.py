"""The real reader on a simulator whose controller and DC-DC charger are wired to the simulated packs,
against a real Mosquitto: the chargers' published battery values are the packs' own."""

from __future__ import annotations

import orjson
import pytest

from shared.topics import Topics, bt2_id
from tests.reader.support import assert_truthful, reader_on_sim, readings, with_sim

SIM = with_sim(batteries=(48, 49), devices=(("controller", 1), ("dcc", 96)), sim_start=12 * 3600.0)
BT2 = bt2_id(SIM.address)
TOPICS = Topics("renogy")


async def test_published_charger_battery_values_follow_the_packs(mosquitto) -> None:
    async with reader_on_sim(mosquitto.url, SIM, devices=["controller:1", "dcc:96"]) as (reader, sim, probe):
        await reader.cycle()
        topics = {kind: TOPICS.reading(BT2, slave, kind) for kind, slave in (("controller", 1), ("dcc", 96))}
        await probe.wait_for(lambda: all(t in probe.latest for t in topics.values()), what="charger readings")
        await probe.wait_for(lambda: readings(probe, 48) and readings(probe, 49), what="battery readings")
        packs = [readings(probe, slave)[-1] for slave in (48, 49)]
        for pack in packs:
            assert_truthful(pack, sim)
        volts = sum(p["voltage"] for p in packs) / len(packs)
        soc = sum(p["remaining_charge"] for p in packs) / sum(p["capacity"] for p in packs)
        controller = orjson.loads(probe.latest[topics["controller"]].payload)
        dcc = orjson.loads(probe.latest[topics["dcc"]].payload)
        # Read a moment apart in simulated time (one cycle), so allow a step of the bank's voltage.
        assert controller["battery_voltage"] == pytest.approx(volts, abs=0.15)
        assert abs(controller["battery_soc"] - 100 * soc) <= 1
        assert controller["charging_current"] > 0 and controller["charging_state"] in (
            "mppt",
            "boost",
            "floating",
        )
        # The 12 V DC-DC charger reports the 15-cell bank in its 12 V frame (x 4/15).
        assert dcc["battery_voltage"] == pytest.approx(volts * 4 / 15, abs=0.1)
        assert abs(dcc["battery_soc"] - 100 * soc) <= 1
