"""Noise pre-shared keys as ESPHome and Home Assistant exchange them: base64 text of 32 random bytes."""

from __future__ import annotations

import base64
import binascii
import secrets

KEY_BYTES = 32


class InvalidKeyError(ValueError):
    """The text is not base64 of exactly 32 bytes, or is the reserved all-zero key."""


def generate_key() -> str:
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def decode_key(text: str | bytes) -> bytes:
    raw_text = text.decode("ascii", errors="replace") if isinstance(text, bytes) else text
    try:
        key = base64.b64decode(raw_text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKeyError("the key is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise InvalidKeyError(f"the key decodes to {len(key)} bytes, expected {KEY_BYTES}")
    if key == bytes(KEY_BYTES):
        raise InvalidKeyError("the all-zero key is reserved for provisioning")
    return key
