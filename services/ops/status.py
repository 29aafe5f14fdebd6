"""`renogy-proxy status`: evaluate the retained bridge state and readings into one table (exit 0/1/2)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO, TypeVar

import orjson

from services.ops.session import (
    EXIT_HEALTHY,
    EXIT_UNHEALTHY,
    EXIT_UNREACHABLE,
    BrokerUnreachable,
    Retained,
    _redact_url,
    _Session,
)
from shared.config import Config
from shared.topics import READING_KINDS, Topics

# The aggregator and the gateway publish health this often (HEALTH_INTERVAL in their service modules;
# a test keeps these equal); three missed beats make a service stale.
SERVICE_HEALTH_INTERVAL = 30.0
MISSED_BEATS = 3
MIN_POLL_HORIZON = 10.0  # as the aggregator: back-to-back polling (0) still gets a sensible horizon
SERVICES = ("reader", "aggregator", "gateway")


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
class DeviceRow:
    """A device of another kind (controller, dcc, inverter, shunt) with a reading on the broker."""

    kind: str
    bt2: str
    slave_id: int
    age_s: float
    max_age_s: float
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.kind} {self.slave_id} @{self.bt2}"


@dataclass
class MissingBattery:
    """A configured battery (reader.batteries, aggregator.banks) without any reading on the broker."""

    slave_id: int
    bt2: str | None  # None: any BT-2
    source: str  # the setting that lists it

    @property
    def name(self) -> str:
        return f"battery {self.slave_id} @{self.bt2 or '?'}"


@dataclass
class Report:
    broker: str
    services: list[ServiceRow]
    batteries: list[BatteryRow]
    problems: list[str]
    missing: list[MissingBattery] = field(default_factory=list)
    devices: list[DeviceRow] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "broker": self.broker,
            "services": [{**asdict(row), "name": row.name} for row in self.services],
            "batteries": [{**asdict(row), "name": row.name} for row in self.batteries],
            "missing_batteries": [{**asdict(row), "name": row.name} for row in self.missing],
            "devices": [{**asdict(row), "name": row.name} for row in self.devices],
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
    reader = config.reader
    # One cycle may include a full scan and a connect attempt on top of the poll interval.
    return _horizon(health, config, None) + reader.scan_timeout + reader.connect_timeout


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
    elif service == "reader":
        row.problems.extend(reader_problems(row.name, health, now))
    return row


def reader_problems(name: str, health: Mapping[str, Any] | None, now: float) -> list[str]:
    """An online reader that cannot work: no usable adapter, or no good reading for watchdog_cycles polls.

    The first ``reader.watchdog_cycles`` polls after a start are its grace: bad cycles only count once
    the reader has tried that often, and every start begins at zero.
    """
    if not health:
        return []
    problems = []
    adapter = health.get("adapter_problem")
    if isinstance(adapter, str) and adapter:
        problems.append(f"{name} cannot use the Bluetooth adapter: {adapter}")
    bad, limit = _number(health, "bad_cycles"), _number(health, "watchdog_cycles")
    if bad is not None and limit and bad >= limit:
        last = _number(health, "last_good_ts")
        since = "none since it started" if last is None else f"the last one {_age(max(0.0, now - last))} ago"
        problems.append(
            f"{name}: no good reading for {bad:.0f} polls (reader.watchdog_cycles = {limit:.0f}; {since})"
        )
    return problems


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
    others: dict[tuple[str, str, int], dict[str, Any]] = {}  # (kind, bt2, slave) of the other kinds
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
            continue
        device = topics.parse_device_reading(topic)
        if device is not None and device[1] in READING_KINDS:
            body = retained.json(topic)
            if body is not None:
                others[(device[1], device[0], device[2])] = body
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

    def horizon(bt2: str) -> float:
        return _horizon(reader_health.get(bt2), config, max_age)

    batteries = [
        _battery_row(bt2, slave, reading=body, health=reader_health.get(bt2), horizon=horizon(bt2), now=now)
        for (bt2, slave), body in sorted(readings.items())
    ]
    devices = [
        _too_old(DeviceRow(kind, bt2, slave, _since(body, now), horizon(bt2)))
        for (kind, bt2, slave), body in sorted(others.items())
    ]
    problems = [p for row in services for p in row.problems] + [p for row in batteries for p in row.problems]
    problems += [p for row in devices for p in row.problems]
    problems.extend(_shared_bt2s(services, healths))
    missing = [
        want
        for want in expected_batteries(config)
        if not any(slave == want.slave_id and want.bt2 in (None, bt2) for bt2, slave in readings)
    ]
    problems.extend(
        f"{want.name}: configured ({want.source}) but never reported (not on this BT-2's bus, wrong slave id, "
        "or the reader has not read it yet)"
        for want in missing
    )
    readers_online = any(r.service == "reader" and r.state == "online" for r in services)
    if not batteries and readers_online and not missing:
        problems.append("no battery reading on MQTT yet (the reader has not read a battery)")
    if not retained.complete:
        problems.append("the broker did not deliver the retained state in time (--timeout)")
    return Report(_redact_url(config.mqtt.url), services, batteries, problems, missing, devices)


def expected_batteries(config: Config) -> list[MissingBattery]:
    """Every battery the configuration says should report: reader.batteries, then the banks' members."""
    wanted = [MissingBattery(slave, None, "reader.batteries") for slave in config.reader.batteries]
    from services.aggregator.banks import layout_from_config  # noqa: PLC0415 - pure, validated at load

    try:
        layout = layout_from_config(config.aggregator)
    except ValueError:
        return wanted  # `config check` reports a bad layout; status still shows the rest
    for index, bank in enumerate(layout.banks):
        for selector in bank.members or ():
            if not any(w.slave_id == selector.slave_id and w.bt2 in (None, selector.bt2) for w in wanted):
                source = f"aggregator.banks[{index}] {bank.id!r}"
                wanted.append(MissingBattery(selector.slave_id, selector.bt2, source))
    return wanted


