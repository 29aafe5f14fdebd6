"""Sans-IO core of a BT-2 with its RS485 bank: a written request frame in, timed notifications out.

:meth:`BankSimulator.handle_write` turns one write to characteristic ffd1 into the actions a real
BT-2 would produce: notifications on fff1 after the modelled delays, or a link drop. The asyncio
shell (``backend.py``) only schedules them and reports back which were delivered, so the truth is
recorded for what a client actually received.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from shared.devices import decode
from shared.modbus import (
    BROADCAST_SLAVE,
    READ_HOLDING_REGISTERS,
    WRITE_SINGLE_REGISTER,
    ReadRequest,
    WriteRequest,
    crc_ok,
    encode_exception_response,
    encode_read_response,
    encode_write_response,
    with_crc,
)
from shared.registers import REGISTER_MAP, Value, block_is_mapped, decode_block, encode_block
from shared.timing import TimingModel, notification_count

from .config import SimConfig
from .faults import Fault, FaultInjector, FaultKind
from .models import ControllerModel, DccModel, DeviceModel, InverterModel, WriteRefused
from .models import read as model_read
from .models import write as model_write
from .physics import NOMINAL_CELL_VOLTS, BankPhysics, PackSpec, default_packs
from .truth import FaultRecord, TruthRecord, TruthRecorder

_LOGGER = logging.getLogger(__name__)

EXC_ILLEGAL_FUNCTION = 0x01
EXC_ILLEGAL_ADDRESS = 0x02
EXC_ILLEGAL_VALUE = 0x03
EXC_DEVICE_FAILURE = 0x04
COLLISION = "collision"

Clock = Callable[[], float]


def default_clock() -> float:
    """The running event loop's time, else time.monotonic (the same clock for the default loop)."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


@dataclass(frozen=True, slots=True)
class Notification:
    """Send ``data`` on fff1 ``delay`` seconds after the write.

    ``truth`` is set on the last fragment of a genuine reply: it becomes a truth record once the
    fragment has been delivered (see :meth:`BankSimulator.delivered`).
    """

    delay: float
    data: bytes
    truth: TruthRecord | None = None


@dataclass(frozen=True, slots=True)
class LinkDrop:
    """The BLE link drops ``delay`` seconds after the write."""

    delay: float


Action = Notification | LinkDrop


@dataclass(frozen=True, slots=True)
class _Reply:
    """What the bus carried back for one request, before BLE fragmentation and faults."""

    frame: bytes
    slave: int
    truth: TruthRecord | None
    collided: bool = False


@dataclass(frozen=True, slots=True)
class _Exchange:
    """One request being answered: the frame written, the bus reply and when it is served."""

    request: bytes
    reply: _Reply
    words: int
    wait: float
    sim_time: float


