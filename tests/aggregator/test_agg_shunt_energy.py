"""Energy counters of the Smart Shunt: integrated by the aggregator from the shunt's power with the
batteries' machinery (EnergyCounter), persisted in the state file and in the retained state, restored
across a restart; readings in through the real parser (family_reading), documents out as published."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.aggregator.core import AggregatorCore
from services.aggregator.devices import entities_of, family_reading
from services.aggregator.energy import SECONDS_PER_HOUR
from services.aggregator.inputs import DropLog
from services.aggregator.service import Aggregator
from shared.devices import FAMILIES
from shared.devices.controller import CONTROLLER
from shared.devices.shunt import SHUNT
from shared.mqtt import Message
from shared.payloads import parse_device_config, parse_device_state
from tests.aggregator.families_support import CONTROLLER_ID, CONTROLLER_SLAVE, controller, sim_body
from tests.aggregator.support import BT2, TOPICS, make_config, make_core
from tests.aggregator.test_agg_service import aggregator
from tests.support.probe import MqttProbe

SHUNT_ID = "4ce174534830"
REF = f"shunt_{SHUNT_ID}_0"
TOPIC = TOPICS.reading(SHUNT_ID, 0, "shunt")
T0 = 1_795_524_654.0
BOOT = "a" * 32
ENERGY = ("energy_in", "energy_out")
_LOG = DropLog(logging.getLogger("tests.shunt_energy"))


def body(
    ts: float, current: float, *, mono: float | None, voltage: float = 13.0, **extra: Any
) -> dict[str, Any]:
    """A shunt reading as the reader publishes it (power = V x I, as shared/devices/shunt.py decodes)."""
    out: dict[str, Any] = {
        "schema": 1,
        "kind": "shunt",
        "ts": ts,
        "bt2": SHUNT_ID,
        "slave_id": 0,
        "voltage": voltage,
        "current": current,
        "power": round(voltage * current, 1),
        "soc": 80.0,
    }
    if mono is not None:
        out |= {"boot_id": extra.pop("boot_id", BOOT), "mono": mono}
    return out | extra


def feed(core: AggregatorCore, payload: dict[str, Any], now: float) -> bool | None:
    message = Message(TOPIC, orjson.dumps(payload), False)
    return family_reading(core, TOPICS, message, _LOG, now=now, mono=now)


def wh(core: AggregatorCore) -> tuple[float, float]:
    counter = core.devices.counter(REF)
    assert counter is not None
    return counter.in_wh, counter.out_wh


def published(core: AggregatorCore, now: float) -> dict[str, Any]:
    out = core.pending(now, now)
    states = [o for o in out if o.device_id == REF and o.kind == "state"]
    return dict(parse_device_state(states[-1].payload).values) if states else {}


def test_energy_is_the_trapezoid_of_power_over_monotonic_time() -> None:
    core = make_core()
    # (reader monotonic time, current) at 13 V; the wall time steps back 50 s after the third reading
    # (NTP): the intervals are the monotonic ones.
    samples = [(100.0, 10.0), (110.0, 20.0), (125.0, 20.0), (130.0, 5.0), (160.0, 0.0)]
    for k, (mono, current) in enumerate(samples):
        wall = T0 + mono - (50.0 if k >= 3 else 0.0)
        assert feed(core, body(wall, current, mono=mono), now=T0 + mono) is True
    powers = [(m, 13.0 * i) for m, i in samples]
    expected = sum((p0 + p1) / 2 * (t1 - t0) for (t0, p0), (t1, p1) in itertools.pairwise(powers))
    assert expected > 0
    assert wh(core) == pytest.approx((expected / SECONDS_PER_HOUR, 0.0), abs=1e-9)
    assert core.stats.steps == {"first": 1, "integrated": 4}
    values = published(core, T0 + 161)
    # Published rounded down to 4 decimals, like a battery's counter.
    assert values["energy_in"] == pytest.approx(expected / SECONDS_PER_HOUR / 1000, abs=1e-4)
    assert values["energy_in"] <= expected / SECONDS_PER_HOUR / 1000
    assert values["energy_out"] == 0.0


def test_charge_and_discharge_are_split_at_the_zero_crossing() -> None:
    core = make_core()
    feed(core, body(T0, 10.0, mono=0.0), now=T0)  # +130 W
    feed(core, body(T0 + 40, -30.0, mono=40.0), now=T0 + 40)  # -390 W: crosses zero at 10 s
    feed(core, body(T0 + 50, -30.0, mono=50.0), now=T0 + 50)
    charged = 130.0 * 10 / 2
    discharged = 390.0 * 30 / 2 + 390.0 * 10
    assert wh(core) == pytest.approx((charged / SECONDS_PER_HOUR, discharged / SECONDS_PER_HOUR), abs=1e-9)
    values = published(core, T0 + 51)
    assert values["energy_out"] == pytest.approx(discharged / SECONDS_PER_HOUR / 1000, abs=1e-4)


def test_a_reader_restart_is_a_gap_and_so_is_an_interval_over_max_gap() -> None:
    core = make_core(max_gap=90.0)
    feed(core, body(T0, 10.0, mono=500.0), now=T0)
    feed(core, body(T0 + 10, 10.0, mono=510.0), now=T0 + 10)
    counted = wh(core)[0]
    # The reader restarted: its monotonic clock starts again, the interval across it is not counted.
    feed(core, body(T0 + 20, 10.0, mono=3.0, boot_id="b" * 32), now=T0 + 20)
    assert wh(core)[0] == counted and core.stats.steps["restart"] == 1
    feed(core, body(T0 + 30, 10.0, mono=13.0, boot_id="b" * 32), now=T0 + 30)
    assert wh(core)[0] == pytest.approx(counted + 130.0 * 10 / SECONDS_PER_HOUR)
    counted = wh(core)[0]
    feed(core, body(T0 + 130, 10.0, mono=113.0, boot_id="b" * 32), now=T0 + 130)  # 100 s > max_gap
    assert wh(core)[0] == counted and core.stats.steps["gap"] == 1


def test_implausible_power_is_refused_like_a_battery_reading(caplog: pytest.LogCaptureFixture) -> None:
    core = make_core()
    feed(core, body(T0, 10.0, mono=0.0), now=T0)
    feed(core, body(T0 + 10, 10.0, mono=10.0), now=T0 + 10)
    counted = wh(core)
    # More than a pack's 10 kW (the battery rule, shared.payloads.MAX_PACK_POWER_W): dropped, nothing counted.
    forged = body(T0 + 20, 10.0, mono=20.0) | {"power": 50_000.0}
    with caplog.at_level(logging.WARNING):
        assert feed(core, forged, now=T0 + 20) is False
    assert "power = 50000.0 outside -10000.0..10000.0" in caplog.text
    assert wh(core) == counted and core.stats.dropped["implausible"] == 1
    # An energy total in a reading is no value of the family: ignored, never taken as the counter.
    assert feed(core, body(T0 + 30, 10.0, mono=30.0, energy_in=1e9), now=T0 + 30) is True
    # The next good reading integrates from the last good sample (within max_gap), as a battery's.
    assert wh(core)[0] == pytest.approx(counted[0] + 130.0 * 20 / SECONDS_PER_HOUR)


def test_a_reading_from_the_future_is_counted_but_not_shown_as_a_battery_s() -> None:
    core = make_core()  # max_ahead 30 s
    feed(core, body(T0, 10.0, mono=0.0), now=T0)
    # The reader's wall clock runs 10 min ahead: its monotonic time still measures the interval.
    assert feed(core, body(T0 + 610, 10.0, mono=10.0), now=T0 + 10) is True
    assert wh(core)[0] == pytest.approx(130.0 * 10 / SECONDS_PER_HOUR)
    assert core.stats.clock["display_refused"] == 1
    # Without monotonic time it would anchor the counter in the future: refused.
    assert feed(core, body(T0 + 620, 10.0, mono=None), now=T0 + 20) is False
    assert core.stats.dropped["future_ts"] == 1


def test_a_forged_retained_state_is_bounded_like_a_battery_s() -> None:
    core = make_core()
    feed(core, body(T0, 10.0, mono=0.0), now=T0)
    feed(core, body(T0 + 10, 10.0, mono=10.0), now=T0 + 10)
    counted = wh(core)
    forged = orjson.dumps({"schema": 1, "ts": T0, "values": {"energy_in": 1e6, "energy_out": 0.0}})
    assert core.recover(REF, parse_device_state(forged), None, T0 + 11) is False
    assert core.stats.recovery_refused == 1 and wh(core) == counted
    assert "batteries" in core.snapshot(T0) and REF not in core.snapshot(T0)["batteries"]


def test_energy_entities_never_go_stale_and_are_total_increasing() -> None:
    core = make_core(stale_after=90.0)
    feed(core, body(T0, -10.0, mono=0.0), now=T0)
    feed(core, body(T0 + 10, -10.0, mono=10.0), now=T0 + 10)
    out = core.pending(T0 + 10, T0 + 10)
    config = parse_device_config(next(o.payload for o in out if o.device_id == REF and o.kind == "config"))
    specs = {e.key: e for e in config.entities}
    for key in ENERGY:
        assert (specs[key].unit, specs[key].device_class, specs[key].state_class) == (
            "kWh",
            "energy",
            "total_increasing",
        )
    later = published(core, T0 + 200)
    assert later["power"] is None and later["energy_out"] == pytest.approx(130.0 * 10 / 3.6e6, abs=1e-4)


def test_another_family_opts_in_by_naming_its_power_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """No code names the shunt: a family that names a power field (energy_power) counts and serves it."""
    monkeypatch.setitem(FAMILIES, "controller", dataclasses.replace(CONTROLLER, energy_power="pv_power"))
    core = make_core()
    for k in range(2):
        payload = sim_body(controller(), T0 + 10 * k, pv_power=100.0, boot_id=BOOT, mono=10.0 * k)
        message = Message(TOPICS.reading(BT2, CONTROLLER_SLAVE, "controller"), orjson.dumps(payload), False)
        assert family_reading(core, TOPICS, message, _LOG, now=T0 + 10 * k, mono=T0 + 10 * k)
    counter = core.devices.counter(CONTROLLER_ID)
    assert counter is not None and counter.in_wh == pytest.approx(100.0 * 10 / SECONDS_PER_HOUR)
    out = core.pending(T0 + 11, T0 + 11)
    state = next(o for o in out if o.device_id == CONTROLLER_ID and o.kind == "state")
    assert parse_device_state(state.payload).values["energy_in"] == pytest.approx(0.0002, abs=1e-4)
    assert CONTROLLER_ID in core.snapshot(T0 + 11)["devices"]


def test_the_energy_entities_come_after_the_family_table() -> None:
    for family in FAMILIES.values():
        if family.kind != "battery" and family.energy_power is not None:
            keys = [e.key for e in entities_of(family, "default")]
            assert keys[-2:] == list(ENERGY) and keys.count("energy_in") == 1, family.kind
            assert family.energy_power in family.ranges or family.get_field(family.energy_power)
    assert [e.key for e in entities_of(SHUNT, "extended")][-3:] == ["starter_voltage", *ENERGY]


def test_shunt_counters_are_saved_at_the_battery_cadence_and_restored(tmp_path: Path) -> None:
    """Fake clocks, no broker: an hour of readings every 30 s writes the state file as seldom as the
    batteries' counters do, and a new aggregator on that file counts on across the restart."""
    wall, mono = [T0], [1_000.0]
    config = make_config("mqtt://127.0.0.1:9", tmp_path)
    first = Aggregator(config, clock=lambda: wall[0], mono_clock=lambda: mono[0])
    first.settled = True
    reader_mono = 50.0
    for _ in range(120):
        first._on_message(Message(TOPIC, orjson.dumps(body(wall[0], -20.0, mono=reader_mono)), False))
        wall[0] += 15.0
        mono[0] += 15.0
        first._tick()
        wall[0] += 15.0
        mono[0] += 15.0
        reader_mono += 30.0
    expected_out = 260.0 * 30 * 119 / SECONDS_PER_HOUR
    assert wh(first.core) == pytest.approx((0.0, expected_out))
    # The first save at once (a new counter), then at most every save_interval (300 s): 13 in the hour.
    assert 12 <= first.store.saves <= 14, first.store.saves
    first._persist(wall[0], mono[0])  # what run() does on shutdown
    saved = orjson.loads(first.store.path.read_bytes())
    assert saved["devices"][REF]["counter"]["out_wh"] == pytest.approx(expected_out)
    assert saved["batteries"] == {}

    second = Aggregator(config, clock=lambda: wall[0], mono_clock=lambda: mono[0])
    assert second.store.load(second._restore) and REF in second.core.restored_devices
    second.settled = True
    second._on_message(Message(TOPIC, orjson.dumps(body(wall[0], -20.0, mono=reader_mono)), False))
    # The saved sample is the anchor: the 30 s across the restart are counted, once.
    assert wh(second.core) == pytest.approx((0.0, expected_out + 260.0 * 30 / SECONDS_PER_HOUR))


