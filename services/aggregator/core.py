"""The aggregator's state machine: readings and retained states in, device documents out (pure, sans-IO).

Every method takes the current time, so tests drive it with a fake clock. The service persists
`snapshot()` whenever `dirty` is set, before publishing what `pending()` returns.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.aggregator.banks import BankSpec, Layout
from services.aggregator.documents import Outgoing, Publisher, bank_config, battery_config, values_of
from services.aggregator.energy import EnergyCounter, Step
from services.aggregator.entities import BANK, BATTERY, for_profile
from services.aggregator.model import BankView, Battery, BatteryView, LinkInfo
from shared.payloads import DeviceState, Reading
from shared.topics import valid_device_id

_LOGGER = logging.getLogger(__name__)

MAX_ORPHANS = 64
MAX_CLOCK_AHEAD = 300.0  # s; a reading this far in the future would block counting until then
OVERRIDE_KEY = "aggregator.batteries"


@dataclass(frozen=True, slots=True)
class Settings:
    profile: str = "default"
    max_gap: float = 90.0
    stale_after: float = 90.0
    info_stale_after: float = 1800.0


class Rejected(Exception):
    """A valid reading that cannot be served (a slave id conflict, a future time); `reason` keys health."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(slots=True)
class Stats:
    accepted: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    steps: Counter[str] = field(default_factory=Counter)
    recovered: int = 0
    takeovers: int = 0


