"""Pure Noise responder against aioesphomeapi's own sans-IO initiator."""

from __future__ import annotations

import base64
import os

from aioesphomeapi.noise import NoiseHandshake
from hypothesis import given, settings
from hypothesis import strategies as st

from services.gateway.framing import Frame, NoiseFrameDecoder, encode_noise_frame
from services.gateway.noise import (
    REJECT_BAD_INDICATOR,
    REJECT_MAC_FAILURE,
    STATE_FAILED,
    STATE_READY,
    NoiseCodec,
)

PSK = os.urandom(32)
PSK_TEXT = base64.b64encode(PSK).decode()
PROLOGUE = b"NoiseAPIInit\x00\x00"
CLIENT_HELLO = b"\x01\x00\x00"


def _bodies(data: bytes) -> list[bytes]:
    decoder = NoiseFrameDecoder()
    decoder.feed(data)
    out = []
    while (body := decoder.next_body()) is not None:
        out.append(body)
    assert decoder.error is None
    return out


def _client_opening(psk_text: str = PSK_TEXT) -> tuple[NoiseHandshake, bytes]:
    initiator = NoiseHandshake(psk_text, PROLOGUE)
    message = initiator.write_message()
    return initiator, CLIENT_HELLO + encode_noise_frame(b"\x00" + message)


def test_handshake_and_data_phase() -> None:
    server = NoiseCodec(PSK, "renogy-bt-proxy", "02aabbccddee")
    initiator, opening = _client_opening()
    assert server.feed(opening) == []
    hello, reply = _bodies(server.take_output())
    assert hello == b"\x01renogy-bt-proxy\x00" + b"02aabbccddee\x00"
    assert reply[0] == 0
    initiator.read_message(reply[1:])
    assert server.state == STATE_READY
    encrypt, decrypt = initiator.get_ciphers()
    # Client -> server: two pipelined messages in one write.
    data = b"".join(
        encode_noise_frame(encrypt.encrypt(t.to_bytes(2, "big") + len(p).to_bytes(2, "big") + p))
        for t, p in ((1, b"hello"), (9, b""))
    )
    assert server.feed(data) == [Frame(1, b"hello"), Frame(9, b"")]
    # Server -> client.
    (body,) = _bodies(server.encode([Frame(2, b"abc")]))
    plain = decrypt.decrypt(body)
    assert plain == b"\x00\x02\x00\x03abc"


def test_wrong_key_gets_hello_then_mac_failure() -> None:
    server = NoiseCodec(PSK, "node", "02aabbccddee")
    _, opening = _client_opening(base64.b64encode(os.urandom(32)).decode())
    server.feed(opening)
    hello, reject = _bodies(server.take_output())
    assert hello.startswith(b"\x01node\x00")
    assert reject == b"\x01" + REJECT_MAC_FAILURE.encode()
    assert server.state == STATE_FAILED
    assert server.error_kind == "mac_failure"


def test_plaintext_client_gets_bad_indicator() -> None:
    server = NoiseCodec(PSK, "node", "02aabbccddee")
    server.feed(bytes.fromhex("0008010a02484110011813"))
    assert server.take_output() == b"\x01\x00\x13\x01" + REJECT_BAD_INDICATOR.encode()
    assert server.error_kind == "bad_indicator"


def test_tampered_data_frame_fails() -> None:
    server = NoiseCodec(PSK, "node", "02aabbccddee")
    initiator, opening = _client_opening()
    server.feed(opening)
    initiator.read_message(_bodies(server.take_output())[1][1:])
    encrypt, _ = initiator.get_ciphers()
    frame = bytearray(encode_noise_frame(encrypt.encrypt(b"\x00\x07\x00\x00")))
    frame[-1] ^= 1
    assert server.feed(bytes(frame)) == []
    assert server.error_kind == "decrypt"


def test_short_and_overlong_inner_messages_fail() -> None:
    for inner in (b"\x00\x07", b"\x00\x07\x00\x09abc"):
        server = NoiseCodec(PSK, "node", "02aabbccddee")
        initiator, opening = _client_opening()
        server.feed(opening)
        initiator.read_message(_bodies(server.take_output())[1][1:])
        encrypt, _ = initiator.get_ciphers()
        assert server.feed(encode_noise_frame(encrypt.encrypt(inner))) == []
        assert server.error_kind == "malformed"


@given(st.binary(max_size=600), st.integers(1, 80))
@settings(max_examples=300, deadline=None)
def test_random_bytes_never_raise(data: bytes, step: int) -> None:
    server = NoiseCodec(PSK, "node", "02aabbccddee")
    for pos in range(0, len(data), step):
        server.feed(data[pos : pos + step])
        server.take_output()
    assert server.state != STATE_READY or server.error is None


@given(st.data())
@settings(max_examples=200, deadline=None)
def test_mutated_and_truncated_handshakes(data: st.DataObject) -> None:
    _, opening = _client_opening()
    stream = bytearray(opening)
    for _ in range(data.draw(st.integers(0, 4))):
        stream[data.draw(st.integers(0, len(stream) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(stream)))
    server = NoiseCodec(PSK, "node", "02aabbccddee")
    server.feed(bytes(stream[:cut]))
    out = server.take_output()
    if server.state == STATE_FAILED:
        # Every handshake-phase failure is explained to the client with a reject frame.
        assert server.error
        assert _bodies(out)[-1][0] == 0x01
    if server.state == STATE_READY:
        assert bytes(stream) == opening  # only an untouched, complete handshake succeeds
