"""Legacy entity naming: the object ids, names and keys the old system (jorik41/renogy-bt) served.

That system serves every sensor on one ESPHome device (no sub-devices) and names it after its
``[device] alias`` (by default the BT-2's name, ``BT-TH-`` + the last 8 hex digits of its MAC):

* per battery, alias ``<A>_<slave>``: ``current``, ``voltage``, ``remaining_charge``, ``capacity``,
  ``power``, ``battery_level``, ``energy_in_kwh``, ``energy_out_kwh`` with keys
  ``1000 + (slave - 48) * 1000 + n`` (n = position in that list);
* for the bank, alias ``<A>_combined``: ``battery_<slave>_cell_voltage_min`` / ``_max`` /
  ``battery_<slave>_temperature_min`` / ``_max`` for each battery, then ``combined_capacity``,
  ``combined_remaining_charge``, ``combined_power``, ``combined_current``, ``combined_energy_in_kwh``,
  ``combined_energy_out_kwh``, ``combined_charge_percentage``, with keys from 5000 on in that order;
* object id ``<alias>_<data key>``, name ``<alias> <data key with spaces, title-cased>``
  (``BT-TH-E3383D0E_48 Energy In Kwh``).

Home Assistant's ESPHome integration builds an entity's unique id from the node's MAC, the platform
and the object id (``<mac>-sensor-<object id>``), plus ``@<device id>`` only for an entity on a
sub-device; it tracks a listed entity by (device id, key), and removes the registry entry of a key
that is no longer listed. Serving the same object ids on the main device with the same keys is what
lets an existing entry carry on with its entity ids, history and statistics.

Entities the old system did not have (the extended profile) get ``<alias>_<our key>`` on the same
aliases and a hashed key; none of them can take an old object id or key.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from shared.payloads import DeviceConfig

# (our key, the old data key), in the order the old system created them (its keys count up in this order).
BATTERY_KEYS: Final = (
    ("current", "current"),
    ("voltage", "voltage"),
    ("remaining_charge", "remaining_charge"),
    ("capacity", "capacity"),
    ("power", "power"),
    ("battery_level", "battery_level"),
    ("energy_in", "energy_in_kwh"),
    ("energy_out", "energy_out_kwh"),
)
# Per battery, but served on the bank's alias: battery_<slave>_<key>.
BATTERY_EXTREMES: Final = ("cell_voltage_min", "cell_voltage_max", "temperature_min", "temperature_max")
BANK_KEYS: Final = (
    ("capacity", "combined_capacity"),
    ("remaining_charge", "combined_remaining_charge"),
    ("power", "combined_power"),
    ("current", "combined_current"),
    ("energy_in", "combined_energy_in_kwh"),
    ("energy_out", "combined_energy_out_kwh"),
    ("battery_level", "combined_charge_percentage"),
)
BATTERY_KEY_BASE: Final = 1000  # + (slave - 48) * 1000
FIRST_SLAVE: Final = 48
COMBINED_KEY_BASE: Final = 5000
COMBINED_SUFFIX: Final = "combined"
_BATTERY_REF = re.compile(r"^battery_(\d{1,3})$")
# Devices of the other kinds (controller, dcc, ...): ``<kind>_<bt2>_<slave>`` (services/aggregator/devices.py).
_FAMILY_REF = re.compile(r"^[a-z]+_[0-9a-f]{12}_\d{1,3}$")


@dataclass(frozen=True, slots=True)
class Served:
    """How one entity of a device document is served: key, object id and name."""

    key: int
    object_id: str
    name: str
    data_key: str | None = None  # the old system's data key; None for an entity it did not have


def bt2_name(bt2: str) -> str:
    """The name a BT-2 advertises: ``BT-TH-`` + the last 8 hex digits of its MAC."""
    digits = re.sub(r"[^0-9A-Fa-f]", "", bt2)
    return f"BT-TH-{digits[-8:].upper()}"


def old_name(alias: str, data_key: str) -> str:
    """The old system's entity name: ``<alias> <data key, underscores as spaces, title-cased>``."""
    return f"{alias} {data_key.replace('_', ' ').title()}"


