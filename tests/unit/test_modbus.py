"""Modbus RTU core: CRC, requests, and the fragment assembler (example and property tests)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from shared.modbus import (
    FrameError,
    FrameErrorKind,
    ReadRequest,
    ReadResponse,
    ResponseAssembler,
    crc16,
    crc_ok,
    encode_exception_response,
    encode_read_response,
    with_crc,
)
from tests.support.fuzz import budget

slaves = st.integers(min_value=1, max_value=247)
counts = st.integers(min_value=1, max_value=125)
words = st.integers(min_value=0, max_value=0xFFFF)


def test_crc_worked_example_from_trace() -> None:
    assert crc16(bytes.fromhex("300313b20006")) == 0x4A65
    assert ReadRequest(0x30, 5042, 6).encode().hex() == "300313b20006654a"


def test_crc_of_other_published_requests() -> None:
    assert ReadRequest(0xFF, 0x0100, 7).encode().hex() == "ff0301000007102a"
    assert (
        ReadRequest(0xFF, 0x0100, 2).encode().hex()[-4:] == "d029"
    )  # not "c5d4" as one circulating doc says


@pytest.mark.parametrize("bad", [(0, 0, 0), (48, 5000, 0), (48, 5000, 126), (256, 0, 1), (48, 70000, 1)])
def test_request_validation(bad: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError, match="outside"):
        ReadRequest(*bad)


@given(slaves, st.integers(0, 0xFFFF), counts)
def test_request_round_trip(slave: int, start: int, count: int) -> None:
    request = ReadRequest(slave, start, count)
    assert ReadRequest.decode(request.encode()) == request


@given(slaves, st.lists(words, min_size=1, max_size=125), st.data())
def test_response_in_any_split(slave: int, registers: list[int], data: st.DataObject) -> None:
    frame = encode_read_response(slave, registers)
    assembler = ResponseAssembler(ReadRequest(slave, 5000, len(registers)))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(frame)), max_size=8)))
    events = []
    for a, b in zip([0, *cuts], [*cuts, len(frame)], strict=True):
        events += assembler.feed(frame[a:b])
    assert events == [ReadResponse(slave, tuple(registers), frame)]
    assert assembler.pending == b""


@given(slaves, st.lists(words, min_size=1, max_size=40), st.binary(max_size=40), st.data())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_garbage_before_reply_is_skipped(
    slave: int, registers: list[int], garbage: bytes, data: st.DataObject
) -> None:
    frame = encode_read_response(slave, registers)
    stream = garbage + frame
    request = ReadRequest(slave, 5000, len(registers))
    # A garbage prefix that itself contains a CRC-valid exception from this slave is a legitimate earlier answer.
    assume(frame not in garbage and not crc_ok(garbage[-5:]))
    assembler = ResponseAssembler(request)
    cut = data.draw(st.integers(0, len(stream)))
    events = assembler.feed(stream[:cut]) + assembler.feed(stream[cut:])
    responses = [e for e in events if isinstance(e, ReadResponse)]
    assert responses and responses[-1].registers == tuple(registers)


@given(st.binary(max_size=600), st.data())
@settings(max_examples=budget(300), suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_any_byte_stream_yields_frames_or_errors(stream: bytes, data: st.DataObject) -> None:
    request = ReadRequest(data.draw(st.integers(1, 255)), 5042, data.draw(st.integers(1, 40)))
    assembler = ResponseAssembler(request)
    position = 0
    while position < len(stream):
        step = data.draw(st.integers(1, 64))
        for event in assembler.feed(stream[position : position + step]):
            assert isinstance(event, ReadResponse | FrameError)
            if isinstance(event, ReadResponse):
                assert crc_ok(event.frame) and len(event.registers) == request.count
        position += step
    assert len(assembler.pending) <= 512


def test_typed_errors() -> None:
    request = ReadRequest(0x30, 5042, 6)

    def kinds(data: bytes) -> list[FrameErrorKind]:
        return [e.kind for e in ResponseAssembler(request).feed(data) if isinstance(e, FrameError)]

    good = encode_read_response(0x30, [0] * 6)
    assert kinds(good[:-1] + bytes([good[-1] ^ 1])) == [FrameErrorKind.BAD_CRC]
    assert kinds(encode_read_response(0x31, [0] * 6)) == [FrameErrorKind.WRONG_SLAVE]
    assert kinds(encode_read_response(0x30, [0] * 7)) == [FrameErrorKind.LENGTH_MISMATCH]
    assert kinds(encode_exception_response(0x30, 3, 2)) == [FrameErrorKind.EXCEPTION]
    assert kinds(encode_exception_response(0x30, 6, 2)) == [FrameErrorKind.WRONG_FUNCTION]
    assert kinds(with_crc(bytes([0x30, 0x06, 0x13, 0xB2, 0, 1]))) == [FrameErrorKind.WRONG_FUNCTION]
    assert kinds(b"\x99\x11\x12\x13\x14") == [FrameErrorKind.GARBAGE]  # the last byte may start a frame


def test_exception_code_is_reported() -> None:
    (event,) = ResponseAssembler(ReadRequest(0xFF, 0, 1)).feed(bytes.fromhex("308302913e"))
    assert isinstance(event, FrameError)
    assert event.kind is FrameErrorKind.EXCEPTION and event.exception_code == 2
    assert "illegal data address" in event.detail


def test_broadcast_accepts_the_lone_responder() -> None:
    frame = encode_read_response(0x30, [1, 2])
    (event,) = ResponseAssembler(ReadRequest(0xFF, 5042, 2)).feed(frame)
    assert isinstance(event, ReadResponse) and event.slave == 0x30
