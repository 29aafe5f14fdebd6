"""Operations commands: `status`, `diagnose` and the container `healthcheck`, all read from MQTT.

Everything here is a short-lived CLI, so it uses paho synchronously (no event loop) and imports
the heavier pieces (D-Bus, package metadata) only where they are needed. Exit codes: 0 healthy,
1 unhealthy, 2 broker unreachable (or refused the connection).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import orjson

from shared.config import Config, MqttConfig, effective
from shared.topics import Topics

EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1
EXIT_UNREACHABLE = 2

# The aggregator and the gateway publish health this often (HEALTH_INTERVAL in their service modules;
# a test keeps these equal); three missed beats make a service stale.
SERVICE_HEALTH_INTERVAL = 30.0
MISSED_BEATS = 3
MIN_POLL_HORIZON = 10.0  # as the aggregator: back-to-back polling (0) still gets a sensible horizon
QUIET_AFTER_SUBSCRIBE = 0.25
SERVICES = ("reader", "aggregator", "gateway")


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
        import paho.mqtt.client as paho  # noqa: PLC0415 - keep `renogy-proxy --help` fast
        from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

        from shared.mqtt import parse_url  # noqa: PLC0415

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
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311, clean_session=True
        )
        if mqtt.username:
            self.client.username_pw_set(mqtt.username, mqtt.password)
        if self.address.tls:
            try:
                self.client.tls_set(
                    ca_certs=str(mqtt.ca_file) if mqtt.ca_file else None,
                    certfile=str(mqtt.cert_file) if mqtt.cert_file else None,
                    keyfile=str(mqtt.key_file) if mqtt.key_file else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (OSError, ValueError) as exc:
                raise BrokerUnreachable(
                    f"cannot set up TLS for {self.url} ({exc}); {_settings_hint('tls')}"
                ) from None
            self.client.tls_insecure_set(mqtt.tls_insecure)
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


# --- evaluation -----------------------------------------------------------------------------------


@dataclass
class ServiceRow:
    service: str
    instance: str
    state: str  # online, offline, missing
    age_s: float | None  # since the newest state or health message
    max_age_s: float
    host: str | None = None
    version: str | None = None
    detail: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.service}/{self.instance}"


@dataclass
class BatteryRow:
    bt2: str
    slave_id: int
    age_s: float
    max_age_s: float
    level: float | None = None
    voltage: float | None = None
    current: float | None = None
    power: float | None = None
    link_quality: int | None = None
    complete: bool = True
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"battery {self.slave_id} @{self.bt2}"


@dataclass
class Report:
    broker: str
    services: list[ServiceRow]
    batteries: list[BatteryRow]
    problems: list[str]

    @property
    def healthy(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "broker": self.broker,
            "services": [{**asdict(row), "name": row.name} for row in self.services],
            "batteries": [{**asdict(row), "name": row.name} for row in self.batteries],
            "problems": self.problems,
        }


def _number(obj: Mapping[str, Any] | None, key: str) -> float | None:
    value = None if obj is None else obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _poll_horizon(poll_interval: float) -> float:
    return MISSED_BEATS * max(poll_interval, MIN_POLL_HORIZON)


def service_max_age(service: str, config: Config, health: Mapping[str, Any] | None = None) -> float:
    """How old a service's newest state/health may be before it counts as stale."""
    if service != "reader":
        return MISSED_BEATS * SERVICE_HEALTH_INTERVAL
    poll = _number(health, "poll_interval")
    reader = config.reader
    # One cycle may include a full scan and a connect attempt on top of the poll interval.
    return (
        _poll_horizon(reader.poll_interval if poll is None else poll)
        + reader.scan_timeout
        + reader.connect_timeout
    )


