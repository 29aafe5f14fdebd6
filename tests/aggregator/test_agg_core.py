"""The pure core: entity tables, formulas, freshness, documents, restore and recovery."""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest

from services.aggregator.banks import BankSpec, BatteryOverride, Layout, Selector
from services.aggregator.core import AggregatorCore, Rejected
from services.aggregator.documents import Outgoing, publish_value
from services.aggregator.energy import EnergyCounter
from services.aggregator.entities import BANK, BATTERY, for_profile
from services.aggregator.model import LinkInfo
from shared.payloads import DeviceState, parse_device_config, parse_device_state
from tests.aggregator.support import BANK_KEYS, BATTERY_TABLE, BT2, OTHER_BT2, SLAVES, make_core, reading

T0 = 1_000.0


def docs(out: list[Outgoing], kind: str) -> dict[str, dict]:
    return {item.device_id: orjson.loads(item.payload) for item in out if item.kind == kind}


def feed_all(core: AggregatorCore, ts: float, now: float | None = None, **kwargs) -> list[Outgoing]:
    for slave in SLAVES:
        core.accept(reading(slave, ts, **kwargs), ts if now is None else now)
    return core.pending(ts if now is None else now)


def test_default_tables_match_the_issue() -> None:
    default = for_profile(BATTERY, "default")
    battery = {e.key: (e.unit, e.device_class, e.state_class, e.accuracy) for e in default}
    assert battery == BATTERY_TABLE
    bank = for_profile(BANK, "default")
    assert tuple(e.key for e in bank) == BANK_KEYS
    assert all((e.unit, e.device_class, e.state_class, e.accuracy) == BATTERY_TABLE[e.key] for e in bank)
    assert 4 * len(battery) + len(bank) == 55
    names = {e.key: e.name for e in BATTERY}
    assert names["battery_level"] == "Battery level" and names["cell_voltage_min"] == "Cell voltage min"


def test_extended_profile_adds_entities_and_keys_are_unique() -> None:
    for table in (BATTERY, BANK):
        keys = [e.key for e in table]
        assert len(keys) == len(set(keys))
        assert len(for_profile(table, "extended")) > len(for_profile(table, "default"))
    extended = {e.key: e for e in for_profile(BATTERY, "extended")}
    assert extended["alarm"].platform == "binary_sensor"
    assert extended["rssi"].category == "diagnostic" and extended["read_age"].category == "diagnostic"
    with pytest.raises(ValueError):
        for_profile(BATTERY, "everything")


def test_first_readings_publish_five_devices_and_55_entities() -> None:
    core = make_core()
    out = feed_all(core, T0)
    configs = {k: parse_device_config(orjson.dumps(v)) for k, v in docs(out, "config").items()}
    assert set(configs) == {"battery_48", "battery_49", "battery_50", "battery_51", "bank"}
    assert sum(len(c.entities) for c in configs.values()) == 55
    battery = configs["battery_48"]
    assert battery.device.name == "Battery 48" and battery.device.via_device == "bank"
    assert battery.device.model == "RBT50LFP48S" and battery.device.serial == "22RBH4A051020048"
    assert battery.device.manufacturer == "Renogy"
    assert configs["bank"].device.name == "Battery Bank" and configs["bank"].device.model == "4 x RBT50LFP48S"
    # Configs precede states so the gateway knows the entities first.
    kinds = [item.kind for item in out if item.device_id == "bank"]
    assert kinds == ["config", "state"]


