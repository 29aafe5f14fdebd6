"""Legacy entity naming: the old system's (jorik41/renogy-bt) object ids, names and keys on one device."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from aioesphomeapi.model import SensorInfo, SensorState

from services.cli import build_parser, config_from
from services.gateway.entities import build_catalog, fnv1_32
from services.gateway.legacy_naming import LegacyNaming, bt2_name, old_attributes
from services.gateway.service import legacy_naming
from shared.config import ConfigError, load_config
from shared.payloads import DeviceConfig, EntitySpec, parse_device_config
from tests.conftest import Broker
from tests.gateway.support import (
    TOPICS,
    all_configs,
    api_client,
    battery_state,
    gateway_config,
    running_gateway,
    wait_entities,
    wait_until,
)
from tests.support.probe import MqttProbe

BT2 = "c464e3383d0e"
ALIAS = "BT-TH-E3383D0E"
SLAVES = (48, 49, 50, 51)
BATTERY_OLD = (
    "current",
    "voltage",
    "remaining_charge",
    "capacity",
    "power",
    "battery_level",
    "energy_in_kwh",
    "energy_out_kwh",
)
EXTREMES = ("cell_voltage_min", "cell_voltage_max", "temperature_min", "temperature_max")
COMBINED = (
    "capacity",
    "remaining_charge",
    "power",
    "current",
    "energy_in_kwh",
    "energy_out_kwh",
    "charge_percentage",
)


def old_object_ids(alias: str = ALIAS, slaves: tuple[int, ...] = SLAVES) -> dict[str, int]:
    """The old system's 55 object ids for four batteries, with the keys it gave them."""
    out: dict[str, int] = {}
    for slave in slaves:
        for index, key in enumerate(BATTERY_OLD):
            out[f"{alias}_{slave}_{key}"] = 1000 + (slave - 48) * 1000 + index
    number = 5000
    for slave in slaves:
        for extreme in EXTREMES:
            out[f"{alias}_combined_battery_{slave}_{extreme}"] = number
            number += 1
    for combined in COMBINED:
        out[f"{alias}_combined_combined_{combined}"] = number
        number += 1
    return out


def with_bt2(configs: list[DeviceConfig], bt2: str = BT2) -> list[DeviceConfig]:
    out = []
    for config in configs:
        if config.device.id.startswith("battery_"):
            slave = int(config.device.id.split("_")[1])
            device = dataclasses.replace(config.device, bt2=bt2, slave_id=slave)
            out.append(DeviceConfig(device, config.entities))
        else:
            out.append(config)
    return out


def naming(name: str | None = None) -> LegacyNaming:
    return LegacyNaming(name, hash_key=fnv1_32)


def test_bt2_name() -> None:
    assert bt2_name("c464e3383d0e") == ALIAS
    assert bt2_name("C4:64:E3:38:3D:0E") == ALIAS


def test_the_55_old_object_ids_keys_and_names() -> None:
    configs = {c.device.id: c for c in with_bt2(all_configs())}
    catalog = build_catalog(configs, 1, naming())
    assert not catalog.problems
    assert catalog.devices == ()
    served = {e.object_id: e for e in catalog.entities}
    assert {oid: e.key for oid, e in served.items()} == old_object_ids()
    assert all(e.device_id == 0 for e in catalog.entities)
    assert served[f"{ALIAS}_48_voltage"].spec.name == f"{ALIAS}_48 Voltage"
    assert served[f"{ALIAS}_49_energy_in_kwh"].spec.name == f"{ALIAS}_49 Energy In Kwh"
    assert served[f"{ALIAS}_combined_battery_50_cell_voltage_min"].spec.name == (
        f"{ALIAS}_combined Battery 50 Cell Voltage Min"
    )
    assert served[f"{ALIAS}_combined_combined_charge_percentage"].spec.name == (
        f"{ALIAS}_combined Combined Charge Percentage"
    )
    # Our values behind them: the bank's level is the old charge percentage, energy in kWh.
    assert (
        catalog.by_ref[("bank", "battery_level")].object_id == f"{ALIAS}_combined_combined_charge_percentage"
    )
    assert catalog.by_ref[("battery_51", "energy_out")].object_id == f"{ALIAS}_51_energy_out_kwh"
    assert catalog.by_ref[("battery_48", "temperature_max")].spec.unit == "°C"
    # Flat and sub-device clients see the same single device.
    assert catalog.flat_list_frames == catalog.list_frames


