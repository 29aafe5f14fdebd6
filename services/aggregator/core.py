"""The aggregator's state machine: readings and retained states in, device documents out (pure, sans-IO).

Every method takes the current time, so tests drive it with a fake clock. The service persists
`snapshot()` whenever `dirty` is set, before publishing what `pending()` returns.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.aggregator.banks import BankSpec, Layout
from services.aggregator.devices import MAX_ASIDE, MAX_DEVICES, FamilyDevices, energy_family, info_fields
from services.aggregator.documents import Outgoing, Publisher, bank_config, battery_config, values_of
from services.aggregator.energy import MAX_COUNTER_WH, SECONDS_PER_HOUR, EnergyCounter, Step, counter_json
from services.aggregator.entities import BANK, BATTERY, for_profile
from services.aggregator.model import BankView, Battery, BatteryView, LinkInfo, Stamp
from services.aggregator.model import Rejected as Rejected  # noqa: PLC0414 - re-exported for the service
from shared.devices.payload import FamilyReading
from shared.payloads import MAX_PACK_POWER_W, DeviceState, Reading
from shared.topics import valid_device_id

_LOGGER = logging.getLogger(__name__)

MAX_ORPHANS = 64
MAX_BATTERIES = 64  # batteries served at once; readings of more are refused (phantoms, a flood)
MAX_LINKS = 64
MAX_LOGGED_KEYS = 256  # bound of every "logged once" set
CLOCK_STEP_TOLERANCE = 1.0  # s; a reader's wall time moving against its monotonic time by more is a step
RECOVERY_SLACK = 600.0  # s beyond save_interval a retained copy may be ahead of the state file
OVERRIDE_KEY = "aggregator.batteries"
# A counter changed by less than this is not worth a write (it is below the published resolution).
SAVE_MIN_WH = 0.1
URGENT_SAVE_DELAY = 2.0  # s; structural changes are saved this soon (one write for several)


@dataclass(frozen=True, slots=True)
class Settings:
    profile: str = "default"
    max_gap: float = 90.0
    stale_after: float = 90.0
    info_stale_after: float = 1800.0
    max_ahead: float = 30.0  # s; a reading further ahead of this host's clock is not shown
    save_interval: float = 300.0
    forget_after: float = 7 * 86400.0  # s without a reading before a battery's device is removed
    refresh: float | None = None  # s; unchanged states are published again this often (None: never)
    controls: bool = False  # opt-in writes: each family's switches are listed (aggregator/devices.py)


@dataclass(slots=True)
class Stats:
    accepted: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    steps: Counter[str] = field(default_factory=Counter)
    recovered: int = 0
    takeovers: int = 0
    clock: Counter[str] = field(default_factory=Counter)
    recovery_refused: int = 0
    expired: int = 0


class AggregatorCore:
    """Latest values, energy counters, bank membership and what has been published."""

    def __init__(
        self, layout: Layout, settings: Settings, *, started: float, mono: float | None = None
    ) -> None:
        self.layout = layout
        self.settings = settings
        self.started = started
        self.started_mono = started if mono is None else mono
        self.battery_entities = for_profile(BATTERY, settings.profile)
        self.bank_entities = for_profile(BANK, settings.profile)
        self.batteries: dict[str, Battery] = {}
        self.orphans: dict[str, EnergyCounter] = {}
        self.floors: dict[str, tuple[float, float]] = {}
        self.links: dict[str, LinkInfo] = {}
        self.devices = FamilyDevices(settings, layout.device_ids)  # controllers, DC-DC chargers, ...
        self.stats = Stats()
        self.dirty = False
        # What a save is worth: counted Wh not on disk yet, and changes that must be saved soon
        # (a new battery, a takeover, a recovered counter).
        self.unsaved_wh = 0.0
        self.urgent = False
        self.restored_devices: frozenset[str] = frozenset()
        self.publisher = Publisher(settings.refresh)
        self._unbanked_logged: set[str] = set()
        self._backed: set[str] = set()  # counters whose value this aggregator knows (file or counted)
        self._reader_clocks: dict[str, tuple[str, float]] = {}  # bt2 -> (boot id, wall - monotonic)
        self._ahead_logged: dict[str, float] = {}

    def mark_saved(self) -> None:
        self.dirty = self.urgent = False
        self.unsaved_wh = 0.0

    def save_due(self, mono: float, last_save: float | None) -> bool:
        """Whether to write the state file now: soon after structural changes, otherwise at most every
        save_interval and only when a counter moved by more than SAVE_MIN_WH (the retained device states
        are the second copy in between)."""
        if not self.dirty:
            return False
        if last_save is None:
            return True
        if self.urgent:  # coalesced: the four batteries of a BT-2 appear within a second
            return mono - last_save >= min(URGENT_SAVE_DELAY, self.settings.save_interval)
        return self.unsaved_wh > SAVE_MIN_WH and mono - last_save >= self.settings.save_interval

    def save_at(self, last_save: float | None) -> float | None:
        """The monotonic time at which save_due turns true without new input (None: not before one)."""
        if not self.dirty or last_save is None:
            return None  # a first save is due at once, at the commit that made the core dirty
        if self.urgent:
            return last_save + min(URGENT_SAVE_DELAY, self.settings.save_interval)
        return last_save + self.settings.save_interval if self.unsaved_wh > SAVE_MIN_WH else None

    # --- persistence ---------------------------------------------------------------------------

    def snapshot(self, now: float) -> dict[str, Any]:
        """The persistent part: every counter with its battery's identity, the counters of devices that
        count energy (the shunt; their id holds their identity), and the bank floors.

        An anchor ahead of this host's clock is left out: after a restart it would make every reading
        until that time look out of order.
        """
        batteries: dict[str, Any] = {
            device_id: {"bt2": None, "slave_id": None, "counter": self._counter_copy(counter, now)}
            for device_id, counter in self.orphans.items()
        }
        for device_id, battery in self.batteries.items():
            batteries[device_id] = {
                "bt2": battery.bt2,
                "slave_id": battery.slave_id,
                "counter": self._counter_copy(battery.counter, now),
            }
        banks = {bank_id: {"in_wh": floor[0], "out_wh": floor[1]} for bank_id, floor in self.floors.items()}
        devices = {ref: {"counter": self._counter_copy(c, now)} for ref, c in self.devices.counters().items()}
        return {
            "saved": now,
            "batteries": batteries,
            "banks": banks,
            "devices": dict(sorted(devices.items())),
        }

    def restore(self, document: Mapping[str, Any]) -> None:
        """Load a snapshot(); ValueError when it is malformed (nothing is changed then)."""
        batteries, orphans, floors = {}, {}, {}
        raw_batteries, raw_banks = document.get("batteries", {}), document.get("banks", {})
        raw_devices = document.get("devices", {})  # absent in files of versions without shunt counters
        if (
            not isinstance(raw_batteries, dict)
            or not isinstance(raw_banks, dict)
            or not isinstance(raw_devices, dict)
        ):
            raise ValueError("'batteries', 'banks' and 'devices' must be objects")
        devices = self._restored_devices(raw_devices)
        for device_id, entry in raw_batteries.items():
            if not valid_device_id(device_id) or not isinstance(entry, dict):
                raise ValueError(f"bad battery entry {device_id[:64]!r}")
            counter = self._restored_counter(device_id, entry.get("counter"))
            if counter is None:
                continue
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
                last_seen=self.started_mono,
            )
        for bank_id, entry in raw_banks.items():
            try:
                floor = EnergyCounter.from_json(entry)
            except ValueError as exc:
                _LOGGER.warning("state file: bank %r ignored: %s", str(bank_id)[:64], exc)
                continue
            if self.layout.bank(str(bank_id)) is not None:
                floors[str(bank_id)] = (floor.in_wh, floor.out_wh)
        self.batteries, self.orphans, self.floors = batteries, orphans, floors
        self.devices.aside = devices
        self.restored_devices = (
            frozenset(batteries) | frozenset(orphans) | frozenset(floors) | frozenset(devices)
        )
        self._backed = set(self.restored_devices)

    def _restored_devices(self, raw: dict[str, Any]) -> dict[str, EnergyCounter]:
        """The device counters of the state file (they wait aside until their device's first reading)."""
        counters: dict[str, EnergyCounter] = {}
        for device_id, entry in raw.items():
            if not isinstance(entry, dict):
                raise ValueError(f"bad device entry {device_id[:64]!r}")
            why = None
            if energy_family(device_id) is None or device_id in self.layout.device_ids:
                why = "not a device that counts energy"
            elif len(counters) >= MAX_DEVICES + MAX_ASIDE:
                why = f"more than {MAX_DEVICES + MAX_ASIDE} device counters"  # more than we ever save
            if why is not None:
                _LOGGER.warning("state file: the counter of %s is ignored: %s", device_id[:64], why)
                continue
            counter = self._restored_counter(device_id, entry.get("counter"))
            if counter is not None:
                counters[device_id] = counter
        return counters

    def _restored_counter(self, device_id: str, raw: Any) -> EnergyCounter | None:
        """One counter of the state file; a bad one is ignored with a WARNING (its retained state, if
        any, recovers it), never served."""
        try:
            counter = EnergyCounter.from_json(raw)
        except ValueError as exc:
            _LOGGER.warning("state file: the counter of %s is ignored: %s", device_id, exc)
            return None
        if counter.last_ts is not None and counter.last_ts > self.started + self.settings.max_ahead:
            _LOGGER.warning(
                "state file: the last sample of %s is %.0f s ahead of this host's clock; not resuming from it",
                device_id,
                counter.last_ts - self.started,
            )
            counter.forget_anchor()
        return counter

    # --- inputs --------------------------------------------------------------------------------

    def accept(self, reading: Reading, now: float, mono: float | None = None) -> Step:
        """Take a valid reading: integrate its energy, keep its fields; Rejected when it cannot be served.

        `now` is this host's wall time, `mono` its monotonic time (None: the same as `now`). Energy is
        integrated over the reader's monotonic intervals; freshness is measured on `mono`, so neither
        stops or freezes when a wall clock steps.
        """
        mono = now if mono is None else mono
        ahead = reading.ts - now
        if ahead > self.settings.max_ahead and reading.mono is None:
            # Without monotonic time this reading would anchor the counter in the future.
            self.stats.dropped["future_ts"] += 1
            raise Rejected(
                "future_ts",
                f"reading time {reading.ts:.0f} is {ahead:.0f} s ahead of "
                "this host's clock (check NTP on the reader's host)",
            )
        battery = self._battery_for(reading.bt2, reading.slave_id, mono)
        self._watch_reader_clock(reading)
        step = self._count(battery.device_id, battery.counter, reading.ts, reading.power, reading)
        if ahead > self.settings.max_ahead:
            self._refuse_display(battery.bt2, ahead, mono)
        else:
            age = max(0.0, -ahead)
            battery.update(reading, Stamp(reading.ts, mono - age, reading.boot_id, reading.mono))
        battery.last_seen = mono
        battery.appeared = True
        self.stats.accepted += 1
        return step

    def accept_device(self, reading: FamilyReading, now: float, mono: float | None = None) -> Step | None:
        """Take a screened reading of a kind other than battery; the energy of a family that names a
        power field (the shunt) is counted like a battery's. The step, None when nothing is counted."""
        mono = now if mono is None else mono
        try:
            device = self.devices.accept(reading, now, mono)
        except Rejected as exc:
            self.stats.dropped[exc.reason] += 1
            raise
        self.stats.accepted += 1
        field = device.family.energy_power
        if device.counter is None or field is None:
            return None
        if device.device_id not in self._backed:
            self.dirty = self.urgent = True  # a new entry of the state file
        self._watch_reader_clock(reading)
        power = reading.values.get(field)
        number = float(power) if isinstance(power, int | float) and not isinstance(power, bool) else None
        step = self._count(device.device_id, device.counter, reading.ts, number, reading)
        ahead = reading.ts - now
        if ahead > self.settings.max_ahead:  # counted on monotonic time, not shown (FamilyDevices.accept)
            self._refuse_display(reading.bt2, ahead, mono)
        return step

    def _count(
        self,
        device_id: str,
        counter: EnergyCounter,
        ts: float,
        power: float | None,
        reading: Reading | FamilyReading,
    ) -> Step:
        """Integrate one sample into a counter (a battery's or a device's), with its bookkeeping: what a
        save is worth, the health steps, the log line of a gap or a clock step."""
        before, prev_ts = counter.in_wh + counter.out_wh, counter.last_ts
        step = counter.add(ts, power, self.settings.max_gap, boot=reading.boot_id, mono=reading.mono)
        self.unsaved_wh += counter.in_wh + counter.out_wh - before
        if step is Step.GAP:
            _LOGGER.info(
                "%s: no reading for longer than max_gap (%.0f s); energy counting restarts at %.3f",
                device_id,
                self.settings.max_gap,
                ts,
            )
        elif step is Step.CLOCK_STEP:
            _LOGGER.warning(
                "%s: reading time went back by %.0f s (a wall clock step); energy counting restarts there",
                device_id,
                (prev_ts or 0.0) - ts,
            )
        self._backed.add(device_id)
        self.stats.steps[step.value] += 1
        if step in (Step.FIRST, Step.GAP, Step.INTEGRATED, Step.RESTART, Step.CLOCK_STEP):
            self.dirty = True
        return step

    def _refuse_display(self, bt2: str, ahead: float, mono: float) -> None:
        """A reading from the future: its energy counts (monotonic time), its values are not shown."""
        self.stats.clock["display_refused"] += 1
        last = self._ahead_logged.get(bt2)
        if last is None or mono - last >= self.settings.stale_after:
            if len(self._ahead_logged) < MAX_LOGGED_KEYS or last is not None:
                self._ahead_logged[bt2] = mono
            _LOGGER.warning(
                "BT-2 %s: reading time is %.0f s ahead of this host's clock (more than %.0f s); its values "
                "are not shown (unknown), its energy is still counted. Check NTP on both hosts",
                bt2,
                ahead,
                self.settings.max_ahead,
            )

    def _watch_reader_clock(self, reading: Reading | FamilyReading) -> None:
        """Log a step of a reader's wall clock once, with its size (wall time against monotonic time)."""
        if reading.mono is None or reading.boot_id is None:
            return
        offset = reading.ts - reading.mono
        held = self._reader_clocks.get(reading.bt2)
        if held is None and len(self._reader_clocks) >= MAX_LINKS:
            return
        self._reader_clocks[reading.bt2] = (reading.boot_id, offset)
        if held is not None and held[0] == reading.boot_id and abs(offset - held[1]) > CLOCK_STEP_TOLERANCE:
            self.stats.clock["reader_steps"] += 1
            _LOGGER.warning(
                "BT-2 %s: the reader's wall clock stepped by %+.1f s; energy is counted on its monotonic clock",
                reading.bt2,
                offset - held[1],
            )

    def _battery_for(self, bt2: str, slave_id: int, now: float) -> Battery:
        layout = self.layout
        device_id = layout.device_id(bt2, slave_id)
        battery = self.batteries.get(device_id)
        if battery is None:
            if len(self.batteries) >= MAX_BATTERIES:
                self.stats.dropped["too_many_batteries"] += 1
                raise Rejected(
                    "too_many_batteries",
                    f"{device_id} (BT-2 {bt2}, slave {slave_id}) not served: {MAX_BATTERIES} batteries are "
                    "already (a device not seen for aggregator.forget_after is removed)",
                )
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
            self.dirty = self.urgent = True
            if (
                battery.bank_id is None
                and device_id not in self._unbanked_logged
                and len(self._unbanked_logged) < MAX_LOGGED_KEYS
            ):
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
        self.dirty = self.urgent = True
        return battery

    def recover(
        self, device_id: str, state: DeviceState, copy: EnergyCounter | None = None, now: float | None = None
    ) -> bool:
        """Raise counters to a retained state's (a lost state file, or a newer copy); True when one grew.

        Anyone who can publish on the broker can publish a retained state, so a value is taken only up to
        a plausible ceiling: what this aggregator knows plus what the rated power could have added since
        the last save, or for a counter it knows nothing of, MAX_COUNTER_WH per battery.
        """
        energy = [state.values.get(key) for key in ("energy_in", "energy_out")]
        in_wh, out_wh = (v * 1000 if isinstance(v, float) and v >= 0 else None for v in energy)
        bank = self.layout.bank(device_id)
        if copy is not None and bank is None:
            in_wh, out_wh = copy.in_wh, copy.out_wh  # exact, with the sample they were counted to
        if in_wh is None and out_wh is None:
            return False
        if bank is not None:
            members = max(1, len(self._members(bank)))
            floor = EnergyCounter(*self.floors.get(device_id, (0.0, 0.0)))
            if not self._plausible(device_id, floor, (in_wh, out_wh), members):
                return False
            grew = floor.raise_to(in_wh, out_wh)
            self.floors[device_id] = (floor.in_wh, floor.out_wh)
        else:
            battery = self.batteries.get(device_id)
            # A shunt's (any energy family's) counter lives with the devices, never among the batteries.
            on_device = (
                battery is None
                and device_id not in self.layout.device_ids
                and energy_family(device_id) is not None
            )
            counter: EnergyCounter | None
            if battery is not None:
                counter = battery.counter
            else:
                counter = self.devices.counter(device_id) if on_device else self.orphans.get(device_id)
            if counter is None:
                full = len(self.devices.aside) >= MAX_ASIDE if on_device else len(self.orphans) >= MAX_ORPHANS
                if full or not (in_wh or out_wh):
                    return False
                counter = EnergyCounter()
            if not self._plausible(device_id, counter, (in_wh, out_wh), 1):
                return False
            if on_device:
                self.devices.keep(device_id, counter)
            elif battery is None:
                self.orphans.setdefault(device_id, counter)
            if copy is not None:
                if copy.last_ts is not None and copy.last_ts > (self.started if now is None else now) + (
                    self.settings.max_ahead
                ):
                    copy.forget_anchor()  # never resume from a sample in the future
                grew = counter.adopt(copy, self.settings.max_gap)
            else:
                grew = counter.raise_to(in_wh, out_wh)  # an older format: totals only
        if grew:
            self.dirty = self.urgent = True
            self.stats.recovered += 1
            _LOGGER.info(
                "%s: energy counters raised to the retained state's (in %s kWh, out %s kWh)",
                device_id,
                energy[0],
                energy[1],
            )
        return grew

    def _plausible(
        self,
        device_id: str,
        counter: EnergyCounter,
        values: tuple[float | None, float | None],
        batteries: int,
    ) -> bool:
        if device_id in self._backed:
            allowance = MAX_PACK_POWER_W * batteries * (self.settings.save_interval + RECOVERY_SLACK)
            ceilings = (
                counter.in_wh + allowance / SECONDS_PER_HOUR,
                counter.out_wh + allowance / SECONDS_PER_HOUR,
            )
            why = "more than the rated power could have added since the last save"
        else:
            ceilings = (MAX_COUNTER_WH * batteries, MAX_COUNTER_WH * batteries)
            why = f"more than {MAX_COUNTER_WH / 1000:.0f} kWh per battery"
        for key, value, ceiling in zip(("energy_in", "energy_out"), values, ceilings, strict=True):
            if value is not None and value > ceiling:
                self.stats.recovery_refused += 1
                _LOGGER.warning(
                    "%s: retained %s of %.4f kWh refused: %s (counter %.4f kWh). Someone else may publish "
                    "on renogy/device/#: see the broker ACLs in docs/deploy.md",
                    device_id,
                    key,
                    value / 1000,
                    why,
                    (counter.in_wh if key == "energy_in" else counter.out_wh) / 1000,
                )
                return False
        return True

    def link(self, bt2: str, info: LinkInfo, at: float | None = None) -> None:
        """The reader's latest word on a BT-2 link (extended profile diagnostics); `at`: monotonic receipt."""
        if bt2 not in self.links and len(self.links) >= MAX_LINKS:
            del self.links[min(self.links, key=lambda key: self.links[key].ts)]
        self.links[bt2] = info if at is None else dataclasses.replace(info, ts=at)

    def drop(self, reason: str) -> None:
        self.stats.dropped[reason] += 1

    # --- outputs -------------------------------------------------------------------------------

    def view(self, battery: Battery, now: float) -> BatteryView:
        """`now` on the aggregator's monotonic clock (the `mono` of accept)."""
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
            if bank_id not in self.floors:
                self.urgent = True  # a new entry of the state file
            self.floors[bank_id] = floor
            self.dirty = True
        return floor

    def pending(self, now: float, mono: float | None = None) -> list[Outgoing]:
        """Documents that differ from what was last published (configs before states); an empty payload
        removes a device (a battery not seen for forget_after)."""
        mono = now if mono is None else mono
        out = self._expire(mono)
        if self.devices.expire(out, self.publisher, mono):
            self.dirty = self.urgent = True  # a counter set aside
        appeared = [b for _, b in sorted(self.batteries.items()) if b.appeared]
        for battery in appeared:
            self.publisher.offer(
                out,
                battery.device_id,
                battery_config(battery, self.battery_entities),
                values_of(self.battery_entities, self.view(battery, mono)),
                now,
                mono=mono,
                counter=self._counter_copy(battery.counter, now),
            )
        for bank in self.layout.banks:
            shown = [b for b in appeared if b.bank_id == bank.id]
            if shown:
                self.publisher.offer(
                    out,
                    bank.id,
                    bank_config(bank, shown, self.bank_entities),
                    values_of(self.bank_entities, self.bank_view(bank, mono)),
                    now,
                    mono=mono,
                )
        self.devices.offer(out, self.publisher, now, mono)
        return out

    def next_change(self, mono: float) -> float | None:
        """The earliest monotonic time, not before `mono`, at which pending() may differ without new input:
        a value going stale, an unchanged state due again (refresh), a silent device to forget. A value
        is fresh up to and including its deadline, so evaluate just after it. None: nothing is due."""
        settings = self.settings
        due: list[float] = []
        for battery in self.batteries.values():
            due.append(battery.last_seen + settings.forget_after)
            due.extend(stamp.at + settings.stale_after for _, stamp in battery.values.values())
            due.extend(stamp.at + settings.info_stale_after for _, stamp in battery.status.values())
            link = self.links.get(battery.bt2)
            if link is not None:
                due.append(link.ts + settings.stale_after)
        for device in self.devices.devices.values():
            due.append(device.last_seen + settings.forget_after)
            info = info_fields(device.family)
            for name, (_, stamp) in device.values.items():
                if name not in device.family.identity:  # identity fields never go stale
                    due.append(
                        stamp.at + (settings.info_stale_after if name in info else settings.stale_after)
                    )
        refresh = self.publisher.next_refresh(mono)
        if refresh is not None:
            due.append(refresh)
        return min((t for t in due if t >= mono), default=None)

    def _counter_copy(self, counter: EnergyCounter, now: float) -> dict[str, Any]:
        return counter_json(counter, now, self.settings.max_ahead)

    def _expire(self, mono: float) -> list[Outgoing]:
        """Remove the devices of batteries not seen for forget_after; their counters are kept aside."""
        out: list[Outgoing] = []
        limit = self.settings.forget_after
        for device_id, battery in list(self.batteries.items()):
            silent = mono - battery.last_seen
            if silent <= limit:
                continue
            del self.batteries[device_id]
            battery.counter.forget_anchor()
            while len(self.orphans) >= MAX_ORPHANS:
                del self.orphans[next(iter(self.orphans))]  # the oldest one set aside
            self.orphans[device_id] = battery.counter
            self._reader_clocks.pop(battery.bt2, None)
            self._ahead_logged.pop(battery.bt2, None)
            self._unbanked_logged.discard(device_id)
            self.stats.expired += 1
            self.dirty = self.urgent = True
            if self.publisher.owns(device_id):
                out += [Outgoing(device_id, "config", b""), Outgoing(device_id, "state", b"")]
            self.publisher.remove(device_id)
            _LOGGER.warning(
                "%s (BT-2 %s, slave %d): no reading for %.0f s (aggregator.forget_after %.0f s); device removed, "
                "its energy counter kept aside",
                device_id,
                battery.bt2,
                battery.slave_id,
                silent,
                limit,
            )
        return out

    def health(self, now: float, mono: float | None = None) -> dict[str, Any]:
        mono = now if mono is None else mono
        stats = self.stats
        return {
            "profile": self.settings.profile,
            "readings_accepted": stats.accepted,
            "readings_dropped": dict(stats.dropped),
            "integration": dict(stats.steps),
            "counters_recovered": stats.recovered,
            "recovery_refused": stats.recovery_refused,
            "takeovers": stats.takeovers,
            "clock": dict(stats.clock),
            "expired": stats.expired + self.devices.expired,
            "batteries_known": len(self.batteries),
            "devices_known": len(self.devices.devices),
            "devices_published": self.publisher.devices,
            "batteries": {
                device_id: {
                    "bt2": b.bt2,
                    "slave_id": b.slave_id,
                    "bank": b.bank_id,
                    "last_reading_age_s": None if b.last is None else round(mono - b.last.at, 1),
                    "energy_in_kwh": round(b.counter.in_wh / 1000, 4),
                    "energy_out_kwh": round(b.counter.out_wh / 1000, 4),
                }
                for device_id, b in sorted(self.batteries.items())
            },
            "devices": self.devices.health(mono),
        }
