"""Sans-IO Noise responder (Noise_NNpsk0_25519_ChaChaPoly_SHA256) as ESPHome speaks it.

Sequence: client hello frame (empty body) -> server hello (``0x01 name 0x00 mac 0x00``) -> client
handshake frame (``0x00`` + NNpsk0 message 1) -> ``0x00`` + message 2, or a reject frame
(``0x01`` + ASCII reason). The reject texts are ESPHome's; aioesphomeapi maps exactly
"Handshake MAC failure" to InvalidEncryptionKeyAPIError, so the server hello goes out first.
Data phase: each frame body is ChaCha20-Poly1305 over ``u16 type | u16 len | payload``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any, Final

# cryptography and noiseprotocol (~8 MB RSS) are imported by the first encrypted connection only: a
# gateway without a key, and mdns.py reading NOISE_PROTOCOL_NAME, never load them.
from services.gateway.framing import (
    MAX_PAYLOAD,
    BadIndicatorError,
    Frame,
    NoiseFrameDecoder,
    encode_noise_frame,
)

NOISE_PROTOCOL_NAME: Final = b"Noise_NNpsk0_25519_ChaChaPoly_SHA256"
MAX_HANDSHAKE_FRAME: Final = 128  # ESPHome's MAX_HANDSHAKE_SIZE; the real client sends 0 and 49 bytes
TAG_SIZE: Final = 16
MAX_MESSAGE_PAYLOAD: Final = MAX_PAYLOAD - 4 - TAG_SIZE

REJECT_BAD_INDICATOR: Final = "Bad indicator byte"
REJECT_BAD_LENGTH: Final = "Bad handshake packet len"
REJECT_EMPTY_HANDSHAKE: Final = "Empty handshake message"
REJECT_BAD_ERROR_BYTE: Final = "Bad handshake error byte"
REJECT_MAC_FAILURE: Final = "Handshake MAC failure"
REJECT_HANDSHAKE_ERROR: Final = "Handshake error"

STATE_HELLO: Final = "hello"
STATE_HANDSHAKE: Final = "handshake"
STATE_READY: Final = "ready"
STATE_FAILED: Final = "failed"

_NONCE = struct.Struct("<4xQ")
_INNER = struct.Struct(">HH")


def server_hello(name: str, mac_hex: str) -> bytes:
    """Body of the server hello: chosen protocol 0x01, node name, MAC (12 lower hex)."""
    return b"\x01" + name.encode() + b"\x00" + mac_hex.encode() + b"\x00"


def reject_frame(reason: str) -> bytes:
    return encode_noise_frame(b"\x01" + reason.encode("ascii"))


class _Cipher:
    """One direction of the data phase: key plus a 64-bit little-endian nonce counter."""

    __slots__ = ("_aead", "nonce")

    def __init__(self, key: bytes, nonce: int) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305  # noqa: PLC0415

        self._aead = ChaCha20Poly1305(key)
        self.nonce = nonce

    def encrypt(self, data: bytes) -> bytes:
        out = self._aead.encrypt(_NONCE.pack(self.nonce), data, None)
        self.nonce += 1
        return out

    def decrypt(self, data: bytes) -> bytes:
        out = self._aead.decrypt(_NONCE.pack(self.nonce), data, None)
        self.nonce += 1
        return out


class NoiseCodec:
    """Server side of one encrypted connection; ``error`` is set when it must be closed."""

    encrypted = True

    def __init__(self, psk: bytes, name: str, mac_hex: str) -> None:
        if len(psk) != 32:
            raise ValueError("the Noise PSK must be 32 bytes")
        self._psk = psk
        self._hello = server_hello(name, mac_hex)
        self._frames = NoiseFrameDecoder(MAX_HANDSHAKE_FRAME)
        self._proto: Any = None
        self._tx: _Cipher | None = None
        self._rx: _Cipher | None = None
        self._output: list[bytes] = []
        self.state = STATE_HELLO
        self.error: str | None = None
        self.error_kind: str | None = None

    @property
    def ready(self) -> bool:
        return self.state == STATE_READY

    def take_output(self) -> bytes:
        out = b"".join(self._output)
        self._output.clear()
        return out

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Decrypted messages of the data phase; handshake replies accumulate in the output."""
        if self.state == STATE_FAILED:
            return []
        self._frames.feed(data)
        frames: list[Frame] = []
        while self.state != STATE_FAILED:
            body = self._frames.next_body()
            if body is None:
                self._check_framing()
                break
            if self.state == STATE_READY:
                frame = self._decrypt(body)
                if frame is not None:
                    frames.append(frame)
            elif self.state == STATE_HELLO:
                self._on_client_hello(body)
            else:
                self._on_handshake(body)
        return frames

    def encode(self, frames: Iterable[Frame]) -> bytes:
        tx = self._tx
        if tx is None:
            raise RuntimeError("the Noise handshake is not complete")
        out = []
        for frame in frames:
            payload = frame.payload
            if len(payload) > MAX_MESSAGE_PAYLOAD:
                raise ValueError(f"message of {len(payload)} bytes does not fit a Noise frame")
            out.append(encode_noise_frame(tx.encrypt(_INNER.pack(frame.msg_type, len(payload)) + payload)))
        return b"".join(out)

    def _check_framing(self) -> None:
        err = self._frames.error
        if err is None:
            return
        if self.state in (STATE_HELLO, STATE_HANDSHAKE):
            reason = REJECT_BAD_INDICATOR if isinstance(err, BadIndicatorError) else REJECT_BAD_LENGTH
            self._reject(reason, err.kind)
        else:
            self._fail(str(err), err.kind)

    def _on_client_hello(self, body: bytes) -> None:
        # The prologue covers whatever the client sent, as ESPHome builds it.
        prologue = b"NoiseAPIInit" + len(body).to_bytes(2, "big") + body
        from noise.connection import NoiseConnection  # noqa: PLC0415 - see the note at the imports

        proto = NoiseConnection.from_name(NOISE_PROTOCOL_NAME)
        proto.set_as_responder()
        proto.set_psks(self._psk)
        proto.set_prologue(prologue)
        proto.start_handshake()
        self._proto = proto
        self._output.append(encode_noise_frame(self._hello))
        self.state = STATE_HANDSHAKE

    def _on_handshake(self, body: bytes) -> None:
        from cryptography.exceptions import InvalidTag  # noqa: PLC0415

        if not body:
            self._reject(REJECT_EMPTY_HANDSHAKE, "handshake")
            return
        if body[0] != 0x00:
            self._reject(REJECT_BAD_ERROR_BYTE, "handshake")
            return
        try:
            self._proto.read_message(body[1:])
            reply = bytes(self._proto.write_message())
        except InvalidTag:
            self._reject(REJECT_MAC_FAILURE, "mac_failure")
            return
        except Exception:  # noiseprotocol raises assorted types on garbage
            self._reject(REJECT_HANDSHAKE_ERROR, "handshake")
            return
        protocol = self._proto.noise_protocol
        self._tx = _Cipher(bytes(protocol.cipher_state_encrypt.k), protocol.cipher_state_encrypt.n)
        self._rx = _Cipher(bytes(protocol.cipher_state_decrypt.k), protocol.cipher_state_decrypt.n)
        self._proto = None
        self._output.append(encode_noise_frame(b"\x00" + reply))
        self._frames.set_limit(MAX_PAYLOAD)
        self.state = STATE_READY

    def _decrypt(self, body: bytes) -> Frame | None:
        from cryptography.exceptions import InvalidTag  # noqa: PLC0415 - in sys.modules since the handshake

        assert self._rx is not None
        try:
            plain = self._rx.decrypt(body)
        except InvalidTag:
            self._fail("decryption failed", "decrypt")
            return None
        if len(plain) < 4:
            self._fail(f"decrypted message of {len(plain)} bytes is too short", "malformed")
            return None
        msg_type, size = _INNER.unpack_from(plain)
        if size > len(plain) - 4:
            self._fail(f"inner length {size} exceeds the {len(plain) - 4} bytes received", "malformed")
            return None
        return Frame(msg_type, plain[4 : 4 + size])

    def _reject(self, reason: str, kind: str) -> None:
        self._output.append(reject_frame(reason))
        self._fail(reason, kind)

    def _fail(self, reason: str, kind: str) -> None:
        self.state = STATE_FAILED
        self.error = reason
        self.error_kind = kind
        self._proto = None