def test_device_name_setting_and_any_number_of_batteries() -> None:
    slaves = (1, 2, 48, 60)
    configs = {c.device.id: c for c in with_bt2(all_configs(slaves))}
    catalog = build_catalog(configs, 1, naming("MyBank"))
    ids = {e.object_id for e in catalog.entities}
    assert len(ids) == len(catalog.entities) == 12 * 4 + 7
    for slave in slaves:
        assert f"MyBank_{slave}_voltage" in ids
        assert f"MyBank_combined_battery_{slave}_temperature_max" in ids
    assert "MyBank_combined_combined_power" in ids
    keys = [e.key for e in catalog.entities]
    assert len(set(keys)) == len(keys) and 0 not in keys
    # Keys the old formula cannot give (slave ids below 48) are hashed; 48 keeps its old one.
    assert catalog.by_ref[("battery_48", "current")].key == 1000
    assert catalog.by_ref[("battery_1", "current")].key == fnv1_32("MyBank_1_current")


def test_device_documents_without_bt2_need_the_setting() -> None:
    configs = {c.device.id: c for c in all_configs()}  # an aggregator that does not send bt2
    catalog = build_catalog(configs, 1, naming())
    assert catalog.problems and "gateway.legacy_device_name" in catalog.problems[0]
    named = build_catalog(configs, 1, naming(ALIAS))
    assert not named.problems
    assert {e.object_id: e.key for e in named.entities} == old_object_ids()


def test_extras_of_the_extended_profile_never_collide() -> None:
    extra = (
        EntitySpec("cycle_count", "Cycle count", state_class="total_increasing"),
        EntitySpec("alarm", "Alarm", platform="binary_sensor"),
        EntitySpec("model", "Model", platform="text_sensor"),
        # Our key that happens to be an old data key of the bank: must not take the old entity's id.
        EntitySpec("combined_power", "Combined power"),
    )
    configs = {}
    for config in with_bt2(all_configs()):
        configs[config.device.id] = DeviceConfig(config.device, config.entities + extra)
    catalog = build_catalog(configs, 1, naming())
    served = {e.object_id: e for e in catalog.entities}
    old = old_object_ids()
    assert {oid: served[oid].key for oid in old} == old  # every old id and key unchanged
    assert len(served) == len(catalog.entities) == 55 + 5 * len(extra)
    assert f"{ALIAS}_48_cycle_count" in served and f"{ALIAS}_combined_alarm" in served
    assert served[f"{ALIAS}_48_model"].spec.name == f"{ALIAS}_48 Model"
    keys = [e.key for e in catalog.entities]
    assert len(set(keys)) == len(keys)
    assert catalog.by_ref[("bank", "combined_power")].object_id == f"{ALIAS}_combined_combined_power_2"


def test_old_attributes_follow_the_old_guesses() -> None:
    assert old_attributes("energy_in_kwh").unit == "kWh"
    assert old_attributes("energy_in_kwh").state_class == "total_increasing"
    assert old_attributes("combined_charge_percentage").unit == "%"
    assert old_attributes("battery_48_temperature_min", "F").unit == "°F"
    assert old_attributes("battery_48_cell_voltage_max").unit == "V"
    assert old_attributes("remaining_charge").unit == "Ah"
    assert old_attributes("power").accuracy == 0


def test_device_documents_carry_bt2_and_slave_id() -> None:
    config = with_bt2(all_configs())[0]
    parsed = parse_device_config(config.to_payload())
    assert (parsed.device.bt2, parsed.device.slave_id) == (BT2, 48)
    bank = parse_device_config(all_configs()[-1].to_payload())
    assert bank.device.bt2 is None and b"slave_id" not in all_configs()[-1].to_payload()


def test_setting_env_and_command_line(tmp_path: Path) -> None:
    assert load_config(None, environ={}).gateway.entity_naming == "default"
    cfg = load_config(
        None, environ={"RENOGY_ENTITY_NAMING": "legacy", "RENOGY_LEGACY_DEVICE_NAME": "BT-TH-1"}
    )
    assert (cfg.gateway.entity_naming, cfg.gateway.legacy_device_name) == ("legacy", "BT-TH-1")
    assert legacy_naming(cfg) is not None and legacy_naming(load_config(None, environ={})) is None
    for command in ("gateway", "run"):
        args = build_parser().parse_args([command, "--entity-naming", "legacy"])
        assert config_from(args).gateway.entity_naming == "legacy"
    try:
        load_config(None, environ={"RENOGY_ENTITY_NAMING": "old"})
    except ConfigError as exc:
        assert "gateway.entity_naming" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("an unknown naming was accepted")


