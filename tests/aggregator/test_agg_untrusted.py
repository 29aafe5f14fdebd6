"""MQTT input is untrusted: anyone who can publish on the broker must not be able to serve absurd values,
raise counters without bound, make devices vanish or appear forever, or put control characters in names."""

from __future__ import annotations

import logging
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from services.aggregator.core import MAX_BATTERIES, Rejected
from services.aggregator.inputs import DropLog
from services.aggregator.service import Aggregator
from shared.payloads import DeviceState, PayloadError, parse_device_config, parse_device_state, parse_reading
from tests.aggregator.support import (
    BT2,
    DEVICES,
    TOPICS,
    make_config,
    make_core,
    publish_all,
    reading,
    reading_dict,
    state,
)
from tests.aggregator.test_agg_service import aggregator
from tests.support.probe import MqttProbe

T0 = 1_795_000_000.0


def payload(**changes: object) -> bytes:
    return orjson.dumps({**reading_dict(48, T0), **changes})


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"voltage": 79.9, "current": 499.0, "capacity": 2000.0, "remaining_charge": 100.0}, "power"),
        ({"voltage": 79.9, "current": -499.0, "capacity": 2000.0, "remaining_charge": 100.0}, "power"),
        ({"current": 250.0}, "capacity"),  # 5 C of a 50 Ah pack
        ({"capacity": 0.0, "remaining_charge": 0.0}, "capacity"),
        ({"mono": -1.0}, "mono"),
    ],
)
def test_values_no_pack_can_produce_are_refused(changes: dict, why: str) -> None:
    with pytest.raises(PayloadError, match=why):
        parse_reading(payload(**changes))


def test_rated_values_still_pass() -> None:
    parsed = parse_reading(payload(voltage=57.6, current=-55.0))
    assert parsed.power == pytest.approx(-3168.0)


def test_names_lose_control_and_format_characters() -> None:
    evil = "RBT\x1b[2J\u202eLFP\x00\u200b48"
    parsed = parse_reading(payload(model=evil, serial="22RBH\x07\x08", firmware="V1\u202e04"))
    for text in (parsed.model, parsed.serial, parsed.firmware):
        assert text is not None
        assert not any(unicodedata.category(c) in ("Cc", "Cf") for c in text), text
    assert parsed.model == "RBT[2JLFP48"
    core = make_core()
    core.accept(parsed, T0)
    config = next(i for i in core.pending(T0) if i.kind == "config" and i.device_id == "battery_48")
    assert parse_device_config(config.payload).device.model == "RBT[2JLFP48"
    # A device document published by someone else is cleaned by the gateway's parser too.
    document = orjson.loads(config.payload)
    document["device"]["name"] = "Battery\x1b]0;pwned\x07 48\u202e"
    document["entities"][0]["name"] = "Po\x00wer"
    parsed_config = parse_device_config(orjson.dumps(document))
    assert parsed_config.device.name == "Battery]0;pwned 48"
    assert parsed_config.entities[0].name == "Power"


def test_numbers_a_float32_cannot_carry_are_refused() -> None:
    for value in (1e300, -1e39):
        with pytest.raises(PayloadError):
            parse_device_state(orjson.dumps({"schema": 1, "ts": T0, "values": {"energy_in": value}}))


def test_retained_counters_are_taken_only_up_to_a_plausible_ceiling(caplog: pytest.LogCaptureFixture) -> None:
    core = make_core()
    for i in range(3):
        core.accept(reading(48, T0 + 30 * i), T0 + 30 * i)
    counted = core.batteries["battery_48"].counter.out_wh
    with caplog.at_level(logging.WARNING):
        for kwh in (123456.0, 1e12):
            assert core.recover("battery_48", DeviceState(T0, {"energy_in": kwh, "energy_out": kwh})) is False
        # A bank raised beyond what its batteries could do is refused too.
        assert core.recover("bank", DeviceState(T0, {"energy_in": 1e9, "energy_out": 0.0})) is False
    assert core.batteries["battery_48"].counter.out_wh == counted
    refused = [r for r in caplog.records if r.levelno == logging.WARNING and "refused" in r.getMessage()]
    assert len(refused) == 3 and "123456" in refused[0].getMessage()
    # What an aggregator restarted between two saves can legitimately find is accepted.
    assert core.recover("battery_48", DeviceState(T0, {"energy_in": 0.0, "energy_out": counted / 1000 + 0.5}))
    # A battery this aggregator knows nothing of (lost state file): up to 50,000 kWh.
    assert core.recover("battery_49", DeviceState(T0, {"energy_in": 1234.5, "energy_out": 0.0})) is True
    assert core.recover("battery_50", DeviceState(T0, {"energy_in": 60000.0, "energy_out": 0.0})) is False
    assert core.stats.recovery_refused == 4


