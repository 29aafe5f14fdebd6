"""The devices, entities and current values the gateway serves, with change notifications."""

from __future__ import annotations

import logging
from collections.abc import Callable

from services.gateway.entities import Catalog, Entity, Value, build_catalog, state_frame
from services.gateway.framing import Frame
from services.gateway.legacy_naming import LegacyNaming
from shared.payloads import DeviceConfig, DeviceState

_LOGGER = logging.getLogger(__name__)

StatesListener = Callable[[list[Frame]], None]
CatalogListener = Callable[[Catalog], None]


class Registry:
    """Device documents and state documents in, a Catalog and state messages out."""

    def __init__(self, naming: LegacyNaming | None = None) -> None:
        self._naming = naming
        self._configs: dict[str, DeviceConfig] = {}
        self._values: dict[str, dict[str, Value]] = {}
        self._frames: dict[int, Frame] = {}
        self.catalog = Catalog()
        self.state_listeners: list[StatesListener] = []
        # Fed only while someone listens: the same changes in the flat (no sub-device) form.
        self.flat_state_listeners: list[StatesListener] = []
        self.catalog_listeners: list[CatalogListener] = []

    @property
    def device_count(self) -> int:
        return len(self.catalog.devices)

    @property
    def entity_count(self) -> int:
        return len(self.catalog.entities)

    def set_config(self, ref: str, config: DeviceConfig | None) -> bool:
        """Store (or with None remove) a device document; True when what is served changed."""
        if config is None:
            if ref not in self._configs:
                return False
            del self._configs[ref]
            self._values.pop(ref, None)
        else:
            if self._configs.get(ref) == config:
                return False
            self._configs[ref] = config
        self._rebuild()
        return True

    def set_state(self, ref: str, state: DeviceState) -> list[Frame]:
        """Merge a state document; returns (and announces) the messages of values that changed."""
        values = self._values.setdefault(ref, {})
        changed: list[Frame] = []
        changed_entities: list[tuple[Entity, Value]] = []
        by_ref = self.catalog.by_ref
        for key, value in state.values.items():
            if key in values and _same(values[key], value):
                continue
            values[key] = value
            entity = by_ref.get((ref, key))
            if entity is not None:
                frame = state_frame(entity, value)
                self._frames[entity.key] = frame
                changed.append(frame)
                changed_entities.append((entity, value))
        if changed:
            for listener in self.state_listeners:
                listener(changed)
            if self.flat_state_listeners:
                flat = [state_frame(entity, value, flat=True) for entity, value in changed_entities]
                for listener in self.flat_state_listeners:
                    listener(flat)
        return changed

    def expire(self, ref: str) -> list[Frame]:
        """Every value of a device becomes unknown (no fresh state document for stale_after)."""
        values = self._values.get(ref)
        if not values or all(value is None for value in values.values()):
            return []
        return self.set_state(ref, DeviceState(0.0, dict.fromkeys(values)))

    def value(self, ref: str, key: str) -> Value:
        return self._values.get(ref, {}).get(key)

    def initial_frames(self, *, flat: bool = False) -> list[Frame]:
        """One state message per served entity, in list order (missing_state where unknown)."""
        if flat:
            return [self._frame_of(entity, flat=True) for entity in self.catalog.entities]
        return list(self._frames.values())

    def _rebuild(self) -> None:
        catalog = build_catalog(self._configs, self.catalog.version + 1, self._naming)
        for problem in catalog.problems:
            _LOGGER.error("%s", problem)
        self.catalog = catalog
        self._frames = {e.key: self._frame_of(e) for e in catalog.entities}
        _LOGGER.debug("serving %d entities on %d devices", len(catalog.entities), len(catalog.devices))
        for listener in self.catalog_listeners:
            listener(catalog)

    def _frame_of(self, entity: Entity, *, flat: bool = False) -> Frame:
        value = self._values.get(entity.device_ref, {}).get(entity.spec.key)
        return state_frame(entity, value, flat=flat)


def _same(old: Value, new: Value) -> bool:
    return type(old) is type(new) and old == new