async def test_aioesphomeapi_client_sees_the_old_entities(mosquitto: Broker, tmp_path: Path) -> None:
    """`gateway --entity-naming legacy` behind BT-TH-E3383D0E, ids 48-51: the 55 old object ids on one device."""
    config = gateway_config(mosquitto.url, tmp_path, entity_naming="legacy")
    async with MqttProbe(mosquitto.url) as probe:
        for device in with_bt2(all_configs()):
            ref = device.device.id
            probe.publish(TOPICS.device_config(ref), device.to_payload(), retain=True)
            if ref.startswith("battery_"):
                probe.publish(TOPICS.device_state(ref), battery_state(int(ref[8:])).to_payload(), retain=True)
        async with running_gateway(config) as gateway:
            await wait_entities(gateway, 55)
            await wait_until(lambda: gateway.registry.value("battery_51", "power") is not None, what="states")
            async with api_client(gateway.port) as client:
                info = await client.device_info()
                entities, _ = await client.list_entities_services()
                assert info.devices == []
                sensors = [e for e in entities if isinstance(e, SensorInfo)]
                assert len(sensors) == len(entities) == 55
                assert {e.object_id: e.key for e in sensors} == old_object_ids()
                assert all(e.device_id == 0 for e in sensors)
                by_id = {e.object_id: e for e in sensors}
                voltage = by_id[f"{ALIAS}_48_voltage"]
                assert (voltage.name, voltage.unit_of_measurement) == (f"{ALIAS}_48 Voltage", "V")
                assert by_id[f"{ALIAS}_combined_combined_energy_in_kwh"].unit_of_measurement == "kWh"

                states: list[SensorState] = []
                client.subscribe_states(states.append)  # type: ignore[arg-type]
                await wait_until(lambda: len(states) >= 55, what="initial states")
                by_key = {s.key: s for s in states}
                power = by_key[1004]  # BT-TH-E3383D0E_48_power
                assert math.isclose(power.state, -170.8, rel_tol=1e-5) and power.device_id == 0


def family_config(kind: str, slave: int, keys: tuple[str, ...]) -> DeviceConfig:
    """A device document as the aggregator writes it for a non-battery kind (services/aggregator/devices.py)."""
    device = parse_device_config(
        f'{{"schema": 1, "device": {{"id": "{kind}_{BT2}_{slave}", "name": "{kind} {slave}", '
        f'"bt2": "{BT2}"{"" if not slave else f", {chr(34)}slave_id{chr(34)}: {slave}"}}}, "entities": []}}'
    ).device
    specs = tuple(EntitySpec(key=k, name=k.replace("_", " ").title(), unit=None) for k in keys)
    return DeviceConfig(device, specs)


def test_other_device_kinds_are_neither_batteries_nor_the_combined_bank() -> None:
    """A controller (slave 1) or a shunt (no slave) must not take a battery's or the bank's old names."""
    configs = {c.device.id: c for c in with_bt2(all_configs())}
    controller = family_config("controller", 1, ("pv_power", "current"))
    shunt = family_config("shunt", 0, ("power", "current"))
    configs[controller.device.id] = controller
    configs[shunt.device.id] = shunt
    catalog = build_catalog(configs, 1, naming())
    assert not catalog.problems
    served = {e.object_id: e for e in catalog.entities}
    # The 55 old ones are untouched ...
    assert {oid: served[oid].key for oid in old_object_ids()} == old_object_ids()
    # ... and the others get their own alias and hashed keys, never an old key or a battery-style alias.
    ctl = catalog.by_ref[(controller.device.id, "current")]
    assert ctl.object_id == f"{ALIAS}_{controller.device.id}_current"
    assert catalog.by_ref[(shunt.device.id, "power")].object_id == f"{ALIAS}_{shunt.device.id}_power"
    old_keys = set(old_object_ids().values())
    for ref in (controller.device.id, shunt.device.id):
        for key in ("current",):
            assert catalog.by_ref[(ref, key)].key not in old_keys
