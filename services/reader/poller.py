"""The transport-free poll loop: link, BT-2 discovery, schedule, retries, back-off and watchdog.

It knows nothing of MQTT: every battery and device reading, back-off, control result and watchdog step
comes out as an event through ``on_event``; the service (service.py) publishes them. Tests drive it on
the simulator with no broker at all. Commands (:meth:`Poller.submit`) run between two reads, never
beside one: the BT-2 carries one request at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from bleak.backends.device import BLEDevice

from services.reader import adapter as adapter_ops
from services.reader.backends import Backends
from services.reader.bluez_errors import diagnose
from services.reader.link import Bt2Link, Exchange, LinkError
from services.reader.readings import BatteryCycle, DeviceCycle, Identity
from services.reader.recovery import Action, Backoff, Watchdog
from services.reader.scanner import Scanner
from services.reader.stats import ReaderStats
from shared import registers
from shared.config import ReaderConfig, other_devices
from shared.controls import Accepted, Reason, Result, Target, confirm, failed
from shared.devices import decode, family, read_plan
from shared.modbus import FrameErrorKind, ReadRequest, ReadResponse
from shared.service import RepeatFilter
from shared.topics import bt2_id

_LOGGER = logging.getLogger("services.reader.service")  # the log lines keep the name they always had

EXIT_OK = 0
EXIT_WATCHDOG = 3
EXIT_ADAPTER = 4
MAX_ADAPTER_ERRORS = 5
MAX_PROBE_SPACING = 32
BLOCKS_EVERY_CYCLE = (registers.BLOCK_STATUS, registers.BLOCK_CELLS)
# Answers to the merged read that mean "this pack cannot": it refused the length, or stayed silent.
MERGED_REFUSED = frozenset({FrameErrorKind.EXCEPTION.value, "timeout"})


@dataclass(frozen=True, slots=True)
class ReadingEvent:
    """A battery answered this cycle (at least one good block)."""

    reading: BatteryCycle


@dataclass(frozen=True, slots=True)
class BatteryBackedOff:
    """A battery that did not answer is now probed only every ``every`` cycles."""

    slave: int
    failed_cycles: int
    every: int


@dataclass(frozen=True, slots=True)
class WatchdogEvent:
    """The watchdog escalated after ``bad_cycles`` cycles without a good reading."""

    action: Action
    bad_cycles: int


@dataclass(frozen=True, slots=True)
class CycleDone:
    """One cycle ended: how many batteries answered, and how many were asked."""

    good: int
    attempted: int
    seconds: float


@dataclass(frozen=True, slots=True)
class DeviceReadingEvent:
    """A controller, DC-DC charger or inverter answered (a cycle's read, or the one after a write)."""

    reading: DeviceCycle


@dataclass(frozen=True, slots=True)
class DeviceBackedOff:
    """A device that did not answer is now probed only every ``every`` cycles."""

    kind: str
    slave: int
    failed_cycles: int
    every: int


@dataclass(frozen=True, slots=True)
class ControlEvent:
    """A command was carried out (or failed on the bus): its result for ``.../result``."""

    target: Target
    result: Result


PollerEvent = (
    ReadingEvent
    | BatteryBackedOff
    | WatchdogEvent
    | CycleDone
    | DeviceReadingEvent
    | DeviceBackedOff
    | ControlEvent
)
BlockResult = tuple[ReadResponse, dict[str, registers.Value], float]
# Decodes a block's register words: (values, one line per value dropped); raises BlockError.
Decoder = Callable[[Sequence[int]], tuple[dict[str, registers.Value], list[str]]]
Reading = BatteryCycle | DeviceCycle
BATTERY = "battery"


@dataclass(frozen=True, slots=True)
class _Wording:
    """How the log says that a block did not decode, and what became of a value out of range."""

    refused: str
    dropped: str


BATTERY_WORDING = _Wording("decoded to an implausible value", "published as null")
DEVICE_WORDING = _Wording("did not decode", "left out of the reading")


@dataclass(slots=True)
class _MergedRead:
    """What became of one merged read: its frame, and each part's values or why they were refused."""

    response: ReadResponse
    received_at: float
    parts: dict[int, dict[str, registers.Value]] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)


