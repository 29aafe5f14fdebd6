"""The MQTT topic tree (docs/mqtt.md is the prose version of this module)."""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEMA = 1
DEFAULT_ROOT = "renogy"

_BT2_ID = re.compile(r"^[0-9a-f]{12}$")
_DEVICE_ID = re.compile(r"^[a-z0-9_]{1,64}$")
_KIND = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# The device kinds a reading topic may name (shared.devices.KINDS; not imported: it imports this module).
READING_KINDS = ("battery", "controller", "dcc", "inverter", "shunt")


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

    # Raw readings of one device: <root>/bt2/<bt2 id>/<kind>/<slave id>/reading.
    def reading(self, bt2: str, slave_id: int, kind: str = "battery") -> str:
        return f"{self.root}/bt2/{bt2}/{kind}/{slave_id}/reading"

    @property
    def reading_filter(self) -> str:
        """Readings of every kind (for observers such as `status`)."""
        return f"{self.root}/bt2/+/+/+/reading"

    def kind_reading_filter(self, kind: str) -> str:
        return f"{self.root}/bt2/+/{kind}/+/reading"

    @property
    def reading_filters(self) -> tuple[str, ...]:
        """One filter per known kind, battery first: a broker ACL written for the battery topic alone
        (deploy/mosquitto/acl.example before device families) refuses only the new ones."""
        return tuple(self.kind_reading_filter(kind) for kind in READING_KINDS)

    def reading_topic_shape(self, topic: str) -> bool:
        """Whether a topic has the shape of a reading topic (<root>/bt2/.../reading), valid or not."""
        return topic.startswith(f"{self.root}/bt2/") and topic.endswith("/reading")

    def parse_device_reading(self, topic: str) -> tuple[str, str, int] | None:
        """(bt2 id, kind, slave id) of a reading topic of any kind-like level (the caller refuses kinds it
        does not know); None for anything else. Slave ids are 1..255, 0..255 for kinds other than battery
        (a notify-only shunt has none)."""
        return self._parse_device_topic(topic, "reading")

    # Controls (opt-in): <root>/bt2/<bt2 id>/<kind>/<slave id>/set carries a command to the reader that
    # owns the BT-2; .../result carries its outcome back (shared/controls.py has both payloads).
    def device_command(self, bt2: str, kind: str, slave_id: int) -> str:
        return f"{self.root}/bt2/{bt2}/{kind}/{slave_id}/set"

    def command_filter(self, bt2: str = "+") -> str:
        """Commands for one BT-2 (a reader subscribes to its own only), or for all with the default."""
        return f"{self.root}/bt2/{bt2}/+/+/set"

    def parse_device_command(self, topic: str) -> tuple[str, str, int] | None:
        """(bt2 id, kind, slave id) of a command topic; None for anything else (same rules as readings)."""
        return self._parse_device_topic(topic, "set")

    def device_result(self, bt2: str, kind: str, slave_id: int) -> str:
        return f"{self.root}/bt2/{bt2}/{kind}/{slave_id}/result"

    @property
    def result_filter(self) -> str:
        return f"{self.root}/bt2/+/+/+/result"

    def parse_device_result(self, topic: str) -> tuple[str, str, int] | None:
        return self._parse_device_topic(topic, "result")

    def _parse_device_topic(self, topic: str, leaf: str) -> tuple[str, str, int] | None:
        prefix = f"{self.root}/bt2/"
        if not topic.startswith(prefix):
            return None
        parts = topic[len(prefix) :].split("/")
        if len(parts) != 4 or parts[3] != leaf or not _KIND.match(parts[1]):
            return None
        # isascii first: str.isdigit() also accepts digits such as '²' that int() refuses.
        if (
            not _BT2_ID.match(parts[0])
            or not (parts[2].isascii() and parts[2].isdigit())
            or len(parts[2]) > 3
        ):
            return None
        slave, kind = int(parts[2]), parts[1]
        lowest = 1 if kind == "battery" else 0
        return (parts[0], kind, slave) if lowest <= slave < 256 else None

    def parse_reading(self, topic: str) -> tuple[str, int] | None:
        """(bt2 id, slave id) of a battery reading topic, None for anything else."""
        parsed = self.parse_device_reading(topic)
        if parsed is None or parsed[1] != "battery":
            return None
        return parsed[0], parsed[2]

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