def test_battery_and_bank_formulas() -> None:
    core = make_core()
    core.accept(reading(48, T0, voltage=52.4, current=-3.26, remaining=49.84, capacity=50.0), T0)
    core.accept(
        reading(
            49,
            T0,
            voltage=52.6,
            current=10.0,
            remaining=20.0,
            capacity=100.0,
            cells=(3.1, 3.4, 3.35),
            temps=(-5.0, 12.5),
        ),
        T0,
    )
    states = docs(core.pending(T0), "state")
    b48, b49, bank = states["battery_48"]["values"], states["battery_49"]["values"], states["bank"]["values"]
    assert b48["power"] == round(52.4 * -3.26, 2)
    assert b48["battery_level"] == round(100 * 49.84 / 50, 2)
    assert (b48["cell_voltage_min"], b48["cell_voltage_max"]) == (3.27, 3.29)
    assert (b49["cell_voltage_min"], b49["cell_voltage_max"]) == (3.1, 3.4)
    assert (b49["temperature_min"], b49["temperature_max"]) == (-5.0, 12.5)
    assert bank["power"] == round(52.4 * -3.26 + 526.0, 2)
    assert bank["current"] == round(-3.26 + 10.0, 3)
    assert bank["capacity"] == 150.0 and bank["remaining_charge"] == round(69.84, 3)
    assert bank["battery_level"] == round(100 * 69.84 / 150, 2)
    assert (b48["energy_in"], b48["energy_out"], bank["energy_in"]) == (0.0, 0.0, 0.0)


def test_battery_level_is_clamped() -> None:
    core = make_core()
    core.accept(reading(48, T0, remaining=55.0, capacity=50.0), T0)  # 1.1 x capacity is still plausible
    assert docs(core.pending(T0), "state")["battery_48"]["values"]["battery_level"] == 100.0


def test_energy_is_integrated_and_summed_on_the_bank() -> None:
    core = make_core()
    feed_all(core, T0, voltage=50.0, current=-7.2)  # -360 W each
    out = feed_all(core, T0 + 10, voltage=50.0, current=-7.2)
    states = docs(out, "state")
    assert states["battery_48"]["values"]["energy_out"] == 0.001  # 1 Wh
    assert states["bank"]["values"]["energy_out"] == 0.004
    assert "config" not in {item.kind for item in out}  # configs only when they change


def test_nothing_is_published_when_nothing_changes() -> None:
    core = make_core()
    feed_all(core, T0)
    assert core.pending(T0) == []
    core.accept(reading(48, T0), T0)  # duplicate
    assert core.pending(T0) == []


def test_stale_values_become_null_and_bank_sums_cover_fresh_batteries() -> None:
    core = make_core(stale_after=90)
    feed_all(core, T0, voltage=50.0, current=2.0)
    feed_all(core, T0 + 10, voltage=50.0, current=2.0)
    for slave in (49, 50, 51):
        core.accept(reading(slave, T0 + 80, voltage=50.0, current=2.0), T0 + 80)
    core.pending(T0 + 80)
    out = core.pending(T0 + 101)  # battery 48's last reading is 91 s old
    states = docs(out, "state")
    b48 = states["battery_48"]["values"]
    assert b48["power"] is None and b48["voltage"] is None and b48["battery_level"] is None
    assert b48["cell_voltage_min"] is None
    assert b48["energy_in"] == pytest.approx(round(100 * 10 / 3600 / 1000, 4), abs=1e-4)
    bank = states["bank"]["values"]
    assert bank["power"] == 300.0 and bank["capacity"] == 150.0
    # Energy covers every counter, fresh or not, so it never drops.
    expected_in = (100 * 10 + 3 * 100 * 80) / 3600 / 1000
    assert bank["energy_in"] == pytest.approx(expected_in, abs=1e-4)
    assert set(states) == {"battery_48", "bank"}
    everything_stale = docs(core.pending(T0 + 1_000), "state")
    assert everything_stale["bank"]["values"]["power"] is None
    assert everything_stale["bank"]["values"]["battery_level"] is None
    assert everything_stale["bank"]["values"]["energy_in"] == bank["energy_in"]


def test_incomplete_reading_keeps_older_fields_with_their_time() -> None:
    core = make_core(stale_after=90)
    core.accept(reading(48, T0), T0)
    core.accept(reading(48, T0 + 60, cells=None, temps=None, complete=False), T0 + 60)
    values = docs(core.pending(T0 + 60), "state")["battery_48"]["values"]
    assert values["cell_voltage_min"] == 3.27
    values = docs(core.pending(T0 + 95), "state")["battery_48"]["values"]
    assert values["cell_voltage_min"] is None and values["voltage"] == 52.4


