"""bluetoothd leaving the system bus (stopped, restarting) is retried with back-off, not fatal;
through bleak's real BlueZ backend on the stand-in BlueZ."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from tests.reader.support import assert_truthful, readings
from tests.support.bluez import (
    cycles_until,
    fast_backoff,
    needs_dbus,
    private_system_bus,
    reader_on_bluez,
    standin,
)

pytestmark = needs_dbus


async def test_bluetoothd_gone_and_back_is_retried_without_exiting(
    mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for bus in private_system_bus(tmp_path / "bus", monkeypatch):
        async with (
            standin(bus) as (bluez, sim),
            reader_on_bluez(mosquitto.url, bluez, sim, connect_timeout=1.0) as (reader, probe),
        ):
            fast_backoff(reader)
            # As Reader.run() does: the scanner's watchdog runs beside the cycles (fast here).
            reader.scanner.watchdog_after = 0.3
            watch = asyncio.create_task(reader.scanner.watch(reader.runtime.stop_event))
            assert await reader.cycle() == 4
            await bluez.stop(clean=False)  # bluetoothd is killed ...
            caplog.clear()
            await cycles_until(reader, lambda: reader.adapter_problem is not None, limit=5)
            errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
            assert any(
                "BlueZ is not on the system bus" in line and "retrying with back-off" in line
                for line in errors
            ), errors
            assert not reader.runtime.stop_event.is_set() and reader.exit_code == 0
            published = reader.stats.readings_published
            await bluez.start()  # ... and comes back: the same process reads again
            assert (
                await cycles_until(
                    reader,
                    lambda published=published: reader.stats.readings_published >= published + 4,
                    limit=5,
                )
                <= 5
            )
            assert reader.adapter_problem is None and reader.exit_code == 0
            assert not reader.runtime.stop_event.is_set()
            await probe.wait_for(lambda: len(readings(probe)) >= 8)
            watch.cancel()
            for reading in readings(probe):
                assert_truthful(reading, sim)
