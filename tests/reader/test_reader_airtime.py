"""Airtime on the real reader and simulator: scan duty cycle, pause during reads, and nothing when off.

Every wait has a deadline and waits for a condition (a scanner state transition, an advertisement), never
a sleep standing in for one. Timing is measured in-process on the reader's own state callback.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aioesphomeapi.client import APIClient
from aioesphomeapi.model import BluetoothScannerState

from services.reader.airtime import pause_limit
from services.reader.service import Reader
from tests.gateway.support import gateway_config, running_gateway, wait_until
from tests.reader.support import reader_on_sim, with_sim

SCANNER = "renogy/bridge/reader/default/scanner"
REST = ("stopping", "idle", "starting", "running")


class Recorder:
    """Scanner state transitions and detected advertisements with monotonic times, and cycle windows."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.states: list[tuple[float, str]] = []
        # (time, scanner state, inside a cycle, while the BT-2 was searched for)
        self.adverts: list[tuple[float, str, bool, bool]] = []
        self.in_cycle = False
        self._changed = asyncio.Event()
        scanner = reader.scanner
        on_state, on_advert = scanner._on_state, scanner._on_advertisement
        assert on_advert is not None

        def state(value: str, mode: Any) -> None:
            self.states.append((time.monotonic(), value))
            self._changed.set()
            on_state(value, mode)

        def advert(device: Any, adv: Any) -> None:
            self.adverts.append((time.monotonic(), scanner.state, self.in_cycle, scanner._demand > 0))
            self._changed.set()
            on_advert(device, adv)

        scanner._on_state, scanner._on_advertisement = state, advert
        read_cycle = reader._read_cycle

        async def cycle_body() -> int:
            # The part of a cycle that talks to the BT-2: after the pause took effect, before the resume.
            self.in_cycle = True
            try:
                return await read_cycle()
            finally:
                self.in_cycle = False

        reader._read_cycle = cycle_body  # type: ignore[method-assign]

    def names(self) -> list[str]:
        return [name for _, name in self.states]

    async def wait(self, predicate: Any, within: float, what: str) -> None:
        async with asyncio.timeout(within):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()
        assert predicate(), what

    def adverts_after(self, moment: float) -> int:
        return sum(1 for advert in self.adverts if advert[0] > moment)


async def test_options_off_change_nothing(mosquitto) -> None:
    async with reader_on_sim(mosquitto.url) as (reader, _sim, probe):
        assert reader.airtime.duty is None and not reader.airtime.pause_during_reads
        rec = Recorder(reader)
        await rec.wait(lambda: len(rec.adverts) >= 5, 5.0, "advertisements")
        for _ in range(5):
            assert await reader.cycle() == 4
        await rec.wait(lambda: rec.adverts_after(time.monotonic()) > 0 or len(rec.adverts) > 20, 5.0, "more")
        assert rec.states == []  # no stop, no start: the scanner ran through every cycle
        assert reader.scanner.state == "running" and not reader.scanner.held
        assert any(advert[2] for advert in rec.adverts), "advertisements keep flowing during cycles"
        await probe.wait_for(lambda: SCANNER in probe.latest and probe.json(SCANNER)["state"] == "running")
        health = probe.json("renogy/bridge/reader/default/health")["scanner"]
        assert health["duty"] is None and health["pause_during_reads"] is False and health["pauses"] == 0


async def test_duty_cycle_follows_its_schedule(mosquitto) -> None:
    active, idle = 0.8, 0.5
    async with reader_on_sim(mosquitto.url, scan_duty=[active, idle]) as (reader, _sim, probe):
        rec = Recorder(reader)
        # Three rests and the scans in between, each transition within its deadline.
        await rec.wait(
            lambda: rec.names().count("running") >= 3, 3 * (active + idle) + 3.0, "three duty periods"
        )
        names = rec.names()
        first = names.index("stopping")
        assert names[first : first + 8] == list(REST) * 2
        times = dict[str, list[float]]()
        for at, name in rec.states[first:]:
            times.setdefault(name, []).append(at)
        rests = [start - stop for stop, start in zip(times["stopping"], times["starting"], strict=False)]
        scans = [stop - start for start, stop in zip(times["starting"], times["stopping"][1:], strict=False)]
        assert rests and scans
        assert all(abs(rest - idle) < 0.25 for rest in rests), rests
        assert all(abs(scan - active) < 0.25 for scan in scans), scans
        # Nothing was heard while resting.
        assert {advert[1] for advert in rec.adverts} <= {"running"}
        # What the gateway (and so bleak-esphome) is told: idle between the scans.
        await probe.wait_for(
            lambda: (
                "idle" in [orjson.loads(m.payload)["state"] for m in probe.messages if m.topic == SCANNER]
            ),
            what="idle published",
        )
        # Reads still work with the scanner resting part of the time.
        assert await reader.cycle() == 4


