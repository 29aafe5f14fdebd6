"""Device documents: values rounded for publication, device configs, and only what changed (pure)."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from services.aggregator.banks import BankSpec
from services.aggregator.entities import Entity, V
from services.aggregator.model import BankView, Battery, BatteryView, Value
from shared.payloads import MAX_TEXT_VALUE, DeviceConfig, DeviceInfo, DeviceState

MANUFACTURER = "Renogy"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One retained document to publish."""

    device_id: str
    kind: Literal["config", "state"]
    payload: bytes


def publish_text(text: str) -> str | None:
    """A text as the contract allows it: control characters dropped, trimmed, at most MAX_TEXT_VALUE long."""
    cleaned = "".join(char for char in text if unicodedata.category(char) != "Cc").strip()
    return cleaned[:MAX_TEXT_VALUE].rstrip() or None


def publish_value(entity: Entity[Any], value: Value) -> Value:
    """Round to accuracy + 1 decimals (energy rounded down, so a retained copy never exceeds the counter)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return publish_text(value)
    if not math.isfinite(value):
        return None
    digits = entity.accuracy + 1
    if entity.energy:
        scale = 10.0**digits
        return math.floor(value * scale + 1e-6) / scale + 0.0
    return round(value, digits) + 0.0


def values_of(table: Sequence[Entity[V]], view: V) -> dict[str, Value]:
    return {entity.key: publish_value(entity, entity.value(view)) for entity in table}


def battery_config(battery: Battery, table: Sequence[Entity[BatteryView]]) -> DeviceConfig:
    info = DeviceInfo(
        id=battery.device_id,
        name=battery.name,
        model=battery.model,
        manufacturer=MANUFACTURER,
        serial=battery.serial,
        via_device=battery.bank_id,
    )
    return DeviceConfig(info, tuple(entity.spec for entity in table))


def bank_config(bank: BankSpec, shown: Sequence[Battery], table: Sequence[Entity[BankView]]) -> DeviceConfig:
    """The bank's device; its model is "<n> x <model>" when all its batteries share one."""
    models = {b.model for b in shown}
    model = f"{len(shown)} x {next(iter(models))}" if len(models) == 1 and None not in models else None
    info = DeviceInfo(id=bank.id, name=bank.name, model=model, manufacturer=MANUFACTURER)
    return DeviceConfig(info, tuple(entity.spec for entity in table))


class Publisher:
    """Remembers what was published per device and offers only documents that differ."""

    def __init__(self) -> None:
        self._configs: dict[str, bytes] = {}
        self._values: dict[str, dict[str, Value]] = {}

    @property
    def devices(self) -> int:
        return len(self._configs)

    def offer(
        self, out: list[Outgoing], device_id: str, config: DeviceConfig, values: dict[str, Value], now: float
    ) -> None:
        payload = config.to_payload()
        if self._configs.get(device_id) != payload:
            self._configs[device_id] = payload
            out.append(Outgoing(device_id, "config", payload))
            self._values.pop(device_id, None)  # a new config is always followed by its state
        if self._values.get(device_id) != values:
            self._values[device_id] = values
            out.append(Outgoing(device_id, "state", DeviceState(round(now, 3), values).to_payload()))