def slave_of(ref: str, config: DeviceConfig) -> int | None:
    """A battery's slave id (from its document, else its default device id); None for a bank or another kind."""
    if _FAMILY_REF.match(ref) and not ref.startswith("battery_"):
        return None
    if config.device.slave_id is not None:
        return config.device.slave_id
    found = _BATTERY_REF.match(ref)
    return int(found.group(1)) if found else None


class LegacyNaming:
    """Assigns the old system's keys, object ids and names to the entities of our device documents."""

    def __init__(self, device_name: str | None = None, *, hash_key: Callable[[str], int]) -> None:
        self.device_name = device_name
        self._hash = hash_key

    def assign(self, configs: Mapping[str, DeviceConfig]) -> tuple[dict[tuple[str, str], Served], list[str]]:
        """(device ref, our key) -> how it is served, and the problems found (logged by the caller)."""
        batteries = {ref: slave for ref, cfg in configs.items() if (slave := slave_of(ref, cfg)) is not None}
        # Controllers, DC-DC chargers ... did not exist in the old system: their own alias, hashed keys.
        others = {ref for ref in configs if ref not in batteries and _FAMILY_REF.match(ref)}
        banks = sorted(ref for ref in configs if ref not in batteries and ref not in others)
        members: dict[str, list[str]] = {bank: [] for bank in banks}
        for ref in sorted(batteries, key=lambda r: (batteries[r], r)):
            via = configs[ref].device.via_device
            if via in members:
                members[via].append(ref)
        # The old system had one "combined" device: the bank with batteries first (by id) plays it.
        primary = next((bank for bank in banks if members[bank]), banks[0] if banks else None)
        problems: list[str] = []
        aliases: dict[str, str] = {}
        for ref, slave in batteries.items():
            base = self._base_alias(configs[ref])
            if base is None:
                problems.append(
                    f"legacy naming: {ref} has no BT-2 address in its device document; set "
                    "gateway.legacy_device_name (the old [device] alias) to name it"
                )
                base = ref
            aliases[ref] = f"{base}_{slave}"
        bank_alias: dict[str, str] = {}
        for ref in others:
            aliases[ref] = f"{self._base_alias(configs[ref]) or 'renogy'}_{ref}"
        for bank in banks:
            first = members[bank][0] if members[bank] else None
            base = self.device_name or (self._base_alias(configs[first]) if first else None) or "renogy"
            bank_alias[bank] = f"{base}_{COMBINED_SUFFIX if bank == primary else bank}"

        names = {(ref, spec.key): spec.name for ref, cfg in configs.items() for spec in cfg.entities}
        out: dict[tuple[str, str], Served] = {}
        used_keys: set[int] = {0}
        used_ids: set[str] = set()

        def take(ref: str, key: str, alias: str, data_key: str | None, wanted: int | None) -> None:
            object_id = f"{alias}_{data_key or key}"
            name = old_name(alias, data_key) if data_key else f"{alias} {names[(ref, key)]}"
            if object_id in used_ids:
                problems.append(f"legacy naming: object id {object_id!r} of {ref}.{key} is taken; suffixed")
                salt = 2
                while f"{object_id}_{salt}" in used_ids:
                    salt += 1
                object_id = f"{object_id}_{salt}"
            number = wanted if wanted is not None and 0 < wanted < 2**32 and wanted not in used_keys else None
            if number is None:
                number, salt = self._hash(object_id), 0
                while number in used_keys:
                    salt += 1
                    number = self._hash(f"{object_id}#{salt}")
            used_keys.add(number)
            used_ids.add(object_id)
            out[(ref, key)] = Served(number, object_id, name, data_key)

        # The old entities first, so that their keys and ids are never taken by an extra one.
        for ref in sorted(batteries, key=lambda r: (batteries[r], r)):
            alias, keys = aliases[ref], {spec.key for spec in configs[ref].entities}
            base_key = BATTERY_KEY_BASE + (batteries[ref] - FIRST_SLAVE) * 1000
            for index, (ours, data_key) in enumerate(BATTERY_KEYS):
                if ours in keys:
                    take(ref, ours, alias, data_key, base_key + index)
        for bank in banks:
            alias, wanted = bank_alias[bank], COMBINED_KEY_BASE if bank == primary else None
            for ref in members[bank]:
                keys = {spec.key for spec in configs[ref].entities}
                for index, ours in enumerate(BATTERY_EXTREMES):
                    data_key = f"battery_{batteries[ref]}_{ours}"
                    number = None if wanted is None else wanted + index
                    if ours in keys:
                        take(ref, ours, alias, data_key, number)
                if wanted is not None:
                    wanted += len(BATTERY_EXTREMES)
            keys = {spec.key for spec in configs[bank].entities}
            for index, (ours, data_key) in enumerate(BANK_KEYS):
                if ours in keys:
                    number = None if wanted is None else wanted + index
                    take(bank, ours, alias, data_key, number)
        # Then everything else, on the same aliases (a battery outside every bank keeps its extremes here).
        for ref in sorted(configs):
            alias = aliases.get(ref) or bank_alias[ref]
            for spec in configs[ref].entities:
                if (ref, spec.key) not in out:
                    take(ref, spec.key, alias, None, None)
        return out, problems

    def _base_alias(self, config: DeviceConfig) -> str | None:
        if self.device_name:
            return self.device_name
        return bt2_name(config.device.bt2) if config.device.bt2 else None