def test_older_reading_does_not_overwrite_newer_fields() -> None:
    core = make_core()
    core.accept(reading(48, T0 + 10, voltage=53.0), T0 + 10)
    core.accept(reading(48, T0, voltage=50.0), T0 + 11)
    assert docs(core.pending(T0 + 11), "state")["battery_48"]["values"]["voltage"] == 53.0


def test_publish_value_rounding() -> None:
    entities = {e.key: e for e in BATTERY}
    assert publish_value(entities["power"], 123.456) == 123.46
    assert publish_value(entities["power"], math.nan) is None
    assert publish_value(entities["power"], math.inf) is None
    assert publish_value(entities["power"], -0.0001) == 0.0
    # Energy is rounded down so a retained copy never exceeds the counter.
    assert publish_value(entities["energy_in"], 1.23459) == 1.2345
    assert publish_value(entities["energy_in"], 0.3) == 0.3
    assert publish_value(entities["alarm"], True) is True


def test_snapshot_restore_continues_integration_across_a_restart() -> None:
    core = make_core()
    feed_all(core, T0, voltage=50.0, current=7.2)
    feed_all(core, T0 + 10, voltage=50.0, current=7.2)
    snapshot = orjson.loads(orjson.dumps(core.snapshot(T0 + 10)))
    restarted = make_core(started=T0 + 20)
    restarted.restore(snapshot)
    assert restarted.restored_devices == {"battery_48", "battery_49", "battery_50", "battery_51", "bank"}
    assert restarted.pending(T0 + 20) == []  # nothing appears before its first reading
    # The retained reading already counted is a duplicate; the next one integrates across the restart.
    restarted.accept(reading(48, T0 + 10, voltage=50.0, current=7.2), T0 + 20)
    restarted.accept(reading(48, T0 + 30, voltage=50.0, current=7.2), T0 + 30)
    assert restarted.batteries["battery_48"].counter.in_wh == pytest.approx(3.0)
    bank = docs(restarted.pending(T0 + 30), "state")["bank"]["values"]
    assert bank["energy_in"] == pytest.approx(0.006, abs=1e-6)  # 1 Wh x 3 silent batteries + 3 Wh


@pytest.mark.parametrize(
    "document",
    [
        {"batteries": []},
        {"batteries": {"Bad Id": {"bt2": None, "counter": {"in_wh": 1, "out_wh": 0}}}},
        {"batteries": {"battery_48": {"bt2": BT2, "slave_id": "48", "counter": {"in_wh": 1, "out_wh": 0}}}},
    ],
)
def test_restore_rejects_malformed_documents(document: dict) -> None:
    core = make_core()
    with pytest.raises(ValueError):
        core.restore(document)
    assert core.batteries == {} and core.floors == {}


def test_retained_state_raises_counters_and_never_lowers_them() -> None:
    core = make_core()
    core.accept(reading(48, T0), T0)
    assert core.recover("battery_48", DeviceState(T0, {"energy_in": 2.5, "energy_out": 1.0})) is True
    assert core.recover("battery_48", DeviceState(T0, {"energy_in": 1.0, "energy_out": None})) is False
    counter = core.batteries["battery_48"].counter
    assert (counter.in_wh, counter.out_wh) == (2500.0, 1000.0)
    # A retained state for a battery that has not reported yet is kept until it does.
    assert core.recover("battery_49", DeviceState(T0, {"energy_in": 4.0, "energy_out": 0.5})) is True
    core.accept(reading(49, T0), T0)
    assert core.batteries["battery_49"].counter.in_wh == 4000.0
    values = docs(core.pending(T0), "state")
    assert values["battery_48"]["values"]["energy_in"] == 2.5
    assert values["bank"]["values"]["energy_in"] == 6.5


