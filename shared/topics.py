"""The MQTT topic tree (docs/mqtt.md is the prose version of this module)."""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEMA = 1
DEFAULT_ROOT = "renogy"

_BT2_ID = re.compile(r"^[0-9a-f]{12}$")
_DEVICE_ID = re.compile(r"^[a-z0-9_]{1,64}$")


def bt2_id(address: str) -> str:
    """A BT-2 MAC as a topic level: 12 lower-case hex digits."""
    text = address.replace(":", "").replace("-", "").lower()
    if not _BT2_ID.match(text):
        raise ValueError(f"{address!r} is not a MAC address")
    return text


def valid_device_id(device_id: str) -> bool:
    return bool(_DEVICE_ID.match(device_id))


@dataclass(frozen=True, slots=True)
class Topics:
    """All topics under one root."""

    root: str = DEFAULT_ROOT

    # Service presence and health: <root>/bridge/<service>/<instance>/{state,health}
    def bridge_state(self, service: str, instance: str) -> str:
        return f"{self.root}/bridge/{service}/{instance}/state"

    def bridge_health(self, service: str, instance: str) -> str:
        return f"{self.root}/bridge/{service}/{instance}/health"

    @property
    def bridge_state_filter(self) -> str:
        return f"{self.root}/bridge/+/+/state"

    @property
    def bridge_health_filter(self) -> str:
        return f"{self.root}/bridge/+/+/health"

    def parse_bridge(self, topic: str) -> tuple[str, str, str] | None:
        """(service, instance, 'state' | 'health') of a bridge topic."""
        parts = topic.split("/")
        prefix = self.root.split("/")
        if parts[: len(prefix)] != prefix or len(parts) != len(prefix) + 4 or parts[len(prefix)] != "bridge":
            return None
        service, instance, kind = parts[len(prefix) + 1 :]
        return (service, instance, kind) if kind in ("state", "health") else None

    # Bluetooth proxy: the reader publishes advertisement batches; scanner mode requests go back.
    def advertisements(self, instance: str) -> str:
        return f"{self.root}/bridge/reader/{instance}/advertisements"

    @property
    def advertisements_filter(self) -> str:
        return f"{self.root}/bridge/reader/+/advertisements"

    def scanner_state(self, instance: str) -> str:
        return f"{self.root}/bridge/reader/{instance}/scanner"

    @property
    def scanner_state_filter(self) -> str:
        return f"{self.root}/bridge/reader/+/scanner"

    def scanner_set(self, instance: str) -> str:
        return f"{self.root}/bridge/reader/{instance}/scanner/set"

    @property
    def scanner_set_filter(self) -> str:
        return f"{self.root}/bridge/reader/+/scanner/set"

    # Raw per-battery readings.
    def reading(self, bt2: str, slave_id: int) -> str:
        return f"{self.root}/bt2/{bt2}/battery/{slave_id}/reading"

    @property
    def reading_filter(self) -> str:
        return f"{self.root}/bt2/+/battery/+/reading"

    def parse_reading(self, topic: str) -> tuple[str, int] | None:
        """(bt2 id, slave id) of a reading topic, None for anything else."""
        prefix = f"{self.root}/bt2/"
        if not topic.startswith(prefix):
            return None
        parts = topic[len(prefix) :].split("/")
        if len(parts) != 4 or parts[1] != "battery" or parts[3] != "reading":
            return None
        if not _BT2_ID.match(parts[0]) or not parts[2].isdigit():
            return None
        slave = int(parts[2])
        return (parts[0], slave) if 0 < slave < 256 else None

    # Device documents for the gateway (and optional HA discovery).
    def device_config(self, device_id: str) -> str:
        return f"{self.root}/device/{device_id}/config"

    def device_state(self, device_id: str) -> str:
        return f"{self.root}/device/{device_id}/state"

    @property
    def device_filter(self) -> str:
        return f"{self.root}/device/+/+"

    def parse_device(self, topic: str) -> tuple[str, str] | None:
        """(device id, 'config' | 'state') of a device topic."""
        prefix = f"{self.root}/device/"
        if not topic.startswith(prefix):
            return None
        parts = topic[len(prefix) :].split("/")
        if len(parts) != 2 or parts[1] not in ("config", "state") or not valid_device_id(parts[0]):
            return None
        return parts[0], parts[1]
