"""deploy/mosquitto/acl.example: the whole stack works with it, and nobody else can publish readings or
device documents (Mosquitto started by the test with that acl_file and a password file)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from shared.config import MqttConfig
from shared.mqtt import Message, MqttClient
from tests.support.brokers import MOSQUITTO, MosquittoBroker
from tests.support.stack import Stack, api_snapshot

ROOT = Path(__file__).resolve().parents[2]
ACL = ROOT / "deploy" / "mosquitto" / "acl.example"
USERS = ("reader", "aggregator", "gateway", "homeassistant", "renogy", "intruder")
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"

pytestmark = pytest.mark.skipif(
    MOSQUITTO is None or not Path(MOSQUITTO_PASSWD).exists(), reason="needs mosquitto and mosquitto_passwd"
)


@dataclass
class AclBroker(MosquittoBroker):
    def config_text(self) -> str:
        text = super().config_text().replace("allow_anonymous true", "allow_anonymous false")
        # As root Mosquitto would drop to user mosquitto, who cannot read the test's private directory.
        user = "user root\n" if os.geteuid() == 0 else ""
        return text + f"{user}password_file {self.workdir / 'passwd'}\nacl_file {ACL}\n"


def password(user: str) -> str:
    return f"{user}-secret"


class Client:
    """A client logged in as one user, recording what it receives."""

    def __init__(self, url: str, user: str | None, *filters: str) -> None:
        self.messages: list[Message] = []
        config = MqttConfig(url=url, username=user, password=password(user) if user else None)
        self.mqtt = MqttClient(config, f"acl-test-{user}", on_message=self.messages.append)
        for topic_filter in filters:
            self.mqtt.subscribe(topic_filter)

    async def __aenter__(self) -> Client:
        await self.mqtt.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.mqtt.stop()

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        # Mosquitto may drop the connection of a client whose publish it denied: retry after the reconnect.
        info = None
        for _ in range(50):
            assert await self.mqtt.wait_connected(10), self.mqtt.client_id
            info = self.mqtt.publish_tracked(topic, payload, qos=1, retain=retain)
            if info is not None:
                break
            await asyncio.sleep(0.2)  # the connection was going away as we published
        assert info is not None, (topic, self.mqtt.client_id)
        await asyncio.to_thread(info.wait_for_publish, 5)  # the broker answers PUBACK even when it denies

    def got(self, topic: str) -> list[bytes]:
        return [m.payload for m in self.messages if m.topic == topic]


def make_passwd(path: Path) -> None:
    for index, user in enumerate(USERS):
        flags = ["-c"] if index == 0 else []
        subprocess.run([MOSQUITTO_PASSWD, "-b", *flags, str(path), user, password(user)], check=True)


async def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.05)  # polling what the clients recorded


def test_the_docs_show_this_acl_file() -> None:
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    assert "deploy/mosquitto/acl.example" in deploy and "acl_file" in deploy
    for user in ("reader", "aggregator", "gateway"):
        assert f"user {user}" in ACL.read_text()


async def test_acl_lets_the_stack_work_and_nobody_else_publish(tmp_path: Path) -> None:
    await asyncio.to_thread(make_passwd, tmp_path / "passwd")
    broker = AclBroker(tmp_path)
    await broker.start()
    stack = Stack(broker.url, tmp_path)
    for name, service in stack.services.items():
        service.env["RENOGY_MQTT_USERNAME"] = name
        service.env["RENOGY_MQTT_PASSWORD"] = password(name)
    try:
        await stack.start()
        snapshot = await api_snapshot(stack.api_port, expect_entities=55, timeout=60)
        assert snapshot.value("battery_48_power") is not None  # readings -> aggregator -> gateway
        reading_topic = "renogy/bt2/c464e3383d0e/battery/48/reading"
        config_topic = "renogy/device/battery_48/config"
        async with (
            Client(broker.url, "renogy", "renogy/#") as watcher,
            Client(broker.url, "intruder") as intruder,
            Client(broker.url, "reader") as reader,
            Client(broker.url, "aggregator") as aggregator,
            Client(broker.url, None, "renogy/#") as anonymous,
        ):
            for client in (watcher, intruder, reader, aggregator):
                assert await client.mqtt.wait_connected(10), "a listed user must get in"
            assert not await anonymous.mqtt.wait_connected(2), "anonymous clients are refused"
            await wait_for(lambda: bool(watcher.got(config_topic)))
            forged = orjson.dumps(
                {"schema": 1, "ts": 1.0, "bt2": "c464e3383d0e", "slave_id": 48, "voltage": 79.9}
            )
            await intruder.publish(reading_topic, forged, retain=True)
            await intruder.publish(config_topic, b"", retain=True)
            await reader.publish(config_topic, b"", retain=True)  # the reader may not write device documents
            await aggregator.publish(reading_topic, forged)  # nor the aggregator readings
            await aggregator.publish("renogy/bridge/aggregator/acl-test/state", b"marker")
            await wait_for(lambda: bool(watcher.got("renogy/bridge/aggregator/acl-test/state")))
            assert forged not in watcher.got(reading_topic)
            assert b"" not in watcher.got(config_topic)
            await watcher.publish("renogy/device/battery_48/config", b"")  # read-only user
            again = await api_snapshot(stack.api_port, expect_entities=55, timeout=10)
            assert len(again.entities) == 55
    except BaseException:
        print(stack.logs())
        raise
    finally:
        await stack.stop()
        await broker.stop()
    for name in ("reader", "aggregator", "gateway"):
        log = stack[name].log()
        assert "not authorised" not in log.lower() and "refused the connection" not in log, (
            name,
            log[-2000:],
        )
