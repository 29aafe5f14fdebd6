"""Modbus RTU for the BT-2 link: CRC, request/response frames and fragment assemblers (sans-IO).

The BT-2 is a transparent BLE <-> RS485 bridge. Requests are 8-byte read-holding-registers frames;
replies carry no register address, so a reply can only be matched to the one outstanding request by
slave id, function and byte count. Notifications may split a reply anywhere (20-byte chunks at
MTU 23) and a noisy link may add garbage, so :class:`ResponseAssembler` accepts bytes in any split
and yields whole, CRC-checked frames or typed errors. It never raises on input.

Controls use function 6 (write single register, :class:`WriteRequest`): the normal reply echoes the
request (address and value), an exception reply is ``slave, 0x86, code``; :class:`WriteAssembler`
matches it like :class:`ResponseAssembler` matches a read. Decoding a whole frame raises only
:class:`ModbusDecodeError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, TypeVar

READ_HOLDING_REGISTERS: Final = 0x03
WRITE_SINGLE_REGISTER: Final = 0x06
EXCEPTION_FLAG: Final = 0x80
BROADCAST_SLAVE: Final = 0xFF
MAX_READ_WORDS: Final = 125
MAX_BUFFER: Final = 512
_EXCEPTION_FRAME_LEN: Final = 5
_WRITE_ECHO_LEN: Final = 8
_WRITE_FUNCTIONS: Final = frozenset({0x06, 0x10})

EXCEPTION_NAMES: Final[dict[int, str]] = {
    0x01: "illegal function",
    0x02: "illegal data address",
    0x03: "illegal data value",
    0x04: "slave device failure",
    0x05: "CRC error in request",
}


def _make_crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE: Final = _make_crc_table()


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/MODBUS (init 0xFFFF, reflected poly 0xA001, no final xor)."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def with_crc(body: bytes) -> bytes:
    """Append the CRC, low byte first as on the wire."""
    return body + crc16(body).to_bytes(2, "little")


def crc_ok(frame: bytes | bytearray | memoryview) -> bool:
    """True when the last two bytes are the CRC of the rest."""
    return len(frame) >= 3 and crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little")


class ModbusDecodeError(ValueError):
    """A whole frame that is not a valid request of the kind asked for (one line, for a log)."""


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """A read-holding-registers request (function 3)."""

    slave: int
    start: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.slave <= 0xFF:
            raise ValueError(f"slave id {self.slave} outside 0..255")
        if not 0 <= self.start <= 0xFFFF:
            raise ValueError(f"start register {self.start} outside 0..65535")
        if not 1 <= self.count <= MAX_READ_WORDS:
            raise ValueError(f"register count {self.count} outside 1..{MAX_READ_WORDS}")

    def encode(self) -> bytes:
        return with_crc(
            bytes((self.slave, READ_HOLDING_REGISTERS))
            + self.start.to_bytes(2, "big")
            + self.count.to_bytes(2, "big")
        )

    @property
    def response_length(self) -> int:
        return 5 + 2 * self.count

    @classmethod
    def decode(cls, frame: bytes) -> ReadRequest:
        """Parse an 8-byte request frame (the simulator's side of the link)."""
        _check_request_frame(frame, READ_HOLDING_REGISTERS)
        try:
            return cls(frame[0], int.from_bytes(frame[2:4], "big"), int.from_bytes(frame[4:6], "big"))
        except ValueError as exc:  # a count of 0 or above 125
            raise ModbusDecodeError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """A write-single-register request (function 6): ``value`` goes to ``register``."""

    slave: int
    register: int
    value: int

    def __post_init__(self) -> None:
        if not 0 <= self.slave <= 0xFF:
            raise ValueError(f"slave id {self.slave} outside 0..255")
        if not 0 <= self.register <= 0xFFFF:
            raise ValueError(f"register {self.register} outside 0..65535")
        if not 0 <= self.value <= 0xFFFF:
            raise ValueError(f"value {self.value} outside 0..65535")

    def encode(self) -> bytes:
        return with_crc(_write_body(self.slave, self.register, self.value))

    @property
    def response_length(self) -> int:
        return _WRITE_ECHO_LEN

    @classmethod
    def decode(cls, frame: bytes) -> WriteRequest:
        """Parse an 8-byte function-6 frame (the simulator's side of the link)."""
        _check_request_frame(frame, WRITE_SINGLE_REGISTER)
        return cls(frame[0], int.from_bytes(frame[2:4], "big"), int.from_bytes(frame[4:6], "big"))


def _write_body(slave: int, register: int, value: int) -> bytes:
    return bytes((slave, WRITE_SINGLE_REGISTER)) + register.to_bytes(2, "big") + value.to_bytes(2, "big")


def _check_request_frame(frame: bytes, function: int) -> None:
    if len(frame) != 8:
        raise ModbusDecodeError(f"request frame is {len(frame)} bytes, expected 8")
    if not crc_ok(frame):
        raise ModbusDecodeError("request CRC mismatch")
    if frame[1] != function:
        raise ModbusDecodeError(f"unsupported function 0x{frame[1]:02x}")


def decode_request(frame: bytes) -> ReadRequest | WriteRequest:
    """A read (3) or write-single-register (6) request; ModbusDecodeError for anything else."""
    if len(frame) >= 2 and frame[1] == WRITE_SINGLE_REGISTER:
        return WriteRequest.decode(frame)
    return ReadRequest.decode(frame)


def encode_read_response(slave: int, registers: Sequence[int]) -> bytes:
    """A normal reply: id, 03, byte count, big-endian words, CRC."""
    data = b"".join((word & 0xFFFF).to_bytes(2, "big") for word in registers)
    return with_crc(bytes((slave, READ_HOLDING_REGISTERS, len(data))) + data)


def encode_exception_response(slave: int, function: int, code: int) -> bytes:
    return with_crc(bytes((slave, function | EXCEPTION_FLAG, code)))


def encode_write_response(slave: int, register: int, value: int) -> bytes:
    """The normal reply to a write-single-register request: the request echoed."""
    return with_crc(_write_body(slave, register & 0xFFFF, value & 0xFFFF))


@dataclass(frozen=True, slots=True)
class ReadResponse:
    """A validated reply to a :class:`ReadRequest`."""

    slave: int
    registers: tuple[int, ...]
    frame: bytes


@dataclass(frozen=True, slots=True)
class WriteResponse:
    """A validated echo of a :class:`WriteRequest` (the device took the value)."""

    slave: int
    register: int
    value: int
    frame: bytes


class FrameErrorKind(StrEnum):
    BAD_CRC = "bad_crc"
    WRONG_SLAVE = "wrong_slave"
    WRONG_FUNCTION = "wrong_function"
    EXCEPTION = "modbus_exception"
    LENGTH_MISMATCH = "length_mismatch"
    GARBAGE = "garbage"
    ECHO_MISMATCH = "echo_mismatch"  # a write reply naming another register or value


@dataclass(frozen=True, slots=True)
class FrameError:
    """Something that arrived instead of (or before) the expected reply."""

    kind: FrameErrorKind
    detail: str
    data: bytes = b""
    exception_code: int | None = None

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


AssemblerEvent = ReadResponse | FrameError


class ResponseAssembler:
    """Reassembles the reply to one outstanding request from notification fragments.

    Feed it every notification; it returns the events completed by that fragment. The expected
    frame is searched at every offset so leading garbage cannot hide it; other CRC-valid frames at
    the head of the buffer become typed errors. ``expected.slave == 0xFF`` accepts any responder,
    as a lone battery answers a broadcast with its own id.
    """

    __slots__ = ("_buffer", "expected")

    def __init__(self, expected: ReadRequest) -> None:
        self.expected = expected
        self._buffer = bytearray()

    @property
    def pending(self) -> bytes:
        """Bytes received that do not form a complete frame yet (for truncation reports)."""
        return bytes(self._buffer)

    def reset(self, expected: ReadRequest | None = None) -> None:
        if expected is not None:
            self.expected = expected
        self._buffer.clear()

    def feed(self, fragment: bytes | bytearray) -> list[AssemblerEvent]:
        self._buffer += fragment
        events: list[AssemblerEvent] = []
        while self._buffer:
            event_count = len(events)
            if not self._take_frame(events):
                break
            if len(events) == event_count:  # pragma: no cover - defensive: progress is guaranteed
                break
        if len(self._buffer) > MAX_BUFFER:
            dropped = len(self._buffer) - MAX_BUFFER
            events.append(self._garbage(bytes(self._buffer[:dropped]), "buffer overflow"))
            del self._buffer[:dropped]
        return _merge_garbage(events)

    def _slave_matches(self, slave: int) -> bool:
        return self.expected.slave in (BROADCAST_SLAVE, slave)

    def _take_frame(self, events: list[AssemblerEvent]) -> bool:
        """Consume one frame or one run of garbage from the buffer; False when more bytes are needed."""
        buf = self._buffer
        offset = self._find_expected()
        if offset is None:
            offset = self._find_expected_exception()
        if offset is not None:
            if offset:
                events.append(self._garbage(bytes(buf[:offset]), "bytes before the reply"))
                del buf[:offset]
            events.append(self._decode_at_head())
            return True
        head = self._classify_head()
        if head is None:
            return False
        if isinstance(head, int):
            skip = head
            events.append(self._garbage(bytes(buf[:skip]), "no frame starts here"))
            del buf[:skip]
            return True
        events.append(head[0])
        del buf[: head[1]]
        return True

    def _find_expected(self) -> int | None:
        exp = self.expected
        length = exp.response_length
        buf = self._buffer
        byte_count = 2 * exp.count
        for i in range(len(buf) - length + 1):
            if (
                buf[i + 1] == READ_HOLDING_REGISTERS
                and buf[i + 2] == byte_count
                and self._slave_matches(buf[i])
                and crc_ok(memoryview(buf)[i : i + length])
            ):
                return i
        return None

    def _find_expected_exception(self) -> int | None:
        buf = self._buffer
        for i in range(len(buf) - _EXCEPTION_FRAME_LEN + 1):
            if (
                buf[i + 1] == READ_HOLDING_REGISTERS | EXCEPTION_FLAG
                and self._slave_matches(buf[i])
                and crc_ok(memoryview(buf)[i : i + _EXCEPTION_FRAME_LEN])
            ):
                return i
        return None

    def _decode_at_head(self) -> AssemblerEvent:
        """Decode the expected reply or exception known to start at offset 0 and consume it."""
        buf = self._buffer
        if buf[1] & EXCEPTION_FLAG:
            frame = bytes(buf[:_EXCEPTION_FRAME_LEN])
            del buf[:_EXCEPTION_FRAME_LEN]
            code = frame[2]
            return FrameError(
                FrameErrorKind.EXCEPTION,
                f"slave {frame[0]} answered exception {code:#04x} ({EXCEPTION_NAMES.get(code, 'unknown')})",
                frame,
                exception_code=code,
            )
        length = self.expected.response_length
        frame = bytes(buf[:length])
        del buf[:length]
        words = tuple(int.from_bytes(frame[3 + 2 * k : 5 + 2 * k], "big") for k in range(self.expected.count))
        return ReadResponse(frame[0], words, frame)

    def _classify_head(self) -> tuple[FrameError, int] | int | None:
        """Look at the head of the buffer when the expected frame is not (yet) in it.

        Returns (error, length) for a complete unexpected frame, a number of garbage bytes to
        drop, or None when the head may still grow into a frame.
        """
        buf = self._buffer
        if len(buf) < 2:
            return None if self._plausible_start(0) else 1
        slave, function = buf[0], buf[1]
        if function == READ_HOLDING_REGISTERS:
            if len(buf) < 3:
                return None
            length = 5 + buf[2]
            if len(buf) < length:
                return None if buf[2] % 2 == 0 else self._skip_to_next_start()
            frame = bytes(buf[:length])
            if crc_ok(frame):
                if not self._slave_matches(slave):
                    return FrameError(
                        FrameErrorKind.WRONG_SLAVE,
                        f"reply from slave {slave} while waiting for slave {self.expected.slave}",
                        frame,
                    ), length
                return FrameError(
                    FrameErrorKind.LENGTH_MISMATCH,
                    f"reply carries {buf[2]} data bytes, expected {2 * self.expected.count}",
                    frame,
                ), length
            if self._slave_matches(slave) and buf[2] == 2 * self.expected.count:
                return FrameError(
                    FrameErrorKind.BAD_CRC, f"CRC mismatch in {length}-byte reply", frame
                ), length
            return self._skip_to_next_start()
        if function & EXCEPTION_FLAG:
            if len(buf) < _EXCEPTION_FRAME_LEN:
                return None
            frame = bytes(buf[:_EXCEPTION_FRAME_LEN])
            if crc_ok(frame):
                if not self._slave_matches(slave):
                    return FrameError(
                        FrameErrorKind.WRONG_SLAVE, f"exception from slave {slave}", frame, frame[2]
                    ), _EXCEPTION_FRAME_LEN
                return FrameError(
                    FrameErrorKind.WRONG_FUNCTION,
                    f"exception for function {function & 0x7F:#04x}, expected 0x03",
                    frame,
                    frame[2],
                ), _EXCEPTION_FRAME_LEN
            return self._skip_to_next_start()
        if function in _WRITE_FUNCTIONS:
            if len(buf) < _WRITE_ECHO_LEN:
                return None
            frame = bytes(buf[:_WRITE_ECHO_LEN])
            if crc_ok(frame):
                return FrameError(
                    FrameErrorKind.WRONG_FUNCTION, f"function {function:#04x} reply, expected 0x03", frame
                ), _WRITE_ECHO_LEN
        return self._skip_to_next_start()

    def _plausible_start(self, i: int) -> bool:
        """Could a frame start at offset i, judging by the bytes present so far?"""
        buf = self._buffer
        if i + 1 >= len(buf):
            return True
        function = buf[i + 1]
        if function == READ_HOLDING_REGISTERS:
            return i + 2 >= len(buf) or buf[i + 2] % 2 == 0
        return bool(function & EXCEPTION_FLAG) or function in _WRITE_FUNCTIONS

    def _skip_to_next_start(self) -> int:
        for i in range(1, len(self._buffer)):
            if self._plausible_start(i):
                return i
        return len(self._buffer)

    @staticmethod
    def _garbage(data: bytes, why: str) -> FrameError:
        return FrameError(FrameErrorKind.GARBAGE, f"{len(data)} stray bytes ({why})", data)


def _stray(data: bytes, why: str) -> FrameError:
    return FrameError(FrameErrorKind.GARBAGE, f"{len(data)} stray bytes ({why})", data)


_Event = TypeVar("_Event", ReadResponse | FrameError, WriteResponse | FrameError)


def _merge_garbage(events: list[_Event]) -> list[_Event]:
    """Report a run of stray bytes once, however many resync steps it took."""
    merged: list[_Event] = []
    for event in events:
        last = merged[-1] if merged else None
        if (
            isinstance(event, FrameError)
            and event.kind is FrameErrorKind.GARBAGE
            and isinstance(last, FrameError)
            and last.kind is FrameErrorKind.GARBAGE
        ):
            data = last.data + event.data
            merged[-1] = FrameError(FrameErrorKind.GARBAGE, f"{len(data)} stray bytes", data)
        else:
            merged.append(event)
    return merged


WriteEvent = WriteResponse | FrameError


class WriteAssembler:
    """Reassembles the reply to one outstanding :class:`WriteRequest` from notification fragments.

    Same contract as :class:`ResponseAssembler`: feed every notification, get the events it
    completes, never an exception. The echo and the 0x86 exception are searched at every offset
    (leading bytes become one GARBAGE event); a CRC-valid echo of another register or value is
    ECHO_MISMATCH, and other complete CRC-valid frames at the head (a late read reply, another
    slave's echo) become typed errors. ``expected.slave == 0xFF`` accepts any responder.
    """

    __slots__ = ("_buffer", "expected")

    def __init__(self, expected: WriteRequest) -> None:
        self.expected = expected
        self._buffer = bytearray()

    @property
    def pending(self) -> bytes:
        """Bytes received that do not form a complete frame yet (for truncation reports)."""
        return bytes(self._buffer)

    def feed(self, fragment: bytes | bytearray) -> list[WriteEvent]:
        self._buffer += fragment
        events: list[WriteEvent] = []
        while self._buffer and self._take(events):
            pass
        if len(self._buffer) > MAX_BUFFER:
            dropped = len(self._buffer) - MAX_BUFFER
            events.append(_stray(bytes(self._buffer[:dropped]), "buffer overflow"))
            del self._buffer[:dropped]
        return _merge_garbage(events)

    def _slave_matches(self, slave: int) -> bool:
        return self.expected.slave in (BROADCAST_SLAVE, slave)

    def _find(self, function: int, length: int) -> int | None:
        buf = self._buffer
        for i in range(len(buf) - length + 1):
            if (
                buf[i + 1] == function
                and self._slave_matches(buf[i])
                and crc_ok(memoryview(buf)[i : i + length])
            ):
                return i
        return None

    def _take(self, events: list[WriteEvent]) -> bool:
        """Consume one frame or one run of garbage; False when more bytes are needed."""
        buf = self._buffer
        echo = self._find(WRITE_SINGLE_REGISTER, _WRITE_ECHO_LEN)
        refusal = self._find(WRITE_SINGLE_REGISTER | EXCEPTION_FLAG, _EXCEPTION_FRAME_LEN)
        found = [
            (o, n) for o, n in ((echo, _WRITE_ECHO_LEN), (refusal, _EXCEPTION_FRAME_LEN)) if o is not None
        ]
        if found:
            offset, length = min(found)
            if offset:
                events.append(_stray(bytes(buf[:offset]), "bytes before the reply"))
            frame = bytes(buf[offset : offset + length])
            del buf[: offset + length]
            events.append(self._decode(frame))
            return True
        head = self._classify_head()
        if head is None:
            return False
        if isinstance(head, int):
            events.append(_stray(bytes(buf[:head]), "no frame starts here"))
            del buf[:head]
            return True
        events.append(head[0])
        del buf[: head[1]]
        return True

    def _decode(self, frame: bytes) -> WriteEvent:
        if frame[1] & EXCEPTION_FLAG:
            code = frame[2]
            return FrameError(
                FrameErrorKind.EXCEPTION,
                f"slave {frame[0]} refused the write: exception {code:#04x} "
                f"({EXCEPTION_NAMES.get(code, 'unknown')})",
                frame,
                exception_code=code,
            )
        register, value = int.from_bytes(frame[2:4], "big"), int.from_bytes(frame[4:6], "big")
        exp = self.expected
        if (register, value) != (exp.register, exp.value):
            return FrameError(
                FrameErrorKind.ECHO_MISMATCH,
                f"write reply names register {register:#06x} = {value}, "
                f"expected {exp.register:#06x} = {exp.value}",
                frame,
            )
        return WriteResponse(frame[0], register, value, frame)

    def _classify_head(self) -> tuple[FrameError, int] | int | None:
        """(error, length) for another complete CRC-valid frame at the head, a number of garbage
        bytes to drop, or None when the head may still grow into a frame."""
        buf = self._buffer
        if len(buf) < 3:
            return None
        slave, function = buf[0], buf[1]
        if function == READ_HOLDING_REGISTERS:
            length = 5 + buf[2]
        elif function & EXCEPTION_FLAG:
            length = _EXCEPTION_FRAME_LEN
        elif function in _WRITE_FUNCTIONS:
            length = _WRITE_ECHO_LEN
        else:
            return 1
        if len(buf) < length:
            return None
        frame = bytes(buf[:length])
        if not crc_ok(frame):
            return 1
        if not self._slave_matches(slave):
            return FrameError(FrameErrorKind.WRONG_SLAVE, f"reply from slave {slave}", frame), length
        return FrameError(
            FrameErrorKind.WRONG_FUNCTION, f"function {function:#04x} reply, expected 0x06", frame
        ), length
