"""The transport-free poller on the real simulator, with no broker: readings, read plan, back-off, watchdog."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.reader.backends import Backends
from services.reader.poller import (
    BatteryBackedOff,
    CycleDone,
    Poller,
    PollerEvent,
    ReadingEvent,
    WatchdogEvent,
)
from services.reader.readings import Identity
from services.reader.recovery import Action
from services.reader.scanner import Scanner
from services.reader.simulate import SIM_ADAPTER_ADDRESS
from services.simulator import (
    BankSimulator,
    SimBT2Client,
    SimScanner,
    register_simulator,
    unregister_simulator,
)
from services.simulator.faults import REQUEST_FAULTS, FaultKind
from shared import registers
from shared.config import load_config
from tests.reader.support import assert_truthful, with_sim

MERGED = str(registers.BLOCK_MERGED[0])


@asynccontextmanager
async def poller_on_sim(
    sim: BankSimulator, **settings: Any
) -> AsyncIterator[tuple[Poller, list[PollerEvent]]]:
    """A Poller with its scanner running on ``sim``; the list collects every event it emits."""
    overrides = {
        "reader.request_timeout": 0.3,
        "reader.connect_timeout": 2.0,
        "reader.scan_timeout": 2.0,
        "reader.batteries": list(sim.slaves),
        **{f"reader.{key}": value for key, value in settings.items()},
    }
    cfg = load_config(environ={}, overrides=overrides).reader
    register_simulator(sim)
    scanner = Scanner(
        backend=SimScanner, adapter=cfg.adapter, mode="active", on_advertisement=None, on_state=_noop
    )
    events: list[PollerEvent] = []
    poller = Poller(
        cfg,
        Backends(SimBT2Client, SimScanner, SIM_ADAPTER_ADDRESS, sim),
        scanner,
        asyncio.Event(),
        on_event=events.append,
    )
    await scanner.start()
    try:
        yield poller, events
    finally:
        if poller.link is not None:
            await poller.link.disconnect()
        await scanner.stop()
        unregister_simulator(sim)
        sim.close()


def _noop(_state: str, _mode: str) -> None:
    pass


def readings_of(events: list[PollerEvent]) -> list[dict[str, Any]]:
    return [e.reading.payload(Identity(), "test") for e in events if isinstance(e, ReadingEvent)]


def requests_of(sim: BankSimulator) -> list[tuple[int, int, int]]:
    """(slave, start, words) of every request the bank answered, from its truth record."""
    return [(r.slave, r.start, r.words) for r in sim.truth.records]


async def test_merged_read_gives_the_simulators_values_in_one_exchange() -> None:
    sim = BankSimulator.from_config(with_sim(read_reserved=True, max_read_words=49))
    async with poller_on_sim(sim) as (poller, events):
        assert await poller.cycle() == 4
        # A fresh start reads blocks first (its first values never wait for a probe of the pack).
        assert poller.read_plan() == dict.fromkeys(("48", "49", "50", "51"), "untried")
        assert {(start, words) for _, start, words in requests_of(sim)} == {
            (5042, 7),
            (5000, 34),
            *registers.BLOCKS_INFO,
        }
        assert await poller.cycle() == 4
        assert poller.read_plan() == dict.fromkeys(("48", "49", "50", "51"), "merged")
        assert poller.stats.errors == {}
        published = readings_of(events)
        assert len(published) == 12  # the first cycle publishes each battery twice: values, then info
        for reading in published:
            assert_truthful(reading, sim)
            assert reading["complete"] and reading["cell_voltages"] and reading["voltage"] is not None
        for reading in published[8:]:
            assert set(reading["raw"]) >= {MERGED} and "5042" not in reading["raw"]
        # The second cycle: one 5000 x 49 per battery and nothing else (the info blocks are not due).
        second = requests_of(sim)[-4:]
        assert second == [(slave, 5000, 49) for slave in (48, 49, 50, 51)]
        assert [e for e in events if isinstance(e, CycleDone)] == [
            CycleDone(4, 4, e.seconds) for e in events if isinstance(e, CycleDone)
        ]


@pytest.mark.parametrize(
    ("changes", "answer"),
    [
        ({}, "exception 0x02 (illegal data address)"),  # the default pack: 5034 is not readable
        ({"read_reserved": True, "max_read_words": 34}, "exception 0x03 (illegal data value)"),  # too long
    ],
    ids=["reserved-5034", "max-34-words"],
)
async def test_a_pack_that_refuses_the_merged_read_is_read_in_blocks_and_remembered(
    caplog: pytest.LogCaptureFixture, changes: dict[str, Any], answer: str
) -> None:
    caplog.set_level(logging.INFO)
    sim = BankSimulator.from_config(with_sim(**changes))
    async with poller_on_sim(sim) as (poller, events):
        assert await poller.cycle() == 4
        assert "merged read" not in caplog.text  # not asked before the pack answered its blocks
        assert await poller.cycle() == 4
        first = len(requests_of(sim))
        assert await poller.cycle() == 4
        assert poller.read_plan() == dict.fromkeys(("48", "49", "50", "51"), "split")
        # The refusal is the pack's answer, not a link error; nothing was lost.
        assert poller.stats.errors == {}
        assert "battery 48: merged read 5000x49 not answered (modbus_exception" in caplog.text
        assert answer in caplog.text and "reading it in blocks from now on" in caplog.text
        assert requests_of(sim)[first:] == [
            (s, b, w) for s in (48, 49, 50, 51) for b, w in ((5042, 7), (5000, 34))
        ]
        published = readings_of(events)
        assert len(published) == 16  # the first cycle publishes each battery twice: values, then info
        for reading in published:
            assert_truthful(reading, sim)
            assert {"5042", "5000"} <= set(reading["raw"]) and reading["complete"]
            assert reading["cell_voltages"] and reading["voltage"] is not None


async def test_a_mixed_bank_keeps_one_plan_per_battery() -> None:
    sim = BankSimulator.from_config(with_sim(read_reserved=True, max_read_words=49, read_limits=((49, 34),)))
    async with poller_on_sim(sim) as (poller, events):
        assert await poller.cycle() == 4
        assert await poller.cycle() == 4
        assert poller.read_plan() == {"48": "merged", "49": "split", "50": "merged", "51": "merged"}
        for reading in readings_of(events):
            assert_truthful(reading, sim)


async def test_the_merged_cycle_is_shorter_in_the_timing_model() -> None:
    """The modelled floor of a steady 4-battery cycle: one 49-word read beats 34 + 7 words."""
    split = sum(BankSimulator.from_config(with_sim()).read_floor(w) for w in (34, 7)) * 4 / 0.02
    merged = BankSimulator.from_config(with_sim()).read_floor(49) * 4 / 0.02
    assert merged < 0.7 * split
    sim = BankSimulator.from_config(with_sim(read_reserved=True, max_read_words=49))
    async with poller_on_sim(sim, info_interval=3600) as (poller, _events):
        await poller.cycle()
        await poller.cycle()
        assert poller.stats.last_cycle_floor_s is not None
        assert abs(poller.stats.last_cycle_floor_s / 0.02 - merged) < 1e-6


async def test_silent_batteries_back_off_and_the_watchdog_escalates_to_exit() -> None:
    sim = BankSimulator.from_config(with_sim(batteries=(48,)))
    async with poller_on_sim(sim, batteries=[60], retries=0, watchdog_cycles=1, poll_interval=0) as (
        poller,
        events,
    ):
        async with asyncio.timeout(30):
            await poller.run()
        assert poller.exit_code == 3
        watchdog = [(e.action, e.bad_cycles) for e in events if isinstance(e, WatchdogEvent)]
        # No adapter reset on a custom backend: reconnect twice, then give up.
        assert watchdog == [(Action.RECONNECT, 1), (Action.RECONNECT, 2), (Action.EXIT, 3)]
        backed_off = [(e.slave, e.every) for e in events if isinstance(e, BatteryBackedOff)]
        assert backed_off[:2] == [(60, 2), (60, 4)]
        assert not readings_of(events)
        assert poller.read_plan() == {"60": "untried"}  # never asked: it never answered its blocks


COUNTS = {5000: 16, 5017: 16, 5036: 3, 5039: 3}  # count register -> highest count drawn (2 fit at 5036/5039)


@given(
    st.lists(st.integers(0, 0xFFFF), min_size=49, max_size=49),
    st.fixed_dictionaries({address: st.integers(0, top) for address, top in COUNTS.items()}),
    st.sampled_from(list(registers.Family)),
)
def test_the_merged_block_decodes_as_its_two_blocks(
    words: list[int], counts: dict[int, int], family: registers.Family
) -> None:
    start, count = registers.BLOCK_MERGED
    assert count == len(words)
    for address, value in counts.items():
        words[address - start] = value
    cells, status = (
        registers.decode_block(s, registers.block_slice(start, words, s, w), family=family)
        for s, w in registers.MERGED_PARTS
    )
    assert registers.block_slice(start, words, 5042, 7) == words[42:49]
    union = cells | status
    try:
        merged = registers.decode_block(start, words, family=family)
    except registers.BlockError:
        # A count in 5035-5041 larger than its array: why the poller decodes the parts, never the whole.
        assert counts[5036] > 2 or counts[5039] > 2
        return
    assert {key: merged[key] for key in union} == union


async def test_merged_reads_under_faults_never_give_a_wrong_value() -> None:
    sim = BankSimulator.from_config(
        with_sim(
            read_reserved=True,
            fault_rate=0.2,
            seed=11,
            fault_kinds=frozenset(REQUEST_FAULTS) | {FaultKind.GARBAGE},
            late_delay=0.5,
        )
    )
    async with poller_on_sim(sim, retries=2) as (poller, events):
        for _ in range(10):
            await poller.cycle()
        assert sum(sim.faults.counts.values()) >= 5
        published = readings_of(events)
        assert len(published) >= 20
        assert any(MERGED in r["raw"] and "5042" not in r["raw"] for r in published)
        for reading in published:
            assert_truthful(reading, sim)