# --- what the old system served besides names: its guessed units and precision (for emulating it) ------


@dataclass(frozen=True, slots=True)
class OldAttributes:
    unit: str
    device_class: str | None
    state_class: str
    accuracy: int
    icon: str


def old_attributes(data_key: str, temperature_unit: str = "C") -> OldAttributes:
    """The unit, classes, precision and icon the old system guessed from a data key's name."""
    key = data_key.lower()
    measurement = "measurement"
    if "temperature" in key:
        unit = "°F" if temperature_unit.upper() == "F" else "°C"
        return OldAttributes(unit, "temperature", measurement, 1, "mdi:thermometer")
    if key.endswith("voltage") or "_voltage" in key:
        return OldAttributes("V", "voltage", measurement, 1, "mdi:flash")
    if key.endswith("current") or "_current" in key:
        return OldAttributes("A", "current", measurement, 2, "mdi:current-dc")
    if key.endswith("power") or "_power" in key:
        return OldAttributes("W", "power", measurement, 0, "mdi:lightning-bolt")
    if key.endswith("percentage") or "soc" in key or (key.endswith("level") and "battery" in key):
        return OldAttributes("%", "battery", measurement, 0, "mdi:battery")
    if "amp_hour" in key or key.endswith("_ah"):
        return OldAttributes("Ah", None, measurement, 1, "mdi:battery-charging")
    if "energy" in key:
        unit = "kWh" if "kwh" in key else "Wh"
        return OldAttributes(unit, "energy", "total_increasing", 2, "mdi:lightning-bolt-circle")
    if key.endswith("frequency"):
        return OldAttributes("Hz", "frequency", measurement, 2, "mdi:sine-wave")
    if "capacity" in key or "charge" in key:
        return OldAttributes("Ah", None, measurement, 2, "mdi:battery-high")
    return OldAttributes("", None, measurement, 2, "")


def with_old_attributes(
    config: DeviceConfig, served: Mapping[tuple[str, str], Served], ref: str
) -> DeviceConfig:
    """``config`` with the old system's units and precision on the entities it had (for emulating it)."""
    specs = []
    for spec in config.entities:
        entry = served.get((ref, spec.key))
        if entry is None or entry.data_key is None:
            specs.append(spec)
            continue
        attrs = old_attributes(entry.data_key)
        specs.append(
            dataclasses.replace(
                spec,
                unit=attrs.unit or None,
                device_class=attrs.device_class,
                state_class=attrs.state_class,
                accuracy=attrs.accuracy,
                icon=attrs.icon or None,
            )
        )
    return DeviceConfig(config.device, tuple(specs))
