"""BlueZ-level faults, each through bleak's real BlueZ backend: a clear log line with its remedy,
no wrong value published, and recovery."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from services.reader.service import Reader
from services.simulator import (
    ADAPTER_NO_BLUEZ,
    ADAPTER_NO_DBUS,
    HANG_IN_CONNECT,
    HANG_IN_START_NOTIFY,
    FaultKind,
)
from services.simulator.bank import BankSimulator
from services.simulator.bluez import PrivateSystemBus, StandInBlueZ
from tests.reader.support import assert_truthful, read_plan_settled, readings
from tests.support.bluez import (
    cycles_until,
    fast_backoff,
    private_system_bus,
    reader_on_bluez,
    standin,
    wait_until,
)
from tests.support.probe import MqttProbe


@asynccontextmanager
async def connected(
    broker_url: str, bus: PrivateSystemBus, **settings: Any
) -> AsyncIterator[tuple[Reader, StandInBlueZ, BankSimulator, MqttProbe]]:
    """Stand-in + reader, every battery read and its read plan settled; the log is what follows."""
    settings.setdefault("connect_timeout", 1.0)
    async with (
        standin(bus) as (bluez, sim),
        reader_on_bluez(broker_url, bluez, sim, **settings) as (reader, probe),
    ):
        fast_backoff(reader)
        # As Reader.run() does: the scanner's watchdog runs beside the cycles (fast here).
        reader.scanner.watchdog_after = 0.3
        watch = asyncio.create_task(reader.scanner.watch(reader.runtime.stop_event))
        try:
            await read_plan_settled(reader)
            yield reader, bluez, sim, probe
        finally:
            watch.cancel()
        for reading in readings(probe):
            assert_truthful(reading, sim)


def warnings_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


async def _scanner_runs(reader: Reader, bluez: StandInBlueZ, timeout: float = 5.0) -> None:
    """Wait until the scanner's own watchdog restarted it and advertisements flow again."""
    await wait_until(lambda: reader.scanner.state == "running", timeout, "the scanner running again")
    start = bluez.adverts_sent
    await wait_until(lambda: bluez.adverts_sent > start, timeout, "advertisements over D-Bus again")


# -- a method call that never replies ------------------------------------------------------------


async def test_write_that_never_replies_times_out_and_reconnects(mosquitto, system_bus, caplog) -> None:
    async with connected(mosquitto.url, system_bus) as (reader, bluez, _sim, _probe):
        caplog.clear()
        bluez.faults.hang_next("WriteValue")
        assert await reader.cycle() == 4  # the retry on a new connection reads it
        assert (
            "battery 48: read 5042x7 failed (timeout: no reply within 0.5 s); reconnecting"
            in warnings_text(caplog)
        )
        assert bluez.connects == 2 and reader.stats.errors == {"timeout": 1}


async def test_connect_that_never_replies_is_abandoned_at_the_deadline(mosquitto, system_bus, caplog) -> None:
    async with connected(mosquitto.url, system_bus) as (reader, bluez, _sim, _probe):
        assert reader.link is not None
        await reader.link.disconnect()
        caplog.clear()
        bluez.faults.hang_next("Connect")
        assert await reader.cycle() < 4
        assert "cannot connect to the BT-2: connect + notify setup did not finish in 1 s" in warnings_text(
            caplog
        )
        assert (
            await cycles_until(reader, lambda: reader.watchdog.bad_cycles == 0 and reader.link.connected) <= 2
        )
        assert await reader.cycle() == 4


async def test_no_reply_from_the_bus_is_named(mosquitto, tmp_path: Path, monkeypatch, caplog) -> None:
    # A system bus with a reply timeout answers a hung call with org.freedesktop.DBus.Error.NoReply.
    for bus in private_system_bus(tmp_path / "bus", monkeypatch, reply_timeout=0.3):
        async with connected(mosquitto.url, bus) as (reader, bluez, _sim, _probe):
            assert reader.link is not None
            await reader.link.disconnect()
            caplog.clear()
            bluez.faults.hang_next("StartNotify")
            assert await reader.cycle() < 4
            text = warnings_text(caplog)
            assert (
                "BlueZ did not answer" in text
                and "org.freedesktop.DBus.Error.NoReply" not in text.split("BlueZ did not answer")[0]
            )
            assert "if it repeats, 'sudo systemctl restart bluetooth'" in text
            assert await cycles_until(reader, lambda: reader.link is not None and reader.link.connected) <= 2


# -- bluetoothd restarts ---------------------------------------------------------------------------


