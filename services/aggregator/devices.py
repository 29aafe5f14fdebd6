"""Devices of the families other than batteries (controller, dcc, inverter, shunt): latest values per
(BT-2, kind, slave), and their documents from the family's EntityDef table (pure, like the battery path).

A device's id is ``<kind>_<bt2>_<slave>``: it can never be a battery's (``battery_<slave>`` or an
aggregator.batteries id, which is refused here) and, holding the BT-2, two controllers at the default
slave 255 behind two BT-1 modules never share one. The gateway's entity keys are hashed from it, so it
must not change: it uses nothing a user configures.

With ``controls`` on, a family's ControlDefs (the controller's load switch) join its entities as
switches whose state is the read-back field (ControlDef.compute), never a requested value; with
controls off they are not listed at all.

A family that names a power field (``DeviceFamily.energy_power``: the Smart Shunt) gets energy counters
like a battery's: the same EnergyCounter, integrated by the core (AggregatorCore.accept_device), saved in
the state file, carried in the retained state as the second copy, and served as ENERGY_ENTITIES after
the family's own table (the counters are no value of a reading); they never go stale. The counter of a
removed device is kept aside, so that its totals carry on when it comes back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from services.aggregator.documents import MANUFACTURER, Outgoing, Publisher, publish_number, publish_text
from services.aggregator.energy import EnergyCounter, counter_json
from services.aggregator.inputs import DropLog, drop_reason
from services.aggregator.model import Rejected, Stamp, Value
from shared.devices import FAMILIES, DeviceFamily, EntityDef
from shared.devices.base import ControlDef, fields_in
from shared.devices.payload import FamilyReading, parse_family_reading
from shared.mqtt import Message
from shared.payloads import DeviceConfig, DeviceInfo, PayloadError
from shared.registers import Value as RawValue
from shared.topics import Topics

if TYPE_CHECKING:
    from services.aggregator.core import AggregatorCore, Settings

_LOGGER = logging.getLogger(__name__)

MAX_DEVICES: Final = 64  # non-battery devices served at once; readings of more are refused
KNOWN: Final = ", ".join(kind for kind in FAMILIES if kind != "battery")
MAX_ASIDE: Final = 64  # counters of devices not served (removed, or in the state file and not heard yet)
HEX: Final = frozenset("0123456789abcdef")
# The entities of a family's energy counters (a battery's energy_in / energy_out), in both profiles.
ENERGY_ENTITIES: Final = (
    EntityDef("energy_in", "Energy in", "energy_in", "kWh", "energy", "total_increasing", 3),
    EntityDef("energy_out", "Energy out", "energy_out", "kWh", "energy", "total_increasing", 3),
)


def device_id(kind: str, bt2: str, slave_id: int) -> str:
    return f"{kind}_{bt2}_{slave_id}"


def energy_family(device_id: str) -> DeviceFamily | None:
    """The family of a device id as device_id() makes it, when that family counts energy."""
    kind, _, rest = device_id.partition("_")
    bt2, _, slave = rest.partition("_")
    family = _family(kind)
    if family is None or family.energy_power is None or len(bt2) != 12 or not set(bt2) <= HEX:
        return None
    if not (slave.isascii() and slave.isdigit() and str(int(slave)) == slave and int(slave) <= 255):
        return None
    return family


def device_name(family: DeviceFamily, bt2: str, slave_id: int) -> str:
    """ "Charge controller 3D0E", with "#<slave>" when the slave id is not the family's default."""
    suffix = "" if slave_id == family.default_slave else f" #{slave_id}"
    return f"{family.title} {bt2[-4:].upper()}{suffix}"


def info_fields(family: DeviceFamily) -> frozenset[str]:
    """Fields read every reader.info_interval only (they age with info_stale_after)."""
    return frozenset(
        f.name for b in family.blocks if b.cadence == "info" for f in fields_in(family, b.start, b.words)
    )


def entities_of(family: DeviceFamily, profile: str) -> tuple[EntityDef, ...]:
    table = tuple(e for e in family.entities if profile == "extended" or not e.extended)
    return table + ENERGY_ENTITIES if family.energy_power is not None else table


def controls_of(family: DeviceFamily, enabled: bool) -> tuple[ControlDef, ...]:
    """The switches served for a family: none unless controls are on (opt-in writes)."""
    return family.controls if enabled else ()


