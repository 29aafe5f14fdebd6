"""The MQTT session of the operator tools: connect, subscribe, collect the retained state (synchronous).

Everything in services.ops is a short-lived CLI, so it uses paho synchronously (no event loop); the
paho client is set up by shared.mqtt (credentials, TLS), exactly as the services' own client.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from shared.config import MqttConfig

EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1
EXIT_UNREACHABLE = 2
QUIET_AFTER_SUBSCRIBE = 0.25


class BrokerUnreachable(Exception):
    """The broker could not be reached or refused us; the message names the URL and the settings."""


# --- reading retained state ------------------------------------------------------------------------


def _redact_url(url: str) -> str:
    """The URL without a password in its user-info part (works on malformed URLs too)."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


def _settings_hint(what: str) -> str:
    hints = {
        "url": "check mqtt.url / RENOGY_MQTT_URL / --mqtt",
        "auth": "check mqtt.username / RENOGY_MQTT_USERNAME and mqtt.password / RENOGY_MQTT_PASSWORD",
        "tls": "check mqtt.ca_file / RENOGY_MQTT_CA_FILE (and mqtt.tls_insecure for self-signed names)",
    }
    return hints[what]


@dataclass
class Retained:
    """Messages received after subscribing (retained state first), by topic."""

    messages: dict[str, bytes] = field(default_factory=dict)
    complete: bool = True  # False when the timeout ended the wait before the condition held

    def json(self, topic: str) -> dict[str, Any] | None:
        payload = self.messages.get(topic)
        if not payload:
            return None
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None
        return obj if isinstance(obj, dict) else None


class _Session:
    """One paho connection that subscribes and collects; used from a single thread plus paho's."""

    def __init__(self, mqtt: MqttConfig, purpose: str) -> None:
        from shared.mqtt import paho_client, parse_url  # noqa: PLC0415 - keep `renogy-proxy --help` fast

        self.mqtt = mqtt
        self.url = _redact_url(mqtt.url)
        try:
            self.address = parse_url(mqtt.url)
        except ValueError as exc:
            reason = str(exc).replace(mqtt.url, self.url)
            raise BrokerUnreachable(f"{reason}; {_settings_hint('url')}") from None
        self._cond = threading.Condition()
        self._connack: str | None = None
        self._refused: str | None = None
        self._subscribed = False
        self._last_message = 0.0
        self.messages: dict[str, bytes] = {}
        client_id = f"renogy-{purpose}-{os.getpid()}-{secrets.token_hex(3)}"
        try:
            self.client = paho_client(mqtt, client_id)
        except (OSError, ValueError) as exc:
            raise BrokerUnreachable(
                f"cannot set up TLS for {self.url} ({exc}); {_settings_hint('tls')}"
            ) from None
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        with self._cond:
            if reason.is_failure:
                self._refused = str(reason)
            else:
                self._connack = "ok"
            self._cond.notify_all()

    def _on_subscribe(self, client: Any, userdata: Any, mid: Any, reasons: Any, props: Any) -> None:
        with self._cond:
            self._subscribed = True
            self._last_message = time.monotonic()
            self._cond.notify_all()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._cond:
            self.messages[message.topic] = bytes(message.payload)
            self._last_message = time.monotonic()
            self._cond.notify_all()

    def connect(self, timeout: float) -> float:
        """CONNECT and wait for CONNACK; returns the round-trip time, raises BrokerUnreachable."""
        started = time.monotonic()
        self.client.connect_timeout = max(0.1, timeout)
        try:
            self.client.connect(self.address.host, self.address.port, keepalive=max(5, round(timeout) + 5))
        except ssl.SSLError as exc:
            raise BrokerUnreachable(
                f"TLS with the MQTT broker {self.url} failed ({exc}); {_settings_hint('tls')}"
            ) from None
        except OSError as exc:
            reason = exc.strerror or exc.__class__.__name__
            raise BrokerUnreachable(
                f"cannot reach the MQTT broker {self.url} ({reason}); is it running? {_settings_hint('url')}"
            ) from None
        self.client.loop_start()
        deadline = started + timeout
        with self._cond:
            while self._connack is None and self._refused is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.close()
                    raise BrokerUnreachable(
                        f"the MQTT broker {self.url} accepted TCP but sent no CONNACK within {timeout:.0f} s "
                        f"(is it an MQTT port?); {_settings_hint('url')}"
                    )
                self._cond.wait(left)
        if self._refused is not None:
            self.close()
            raise BrokerUnreachable(
                f"the MQTT broker {self.url} refused the connection: {self._refused}; {_settings_hint('auth')}"
            )
        return time.monotonic() - started

    def collect(
        self,
        filters: Iterable[str],
        deadline: float,
        until: Callable[[Mapping[str, bytes]], bool] | None = None,
        on_wait: Callable[[Mapping[str, bytes]], None] | None = None,
    ) -> Retained:
        """Subscribe, then wait for the retained burst to settle and ``until`` to hold (or the deadline)."""
        self.client.subscribe([(topic_filter, 1) for topic_filter in filters])
        last_report = time.monotonic()
        with self._cond:
            while True:
                now = time.monotonic()
                settled = self._subscribed and now - self._last_message >= QUIET_AFTER_SUBSCRIBE
                if settled and (until is None or until(self.messages)):
                    return Retained(dict(self.messages), complete=True)
                if now >= deadline:
                    return Retained(dict(self.messages), complete=until is None and self._subscribed)
                if on_wait is not None and now - last_report >= 1.0:
                    last_report = now
                    on_wait(dict(self.messages))
                self._cond.wait(min(deadline - now, QUIET_AFTER_SUBSCRIBE, 1.0))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        with contextlib.suppress(Exception):
            self.client.loop_stop()
