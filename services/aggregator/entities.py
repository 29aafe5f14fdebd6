"""The battery and bank entities as the aggregator serves them: the battery family's tables
(shared/devices/battery.py ``ENTITIES``, ``BANK_ENTITIES``) computed from the aggregator's views
(docs/entities.md is the prose). The other families' entities are served by devices.py."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from services.aggregator.model import BankView, BatteryView, Value
from shared.devices import FAMILIES, EntityDef
from shared.devices.battery import BANK_ENTITIES
from shared.payloads import EntitySpec, Platform

V = TypeVar("V", BatteryView, BankView)
PROFILES: Final = ("default", "extended")


@dataclass(frozen=True, slots=True)
class Entity(Generic[V]):
    """A family entity served from a view: ``definition.value`` names an attribute of the view."""

    definition: EntityDef

    def value(self, view: V) -> Value:
        attribute: Value = getattr(view, self.attribute)
        return attribute

    @property
    def attribute(self) -> str:
        name = self.definition.value
        assert isinstance(name, str)  # checked by _served
        return name

    @property
    def key(self) -> str:
        return self.definition.key

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def unit(self) -> str | None:
        return self.definition.unit

    @property
    def device_class(self) -> str | None:
        return self.definition.device_class

    @property
    def state_class(self) -> str | None:
        return self.definition.state_class

    @property
    def accuracy(self) -> int:
        return self.definition.accuracy

    @property
    def platform(self) -> Platform:
        return self.definition.platform

    @property
    def extended(self) -> bool:
        return self.definition.extended

    @property
    def category(self) -> str | None:
        return self.definition.category

    @property
    def spec(self) -> EntitySpec:
        return self.definition.spec

    @property
    def energy(self) -> bool:
        return self.definition.energy


def _served(definitions: Iterable[EntityDef], view: type[V]) -> tuple[Entity[V], ...]:
    """The table as served from ``view``; a value that is not one of its attributes fails at import."""
    for definition in definitions:
        if not isinstance(definition.value, str) or not hasattr(view, definition.value):
            raise ValueError(f"{definition.key}: {definition.value!r} is not an attribute of {view.__name__}")
    return tuple(Entity(definition) for definition in definitions)


BATTERY: Final[tuple[Entity[BatteryView], ...]] = _served(FAMILIES["battery"].entities, BatteryView)
BANK: Final[tuple[Entity[BankView], ...]] = _served(BANK_ENTITIES, BankView)


def for_profile(table: tuple[Entity[V], ...], profile: str) -> tuple[Entity[V], ...]:
    """The entities of one device kind in a profile ('default' or 'extended'), in table order."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}")
    return tuple(entity for entity in table if profile == "extended" or not entity.extended)
