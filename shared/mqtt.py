"""A small asyncio front end to paho-mqtt shared by every service.

paho runs its network loop in its own thread and reconnects forever with a capped backoff; every
callback is handed to the service's event loop, so service code never runs on paho's thread.
The client remembers the latest payload of every retained topic it published and publishes them
all again after each (re)connect, so a broker that lost its store (restart without persistence,
power cut) is repopulated. MQTT 3.1.1 is used so the embedded amqtt broker and Mosquitto both work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from shared.lazy_import import defer

# paho imports urllib.request (40 modules, ~2 MB of heap in every service) only to look for an MQTT
# proxy, and only when PySocks is installed; deferred, it loads if that ever happens.
defer("urllib.request")

import paho.mqtt.client as paho  # noqa: E402 - after the deferral above
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from shared.config import MqttConfig  # noqa: E402
from shared.mqtt_url import BrokerAddress as BrokerAddress  # noqa: PLC0414, E402 - re-exported, see mqtt_url.py
from shared.mqtt_url import parse_url as parse_url  # noqa: PLC0414, E402

_LOGGER = logging.getLogger(__name__)

MAX_QUEUED = 10_000
# While the same connection failure repeats, one summary line at most this often (seconds).
FAILURE_SUMMARY_INTERVAL = 300.0


class _PahoNoise(logging.Filter):
    """paho logs 'Client is not connected' at ERROR while it reconnects or stops; we log the real event."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Client is not connected" not in record.getMessage()


logging.getLogger("paho").addFilter(_PahoNoise())
MAX_INFLIGHT = 100


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    retain: bool


MessageHandler = Callable[[Message], None]
ConnectHandler = Callable[[], None]


