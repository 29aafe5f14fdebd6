"""Which device id, name and bank each battery gets, from aggregator.banks and aggregator.batteries (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.config import SLAVE_ID_RANGE, AggregatorConfig, ConfigError
from shared.topics import bt2_id, valid_device_id

DEFAULT_BANK_ID = "bank"
DEFAULT_BANK_NAME = "Battery Bank"
BANK_KEYS = frozenset({"id", "name", "batteries"})
BATTERY_KEYS = frozenset({"bt2", "slave_id", "id", "name"})


@dataclass(frozen=True, slots=True)
class Selector:
    """A battery by slave id, optionally on one BT-2 only."""

    slave_id: int
    bt2: str | None = None

    def matches(self, bt2: str, slave_id: int) -> bool:
        return slave_id == self.slave_id and self.bt2 in (None, bt2)

    def __str__(self) -> str:
        return f"{self.bt2}:{self.slave_id}" if self.bt2 else str(self.slave_id)


@dataclass(frozen=True, slots=True)
class BankSpec:
    id: str
    name: str
    members: tuple[Selector, ...] | None  # None: every battery seen


@dataclass(frozen=True, slots=True)
class BatteryOverride:
    selector: Selector
    id: str | None = None
    name: str | None = None


def _best(selectors: Sequence[tuple[Selector, Any]], bt2: str, slave_id: int) -> Any:
    """The item of the most specific matching selector (one naming the BT-2 beats a bare slave id)."""
    matches = [(sel.bt2 is not None, item) for sel, item in selectors if sel.matches(bt2, slave_id)]
    return max(matches, key=lambda pair: pair[0])[1] if matches else None


@dataclass(frozen=True, slots=True)
class Layout:
    """Device ids, names and bank membership of batteries."""

    banks: tuple[BankSpec, ...] = (BankSpec(DEFAULT_BANK_ID, DEFAULT_BANK_NAME, None),)
    overrides: tuple[BatteryOverride, ...] = ()

    def _override(self, bt2: str, slave_id: int) -> BatteryOverride | None:
        found: BatteryOverride | None = _best([(o.selector, o) for o in self.overrides], bt2, slave_id)
        return found

    def device_id(self, bt2: str, slave_id: int) -> str:
        override = self._override(bt2, slave_id)
        return override.id if override and override.id else f"battery_{slave_id}"

    def name(self, bt2: str, slave_id: int) -> str:
        override = self._override(bt2, slave_id)
        return override.name if override and override.name else f"Battery {slave_id}"

    def bank_of(self, bt2: str, slave_id: int) -> str | None:
        """The id of the bank this battery belongs to; None when banks are configured and none lists it."""
        pairs: list[tuple[Selector, Any]] = []
        for bank in self.banks:
            if bank.members is None:
                return bank.id
            pairs.extend((sel, bank.id) for sel in bank.members)
        found: str | None = _best(pairs, bt2, slave_id)
        return found

    def bank(self, bank_id: str) -> BankSpec | None:
        return next((bank for bank in self.banks if bank.id == bank_id), None)

    @property
    def device_ids(self) -> frozenset[str]:
        return frozenset(bank.id for bank in self.banks) | {o.id for o in self.overrides if o.id}


def layout_from_config(config: AggregatorConfig) -> Layout:
    """Validate aggregator.banks and aggregator.batteries; ConfigError names the offending key."""
    overrides = tuple(_override(f"aggregator.batteries[{i}]", raw) for i, raw in enumerate(config.batteries))
    count = len(config.banks)
    banks = tuple(_bank(f"aggregator.banks[{i}]", raw, count) for i, raw in enumerate(config.banks))
    layout = Layout(banks or Layout().banks, overrides)
    _check_unique(layout)
    return layout


def parse_selector(where: str, value: Any) -> Selector:
    """48, "48" or "<bt2 MAC>:48"."""
    if isinstance(value, int) and not isinstance(value, bool):
        return Selector(_slave(where, value))
    if isinstance(value, str):
        mac, sep, slave = value.strip().rpartition(":")
        if slave.isdigit():
            slave_id = _slave(where, int(slave))
            if not sep:
                return Selector(slave_id)
            try:
                return Selector(slave_id, bt2_id(mac))
            except ValueError:
                pass
    raise ConfigError(f"{where}: {value!r} is not a slave id (48) or '<bt2 MAC>:<slave>' (aabbccddeeff:48)")


def _slave(where: str, value: int) -> int:
    low, high = SLAVE_ID_RANGE
    if not low <= value <= high:
        raise ConfigError(f"{where}: slave id {value} outside {low}..{high}")
    return value


def _text(where: str, raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 120:
        raise ConfigError(f"{where}.{key}: must be a non-empty string of at most 120 characters")
    return value.strip()


def _device_id(where: str, raw: Mapping[str, Any]) -> str | None:
    value = _text(where, raw, "id")
    if value is not None and not valid_device_id(value):
        raise ConfigError(f"{where}.id: {value!r} must be 1-64 characters of a-z, 0-9 and '_'")
    return value


def _unknown(where: str, raw: Mapping[str, Any], known: frozenset[str]) -> None:
    extra = sorted(set(raw) - known)
    if extra:
        raise ConfigError(f"{where}: unknown key {extra[0]!r} (known: {', '.join(sorted(known))})")


def _bank(where: str, raw: Mapping[str, Any], count: int) -> BankSpec:
    _unknown(where, raw, BANK_KEYS)
    bank_id = _device_id(where, raw)
    if bank_id is None:
        if count > 1:
            raise ConfigError(f"{where}.id: required when more than one bank is configured")
        bank_id = DEFAULT_BANK_ID
    name = _text(where, raw, "name") or (DEFAULT_BANK_NAME if bank_id == DEFAULT_BANK_ID else bank_id)
    members = raw.get("batteries")
    if not isinstance(members, list) or not members:
        raise ConfigError(f"{where}.batteries: a non-empty list of batteries is required")
    selectors = tuple(parse_selector(f"{where}.batteries[{i}]", m) for i, m in enumerate(members))
    return BankSpec(bank_id, name, selectors)


def _override(where: str, raw: Mapping[str, Any]) -> BatteryOverride:
    _unknown(where, raw, BATTERY_KEYS)
    slave = raw.get("slave_id")
    if isinstance(slave, bool) or not isinstance(slave, int):
        raise ConfigError(
            f"{where}.slave_id: an integer {SLAVE_ID_RANGE[0]}..{SLAVE_ID_RANGE[1]} is required"
        )
    bt2 = _text(where, raw, "bt2")
    selector = parse_selector(where, f"{bt2}:{slave}" if bt2 else slave)
    override = BatteryOverride(selector, _device_id(where, raw), _text(where, raw, "name"))
    if override.id is None and override.name is None:
        raise ConfigError(f"{where}: give an 'id', a 'name' or both")
    return override


def _check_unique(layout: Layout) -> None:
    bank_ids = [bank.id for bank in layout.banks]
    if len(set(bank_ids)) != len(bank_ids):
        raise ConfigError(f"aggregator.banks: duplicate bank id in {bank_ids}")
    seen: dict[Selector, str] = {}
    for bank in layout.banks:
        for sel in bank.members or ():
            if sel in seen:
                raise ConfigError(f"aggregator.banks: battery {sel} is in bank {seen[sel]!r} and {bank.id!r}")
            seen[sel] = bank.id
    ids: set[str] = set(bank_ids)
    selectors: set[Selector] = set()
    for override in layout.overrides:
        if override.selector in selectors:
            raise ConfigError(f"aggregator.batteries: battery {override.selector} is listed twice")
        selectors.add(override.selector)
        if override.id is not None:
            if override.id in ids:
                raise ConfigError(f"aggregator.batteries: device id {override.id!r} is used twice")
            ids.add(override.id)