def publish_state(entity: EntityDef, value: Value) -> Value:
    """A state value as published: texts cleaned and bounded, numbers rounded like battery values."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return publish_text(value)
    return publish_number(value, entity.accuracy, energy=entity.device_class == "energy")


@dataclass(slots=True)
class FamilyDevice:
    """One device (BT-2, kind, slave id) as far as its readings told us."""

    device_id: str
    family: DeviceFamily
    bt2: str
    slave_id: int
    name: str
    values: dict[str, tuple[RawValue, Stamp]] = field(default_factory=dict)
    last: Stamp | None = None
    last_seen: float = 0.0  # the aggregator's monotonic time of the last accepted reading
    counter: EnergyCounter | None = None  # families with energy_power only

    def update(self, reading: FamilyReading, stamp: Stamp) -> None:
        """Keep each field's newest value; an older reading fills only fields it has newer values of."""
        for name, value in reading.values.items():
            held = self.values.get(name)
            if held is None or stamp.not_older_than(held[1]):
                self.values[name] = (value, stamp)
        if self.last is None or stamp.not_older_than(self.last):
            self.last = stamp

    def view(self, now: float, stale_after: float, info_stale_after: float) -> dict[str, RawValue]:
        """The fresh values: cycle fields for stale_after, info fields for info_stale_after, identity
        fields (the model) for ever."""
        family, info = self.family, info_fields(self.family)
        fresh: dict[str, RawValue] = {}
        for name, (value, stamp) in self.values.items():
            if name in family.identity:
                fresh[name] = value
                continue
            horizon = info_stale_after if name in info else stale_after
            if now - stamp.at <= horizon:
                fresh[name] = value
        return fresh

    @property
    def model(self) -> str | None:
        held = self.values.get("model")
        return held[0] if held is not None and isinstance(held[0], str) and held[0] else None


class FamilyDevices:
    """Every non-battery device: accept readings, offer documents, expire the silent ones."""

    def __init__(self, settings: Settings, reserved: frozenset[str]) -> None:
        self.settings = settings
        self.reserved = reserved  # bank and aggregator.batteries ids
        self.devices: dict[str, FamilyDevice] = {}
        self.aside: dict[str, EnergyCounter] = {}  # counters of devices not served, by device id
        self.expired = 0

    def accept(self, reading: FamilyReading, now: float, mono: float) -> FamilyDevice:
        """Keep a screened reading's values; Rejected when it cannot be served. A reading ahead of this
        host's clock is not shown; a counting family's is still taken when it has monotonic time (its
        energy is counted, as a battery's is), otherwise refused."""
        settings = self.settings
        family = _family(reading.kind)
        if family is None:
            raise Rejected("unknown_kind", f"unknown device kind {reading.kind!r} (known: {KNOWN})")
        ahead = reading.ts - now
        future = ahead > settings.max_ahead
        if future and (family.energy_power is None or reading.mono is None):
            raise Rejected(
                "future_ts",
                f"reading time {reading.ts:.0f} is {ahead:.0f} s ahead of this host's clock (check NTP on the "
                "reader's host); its values are not shown",
            )
        ref = device_id(reading.kind, reading.bt2, reading.slave_id)
        device = self.devices.get(ref)
        if device is None:
            if ref in self.reserved:
                raise Rejected("id_conflict", f"{ref}: a bank or aggregator.batteries entry has this id")
            if len(self.devices) >= MAX_DEVICES:
                raise Rejected(
                    "too_many_devices",
                    f"{ref} not served: {MAX_DEVICES} devices other than batteries are already (a device not "
                    "seen for aggregator.forget_after is removed)",
                )
            device = FamilyDevice(
                ref, family, reading.bt2, reading.slave_id, device_name(family, reading.bt2, reading.slave_id)
            )
            if family.energy_power is not None:
                # A restored counter keeps its last sample (the interval across a restart is counted).
                device.counter = self.aside.pop(ref, None) or EnergyCounter()
            self.devices[ref] = device
            _LOGGER.info("%s: %s on BT-2 %s, slave %d", ref, device.name, reading.bt2, reading.slave_id)
        if not future:
            age = max(0.0, -ahead)
            device.update(reading, Stamp(reading.ts, mono - age, reading.boot_id, reading.mono))
        device.last_seen = mono
        return device

    def counter(self, device_id: str) -> EnergyCounter | None:
        """The counter of a device, served or set aside."""
        device = self.devices.get(device_id)
        return device.counter if device is not None else self.aside.get(device_id)

    def keep(self, device_id: str, counter: EnergyCounter) -> bool:
        """Set a counter aside for a device not served (recovered from its retained state); False when
        there is no room."""
        if device_id in self.devices or device_id in self.aside:
            return True
        if len(self.aside) >= MAX_ASIDE:
            return False
        self.aside[device_id] = counter
        return True

    def counters(self) -> dict[str, EnergyCounter]:
        """Every counter, served or set aside, by device id."""
        served = {ref: d.counter for ref, d in self.devices.items() if d.counter is not None}
        return self.aside | served

    def config(self, device: FamilyDevice) -> DeviceConfig:
        info = DeviceInfo(
            id=device.device_id,
            name=device.name,
            model=device.model or device.family.title,
            manufacturer=MANUFACTURER,
            bt2=device.bt2,
            slave_id=device.slave_id or None,  # a shunt has no slave id
        )
        family, settings = device.family, self.settings
        specs = [e.spec for e in entities_of(family, settings.profile)]
        specs += [c.spec for c in controls_of(family, settings.controls)]
        return DeviceConfig(info, tuple(specs))

    def states(self, device: FamilyDevice, mono: float) -> dict[str, Value]:
        settings = self.settings
        view = device.view(mono, settings.stale_after, settings.info_stale_after)
        if device.counter is not None:
            view |= {"energy_in": device.counter.in_wh / 1000, "energy_out": device.counter.out_wh / 1000}
        states = {
            e.key: publish_state(e, e.compute(view)) for e in entities_of(device.family, settings.profile)
        }
        # The switch follows the read-back field of the latest fresh reading; stale -> unknown.
        states.update({c.key: c.compute(view) for c in controls_of(device.family, settings.controls)})
        return states

    def offer(self, out: list[Outgoing], publisher: Publisher, now: float, mono: float) -> None:
        max_ahead = self.settings.max_ahead
        for ref, device in sorted(self.devices.items()):
            # The exact counter rides in the state, as a battery's does: the state file's second copy.
            counter = None if device.counter is None else counter_json(device.counter, now, max_ahead)
            publisher.offer(
                out, ref, self.config(device), self.states(device, mono), now, mono=mono, counter=counter
            )

    def expire(self, out: list[Outgoing], publisher: Publisher, mono: float) -> bool:
        """Remove the devices not seen for forget_after (their retained documents are cleared, their
        counters kept aside); True when a counter was set aside (the state file changes)."""
        limit = self.settings.forget_after
        aside = False
        for ref, device in list(self.devices.items()):
            silent = mono - device.last_seen
            if silent <= limit:
                continue
            del self.devices[ref]
            if device.counter is not None:
                device.counter.forget_anchor()
                while len(self.aside) >= MAX_ASIDE:
                    del self.aside[next(iter(self.aside))]  # the oldest one set aside
                self.aside[ref] = device.counter
                aside = True
            self.expired += 1
            if publisher.owns(ref):
                out += [Outgoing(ref, "config", b""), Outgoing(ref, "state", b"")]
            publisher.remove(ref)
            _LOGGER.warning(
                "%s: no reading for %.0f s (aggregator.forget_after %.0f s); device removed",
                ref,
                silent,
                limit,
            )
        return aside

    def health(self, mono: float) -> dict[str, Any]:
        return {
            ref: {
                "kind": d.family.kind,
                "bt2": d.bt2,
                "slave_id": d.slave_id,
                "last_reading_age_s": None if d.last is None else round(mono - d.last.at, 1),
            }
            for ref, d in sorted(self.devices.items())
        }


