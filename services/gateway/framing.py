"""Sans-IO framing of the ESPHome native API: plaintext frames and the outer Noise transport frames.

Plaintext: ``0x00 | varint(len(payload)) | varint(type) | payload``.
Noise transport: ``0x01 | u16-BE len | body``.
Both decoders accept bytes in any split and stop for good at the first protocol error.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

PLAINTEXT_INDICATOR: Final = 0x00
NOISE_INDICATOR: Final = 0x01
MAX_PAYLOAD: Final = 0xFFFF  # 64 KiB - 1: the client's own limit, and what a u16 Noise length allows
MAX_VARINT_BYTES: Final = 4  # the aioesphomeapi client refuses longer varints too
BAD_INDICATOR_TEXT: Final = b"Bad indicator byte"
# What ESPHome's plaintext helper writes to a client that did not start with 0x00 (a Noise client).
PLAINTEXT_BAD_INDICATOR_REPLY: Final = b"\x00" + BAD_INDICATOR_TEXT


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded message: its type id and the raw protobuf payload."""

    msg_type: int
    payload: bytes


class FrameError(Exception):
    """A protocol error that ends the connection; ``kind`` names it for counters and logs."""

    kind = "malformed"


class BadIndicatorError(FrameError):
    kind = "bad_indicator"

    def __init__(self, byte: int) -> None:
        super().__init__(f"bad indicator byte 0x{byte:02x}")
        self.byte = byte


class OversizedFrameError(FrameError):
    kind = "oversized"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds {limit}")
        self.size = size


class MalformedFrameError(FrameError):
    kind = "malformed"


def encode_varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative integer."""
    if value < 0:
        raise ValueError("varint of a negative number")
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_plaintext(msg_type: int, payload: bytes) -> bytes:
    """One plaintext frame."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return b"\x00" + encode_varint(len(payload)) + encode_varint(msg_type) + payload


def encode_plaintext_many(frames: Iterable[Frame]) -> bytes:
    return b"".join(encode_plaintext(f.msg_type, f.payload) for f in frames)


def encode_noise_frame(body: bytes) -> bytes:
    """One outer Noise transport frame."""
    if len(body) > MAX_PAYLOAD:
        raise ValueError(f"noise frame body of {len(body)} bytes exceeds {MAX_PAYLOAD}")
    return bytes((NOISE_INDICATOR, len(body) >> 8, len(body) & 0xFF)) + body


def _read_varint(buf: bytearray, pos: int, end: int) -> tuple[int, int] | None:
    """(value, next position), None when incomplete; raises on an over-long varint."""
    value = 0
    shift = 0
    for i in range(MAX_VARINT_BYTES):
        if pos + i >= end:
            return None
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + i + 1
        shift += 7
    raise MalformedFrameError(f"varint longer than {MAX_VARINT_BYTES} bytes")


class PlaintextDecoder:
    """Plaintext frame decoder; after an error it is dead and ``error`` says why."""

    __slots__ = ("_buf", "error", "max_payload")

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self._buf = bytearray()
        self.max_payload = max_payload
        self.error: FrameError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Every complete frame in the stream so far; sets ``error`` and stops at a bad one."""
        if self.error is not None:
            return []
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        pos = 0
        end = len(buf)
        try:
            while pos < end:
                if buf[pos] != PLAINTEXT_INDICATOR:
                    raise BadIndicatorError(buf[pos])
                length = _read_varint(buf, pos + 1, end)
                if length is None:
                    self._check_partial_length(buf, pos + 1, end)
                    break
                size, type_pos = length
                if size > self.max_payload:
                    raise OversizedFrameError(size, self.max_payload)
                msg_type = _read_varint(buf, type_pos, end)
                if msg_type is None:
                    break
                kind, body = msg_type
                if body + size > end:
                    break
                frames.append(Frame(kind, bytes(buf[body : body + size])))
                pos = body + size
        except FrameError as exc:
            self.error = exc
            self._buf = bytearray()
            return frames
        del buf[:pos]
        return frames

    def _check_partial_length(self, buf: bytearray, pos: int, end: int) -> None:
        # Refuse an oversized length as soon as its known low bits already exceed the cap.
        value = 0
        for shift, i in enumerate(range(pos, end)):
            value |= (buf[i] & 0x7F) << (7 * shift)
        if value > self.max_payload:
            raise OversizedFrameError(value, self.max_payload)


class NoiseFrameDecoder:
    """Outer Noise transport frame decoder (``0x01 | u16 len | body``)."""

    __slots__ = ("_buf", "error", "max_body")

    def __init__(self, max_body: int = MAX_PAYLOAD) -> None:
        self._buf = bytearray()
        self.max_body = max_body
        self.error: FrameError | None = None

    def set_limit(self, max_body: int) -> None:
        self.max_body = max_body

    def next_body(self) -> bytes | None:
        """The next complete frame body already buffered, None if incomplete; sets ``error``."""
        if self.error is not None:
            return None
        buf = self._buf
        if not buf:
            return None
        if buf[0] != NOISE_INDICATOR:
            self.error = BadIndicatorError(buf[0])
            self._buf = bytearray()
            return None
        if len(buf) < 3:
            return None
        size = (buf[1] << 8) | buf[2]
        if size > self.max_body:
            self.error = OversizedFrameError(size, self.max_body)
            self._buf = bytearray()
            return None
        if len(buf) < 3 + size:
            return None
        body = bytes(buf[3 : 3 + size])
        del buf[: 3 + size]
        return body

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self.error is None:
            self._buf += data


class PlainCodec:
    """Plaintext transport of one connection: decode, encode, and the reply to a Noise client."""

    __slots__ = ("_decoder", "_output", "error", "error_kind")

    ready = True
    encrypted = False

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self._decoder = PlaintextDecoder(max_payload)
        self._output = b""
        self.error: str | None = None
        self.error_kind: str | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        frames = self._decoder.feed(data)
        err = self._decoder.error
        if err is not None and self.error is None:
            self.error, self.error_kind = str(err), err.kind
            if isinstance(err, BadIndicatorError):
                # ESPHome answers any bad indicator with this raw text; a Noise client then
                # raises EncryptionPlaintextAPIError.
                self._output = PLAINTEXT_BAD_INDICATOR_REPLY
        return frames

    def take_output(self) -> bytes:
        out, self._output = self._output, b""
        return out

    def encode(self, frames: Iterable[Frame]) -> bytes:
        return encode_plaintext_many(frames)