class Poller:
    """State and loop of the BLE side of one reader: one BT-2 link, every battery each cycle."""

    def __init__(
        self,
        cfg: ReaderConfig,
        backends: Backends,
        scanner: Scanner,
        stop_event: asyncio.Event,
        *,
        on_event: Callable[[PollerEvent], None] | None = None,
        request_stop: Callable[[], None] | None = None,
        before_connect: Callable[[], Awaitable[None]] | None = None,
        on_exchange: Callable[[Exchange], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.backends = backends
        self.scanner = scanner
        self.stop_event = stop_event
        self.on_event = on_event
        self._request_stop = request_stop or stop_event.set
        self._before_connect = before_connect
        self.on_exchange = on_exchange
        self.stats = ReaderStats()
        self.watchdog = Watchdog(cfg.watchdog_cycles, cfg.adapter_reset and backends.client is None)
        self.backoff = Backoff(initial=1.0, maximum=max(5.0, min(60.0, cfg.poll_interval or 5.0)))
        self.identities: dict[int, Identity] = {}
        self.info_due: dict[int, float] = {}
        # How each pack takes the merged read, as this process found out: refused it (or never answered
        # it): read in blocks; answered it: read merged. A pack is asked only once it has answered its
        # blocks, so a fresh start's first values never wait for a probe (real packs refuse it: 5034).
        self.split: set[int] = set()
        self.merged: set[int] = set()
        self.answered: set[int] = set()
        # A previous run's verdicts (its retained health), per BT-2: used until this process has its own.
        self.remembered_plans: dict[str, dict[int, str]] = {}
        self._failed_cycles: dict[int, int] = {}
        self._skip_until: dict[int, int] = {}
        # Set when a read ended because the BT-2 link could not be made, not because the battery was silent.
        self._link_unavailable = False
        self.last_cycle_attempted = False
        self.link: Bt2Link | None = None
        self.bt2: str | None = None
        self.bt2_name: str | None = None
        self.family = registers.Family.BT2
        self.rssi: int | None = None
        self.adapter_errors = 0
        # The last adapter-level failure of a connect (no D-Bus socket, adapter missing); None once it works.
        self.adapter_problem: str | None = None
        self.exit_code = EXIT_OK
        # Controllers, DC-DC chargers and inverters (reader.devices), read after the batteries.
        self.devices: list[tuple[str, int]] = other_devices(cfg.devices)
        self.device_identities: dict[int, dict[str, registers.Value]] = {}
        self._commands: deque[tuple[Target, Accepted]] = deque()
        self._command_ready = asyncio.Event()
        self._log = RepeatFilter(_LOGGER)
        self._cycle_floor = 0.0
        self._floor_known = True

    def _emit(self, event: PollerEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def read_plan(self) -> dict[str, str]:
        """How each battery is read: "merged" (one 5000 x 49 read), "split" (5042 x 7 + 5000 x 34: it
        refused the merged read) or "untried" (in blocks until it answered them, then merged is tried)."""
        return {str(slave): self._plan_of(slave) for slave in self.cfg.batteries}

    def _plan_of(self, slave: int) -> str:
        if slave in self.split:
            return "split"
        if slave in self.merged:
            return "merged"
        return self.remembered_plans.get(self.bt2 or "", {}).get(slave, "untried")

    def remember_read_plan(self, bt2: object, plan: object) -> int:
        """A previous run's ``read_plan`` for BT-2 ``bt2`` (from its retained health, i.e. MQTT input):
        a pack it found refusing the merged read is not asked again, one that took it is read merged
        from the first cycle. It never overrides what this process found itself and can cost at most
        one refused read (never a wrong value). Returns how many verdicts were taken."""
        if not isinstance(bt2, str) or not isinstance(plan, dict):
            return 0
        verdicts = {
            int(key): value
            for key, value in plan.items()
            if isinstance(key, str)
            and key.isdecimal()
            and int(key) in self.cfg.batteries
            and value in ("merged", "split")
        }
        if verdicts:
            self.remembered_plans[bt2] = verdicts
        return len(verdicts)

    # --- the loop ----------------------------------------------------------------------------------

    async def run(self, cycle: Callable[[], Awaitable[int]] | None = None) -> None:
        """Cycle until stopped (or the watchdog gives up); ``cycle`` wraps :meth:`cycle` (air time, health)."""
        cycle = cycle or self.cycle
        loop = asyncio.get_running_loop()
        next_start = loop.time()
        while not self.stop_event.is_set():
            good = await cycle()
            # A cycle in which every battery was skipped (backed off) says nothing about the link.
            action = self.watchdog.cycle_done(good) if self.last_cycle_attempted else Action.NONE
            if action is not Action.NONE and not await self.escalate(action):
                return
            if not self.cfg.keep_connected and self.link is not None:
                await self.link.disconnect()
            next_start = (
                max(next_start + self.cfg.poll_interval, loop.time())
                if self.cfg.poll_interval
                else loop.time()
            )
            await self._idle_until(next_start)

    async def _idle_until(self, deadline: float) -> None:
        """Wait for the next cycle (loop time ``deadline``), carrying out commands as they come."""
        loop = asyncio.get_running_loop()
        while not self.stop_event.is_set():
            if self._commands:
                await self.run_commands()
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._command_ready.clear()
            waits = [
                asyncio.ensure_future(self.stop_event.wait()),
                asyncio.ensure_future(self._command_ready.wait()),
            ]
            try:
                await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
                await asyncio.gather(*waits, return_exceptions=True)

    async def escalate(self, action: Action) -> bool:
        """Apply a watchdog action; False when the process should exit."""
        bad = self.watchdog.bad_cycles
        self._emit(WatchdogEvent(action, bad))
        if action is Action.RECONNECT:
            _LOGGER.warning("no good reading for %d cycles; reconnecting to the BT-2", bad)
            if self.link is not None:
                await self.link.disconnect()
        elif action is Action.RESET_ADAPTER:
            _LOGGER.warning("no good reading for %d cycles; power-cycling adapter %s", bad, self.cfg.adapter)
            if self.link is not None:
                await self.link.disconnect()
            await adapter_ops.power_cycle(self.cfg.adapter)
            await self.scanner.restart()
        elif action is Action.EXIT:
            _LOGGER.error(
                "no good reading for %d cycles despite reconnecting and resetting the adapter; "
                "exiting so the supervisor restarts the reader",
                bad,
            )
            self.exit_code = EXIT_WATCHDOG
            return False
        return True

    # --- one cycle ---------------------------------------------------------------------------------

    def _units(self) -> list[tuple[str, int]]:
        """What a cycle reads, in order: the batteries, then the other devices (kind, slave id)."""
        return [(BATTERY, slave) for slave in self.cfg.batteries] + self.devices

    async def cycle(self) -> int:
        """Read every battery and device once; returns how many gave at least one good block.

        The every-cycle values of all of them come first, each published as soon as it is in; then, for
        those whose info is due (the first cycle, then every reader.info_interval), the info blocks, each
        published with a second reading. That one is the same sample (its time, monotonic time and
        values are the first's, plus the identity and alarm words), so it counts no energy twice.
        """
        started = time.monotonic()
        self._cycle_floor, self._floor_known = 0.0, True
        good = attempted = 0
        linked = await self.ensure_link()
        info: list[Reading] = []
        if linked:
            for kind, slave in self._units():
                if self.stop_event.is_set():
                    break
                if self.stats.cycles < self._skip_until.get(slave, 0):
                    continue
                attempted += 1
                self._link_unavailable = False
                reading = await self._read_values(kind, slave)
                if reading.any_good:
                    good += 1
                    self._failed_cycles.pop(slave, None)
                    self._emit_reading(reading)
                    if self._wants_info(reading):
                        info.append(reading)
                elif not self._link_unavailable:
                    # Only a unit that was asked and did not answer; a link that could not be made says
                    # nothing about it (backing it off then delayed recovery by a cycle).
                    self._back_off(kind, slave)
                await self.run_commands()
            for reading in info:
                if self.stop_event.is_set():
                    break
                await self._read_info(reading)
                self._emit_reading(reading)
                await self.run_commands()
        self.last_cycle_attempted = bool(attempted) or not linked
        self.stats.cycles += 1
        self.stats.last_cycle_s = time.monotonic() - started
        self.stats.last_cycle_floor_s = self._cycle_floor if self._floor_known and self._cycle_floor else None
        self._emit(CycleDone(good, attempted, self.stats.last_cycle_s))
        return good

    def _emit_reading(self, reading: Reading) -> None:
        # A copy: the info blocks are added to this reading later in the cycle.
        if isinstance(reading, BatteryCycle):
            self._emit(ReadingEvent(reading.copy()))
        else:
            self._emit(DeviceReadingEvent(reading.copy()))

    def _back_off(self, kind: str, slave: int) -> None:
        """Probe a unit that stopped answering less and less often (1, 2, 4 ... 32 cycles apart); slave
        ids are unique on a bus, so batteries and devices share the counters."""
        failed = self._failed_cycles[slave] = self._failed_cycles.get(slave, 0) + 1
        skip = min(2 ** (failed - 1), MAX_PROBE_SPACING) - 1
        self._skip_until[slave] = self.stats.cycles + 1 + skip
        if skip:
            self._emit(
                BatteryBackedOff(slave, failed, skip + 1)
                if kind == BATTERY
                else DeviceBackedOff(kind, slave, failed, skip + 1)
            )
        if skip and (failed == 2 or skip == MAX_PROBE_SPACING - 1):
            _LOGGER.warning(
                "%s %d has not answered for %d cycles; probing it every %d cycles (is slave id %d on this "
                "BT-2's bus? setting %s)",
                kind,
                slave,
                failed,
                skip + 1,
                slave,
                "reader.batteries" if kind == BATTERY else "reader.devices",
            )

    async def _read_values(self, kind: str, slave: int) -> Reading:
        """A unit's every-cycle blocks (a battery's merged read where its pack takes it)."""
        assert self.bt2 is not None
        if kind == BATTERY:
            return await self._read_battery_values(slave)
        reading = DeviceCycle(family(kind), self.bt2, slave)
        await self._read_device_blocks(reading, "cycle")
        return reading

    def _info_due(self, slave: int) -> bool:
        return time.monotonic() >= self.info_due.get(slave, 0.0)

    def _wants_info(self, reading: Reading) -> bool:
        """Info is due, and the unit answered this cycle (a battery: its status block)."""
        if not self._info_due(reading.slave_id):
            return False
        if isinstance(reading, BatteryCycle):
            return registers.BLOCK_STATUS[0] not in reading.failed
        return any(block.cadence == "info" for block in reading.family.blocks)

    async def _read_info(self, reading: Reading) -> None:
        """Add a unit's info blocks to its reading of this cycle."""
        if isinstance(reading, BatteryCycle):
            for start, words in registers.BLOCKS_INFO:
                await self._add_battery_block(reading, start, words)
        else:
            await self._read_device_blocks(reading, "info")

    # --- batteries ---------------------------------------------------------------------------------

    async def _read_battery_values(self, slave: int) -> BatteryCycle:
        assert self.bt2 is not None
        reading = BatteryCycle(self.bt2, slave)
        plan = self._plan_of(slave)
        if plan == "merged" or (plan == "untried" and slave in self.answered):
            merged = await self._read_merged(slave)
            if merged is not None:
                if merged.parts:
                    start = registers.BLOCK_MERGED[0]
                    reading.add_merged(start, merged.parts, merged.response.frame, merged.received_at)
                for start in merged.refused:
                    reading.fail_block(start)
                return reading
            if self._link_unavailable:
                return reading
        for start, words in BLOCKS_EVERY_CYCLE:
            if await self._add_battery_block(reading, start, words):
                if start == registers.BLOCK_STATUS[0]:
                    self.answered.add(slave)
            elif start == registers.BLOCK_STATUS[0]:
                break  # silent or unreachable: do not spend the cycle's timeouts on its other blocks
        return reading

    async def _add_battery_block(self, reading: BatteryCycle, start: int, words: int) -> bool:
        slave = reading.slave_id
        result = await self._read_block(
            ReadRequest(slave, start, words),
            f"battery {slave}",
            lambda values: registers.decode_screened(start, values, family=self._family()),
            BATTERY_WORDING,
        )
        if result is None:
            reading.fail_block(start)
            return False
        response, values, received_at = result
        reading.add_block(start, values, response.frame, received_at)
        if start == registers.BLOCK_INFO[0]:
            self.identities.setdefault(slave, Identity()).update(values)
            self.info_due[slave] = time.monotonic() + self.cfg.info_interval
        return True

    async def _read_merged(self, slave: int) -> _MergedRead | None:
        """One read of 5000 x 49 for the cells and status blocks; None: read them in blocks instead.

        A pack that answers it with a Modbus exception, or not at all, is read in blocks from then on
        (that pack only: the others of the cycle still try theirs). Each part is decoded and screened on
        its own, exactly as its own block would be, so a merged read can never publish a value the split
        reads would not.
        """
        start, words = registers.BLOCK_MERGED
        attempts = 1 + self.cfg.retries
        last: _MergedRead | None = None
        for attempt in range(1, attempts + 1):
            if not await self._linked():
                return last
            assert self.link is not None
            try:
                response = await self.link.request(ReadRequest(slave, start, words))
            except LinkError as exc:
                if exc.reconnect:
                    await self.link.disconnect()
                if exc.kind in MERGED_REFUSED:
                    self.split.add(slave)
                    self.merged.discard(slave)
                    _LOGGER.info(
                        "battery %d: merged read %dx%d not answered (%s: %s); reading it in blocks from now on",
                        slave,
                        start,
                        words,
                        exc.kind,
                        exc,
                    )
                    return None
                # Not the pack's answer (the link garbled it): the blocks this cycle, merged again the next.
                self.stats.request_failed(slave, exc.kind)
                self._log.failure(
                    f"{slave}",
                    "battery %s: read %sx%s failed (%s: %s); reading its blocks this cycle",
                    slave,
                    start,
                    words,
                    exc.kind,
                    exc,
                )
                return None
            last = self._decode_merged(slave, response, time.time())
            self.merged.add(slave)  # the pack takes the merged read (whatever its values say)
            self.stats.request_ok(slave, last.received_at)
            self._add_floor(words)
            if not last.refused:
                self._log.success(f"{slave}")
                return last
            self._request_failed(
                slave,
                "implausible",
                f"battery {slave}: read {start}x{words} decoded to an implausible value "
                f"({'; '.join(last.refused.values())}); not published",
                attempt,
                attempts,
            )
        return last

    def _decode_merged(self, slave: int, response: ReadResponse, received_at: float) -> _MergedRead:
        out = _MergedRead(response, received_at)
        start = registers.BLOCK_MERGED[0]
        for part_start, part_words in registers.MERGED_PARTS:
            part = registers.block_slice(start, response.registers, part_start, part_words)
            try:
                values, dropped = registers.decode_screened(part_start, part, family=self._family())
            except registers.BlockError as exc:
                out.refused[part_start] = f"{part_start}x{part_words}: {exc}"
                continue
            out.parts[part_start] = values
            part_request = ReadRequest(slave, part_start, part_words)
            self._log_dropped(f"battery {slave}", part_request, dropped, BATTERY_WORDING.dropped)
        return out

    # --- other devices ---------------------------------------------------------------------------

    async def read_device(self, kind: str, slave: int) -> DeviceCycle:
        """One device's blocks of this cycle (its family's read plan), decoded and screened: the
        read after a write, every-cycle and (when due) info blocks in one reading."""
        reading = await self._read_values(kind, slave)
        assert isinstance(reading, DeviceCycle)
        if reading.any_good and self._wants_info(reading):
            await self._read_info(reading)
        return reading

    async def _read_device_blocks(self, reading: DeviceCycle, cadence: str) -> None:
        """Add a device's blocks of one cadence ("cycle" or "info") to its reading."""
        fam, slave = reading.family, reading.slave_id
        for block in read_plan(fam, cadence == "info"):
            if block.cadence != cadence:
                continue
            result = await self._read_block(
                ReadRequest(slave, block.start, block.words),
                f"{fam.kind} {slave}",
                functools.partial(decode, fam, block.start),
                DEVICE_WORDING,
            )
            if result is None:
                reading.fail_block(block.start)
                if not reading.any_good:
                    break  # silent or unreachable: do not spend the cycle's timeouts on its other blocks
                continue
            _response, values, received_at = result
            reading.add_block(values, received_at)
            if cadence == "info":
                identity = self.device_identities.setdefault(slave, {})
                identity.update({k: v for k, v in values.items() if k in fam.identity})
                self.info_due[slave] = time.monotonic() + self.cfg.info_interval
        reading.identity = dict(self.device_identities.get(slave, {}))

    # --- one request ---------------------------------------------------------------------------------

    async def _linked(self) -> bool:
        """The link is up, or was made again; False (and the cycle's reads end) when it cannot be."""
        if (self.link is None or not self.link.connected) and not await self.ensure_link():
            self._link_unavailable = True
            return False
        return True

    async def _read_block(
        self, request: ReadRequest, label: str, decode_block: Decoder, wording: _Wording
    ) -> BlockResult | None:
        """One block with retries: a link error reconnects where the session cannot be trusted, a block
        that does not decode is asked again; None when every attempt failed (or the link is down)."""
        slave, start, words = request.slave, request.start, request.count
        attempts = 1 + self.cfg.retries
        for attempt in range(1, attempts + 1):
            if not await self._linked():
                return None
            assert self.link is not None
            try:
                response = await self.link.request(request)
                received_at = time.time()
                values, dropped = decode_block(response.registers)
            except LinkError as exc:
                action = "; reconnecting" if exc.reconnect else ""
                self._request_failed(
                    slave,
                    exc.kind,
                    f"{label}: read {start}x{words} failed ({exc.kind}: {exc}){action}",
                    attempt,
                    attempts,
                )
                if exc.reconnect:
                    await self.link.disconnect()
                continue
            except registers.BlockError as exc:
                self._request_failed(
                    slave,
                    "implausible",
                    f"{label}: read {start}x{words} {wording.refused} ({exc}); not published",
                    attempt,
                    attempts,
                )
                continue
            self.stats.request_ok(slave, received_at)
            self._log.success(f"{slave}")
            self._log_dropped(label, request, dropped, wording.dropped)
            self._add_floor(words)
            return response, values, received_at
        return None

    def _log_dropped(self, label: str, request: ReadRequest, dropped: list[str], note: str) -> None:
        """A value outside its range: ``note`` says what became of it, the rest of the block is published
        as read (logged once per streak)."""
        start, words = request.start, request.count
        key = f"{request.slave}:sensors:{start}"
        if not dropped:
            self._log.success(key)
            return
        self._log.failure(
            key,
            "%s: read %sx%s: %s; %s, the other values as read",
            label,
            start,
            words,
            "; ".join(dropped),
            note,
        )

    # --- controls ----------------------------------------------------------------------------------

    @property
    def pending_commands(self) -> int:
        return len(self._commands)

    def submit(self, target: Target, accepted: Accepted) -> None:
        """Queue a checked command; it runs after the read in progress (or at once when idle)."""
        self._commands.append((target, accepted))
        self._command_ready.set()

    async def run_commands(self) -> None:
        """Carry out the queued commands; after each write, read the device again so its state follows."""
        while self._commands and not self.stop_event.is_set():
            target, accepted = self._commands.popleft()
            result = await self._execute(target, accepted)
            self._emit(ControlEvent(target, result))
            if result.reason is Reason.STALE or self.bt2 is None:
                continue  # nothing was written
            kind, slave = target[1], target[2]
            reading = await self.read_device(kind, slave)
            if reading.any_good:
                self._emit(DeviceReadingEvent(reading))

    async def _execute(self, target: Target, accepted: Accepted) -> Result:
        """Write, then read back: the result is what the device reports, never the request."""
        _bt2, kind, slave = target
        write = accepted.write
        where = f"{kind} {slave}"
        now = time.time()
        if accepted.command.deadline <= now:
            return Result(
                Reason.STALE,
                f"deadline passed {now - accepted.command.deadline:.1f} s ago while the bus was busy; "
                f"{where} not written",
                accepted.command.id,
                accepted.command.key,
            )
        if (self.link is None or not self.link.connected) and not await self.ensure_link():
            return failed(accepted, Reason.NO_REPLY, f"the BT-2 link is down; {where} not written")
        assert self.link is not None
        try:
            await self.link.write(write)
        except LinkError as exc:
            self.stats.request_failed(slave, exc.kind)
            if exc.reconnect:
                await self.link.disconnect()
            if exc.kind == FrameErrorKind.EXCEPTION.value:
                return failed(
                    accepted,
                    Reason.DEVICE_REFUSED,
                    f"{where} refused the write of {write.value} to register 0x{write.register:04X}: {exc}",
                )
            return failed(
                accepted,
                Reason.NO_REPLY,
                f"no echo of the write to {where} ({exc.kind}: {exc}); state unknown",
            )
        try:
            response = await self.link.request(accepted.readback)
        except LinkError as exc:
            self.stats.request_failed(slave, exc.kind)
            if exc.reconnect:
                await self.link.disconnect()
            return failed(
                accepted,
                Reason.NO_REPLY,
                f"{where} took the write, but its read-back failed ({exc.kind}: {exc})",
            )
        self.stats.request_ok(slave, time.time())
        return confirm(accepted, response.registers)

    def _request_failed(self, slave: int, kind: str, message: str, attempt: int, attempts: int) -> None:
        self.stats.request_failed(slave, kind)
        suffix = (
            f"; retrying ({attempt + 1} of {attempts})" if attempt < attempts else "; giving up this cycle"
        )
        self._log.failure(f"{slave}", "%s%s", message, suffix)

    def _add_floor(self, words: int) -> None:
        floor = self.link.read_floor(words) if self.link is not None else None
        if floor is None:
            self._floor_known = False
        else:
            self._cycle_floor += floor

    def _family(self) -> registers.Family:
        scale = self.cfg.current_scale
        if scale == "0.01":  # an RNGPRO pack is 0.01 A too, and keeps its family's alarm rule
            return registers.Family.RNGPRO if self.family is registers.Family.RNGPRO else registers.Family.BT2
        if scale == "0.1":
            return registers.Family.PRO
        return self.family

    # --- connection --------------------------------------------------------------------------------

    async def ensure_link(self) -> bool:
        if self.link is not None and self.link.connected:
            return True
        delay = self.backoff.next_delay()
        if delay:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), delay)
            if self.stop_event.is_set():
                return False
        try:
            device = await self._find_device()
            if device is None:
                return False
            if self.link is not None:
                await self.link.disconnect()
            if self._before_connect is not None:
                await self._before_connect()  # a pending proxied connect must not hold up the BT-2's
            self.link = Bt2Link(
                device,
                backend=self.backends.client,
                connect_timeout=self.cfg.connect_timeout,
                request_timeout=self.cfg.request_timeout,
                on_exchange=self.on_exchange,
            )
            await self.link.connect()
        except LinkError as exc:
            self.stats.request_failed(None, exc.kind)
            self._log.failure(
                "connect",
                "cannot connect to the BT-2: %s (next attempt in %.0f s at most)",
                exc,
                self.backoff.maximum,
            )
            return False
        except Exception as exc:
            self._connect_raised(exc)
            return False
        self.adapter_errors = 0
        self.adapter_problem = None
        self.backoff.reset()
        self._log.success("connect")
        return True

    def _connect_raised(self, exc: Exception) -> None:
        diagnosis = diagnose(exc, self.cfg.adapter)
        self.stats.request_failed(None, diagnosis.kind)
        if diagnosis.kind != "adapter_error":
            self._log.failure("connect", "cannot connect to the BT-2: %s", diagnosis.message)
            return
        self.adapter_errors += 1
        self.adapter_problem = diagnosis.message
        _LOGGER.error("Bluetooth adapter problem: %s", diagnosis.message)
        if diagnosis.fatal or self.adapter_errors >= MAX_ADAPTER_ERRORS:
            _LOGGER.error("exiting so the supervisor restarts the reader with a fresh D-Bus connection")
            self.exit_code = EXIT_ADAPTER
            self._request_stop()

    async def _find_device(self) -> BLEDevice | str | None:
        cfg = self.cfg
        problem = self.scanner.problem
        if not cfg.bt2_address and self.scanner.state == "failed" and problem is not None:
            # Waiting for an advertisement would only end in blaming the BT-2 for what the adapter did.
            self.stats.request_failed(None, problem.kind)
            self._log.failure(
                "scan",
                "cannot look for the BT-2: the BLE scanner did not start (%s); set reader.bt2_address "
                "to connect without scanning",
                problem.message,
            )
            return None
        sighting = await self.scanner.find_bt2(
            address=cfg.bt2_address,
            name=cfg.bt2_name,
            timeout=cfg.scan_timeout if not cfg.bt2_address else 0.0,
        )
        if sighting is not None:
            self.rssi = sighting.rssi
            self.bt2_name = sighting.name
            self.family = sighting.family
            self._set_bt2(sighting.device.address)
            return sighting.device
        if cfg.bt2_address:
            # BlueZ resolves a known address itself; a custom backend may do the same.
            self._set_bt2(cfg.bt2_address)
            return cfg.bt2_address
        self.stats.request_failed(None, "connect_failed")
        self._log.failure(
            "scan",
            "no BT-2 found in %.0f s of scanning (looking for %s): is it powered, in range "
            "and not held by the Renogy app?",
            cfg.scan_timeout,
            cfg.bt2_name or "BT-TH-*",
        )
        return None

    def _set_bt2(self, address: str) -> None:
        new_id = bt2_id(address)
        if self.bt2 is not None and new_id != self.bt2:
            _LOGGER.warning("now reading BT-2 %s (was %s)", address, self.bt2)
            # Another bus: its packs may take the merged read (or not).
            self.split.clear()
            self.merged.clear()
            self.answered.clear()
        self.bt2 = new_id
