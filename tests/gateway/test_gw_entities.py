"""Entity keys, sub-devices, the registry and advertisement parsing (pure parts)."""

from __future__ import annotations

import math

import pytest

from services.gateway.bluetooth import (
    address_to_int,
    adverts_frame,
    parse_advertisements,
    parse_scanner_state,
)
from services.gateway.entities import build_catalog, fnv1_32, fnv1a_32, object_id_for
from services.gateway.framing import Frame
from services.gateway.proto import pb
from services.gateway.registry import Registry
from shared.payloads import DeviceConfig, DeviceInfo, DeviceState, EntitySpec, PayloadError
from tests.gateway.support import all_configs, battery_config, battery_state


def test_fnv1_matches_esphome_vectors() -> None:
    assert fnv1_32("cpu_temperature") == 1160307794
    assert fnv1_32("temperature") == 899752953
    assert fnv1_32("load_average") == 1592800469
    assert fnv1a_32("") == 2166136261


def test_catalog_of_four_batteries_and_bank() -> None:
    configs = {c.device.id: c for c in all_configs()}
    catalog = build_catalog(configs, 1)
    assert len(catalog.entities) == 55
    assert len({e.key for e in catalog.entities}) == 55
    assert len(catalog.devices) == 5
    assert all(d.device_id != 0 for d in catalog.devices)
    assert len({d.device_id for d in catalog.devices}) == 5
    entity = catalog.by_ref[("battery_48", "power")]
    assert entity.object_id == "battery_48_power" == object_id_for("battery_48", "power")
    assert entity.key == fnv1_32("battery_48_power")
    assert entity.device_id == fnv1a_32("battery_48")
    assert len(catalog.list_frames) == 56
    assert catalog.list_frames[-1].msg_type == 19
    msg = pb.ListEntitiesSensorResponse.FromString(catalog.list_frames[0].payload)
    assert msg.object_id == "bank_power" and msg.unit_of_measurement == "W" and msg.state_class == 1


def test_key_collision_is_dropped_and_reported() -> None:
    # A known FNV-1 collision (found by exhaustive search over 4-character keys).
    pair = ("opfo", "7rja")
    assert fnv1_32(object_id_for("dev", pair[0])) == fnv1_32(object_id_for("dev", pair[1]))
    specs = tuple(EntitySpec(key=k, name=k) for k in pair)
    catalog = build_catalog({"dev": DeviceConfig(DeviceInfo(id="dev", name="Dev"), specs)}, 1)
    assert len(catalog.entities) == 1
    assert "collides" in catalog.problems[0]


def test_registry_pushes_only_changes_and_missing_state() -> None:
    registry = Registry()
    pushed: list[list[Frame]] = []
    registry.state_listeners.append(pushed.append)
    registry.set_state("battery_48", battery_state(48))  # before its config: remembered
    assert registry.set_config("battery_48", battery_config(48))
    assert not registry.set_config("battery_48", battery_config(48))  # identical republish
    frames = {pb.SensorStateResponse.FromString(f.payload).key: f for f in registry.initial_frames()}
    assert len(frames) == 12
    missing = pb.SensorStateResponse.FromString(frames[fnv1_32("battery_48_temperature_max")].payload)
    assert missing.missing_state and math.isnan(missing.state)
    pushed.clear()
    assert registry.set_state("battery_48", battery_state(48)) == []
    changed = registry.set_state("battery_48", battery_state(48, offset=1.0))
    assert len(changed) == 1 and len(pushed) == 1
    msg = pb.SensorStateResponse.FromString(changed[0].payload)
    assert msg.key == fnv1_32("battery_48_power")
    assert msg.state == pytest.approx(-169.8, abs=1e-3)
    assert registry.set_config("battery_48", None)
    assert registry.entity_count == 0


def test_binary_sensor_platform() -> None:
    spec = EntitySpec(key="heater_on", name="Heater", platform="binary_sensor", device_class="heat")
    registry = Registry()
    registry.set_config("battery_48", DeviceConfig(DeviceInfo(id="battery_48", name="B"), (spec,)))
    assert registry.catalog.list_frames[0].msg_type == 12
    (frame,) = registry.set_state("battery_48", DeviceState(1.0, {"heater_on": True}))
    assert frame.msg_type == 21
    assert pb.BinarySensorStateResponse.FromString(frame.payload).state is True


def test_advertisement_payloads() -> None:
    batch = parse_advertisements(
        b'{"schema": 1, "ts": 1.0, "adapter_address": "00:1a:7d:da:71:13", "advertisements": ['
        b'{"address": "A4:C1:38:12:34:56", "address_type": 0, "rssi": -71, "data": "020106"},'
        b'{"address": "bogus", "address_type": 0, "rssi": -71, "data": "02"},'
        b'{"address": "A4:C1:38:12:34:57", "address_type": 1, "rssi": -60, "data": "' + b"00" * 63 + b'"}]}'
    )
    assert batch.adapter_address == "00:1A:7D:DA:71:13"
    assert len(batch.adverts) == 1 and len(batch.rejected) == 2
    assert batch.adverts[0].address == address_to_int("A4:C1:38:12:34:56") == 0xA4C138123456
    msg = pb.BluetoothLERawAdvertisementsResponse.FromString(adverts_frame(batch.adverts).payload)
    assert msg.advertisements[0].rssi == -71 and msg.advertisements[0].data == b"\x02\x01\x06"
    with pytest.raises(PayloadError):
        parse_advertisements(b'{"schema": 1, "advertisements": 5}')
    status = parse_scanner_state(
        b'{"schema": 1, "state": "running", "mode": "active", "configured_mode": "passive"}'
    )
    assert (status.state, status.mode, status.configured_mode) == (2, 1, 0)
    with pytest.raises(PayloadError):
        parse_scanner_state(b'{"schema": 1, "state": "dancing"}')