@pytest.mark.parametrize("clean", [False, True], ids=["crash", "systemctl-restart"])
async def test_bluetoothd_restart_is_survived(mosquitto, system_bus, caplog, clean: bool) -> None:
    async with connected(mosquitto.url, system_bus) as (reader, bluez, _sim, probe):
        before, published = len(readings(probe)), reader.stats.readings_published
        caplog.clear()
        await bluez.restart(clean=clean)
        await cycles_until(
            reader,
            lambda: reader.watchdog.bad_cycles == 0 and reader.stats.readings_published >= published + 4,
        )
        text = warnings_text(caplog)
        expected = "BlueZ no longer knows the BT-2" if clean else "BlueZ no longer has this object"
        assert expected in text and "bluetoothd was restarted" in text, text
        await probe.wait_for(lambda: len(readings(probe)) >= before + 4)
        assert bluez.restarts == 1 and reader.exit_code == 0


async def test_bluetoothd_gone_makes_the_reader_exit_for_a_fresh_process(
    mosquitto, system_bus, caplog
) -> None:
    async with standin(system_bus) as (bluez, sim):
        async with reader_on_bluez(mosquitto.url, bluez, sim, connect_timeout=1.0) as (reader, probe):
            fast_backoff(reader)
            assert await reader.cycle() == 4
            await bluez.stop(clean=False)  # bluetoothd is killed and stays down
            await cycles_until(reader, reader.runtime.stop_event.is_set, limit=5)
            assert reader.exit_code == 4
            assert (
                "BlueZ is not on the system bus" in caplog.text and "systemctl start bluetooth" in caplog.text
            )
        await bluez.start()  # bluetoothd is back; the supervisor started a new reader
        async with reader_on_bluez(mosquitto.url, bluez, sim) as (reader, probe):
            assert await reader.cycle() == 4
            for reading in readings(probe):
                assert_truthful(reading, sim)


# -- the adapter ------------------------------------------------------------------------------------


async def test_adapter_removed_and_re_added(mosquitto, system_bus, caplog) -> None:
    async with connected(mosquitto.url, system_bus) as (reader, bluez, _sim, _probe):
        caplog.clear()
        bluez.remove_adapter()
        published = reader.stats.readings_published
        assert await reader.cycle() == 0
        await _scanner_runs_fails(reader)
        assert "Bluetooth adapter hci0 not found" in warnings_text(caplog)
        assert "check 'bluetoothctl list' and 'rfkill list'" in warnings_text(caplog)
        assert reader.stats.readings_published == published
        bluez.add_adapter()
        await _scanner_runs(reader, bluez)
        assert await cycles_until(reader, lambda: reader.watchdog.bad_cycles == 0) <= 3
        assert "Future exception was never retrieved" not in caplog.text


async def _scanner_runs_fails(reader: Reader) -> None:
    """Wait until the scanner's watchdog tried to restart it and failed (the adapter is gone or off)."""
    await wait_until(lambda: reader.scanner.state == "failed", 5, "the scanner restart to fail")


async def test_adapter_powered_off_by_rfkill(mosquitto, system_bus, caplog) -> None:
    async with connected(mosquitto.url, system_bus) as (reader, bluez, _sim, _probe):
        caplog.clear()
        bluez.rfkill(True)
        assert await reader.cycle() == 0
        await _scanner_runs_fails(reader)
        assert await reader.cycle() == 0
        text = warnings_text(caplog)
        assert (
            "adapter hci0 is powered off or blocked: try 'rfkill unblock bluetooth' and 'bluetoothctl power on'"
            in text
        )
        assert reader.adapter_problem is not None or reader.scanner.problem is not None
        bluez.rfkill(False)
        await _scanner_runs(reader, bluez)
        assert await cycles_until(reader, lambda: reader.watchdog.bad_cycles == 0) <= 3


async def test_discovery_stuck_in_progress_then_the_scanner_watchdog_restarts_it(
    mosquitto, system_bus, caplog
) -> None:
    async with connected(mosquitto.url, system_bus) as (reader, bluez, _sim, _probe):
        caplog.clear()
        bluez.faults.discovery_busy = 2
        assert await reader.scanner.restart() is False
        assert "BLE scanner did not start: BlueZ is busy with another operation" in warnings_text(caplog)
        assert "Operation already in progress" in warnings_text(caplog)
        await _scanner_runs(reader, bluez)
        assert bluez.faults.discovery_busy == 0 and await reader.cycle() == 4


async def test_passive_scanning_uses_the_advertisement_monitor(mosquitto, system_bus) -> None:
    async with connected(mosquitto.url, system_bus) as (reader, bluez, _sim, _probe):
        assert reader.link is not None
        await reader.link.disconnect()  # the BT-2 advertises again
        reader.scanner.bt2_sightings.clear()
        assert await reader.scanner.restart("passive") is True
        assert bluez.tree.calls["RegisterMonitor"] == 1
        await _scanner_runs(reader, bluez)
        await wait_until(lambda: reader.scanner.bt2_sightings, 5, "the BT-2 heard in passive mode")
        assert await reader.cycle() == 4
        assert reader.scanner.mode == "passive"


# -- the link -----------------------------------------------------------------------------------------


