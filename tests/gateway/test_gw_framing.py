"""Pure framing: plaintext frames and outer Noise frames, fed in any split."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.gateway.framing import (
    MAX_PAYLOAD,
    PLAINTEXT_BAD_INDICATOR_REPLY,
    BadIndicatorError,
    Frame,
    MalformedFrameError,
    NoiseFrameDecoder,
    OversizedFrameError,
    PlainCodec,
    PlaintextDecoder,
    encode_noise_frame,
    encode_plaintext,
    encode_varint,
)

HELLO_AND_AUTH = bytes.fromhex("0008010a02484110011813") + bytes.fromhex("000003")


def test_observed_client_bytes_decode() -> None:
    frames = PlaintextDecoder().feed(HELLO_AND_AUTH)
    assert [f.msg_type for f in frames] == [1, 3]
    assert frames[0].payload == bytes.fromhex("0a02484110011813")
    assert frames[1].payload == b""


def test_encode_matches_esphome_layout() -> None:
    assert encode_plaintext(7, b"") == b"\x00\x00\x07"
    assert encode_plaintext(150, b"ab") == b"\x00\x02\x96\x01ab"
    assert encode_varint(300) == b"\xac\x02"


def test_byte_by_byte_feed() -> None:
    decoder = PlaintextDecoder()
    stream = HELLO_AND_AUTH * 3
    frames = [f for b in stream for f in decoder.feed(bytes([b]))]
    assert [f.msg_type for f in frames] == [1, 3] * 3
    assert decoder.buffered == 0


def test_bad_indicator_is_typed_and_final() -> None:
    decoder = PlaintextDecoder()
    assert decoder.feed(b"\x00\x00\x07\x01\x00\x00") == [Frame(7, b"")]
    assert isinstance(decoder.error, BadIndicatorError)
    assert decoder.feed(b"\x00\x00\x07") == []


def test_oversized_refused_before_payload_arrives() -> None:
    decoder = PlaintextDecoder()
    decoder.feed(b"\x00" + encode_varint(MAX_PAYLOAD + 1))
    assert isinstance(decoder.error, OversizedFrameError)
    partial = PlaintextDecoder()
    partial.feed(b"\x00\xff\xff\xff")  # an incomplete varint whose known bits already exceed the cap
    assert isinstance(partial.error, OversizedFrameError)


def test_largest_frame_accepted() -> None:
    payload = b"x" * MAX_PAYLOAD
    assert PlaintextDecoder().feed(encode_plaintext(16, payload)) == [Frame(16, payload)]


def test_overlong_varint_is_malformed() -> None:
    decoder = PlaintextDecoder()
    decoder.feed(b"\x00\x80\x80\x80\x80\x00")
    assert isinstance(decoder.error, MalformedFrameError | OversizedFrameError)


def test_plain_codec_answers_a_noise_client() -> None:
    codec = PlainCodec()
    assert codec.feed(b"\x01\x00\x00\x01\x00\x31") == []
    assert codec.error_kind == "bad_indicator"
    assert codec.take_output() == PLAINTEXT_BAD_INDICATOR_REPLY


def test_noise_frames_any_split() -> None:
    stream = encode_noise_frame(b"") + encode_noise_frame(b"abc") + encode_noise_frame(b"z" * 300)
    decoder = NoiseFrameDecoder()
    bodies = []
    for b in stream:
        decoder.feed(bytes([b]))
        while (body := decoder.next_body()) is not None:
            bodies.append(body)
    assert bodies == [b"", b"abc", b"z" * 300]


def test_noise_frame_limit_and_indicator() -> None:
    small = NoiseFrameDecoder(max_body=128)
    small.feed(encode_noise_frame(b"x" * 129))
    assert small.next_body() is None
    assert isinstance(small.error, OversizedFrameError)
    bad = NoiseFrameDecoder()
    bad.feed(b"\x00\x00\x07")
    assert bad.next_body() is None
    assert isinstance(bad.error, BadIndicatorError)


frames_st = st.lists(st.tuples(st.integers(0, 200), st.binary(max_size=300)), max_size=12)


@given(frames_st, st.lists(st.integers(1, 64), min_size=1, max_size=20))
@settings(max_examples=200, deadline=None)
def test_roundtrip_any_split(frames: list[tuple[int, bytes]], cuts: list[int]) -> None:
    stream = b"".join(encode_plaintext(t, p) for t, p in frames)
    decoder = PlaintextDecoder()
    out: list[Frame] = []
    pos = 0
    i = 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        out += decoder.feed(stream[pos : pos + step])
        pos += step
        i += 1
    assert decoder.error is None
    assert [(f.msg_type, f.payload) for f in out] == frames


@given(st.binary(max_size=2000), st.integers(1, 50))
@settings(max_examples=300, deadline=None)
def test_random_bytes_never_raise(data: bytes, step: int) -> None:
    decoder = PlaintextDecoder()
    for pos in range(0, len(data), step):
        decoder.feed(data[pos : pos + step])
    codec = PlainCodec()
    codec.feed(data)
    noise = NoiseFrameDecoder()
    noise.feed(data)
    while noise.next_body() is not None:
        pass


@given(frames_st, st.data())
@settings(max_examples=200, deadline=None)
def test_mutated_frames_never_raise(frames: list[tuple[int, bytes]], data: st.DataObject) -> None:
    stream = bytearray(b"".join(encode_plaintext(t, p) for t, p in frames))
    for _ in range(data.draw(st.integers(0, 5))):
        if stream:
            stream[data.draw(st.integers(0, len(stream) - 1))] = data.draw(st.integers(0, 255))
    decoder = PlaintextDecoder()
    for frame in decoder.feed(bytes(stream)):
        assert len(frame.payload) <= MAX_PAYLOAD
