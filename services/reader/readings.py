"""Assemble one device's reading of one cycle from its decoded blocks (pure)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from shared.devices import DeviceFamily, reading_payload
from shared.registers import Value
from shared.topics import SCHEMA

# Decoded fields that go into the reading payload, per block start register.
PUBLISHED_FIELDS: dict[int, tuple[str, ...]] = {
    5042: ("current", "voltage", "remaining_charge", "capacity", "cycle_count"),
    5000: ("cell_voltages", "temperatures"),
    5100: ("cell_voltage_alarms", "cell_temperature_alarms"),
    5104: (
        "other_alarms",
        "status1",
        "status2",
        "status3",
        "charge_discharge_status",
        "charge_mosfet_on",
        "discharge_mosfet_on",
        "fully_charged",
        "heater_on",
        "serial",
        "model",
        "firmware",
    ),
}
IDENTITY_FIELDS = ("model", "serial", "firmware")


@dataclass(slots=True)
class Identity:
    """Static facts of a pack, read at start and every info interval; carried in every reading."""

    model: str | None = None
    serial: str | None = None
    firmware: str | None = None

    def update(self, values: dict[str, Value]) -> None:
        for name in IDENTITY_FIELDS:
            value = values.get(name)
            if isinstance(value, str) and value:
                setattr(self, name, value)


@dataclass(slots=True)
class BatteryCycle:
    """The blocks of one battery in one cycle; failed blocks leave their fields out."""

    bt2: str
    slave_id: int
    ts: float | None = None
    mono: float | None = (
        None  # time.monotonic() at `ts`: the aggregator integrates energy over its differences
    )
    values: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, str] = field(default_factory=dict)
    failed: list[int] = field(default_factory=list)

    def add_block(
        self,
        start: int,
        decoded: dict[str, Value],
        frame: bytes,
        received_at: float,
        received_mono: float | None = None,
    ) -> None:
        """`received_mono`: the monotonic time of `received_at` (default: now; the caller adds a block
        right after receiving it)."""
        for name in PUBLISHED_FIELDS.get(start, ()):
            if name in decoded:
                self.values[name] = decoded[name]
        self.raw[str(start)] = frame.hex()
        if start == 5042 or self.ts is None:
            self.ts = received_at
            self.mono = time.monotonic() if received_mono is None else received_mono

    def add_merged(
        self, start: int, parts: dict[int, dict[str, Value]], frame: bytes, received_at: float
    ) -> None:
        """One read that holds several blocks (decoded ``parts`` by block start): their fields, one frame."""
        for part_start, decoded in parts.items():
            for name in PUBLISHED_FIELDS.get(part_start, ()):
                if name in decoded:
                    self.values[name] = decoded[name]
        self.raw[str(start)] = frame.hex()
        if 5042 in parts or self.ts is None:
            self.ts = received_at
            self.mono = time.monotonic()

    def fail_block(self, start: int) -> None:
        self.failed.append(start)

    def copy(self) -> BatteryCycle:
        """This reading as it is now (the cycle may add its info blocks to this one afterwards)."""
        return replace(self, values=dict(self.values), raw=dict(self.raw), failed=list(self.failed))

    @property
    def any_good(self) -> bool:
        return bool(self.raw)

    def payload(self, identity: Identity, boot_id: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "schema": SCHEMA,
            "ts": round(self.ts or 0.0, 3),
            "bt2": self.bt2,
            "slave_id": self.slave_id,
            "complete": not self.failed,
            "boot_id": boot_id,
        }
        if self.mono is not None:
            body["mono"] = round(self.mono, 3)
        for name in IDENTITY_FIELDS:
            value = getattr(identity, name)
            if value:
                body[name] = value
        body.update(self.values)
        body["raw"] = self.raw
        return body


@dataclass(slots=True)
class DeviceCycle:
    """The blocks of one controller, DC-DC charger or inverter in one cycle (screened values only)."""

    family: DeviceFamily
    bt2: str
    slave_id: int
    ts: float | None = None
    mono: float | None = None  # time.monotonic() at `ts`, as for batteries
    values: dict[str, Value] = field(default_factory=dict)
    failed: list[int] = field(default_factory=list)
    # The identity values of the last info read (model, device_address): carried in every reading.
    identity: dict[str, Value] = field(default_factory=dict)

    def add_block(self, values: dict[str, Value], received_at: float) -> None:
        self.values.update(values)
        if self.ts is None:
            self.ts, self.mono = received_at, time.monotonic()

    def fail_block(self, start: int) -> None:
        self.failed.append(start)

    def copy(self) -> DeviceCycle:
        """This reading as it is now (the cycle may add its info blocks to this one afterwards)."""
        return replace(self, values=dict(self.values), failed=list(self.failed), identity=dict(self.identity))

    @property
    def any_good(self) -> bool:
        return self.ts is not None

    def payload(self, boot_id: str) -> dict[str, Any]:
        """``reading_payload`` plus what the aggregator's parser reads beside the values (boot_id,
        mono, complete); the identity fills what this cycle did not read."""
        values = {**self.identity, **self.values}
        body = reading_payload(
            self.family, bt2=self.bt2, slave_id=self.slave_id, ts=round(self.ts or 0.0, 3), values=values
        )
        body["complete"] = not self.failed
        body["boot_id"] = boot_id
        if self.mono is not None:
            body["mono"] = round(self.mono, 3)
        return body