def _shared_bt2s(
    services: list[ServiceRow], healths: Mapping[tuple[str, str], Mapping[str, Any]]
) -> list[str]:
    """Two online readers on one BT-2: a BT-2 takes one connection, so they take turns failing."""
    claims: dict[str, list[str]] = {}
    for row in services:
        health = healths.get((row.service, row.instance))
        if row.service == "reader" and row.state == "online" and health and health.get("bt2"):
            claims.setdefault(str(health["bt2"]), []).append(row.name)
    return [
        f"BT-2 {bt2} is claimed by {' and '.join(names)}: a BT-2 takes one connection, so they take turns "
        "failing; give each reader its own BT-2 (reader.bt2_address) or stop one"
        for bt2, names in sorted(claims.items())
        if len(names) > 1
    ]


def _horizon(health: Mapping[str, Any] | None, config: Config, max_age: float | None) -> float:
    if max_age is not None:
        return max_age
    poll = _number(health, "poll_interval")
    return _poll_horizon(config.reader.poll_interval if poll is None else poll)


def _since(reading: Mapping[str, Any], now: float) -> float:
    """Seconds since the reading was taken (infinite without a time)."""
    ts = _number(reading, "ts")
    return max(0.0, now - ts) if ts is not None else float("inf")


_RowT = TypeVar("_RowT", BatteryRow, DeviceRow)


def _too_old(row: _RowT, hint: str = "") -> _RowT:
    """The row, with a problem when its last reading is older than it may be."""
    if row.age_s > row.max_age_s:
        row.problems.append(
            f"{row.name}: last reading {row.age_s:.0f} s old, more than {row.max_age_s:.0f} s{hint}"
        )
    return row


def _battery_row(
    bt2: str,
    slave: int,
    *,
    reading: Mapping[str, Any],
    health: Mapping[str, Any] | None,
    horizon: float,
    now: float,
) -> BatteryRow:
    row = BatteryRow(bt2, slave, _since(reading, now), horizon)
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
    return _too_old(row, " (out of range, wrong slave id, or the reader is stuck?)")


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
    rows.extend(
        (want.name, "missing", "-", "-", "-", "-", "-", "-", f"never reported ({want.source})")
        for want in report.missing
    )
    rows.extend(
        (dev.name, "stale" if dev.problems else "ok", _age(dev.age_s), "", "", "", "", "", "")
        for dev in report.devices
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
                missing = f", {len(report.missing)} never seen" if report.missing else ""
                progress(
                    f"waiting ({time.monotonic() - started:.0f} of {wait:.0f} s): {online} of "
                    f"{len(report.services)} services up, {fresh} of "
                    f"{len(report.batteries) + len(report.missing)} batteries with fresh readings{missing}"
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
