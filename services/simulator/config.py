"""Settings of one simulated BT-2 with its battery bank."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared.modbus import MAX_READ_WORDS
from shared.timing import DEFAULT_TIMING, TimingModel

from .faults import ALL_FAULT_KINDS, FaultKind

DEFAULT_ADDRESS = "C4:64:E3:38:3D:0E"
DEFAULT_BATTERIES = (48, 49, 50, 51)
# The simulated Smart Shunt 300 (simulator.shunt): a BLE device of its own, not on the bus.
SIM_SHUNT_ADDRESS = "4C:E1:74:53:48:30"
# Kinds that answer Modbus beside the batteries (the shunt is a BLE device of its own).
DEVICE_KINDS = ("controller", "dcc", "inverter")


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything that shapes a simulated bank; the defaults match a real 4x RBT50LFP48S install."""

    batteries: tuple[int, ...] = DEFAULT_BATTERIES
    address: str = DEFAULT_ADDRESS
    name: str | None = None  # advertised name; None: BT-TH- + the last four MAC bytes
    mtu: int = 251
    speed: float = 1.0
    latency_scale: float = 1.0
    seed: int = 0
    fault_rate: float = 0.0
    fault_kinds: frozenset[FaultKind] = ALL_FAULT_KINDS
    late_delay: float = 2.5
    advert_interval: float = 1.0
    distinct_serials: bool = False
    record_truth: bool = True
    truth_log: Path | None = None
    timing: TimingModel = DEFAULT_TIMING
    # Simulated seconds since midnight of day 0 at the moment the simulator is created.
    sim_start: float = 10 * 3600.0
    # Grid on which the physics integrates current and heat, in simulated seconds.
    physics_step: float = 5.0
    max_truth_records: int = 10_000
    other_devices: bool = True
    # The longest read a pack answers; a longer one gets exception 03 (default: the Modbus limit).
    max_read_words: int = 125
    # Whether a read may span the reserved register 5034 (it reads 0). A real pack gave no answer
    # there, so by default such a read gets exception 02, like any unmapped register.
    read_reserved: bool = False
    # Per-pack exceptions to max_read_words, (slave, words) pairs: a bank of mixed models.
    read_limits: tuple[tuple[int, int], ...] = ()
    # Other devices on the bus, (kind, slave) pairs: controller, dcc, inverter (services/simulator/models).
    devices: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if not self.batteries:
            raise ValueError("at least one battery is required")
        for slave in self.batteries:
            if not 1 <= slave <= 247:
                raise ValueError(f"slave id {slave} outside 1..247")
        if len(set(self.batteries)) != len(self.batteries):
            raise ValueError("slave ids must be distinct")
        if not 23 <= self.mtu <= 517:
            raise ValueError(f"MTU {self.mtu} outside 23..517")
        if self.speed < 0 or self.latency_scale < 0 or self.late_delay < 0:
            raise ValueError("speed, latency_scale and late_delay must be >= 0")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError(f"fault_rate {self.fault_rate} outside 0..1")
        for words in (self.max_read_words, *(limit for _, limit in self.read_limits)):
            if not 1 <= words <= MAX_READ_WORDS:
                raise ValueError(f"maximum read length {words} outside 1..{MAX_READ_WORDS}")
        for kind, slave in self.devices:
            if kind not in DEVICE_KINDS:
                raise ValueError(f"device kind {kind!r} is not simulated (known: {', '.join(DEVICE_KINDS)})")
            if not 1 <= slave <= 255:
                raise ValueError(f"slave id {slave} outside 1..255")
        bus = [*self.batteries, *(slave for _, slave in self.devices)]
        if len(set(bus)) != len(bus):
            raise ValueError("slave ids must be distinct (one bus, one device per id)")
        if self.physics_step <= 0 or self.advert_interval <= 0:
            raise ValueError("physics_step and advert_interval must be > 0")
        parts = self.address.split(":")
        if len(parts) != 6 or not all(len(p) == 2 for p in parts):
            raise ValueError(f"address {self.address!r} is not a MAC address")
        int(self.address.replace(":", ""), 16)
        object.__setattr__(self, "address", self.address.upper())
        object.__setattr__(self, "fault_kinds", frozenset(FaultKind(k) for k in self.fault_kinds))

    def read_limit(self, slave: int) -> int:
        """The longest read pack ``slave`` answers."""
        return dict(self.read_limits).get(slave, self.max_read_words)

    @property
    def local_name(self) -> str:
        """BT-TH- plus the last four MAC bytes, as a BT-2 advertises itself (unless a name is set)."""
        return self.name or "BT-TH-" + self.address.replace(":", "")[4:]
