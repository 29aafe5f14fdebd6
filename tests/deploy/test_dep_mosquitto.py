"""deploy/mosquitto/mosquitto.conf, run by the real Mosquitto: persistence, queue limits, the healthcheck."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.deploy.support import MOSQUITTO_CONF, compose, tool
from tests.support.brokers import MOSQUITTO, free_port, wait_port
from tests.support.probe import MqttProbe


def _directives() -> list[tuple[str, str]]:
    out = []
    for line in MOSQUITTO_CONF.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, _, value = line.partition(" ")
        out.append((name, value))
    return out


def test_comments_only_on_their_own_lines() -> None:
    for name, value in _directives():
        assert "#" not in value, f"mosquitto reads '{name} {value}' literally: a comment must start its line"


def test_persistence_and_queue_limits() -> None:
    conf = dict(_directives())
    assert conf["persistence"] == "true" and conf["persistence_location"] == "/mosquitto/data/"
    assert int(conf["autosave_interval"]) <= 60
    assert conf["max_queued_messages"] == "0", "the default 1000 drops QoS 1 bursts"
    assert int(conf["max_queued_bytes"]) >= 16 * 1024 * 1024
    data_volume = next(v for v in compose()["services"]["mosquitto"]["volumes"] if ":/mosquitto/data" in v)
    assert data_volume.split(":")[0] in compose()["volumes"]


class RunningMosquitto:
    """Our mosquitto.conf with only the port and the data directory changed."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.data = workdir / "data"
        self.data.mkdir()
        self.data.chmod(0o777)  # started as root, mosquitto drops to its own user
        text = MOSQUITTO_CONF.read_text()
        text = re.sub(r"^listener 1883$", f"listener {self.port} 127.0.0.1", text, flags=re.M)
        text = text.replace("/mosquitto/data/", f"{self.data}/")
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(text)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def start(self) -> None:
        assert MOSQUITTO is not None
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            await wait_port(self.port)
        except TimeoutError:
            self.process.kill()
            out, _ = self.process.communicate()
            raise AssertionError(f"mosquitto rejected the config: {out.decode(errors='replace')}") from None

    async def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            await asyncio.to_thread(self.process.wait, 10)
        self.process = None


@pytest.fixture
async def ours() -> AsyncIterator[RunningMosquitto]:
    if MOSQUITTO is None:
        pytest.skip("mosquitto binary not installed (apt-get install mosquitto)")
    # Not tmp_path: its parent is private to us, and mosquitto started as root runs as its own user.
    with tempfile.TemporaryDirectory(prefix="renogy-mosquitto-") as workdir:
        os.chmod(workdir, 0o755)
        broker = RunningMosquitto(Path(workdir))
        await broker.start()
        yield broker
        await broker.stop()


async def test_retained_state_survives_a_broker_restart(ours: RunningMosquitto) -> None:
    async with MqttProbe(ours.url, "renogy/#") as probe:
        probe.publish("renogy/bridge/reader/default/state", {"schema": 1, "state": "online"}, retain=True)
        await probe.wait_for(lambda: "renogy/bridge/reader/default/state" in probe.latest, what="own publish")
    await ours.stop()
    assert list(ours.data.iterdir()), "mosquitto saved nothing to its persistence location"
    await ours.start()
    async with MqttProbe(ours.url, "renogy/#") as probe:
        await probe.wait_for(
            lambda: probe.latest.get("renogy/bridge/reader/default/state"),
            what="retained state after restart",
        )
        assert probe.json("renogy/bridge/reader/default/state")["state"] == "online"


def test_a_qos1_burst_to_a_stalled_subscriber_is_not_dropped(ours: RunningMosquitto) -> None:
    # With mosquitto's default max_queued_messages (1000) this delivers about 1020 of 3000.
    count, size = 3000, 2048
    received = 0
    done = threading.Event()

    def on_message(client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        nonlocal received
        received += 1
        if received == count:
            done.set()

    subscriber = paho.Client(CallbackAPIVersion.VERSION2, client_id="stalled", protocol=paho.MQTTv311)
    subscriber.on_message = on_message
    subscribed = threading.Event()
    subscriber.on_subscribe = lambda *args: subscribed.set()
    subscriber.connect("127.0.0.1", ours.port)
    subscriber.subscribe("burst/#", qos=1)
    deadline = time.monotonic() + 10
    while not subscribed.is_set() and time.monotonic() < deadline:
        subscriber.loop(0.05)
    assert subscribed.is_set()
    publisher = paho.Client(CallbackAPIVersion.VERSION2, client_id="burst", protocol=paho.MQTTv311)
    publisher.max_inflight_messages_set(0)
    publisher.max_queued_messages_set(0)
    publisher.connect("127.0.0.1", ours.port)
    publisher.loop_start()
    try:
        # The subscriber reads nothing while the burst goes out, so the broker must queue it.
        infos = [publisher.publish(f"burst/{i % 8}", b"x" * size, qos=1) for i in range(count)]
        for info in infos:
            info.wait_for_publish(20)
        deadline = time.monotonic() + 20
        while not done.is_set() and time.monotonic() < deadline:
            subscriber.loop(0.05)
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        subscriber.disconnect()
    assert received == count


def test_compose_healthcheck_command_passes_against_our_config(ours: RunningMosquitto) -> None:
    mosquitto_sub = tool("mosquitto_sub")
    if mosquitto_sub is None:
        pytest.skip("mosquitto_sub not installed (apt-get install mosquitto-clients)")
    test = compose()["services"]["mosquitto"]["healthcheck"]["test"]
    argv = [mosquitto_sub if a == "mosquitto_sub" else a.replace("$$", "$") for a in test[1:]]
    argv[argv.index("-p") + 1] = str(ours.port)
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "expected the broker uptime"
    assert time.monotonic() - started < 5