def failure_reason(exc: BaseException | None) -> tuple[str, str]:
    """(kind, reason) of a failed connection attempt: 'tls' with the certificate problem, else 'unreachable'."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "tls", exc.verify_message or str(exc)
    if isinstance(exc, ssl.CertificateError):  # paho's own host-name check
        return "tls", str(exc)
    if isinstance(exc, ssl.SSLError):
        return "tls", exc.reason or str(exc)
    if isinstance(exc, OSError):
        return "unreachable", exc.strerror or str(exc) or type(exc).__name__
    return "unreachable", "no reason given" if exc is None else str(exc) or type(exc).__name__


@dataclass
class FailureStreak:
    """Which connection failures to log (sans-IO): each new reason once, then a summary at most every
    ``interval`` seconds while the same reason repeats, so a broker that stays away for a day costs a
    few hundred lines instead of tens of thousands."""

    interval: float = FAILURE_SUMMARY_INTERVAL
    reason: str | None = None
    attempts: int = 0  # failures since the last line about this reason
    since: float = 0.0  # when that line was logged

    def record(self, reason: str, now: float) -> str | None:
        """'first' (log it in full), 'summary' (log ``attempts`` over ``now - since``) or None (stay quiet).

        After 'summary' the caller reads ``attempts`` and ``since`` and then calls ``summarised(now)``.
        """
        if reason != self.reason:
            self.reason, self.attempts, self.since = reason, 1, now
            return "first"
        self.attempts += 1
        if now - self.since >= self.interval:
            return "summary"
        return None

    def summarised(self, now: float) -> None:
        self.attempts, self.since = 0, now

    def clear(self) -> None:
        self.reason, self.attempts = None, 0


def paho_client(config: MqttConfig, client_id: str) -> paho.Client:
    """The one paho set-up: MQTT 3.1.1, clean session, this configuration's credentials and TLS.

    The services' MqttClient and the operator tools' session both build their client here, so they
    cannot disagree about credentials (mqtt.url's user-info is folded into mqtt.username/password
    when the configuration is loaded). TLS set-up errors (a missing CA file) raise OSError/ValueError.
    """
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv311,
        clean_session=True,
    )
    if config.username:
        client.username_pw_set(config.username, config.password)
    if parse_url(config.url).tls:
        client.tls_set(
            ca_certs=str(config.ca_file) if config.ca_file else None,
            certfile=str(config.cert_file) if config.cert_file else None,
            keyfile=str(config.key_file) if config.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
        client.tls_insecure_set(config.tls_insecure)
    return client


class MqttClient:
    """Publish/subscribe for one service; safe to use only from the event loop that started it."""

    def __init__(
        self,
        config: MqttConfig,
        client_id: str,
        *,
        will: tuple[str, bytes] | None = None,
        on_message: MessageHandler | None = None,
        failure_summary_interval: float = FAILURE_SUMMARY_INTERVAL,
    ) -> None:
        self.config = config
        self.address = parse_url(config.url)
        self.client_id = client_id
        self._on_message = on_message
        self._connect_handlers: list[ConnectHandler] = []
        self._subscriptions: dict[str, int] = {}
        self._retained: dict[str, tuple[bytes, int]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.connected = asyncio.Event()
        # Set once the broker has acknowledged every subscription of the current connection: a message
        # published after that reaches this client (after `connected` alone it may not, yet).
        self.subscribed = asyncio.Event()
        self._pending_subacks: set[int] = set()
        self.connect_count = 0
        self.dropped_publishes = 0
        self._client = paho_client(config, client_id)
        self._client.enable_logger(logging.getLogger("paho"))
        self._client.max_inflight_messages_set(MAX_INFLIGHT)
        self._client.max_queued_messages_set(MAX_QUEUED)
        # paho types the delays as int but compares them with float clocks: sub-second caps work as set.
        delay = cast(int, config.reconnect_max_delay)
        self._client.reconnect_delay_set(min(1, delay), delay)
        if will is not None:
            self._client.will_set(will[0], will[1], qos=1, retain=True)
        self._client.on_socket_open = self._on_socket_open
        self._client.on_connect = self._paho_on_connect
        self._client.on_disconnect = self._paho_on_disconnect
        self._client.on_connect_fail = self._paho_on_connect_fail
        self._connect_failures = 0
        self._failures = FailureStreak(failure_summary_interval)
        self._stopping = False
        self._client.on_message = self._paho_on_message
        self._client.on_subscribe = self._paho_on_subscribe

    # --- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin connecting in the background (forever); returns at once."""
        self._loop = asyncio.get_running_loop()
        self._client.connect_async(self.address.host, self.address.port, keepalive=self.config.keepalive)
        self._client.loop_start()

    async def wait_connected(self, timeout: float | None = None) -> bool:
        return await _wait_set(self.connected, timeout)

    async def wait_subscribed(self, timeout: float | None = None) -> bool:
        """Connected, and every subscription acknowledged by the broker."""
        return await _wait_set(self.subscribed, timeout)

    async def stop(self, final: list[tuple[str, bytes]] | None = None, timeout: float = 2.0) -> None:
        """Publish the final retained messages (e.g. 'offline'), then disconnect cleanly."""
        if self.connected.is_set():
            infos = [
                self._client.publish(topic, payload, qos=1, retain=True) for topic, payload in final or ()
            ]
            await asyncio.to_thread(_wait_published, infos, timeout)
        self._stopping = True
        self.connected.clear()
        self.subscribed.clear()
        if self._client.is_connected():
            self._client.disconnect()
        await asyncio.to_thread(_loop_stop, self._client)
        self.connected.clear()

    # --- API ---------------------------------------------------------------------------------

    def add_connect_handler(self, handler: ConnectHandler) -> None:
        """Called in the event loop after every (re)connect, after subscriptions and retained republish."""
        self._connect_handlers.append(handler)

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        self._subscriptions[topic_filter] = qos
        if self.connected.is_set():
            self._send_subscribe(topic_filter, qos)

    def unsubscribe(self, topic_filter: str) -> None:
        if self._subscriptions.pop(topic_filter, None) is not None and self.connected.is_set():
            self._client.unsubscribe(topic_filter)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bool:
        """Queue a publish. Retained payloads are remembered and re-sent after every reconnect.

        Returns False when the message could not be handed to the broker now (a retained one is
        still sent on reconnect; others are dropped and counted).
        """
        if "+" in topic or "#" in topic:
            raise ValueError(f"refusing to publish to wildcard topic {topic!r}")
        if retain:
            self._retained[topic] = (payload, qos)
        if not self.connected.is_set():
            if not retain:
                self.dropped_publishes += 1
            return False
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            if not retain:
                self.dropped_publishes += 1
            return False
        return True

    def publish_tracked(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> paho.MQTTMessageInfo | None:
        """Queue a publish and return its paho handle (`is_published()` once the broker acknowledged a
        QoS 1 message); None when it could not be handed over (not connected, queue full)."""
        if "+" in topic or "#" in topic:
            raise ValueError(f"refusing to publish to wildcard topic {topic!r}")
        if not self.connected.is_set():
            return None
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            return None
        if retain:
            self._retained[topic] = (payload, qos)
        return info

    def clear_retained(self, topic: str) -> None:
        """Remove a retained message from the broker (empty retained payload)."""
        self._retained.pop(topic, None)
        if self.connected.is_set():
            self._client.publish(topic, b"", qos=1, retain=True)

    # --- paho thread -> event loop ------------------------------------------------------------

    @staticmethod
    def _on_socket_open(client: paho.Client, userdata: Any, sock: Any) -> None:
        # paho never sets TCP_NODELAY; without it a QoS 1 round trip stalls ~40 ms on delayed ACKs.
        with contextlib.suppress(OSError, AttributeError):  # TLS wrappers and odd sockets
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _paho_on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            self._call_soon(self._log_failure, "refused", str(reason))
            return
        self._call_soon(self._handle_connected)

    def _paho_on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        # paho calls this inside its `except OSError:` around the attempt: the exception says why.
        self._call_soon(self._log_failure, *failure_reason(sys.exc_info()[1]))

    def _paho_on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self._call_soon(self._handle_disconnected, str(reason))

    def _paho_on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if self._on_message is not None:
            self._call_soon(
                self._on_message, Message(message.topic, bytes(message.payload), bool(message.retain))
            )

    def _paho_on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: Any, props: Any
    ) -> None:
        self._call_soon(self._handle_suback, mid)

    def _call_soon(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # loop closed between the check and the call
            loop.call_soon_threadsafe(callback, *args)

    # --- event loop side -----------------------------------------------------------------------

    def _log_failure(self, kind: str, reason: str) -> None:
        """A failed attempt: in full when its reason is new, then a summary every few minutes at most."""
        self._connect_failures += 1
        now = time.monotonic()
        shown = f"refused: {reason}" if kind == "refused" else reason
        verdict = self._failures.record(f"{kind}: {reason}", now)
        if verdict is None:
            _LOGGER.debug(
                "MQTT broker %s: attempt %d failed (%s)", self.address, self._connect_failures, shown
            )
        elif verdict == "summary":
            _LOGGER.warning(
                "still cannot reach MQTT broker %s (%d attempts in the last %.1f min): %s",
                self.address,
                self._failures.attempts,
                (now - self._failures.since) / 60,
                shown,
            )
            self._failures.summarised(now)
        elif kind == "refused":
            _LOGGER.warning(
                "MQTT broker %s refused the connection: %s; check mqtt.username / RENOGY_MQTT_USERNAME and "
                "mqtt.password / RENOGY_MQTT_PASSWORD (or mqtt://USER:PASSWORD@HOST in mqtt.url)",
                self.address,
                reason,
            )
        elif kind == "tls":
            _LOGGER.warning(
                "TLS with MQTT broker %s failed: %s; check mqtt.ca_file / RENOGY_MQTT_CA_FILE (the CA that "
                "signed the broker's certificate) and the host in mqtt.url (mqtt.tls_insecure skips the "
                "host-name check)",
                self.address,
                reason,
            )
        else:
            _LOGGER.warning(
                "cannot reach MQTT broker %s (%s); retrying every %s s at most",
                self.address,
                reason,
                f"{self.config.reconnect_max_delay:g}",
            )

    def _handle_connected(self) -> None:
        self._connect_failures = 0
        self._failures.clear()
        self.connect_count += 1
        if self.connect_count == 1:
            _LOGGER.info("connected to MQTT broker %s as %s", self.address, self.client_id)
        else:
            _LOGGER.info("reconnected to MQTT broker %s (connection %d)", self.address, self.connect_count)
        self.connected.set()
        self._pending_subacks.clear()
        for topic_filter, qos in self._subscriptions.items():
            self._send_subscribe(topic_filter, qos)
        if not self._pending_subacks:
            self.subscribed.set()
        for topic, (payload, qos) in self._retained.items():
            self._client.publish(topic, payload, qos=qos, retain=True)
        for handler in self._connect_handlers:
            try:
                handler()
            except Exception:
                _LOGGER.exception("MQTT connect handler %r failed", handler)

    def _send_subscribe(self, topic_filter: str, qos: int) -> None:
        result, mid = self._client.subscribe(topic_filter, qos)
        if result == paho.MQTT_ERR_SUCCESS and mid is not None:
            self._pending_subacks.add(mid)
            self.subscribed.clear()

    def _handle_suback(self, mid: int) -> None:
        self._pending_subacks.discard(mid)
        if not self._pending_subacks and self.connected.is_set():
            self.subscribed.set()

    def _handle_disconnected(self, reason: str) -> None:
        if self.connected.is_set() and not self._stopping:
            _LOGGER.warning("lost MQTT broker %s (%s); reconnecting", self.address, reason)
        self.connected.clear()
        self.subscribed.clear()
        self._pending_subacks.clear()


async def _wait_set(event: asyncio.Event, timeout: float | None) -> bool:
    """Whether ``event`` was set within ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


def _loop_stop(client: paho.Client) -> None:
    """paho's loop_stop, without its race: the network thread clears ``_thread`` itself when it ends,
    which can happen between loop_stop's None check and its join (AttributeError on None.join)."""
    try:
        client.loop_stop()
    except AttributeError:
        if getattr(client, "_thread", None) is not None:
            raise  # not the race: the thread is still there


def _wait_published(infos: list[paho.MQTTMessageInfo], timeout: float) -> None:
    for info in infos:
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError):
            return
