"""SD-friendly persistence: how often the state file is written, what a SIGKILL can lose, bad state paths."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

import orjson
import pytest

from services.aggregator.service import Aggregator
from shared.mqtt import Message
from tests.aggregator.support import (
    BT2,
    CURRENTS,
    DEVICES,
    SLAVES,
    VOLTAGE,
    make_config,
    publish_all,
    reading_payload,
    reading_topic,
    state,
)
from tests.aggregator.test_agg_service import aggregator
from tests.proof.support import record_figures
from tests.support.brokers import MOSQUITTO, MosquittoBroker
from tests.support.probe import MqttProbe

ROOT = Path(__file__).resolve().parents[2]
POLL = 30.0


class Clocks:
    def __init__(self, wall: float) -> None:
        self.wall = wall
        self.mono = 1_000.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def simulate(tmp_path: Path, hours: float, **overrides: object) -> Aggregator:
    """An aggregator fed 4 batteries every 30 s for `hours`, on fake clocks and without a broker."""
    clocks = Clocks(1_795_000_000.0)
    config = make_config("mqtt://127.0.0.1:9", tmp_path, **overrides)
    service = Aggregator(config, clock=lambda: clocks.wall, mono_clock=lambda: clocks.mono)
    service.settled = True
    for cycle in range(round(hours * 3600 / POLL)):
        for slave in SLAVES:
            current = CURRENTS[slave] + (cycle % 7) * 0.1
            payload = reading_payload(
                slave, clocks.wall, voltage=VOLTAGE, current=current, boot_id="b" * 32, mono=clocks.mono
            )
            service._on_message(Message(reading_topic(slave), payload, False))
        clocks.advance(POLL / 2)
        service._tick()
        clocks.advance(POLL / 2)
    return service


def test_state_file_writes_per_hour_at_the_default_poll(tmp_path: Path) -> None:
    service = simulate(tmp_path, 24)
    per_hour = service.store.saves / 24
    print(f"\nstate file writes: {service.store.saves} in 24 simulated hours = {per_hour:.2f}/h")
    record_figures(
        "persistence",
        {
            "poll_interval_s": POLL,
            "batteries": len(SLAVES),
            "simulated_hours": 24,
            "state_file_writes": service.store.saves,
            "writes_per_hour": round(per_hour, 2),
            "writes_per_hour_before": 480,
            "save_interval_s": service.core.settings.save_interval,
        },
    )
    assert per_hour <= 12.1  # the first save (new batteries) comes on top of one per 5 min
    # The file holds the counters of the last save: at most 5 minutes behind.
    saved = orjson.loads(service.store.path.read_bytes())
    for device_id, battery in service.core.batteries.items():
        counter = saved["batteries"][device_id]["counter"]
        behind = battery.counter.out_wh - counter["out_wh"]
        assert 0 <= behind <= abs(VOLTAGE * 51) * 300 / 3600, device_id


def test_no_write_while_nothing_changes(tmp_path: Path) -> None:
    clocks = Clocks(1_795_000_000.0)
    config = make_config("mqtt://127.0.0.1:9", tmp_path)
    service = Aggregator(config, clock=lambda: clocks.wall, mono_clock=lambda: clocks.mono)
    service.settled = True
    for _ in range(240):  # 2 h at zero current
        for slave in SLAVES:
            payload = reading_payload(slave, clocks.wall, current=0.0, boot_id="b" * 32, mono=clocks.mono)
            service._on_message(Message(reading_topic(slave), payload, False))
        clocks.advance(POLL)
        service._tick()
    assert service.store.saves <= 3  # the new batteries and the bank: nothing after


def test_save_interval_is_a_setting(tmp_path: Path) -> None:
    service = simulate(tmp_path, 1, **{"aggregator.save_interval": 60})
    assert 58 <= service.store.saves <= 63


async def test_shutdown_saves_the_exact_counters(mosquitto, tmp_path: Path) -> None:
    config = make_config(mosquitto.url, tmp_path)
    t0 = time.time() - 90
    async with MqttProbe(mosquitto.url, "renogy/device/#") as probe:
        publish_all(probe, t0)
        async with aggregator(config) as service:
            await probe.wait_for(lambda: all(state(probe, d) for d in DEVICES), what="states")
            publish_all(probe, t0 + 30)
            await probe.wait_for(
                lambda: (state(probe, "battery_48") or {}).get("energy_out", 0) > 0, what="energy"
            )
            saves = service.store.saves
        counters = {d: b.counter.to_json() for d, b in service.core.batteries.items()}
    assert service.store.saves == saves + 1  # the 30 s interval was saved only at shutdown
    saved = orjson.loads(service.store.path.read_bytes())["batteries"]
    assert {d: saved[d]["counter"] for d in counters} == counters


@pytest.mark.skipif(MOSQUITTO is None, reason="needs Mosquitto")
async def test_sigkill_loses_at_most_the_save_window(tmp_path: Path) -> None:
    """kill -9 between saves: the file is at most save_interval behind; with the retained states (the
    second copy) the restarted aggregator loses nothing that was published; without them (the broker lost
    its store too) at most save_interval of energy."""
    save_interval, interval = 4.0, 0.5
    power = VOLTAGE * CURRENTS[48]
    broker = MosquittoBroker(tmp_path)
    await broker.start()
    env = {
        **os.environ,
        "RENOGY_MQTT_URL": broker.url,
        "RENOGY_STATE_DIR": str(tmp_path / "state"),
        "RENOGY_MQTT_RECONNECT_MAX_DELAY": "0.5",
        "RENOGY_SAVE_INTERVAL": str(save_interval),
        "RENOGY_POLL_INTERVAL": "1",
        "RENOGY_LOG_LEVEL": "info",
    }
    env.pop("RENOGY_CONFIG", None)
    log_path = tmp_path / "aggregator.log"
    boot = "k" * 32
    t0 = time.time()
    sent = 0

    async def feed(probe: MqttProbe, count: int) -> None:
        nonlocal sent
        for _ in range(count):
            ts = t0 + sent * interval
            payload = reading_payload(
                48, ts, voltage=VOLTAGE, current=CURRENTS[48], boot_id=boot, mono=sent * interval
            )
            probe.publish(reading_topic(48), payload, retain=True)
            sent += 1
            await asyncio.sleep(interval)  # the reading interval: an input of the experiment

    try:
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "services.aggregator", cwd=ROOT, env=env, stdout=log, stderr=log
            )
            try:
                async with MqttProbe(broker.url, "renogy/device/#") as probe:
                    await feed(probe, 22)  # 11 s of readings: a save at start, then every 4 s
                    await probe.wait_for(
                        lambda: (state(probe, "battery_48") or {}).get("energy_out", 0) > 0, what="published"
                    )
                    counted_wh = -power * (sent - 1) * interval / 3600
                    published_wh = state(probe, "battery_48")["energy_out"] * 1000
                    process.send_signal(signal.SIGKILL)  # 0.5 s after the last reading, mid-window
                    await process.wait()
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        saved = orjson.loads((tmp_path / "state" / "aggregator-default.json").read_bytes())
        on_disk_wh = saved["batteries"]["battery_48"]["counter"]["out_wh"]
        window_wh = -power * (save_interval + 2 * interval) / 3600
        lost_file = counted_wh - on_disk_wh
        print(
            f"\nSIGKILL: counted {counted_wh:.3f} Wh, published {published_wh:.3f} Wh, on disk {on_disk_wh:.3f} Wh "
            f"(behind {lost_file:.3f} Wh; bound {window_wh:.3f} Wh = {save_interval} s at {-power:.0f} W)"
        )
        assert 0 <= lost_file <= window_wh
        # Restart with the broker's retained states: the published counter comes back in full.
        with log_path.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "services.aggregator", cwd=ROOT, env=env, stdout=log, stderr=log
            )
            try:
                async with MqttProbe(broker.url, "renogy/device/#", "renogy/bridge/aggregator/#") as probe:
                    await probe.wait_for(
                        lambda: (
                            (state(probe, "battery_48") or {}).get("energy_out", 0) * 1000
                            >= published_wh - 1e-6
                        ),
                        timeout=15,
                        what="the published counter back",
                    )
            finally:
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(process.wait(), 15)
        assert "Traceback" not in log_path.read_text()
    finally:
        await broker.stop()


async def test_state_path_that_is_a_directory_gives_one_error_and_no_crash(
    mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "aggregator-default.json").mkdir()
    config = make_config(mosquitto.url, tmp_path, **{"aggregator.save_interval": 1})
    t0 = time.time() - 60
    with caplog.at_level(logging.ERROR, logger="services.aggregator"):
        async with MqttProbe(mosquitto.url, "renogy/device/#") as probe:
            publish_all(probe, t0)
            async with aggregator(config) as service:
                await probe.wait_for(lambda: all(state(probe, d) for d in DEVICES), what="states")
                for i in range(1, 4):
                    publish_all(probe, t0 + 20 * i)
                    await asyncio.sleep(1.1)  # past save_interval: each cycle tries a save
                await probe.wait_for(lambda: service.store.errors >= 2, what="save attempts")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len([e for e in errors if "cannot read the state file" in e]) == 1, errors
    assert len([e for e in errors if "cannot save energy counters" in e]) == 1, errors
    assert len(errors) == 2, errors
    assert service.store.problem and "IsADirectoryError" in service.store.problem


def test_absurd_counters_in_the_state_file_are_refused_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config("mqtt://127.0.0.1:9", tmp_path)
    good = {"in_wh": 10.0, "out_wh": 20.0, "last_ts": None, "last_power": None}
    document = {
        "schema": 1,
        "batteries": {
            "battery_48": {"bt2": BT2, "slave_id": 48, "counter": {**good, "in_wh": 1e300}},
            "battery_49": {"bt2": BT2, "slave_id": 49, "counter": {**good, "out_wh": -5}},
            "battery_50": {"bt2": BT2, "slave_id": 50, "counter": good},
        },
        "banks": {"bank": {"in_wh": 1e300, "out_wh": 0.0}},
    }
    (tmp_path / "aggregator-default.json").write_bytes(orjson.dumps(document))
    service = Aggregator(config)
    with caplog.at_level(logging.WARNING):
        assert service.store.load(service._restore)
    assert set(service.core.batteries) == {"battery_50"}
    assert service.core.floors == {}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3 and any("battery_48" in w and "kWh" in w for w in warnings), warnings