class BankSimulator:
    """A BT-2 bridging BLE to an RS485 bus of Renogy packs, with physics, faults and a truth record."""

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        clock: Clock | None = None,
        packs: Sequence[PackSpec] | None = None,
    ) -> None:
        self.config = cfg = config or SimConfig()
        self.clock: Clock = clock or default_clock
        self.packs: dict[int, PackSpec] = {
            p.slave: p for p in (packs or default_packs(cfg.batteries, distinct_serials=cfg.distinct_serials))
        }
        self.physics = BankPhysics(
            tuple(self.packs.values()), seed=cfg.seed, start=cfg.sim_start, step=cfg.physics_step
        )
        self.devices: dict[int, DeviceModel] = device_models(cfg, self.physics)
        self.faults = FaultInjector(cfg.fault_rate, cfg.fault_kinds, cfg.seed)
        self.truth = TruthRecorder(
            enabled=cfg.record_truth, max_records=cfg.max_truth_records, log_path=cfg.truth_log
        )
        self._speed = cfg.speed
        self.latency_scale = cfg.latency_scale
        self.mtu = cfg.mtu
        self.late_delay = cfg.late_delay
        self.timing: TimingModel = cfg.timing
        self.central: object | None = None  # the client holding the link; a BT-2 takes one at a time
        self.requests = 0
        self._clock_at_start = self.clock()
        self._sim_at_start = cfg.sim_start
        self._bus_free_at = self._clock_at_start

    @classmethod
    def from_config(cls, config: SimConfig, *, clock: Clock | None = None) -> BankSimulator:
        """A simulator built from ``config``."""
        return cls(config, clock=clock)

    @property
    def address(self) -> str:
        """The BT-2's MAC address (upper case)."""
        return self.config.address

    @property
    def local_name(self) -> str:
        """The advertised name, ``BT-TH-`` + last four MAC bytes."""
        return self.config.local_name

    @property
    def slaves(self) -> tuple[int, ...]:
        """Slave ids of the batteries on the bus (:attr:`devices` holds the other devices)."""
        return tuple(self.packs)

    @property
    def speed(self) -> float:
        """How many simulated seconds pass per clock second."""
        return self._speed

    @speed.setter
    def speed(self, speed: float) -> None:
        if speed < 0:
            raise ValueError("speed must be >= 0")
        now = self.clock()
        self._sim_at_start, self._clock_at_start = self.sim_time(now), now
        self._speed = speed

    def sim_time(self, now: float | None = None) -> float:
        """Simulated seconds (since midnight of day 0) at clock time ``now``."""
        now = self.clock() if now is None else now
        return self._sim_at_start + (now - self._clock_at_start) * self._speed

    def read_floor(self, words: int) -> float:
        """Modelled write-to-last-notification time of a read of ``words`` registers (times latency_scale)."""
        count = notification_count(5 + 2 * words, self.mtu)
        return self.timing.read_floor(words, count) * self.latency_scale

    def values(self, slave: int, now: float | None = None) -> dict[str, Value]:
        """The true register field values of ``slave`` at clock time ``now`` (unquantised)."""
        return self.physics.values(slave, self.sim_time(now))

    def registers(self, slave: int, start: int, count: int, now: float | None = None) -> list[int]:
        """The register words a read of ``count`` registers at ``start`` returns (unmapped ones read 0)."""
        return self._registers(slave, start, count, self.sim_time(now))

    def close(self) -> None:
        """Release files (the truth log)."""
        self.truth.close()

    def link_lost(self, now: float | None = None) -> None:
        """The BLE link is gone: the bridge forgets queued requests."""
        now = self.clock() if now is None else now
        self._bus_free_at = min(self._bus_free_at, now)

    def next_connect_fault(self) -> Fault | None:
        """Draw (and log) the fault, if any, for a connection attempt starting now."""
        fault = self.faults.next_connect_fault()
        if fault is not None:
            record = FaultRecord(str(fault.kind), time.time(), self.sim_time(), detail=fault.variant)
            self.truth.record_fault(record)
        return fault

    # -- the request path ---------------------------------------------------------------------

    def handle_write(self, frame: bytes | bytearray, now: float | None = None) -> list[Action]:
        """Plan what the BT-2 sends back for one frame written to ffd1 at clock time ``now``."""
        now = self.clock() if now is None else now
        frame = bytes(frame)
        self.requests += 1
        wait = max(0.0, self._bus_free_at - now)
        served_at = now + wait
        sim_time = self.sim_time(served_at)
        reply = self._bus_reply(frame, sim_time)
        if reply is None:
            self._bus_free_at = served_at
            return []
        words = (len(reply.frame) - 5) // 2
        fault = self.faults.next_request_fault()
        if fault is None or fault.kind is not FaultKind.DROPPED:
            # Half duplex: the next request waits until this reply has been forwarded.
            count = notification_count(len(reply.frame), self.mtu)
            self._bus_free_at = served_at + self._scaled(self.timing.read_floor(words, count))
        else:
            self._bus_free_at = served_at
        return self._deliveries(_Exchange(frame, reply, words, wait, sim_time), fault)

    def delivered(self, action: Action, wall_time: float | None = None) -> None:
        """The shell delivered ``action`` to the client: record its truth, if it carries any."""
        if isinstance(action, Notification) and action.truth is not None:
            self.truth.record(
                replace(action.truth, wall_time=time.time() if wall_time is None else wall_time)
            )

    def transact(self, frame: bytes | bytearray, now: float | None = None) -> list[bytes]:
        """Synchronous exchange for tests and benchmarks: the notifications up to any link drop, in order."""
        out: list[bytes] = []
        for action in sorted(self.handle_write(frame, now), key=lambda a: a.delay):
            if isinstance(action, LinkDrop):
                self.link_lost(now)
                break
            out.append(action.data)
            self.delivered(action)
        return out

    def _scaled(self, seconds: float) -> float:
        return seconds * self.latency_scale

    def _registers(self, slave: int, start: int, count: int, sim_time: float) -> list[int]:
        values = self.physics.values(slave, sim_time)
        image: dict[int, int] = {}
        end = start + count
        for field in REGISTER_MAP:
            if field.end > start and field.address < end:
                # Encode whole fields so a read that splits a 32-bit value still gets its half.
                for offset, word in enumerate(encode_block(field.address, field.words, values)):
                    image[field.address + offset] = word
        return [image.get(address, 0) for address in range(start, end)]

    def _bus_reply(self, frame: bytes, sim_time: float) -> _Reply | None:
        """What the addressed batteries put on the RS485 bus, or None when the bus stays silent."""
        if len(frame) < 4 or not crc_ok(frame):
            _LOGGER.debug("ignoring a frame with a bad CRC: %s", frame.hex())
            return None
        slave, function = frame[0], frame[1]
        present = [*self.packs, *self.devices]
        responders = present if slave == BROADCAST_SLAVE else [slave] if slave in present else []
        if not responders:
            return None
        answers = (
            self._device_reply(self.devices[responder], frame, function, sim_time)
            if responder in self.devices
            else self._slave_reply(responder, frame, function, sim_time)
            for responder in responders
        )
        replies = [r for r in answers if r is not None]
        if not replies:
            return None
        if len(replies) == 1:
            return replies[0]
        return _Reply(_collide([r.frame for r in replies]), slave, None, collided=True)

    def _slave_reply(self, slave: int, frame: bytes, function: int, sim_time: float) -> _Reply | None:
        """One battery's answer to a CRC-valid frame."""
        if function != READ_HOLDING_REGISTERS:
            return self._exception(slave, function, EXC_ILLEGAL_FUNCTION, frame, sim_time)
        if len(frame) != 8:
            return None  # not a read request a slave can parse
        try:
            request = ReadRequest.decode(frame)
        except ValueError:
            return self._exception(slave, function, EXC_ILLEGAL_VALUE, frame, sim_time)
        if request.count > self.config.read_limit(slave):
            return self._exception(slave, function, EXC_ILLEGAL_VALUE, frame, sim_time)
        if not block_is_mapped(request.start, request.count, reserved_ok=self.config.read_reserved):
            return self._exception(slave, function, EXC_ILLEGAL_ADDRESS, frame, sim_time)
        registers = self._registers(slave, request.start, request.count, sim_time)
        reply = encode_read_response(slave, registers)
        truth = TruthRecord(
            wall_time=0.0,
            sim_time=sim_time,
            slave=slave,
            start=request.start,
            words=request.count,
            frame=reply,
            values=decode_block(request.start, registers),
            request_slave=request.slave,
        )
        return _Reply(reply, slave, truth)

    def _device_reply(
        self, model: DeviceModel, frame: bytes, function: int, sim_time: float
    ) -> _Reply | None:
        """A controller's, DC-DC charger's or inverter's answer to a CRC-valid frame (read or write)."""
        slave = model.slave
        if function not in (READ_HOLDING_REGISTERS, WRITE_SINGLE_REGISTER):
            return self._exception(slave, function, EXC_ILLEGAL_FUNCTION, frame, sim_time)
        if len(frame) != 8:
            return None
        if function == WRITE_SINGLE_REGISTER:
            write = WriteRequest.decode(frame)
            echoed = model_write(model, write.register, write.value, sim_time)
            if isinstance(echoed, WriteRefused):
                return self._exception(slave, function, echoed.code, frame, sim_time)
            reply = encode_write_response(slave, write.register, echoed)
            truth = TruthRecord(0.0, sim_time, slave, write.register, 1, reply, {}, write.slave)
            return _Reply(reply, slave, truth)
        try:
            request = ReadRequest.decode(frame)
        except ValueError:
            return self._exception(slave, function, EXC_ILLEGAL_VALUE, frame, sim_time)
        answer = model_read(model, request.start, request.count, sim_time)
        if isinstance(answer, int):
            return self._exception(slave, function, answer, frame, sim_time)
        reply = encode_read_response(slave, answer)
        values, _dropped = decode(model.family, request.start, answer)
        truth = TruthRecord(0.0, sim_time, slave, request.start, request.count, reply, values, request.slave)
        return _Reply(reply, slave, truth)

    def _exception(self, slave: int, function: int, code: int, frame: bytes, sim_time: float) -> _Reply:
        reply = encode_exception_response(slave, function, code)
        start = int.from_bytes(frame[2:4], "big")
        words = int.from_bytes(frame[4:6], "big") if len(frame) >= 6 else 0
        truth = TruthRecord(0.0, sim_time, slave, start, words, reply, {}, frame[0], code)
        return _Reply(reply, slave, truth)

    # -- delivery over BLE, with faults ---------------------------------------------------------

    def _fragments(self, data: bytes) -> list[bytes]:
        size = self.mtu - 3
        return [data[i : i + size] for i in range(0, len(data), size)] or [b""]

    def _schedule(self, fragments: list[bytes], words: int, wait: float, first_index: int = 0) -> list[float]:
        """Delays of each fragment: reply start, then up to four notifications per connection interval."""
        timing = self.timing
        start = timing.reply_start(words)
        per_interval = timing.notifications_per_interval
        return [
            wait + self._scaled(start + ((first_index + i) // per_interval + 1) * timing.connection_interval)
            for i in range(len(fragments))
        ]

    def _notify(self, data: bytes, words: int, wait: float, truth: TruthRecord | None = None) -> list[Action]:
        fragments = self._fragments(data)
        delays = self._schedule(fragments, words, wait)
        actions: list[Action] = [Notification(d, f) for d, f in zip(delays, fragments, strict=True)]
        if truth is not None:
            actions[-1] = Notification(delays[-1], fragments[-1], truth)
        return actions

    def _deliveries(self, exchange: _Exchange, fault: Fault | None) -> list[Action]:
        reply, words, wait = exchange.reply, exchange.words, exchange.wait
        frame = reply.frame
        if reply.collided:
            self._log_fault(COLLISION, exchange, frame, "replies of several batteries collided")
        if fault is None:
            return self._notify(frame, words, wait, reply.truth)
        kind = fault.kind
        rng = self.faults.rng
        if kind is FaultKind.DROPPED:
            self._log_fault(kind, exchange, None, "reply withheld")
            return []
        if kind is FaultKind.BAD_CRC:
            bad = frame[:-2] + bytes((frame[-2] ^ 0xA5, frame[-1] ^ 0x5A))
            self._log_fault(kind, exchange, bad, "CRC corrupted")
            return self._notify(bad, words, wait)
        if kind is FaultKind.TRUNCATED:
            part = frame[: rng.randint(1, len(frame) - 1)]
            self._log_fault(kind, exchange, part, f"{len(part)} of {len(frame)} bytes sent")
            return self._notify(part, words, wait)
        if kind is FaultKind.DISCONNECT:
            part = frame[: rng.randint(1, len(frame) - 1)]
            self._log_fault(kind, exchange, part, f"link dropped after {len(part)} of {len(frame)} bytes")
            partial = self._notify(part, words, wait)
            return [*partial, LinkDrop(partial[-1].delay)]
        if kind is FaultKind.LATE:
            self._log_fault(kind, exchange, frame, f"reply held back {self.late_delay} s")
            # Absolute and unscaled: a late reply must outlive the reader's deadline even in fast tests.
            return [Notification(wait + self.late_delay, f) for f in self._fragments(frame)]
        if kind is FaultKind.WRONG_SLAVE:
            other = next((s for s in self.packs if s != reply.slave), (reply.slave % 247) + 1)
            wrong = with_crc(bytes((other,)) + frame[1:-2])
            self._log_fault(kind, exchange, wrong, f"reply carries slave id {other}")
            return self._notify(wrong, words, wait)
        if kind is FaultKind.EXCEPTION:
            failed = encode_exception_response(reply.slave, READ_HOLDING_REGISTERS, EXC_DEVICE_FAILURE)
            self._log_fault(kind, exchange, failed, "exception 04")
            return self._notify(failed, 0, wait)
        if kind is FaultKind.GARBAGE:
            noise = rng.randbytes(rng.randint(3, min(20, self.mtu - 3)))
            self._log_fault(kind, exchange, noise, f"{len(noise)} random bytes before the reply")
            fragments = [noise, *self._fragments(frame)]
            delays = self._schedule(fragments, words, wait)
            actions: list[Action] = [Notification(d, f) for d, f in zip(delays, fragments, strict=True)]
            actions[-1] = Notification(delays[-1], fragments[-1], reply.truth)
            return actions
        raise AssertionError(f"not a request fault: {kind}")  # pragma: no cover

    def _log_fault(self, kind: str, exchange: _Exchange, frame: bytes | None, detail: str) -> None:
        request = exchange.request
        start = int.from_bytes(request[2:4], "big") if len(request) >= 4 else None
        words = int.from_bytes(request[4:6], "big") if len(request) >= 6 else None
        slave = request[0] if request else None
        record = FaultRecord(str(kind), time.time(), exchange.sim_time, slave, start, words, frame, detail)
        self.truth.record_fault(record)


def device_models(config: SimConfig, physics: BankPhysics) -> dict[int, DeviceModel]:
    """The non-battery devices of ``config`` by slave id. Controllers and DC-DC chargers are wired to
    the simulated packs (``physics``): what they deliver and their loads draw flows through the packs,
    and they report the packs' voltage and charge. A controller is the bank's panels (the profile's
    own solar current stops; its house load stays), sized to give what that solar gave. The
    inverter keeps a 48 V bank of its own."""
    models: dict[int, DeviceModel] = {}
    controllers = sum(kind == "controller" for kind, _ in config.devices)
    for kind, slave in config.devices:
        seed, start = config.seed, config.sim_start
        if kind == "controller":
            pv_peak_w = physics.profile.solar_peak * physics.cells * NOMINAL_CELL_VOLTS / controllers
            models[slave] = ControllerModel(
                slave, seed=seed, start=start, physics=physics, pv_peak_w=pv_peak_w
            )
        elif kind == "dcc":
            models[slave] = DccModel(slave, seed=seed, start=start, physics=physics)
        else:
            models[slave] = InverterModel(slave, seed=seed, start=start)
    return models


def _collide(frames: Sequence[bytes]) -> bytes:
    """Bytes of simultaneous RS485 replies: driven lines merge (OR), and the result fails its CRC."""
    length = max(len(f) for f in frames)
    merged = bytearray(length)
    for frame in frames:
        for i, byte in enumerate(frame):
            merged[i] |= byte
    if crc_ok(merged):  # pragma: no cover - vanishingly rare, but a collision must never look valid
        merged[-1] ^= 0xFF
    return bytes(merged)