def _service_row(
    service: str,
    instance: str,
    *,
    state: Mapping[str, Any] | None,
    health: Mapping[str, Any] | None,
    config: Config,
    now: float,
) -> ServiceRow:
    max_age = service_max_age(service, config, health)
    if state is None:
        row = ServiceRow(service, instance, "missing", None, max_age)
        row.problems.append(
            f"{row.name}: never published its state (not started yet, or another mqtt.root_topic "
            f"than {config.mqtt.root_topic!r}?)"
        )
        return row
    seen = [ts for ts in (_number(state, "ts"), _number(health, "ts")) if ts is not None]
    age = max(0.0, now - max(seen)) if seen else None
    status = str(state.get("state") or "unknown")
    row = ServiceRow(
        service,
        instance,
        status,
        age,
        max_age,
        host=str(state.get("host")) if state.get("host") else None,
        version=str(state.get("version")) if state.get("version") else None,
        detail=_detail(service, health),
    )
    if status != "online":
        row.problems.append(f"{row.name} is {status}")
    elif age is None or age > max_age:
        heard = "never" if age is None else f"{age:.0f} s ago"
        row.problems.append(f"{row.name}: last heard {heard}, more than {max_age:.0f} s (hung or cut off?)")
    return row


def _detail(service: str, health: Mapping[str, Any] | None) -> str:
    if not health:
        return ""
    if service == "reader":
        name = health.get("bt2_name") or health.get("bt2") or "no BT-2 yet"
        parts = [f"BT-2 {name}", "connected" if health.get("connected") else "not connected"]
        if health.get("rssi") is not None:
            parts.append(f"rssi {health['rssi']} dBm")
        scanner = health.get("scanner")
        if isinstance(scanner, dict) and scanner.get("state") not in (None, "running"):
            parts.append(f"scanner {scanner['state']}")
        errors = health.get("errors")
        if isinstance(errors, dict) and errors:
            parts.append("errors " + ", ".join(f"{k} {v}" for k, v in sorted(errors.items())))
        return ", ".join(parts)
    if service == "aggregator":
        parts = [
            f"{health.get('batteries_known', '?')} batteries",
            f"{health.get('devices_published', '?')} devices",
        ]
        if health.get("persist_errors"):
            parts.append(f"{health['persist_errors']} save errors")
        return ", ".join(parts)
    if service == "gateway":
        return (
            f"{health.get('clients', '?')} API clients, {health.get('entities', '?')} entities, "
            f"encryption {health.get('encryption', '?')}"
        )
    return ""


def evaluate(
    retained: Retained, config: Config, *, now: float | None = None, max_age: float | None = None
) -> Report:
    """Turn retained bridge and reading messages into rows and the list of problems."""
    now = time.time() if now is None else now
    topics = Topics(config.mqtt.root_topic)
    states: dict[tuple[str, str], dict[str, Any]] = {}
    healths: dict[tuple[str, str], dict[str, Any]] = {}
    readings: dict[tuple[str, int], dict[str, Any]] = {}
    for topic in retained.messages:
        bridge = topics.parse_bridge(topic)
        if bridge is not None:
            body = retained.json(topic)
            if body is not None:
                (states if bridge[2] == "state" else healths)[bridge[:2]] = body
            continue
        identity = topics.parse_reading(topic)
        if identity is not None:
            body = retained.json(topic)
            if body is not None:
                readings[identity] = body
    wanted = {
        ("reader", config.reader.instance),
        ("aggregator", config.aggregator.instance),
        ("gateway", config.gateway.instance),
    }
    keys = sorted(
        wanted | {k for k in states if k[0] in SERVICES}, key=lambda k: (SERVICES.index(k[0]), k[1])
    )
    services = [
        _service_row(s, i, state=states.get((s, i)), health=healths.get((s, i)), config=config, now=now)
        for s, i in keys
    ]
    reader_health = {
        str(h.get("bt2")): h for (service, _), h in healths.items() if service == "reader" and h.get("bt2")
    }
    batteries = [
        _battery_row(
            bt2, slave, reading=body, health=reader_health.get(bt2), config=config, now=now, max_age=max_age
        )
        for (bt2, slave), body in sorted(readings.items())
    ]
    problems = [p for row in services for p in row.problems] + [p for row in batteries for p in row.problems]
    readers_online = any(r.service == "reader" and r.state == "online" for r in services)
    if not batteries and readers_online:
        problems.append("no battery reading on MQTT yet (the reader has not read a battery)")
    if not retained.complete:
        problems.append("the broker did not deliver the retained state in time (--timeout)")
    return Report(_redact_url(config.mqtt.url), services, batteries, problems)


