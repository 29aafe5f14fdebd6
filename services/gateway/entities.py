"""Device documents -> ESPHome sub-devices, entity keys and pre-encoded ListEntities/state messages."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final

from services.gateway import messages as ids
from services.gateway.framing import Frame
from services.gateway.proto import pb
from shared.payloads import DeviceConfig, EntitySpec, StateValue

if TYPE_CHECKING:
    from services.gateway.legacy_naming import LegacyNaming

FNV_OFFSET: Final = 2166136261
FNV_PRIME: Final = 16777619

_STATE_CLASSES: Final = {"measurement": 1, "total_increasing": 2, "total": 3}
_CATEGORIES: Final = {"config": 1, "diagnostic": 2}

Value = StateValue


def fnv1_32(text: str) -> int:
    """ESPHome's object-id hash (FNV-1, multiply then XOR) - the entity key."""
    value = FNV_OFFSET
    for byte in text.encode():
        value = (value * FNV_PRIME) & 0xFFFFFFFF
        value ^= byte
    return value


def fnv1a_32(text: str) -> int:
    """FNV-1a (XOR then multiply), ESPHome's hash of a sub-device id."""
    value = FNV_OFFSET
    for byte in text.encode():
        value ^= byte
        value = (value * FNV_PRIME) & 0xFFFFFFFF
    return value


def object_id_for(device_ref: str, key: str) -> str:
    return f"{device_ref}_{key}"


@dataclass(frozen=True, slots=True)
class SubDevice:
    device_id: int
    ref: str
    name: str


@dataclass(frozen=True, slots=True)
class Entity:
    key: int
    object_id: str
    device_id: int
    device_ref: str
    spec: EntitySpec

    @property
    def binary(self) -> bool:
        return self.spec.platform == "binary_sensor"

    @property
    def text(self) -> bool:
        return self.spec.platform == "text_sensor"

    @property
    def switch(self) -> bool:
        return self.spec.platform == "switch"


@dataclass(frozen=True)
class Catalog:
    """One immutable view of what the node serves; ``version`` changes with the entity set."""

    version: int = 0
    devices: tuple[SubDevice, ...] = ()
    entities: tuple[Entity, ...] = ()
    by_ref: Mapping[tuple[str, str], Entity] = field(default_factory=dict)
    list_frames: tuple[Frame, ...] = (Frame(ids.LIST_DONE, b""),)
    # For clients that predate sub-devices: every entity on the main device, named "<device> <name>".
    flat_list_frames: tuple[Frame, ...] = (Frame(ids.LIST_DONE, b""),)
    problems: tuple[str, ...] = ()


def _device_ids(refs: list[str]) -> tuple[dict[str, int], list[str]]:
    ids: dict[str, int] = {}
    used: set[int] = set()
    problems = []
    for ref in refs:
        candidate, salt = fnv1a_32(ref), 0
        while candidate == 0 or candidate in used:
            salt += 1
            candidate = fnv1a_32(f"{ref}#{salt}")
        if salt:
            problems.append(f"device id hash of {ref!r} collides; using a salted id {candidate}")
        used.add(candidate)
        ids[ref] = candidate
    return ids, problems


def build_catalog(
    configs: Mapping[str, DeviceConfig], version: int, naming: LegacyNaming | None = None
) -> Catalog:
    """Sub-devices in id order, entities in document order; key collisions are dropped and reported.

    With ``naming`` (legacy entity naming) there are no sub-devices: every entity is on the main device
    with the key, object id and name that naming assigns.
    """
    if naming is not None:
        return _legacy_catalog(configs, version, naming)
    refs = sorted(configs)
    device_ids, problems = _device_ids(refs)
    devices = tuple(SubDevice(device_ids[ref], ref, configs[ref].device.name) for ref in refs)
    entities: list[Entity] = []
    by_key: dict[int, Entity] = {}
    for ref in refs:
        for spec in configs[ref].entities:
            object_id = object_id_for(ref, spec.key)
            key = fnv1_32(object_id)
            if key == 0 or key in by_key:
                other = by_key.get(key)
                problems.append(
                    f"entity {object_id!r} dropped: its key {key} collides with "
                    f"{other.object_id if other else 'the reserved key 0'!r}"
                )
                continue
            entity = Entity(key, object_id, device_ids[ref], ref, spec)
            by_key[key] = entity
            entities.append(entity)
    names = {device.ref: device.name for device in devices}
    done = Frame(ids.LIST_DONE, b"")
    frames = [*(list_frame(entity) for entity in entities), done]
    flat_frames = [*(list_frame(entity, device_name=names[entity.device_ref]) for entity in entities), done]
    return Catalog(
        version=version,
        devices=devices,
        entities=tuple(entities),
        by_ref={(e.device_ref, e.spec.key): e for e in entities},
        list_frames=tuple(frames),
        flat_list_frames=tuple(flat_frames),
        problems=tuple(problems),
    )