async def test_mode_request_while_resting_keeps_the_rest(mosquitto) -> None:
    async with reader_on_sim(mosquitto.url, scan_duty=[0.5, 1.5]) as (reader, _sim, probe):
        rec = Recorder(reader)
        await rec.wait(lambda: reader.scanner.state == "idle", 3.0, "first rest")
        rested_at = len(rec.states)
        probe.publish("renogy/bridge/reader/default/scanner/set", {"schema": 1, "mode": "passive"})
        await probe.wait_for(lambda: probe.json(SCANNER)["mode"] == "passive", what="mode published")
        assert probe.json(SCANNER)["state"] == "idle" and reader.scanner.state == "idle"
        await rec.wait(lambda: reader.scanner.state == "running", 3.0, "scanning again")
        assert "running" not in rec.names()[rested_at:-1]  # no scan before the rest was over
        assert reader.scanner.mode == "passive"


async def test_pause_during_reads(mosquitto) -> None:
    async with reader_on_sim(mosquitto.url, pause_during_reads=True) as (reader, _sim, probe):
        rec = Recorder(reader)
        await rec.wait(lambda: len(rec.adverts) >= 3, 5.0, "advertisements before the cycles")
        reader.scanner.bt2_sightings.clear()  # the search for the BT-2 must scan although the cycle paused
        for count in range(1, 4):
            assert await reader.cycle() == 4
            assert reader.scanner.state == "running" and not reader.scanner.held  # resumed at once
            ended = time.monotonic()
            await rec.wait(lambda ended=ended: rec.adverts_after(ended) > 0, 5.0, "adverts after the cycle")
            assert reader.airtime.pauses == count
        # Only the search for the BT-2 (first cycle) scanned during a cycle; the reads themselves never.
        heard = [advert for advert in rec.adverts if advert[2]]
        assert heard and all(advert[3] for advert in heard), "an advertisement was heard while reading"
        searched_until = max(advert[0] for advert in heard)
        assert rec.states[3][0] <= searched_until <= rec.states[4][0]  # between the search's start and stop
        names = rec.names()
        # First cycle: pause, scan for the BT-2 (it was forgotten), pause again, resume; then plain pauses.
        assert names[:4] == ["stopping", "idle", "starting", "running"]
        assert names[-8:] == list(REST) * 2
        assert reader.airtime.overruns == 0
        await probe.wait_for(
            lambda: probe.json("renogy/bridge/reader/default/health")["scanner"]["pauses"] == 3, what="health"
        )


async def test_paused_cycle_that_hangs_still_resumes_the_scanner(mosquitto) -> None:
    sim = with_sim(batteries=(48,))
    settings = {
        "pause_during_reads": True,
        "bt2_address": sim.address,
        "retries": 0,
        "request_timeout": 0.1,
        "connect_timeout": 1.0,
    }
    async with reader_on_sim(mosquitto.url, sim, **settings) as (reader, _sim, _probe):
        limit = pause_limit(reader.cfg)
        assert limit == reader.airtime.pause_limit == 1.4  # connect 1.0 + 4 requests x 0.1 s
        rec = Recorder(reader)
        hang = asyncio.Event()
        read_cycle = reader._read_cycle

        async def hung() -> int:
            rec.in_cycle = True
            await hang.wait()  # a cycle stuck somewhere no deadline reaches
            rec.in_cycle = False
            return await read_cycle()

        reader._read_cycle = hung  # type: ignore[method-assign]
        cycle = asyncio.create_task(reader.cycle())
        await rec.wait(lambda: reader.scanner.state == "idle", 2.0, "paused")
        paused_at = time.monotonic()
        await rec.wait(lambda: reader.scanner.state == "running", limit + 2.0, "resumed by the deadline")
        assert time.monotonic() - paused_at >= limit - 0.1
        assert not cycle.done() and reader.airtime.overruns == 1
        await rec.wait(lambda: any(advert[2] for advert in rec.adverts), 5.0, "adverts while it hangs")
        hang.set()
        assert await asyncio.wait_for(cycle, 5.0) == 1
        assert reader.scanner.state == "running" and not reader.scanner._holds
        # The next cycle pauses (and resumes) as usual: the late resume did not end its pause.
        reader._read_cycle = read_cycle  # type: ignore[method-assign]
        before = len(rec.states)
        assert await reader.cycle() == 1
        assert rec.names()[before:] == list(REST) and reader.airtime.overruns == 1


async def test_gateway_client_sees_the_pause(mosquitto, tmp_path) -> None:
    """bleak-esphome's view: an aioesphomeapi client of the gateway sees IDLE during a cycle, RUNNING after."""
    config = gateway_config(mosquitto.url, tmp_path)
    async with (
        reader_on_sim(mosquitto.url, pause_during_reads=True) as (reader, _sim, _probe),
        running_gateway(config) as gateway,
    ):
        client = APIClient("127.0.0.1", gateway.port, None, client_info="ha")
        await client.connect(login=True)
        try:
            states: list[Any] = []
            client.subscribe_bluetooth_scanner_state(states.append)
            client.subscribe_bluetooth_le_raw_advertisements(lambda _batch: None)
            await wait_until(
                lambda: states and states[-1].state == BluetoothScannerState.RUNNING, what="running at first"
            )
            seen = len(states)
            assert await reader.cycle() == 4
            await wait_until(
                lambda: (
                    [s.state for s in states[seen:]][-1:] == [BluetoothScannerState.RUNNING]
                    and BluetoothScannerState.IDLE in [s.state for s in states[seen:]]
                ),
                what="idle, then running again",
            )
        finally:
            await client.disconnect()
