"""Every simulator fault: a clear log line, nothing wrong published, recovery on the next cycle."""

from __future__ import annotations

import logging
import time

import pytest

from services.simulator import (
    ADAPTER_NO_BLUEZ,
    ADAPTER_NO_DBUS,
    HANG_IN_CONNECT,
    HANG_IN_START_NOTIFY,
    FaultKind,
)
from tests.reader.support import assert_truthful, read_plan_settled, reader_on_sim, readings, with_sim

# fault -> the health error kind the reader counts and names in its log line
REQUEST_FAULTS = {
    FaultKind.BAD_CRC: "bad_crc",
    FaultKind.TRUNCATED: "truncated",
    FaultKind.DROPPED: "timeout",
    FaultKind.LATE: "timeout",
    FaultKind.WRONG_SLAVE: "wrong_slave",
    FaultKind.EXCEPTION: "modbus_exception",
    FaultKind.DISCONNECT: "disconnected",
}


async def _connected(reader) -> None:
    await read_plan_settled(reader)


@pytest.mark.parametrize("fault", list(REQUEST_FAULTS), ids=str)
async def test_request_fault_without_retries(mosquitto, caplog, fault: FaultKind) -> None:
    caplog.set_level(logging.INFO)
    async with reader_on_sim(mosquitto.url, retries=0) as (reader, sim, probe):
        await _connected(reader)
        before = len(readings(probe, 48))
        sim.faults.inject_next(fault)  # hits battery 48's 5042 x 7 read, the first of the next cycle
        assert await reader.cycle() == 3
        kind = REQUEST_FAULTS[fault]
        assert reader.stats.errors[kind] == 1
        line = next(
            r for r in caplog.records if r.levelno >= logging.WARNING and "battery 48" in r.getMessage()
        )
        assert f"read 5042x7 failed ({kind}:" in line.getMessage()
        # Recovery on the very next cycle, and nothing but truth published throughout.
        assert await reader.cycle() == 4
        await probe.wait_for(lambda: len(readings(probe, 48)) >= before + 1, what="battery 48 again")
        if fault is FaultKind.LATE:  # stay around until the late reply would have arrived
            deadline = time.monotonic() + sim.late_delay + 0.2
            while time.monotonic() < deadline:
                await reader.cycle()
            assert reader.stats.errors.get("bad_crc", 0) == 0
        for reading in readings(probe):
            assert_truthful(reading, sim)


@pytest.mark.parametrize("fault", list(REQUEST_FAULTS), ids=str)
async def test_request_fault_absorbed_by_a_retry(mosquitto, fault: FaultKind) -> None:
    async with reader_on_sim(mosquitto.url, retries=2) as (reader, sim, probe):
        await _connected(reader)
        sim.faults.inject_next(fault)
        assert await reader.cycle() == 4
        await probe.wait_for(lambda: len(readings(probe, 48)) >= 2)
        latest = readings(probe, 48)[-1]
        assert latest["complete"] is True
        for reading in readings(probe):
            assert_truthful(reading, sim)


async def test_garbage_before_the_reply_is_skipped(mosquitto) -> None:
    async with reader_on_sim(mosquitto.url, retries=0) as (reader, sim, probe):
        await _connected(reader)
        sim.faults.inject_next(FaultKind.GARBAGE)
        assert await reader.cycle() == 4
        assert sum(reader.stats.errors.values()) == 0
        for reading in readings(probe):
            assert_truthful(reading, sim)


@pytest.mark.parametrize(
    ("fault", "variant", "message"),
    [
        (FaultKind.CONNECT_FAIL, None, "le-connection-abort-by-local"),
        (FaultKind.HANG, HANG_IN_CONNECT, "did not finish in 1 s"),
        (FaultKind.HANG, HANG_IN_START_NOTIFY, "did not finish in 1 s"),
        (FaultKind.ADAPTER_GONE, ADAPTER_NO_DBUS, "no D-Bus system bus socket"),
        (FaultKind.ADAPTER_GONE, ADAPTER_NO_BLUEZ, "BlueZ is not on the system bus"),
    ],
)
async def test_connection_fault(
    mosquitto, caplog, fault: FaultKind, variant: str | None, message: str
) -> None:
    async with reader_on_sim(mosquitto.url, connect_timeout=1.0) as (reader, sim, probe):
        sim.faults.inject_next(fault, variant=variant)
        assert await reader.cycle() == 0
        assert message in caplog.text
        assert not readings(probe)
        # Even BlueZ gone from the bus is retried (with back-off), not a reason to exit.
        assert not reader.runtime.stop_event.is_set() and reader.exit_code == 0
        assert await reader.cycle() == 4  # recovers on the next cycle
        for reading in readings(probe):
            assert_truthful(reading, sim)


async def test_mixed_faults_never_publish_a_wrong_value(mosquitto) -> None:
    sim_config = with_sim(
        fault_rate=0.2, seed=7, fault_kinds=frozenset(REQUEST_FAULTS) | {FaultKind.GARBAGE}, late_delay=0.5
    )
    async with reader_on_sim(mosquitto.url, sim_config, retries=2) as (reader, sim, probe):
        for _ in range(15):
            await reader.cycle()
        await probe.wait_for(lambda: len(readings(probe)) >= 40, what="readings")
        assert sum(sim.faults.counts.values()) >= 10
        for reading in readings(probe):
            assert_truthful(reading, sim)
