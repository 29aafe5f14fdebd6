"""JSON payloads of the MQTT contract: encoding, and strict parsing of what arrives from the broker.

Every parser raises :class:`PayloadError` with a reason that names the offending key; callers log
it with the topic and drop the message. Nothing here trusts the broker: payloads may be truncated,
hand-published with mosquitto_pub, or from an older/newer schema.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson

from shared import registers
from shared.topics import SCHEMA, valid_device_id

Platform = Literal["sensor", "binary_sensor", "text_sensor", "switch"]
PLATFORMS: Final[tuple[Platform, ...]] = ("sensor", "binary_sensor", "text_sensor", "switch")
# A state value: a number (sensor), true/false (binary_sensor), a short text (text_sensor), or unknown.
StateValue = float | bool | str | None
MAX_TEXT_VALUE: Final = 64
STATE_CLASSES: Final = ("measurement", "total_increasing", "total", "")
ENTITY_CATEGORIES: Final = ("diagnostic", "config", "")
MAX_PAYLOAD: Final = 256 * 1024
# Rated limits of one pack, beyond what the registers can hold: a Renogy LFP pack delivers a few kW at
# most, and no BMS lets more than a few times its capacity (in A) flow. 79.9 V x 499 A passes the register
# ranges but not these.
MAX_PACK_POWER_W: Final = 10_000.0
MAX_C_RATE: Final = 4.0
# Largest magnitude a sensor value may have: ESPHome sends a float32, which turns anything larger into inf.
MAX_SENSOR_VALUE: Final = 1e30


class PayloadError(ValueError):
    """A payload that does not follow the contract."""


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def loads_object(payload: bytes | bytearray | str) -> dict[str, Any]:
    """Parse a JSON object with a compatible schema number."""
    if len(payload) > MAX_PAYLOAD:
        raise PayloadError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise PayloadError(f"expected a JSON object, got {type(obj).__name__}")
    schema = obj.get("schema")
    if schema != SCHEMA:
        raise PayloadError(f"unsupported schema {schema!r} (expected {SCHEMA})")
    return obj


def _number(obj: Mapping[str, Any], key: str, *, required: bool = False) -> float | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise PayloadError(f"missing {key!r}")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadError(f"{key!r} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise PayloadError(f"{key!r} is not finite")
    return float(value)


def _number_list(obj: Mapping[str, Any], key: str) -> tuple[float | None, ...] | None:
    """A sensor series; a null item is a sensor the reader dropped (outside its range), the rest count."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > 32:
        raise PayloadError(f"{key!r} must be a list of at most 32 numbers")
    out: list[float | None] = []
    for item in value:
        if item is None:
            out.append(None)
            continue
        if isinstance(item, bool) or not isinstance(item, int | float) or not math.isfinite(item):
            raise PayloadError(f"{key!r} holds a non-numeric or non-finite item")
        out.append(float(item))
    return tuple(out)


def _text(obj: Mapping[str, Any], key: str, *, limit: int = 120) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise PayloadError(f"{key!r} must be a string of at most {limit} characters")
    return value


def clean_text(value: str | None) -> str | None:
    """A name or label as it may be shown and logged: control and format characters (NUL, ESC, the
    right-to-left override, zero-width marks) removed, spaces trimmed; None when nothing is left."""
    if value is None:
        return None
    cleaned = "".join(char for char in value if unicodedata.category(char) not in ("Cc", "Cf", "Cs", "Co"))
    return cleaned.strip() or None


def text_value_problem(value: str) -> str | None:
    """Why a string cannot be a state value (too long, control characters), or None when it can."""
    if len(value) > MAX_TEXT_VALUE:
        return f"is {len(value)} characters long (at most {MAX_TEXT_VALUE})"
    if any(unicodedata.category(char) == "Cc" for char in value):
        return "holds a control character"
    return None


def _bool(obj: Mapping[str, Any], key: str) -> bool | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise PayloadError(f"{key!r} must be true or false")
    return value


# --- battery readings (reader -> aggregator) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reading:
    """One battery's reading of one cycle; absent fields were not read successfully this cycle."""

    ts: float
    bt2: str
    slave_id: int
    complete: bool
    voltage: float | None = None
    current: float | None = None
    remaining_charge: float | None = None
    capacity: float | None = None
    cycle_count: int | None = None
    cell_voltages: tuple[float | None, ...] | None = None  # None items: sensors dropped by the reader
    temperatures: tuple[float | None, ...] | None = None
    model: str | None = None
    serial: str | None = None
    firmware: str | None = None
    status: Mapping[str, int | bool] = field(default_factory=dict)
    boot_id: str | None = None
    mono: float | None = None  # the reader's monotonic clock at `ts`; differences within one boot_id only

    @property
    def power(self) -> float | None:
        if self.voltage is None or self.current is None:
            return None
        return self.voltage * self.current


