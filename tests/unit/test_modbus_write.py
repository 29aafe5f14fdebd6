"""Modbus function 6 (write single register): frames, the echo assembler, and hostile input."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from shared.modbus import (
    FrameError,
    FrameErrorKind,
    ModbusDecodeError,
    ReadRequest,
    WriteAssembler,
    WriteRequest,
    WriteResponse,
    crc_ok,
    decode_request,
    encode_exception_response,
    encode_read_response,
    encode_write_response,
    with_crc,
)
from tests.support.fuzz import budget

slaves = st.integers(min_value=0, max_value=0xFF)
words = st.integers(min_value=0, max_value=0xFFFF)
LOAD_ON = WriteRequest(0xFF, 0x010A, 1)


def _bitwise_crc(body: bytes) -> bytes:
    """CRC-16/MODBUS bit by bit, independent of the module's table."""
    crc = 0xFFFF
    for byte in body:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")


def test_load_switch_frames() -> None:
    # The frame renogy-bt's RoverClient.set_load builds: id, 06, register 266, value, CRC low first.
    assert LOAD_ON.encode().hex() == "ff06010a0001" + _bitwise_crc(bytes.fromhex("ff06010a0001")).hex()
    assert LOAD_ON.encode().hex() == "ff06010a00017c2a"
    assert WriteRequest(0xFF, 0x010A, 0).encode().hex() == "ff06010a0000bdea"
    assert LOAD_ON.response_length == 8
    # The normal reply echoes the request byte for byte.
    assert encode_write_response(0xFF, 0x010A, 1) == LOAD_ON.encode()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((256, 0, 0), "slave"),
        ((1, 0x10000, 0), "register"),
        ((1, 0, -1), "value"),
        ((1, 0, 0x10000), "value"),
    ],
)
def test_request_validation(args: tuple[int, int, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        WriteRequest(*args)


@given(slaves, words, words)
def test_request_round_trip(slave: int, register: int, value: int) -> None:
    request = WriteRequest(slave, register, value)
    frame = request.encode()
    assert crc_ok(frame)
    assert WriteRequest.decode(frame) == request
    assert decode_request(frame) == request


def test_decode_request_dispatches_reads_and_refuses_the_rest() -> None:
    read = ReadRequest(0xFF, 0x0100, 34)
    assert decode_request(read.encode()) == read
    with pytest.raises(ModbusDecodeError, match="unsupported function 0x10"):
        decode_request(with_crc(bytes.fromhex("ff10010a0001")))
    with pytest.raises(ModbusDecodeError, match="CRC"):
        WriteRequest.decode(LOAD_ON.encode()[:-1] + b"\x00")
    with pytest.raises(ModbusDecodeError, match="7 bytes"):
        WriteRequest.decode(LOAD_ON.encode()[:-1])
    # A read of 0 registers used to escape as a bare ValueError from the constructor.
    with pytest.raises(ModbusDecodeError, match="count 0"):
        decode_request(with_crc(bytes.fromhex("ff0301000000")))


@settings(max_examples=budget(300))
@given(st.binary(max_size=12))
def test_decoding_garbage_raises_only_the_module_error(frame: bytes) -> None:
    for decoder in (decode_request, WriteRequest.decode, ReadRequest.decode):
        with contextlib.suppress(ModbusDecodeError):
            decoder(frame)


@settings(max_examples=budget(300))
@given(slaves, words, words)
def test_decoding_any_crc_valid_frame_raises_only_the_module_error(slave: int, a: int, b: int) -> None:
    for function in (0x03, 0x06, 0x10, 0x86):
        frame = with_crc(bytes((slave, function)) + a.to_bytes(2, "big") + b.to_bytes(2, "big"))
        with contextlib.suppress(ModbusDecodeError):
            decode_request(frame)


@given(slaves, words, words, st.data())
def test_echo_in_any_split(slave: int, register: int, value: int, data: st.DataObject) -> None:
    request = WriteRequest(slave, register, value)
    frame = encode_write_response(slave, register, value)
    assembler = WriteAssembler(request)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(frame)), max_size=6)))
    events = []
    for a, b in zip([0, *cuts], [*cuts, len(frame)], strict=True):
        events += assembler.feed(frame[a:b])
    assert events == [WriteResponse(slave, register, value, frame)]
    assert assembler.pending == b""