async def test_notifications_that_stop_while_the_link_stays_up(mosquitto, system_bus, caplog) -> None:
    async with connected(mosquitto.url, system_bus, retries=0) as (reader, bluez, _sim, _probe):
        caplog.clear()
        published = reader.stats.readings_published
        bluez.faults.notifications_stopped = True
        assert await reader.cycle() == 0
        assert (
            "no notification at all since connecting (the link is up but BlueZ delivers no notifications)"
            in (warnings_text(caplog))
        )
        assert reader.stats.readings_published == published
        bluez.faults.notifications_stopped = False
        assert (
            await cycles_until(reader, lambda: reader.stats.readings_published >= published + 4, limit=6) <= 6
        )


async def test_wedged_adapter_takes_the_watchdog_path_to_exit_3(mosquitto, system_bus, caplog) -> None:
    async with connected(mosquitto.url, system_bus, retries=0, watchdog_cycles=1, poll_interval=0) as (
        reader,
        bluez,
        _sim,
        _probe,
    ):
        caplog.set_level(logging.WARNING)
        bluez.faults.notifications_stopped = True
        async with asyncio.timeout(30):
            await reader._poll_loop()
        assert reader.exit_code == 3
        text = caplog.text
        assert "no good reading for 1 cycles; reconnecting to the BT-2" in text
        assert "no good reading for 2 cycles; power-cycling adapter hci0" in text
        assert "power-cycled Bluetooth adapter hci0" in text and bluez.powered_writes == [False, True]
        assert "despite reconnecting and resetting the adapter; exiting" in text


async def test_one_aborted_connect_is_retried_by_bleak_on_one_connection(
    mosquitto, system_bus, caplog
) -> None:
    async with connected(mosquitto.url, system_bus) as (reader, bluez, sim, _probe):
        assert reader.link is not None
        await reader.link.disconnect()
        caplog.clear()
        sim.faults.inject_next(FaultKind.CONNECT_FAIL)
        assert await reader.cycle() == 4
        # bleak retried inside connect(); the reader kept that connection instead of dropping it again
        assert bluez.connects == 2 and reader.stats.errors == {}
        assert (
            "after the link dropped 1 time(s) while connecting and bleak retried: usually "
            in warnings_text(caplog)
        )
        assert "le-connection-abort-by-local" in warnings_text(caplog)


async def test_connects_aborted_until_the_deadline(mosquitto, system_bus, caplog) -> None:
    async with connected(mosquitto.url, system_bus) as (reader, _bluez, sim, _probe):
        assert reader.link is not None
        await reader.link.disconnect()
        caplog.clear()
        sim.faults.inject_next(FaultKind.CONNECT_FAIL, 10_000)
        assert await reader.cycle() == 0
        text = warnings_text(caplog)
        assert "connect + notify setup did not finish in 1 s (the link dropped" in text
        assert "le-connection-abort-by-local, RF interference" in text
        sim.faults.clear()
        assert await cycles_until(reader, lambda: reader.watchdog.bad_cycles == 0) <= 2


# -- the core's connection faults through BlueZ ---------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "variant", "message"),
    [
        (FaultKind.HANG, HANG_IN_CONNECT, "did not finish in 1 s"),
        (FaultKind.HANG, HANG_IN_START_NOTIFY, "did not finish in 1 s"),
        (FaultKind.ADAPTER_GONE, ADAPTER_NO_BLUEZ, "BlueZ did not answer"),
        (FaultKind.ADAPTER_GONE, ADAPTER_NO_DBUS, "Bluetooth adapter hci0 not found"),
    ],
)
async def test_core_connection_faults_as_bluez_reports_them(  # noqa: PLR0917 - fixtures + parameters
    mosquitto, system_bus, caplog, fault: FaultKind, variant: str, message: str
) -> None:
    async with connected(mosquitto.url, system_bus) as (reader, bluez, sim, _probe):
        assert reader.link is not None
        await reader.link.disconnect()
        caplog.clear()
        bluez.restart_gap = 1.5  # how long bluetoothd or the adapter stays away
        sim.faults.inject_next(fault, variant=variant)
        assert await reader.cycle() == 0
        await cycles_until(reader, lambda: message in caplog.text)
        if variant == ADAPTER_NO_DBUS:
            await _scanner_runs(reader, bluez)  # the adapter came back
        assert await cycles_until(reader, lambda: reader.watchdog.bad_cycles == 0, limit=6) <= 6


@pytest.mark.parametrize(
    "fault",
    [
        FaultKind.BAD_CRC,
        FaultKind.TRUNCATED,
        FaultKind.DROPPED,
        FaultKind.WRONG_SLAVE,
        FaultKind.EXCEPTION,
        FaultKind.GARBAGE,
        FaultKind.DISCONNECT,
    ],
    ids=str,
)
async def test_core_request_faults_through_bluez(mosquitto, system_bus, fault: FaultKind) -> None:
    async with connected(mosquitto.url, system_bus, retries=2) as (reader, _bluez, sim, _probe):
        sim.faults.inject_next(fault)
        assert await reader.cycle() == 4