STATUS_KEYS: Final = (
    "other_alarms",
    "status1",
    "status2",
    "status3",
    "charge_discharge_status",
    "cell_voltage_alarms",
    "cell_temperature_alarms",
)
STATUS_FLAGS: Final = ("charge_mosfet_on", "discharge_mosfet_on", "fully_charged", "heater_on")


def parse_reading(
    payload: bytes | bytearray | str, *, bt2: str | None = None, slave_id: int | None = None
) -> Reading:
    """Validate a reading payload; topic identity (when given) must agree with the body."""
    obj = loads_object(payload)
    ts = _number(obj, "ts", required=True)
    assert ts is not None
    if ts <= 0:
        raise PayloadError("'ts' must be a positive epoch time")
    body_bt2 = _text(obj, "bt2", limit=12)
    if body_bt2 is None:
        raise PayloadError("missing 'bt2'")
    slave = obj.get("slave_id")
    if isinstance(slave, bool) or not isinstance(slave, int) or not 0 < slave < 256:
        raise PayloadError("'slave_id' must be an integer 1..255")
    if bt2 is not None and body_bt2 != bt2:
        raise PayloadError(f"body bt2 {body_bt2!r} differs from topic {bt2!r}")
    if slave_id is not None and slave != slave_id:
        raise PayloadError(f"body slave_id {slave} differs from topic {slave_id}")
    complete = _bool(obj, "complete")
    cycle = _number(obj, "cycle_count")
    values: dict[str, Any] = {
        "voltage": _number(obj, "voltage"),
        "current": _number(obj, "current"),
        "remaining_charge": _number(obj, "remaining_charge"),
        "capacity": _number(obj, "capacity"),
        "cell_voltages": _number_list(obj, "cell_voltages"),
        "temperatures": _number_list(obj, "temperatures"),
    }
    plausibility = {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items() if v is not None}
    try:
        registers.check_plausible(plausibility)
    except registers.BlockError as exc:
        raise PayloadError(f"implausible value: {exc}") from None
    _check_rated(values["voltage"], values["current"], values["capacity"])
    mono = _number(obj, "mono")
    if mono is not None and mono < 0:
        raise PayloadError("'mono' must be a non-negative number of seconds")
    status: dict[str, int | bool] = {}
    for key in STATUS_KEYS:
        number = _number(obj, key)
        if number is not None:
            status[key] = int(number)
    for key in STATUS_FLAGS:
        flag = _bool(obj, key)
        if flag is not None:
            status[key] = flag
    return Reading(
        ts=ts,
        bt2=body_bt2,
        slave_id=slave,
        complete=bool(complete),
        cycle_count=None if cycle is None else int(cycle),
        model=clean_text(_text(obj, "model", limit=32)),
        serial=clean_text(_text(obj, "serial", limit=32)),
        firmware=clean_text(_text(obj, "firmware", limit=16)),
        status=status,
        boot_id=clean_text(_text(obj, "boot_id", limit=64)),
        mono=mono,
        **values,
    )


def _check_rated(voltage: float | None, current: float | None, capacity: float | None) -> None:
    """Values inside the register ranges that no pack can produce (the ranges are what 16 bits can hold)."""
    if capacity is not None and capacity <= 0:
        raise PayloadError(f"implausible value: capacity = {capacity} Ah (must be > 0)")
    if current is not None and capacity is not None and abs(current) > MAX_C_RATE * capacity:
        raise PayloadError(
            f"implausible value: current = {current} A is more than {MAX_C_RATE:g} x the capacity {capacity} Ah"
        )
    if voltage is not None and current is not None and abs(voltage * current) > MAX_PACK_POWER_W:
        raise PayloadError(
            f"implausible value: power = {voltage * current:.0f} W exceeds a pack's {MAX_PACK_POWER_W:.0f} W"
        )


# --- device documents (aggregator -> gateway) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class EntitySpec:
    key: str
    name: str
    unit: str | None = None
    device_class: str | None = None
    state_class: str | None = None
    accuracy: int = 0
    icon: str | None = None
    entity_category: str | None = None
    platform: Platform = "sensor"

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "name": self.name,
            "unit": self.unit,
            "device_class": self.device_class,
            "state_class": self.state_class,
            "accuracy": self.accuracy,
            "icon": self.icon,
            "entity_category": self.entity_category,
            "platform": self.platform,
        }


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    id: str
    name: str
    model: str | None = None
    manufacturer: str | None = None
    serial: str | None = None
    via_device: str | None = None
    # A battery's BT-2 (12 hex digits, as in readings) and Modbus slave id; absent for a bank.
    bt2: str | None = None
    slave_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "model": self.model,
            "manufacturer": self.manufacturer,
            "serial": self.serial,
            "via_device": self.via_device,
        }
        if self.bt2 is not None:
            body["bt2"] = self.bt2
        if self.slave_id is not None:
            body["slave_id"] = self.slave_id
        return body


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    device: DeviceInfo
    entities: tuple[EntitySpec, ...]

    def to_payload(self) -> bytes:
        return dumps(
            {
                "schema": SCHEMA,
                "device": self.device.to_json(),
                "entities": [e.to_json() for e in self.entities],
            }
        )


