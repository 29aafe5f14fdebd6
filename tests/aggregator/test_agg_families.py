"""Device families in the aggregator core: simulated controller and DC-DC charger readings in, device
documents out; hostile readings dropped with one clear log line; batteries unchanged."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.aggregator.banks import BatteryOverride, Layout, Selector
from services.aggregator.core import AggregatorCore
from services.aggregator.devices import MAX_DEVICES, family_reading
from services.aggregator.documents import Outgoing
from services.aggregator.inputs import DropLog
from shared.devices.controller import CONTROLLER
from shared.devices.dcc import DCC
from shared.devices.inverter import INVERTER
from shared.devices.payload import parse_family_reading
from shared.devices.shunt import SHUNT
from shared.mqtt import Message
from shared.payloads import DeviceConfig, PayloadError, parse_device_config, parse_device_state
from tests.aggregator.families_support import (
    CONTROLLER_DEFAULT,
    CONTROLLER_ID,
    CONTROLLER_SLAVE,
    DCC_ID,
    DCC_SLAVE,
    controller,
    dcc,
    sim_body,
    sim_payload,
    sim_values,
    topic,
)
from tests.aggregator.support import BT2, OTHER_BT2, SLAVES, TOPICS, make_core, reading

T0 = 1_795_524_654.0
_LOGGER = logging.getLogger("tests.families")


def feed(
    core: AggregatorCore, message_topic: str, payload: bytes, now: float = T0, drops: DropLog | None = None
) -> bool | None:
    """What the service does with one message (a fresh DropLog unless one is given, as the service keeps)."""
    drops = drops or DropLog(_LOGGER)
    return family_reading(core, TOPICS, Message(message_topic, payload, False), drops, now=now, mono=now)


def documents(out: list[Outgoing]) -> tuple[dict[str, DeviceConfig], dict[str, dict[str, Any]]]:
    configs = {o.device_id: parse_device_config(o.payload) for o in out if o.kind == "config" and o.payload}
    states = {
        o.device_id: dict(parse_device_state(o.payload).values)
        for o in out
        if o.kind == "state" and o.payload
    }
    return configs, states


def test_controller_and_dcc_readings_become_device_documents() -> None:
    core = make_core()
    ctl, charger = controller(), dcc()
    truth = {CONTROLLER_ID: sim_values(ctl), DCC_ID: sim_values(charger)}
    assert feed(core, topic("controller", CONTROLLER_SLAVE), sim_payload(ctl, T0)) is True
    assert feed(core, topic("dcc", DCC_SLAVE), sim_payload(charger, T0)) is True
    configs, states = documents(core.pending(T0))
    assert set(configs) == {CONTROLLER_ID, DCC_ID}
    ctl_config = configs[CONTROLLER_ID]
    assert tuple(e.key for e in ctl_config.entities) == CONTROLLER_DEFAULT
    device = ctl_config.device
    assert (device.bt2, device.slave_id, device.model, device.manufacturer) == (
        BT2,
        CONTROLLER_SLAVE,
        "RNG-CTRL-RVR40",
        "Renogy",
    )
    specs = {e.key: e for e in ctl_config.entities}
    assert (specs["generation_today"].unit, specs["generation_today"].state_class) == (
        "kWh",
        "total_increasing",
    )
    assert (specs["charging_state"].platform, specs["fault"].platform) == ("text_sensor", "binary_sensor")
    assert specs["fault"].device_class == "problem"
    ctl_state, truth_ctl = states[CONTROLLER_ID], truth[CONTROLLER_ID]
    assert ctl_state["pv_power"] == truth_ctl["pv_power"] and isinstance(truth_ctl["pv_power"], int)
    assert truth_ctl["pv_power"] > 0  # noon: the sun is up
    assert ctl_state["pv_voltage"] == truth_ctl["pv_voltage"]
    assert ctl_state["generation_today"] == truth_ctl["generation_today"] / 1000  # type: ignore[operator]
    assert ctl_state["charging_state"] == "mppt" and ctl_state["fault"] is False
    dcc_state, truth_dcc = states[DCC_ID], truth[DCC_ID]
    assert (
        dcc_state["pv_power"] == truth_dcc["solar_power"]
        and dcc_state["output_power"] == truth_dcc["output_power"]
    )
    assert configs[DCC_ID].device.model == "RBC50D1S-G1" and configs[DCC_ID].device.slave_id == DCC_SLAVE
    assert core.pending(T0 + 1, T0 + 1) == []  # nothing changed
    health = core.health(T0 + 1)
    assert health["devices_known"] == 2 and health["readings_accepted"] == 2
    assert health["devices"][DCC_ID]["kind"] == "dcc"


def test_batteries_keep_their_55_entities_beside_the_new_devices() -> None:
    core = make_core()
    for slave in SLAVES:
        core.accept(reading(slave, T0), T0)
    feed(core, topic("controller", CONTROLLER_SLAVE), sim_payload(controller(), T0))
    feed(core, topic("dcc", DCC_SLAVE), sim_payload(dcc(), T0))
    configs, _ = documents(core.pending(T0))
    battery_side = {k: c for k, c in configs.items() if k.startswith("battery_") or k == "bank"}
    assert sum(len(c.entities) for c in battery_side.values()) == 55
    assert len(configs[CONTROLLER_ID].entities) == 9 and len(configs[DCC_ID].entities) == 11


def test_values_go_stale_like_batteries_and_the_model_stays() -> None:
    core = make_core(profile="extended")
    feed(core, topic("controller", CONTROLLER_SLAVE), sim_payload(controller(), T0))
    core.pending(T0)
    _, states = documents(core.pending(T0 + 91, T0 + 91))  # stale_after 90 s
    stale = states[CONTROLLER_ID]
    assert stale["pv_power"] is None and stale["charging_state"] is None and stale["fault"] is None
    assert stale["model"] == "RNG-CTRL-RVR40"  # identity: never stale


def test_an_older_reading_does_not_replace_newer_values() -> None:
    core = make_core()
    feed(core, topic("controller", CONTROLLER_SLAVE), sim_payload(controller(), T0, pv_power=300))
    feed(
        core, topic("controller", CONTROLLER_SLAVE), sim_payload(controller(), T0 - 10, pv_power=100), T0 + 1
    )
    _, states = documents(core.pending(T0 + 1, T0 + 1))
    assert states[CONTROLLER_ID]["pv_power"] == 300


def test_device_ids_hold_kind_and_bt2_and_never_collide() -> None:
    core = make_core()
    for bt2 in (BT2, OTHER_BT2):  # two controllers at the default slave 255 behind two BT-1 modules
        body = sim_body(controller(), T0, bt2=bt2, slave_id=255)
        assert feed(core, topic("controller", 255, bt2), orjson.dumps(body)) is True
    core.accept(reading(48, T0), T0)
    configs, _ = documents(core.pending(T0))
    assert {f"controller_{BT2}_255", f"controller_{OTHER_BT2}_255", "battery_48", "bank"} == set(configs)
    assert configs[f"controller_{BT2}_255"].device.name == "Charge controller 3D0E"


def test_a_configured_id_is_never_taken_by_a_family_device(caplog: pytest.LogCaptureFixture) -> None:
    layout = Layout(overrides=(BatteryOverride(Selector(1), id=CONTROLLER_ID),))
    core = make_core(layout)
    with caplog.at_level(logging.WARNING):
        assert feed(core, topic("controller", CONTROLLER_SLAVE), sim_payload(controller(), T0)) is False
    assert "a bank or aggregator.batteries entry has this id" in caplog.text
    assert core.stats.dropped["id_conflict"] == 1 and not core.devices.devices


def test_shunt_and_inverter_readings_are_served() -> None:
    core = make_core()
    shunt = {
        "schema": 1,
        "kind": "shunt",
        "ts": T0,
        "bt2": BT2,
        "slave_id": 0,
        "voltage": 13.2,
        "current": -4.5,
    }
    shunt["power"] = round(13.2 * -4.5, 1)
    assert feed(core, topic("shunt", 0), orjson.dumps(shunt)) is True
    inverter = {
        "schema": 1,
        "kind": "inverter",
        "ts": T0,
        "bt2": BT2,
        "slave_id": 32,
        "output_voltage": 230.1,
    }
    assert feed(core, topic("inverter", 32), orjson.dumps(inverter)) is True
    configs, states = documents(core.pending(T0))
    assert states[f"shunt_{BT2}_0"]["power"] == -59.4 and configs[f"shunt_{BT2}_0"].device.slave_id is None
    assert states[f"inverter_{BT2}_32"]["output_voltage"] == 230.1
    assert len(configs[f"inverter_{BT2}_32"].entities) == len(
        [e for e in INVERTER.entities if not e.extended]
    )
    # The family's default entities, then the aggregator's energy counters (SHUNT.energy_power).
    shunt_keys = [e.key for e in configs[f"shunt_{BT2}_0"].entities]
    assert shunt_keys == [e.key for e in SHUNT.entities if not e.extended] + ["energy_in", "energy_out"]


def test_a_silent_device_is_removed_after_forget_after() -> None:
    core = make_core()
    feed(core, topic("dcc", DCC_SLAVE), sim_payload(dcc(), T0))
    core.pending(T0)
    later = T0 + core.settings.forget_after + 1
    out = core.pending(later, later)
    assert Outgoing(DCC_ID, "config", b"") in out and Outgoing(DCC_ID, "state", b"") in out
    assert not core.devices.devices and core.health(later)["expired"] == 1


def test_devices_are_bounded() -> None:
    core = make_core()
    for slave in range(MAX_DEVICES):
        body = sim_body(controller(), T0, slave_id=slave + 1)
        assert feed(core, topic("controller", slave + 1), orjson.dumps(body)) is True
    body = sim_body(controller(), T0, slave_id=200)
    assert feed(core, topic("controller", 200), orjson.dumps(body)) is False
    assert core.stats.dropped["too_many_devices"] == 1 and len(core.devices.devices) == MAX_DEVICES


# --- hostile input ---------------------------------------------------------------------------

GOOD = sim_body(controller(), T0)


def _raw(**changes: Any) -> bytes:
    return orjson.dumps({**GOOD, **changes})


HOSTILE: list[tuple[str, str, bytes, str]] = [
    # (case, topic, payload, what the log line says)
    ("infinity", topic("controller", 1), orjson.dumps(GOOD)[:-1] + b',"pv_voltage":1e999}', "not JSON"),
    ("out of range", topic("controller", 1), _raw(pv_voltage=999.9), "pv_voltage = 999.9 outside 0.0..150.0"),
    ("negative", topic("controller", 1), _raw(pv_power=-5), "pv_power = -5 outside 0..6000"),
    ("unranged too big", topic("controller", 1), _raw(operating_days=10**9), "operating_days = 1000000000"),
    ("text for number", topic("controller", 1), _raw(pv_power="300"), "'pv_power' must be a number"),
    ("bool for number", topic("controller", 1), _raw(pv_power=True), "'pv_power' must be a number"),
    ("unknown enum", topic("controller", 1), _raw(charging_state="warp"), "is not a known charging state"),
    ("flag type", topic("controller", 1), _raw(load_on="yes"), "'load_on' must be true or false"),
    ("status word", topic("controller", 1), _raw(faults=1.5), "'faults' must be an integer"),
    ("long text", topic("controller", 1), _raw(model="R" * 500), "'model' must be a string of at most 16"),
    ("kind mismatch", topic("dcc", 1), orjson.dumps(GOOD), "body kind 'controller' differs from topic 'dcc'"),
    ("slave mismatch", topic("controller", 2), orjson.dumps(GOOD), "body slave_id 1 differs from topic 2"),
    (
        "bt2 mismatch",
        topic("controller", 1, OTHER_BT2),
        orjson.dumps(GOOD),
        "differs from topic 'a4c138123456'",
    ),
    (
        "huge body slave",
        topic("controller", 1),
        json.dumps({**GOOD, "slave_id": 10**30}).encode(),
        "'slave_id' must be an integer 0..255",
    ),
    (
        "huge topic slave",
        f"renogy/bt2/{BT2}/controller/99999999999/reading",
        orjson.dumps(GOOD),
        "not <root>/bt2/",
    ),
    (
        "superscript slave",
        f"renogy/bt2/{BT2}/controller/\u00b9/reading",
        orjson.dumps(GOOD),
        "not <root>/bt2/",
    ),
    (
        "unknown kind",
        f"renogy/bt2/{BT2}/toaster/1/reading",
        orjson.dumps(GOOD),
        "unknown device kind 'toaster'",
    ),
    ("schema", topic("controller", 1), _raw(schema=2), "unsupported schema 2"),
    ("no ts", topic("controller", 1), _raw(ts=None), "missing 'ts'"),
    ("future", topic("controller", 1), _raw(ts=T0 + 3600), "ahead of this host's clock"),
]


@pytest.mark.parametrize(("case", "where", "payload", "said"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_readings_are_dropped_with_one_clear_line(
    case: str, where: str, payload: bytes, said: str, caplog: pytest.LogCaptureFixture
) -> None:
    core = make_core()
    with caplog.at_level(logging.DEBUG):
        assert feed(core, where, payload) is False, case
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and said in lines[0] and "\n" not in lines[0], lines
    assert not core.devices.devices and sum(core.stats.dropped.values()) == 1
    assert core.pending(T0) == []
    # the next good reading is still served
    assert feed(core, topic("controller", 1), orjson.dumps(GOOD)) is True


def test_control_characters_are_stripped_from_text() -> None:
    core = make_core(profile="extended")
    evil = "RNG\x1b[2J-CTRL\x00\u0007"
    assert feed(core, topic("controller", 1), _raw(model=evil[:16])) is True
    configs, states = documents(core.pending(T0))
    assert configs[CONTROLLER_ID].device.model == "RNG[2J-CTRL"
    assert states[CONTROLLER_ID]["model"] == "RNG[2J-CTRL"


def test_unknown_kinds_are_logged_once_per_window(caplog: pytest.LogCaptureFixture) -> None:
    core = make_core()
    drops = DropLog(_LOGGER)
    with caplog.at_level(logging.WARNING):
        for _ in range(200):
            feed(core, f"renogy/bt2/{BT2}/toaster/1/reading", orjson.dumps(GOOD), drops=drops)
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1
    assert core.stats.dropped["unknown_kind"] == 200


def test_battery_topics_are_left_to_the_battery_path() -> None:
    core = make_core()
    assert feed(core, f"renogy/bt2/{BT2}/battery/48/reading", b"{}") is None
    assert feed(core, "renogy/device/battery_48/state", b"{}") is None


def test_the_payload_parser_screens_every_family() -> None:
    for family, model in ((CONTROLLER, controller()), (DCC, dcc())):
        body = sim_body(model, T0)
        parsed = parse_family_reading(family, orjson.dumps(body), bt2=BT2, slave_id=model.slave)
        assert parsed.values == sim_values(model) and parsed.kind == family.kind
    with pytest.raises(PayloadError, match=r"solar_voltage = 61\.0 outside 0\.0\.\.60\.0"):
        parse_family_reading(DCC, orjson.dumps({**sim_body(dcc(), T0), "solar_voltage": 61.0}))


def test_docs_list_every_family_entity() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "entities.md").read_text()
    for family in (CONTROLLER, DCC, INVERTER, SHUNT):
        section = text[text.index(f"### {family.title} (`{family.kind}_<bt2_id>_<slave_id>`)") :]
        section = section[: section.index("\n#", 1)]
        for entity in family.entities:
            profile = "extended" if entity.extended else "default"
            row = f"| `{entity.key}` | {entity.name} | {entity.unit or '—'} | {entity.device_class or '—'} |"
            assert row in section and f"| {entity.platform} | {profile} |" in section, row