def _battery_row(
    bt2: str,
    slave: int,
    *,
    reading: Mapping[str, Any],
    health: Mapping[str, Any] | None,
    config: Config,
    now: float,
    max_age: float | None,
) -> BatteryRow:
    poll = _number(health, "poll_interval")
    limit = (
        max_age
        if max_age is not None
        else _poll_horizon(config.reader.poll_interval if poll is None else poll)
    )
    ts = _number(reading, "ts")
    row = BatteryRow(bt2, slave, max(0.0, now - ts) if ts is not None else float("inf"), limit)
    row.complete = reading.get("complete") is not False
    voltage, current = _number(reading, "voltage"), _number(reading, "current")
    remaining, capacity = _number(reading, "remaining_charge"), _number(reading, "capacity")
    row.voltage, row.current = voltage, current
    if voltage is not None and current is not None:
        row.power = voltage * current
    if remaining is not None and capacity:
        row.level = min(100.0, max(0.0, 100.0 * remaining / capacity))
    per_battery = health.get("batteries") if health else None
    if isinstance(per_battery, dict) and isinstance(per_battery.get(str(slave)), dict):
        quality = per_battery[str(slave)].get("link_quality")
        row.link_quality = quality if isinstance(quality, int) else None
    if row.age_s > limit:
        row.problems.append(
            f"{row.name}: last reading {row.age_s:.0f} s old, more than {limit:.0f} s "
            "(out of range, wrong slave id, or the reader is stuck?)"
        )
    return row


# --- rendering ------------------------------------------------------------------------------------


def _age(seconds: float | None) -> str:
    if seconds is None or seconds == float("inf"):
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def _fmt(value: float | None, unit: str, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f} {unit}".strip()


def render_table(report: Report) -> str:
    """One table: services first, then batteries; a verdict line at the end."""
    header = ("NAME", "STATE", "AGE", "LEVEL", "VOLTAGE", "CURRENT", "POWER", "LINK", "DETAIL")
    rows: list[tuple[str, ...]] = []
    for svc in report.services:
        state = svc.state if not svc.problems or svc.state != "online" else "stale"
        rows.append((svc.name, state, _age(svc.age_s), "", "", "", "", "", svc.detail))
    for bat in report.batteries:
        state = "stale" if bat.problems else ("ok" if bat.complete else "partial")
        rows.append(
            (
                bat.name,
                state,
                _age(bat.age_s),
                _fmt(bat.level, "%", 1),
                _fmt(bat.voltage, "V", 2),
                _fmt(bat.current, "A", 2),
                _fmt(bat.power, "W", 1),
                "-" if bat.link_quality is None else f"{bat.link_quality}%",
                "",
            )
        )
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))] if rows else []
    right = {2, 3, 4, 5, 6, 7}
    lines = []
    for row in [header, *rows] if rows else [header]:
        cells = [
            (cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])) if widths else cell
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    lines.append("")
    if report.healthy:
        lines.append(f"healthy (broker {report.broker})")
    else:
        lines.append(f"UNHEALTHY (broker {report.broker}):")
        lines.extend(f"  - {problem}" for problem in report.problems)
    return "\n".join(lines)


def _progress(stream: TextIO) -> Callable[[str], None]:
    def say(text: str) -> None:
        stream.write(text + "\n")
        stream.flush()

    return say


# --- status ---------------------------------------------------------------------------------------


def status_filters(topics: Topics) -> list[str]:
    return [topics.bridge_state_filter, topics.bridge_health_filter, topics.reading_filter]