@dataclass(frozen=True, slots=True)
class DeviceState:
    ts: float
    values: Mapping[str, StateValue]

    def to_payload(self) -> bytes:
        return dumps({"schema": SCHEMA, "ts": self.ts, "values": dict(self.values)})


def parse_device_config(payload: bytes | bytearray | str) -> DeviceConfig:
    obj = loads_object(payload)
    device = obj.get("device")
    if not isinstance(device, dict):
        raise PayloadError("missing 'device' object")
    device_id = _text(device, "id", limit=64)
    if device_id is None or not valid_device_id(device_id):
        raise PayloadError("'device.id' must be 1-64 characters of a-z, 0-9 and '_'")
    name = clean_text(_text(device, "name"))
    if not name:
        raise PayloadError("missing 'device.name'")
    info = DeviceInfo(
        id=device_id,
        name=name,
        model=clean_text(_text(device, "model")),
        manufacturer=clean_text(_text(device, "manufacturer", limit=64)),
        serial=clean_text(_text(device, "serial", limit=64)),
        via_device=_text(device, "via_device", limit=64),
        bt2=_text(device, "bt2", limit=12),
        slave_id=_slave_id(device.get("slave_id")),
    )
    raw_entities = obj.get("entities")
    if not isinstance(raw_entities, list) or len(raw_entities) > 256:
        raise PayloadError("'entities' must be a list of at most 256 entities")
    entities: list[EntitySpec] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_entities):
        if not isinstance(raw, dict):
            raise PayloadError(f"entities[{index}] is not an object")
        key = _text(raw, "key", limit=64)
        if not key or not valid_device_id(key) or key in seen:
            raise PayloadError(f"entities[{index}].key must be a unique id of a-z, 0-9 and '_'")
        seen.add(key)
        accuracy = raw.get("accuracy", 0)
        if isinstance(accuracy, bool) or not isinstance(accuracy, int) or not 0 <= accuracy <= 6:
            raise PayloadError(f"entities[{index}].accuracy must be an integer 0..6")
        state_class = _text(raw, "state_class", limit=32)
        if state_class is not None and state_class not in STATE_CLASSES:
            raise PayloadError(f"entities[{index}].state_class {state_class!r} is unknown")
        category = _text(raw, "entity_category", limit=32)
        if category is not None and category not in ENTITY_CATEGORIES:
            raise PayloadError(f"entities[{index}].entity_category {category!r} is unknown")
        platform = raw.get("platform", "sensor")
        if platform not in PLATFORMS:
            raise PayloadError(f"entities[{index}].platform {platform!r} is unknown")
        entities.append(
            EntitySpec(
                key=key,
                name=clean_text(_text(raw, "name")) or key,
                unit=clean_text(_text(raw, "unit", limit=32)),
                device_class=_text(raw, "device_class", limit=47),
                state_class=state_class,
                accuracy=accuracy,
                icon=_text(raw, "icon", limit=63),
                entity_category=category,
                platform=platform,
            )
        )
    return DeviceConfig(info, tuple(entities))


def _slave_id(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 256:
        raise PayloadError("'device.slave_id' must be an integer 1..255")
    return value


def parse_device_state(payload: bytes | bytearray | str) -> DeviceState:
    obj = loads_object(payload)
    ts = _number(obj, "ts", required=True)
    assert ts is not None
    raw_values = obj.get("values")
    if not isinstance(raw_values, dict) or len(raw_values) > 256:
        raise PayloadError("'values' must be an object of at most 256 entries")
    values: dict[str, StateValue] = {}
    for key, value in raw_values.items():
        if value is None or isinstance(value, bool):
            values[key] = value
        elif isinstance(value, int | float) and math.isfinite(value) and abs(value) <= MAX_SENSOR_VALUE:
            values[key] = float(value)
        elif isinstance(value, str):
            problem = text_value_problem(value)
            if problem is not None:
                raise PayloadError(
                    f"values[{key[:64]!r}] must be a string of at most {MAX_TEXT_VALUE} characters "
                    f"without control characters: it {problem}"
                )
            values[key] = value
        else:
            raise PayloadError(
                f"values[{key[:64]!r}] must be a finite number, true/false, a string or null "
                f"(numbers at most {MAX_SENSOR_VALUE:g} in magnitude)"
            )
    return DeviceState(ts, values)
