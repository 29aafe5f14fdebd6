"""The Noise pre-shared key: configured (file/env) beats provisioned (state dir); none means plaintext.

Home Assistant provisions a key over a plaintext session with NoiseEncryptionSetKeyRequest; it is
written atomically with mode 0600 and from then on only Noise connections are accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from enum import Enum
from pathlib import Path

from shared.noise_key import InvalidKeyError, decode_key, generate_key

_LOGGER = logging.getLogger(__name__)

KEY_FILE = "gateway_api_key"
DEFAULT_INSTANCE = "default"


def key_file_name(instance: str = DEFAULT_INSTANCE) -> str:
    """The provisioned-key file of one gateway instance: two gateways on one state dir never share it."""
    return KEY_FILE if instance == DEFAULT_INSTANCE else f"{KEY_FILE}.{instance}"


class KeySource(Enum):
    NONE = "none"
    CONFIG = "config"
    PROVISIONED = "provisioned"


def new_key_text() -> str:
    """A fresh key as `renogy-proxy keygen` prints it (base64 of 32 random bytes)."""
    return generate_key()


class KeyStore:
    """Current PSK and its source; ``listeners`` hear about provisioning."""

    def __init__(self, configured: str | None, state_dir: Path, instance: str = DEFAULT_INSTANCE) -> None:
        self.path = state_dir / key_file_name(instance)
        self._configured = decode_key(configured) if configured else None
        self._provisioned: bytes | None = None
        self.listeners: list[Callable[[], None]] = []

    @property
    def psk(self) -> bytes | None:
        return self._configured if self._configured is not None else self._provisioned

    @property
    def source(self) -> KeySource:
        if self._configured is not None:
            return KeySource.CONFIG
        return KeySource.PROVISIONED if self._provisioned is not None else KeySource.NONE

    @property
    def encryption_required(self) -> bool:
        return self.psk is not None

    def load(self) -> None:
        """Read a provisioned key (blocking)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return
        except OSError as exc:
            _LOGGER.error("cannot read the provisioned API key %s: %s", self.path, exc)
            return
        try:
            self._provisioned = decode_key(text)
        except InvalidKeyError as exc:
            _LOGGER.error(
                "ignoring the provisioned API key in %s: %s; Home Assistant can provision a new one",
                self.path,
                exc,
            )
            return
        if self._configured is not None:
            _LOGGER.info(
                "gateway.api_key is set; it takes precedence over the provisioned key in %s", self.path
            )

    async def provision(self, key: bytes) -> bool:
        """Store a key sent by Home Assistant (base64 text); an empty key clears it."""
        if self._configured is not None:
            _LOGGER.warning(
                "refusing a new API key from the client: gateway.api_key / RENOGY_API_KEY is configured"
            )
            return False
        if not key:
            try:
                await asyncio.to_thread(_remove, self.path)
            except OSError as exc:
                _LOGGER.error("cannot remove the API key %s: %s", self.path, exc)
                return False
            self._provisioned = None
            _LOGGER.warning("the provisioned API key was cleared; plaintext connections are accepted again")
            self._notify()
            return True
        try:
            raw = decode_key(key)
        except InvalidKeyError as exc:
            _LOGGER.warning("refusing a new API key from the client: %s", exc)
            return False
        try:
            await asyncio.to_thread(_write_private, self.path, key.decode("ascii").strip() + "\n")
        except OSError as exc:
            _LOGGER.error("cannot store the API key in %s: %s", self.path, exc)
            return False
        self._provisioned = raw
        _LOGGER.info(
            "API encryption key provisioned and stored in %s; only encrypted connections from now on",
            self.path,
        )
        self._notify()
        return True

    def _notify(self) -> None:
        for listener in self.listeners:
            listener()


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