def test_broadcast_write_accepts_the_device_own_id() -> None:
    reply = encode_write_response(0x01, 0x010A, 1)
    assert WriteAssembler(LOAD_ON).feed(reply) == [WriteResponse(0x01, 0x010A, 1, reply)]


def test_exception_reply_is_a_typed_refusal() -> None:
    reply = encode_exception_response(0xFF, 0x06, 0x02)
    assert reply[1] == 0x86
    [event] = WriteAssembler(LOAD_ON).feed(reply)
    assert isinstance(event, FrameError) and event.kind is FrameErrorKind.EXCEPTION
    assert event.exception_code == 0x02
    assert "illegal data address" in str(event)


def test_echo_of_another_value_is_a_mismatch_not_a_success() -> None:
    reply = encode_write_response(0xFF, 0x010A, 0)
    [event] = WriteAssembler(LOAD_ON).feed(reply)
    assert isinstance(event, FrameError) and event.kind is FrameErrorKind.ECHO_MISMATCH
    assert "0x010a = 0, expected 0x010a = 1" in event.detail


def test_leading_garbage_and_a_late_read_reply_are_reported_then_the_echo() -> None:
    late_read = encode_read_response(0x01, [0x1234])
    echo = encode_write_response(0x01, 0x010A, 1)
    request = WriteRequest(0x01, 0x010A, 1)
    # The read reply alone is a definite wrong answer, known as soon as it is complete.
    [wrong] = WriteAssembler(request).feed(late_read)
    assert isinstance(wrong, FrameError) and wrong.kind is FrameErrorKind.WRONG_FUNCTION
    # Garbage before the echo: one GARBAGE event, then the echo.
    events = WriteAssembler(request).feed(b"\x00\x99\x42" + echo)
    assert [type(e) for e in events] == [FrameError, WriteResponse]
    assert isinstance(events[0], FrameError) and events[0].kind is FrameErrorKind.GARBAGE
    assert events[0].data == b"\x00\x99\x42"


def test_another_slave_echo_is_wrong_slave() -> None:
    [event] = WriteAssembler(WriteRequest(0x01, 0x010A, 1)).feed(encode_write_response(0x02, 0x010A, 1))
    assert isinstance(event, FrameError) and event.kind is FrameErrorKind.WRONG_SLAVE


def test_truncated_echo_stays_pending() -> None:
    assembler = WriteAssembler(LOAD_ON)
    assert assembler.feed(LOAD_ON.encode()[:5]) == []
    assert assembler.pending == LOAD_ON.encode()[:5]


@settings(max_examples=budget(200), suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=40), max_size=30))
def test_garbage_never_raises_and_buffer_stays_bounded(chunks: list[bytes]) -> None:
    assembler = WriteAssembler(LOAD_ON)
    for chunk in chunks:
        for event in assembler.feed(chunk):
            assert isinstance(event, WriteResponse | FrameError)
        assert len(assembler.pending) <= 512


@settings(max_examples=budget(200))
@given(st.binary(max_size=30), st.binary(max_size=30), words)
def test_echo_is_found_behind_and_before_garbage(prefix: bytes, suffix: bytes, value: int) -> None:
    request = WriteRequest(0x30, 0x010A, value)
    echo = encode_write_response(0x30, 0x010A, value)
    assume(echo not in prefix + echo[:-1] and echo not in echo[1:] + suffix)
    assume(b"\x30\x06" not in prefix and b"\x30\x86" not in prefix)
    events = WriteAssembler(request).feed(prefix + echo + suffix)
    assert WriteResponse(0x30, 0x010A, value, echo) in events