def test_our_own_published_state_does_not_ratchet_the_counter() -> None:
    core = make_core()
    core.accept(reading(48, T0, voltage=51.3, current=7.77), T0)
    core.accept(reading(48, T0 + 7.3, voltage=51.3, current=7.77), T0 + 8)
    out = core.pending(T0 + 8)
    before = core.batteries["battery_48"].counter.in_wh
    for item in out:
        if item.kind == "state":
            assert core.recover(item.device_id, parse_device_state(item.payload)) is False
    assert core.batteries["battery_48"].counter.in_wh == before


def test_bank_floor_keeps_the_bank_counter_monotonic() -> None:
    core = make_core()
    core.recover("bank", DeviceState(T0, {"energy_in": 9.0, "energy_out": 3.0}))
    core.accept(reading(48, T0), T0)
    bank = docs(core.pending(T0), "state")["bank"]["values"]
    assert (bank["energy_in"], bank["energy_out"]) == (9.0, 3.0)
    assert core.snapshot(T0)["banks"]["bank"] == {"in_wh": 9000.0, "out_wh": 3000.0}


def test_second_bt2_with_the_same_slave_id_is_rejected_with_the_fix() -> None:
    core = make_core()
    core.accept(reading(48, T0), T0)
    with pytest.raises(Rejected) as caught:
        core.accept(reading(48, T0 + 1, bt2=OTHER_BT2), T0 + 1)
    assert "aggregator.batteries" in str(caught.value) and OTHER_BT2 in str(caught.value)
    assert core.stats.dropped["slave_conflict"] == 1
    assert core.batteries["battery_48"].bt2 == BT2


def test_override_resolves_the_conflict() -> None:
    layout = Layout(overrides=(BatteryOverride(Selector(48, OTHER_BT2), "battery_48_b", "Shed Battery 48"),))
    core = make_core(layout)
    core.accept(reading(48, T0), T0)
    core.accept(reading(48, T0, bt2=OTHER_BT2, voltage=26.0), T0)
    out = core.pending(T0)
    configs, states = docs(out, "config"), docs(out, "state")
    assert set(configs) == {"battery_48", "battery_48_b", "bank"}
    assert configs["battery_48_b"]["device"]["name"] == "Shed Battery 48"
    assert states["battery_48_b"]["values"]["voltage"] == 26.0
    assert states["battery_48"]["values"]["voltage"] == 52.4


def test_silent_owner_is_taken_over() -> None:
    core = make_core(stale_after=90)
    core.accept(reading(48, T0, voltage=50.0, current=7.2), T0)
    core.accept(reading(48, T0 + 10, voltage=50.0, current=7.2), T0 + 10)
    core.accept(reading(48, T0 + 200, bt2=OTHER_BT2), T0 + 200)  # e.g. a replaced BT-2
    battery = core.batteries["battery_48"]
    assert battery.bt2 == OTHER_BT2 and battery.counter.in_wh == pytest.approx(1.0)
    assert core.stats.takeovers == 1


def test_configured_banks() -> None:
    layout = Layout(
        banks=(
            BankSpec("house", "House Bank", (Selector(48), Selector(49))),
            BankSpec("shed", "Shed Bank", (Selector(50, BT2),)),
        )
    )
    core = make_core(layout)
    out = feed_all(core, T0)
    configs = docs(out, "config")
    assert set(configs) == {"battery_48", "battery_49", "battery_50", "battery_51", "house", "shed"}
    assert configs["battery_50"]["device"]["via_device"] == "shed"
    assert configs["battery_51"]["device"]["via_device"] is None
    assert configs["house"]["device"]["name"] == "House Bank"
    assert docs(out, "state")["house"]["values"]["capacity"] == 100.0


