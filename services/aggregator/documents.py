"""Device documents: values rounded for publication, device configs, and only what changed (pure)."""

from __future__ import annotations

import math
import unicodedata
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from services.aggregator.banks import BankSpec
from services.aggregator.entities import Entity, V
from services.aggregator.model import BankView, Battery, BatteryView, Value
from shared.payloads import MAX_TEXT_VALUE, DeviceConfig, DeviceInfo, dumps
from shared.topics import SCHEMA

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
    return publish_number(value, entity.accuracy, energy=entity.energy)


def publish_number(value: float, accuracy: int, *, energy: bool = False) -> float | None:
    """Round to accuracy + 1 decimals; energy is rounded down (a retained copy never exceeds the counter)."""
    if not math.isfinite(value):
        return None
    digits = accuracy + 1
    if energy:
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
        bt2=battery.bt2,
        slave_id=battery.slave_id,
    )
    return DeviceConfig(info, tuple(entity.spec for entity in table))


def bank_config(bank: BankSpec, shown: Sequence[Battery], table: Sequence[Entity[BankView]]) -> DeviceConfig:
    """The bank's device; its model is "<n> x <model>" when all its batteries share one."""
    models = {b.model for b in shown}
    model = f"{len(shown)} x {next(iter(models))}" if len(models) == 1 and None not in models else None
    info = DeviceInfo(id=bank.id, name=bank.name, model=model, manufacturer=MANUFACTURER)
    return DeviceConfig(info, tuple(entity.spec for entity in table))


# Per device, hashes of what was published lately, to tell our own echoes from someone else's documents
# (a burst, such as readings replayed after an outage, can have many in flight).
RECENT_PAYLOADS = 256


class Publisher:
    """Remembers what was published per device and offers only documents that differ.

    A state is offered again, unchanged, once it is `refresh` seconds old: consumers (the gateway) take a
    device whose state has not arrived for `stale_after` as unknown, whichever part of the chain stopped.
    """

    def __init__(self, refresh: float | None = None) -> None:
        self.refresh = refresh
        self._configs: dict[str, bytes] = {}
        self._values: dict[str, dict[str, Value]] = {}
        self._sent_at: dict[str, float] = {}
        self._recent: dict[str, deque[int]] = {}

    @property
    def devices(self) -> int:
        return len(self._configs)

    def owns(self, device_id: str) -> bool:
        return device_id in self._configs

    def is_ours(self, device_id: str, payload: bytes) -> bool:
        """Whether a document seen on the broker is one we published lately (an echo)."""
        return hash(payload) in self._recent.get(device_id, ())

    def forget(self, device_id: str) -> None:
        """Offer this device's documents again at the next chance (someone replaced or removed them)."""
        self._configs.pop(device_id, None)
        self._values.pop(device_id, None)

    def remove(self, device_id: str) -> None:
        self.forget(device_id)
        self._sent_at.pop(device_id, None)
        self._recent.pop(device_id, None)

    def next_refresh(self, mono: float) -> float | None:
        """When the next published state is due again unchanged, not before `mono` (None: never). A time
        already past belongs to a device no longer offered (a bank whose batteries were all removed)."""
        if self.refresh is None:
            return None
        return min(
            (t + self.refresh for t in self._sent_at.values() if t + self.refresh >= mono), default=None
        )

    def offer(
        self,
        out: list[Outgoing],
        device_id: str,
        config: DeviceConfig,
        values: dict[str, Value],
        now: float,
        *,
        mono: float | None = None,
        counter: dict[str, Any] | None = None,
    ) -> None:
        """Offer a device's documents; `counter` (the exact Wh totals and last sample of a battery) goes
        into its state as the second copy of the state file, consistent with the values beside it."""
        mono = now if mono is None else mono
        payload = config.to_payload()
        if self._configs.get(device_id) != payload:
            self._configs[device_id] = payload
            self._note(device_id, payload)
            out.append(Outgoing(device_id, "config", payload))
            self._values.pop(device_id, None)  # a new config is always followed by its state
        due = self.refresh is not None and mono - self._sent_at.get(device_id, mono) >= self.refresh
        if self._values.get(device_id) != values or due:
            self._values[device_id] = values
            self._sent_at[device_id] = mono
            document: dict[str, Any] = {"schema": SCHEMA, "ts": round(now, 3), "values": dict(values)}
            if counter is not None:
                document["counter"] = counter
            state = dumps(document)
            self._note(device_id, state)
            out.append(Outgoing(device_id, "state", state))

    def _note(self, device_id: str, payload: bytes) -> None:
        self._recent.setdefault(device_id, deque(maxlen=RECENT_PAYLOADS)).append(hash(payload))