class AggregatorCore:
    """Latest values, energy counters, bank membership and what has been published."""

    def __init__(self, layout: Layout, settings: Settings, *, started: float) -> None:
        self.layout = layout
        self.settings = settings
        self.started = started
        self.battery_entities = for_profile(BATTERY, settings.profile)
        self.bank_entities = for_profile(BANK, settings.profile)
        self.batteries: dict[str, Battery] = {}
        self.orphans: dict[str, EnergyCounter] = {}
        self.floors: dict[str, tuple[float, float]] = {}
        self.links: dict[str, LinkInfo] = {}
        self.stats = Stats()
        self.dirty = False
        self.restored_devices: frozenset[str] = frozenset()
        self.publisher = Publisher()
        self._unbanked_logged: set[str] = set()

    # --- persistence ---------------------------------------------------------------------------

    def snapshot(self, now: float) -> dict[str, Any]:
        """The persistent part: every counter with its battery's identity, and the bank floors."""
        batteries: dict[str, Any] = {
            device_id: {"bt2": None, "slave_id": None, "counter": counter.to_json()}
            for device_id, counter in self.orphans.items()
        }
        for device_id, battery in self.batteries.items():
            batteries[device_id] = {
                "bt2": battery.bt2,
                "slave_id": battery.slave_id,
                "counter": battery.counter.to_json(),
            }
        banks = {bank_id: {"in_wh": floor[0], "out_wh": floor[1]} for bank_id, floor in self.floors.items()}
        return {"saved": now, "batteries": batteries, "banks": banks}

    def restore(self, document: Mapping[str, Any]) -> None:
        """Load a snapshot(); ValueError when it is malformed (nothing is changed then)."""
        batteries, orphans, floors = {}, {}, {}
        raw_batteries, raw_banks = document.get("batteries", {}), document.get("banks", {})
        if not isinstance(raw_batteries, dict) or not isinstance(raw_banks, dict):
            raise ValueError("'batteries' and 'banks' must be objects")
        for device_id, entry in raw_batteries.items():
            if not valid_device_id(device_id) or not isinstance(entry, dict):
                raise ValueError(f"bad battery entry {device_id[:64]!r}")
            counter = EnergyCounter.from_json(entry.get("counter"))
            bt2, slave = entry.get("bt2"), entry.get("slave_id")
            if bt2 is None:
                orphans[device_id] = counter
                continue
            if not isinstance(bt2, str) or isinstance(slave, bool) or not isinstance(slave, int):
                raise ValueError(f"bad identity of {device_id}")
            if self.layout.device_id(bt2, slave) != device_id:
                _LOGGER.info(
                    "%s (BT-2 %s, slave %d) has another device id now; keeping its counter aside",
                    device_id,
                    bt2,
                    slave,
                )
                counter.forget_anchor()
                orphans[device_id] = counter
                continue
            batteries[device_id] = Battery(
                device_id,
                bt2,
                slave,
                self.layout.name(bt2, slave),
                self.layout.bank_of(bt2, slave),
                counter,
                last_seen=self.started,
            )
        for bank_id, entry in raw_banks.items():
            floor = EnergyCounter.from_json(entry)
            floors[str(bank_id)] = (floor.in_wh, floor.out_wh)
        self.batteries, self.orphans, self.floors = batteries, orphans, floors
        self.restored_devices = frozenset(batteries) | frozenset(orphans) | frozenset(floors)

    # --- inputs --------------------------------------------------------------------------------

    def accept(self, reading: Reading, now: float) -> Step:
        """Take a valid reading: integrate its energy, keep its fields; Rejected when it cannot be served."""
        if reading.ts > now + MAX_CLOCK_AHEAD:
            self.stats.dropped["future_ts"] += 1
            raise Rejected(
                "future_ts",
                f"reading time {reading.ts:.0f} is {reading.ts - now:.0f} s ahead of "
                "this host's clock (check NTP on the reader's host)",
            )
        battery = self._battery_for(reading.bt2, reading.slave_id, now)
        step = battery.counter.add(reading.ts, reading.power, self.settings.max_gap)
        if step is Step.GAP:
            _LOGGER.info(
                "%s: no reading for longer than max_gap (%.0f s); energy counting restarts at %.3f",
                battery.device_id,
                self.settings.max_gap,
                reading.ts,
            )
        battery.update(reading)
        battery.last_seen = now
        battery.appeared = True
        self.stats.accepted += 1
        self.stats.steps[step.value] += 1
        if step in (Step.FIRST, Step.GAP, Step.INTEGRATED):
            self.dirty = True
        return step

    def _battery_for(self, bt2: str, slave_id: int, now: float) -> Battery:
        layout = self.layout
        device_id = layout.device_id(bt2, slave_id)
        battery = self.batteries.get(device_id)
        if battery is None:
            counter = self.orphans.pop(device_id, None)
            if counter is None:
                counter = EnergyCounter()
            counter.forget_anchor()
            battery = Battery(
                device_id,
                bt2,
                slave_id,
                layout.name(bt2, slave_id),
                layout.bank_of(bt2, slave_id),
                counter,
                last_seen=now,
            )
            self.batteries[device_id] = battery
            self.dirty = True
            if battery.bank_id is None and device_id not in self._unbanked_logged:
                self._unbanked_logged.add(device_id)
                _LOGGER.info(
                    "%s (BT-2 %s, slave %d) is in no configured bank (aggregator.banks)",
                    device_id,
                    bt2,
                    slave_id,
                )
            return battery
        if (battery.bt2, battery.slave_id) == (bt2, slave_id):
            return battery
        silent = now - battery.last_seen
        if silent <= self.settings.stale_after:
            self.stats.dropped["slave_conflict"] += 1
            raise Rejected(
                "slave_conflict",
                (
                    f"{device_id}: slave id {slave_id} is reported by BT-2 {bt2} and by BT-2 {battery.bt2}; "
                    f"serving {battery.bt2} only. Give one of them its own device with {OVERRIDE_KEY}, e.g. "
                    f'[[aggregator.batteries]] bt2 = "{bt2}" slave_id = {slave_id} '
                    f'id = "{device_id}_{bt2[-4:]}" (or env RENOGY_AGGREGATOR_BATTERIES)'
                ),
            )
        _LOGGER.warning(
            "%s: now served by BT-2 %s slave %d (BT-2 %s was silent for %.0f s)",
            device_id,
            bt2,
            slave_id,
            battery.bt2,
            silent,
        )
        battery.forget_readings()
        battery.bt2, battery.slave_id = bt2, slave_id
        battery.name, battery.bank_id = layout.name(bt2, slave_id), layout.bank_of(bt2, slave_id)
        self.stats.takeovers += 1
        self.dirty = True
        return battery

    def recover(self, device_id: str, state: DeviceState) -> bool:
        """Raise counters to a retained state's (a lost state file, or a newer copy); True when one grew."""
        energy = [state.values.get(key) for key in ("energy_in", "energy_out")]
        in_wh, out_wh = (v * 1000 if isinstance(v, float) and v >= 0 else None for v in energy)
        if in_wh is None and out_wh is None:
            return False
        if self.layout.bank(device_id) is not None:
            floor = EnergyCounter(*self.floors.get(device_id, (0.0, 0.0)))
            grew = floor.raise_to(in_wh, out_wh)
            self.floors[device_id] = (floor.in_wh, floor.out_wh)
        else:
            battery = self.batteries.get(device_id)
            counter = battery.counter if battery is not None else self.orphans.get(device_id)
            if counter is None:
                if len(self.orphans) >= MAX_ORPHANS or not (in_wh or out_wh):
                    return False
                counter = self.orphans.setdefault(device_id, EnergyCounter())
            grew = counter.raise_to(in_wh, out_wh)
        if grew:
            self.dirty = True
            self.stats.recovered += 1
            _LOGGER.info(
                "%s: energy counters raised to the retained state's (in %s kWh, out %s kWh)",
                device_id,
                energy[0],
                energy[1],
            )
        return grew

    def link(self, bt2: str, info: LinkInfo) -> None:
        """The reader's latest word on a BT-2 link (extended profile diagnostics)."""
        self.links[bt2] = info

    def drop(self, reason: str) -> None:
        self.stats.dropped[reason] += 1

    # --- outputs -------------------------------------------------------------------------------

    def view(self, battery: Battery, now: float) -> BatteryView:
        settings = self.settings
        return battery.view(now, settings.stale_after, settings.info_stale_after, self.links.get(battery.bt2))

    def bank_view(self, bank: BankSpec, now: float) -> BankView:
        members = self._members(bank)
        floor_in, floor_out = self._raise_floor(bank.id, members)
        return BankView(tuple(self.view(b, now) for b in members), floor_in / 1000, floor_out / 1000)

    def _members(self, bank: BankSpec) -> list[Battery]:
        return [b for _, b in sorted(self.batteries.items()) if b.bank_id == bank.id]

    def _raise_floor(self, bank_id: str, members: list[Battery]) -> tuple[float, float]:
        """A bank's energy never decreases, even while a member's counter is unknown after a restart."""
        old = self.floors.get(bank_id, (0.0, 0.0))
        floor = (
            max(old[0], sum(b.counter.in_wh for b in members)),
            max(old[1], sum(b.counter.out_wh for b in members)),
        )
        if floor != old:
            self.floors[bank_id] = floor
            self.dirty = True
        return floor

    def pending(self, now: float) -> list[Outgoing]:
        """Documents that differ from what was last published (configs before states)."""
        out: list[Outgoing] = []
        appeared = [b for _, b in sorted(self.batteries.items()) if b.appeared]
        for battery in appeared:
            self.publisher.offer(
                out,
                battery.device_id,
                battery_config(battery, self.battery_entities),
                values_of(self.battery_entities, self.view(battery, now)),
                now,
            )
        for bank in self.layout.banks:
            shown = [b for b in appeared if b.bank_id == bank.id]
            if shown:
                self.publisher.offer(
                    out,
                    bank.id,
                    bank_config(bank, shown, self.bank_entities),
                    values_of(self.bank_entities, self.bank_view(bank, now)),
                    now,
                )
        return out

    def health(self, now: float) -> dict[str, Any]:
        stats = self.stats
        return {
            "profile": self.settings.profile,
            "readings_accepted": stats.accepted,
            "readings_dropped": dict(stats.dropped),
            "integration": dict(stats.steps),
            "counters_recovered": stats.recovered,
            "takeovers": stats.takeovers,
            "batteries_known": len(self.batteries),
            "devices_published": self.publisher.devices,
            "batteries": {
                device_id: {
                    "bt2": b.bt2,
                    "slave_id": b.slave_id,
                    "bank": b.bank_id,
                    "last_reading_age_s": None if b.last_ts is None else round(now - b.last_ts, 1),
                    "energy_in_kwh": round(b.counter.in_wh / 1000, 4),
                    "energy_out_kwh": round(b.counter.out_wh / 1000, 4),
                }
                for device_id, b in sorted(self.batteries.items())
            },
        }