def _legacy_catalog(configs: Mapping[str, DeviceConfig], version: int, naming: LegacyNaming) -> Catalog:
    served, problems = naming.assign(configs)
    entities: list[Entity] = []
    for ref in sorted(configs):
        for spec in configs[ref].entities:
            how = served[(ref, spec.key)]
            entities.append(Entity(how.key, how.object_id, 0, ref, replace(spec, name=how.name)))
    entities.sort(key=lambda entity: entity.key if entity.key < 100_000 else 100_000)
    frames = (*(list_frame(entity) for entity in entities), Frame(ids.LIST_DONE, b""))
    return Catalog(
        version=version,
        entities=tuple(entities),
        by_ref={(e.device_ref, e.spec.key): e for e in entities},
        list_frames=frames,
        flat_list_frames=frames,  # already flat: one device
        problems=tuple(problems),
    )


def list_frame(entity: Entity, *, device_name: str | None = None) -> Frame:
    """The ListEntities*Response of one entity; with ``device_name``, the flat form on the main device."""
    spec = entity.spec
    common: dict[str, Any] = {
        "object_id": entity.object_id,
        "key": entity.key,
        "name": spec.name if device_name is None else f"{device_name} {spec.name}",
        "device_id": entity.device_id if device_name is None else 0,
        "icon": spec.icon or "",
        "device_class": spec.device_class or "",
        "entity_category": _CATEGORIES.get(spec.entity_category or "", 0),
    }
    if entity.binary:
        binary = pb.ListEntitiesBinarySensorResponse(**common)
        return Frame(ids.LIST_BINARY_SENSOR, binary.SerializeToString())
    if entity.text:
        text = pb.ListEntitiesTextSensorResponse(**common)
        return Frame(ids.LIST_TEXT_SENSOR, text.SerializeToString())
    if entity.switch:  # assumed_state false: HA shows the state we send, which is the read-back
        switch = pb.ListEntitiesSwitchResponse(**common)
        return Frame(ids.LIST_SWITCH, switch.SerializeToString())
    message = pb.ListEntitiesSensorResponse(
        **common,
        unit_of_measurement=spec.unit or "",
        accuracy_decimals=spec.accuracy,
        state_class=_STATE_CLASSES.get(spec.state_class or "", 0),
    )
    return Frame(ids.LIST_SENSOR, message.SerializeToString())


def state_frame(entity: Entity, value: Value, *, flat: bool = False) -> Frame:
    """The state message of one entity; None, or a value of the wrong kind, is reported as missing_state.

    Wrong kinds are a text for a sensor or binary sensor and anything but a text for a text sensor
    (the state document's values are typed, but a document does not say which entity a value is for).
    ``flat``: for a client without sub-devices, whose listing put every entity on device 0.
    """
    device_id = 0 if flat else entity.device_id
    if entity.text:
        text = pb.TextSensorStateResponse(key=entity.key, device_id=device_id)
        if isinstance(value, str):
            text.state = value
        else:
            text.missing_state = True
        return Frame(ids.TEXT_SENSOR_STATE, text.SerializeToString())
    if entity.switch:  # true/false only: a switch's state is never guessed from a number
        switch = pb.SwitchStateResponse(key=entity.key, device_id=device_id)
        if isinstance(value, bool):
            switch.state = value
        else:
            switch.missing_state = True
        return Frame(ids.SWITCH_STATE, switch.SerializeToString())
    if isinstance(value, str):
        value = None
    if entity.binary:
        msg = pb.BinarySensorStateResponse(key=entity.key, device_id=device_id)
        if value is None:
            msg.missing_state = True
        else:
            msg.state = bool(value)
        return Frame(ids.BINARY_SENSOR_STATE, msg.SerializeToString())
    if value is None:
        msg = pb.SensorStateResponse(key=entity.key, state=math.nan, missing_state=True, device_id=device_id)
    else:
        msg = pb.SensorStateResponse(key=entity.key, state=float(value), device_id=device_id)
    return Frame(ids.SENSOR_STATE, msg.SerializeToString())