async def test_restart_keeps_the_totals_via_the_state_file_and_the_retained_state(
    mosquitto, tmp_path: Path
) -> None:
    config = make_config(mosquitto.url, tmp_path)
    t0 = time.time() - 100
    state_topic = TOPICS.device_state(REF)

    def energy(probe: MqttProbe) -> dict[str, float]:
        if state_topic not in probe.latest:
            return {}
        return {key: probe.json(state_topic)["values"][key] for key in ENERGY}

    async with MqttProbe(mosquitto.url, "renogy/device/#") as probe:
        async with aggregator(config) as first:
            await probe.wait_for(lambda: first.settled, what="the aggregator subscribed")
            for k in range(3):  # 5 kW in, then 2.6 kW out
                probe.publish(
                    TOPIC,
                    orjson.dumps(body(t0 + 10 * k, 100.0 if k < 2 else -50.0, voltage=50.0, mono=10.0 * k)),
                )
            await probe.wait_for(lambda: energy(probe).get("energy_out", 0) > 0, what="shunt energy out")
            before = wh(first.core)
        saved = orjson.loads(first.store.path.read_bytes())["devices"][REF]["counter"]
        assert (saved["in_wh"], saved["out_wh"]) == pytest.approx(before)
        # +5 kW for 10 s, then to -2.5 kW in 10 s: zero at 20/3 s (the interval is split there).
        expected_in = (5000.0 * 10 + 5000.0 * (20 / 3) / 2) / SECONDS_PER_HOUR
        assert before == pytest.approx((expected_in, 2500.0 * (10 / 3) / 2 / SECONDS_PER_HOUR))

        # A restart on the state file: the next reading (10 s on the reader's clock) counts on from it.
        async with aggregator(config) as second:
            await probe.wait_for(lambda: second.settled, what="recovery")
            assert second.recovered_from == "file"
            probe.publish(TOPIC, orjson.dumps(body(t0 + 30, -50.0, voltage=50.0, mono=30.0)))
            grown = before[1] + 2500.0 * 10 / SECONDS_PER_HOUR
            await probe.wait_for(lambda: wh(second.core)[1] >= grown - 1e-9, what="counting on")
            after = wh(second.core)
        assert after == pytest.approx((before[0], grown))

        # The state file lost: the retained state (the second copy, with the exact counter) restores it.
        second.store.path.unlink()
        async with aggregator(config, recovery_wait=1.0) as third:
            await probe.wait_for(lambda: third.settled, what="recovery")
            assert third.recovered_from == "retained" and third.core.stats.recovered == 1
            counter = third.core.devices.counter(REF)
            assert counter is not None and (counter.in_wh, counter.out_wh) == pytest.approx(after)
            snapshot = third.core.snapshot(time.time())
            assert REF in snapshot["devices"] and snapshot["batteries"] == {}  # never taken for a battery
            probe.publish(TOPIC, orjson.dumps(body(t0 + 40, -50.0, voltage=50.0, mono=40.0)))
            await probe.wait_for(
                lambda: wh(third.core)[1] >= after[1] + 2500.0 * 10 / SECONDS_PER_HOUR - 1e-9,
                what="counting on",
            )
        assert energy(probe)["energy_out"] == pytest.approx(wh(third.core)[1] / 1000, abs=1e-4)


def test_the_state_file_s_device_counters_are_screened(caplog: pytest.LogCaptureFixture) -> None:
    good = {"in_wh": 5.0, "out_wh": 7.0, "last_ts": None, "last_power": None}
    core = make_core()
    with caplog.at_level(logging.WARNING):
        core.restore(
            {
                "batteries": {},
                "banks": {},
                "devices": {
                    REF: {"counter": good},
                    CONTROLLER_ID: {"counter": good},  # a family without energy_power
                    f"shunt_{BT2}_0": {"counter": good | {"in_wh": 1e300}},
                },
            }
        )
    assert set(core.devices.aside) == {REF} and REF in core.restored_devices
    assert f"the counter of {CONTROLLER_ID} is ignored: not a device that counts energy" in caplog.text
    # Its first reading takes the restored counter up; nothing counted is lost.
    feed(core, body(T0, 10.0, mono=0.0), now=T0)
    assert wh(core) == (5.0, 7.0) and not core.devices.aside
    # A file of a version without shunt counters restores none.
    core = make_core()
    core.restore({"batteries": {}, "banks": {}})
    assert not core.devices.aside