def test_extended_profile_values() -> None:
    core = make_core(profile="extended")
    core.accept(
        reading(
            48,
            T0,
            voltage=52.0,
            current=-5.0,
            remaining=40.0,
            capacity=50.0,
            other_alarms=0,
            heater_on=True,
            charge_mosfet_on=True,
        ),
        T0,
    )
    core.accept(
        reading(49, T0, voltage=53.0, current=10.0, remaining=30.0, capacity=50.0, other_alarms=4), T0
    )
    core.link(BT2, LinkInfo(ts=T0, rssi=-62, link_quality=98, battery_link_quality={48: 100, 49: 90}))
    out = core.pending(T0 + 5)
    configs, states = docs(out, "config"), docs(out, "state")
    b48, b49, bank = states["battery_48"]["values"], states["battery_49"]["values"], states["bank"]["values"]
    assert len(configs["battery_48"]["entities"]) == len(for_profile(BATTERY, "extended"))
    assert b48["time_to_empty"] == 8.0 and b48["time_to_full"] is None
    assert b49["time_to_full"] == 2.0
    assert b48["cell_voltage_delta"] == 0.02 and b48["cycle_count"] == 12.0
    assert b48["alarm"] is False and b49["alarm"] is True and bank["alarm"] is True
    assert b48["heater"] is True and b48["charge_mosfet"] is True and b48["fully_charged"] is None
    assert b48["read_age"] == 5.0 and b48["rssi"] == -62.0 and b48["link_quality"] == 100.0
    assert b49["link_quality"] == 90.0
    assert bank["voltage"] == 52.5 and bank["batteries_online"] == 2.0
    assert bank["time_to_full"] == round(30.0 / 5.0, 2)


def test_health_counts() -> None:
    core = make_core()
    feed_all(core, T0)
    core.accept(reading(48, T0), T0)
    core.drop("not_json")
    health = core.health(T0 + 3)
    assert health["readings_accepted"] == 5 and health["readings_dropped"] == {"not_json": 1}
    assert health["integration"] == {"first": 4, "duplicate": 1}
    assert health["batteries_known"] == 4 and health["devices_published"] == 5
    assert health["batteries"]["battery_48"]["last_reading_age_s"] == 3.0


def test_orphan_counters_are_bounded() -> None:
    core = make_core()
    for index in range(200):
        core.recover(f"thing_{index}", DeviceState(T0, {"energy_in": 1.0}))
    assert len(core.orphans) <= 64
    assert isinstance(core.orphans["thing_0"], EnergyCounter)


def test_reading_from_the_future_is_rejected() -> None:
    core = make_core()
    core.accept(reading(48, T0), T0)
    with pytest.raises(Rejected, match="ahead"):
        core.accept(reading(48, T0 + 86_400), T0 + 10)
    core.accept(reading(48, T0 + 10), T0 + 10)
    assert core.batteries["battery_48"].counter.last_ts == T0 + 10
    assert core.stats.dropped["future_ts"] == 1


def test_docs_list_every_entity() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "entities.md").read_text()
    for entity in (*BATTERY, *BANK):
        row = f"| `{entity.key}` | {entity.name} |"
        assert row in text, row


def test_alarm_from_cell_alarm_words_alone() -> None:
    core = make_core(profile="extended")
    core.accept(reading(48, T0, other_alarms=0, cell_voltage_alarms=0, cell_temperature_alarms=0), T0)
    core.accept(reading(49, T0, other_alarms=0, cell_voltage_alarms=0b01 << 6, cell_temperature_alarms=0), T0)
    core.accept(reading(50, T0, cell_temperature_alarms=0b10), T0)
    states = docs(core.pending(T0 + 1), "state")
    assert states["battery_48"]["values"]["alarm"] is False
    assert states["battery_49"]["values"]["alarm"] is True  # cell 4 below its lower limit
    assert states["battery_50"]["values"]["alarm"] is True
    assert states["bank"]["values"]["alarm"] is True


IDENTITY_KEYS = ("model", "serial", "firmware")