def family_reading(
    core: AggregatorCore, topics: Topics, message: Message, drops: DropLog, *, now: float, mono: float
) -> bool | None:
    """Route a reading of a kind other than battery: None when the topic is not one (the caller goes on),
    True when accepted (the caller publishes), False when dropped with a rate-limited log line."""
    topic = message.topic
    if not topics.reading_topic_shape(topic):
        return None
    parsed = topics.parse_device_reading(topic)
    if parsed is None:
        return _dropped(
            core,
            drops,
            "bad_topic",
            topic,
            "not <root>/bt2/<12 hex digits>/<kind>/<slave id 0..255>/reading",
            mono=mono,
        )
    bt2, kind, slave_id = parsed
    if kind == "battery":
        return None
    family = _family(kind)
    if family is None:
        return _dropped(
            core, drops, "unknown_kind", topic, f"unknown device kind {kind!r} (known: {KNOWN})", mono=mono
        )
    if not message.payload:
        return False  # a retained reading was cleared
    try:
        reading = parse_family_reading(family, message.payload, bt2=bt2, slave_id=slave_id)
    except PayloadError as exc:
        return _dropped(core, drops, drop_reason(exc), topic, str(exc), mono=mono)
    try:
        core.accept_device(reading, now, mono)
    except Rejected as exc:
        drops.dropped(topic, str(exc), mono)
        return False
    return True


def _family(kind: str) -> DeviceFamily | None:
    found = next((f for known, f in FAMILIES.items() if known == kind), None)
    return found if kind != "battery" else None


def _dropped(
    core: AggregatorCore, drops: DropLog, reason: str, topic: str, text: str, *, mono: float
) -> bool:
    core.drop(reason)
    drops.dropped(topic, text, mono)
    return False