def read_status(
    config: Config,
    *,
    timeout: float = 5.0,
    wait: float = 0.0,
    max_age: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Connect, collect the retained state and evaluate it; with ``wait``, keep going until healthy."""
    session = _Session(config.mqtt, "status")
    started = time.monotonic()
    session.connect(timeout)
    topics = Topics(config.mqtt.root_topic)
    until = None
    on_wait = None
    if wait > 0:

        def until(messages: Mapping[str, bytes]) -> bool:
            return evaluate(Retained(dict(messages)), config, max_age=max_age).healthy

        def on_wait(messages: Mapping[str, bytes]) -> None:
            if progress is not None:
                report = evaluate(Retained(dict(messages)), config, max_age=max_age)
                online = sum(1 for s in report.services if s.state == "online" and not s.problems)
                fresh = sum(1 for b in report.batteries if not b.problems)
                progress(
                    f"waiting ({time.monotonic() - started:.0f} of {wait:.0f} s): {online} of "
                    f"{len(report.services)} services up, {fresh} batteries with fresh readings"
                )

    try:
        retained = session.collect(
            status_filters(topics), started + (wait or timeout), until=until, on_wait=on_wait
        )
    finally:
        session.close()
    if wait > 0:
        retained.complete = True  # a wait that ran out is reported through the rows' own problems
    return evaluate(retained, config, max_age=max_age)


def status(args: argparse.Namespace, config: Config) -> int:
    """`renogy-proxy status`: one table of services and batteries; the exit code says healthy or not."""
    wait = float(getattr(args, "wait", 0.0) or 0.0)
    say = _progress(sys.stderr)
    if wait > 0:
        url = _redact_url(config.mqtt.url)
        say(f"waiting up to {wait:.0f} s for every service and battery to report on {url}")
    try:
        report = read_status(config, timeout=args.timeout, wait=wait, max_age=args.max_age, progress=say)
    except BrokerUnreachable as exc:
        if args.json:
            print(orjson.dumps({"healthy": False, "error": str(exc)}).decode())
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.json:
        print(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(render_table(report))
    return EXIT_HEALTHY if report.healthy else EXIT_UNHEALTHY


# --- healthcheck ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    healthy: bool
    text: str


def check_service(config: Config, service: str, instance: str, *, timeout: float = 5.0) -> Verdict:
    """Is this instance online, and has it spoken recently (its retained state/health on the broker)?"""
    topics = Topics(config.mqtt.root_topic)
    state_topic, health_topic = (
        topics.bridge_state(service, instance),
        topics.bridge_health(service, instance),
    )
    session = _Session(config.mqtt, "healthcheck")
    started = time.monotonic()
    session.connect(timeout)
    try:
        # Retained messages follow the SUBACK at once, so the quiet period after it is enough.
        retained = session.collect([state_topic, health_topic], started + timeout)
    finally:
        session.close()
    row = _service_row(
        service,
        instance,
        state=retained.json(state_topic),
        health=retained.json(health_topic),
        config=config,
        now=time.time(),
    )
    if row.problems:
        return Verdict(False, row.problems[0])
    return Verdict(True, f"{row.name} online, last heard {_age(row.age_s)} ago")


HELLO_TIMEOUT = 3.0
# The healthcheck runs every 30 s on a Pi: it avoids importing the protobuf table (~0.3 s of CPU);
# tests/gateway/test_gw_messages.py checks these against it.
MSG_PING_REQUEST = 7
MSG_PING_RESPONSE = 8
NOISE_CLIENT_HELLO = b"\x01\x00\x00"


def probe_api(host: str, port: int, *, encrypted: bool, timeout: float = HELLO_TIMEOUT) -> Verdict:
    """Does the ESPHome API answer? Plaintext: a ping; Noise: the server hello (no log lines either way)."""
    request = NOISE_CLIENT_HELLO if encrypted else bytes((0, 0, MSG_PING_REQUEST))
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(request)
            reply = sock.recv(256)
    except OSError as exc:
        return Verdict(False, f"ESPHome API on {host}:{port} does not answer ({exc.strerror or exc})")
    if not reply:
        return Verdict(False, f"ESPHome API on {host}:{port} closed the connection without answering")
    if reply[0] == 0x01 and len(reply) >= 4:
        body = reply[3:]
        if body[:1] == b"\x01" and b"\x00" in body[1:]:
            name = body[1:].split(b"\x00", 1)[0].decode(errors="replace")
            if encrypted:
                return Verdict(True, f"ESPHome API on {host}:{port} answers (Noise, node {name})")
        return Verdict(True, f"ESPHome API on {host}:{port} answers (it expects Noise encryption)")
    if reply[0] == 0x00:
        if not encrypted and reply[1:3] == bytes((0, MSG_PING_RESPONSE)):
            return Verdict(True, f"ESPHome API on {host}:{port} answers (plaintext)")
        return Verdict(True, f"ESPHome API on {host}:{port} answers (plaintext only)")
    return Verdict(False, f"ESPHome API on {host}:{port} sent an unexpected reply {reply[:8].hex()}")


def _api_target(config: Config) -> tuple[str, int, bool]:
    from services.gateway.keystore import key_file_name  # noqa: PLC0415 - small module, no heavy imports

    gateway = config.gateway
    host = gateway.bind if gateway.bind not in ("", "0.0.0.0", "::") else "127.0.0.1"
    encrypted = bool(gateway.api_key) or (config.state_dir / key_file_name(gateway.instance)).exists()
    return host, gateway.api_port, encrypted


def healthcheck(args: argparse.Namespace, config: Config) -> int:
    """`renogy-proxy healthcheck SERVICE`: for docker compose and monitors; one line, exit code 0/1/2."""
    service = args.service
    instance = (
        args.instance
        or {
            "reader": config.reader.instance,
            "aggregator": config.aggregator.instance,
            "gateway": config.gateway.instance,
        }[service]
    )
    try:
        verdict = check_service(config, service, instance, timeout=args.timeout)
    except BrokerUnreachable as exc:
        print(f"unhealthy: {exc}")
        return EXIT_UNREACHABLE
    verdicts = [verdict]
    if service == "gateway" and config.gateway.api_port:
        host, port, encrypted = _api_target(config)
        verdicts.append(probe_api(host, port, encrypted=encrypted, timeout=min(args.timeout, HELLO_TIMEOUT)))
    healthy = all(v.healthy for v in verdicts)
    print(("healthy: " if healthy else "unhealthy: ") + "; ".join(v.text for v in verdicts))
    return EXIT_HEALTHY if healthy else EXIT_UNHEALTHY


# --- diagnose -------------------------------------------------------------------------------------

PACKAGES = (
    "renogy-bt-esphome-proxy",
    "bleak",
    "dbus-fast",
    "aioesphomeapi",
    "paho-mqtt",
    "amqtt",
    "zeroconf",
    "noiseprotocol",
    "orjson",
    "psutil",
)
DBUS_SOCKET = Path("/run/dbus/system_bus_socket")


def _versions() -> dict[str, str]:
    from importlib import metadata  # noqa: PLC0415

    out = {"python": f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})"}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["bluez"] = _bluez_version()
    return out


def _bluez_version() -> str:
    tool = shutil.which("bluetoothctl")
    if tool is None:
        return "bluetoothctl not installed (BlueZ version unknown here; in docker, check the host)"
    try:
        done = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=3, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bluetoothctl --version failed: {exc}"
    return (done.stdout or done.stderr).strip() or f"bluetoothctl exited with {done.returncode}"


def in_container() -> str | None:
    """'docker', 'podman' or another runtime name when running in a container, else None."""
    if Path("/.dockerenv").exists():
        return "docker"
    if Path("/run/.containerenv").exists():
        return "podman"
    runtime = os.environ.get("container")  # noqa: SIM112 - set by container runtimes
    return runtime or None


def _platform() -> dict[str, str]:
    info = {"system": platform.platform(), "machine": platform.machine(), "hostname": socket.gethostname()}
    for path in (Path("/proc/device-tree/model"), Path("/sys/firmware/devicetree/base/model")):
        with contextlib.suppress(OSError):
            info["board"] = path.read_text(errors="replace").strip("\x00\n ")
            break
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                info["os"] = line.partition("=")[2].strip('"')
    info["container"] = in_container() or "none"
    info["user"] = f"uid {os.getuid()} gid {os.getgid()}" if hasattr(os, "getuid") else "?"
    return info


def _rfkill() -> list[str]:
    """Soft/hard block state of every Bluetooth radio, from sysfs (no rfkill binary needed)."""
    out = []
    base = Path("/sys/class/rfkill")
    with contextlib.suppress(OSError):
        for entry in sorted(base.iterdir()):
            try:
                if (entry / "type").read_text().strip() != "bluetooth":
                    continue
                name = (entry / "name").read_text().strip()
                soft = (entry / "soft").read_text().strip() == "1"
                hard = (entry / "hard").read_text().strip() == "1"
            except OSError:
                continue
            state = "blocked" if soft or hard else "unblocked"
            reasons = [r for r, on in (("soft", soft), ("hard", hard)) if on]
            suffix = f" ({' and '.join(reasons)}; try 'rfkill unblock bluetooth')" if reasons else ""
            out.append(f"{name}: {state}{suffix}")
    return out


def _bluez_check(adapter: str, timeout: float = 3.0) -> dict[str, str]:
    """Is BlueZ on the system bus, and what does it say about the adapter?"""
    import asyncio  # noqa: PLC0415

    async def probe() -> dict[str, str]:
        from dbus_fast import Message  # noqa: PLC0415 - Linux only

        from services.reader.adapter import adapter_properties, system_bus  # noqa: PLC0415

        result: dict[str, str] = {}
        async with asyncio.timeout(timeout), system_bus() as bus:
            reply = await bus.call(
                Message(
                    destination="org.freedesktop.DBus",
                    path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus",
                    member="NameHasOwner",
                    signature="s",
                    body=["org.bluez"],
                )
            )
            on_bus = bool(reply and reply.body and reply.body[0])
            result["bluez_on_bus"] = "yes" if on_bus else "no (start it: systemctl start bluetooth)"
            if on_bus:
                reply = await bus.call(adapter_properties(adapter, "GetAll", "s"))
                if reply is None or reply.message_type.name == "ERROR":
                    error = reply.error_name if reply is not None else "no reply"
                    result["adapter"] = f"{adapter} not usable: {error} {reply.body if reply else ''}".strip()
                else:
                    props = {k: v.value for k, v in reply.body[0].items()}
                    result["adapter"] = (
                        f"{adapter} {props.get('Address', '?')}, powered {props.get('Powered')}, "
                        f"discovering {props.get('Discovering')}"
                    )
        return result

    try:
        return asyncio.run(probe())
    except TimeoutError:
        return {"bluez_on_bus": f"no answer from the system bus within {timeout:.0f} s"}
    except Exception as exc:  # diagnosis only: report whatever went wrong
        return {"bluez_on_bus": f"cannot ask D-Bus: {exc.__class__.__name__}: {exc}"}


def _adapter(config: Config) -> dict[str, Any]:
    info: dict[str, Any] = {"configured": config.reader.adapter}
    if config.simulator.enabled:
        info["note"] = "simulator enabled: no adapter is used"
    socket_path = Path(
        os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "").removeprefix("unix:path=") or DBUS_SOCKET
    )
    if socket_path.exists():
        info["dbus_socket"] = f"{socket_path} present"
        info.update(_bluez_check(config.reader.adapter))
    else:
        hint = (
            "mount the host's /run/dbus into the container (volumes: /run/dbus:/run/dbus:ro)"
            if in_container()
            else "is dbus running?"
        )
        info["dbus_socket"] = f"{socket_path} missing: {hint}"
    info["rfkill"] = _rfkill() or ["no Bluetooth radio in /sys/class/rfkill"]
    return info


def _broker(config: Config, timeout: float) -> tuple[bool, dict[str, Any]]:
    info: dict[str, Any] = {"url": _redact_url(config.mqtt.url)}
    try:
        session = _Session(config.mqtt, "diagnose")
        rtt = session.connect(timeout)
    except BrokerUnreachable as exc:
        info["reachable"] = f"no: {exc}"
        return False, info
    info["reachable"] = f"yes (CONNACK after {rtt * 1000:.0f} ms)"
    topics = Topics(config.mqtt.root_topic)
    try:
        retained = session.collect([topics.bridge_state_filter], time.monotonic() + timeout)
    finally:
        session.close()
    seen = []
    for topic in sorted(retained.messages):
        bridge = topics.parse_bridge(topic)
        body = retained.json(topic)
        if bridge is not None and body is not None:
            version, host = body.get("version"), body.get("host")
            seen.append(f"{bridge[0]}/{bridge[1]} {body.get('state')} (version {version}, host {host})")
    info["services"] = seen or [f"none under {config.mqtt.root_topic!r}/bridge"]
    return True, info


def _config_section(config: Config) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for section, values in effective(config, mask_secrets=True).items():
        if isinstance(values, dict):
            for key, value in values.items():
                flat[f"{section}.{key}"] = value
        else:
            flat[section] = values
    flat["mqtt.url"] = _redact_url(str(flat["mqtt.url"]))
    return flat


def build_diagnosis(
    config: Config, *, timeout: float = 5.0, config_path: str | None = None
) -> tuple[bool, dict[str, Any]]:
    """Everything a bug report needs; never raises for a missing piece. Returns (broker reachable, report)."""
    reachable, broker = _broker(config, timeout)
    env_names = sorted(name for name in os.environ if name.startswith("RENOGY_"))
    report: dict[str, Any] = {
        "versions": _versions(),
        "platform": _platform(),
        "configuration": {
            "file": config_path or "none (defaults + environment + command line)",
            "environment": env_names or ["no RENOGY_* variables set"],
            "effective": _config_section(config),
        },
        "broker": broker,
        "bluetooth": _adapter(config),
    }
    return reachable, report


def render_diagnosis(report: Mapping[str, Any]) -> str:
    lines = ["renogy-proxy diagnose (secrets are masked; paste this into a bug report)"]
    for section, body in report.items():
        lines.append("")
        lines.append(f"== {section}")
        _render_mapping(lines, body, indent="")
    return "\n".join(lines)


def _render_mapping(lines: list[str], body: Any, indent: str) -> None:
    if isinstance(body, Mapping):
        width = max((len(str(k)) for k in body), default=0)
        for key, value in body.items():
            if isinstance(value, Mapping):
                lines.append(f"{indent}{key}:")
                _render_mapping(lines, value, indent + "  ")
            elif isinstance(value, list):
                lines.append(
                    f"{indent}{str(key).ljust(width)} : " + (", ".join(map(str, value)) if value else "-")
                )
            else:
                shown = orjson.dumps(value).decode() if not isinstance(value, str) else value
                lines.append(f"{indent}{str(key).ljust(width)} : {shown}")
    else:
        lines.append(f"{indent}{body}")


def diagnose(args: argparse.Namespace, config: Config) -> int:
    """`renogy-proxy diagnose`: versions, platform, effective config (masked), broker and adapter checks."""
    path = args.config or os.environ.get("RENOGY_CONFIG") or None
    reachable, report = build_diagnosis(config, timeout=args.timeout, config_path=str(path) if path else None)
    if getattr(args, "json", False):
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print(render_diagnosis(report))
    if not reachable:
        print(f"error: {report['broker']['reachable'].removeprefix('no: ')}", file=sys.stderr)
        return EXIT_UNREACHABLE
    return EXIT_HEALTHY