def test_extended_profile_identity_text_sensors() -> None:
    core = make_core(profile="extended")
    out = feed_all(core, T0)
    configs, states = docs(out, "config"), docs(out, "state")
    entities = {e["key"]: e for e in configs["battery_48"]["entities"]}
    assert [e["key"] for e in configs["battery_48"]["entities"]][-3:] == list(IDENTITY_KEYS)
    for key, name, icon in (
        ("model", "Model", "mdi:battery-outline"),
        ("serial", "Serial number", "mdi:barcode"),
        ("firmware", "Firmware", "mdi:chip"),
    ):
        assert entities[key] == {
            "key": key,
            "name": name,
            "unit": None,
            "device_class": None,
            "state_class": None,
            "accuracy": 0,
            "icon": icon,
            "entity_category": "diagnostic",
            "platform": "text_sensor",
        }
    assert not any(e["key"] in IDENTITY_KEYS for e in configs["bank"]["entities"])
    assert configs["bank"]["device"]["model"] == "4 x RBT50LFP48S"
    b48 = states["battery_48"]["values"]
    assert (b48["model"], b48["serial"], b48["firmware"]) == ("RBT50LFP48S", "22RBH4A051020048", "V104")
    assert states["battery_51"]["values"]["serial"] == "22RBH4A051020051"
    # The published state passes the gateway's parser.
    assert parse_device_state(orjson.dumps(states["battery_48"])).values["firmware"] == "V104"


def test_identity_is_kept_across_readings_without_it_and_never_goes_stale() -> None:
    core = make_core(profile="extended")
    core.accept(reading(48, T0), T0)
    core.pending(T0)
    # Cycles between info reads (or a failed 5104 block) carry no identity.
    core.accept(reading(48, T0 + 30, model=None, serial=None, firmware=None), T0 + 30)
    values = docs(core.pending(T0 + 30), "state")["battery_48"]["values"]
    assert (values["model"], values["serial"], values["firmware"]) == (
        "RBT50LFP48S",
        "22RBH4A051020048",
        "V104",
    )
    late = T0 + 10_000  # every measurement is stale by now, the pack's identity is not
    values = docs(core.pending(late), "state")["battery_48"]["values"]
    assert values["voltage"] is None and values["model"] == "RBT50LFP48S"
    core.accept(reading(48, late, firmware="V105"), late)
    out = core.pending(late)
    assert docs(out, "state")["battery_48"]["values"]["firmware"] == "V105"
    assert "config" not in {item.kind for item in out}  # model and serial unchanged


def test_an_older_reading_fills_a_missing_identity_only() -> None:
    core = make_core(profile="extended")
    core.accept(reading(48, T0 + 30, model=None, serial=None, firmware=None), T0 + 30)
    core.accept(reading(48, T0, firmware="V103"), T0 + 30)  # late, but the only one with identity
    values = docs(core.pending(T0 + 30), "state")["battery_48"]["values"]
    assert (values["model"], values["firmware"]) == ("RBT50LFP48S", "V103")
    core.accept(reading(48, T0 + 60, firmware="V104"), T0 + 60)
    core.accept(reading(48, T0 + 45, firmware="V102"), T0 + 60)  # older than what is held
    assert docs(core.pending(T0 + 60), "state")["battery_48"]["values"]["firmware"] == "V104"


def test_text_values_are_published_within_the_contract() -> None:
    core = make_core(profile="extended")
    core.accept(reading(48, T0, model=" RBT\x0150LFP48S\x7f ", firmware="\x00\x01"), T0)
    values = docs(core.pending(T0), "state")["battery_48"]["values"]
    assert values["model"] == "RBT50LFP48S" and values["firmware"] is None
    entity = next(e for e in BATTERY if e.key == "serial")
    assert publish_value(entity, "S" * 100) == "S" * 64
    assert publish_value(entity, "") is None


def test_default_profile_has_no_identity_text_sensors() -> None:
    out = feed_all(make_core(), T0)
    for doc in docs(out, "config").values():
        assert {e["platform"] for e in doc["entities"]} == {"sensor"}
    assert not any(key in IDENTITY_KEYS for doc in docs(out, "state").values() for key in doc["values"])