def test_negative_and_infinite_energy_never_reaches_a_counter() -> None:
    core = make_core()
    core.accept(reading(48, T0), T0)
    assert core.recover("battery_48", DeviceState(T0, {"energy_in": -5.0, "energy_out": -1.0})) is False
    with pytest.raises(PayloadError):
        parse_device_state(b'{"schema": 1, "ts": 1, "values": {"energy_in": 1e999}}')
    assert core.batteries["battery_48"].counter.in_wh == 0.0


def test_phantom_batteries_expire_and_their_number_is_bounded() -> None:
    core = make_core()
    core.settings = type(core.settings)(forget_after=3600.0)
    for slave in range(1, MAX_BATTERIES + 1):
        core.accept(reading(slave, T0, bt2="a4c138123456"), T0)
    with pytest.raises(Rejected, match="already"):
        core.accept(reading(MAX_BATTERIES + 1, T0, bt2="a4c138123456"), T0)
    assert len(core.batteries) == MAX_BATTERIES
    core.pending(T0)
    core.accept(reading(48, T0 + 3000, bt2="a4c138123456"), T0 + 3000)  # a real one keeps reporting
    out = core.pending(T0 + 3700)
    removed = {i.device_id for i in out if i.kind == "config" and not i.payload}
    assert len(removed) == MAX_BATTERIES - 1 and "battery_48" not in removed
    assert set(core.batteries) == {"battery_48"}
    assert len(core.orphans) <= 64
    # A removed battery that comes back gets its counter back.
    core.accept(reading(7, T0 + 3800, bt2="a4c138123456"), T0 + 3800)
    assert "battery_7" in core.batteries


def test_the_conflict_log_and_drop_log_stay_bounded(tmp_path: Path) -> None:
    service = Aggregator(make_config("mqtt://127.0.0.1:9", tmp_path))
    for i in range(5000):
        service._log_conflict(f"{i:012x}", f"battery_{i}: conflict", float(i))
    assert len(service._conflicts_logged) <= 256
    drops = DropLog(logging.getLogger("test"))
    for i in range(5000):
        drops.dropped("renogy/bt2/x/battery/1/reading", f"implausible value {i}", 0.0)
    assert len(drops._suppressed) <= 33


async def test_an_emptied_or_replaced_device_document_is_published_again(mosquitto, tmp_path: Path) -> None:
    config = make_config(mosquitto.url, tmp_path)
    t0 = time.time() - 30
    config_topic = TOPICS.device_config("battery_48")
    async with MqttProbe(mosquitto.url, "renogy/device/#") as probe:
        publish_all(probe, t0)
        async with aggregator(config):
            await probe.wait_for(lambda: all(state(probe, d) for d in DEVICES), what="five device states")
            ours = probe.latest[config_topic].payload
            mark = len(probe.messages)
            probe.publish(config_topic, b"", retain=True)  # would remove the device at the gateway
            await probe.wait_for(
                lambda: after(probe, mark, config_topic, lambda p: not p), what="the empty config"
            )
            await probe.wait_for(
                lambda: after(probe, mark, config_topic, lambda p: p == ours), timeout=10, what="config back"
            )
            state_topic = TOPICS.device_state("battery_48")
            forged = orjson.dumps(
                {"schema": 1, "ts": time.time(), "values": {"energy_in": -5.0, "energy_out": 1e30}}
            )
            mark = len(probe.messages)
            probe.publish(state_topic, forged, retain=True)
            await probe.wait_for(
                lambda: after(probe, mark, state_topic, lambda p: p == forged), what="forged"
            )
            await probe.wait_for(
                lambda: after(
                    probe,
                    mark,
                    state_topic,
                    lambda p: p != forged and orjson.loads(p)["values"]["energy_in"] >= 0,
                ),
                timeout=10,
                what="our state back",
            )
            # The forged retained copy may be delivered after ours; ours has to be the one that stands.
            await probe.wait_for(
                lambda: state(probe, "battery_48")["energy_out"] < 1, timeout=10, what="our counter standing"
            )


def after(probe: MqttProbe, mark: int, topic: str, test: Callable[[bytes], bool]) -> bool:
    """Whether a message on `topic` after the first `mark` messages passes `test`."""
    return any(m.topic == topic and test(m.payload) for m in probe.messages[mark:])


def test_a_battery_config_names_its_bank() -> None:
    core = make_core()
    core.accept(reading(48, T0, bt2=BT2), T0)
    config = next(i for i in core.pending(T0) if i.kind == "config" and i.device_id == "battery_48")
    assert parse_device_config(config.payload).device.via_device == "bank"
