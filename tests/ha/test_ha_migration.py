"""The switch from the old system (jorik41/renogy-bt) to ours, with the real Home Assistant.

Run with ``make test-ha`` (RENOGY_HA_TEST=1); plain ``make test`` skips it.

"The old system" cannot run here (BlueZ, its own threads); it is emulated by our API server serving
exactly what the old one served, per its ``esphome_api_server.py`` and ``sensor_definitions.py``:
one device without sub-devices, no encryption (``api_encryption_supported`` false), its model and
project name, and the 55 sensors with its object ids, names, keys, units and precision
(``services/gateway/legacy_naming.py``). Home Assistant adds it, records states, gets a year of
imported statistics and an Energy dashboard on the bank's counters. Then, as a user would: the old
system stops, ``migrate --energy`` imports its totals, and our stack starts with legacy naming on the
same host, port and MAC. Home Assistant must keep every entity id (no ``_2``, nothing removed), the
history and statistics under them, and the Energy dashboard's sources.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.gateway import messages as ids
from services.gateway.bluetooth import BluetoothHub
from services.gateway.entities import fnv1_32
from services.gateway.framing import Frame
from services.gateway.identity import parse_mac
from services.gateway.keystore import KeyStore
from services.gateway.legacy_naming import LegacyNaming, with_old_attributes
from services.gateway.proto import pb
from services.gateway.registry import Registry
from services.gateway.server import GatewayServer, NodeInfo
from services.migrate import import_energy
from shared.config import load_config
from shared.payloads import DeviceConfig, DeviceState
from tests.gateway.support import all_configs, battery_state
from tests.ha import GATE
from tests.ha.hass import HaWebSocket, HomeAssistant, configuration_yaml, poll
from tests.ha.venv import HaUnavailableError, ensure_ha_env
from tests.support.brokers import MOSQUITTO, AmqttBroker, MosquittoBroker, free_port
from tests.support.stack import Stack

pytestmark = [
    pytest.mark.skipif(
        not os.environ.get(GATE), reason=f"real Home Assistant test: run `make test-ha` ({GATE}=1)"
    ),
    pytest.mark.timeout(600),
]

SIM_BT2 = "c464e3383d0e"  # the simulator's BT-2 (C4:64:E3:38:3D:0E): BT-TH-E3383D0E
ALIAS = "BT-TH-E3383D0E"
ENTITIES = 55
BANK_STATE = {
    "power": -683.2,
    "current": -13.04,
    "capacity": 200.0,
    "remaining_charge": 199.36,
    "battery_level": 99.7,
    "energy_in": 4.936,
    "energy_out": 2.0,
}


class OldSystem(GatewayServer):
    """Our server dressed as the old one: its DeviceInfo (no encryption, no sub-devices, its names)."""

    def device_info_frame(self, *, sub_devices: bool = True) -> Frame:
        node = self.node
        msg = pb.DeviceInfoResponse(
            name=node.name,
            mac_address=node.mac.colon_upper,
            esphome_version="2024.12.0",
            model="ESPHome Bluetooth Proxy",
            manufacturer="ESPHome",
            project_name="renogybt.bluetooth_proxy",
            project_version="2024.12.0",
            bluetooth_proxy_feature_flags=1 | 32 | 64,
            bluetooth_mac_address=node.mac.colon_upper,
            api_encryption_supported=False,
        )
        return Frame(ids.DEVICE_INFO_RESPONSE, msg.SerializeToString())


def old_configs() -> dict[str, DeviceConfig]:
    """Our default documents as the aggregator sends them, with the old units and precision."""
    configs: dict[str, DeviceConfig] = {}
    for config in all_configs():
        device = config.device
        if device.id.startswith("battery_"):
            device = dataclasses.replace(device, bt2=SIM_BT2, slave_id=int(device.id[8:]))
        configs[device.id] = DeviceConfig(device, config.entities)
    served, _ = LegacyNaming(None, hash_key=fnv1_32).assign(configs)
    return {ref: with_old_attributes(config, served, ref) for ref, config in configs.items()}


async def _entry_entities(ws: HaWebSocket, entry_id: str) -> list[dict[str, Any]]:
    return [e for e in await ws.call("config/entity_registry/list") if e.get("config_entry_id") == entry_id]


async def _good_states(ws: HaWebSocket, entity_ids: list[str]) -> dict[str, str]:
    states = {s["entity_id"]: s["state"] for s in await ws.call("get_states")}
    return {e: states.get(e, "missing") for e in entity_ids}


def _ha_config(port: int) -> str:
    return configuration_yaml(port) + "recorder:\n  commit_interval: 1\nhistory:\nenergy:\n"


async def test_switch_from_the_old_system_keeps_entities_history_and_statistics(tmp_path: Path) -> None:
    started = time.monotonic()
    try:
        env = await asyncio.to_thread(ensure_ha_env)
    except HaUnavailableError as exc:
        pytest.skip(str(exc))
    node_name = f"renogy-old-{secrets.token_hex(3)}"
    raw = bytearray(secrets.token_bytes(6))
    raw[0] = (raw[0] & 0xFC) | 0x02
    mac = ":".join(f"{b:02X}" for b in raw)
    port = free_port()
    notes: list[str] = []

    def note(text: str) -> None:
        notes.append(text)
        print(f"[test-ha migration] {text} ({time.monotonic() - started:.1f} s)", flush=True)

    # --- the old system ------------------------------------------------------------------------
    registry = Registry(LegacyNaming(None, hash_key=fnv1_32))
    for ref, config in old_configs().items():
        registry.set_config(ref, config)
        values = battery_state(int(ref[8:]), missing=()) if ref.startswith("battery_") else None
        registry.set_state(ref, values or DeviceState(1795524654.3, BANK_STATE))
    node = NodeInfo(name=node_name, friendly_name="", mac=parse_mac(mac))
    old = OldSystem(node, registry, KeyStore(None, tmp_path / "old"), BluetoothHub(flush_interval=0.1))
    await old.start("127.0.0.1", port)
    old_running = True
    assert registry.entity_count == ENTITIES

    broker: MosquittoBroker | AmqttBroker = MosquittoBroker(tmp_path) if MOSQUITTO else AmqttBroker()
    ha = HomeAssistant(env, tmp_path / "ha-config")
    (ha.config_dir / "configuration.yaml").write_text(_ha_config(ha.port))
    stack: Stack | None = None
    try:
        await broker.start()
        await ha.start()
        await ha.onboard()
        await ha.wait_running()
        note("Home Assistant running")
        first = await ha.flow(None, {"handler": "esphome", "show_advanced_options": False})
        result = await ha.flow(first["flow_id"], {"host": "127.0.0.1", "port": port})
        assert result.get("type") == "create_entry", result
        entry_id = str(result["result"]["entry_id"])

        async with ha.websocket() as ws:

            async def all_listed() -> list[dict[str, Any]] | None:
                entities = await _entry_entities(ws, entry_id)
                return entities if len(entities) == ENTITIES else None

            before = await poll("55 entities of the old system", all_listed, timeout=60)
            by_unique = {e["unique_id"]: e["entity_id"] for e in before}
            object_ids = {uid.split("-sensor-", 1)[1] for uid in by_unique}
            assert all("@" not in uid for uid in by_unique), "the old system has no sub-devices"
            assert f"{ALIAS}_48_voltage" in object_ids and f"{ALIAS}_combined_combined_power" in object_ids
            entity_ids = sorted(by_unique.values())
            by_object = {uid.split("-sensor-", 1)[1]: eid for uid, eid in by_unique.items()}
            energy_in = by_object[f"{ALIAS}_combined_combined_energy_in_kwh"]
            energy_out = by_object[f"{ALIAS}_combined_combined_energy_out_kwh"]
            battery_in = by_object[f"{ALIAS}_48_energy_in_kwh"]
            note(f"old system added: {len(entity_ids)} entities, e.g. {battery_in}")

            async def all_good() -> bool | None:
                states = await _good_states(ws, entity_ids)
                return (
                    True
                    if all(s not in ("unknown", "unavailable", "missing") for s in states.values())
                    else None
                )

            await poll("states of the old system", all_good, timeout=30)
            old_states = await _good_states(ws, entity_ids)
            # A year of statistics on the battery's counter, and the Energy dashboard on the bank's.
            hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
            stats = [
                {
                    "start": (hour - timedelta(hours=n)).isoformat(),
                    "state": 1.0 - n / 10000,
                    "sum": 1.0 - n / 10000,
                }
                for n in range(240, 0, -24)
            ]
            await ws.call(
                "recorder/import_statistics",
                metadata={
                    "has_mean": False,
                    "has_sum": True,
                    "name": None,
                    "source": "recorder",
                    "statistic_id": battery_in,
                    "unit_of_measurement": "kWh",
                },
                stats=stats,
            )
            prefs: dict[str, Any] = {
                "energy_sources": [
                    {"type": "battery", "stat_energy_from": energy_out, "stat_energy_to": energy_in}
                ],
                "device_consumption": [],
            }
            await ws.call("energy/save_prefs", **prefs)
            await asyncio.sleep(2.5)  # recorder commit_interval 1 s: the old states and statistics are stored
            devices_before = [
                d
                for d in await ws.call("config/device_registry/list")
                if entry_id in d.get("config_entries", [])
            ]

        # --- the switch: stop the old system, import its totals, start ours with legacy naming ----
        await old.stop()
        old_running = False
        note("old system stopped")
        stack = Stack(
            broker.url,
            tmp_path / "stack",
            env_overrides={
                "RENOGY_NAME": node_name,
                "RENOGY_MAC": mac,
                "RENOGY_ENTITY_NAMING": "legacy",
                "RENOGY_BT2_ADDRESS": "C4:64:E3:38:3D:0E",
            },
            api_port=port,
        )
        totals = {
            f"{ALIAS}_{slave}": {"energy_in_kwh": 1.234, "energy_out_kwh": 0.5} for slave in (48, 49, 50, 51)
        }
        (tmp_path / "energy_totals.json").write_bytes(orjson.dumps(totals))
        ours = load_config(None, environ={}, overrides={"state_dir": str(stack.state_dir)})
        imported = import_energy(tmp_path / "energy_totals.json", ours, bt2="C4:64:E3:38:3D:0E")
        assert imported.written, imported.lines
        await stack.start()
        switched = time.monotonic()

        async with ha.websocket() as ws:

            async def ours_serving() -> bool | None:
                entries = await ws.call("config_entries/get", domain="esphome")
                entry = next(e for e in entries if e["entry_id"] == entry_id)
                if entry["state"] != "loaded":
                    return None
                states = await _good_states(ws, entity_ids)
                bad = {e: s for e, s in states.items() if s in ("unknown", "unavailable", "missing")}
                return True if not bad else None

            await poll("Home Assistant back on our gateway with every old entity", ours_serving, timeout=90)
            note(f"our stack serves every old entity id {time.monotonic() - switched:.1f} s after the switch")
            after = await _entry_entities(ws, entry_id)
            assert {e["unique_id"]: e["entity_id"] for e in after} == by_unique, "entity registry changed"
            assert not [e["entity_id"] for e in after if e["entity_id"].endswith("_2")]
            all_ids = [e["entity_id"] for e in await ws.call("config/entity_registry/list")]
            assert len(all_ids) == len(set(all_ids))
            assert not [e for e in all_ids if e.rsplit("_", 1)[-1] == "2" and e[:-2] in entity_ids]
            devices_after = [
                d
                for d in await ws.call("config/device_registry/list")
                if entry_id in d.get("config_entries", [])
            ]
            assert [d["id"] for d in devices_after] == [d["id"] for d in devices_before] and len(
                devices_after
            ) == 1

            # The counters carried on from the old totals (the Energy dashboard sees no reset).
            states = await _good_states(ws, entity_ids)
            assert float(states[battery_in]) >= 1.234 - 1e-6, states[battery_in]
            assert float(states[energy_in]) >= 4.936 - 1e-6, states[energy_in]

            # History: one entity id, states from the old system and from ours.
            await asyncio.sleep(2.5)
            history = await ws.call(
                "history/history_during_period",
                start_time=(datetime.now(UTC) - timedelta(hours=1)).isoformat(),
                entity_ids=[battery_in],
                minimal_response=True,
                no_attributes=True,
            )
            recorded = [
                float(s["s"]) for s in history[battery_in] if s["s"] not in ("unknown", "unavailable")
            ]
            assert float(old_states[battery_in]) in recorded and max(recorded) >= 1.234, recorded

            # Statistics: the imported year is still there under the same statistic id, and nothing to fix.
            found = await ws.call(
                "recorder/statistics_during_period",
                start_time=(hour - timedelta(days=30)).isoformat(),
                statistic_ids=[battery_in],
                period="hour",
                types=["sum"],
            )
            assert len(found.get(battery_in, [])) == len(stats), found
            issues = await ws.call("recorder/validate_statistics")
            to_fix = {eid: problems for eid, problems in issues.items() if eid in entity_ids}
            assert not to_fix, to_fix
            listed = {s["statistic_id"] for s in await ws.call("recorder/list_statistic_ids")}
            assert battery_in in listed

            # The Energy dashboard still points at the same (live) entities.
            saved = await ws.call("energy/get_prefs")
            assert saved["energy_sources"] == prefs["energy_sources"]
        note("entity ids, history, statistics and Energy sources survived the switch")
    finally:
        await ha.stop()
        if stack is not None:
            await stack.stop()
        if old_running:
            await old.stop()
        await broker.stop()
        print("\n".join(f"[test-ha migration] {n}" for n in notes))
        print(f"[test-ha migration] HA log: {ha.console_log}")
