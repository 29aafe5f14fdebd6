"""Regressions the proof runs found, each pinned by a small, fast test (the proof that found it is named)."""

from __future__ import annotations

from tests.conftest import Broker
from tests.reader.support import reader_on_sim, with_sim


async def test_link_failures_do_not_back_off_a_battery(mosquitto: Broker) -> None:
    """Fault soak, 10,000 cycles: a battery whose reads failed twice because the BT-2 link could not be
    re-established (a connect fault after a dropped link) was taken for a silent battery and skipped in the
    next, fault-free cycle, so recovery took 2 cycles. Only a battery that was asked and did not answer is
    backed off."""
    async with reader_on_sim(mosquitto.url, with_sim(batteries=(50,)), batteries=[50]) as (reader, sim, _):
        assert await reader.cycle() == 1
        for _ in range(2):
            assert await reader._ensure_link()  # the link is up when the cycle starts ...
            sim.faults.inject_next("disconnect")  # ... drops during battery 50's first read ...
            sim.faults.inject_next("connect_fail")  # ... and the reconnect fails
            assert await reader.cycle() == 0
        assert sim.faults.pending == 0
        assert await reader.cycle() == 1  # the first fault-free cycle reads it again
