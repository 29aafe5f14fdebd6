"""The first cycle on the real simulator (no broker): every battery's values before any info block, the
identity in a second reading of the same sample, and a merged-read refusal that stays with its pack."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest

from services.aggregator.banks import Layout
from services.aggregator.core import AggregatorCore, Settings
from services.aggregator.energy import Step, trapezoid
from services.reader.poller import PollerEvent, ReadingEvent
from services.simulator import BankSimulator
from shared import registers
from shared.modbus import ReadRequest
from shared.payloads import dumps, parse_reading
from tests.reader.support import assert_truthful, with_sim
from tests.reader.test_poller import poller_on_sim, requests_of

SLAVES = (48, 49, 50, 51)
INFO_STARTS = {start for start, _ in registers.BLOCKS_INFO}
MERGED = str(registers.BLOCK_MERGED[0])


@pytest.mark.parametrize(
    "changes",
    [{}, {"read_reserved": True, "max_read_words": 49}],
    ids=["packs-refuse-merged", "packs-take-merged"],
)
async def test_a_fresh_start_publishes_every_battery_before_any_info_block(changes: dict[str, Any]) -> None:
    sim = BankSimulator.from_config(with_sim(**changes))
    async with poller_on_sim(sim) as (poller, _events):
        # Each reading with the requests the bank had answered when it was published.
        published: list[tuple[ReadingEvent, list[tuple[int, int, int]]]] = []

        def on_event(event: PollerEvent) -> None:
            if isinstance(event, ReadingEvent):
                published.append((event, requests_of(sim)))

        poller.on_event = on_event
        assert await poller.cycle() == 4
        # Every battery's values were out before the bank was asked for a single info block.
        assert [e.reading.slave_id for e, _ in published[:4]] == list(SLAVES)
        for event, answered in published[:4]:
            asked = [start for _, start, _ in answered]
            assert not INFO_STARTS & set(asked), (event.reading.slave_id, answered)
            assert not INFO_STARTS & {int(s) for s in event.reading.raw}
        assert [e.reading.slave_id for e, _ in published] == [*SLAVES, *SLAVES]
        firsts = {e.reading.slave_id: e.reading for e, _ in published[:4]}
        for event, _ in published[4:]:
            second, first = event.reading, firsts[event.reading.slave_id]
            # The same sample again (time, monotonic time, frames), now with its info blocks.
            assert (second.ts, second.mono) == (first.ts, first.mono)
            assert second.raw.items() >= first.raw.items()
            assert {int(s) for s in second.raw} >= INFO_STARTS and not second.failed
            identity = poller.identities[second.slave_id]
            payload = second.payload(identity, "boot")
            assert payload["model"] == "RBT50LFP48S" and payload["complete"]
            assert_truthful(payload, sim)
        assert all("model" not in r.values and "status1" not in r.values for r in firsts.values())


async def test_the_second_reading_of_a_sample_counts_no_energy_twice() -> None:
    """Two readings of one sample per cycle (info due every cycle): the aggregator integrates each
    interval between samples once, and the second reading of a sample is a duplicate for the counter."""
    sim = BankSimulator.from_config(with_sim(batteries=(48,)))
    async with poller_on_sim(sim, info_interval=0) as (poller, events):
        for _ in range(3):
            assert await poller.cycle() == 1
    payloads = [
        dumps(e.reading.payload(poller.identities[48], "boot")) for e in events if isinstance(e, ReadingEvent)
    ]
    assert len(payloads) == 6
    readings = [parse_reading(p) for p in payloads]
    settings = Settings(profile="default", max_gap=90.0, stale_after=90.0, info_stale_after=1800.0)
    start = readings[0].ts
    core = AggregatorCore(Layout(), settings, started=start, mono=start)
    steps = [core.accept(r, r.ts, r.ts) for r in readings]
    assert steps == [
        Step.FIRST,
        Step.DUPLICATE,
        Step.INTEGRATED,
        Step.DUPLICATE,
        Step.INTEGRATED,
        Step.DUPLICATE,
    ]
    samples: list[tuple[float, float]] = []
    for r in readings[::2]:
        assert r.mono is not None and r.power is not None
        samples.append((r.mono, r.power))
    assert any(power for _, power in samples), "the simulator's pack carries a current"
    expected = [trapezoid(t0, p0, t1, p1) for (t0, p0), (t1, p1) in itertools.pairwise(samples)]
    (battery,) = core.batteries.values()
    assert math.isclose(battery.counter.in_wh, sum(e[0] for e in expected), rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(battery.counter.out_wh, sum(e[1] for e in expected), rel_tol=1e-9, abs_tol=1e-12)


class _SilentOnLongReads(BankSimulator):
    """A bank whose pack 49 gives no answer at all to a read longer than 34 words (as a real pack did
    to the 5000 x 49 read), the others answering it."""

    def _slave_reply(self, slave: int, frame: bytes, function: int, sim_time: float) -> Any:
        if slave == 49 and len(frame) == 8 and ReadRequest.decode(frame).count > 34:
            return None
        return super()._slave_reply(slave, frame, function, sim_time)


async def test_one_pack_refusing_the_merged_read_leaves_the_others_on_it() -> None:
    sim = _SilentOnLongReads.from_config(with_sim(read_reserved=True, max_read_words=49))
    async with poller_on_sim(sim) as (poller, events):
        assert await poller.cycle() == 4
        assert max(words for _, _, words in requests_of(sim)) <= 34, "no merged read in the first cycle"
        done = len([e for e in events if isinstance(e, ReadingEvent)])
        assert await poller.cycle() == 4
        # The silent pack costs its own timeout and reconnect only: the packs after it read merged.
        assert poller.read_plan() == {"48": "merged", "49": "split", "50": "merged", "51": "merged"}
        second = [e.reading for e in events if isinstance(e, ReadingEvent)][done:]
        assert [r.slave_id for r in second] == list(SLAVES)
        blocks = [sorted(set(r.raw) - {str(s) for s in INFO_STARTS}) for r in second]
        assert blocks == [[MERGED], ["5000", "5042"], [MERGED], [MERGED]]
        assert all(not r.failed for r in second)
        answered = len(requests_of(sim))
        assert await poller.cycle() == 4
        # Remembered: the next cycle asks pack 49 for its blocks only, the others for the merged read.
        assert requests_of(sim)[answered:] == [
            (48, 5000, 49),
            (49, 5042, 7),
            (49, 5000, 34),
            (50, 5000, 49),
            (51, 5000, 49),
        ]
        assert poller.stats.errors == {}
        for event in events:
            if isinstance(event, ReadingEvent):
                assert_truthful(event.reading.payload(poller.identities[event.reading.slave_id], "b"), sim)
