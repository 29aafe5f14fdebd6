"""The served entities, every field, against a golden file (a refactor guard for the entity tables).

Four scenarios go through the real aggregator core and the gateway's catalog: 4 batteries in the
default profile, the extended profile, legacy naming (``gateway.entity_naming = legacy``), and the
device families (controller, DC-DC charger, inverter, shunt beside the batteries, extended, controls
on). Each one records the device documents exactly as published (config and state JSON) and what the
gateway serves from them (object id, key, sub-device, every EntitySpec field).

A deliberate change of the entities regenerates the file: ``python -m tests.aggregator.test_agg_entity_golden``
and review the diff.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import orjson

from services.aggregator.banks import Layout
from services.aggregator.core import AggregatorCore, Settings
from services.aggregator.devices import family_reading
from services.aggregator.inputs import DropLog
from services.aggregator.model import LinkInfo
from services.gateway.entities import build_catalog, fnv1_32
from services.gateway.legacy_naming import LegacyNaming
from shared.mqtt import Message
from shared.payloads import DeviceConfig, parse_device_config
from tests.aggregator.families_support import topic
from tests.aggregator.support import BT2, SLAVES, TOPICS, reading

DATA = Path(__file__).resolve().parents[1] / "data" / "aggregator"
GOLDEN = DATA / "entities-golden.json"
# Decoded readings of a controller, a DC-DC charger and an inverter as the simulator gave them at noon
# (fixed here, so that a change of the simulator models does not move this guard of the entities).
FAMILY_READINGS = DATA / "family-readings.json"
T0 = 1_795_524_654.0
STEP = 10.0
CURRENTS = {48: -3.26, 49: 12.5, 50: 0.05, 51: -40.0}
# Status words and the flags the reader derives from them: every kind of bit, a cell alarm on 49.
STATUS: dict[int, dict[str, Any]] = {
    48: {"status1": 0b110, "status2": 1 << 11, "other_alarms": 0, "cell_voltage_alarms": 0}
    | {"charge_mosfet_on": True, "discharge_mosfet_on": True, "fully_charged": True, "heater_on": False},
    49: {"status1": 0b010, "status2": 1 << 13, "other_alarms": 0, "cell_voltage_alarms": 0b01 << 6}
    | {"charge_mosfet_on": True, "discharge_mosfet_on": False, "fully_charged": False, "heater_on": True},
    50: {"status1": 0, "status2": 0, "other_alarms": 0, "cell_voltage_alarms": 0},
    51: {"charge_mosfet_on": False},
}
# The shunt pushes notifications (no simulator read): a decoded one as the reader would publish it.
SHUNT_BODY = {"schema": 1, "kind": "shunt", "bt2": BT2, "slave_id": 0, "voltage": 13.2, "current": -4.5}
SHUNT_BODY["power"] = -59.4
_LOG = DropLog(logging.getLogger("tests.golden"))


def _feed_batteries(core: AggregatorCore) -> None:
    for step in range(3):
        ts = T0 + step * STEP
        for slave in SLAVES:
            current = CURRENTS[slave] * (1 + 0.1 * step)
            core.accept(reading(slave, ts, current=current, **STATUS[slave]), ts)
    core.link(BT2, LinkInfo(T0 + 2 * STEP, -67.0, 93.5, {48: 100.0, 49: 96.0, 50: 90.0}), T0 + 2 * STEP)


def _feed_families(core: AggregatorCore) -> None:
    now = T0 + 2 * STEP
    bodies = orjson.loads(FAMILY_READINGS.read_bytes()) | {"shunt": SHUNT_BODY}
    for kind, body in bodies.items():
        message = Message(topic(kind, body["slave_id"]), orjson.dumps(body | {"ts": now}), False)
        assert family_reading(core, TOPICS, message, _LOG, now=now, mono=now), kind


def _documents(core: AggregatorCore) -> tuple[dict[str, Any], dict[str, Any], dict[str, DeviceConfig]]:
    out = core.pending(T0 + 2 * STEP + 1, T0 + 2 * STEP + 1)
    configs = {o.device_id: orjson.loads(o.payload) for o in out if o.kind == "config" and o.payload}
    states = {o.device_id: orjson.loads(o.payload) for o in out if o.kind == "state" and o.payload}
    parsed = {ref: parse_device_config(orjson.dumps(doc)) for ref, doc in configs.items()}
    return dict(sorted(configs.items())), dict(sorted(states.items())), parsed


def _served(configs: dict[str, DeviceConfig], naming: LegacyNaming | None) -> list[dict[str, Any]]:
    catalog = build_catalog(configs, 1, naming)
    assert not catalog.problems, catalog.problems
    return [
        {"object_id": e.object_id, "key": e.key, "device_id": e.device_id, "device_ref": e.device_ref}
        | e.spec.to_json()
        for e in catalog.entities
    ]


def scenario(name: str) -> dict[str, Any]:
    profile = "default" if name in ("default", "legacy") else "extended"
    settings = Settings(profile=profile, info_stale_after=1800.0, controls=name == "families")
    core = AggregatorCore(Layout(), settings, started=1_000.0)
    _feed_batteries(core)
    if name == "families":
        _feed_families(core)
    configs, states, parsed = _documents(core)
    naming = LegacyNaming(None, hash_key=fnv1_32) if name == "legacy" else None
    return {"configs": configs, "states": states, "served": _served(parsed, naming)}


SCENARIOS = ("default", "extended", "legacy", "families")


def snapshot() -> dict[str, Any]:
    return {name: scenario(name) for name in SCENARIOS}


def _dump(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def test_served_entities_match_the_golden_file_byte_for_byte() -> None:
    got = _dump(snapshot())
    assert got == GOLDEN.read_bytes(), (
        "served entities changed; if intended: python -m tests.aggregator.test_agg_entity_golden"
    )


def test_golden_default_profile_is_55_entities_on_five_devices() -> None:
    golden = orjson.loads(GOLDEN.read_bytes())
    default = golden["default"]
    assert len(default["served"]) == 55 and len(default["configs"]) == 5
    assert len(golden["legacy"]["served"]) == 55
    assert {e["device_ref"] for e in golden["families"]["served"]} >= {
        "bank",
        f"controller_{BT2}_1",
        f"dcc_{BT2}_96",
        f"inverter_{BT2}_32",
        f"shunt_{BT2}_0",
    }


if __name__ == "__main__":
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_bytes(_dump(snapshot()))
    sys.stdout.write(f"wrote {GOLDEN}\n")
