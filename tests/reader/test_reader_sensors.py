"""One bad sensor through the whole reader: the simulator's pack 49 reports 0x8000 for temperature 3
(an absent thermistor, as the V1.7 int16 register holds it); the reader publishes that sensor as null,
every other value as read, and says so once in its log (issue 14)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.reader.support import reader_on_sim, readings


async def test_one_absent_temperature_sensor_is_null_and_logged(
    mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with reader_on_sim(mosquitto.url) as (reader, sim, probe):
        honest = sim.physics.values

        def values(slave: int, t: float) -> dict[str, Any]:
            out = dict(honest(slave, t))
            if slave == 49:
                temps = list(out["temperatures"])  # type: ignore[arg-type]
                temps[2] = -3276.8  # encodes as 0x8000
                out["temperatures"] = temps
            return out

        sim.physics.values = values  # type: ignore[method-assign]
        await reader.cycle()
        await reader.cycle()
        await probe.wait_for(lambda: len(readings(probe, 49)) >= 2 and len(readings(probe, 48)) >= 1)
        for flagged in readings(probe, 49)[:2]:
            temps, truth = flagged["temperatures"], honest(49, 0.0)["temperatures"]
            assert len(temps) == 15 and temps[2] is None
            assert all(isinstance(t, float) for i, t in enumerate(temps) if i != 2)
            assert len(flagged["cell_voltages"]) == 15 and None not in flagged["cell_voltages"]
            assert len(truth) == 15  # type: ignore[arg-type]
        assert None not in readings(probe, 48)[0]["temperatures"]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        hits = [m for m in warnings if "temperatures[3] = -3276.8 °C" in m]
        assert len(hits) == 1, warnings  # once per streak, not every cycle
        assert hits[0].startswith("battery 49: read 5000x34: ") and "raw 0x8000" in hits[0]
        assert "published as null" in hits[0]
