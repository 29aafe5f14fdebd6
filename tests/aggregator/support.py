"""Helpers for the aggregator tests: synthetic readings, configs, a fake clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from services.aggregator.banks import Layout
from services.aggregator.core import AggregatorCore, Settings
from shared.config import Config, load_config
from shared.payloads import Reading, parse_reading
from shared.topics import Topics
from tests.support.probe import MqttProbe

BT2 = "c464e3383d0e"
OTHER_BT2 = "a4c138123456"
SLAVES = (48, 49, 50, 51)
TOPICS = Topics()
CELLS = (3.27, 3.28, 3.29, 3.27) * 4
TEMPS = (13.0, 14.0, 15.0, 14.0)


def reading_dict(
    slave: int,
    ts: float,
    *,
    bt2: str = BT2,
    voltage: float | None = 52.4,
    current: float | None = -3.26,
    remaining: float | None = 49.84,
    capacity: float | None = 50.0,
    cells: tuple[float, ...] | None = CELLS,
    temps: tuple[float, ...] | None = TEMPS,
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "schema": 1,
        "ts": ts,
        "bt2": bt2,
        "slave_id": slave,
        "complete": True,
        "model": "RBT50LFP48S",
        "serial": f"22RBH4A0510200{slave:02d}",
        "firmware": "V104",
        "cycle_count": 12,
    }
    for key, value in (
        ("voltage", voltage),
        ("current", current),
        ("remaining_charge", remaining),
        ("capacity", capacity),
        ("cell_voltages", cells),
        ("temperatures", temps),
    ):
        if value is not None:
            body[key] = list(value) if isinstance(value, tuple) else value
    body.update(extra)
    return body


def reading_payload(slave: int, ts: float, **kwargs: Any) -> bytes:
    return orjson.dumps(reading_dict(slave, ts, **kwargs))


def reading(slave: int, ts: float, **kwargs: Any) -> Reading:
    return parse_reading(reading_payload(slave, ts, **kwargs))


def reading_topic(slave: int, bt2: str = BT2) -> str:
    return TOPICS.reading(bt2, slave)


def make_core(
    layout: Layout | None = None,
    *,
    profile: str = "default",
    max_gap: float = 90.0,
    stale_after: float = 90.0,
    started: float = 1_000.0,
) -> AggregatorCore:
    settings = Settings(profile=profile, max_gap=max_gap, stale_after=stale_after, info_stale_after=1800.0)
    return AggregatorCore(layout or Layout(), settings, started=started)


def make_config(url: str, state_dir: Path, **overrides: Any) -> Config:
    return load_config(
        None,
        environ={},
        overrides={
            "mqtt.url": url,
            "state_dir": str(state_dir),
            "mqtt.reconnect_max_delay": 0.5,
            **overrides,
        },
    )


BATTERY_TABLE = {
    "power": ("W", "power", "measurement", 1),
    "voltage": ("V", "voltage", "measurement", 2),
    "current": ("A", "current", "measurement", 2),
    "battery_level": ("%", "battery", "measurement", 1),
    "capacity": ("Ah", None, "measurement", 1),
    "remaining_charge": ("Ah", None, "measurement", 2),
    "energy_in": ("kWh", "energy", "total_increasing", 3),
    "energy_out": ("kWh", "energy", "total_increasing", 3),
    "cell_voltage_min": ("V", "voltage", "measurement", 3),
    "cell_voltage_max": ("V", "voltage", "measurement", 3),
    "temperature_min": ("°C", "temperature", "measurement", 1),
    "temperature_max": ("°C", "temperature", "measurement", 1),
}
BANK_KEYS = ("power", "current", "capacity", "remaining_charge", "battery_level", "energy_in", "energy_out")


DEVICES = ("battery_48", "battery_49", "battery_50", "battery_51", "bank")
CURRENTS = {48: -50.0, 49: 30.0, 50: 0.0, 51: -10.0}
VOLTAGE = 52.0


def state(probe: MqttProbe, device: str) -> dict[str, Any] | None:
    topic = TOPICS.device_state(device)
    return probe.json(topic)["values"] if topic in probe.latest else None


def publish_all(probe: MqttProbe, ts: float, *, retain: bool = True) -> None:
    for slave in SLAVES:
        payload = reading_payload(slave, ts, voltage=VOLTAGE, current=CURRENTS[slave])
        probe.publish(reading_topic(slave), payload, retain=retain)


def energy_kwh(power: float, seconds: float) -> float:
    return abs(power) * seconds / 3600 / 1000
