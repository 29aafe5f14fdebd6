"""The reader's side of the active Bluetooth proxy, driven over MQTT as the gateway drives it.

Slots, deadlines, owners that go away, and the BT-2 poll cycle: its timing stays within 10 % of
itself (in the simulator's timing model) while a proxied device streams notifications, and a
proxied connect that never completes never holds up a cycle.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson

from services.reader.service import Backends, Reader
from services.reader.simulate import SIM_ADAPTER_ADDRESS
from services.simulator import (
    BankSimulator,
    SimBT2Client,
    SimConfig,
    SimScanner,
    register_simulator,
    unregister_simulator,
)
from services.simulator.devices import (
    NUS_TX,
    STREAM_START,
    SimPeripheral,
    SimPeripheralClient,
    register_peripheral,
    stream_device,
    thermometer,
    unregister_peripheral,
)
from shared import proxy_payloads as pp
from shared.config import load_config
from tests.support.probe import MqttProbe

ROOT = "renogy/bridge/reader/default/proxy"
OWNER = "default/boot1"
THERM = "A4:C1:38:AA:00:01"
STREAM = "C8:11:22:33:44:55"
_IDS = itertools.count(1)


@asynccontextmanager
async def proxied_reader(
    broker_url: str, sim: SimConfig, **settings: Any
) -> AsyncIterator[tuple[Reader, MqttProbe, SimPeripheral, SimPeripheral]]:
    overrides = {
        "mqtt.url": broker_url,
        "reader.request_timeout": 0.5,
        "reader.connect_timeout": 3.0,
        "reader.scan_timeout": 2.0,
        "reader.batteries": list(sim.batteries),
        **{f"reader.{k}": v for k, v in settings.items()},
    }
    config = load_config(environ={}, overrides=overrides)
    bank = BankSimulator.from_config(sim)
    register_simulator(bank)
    therm = thermometer(THERM, latency_scale=0.2, advert_interval=0.05)
    stream = stream_device(STREAM, latency_scale=0.2, advert_interval=0.05, notify_interval=0.01)
    register_peripheral(therm)
    register_peripheral(stream)
    reader = Reader(
        config,
        Backends(SimBT2Client, SimScanner, SIM_ADAPTER_ADDRESS, bank, proxy_client=SimPeripheralClient),
    )
    async with MqttProbe(broker_url, f"{ROOT}/#") as probe:
        await reader.start()
        assert await reader.runtime.mqtt.wait_subscribed(10)
        await probe.wait_for(lambda: f"{ROOT}/slots" in probe.latest, what="slots published")
        try:
            yield reader, probe, therm, stream
        finally:
            await reader.shutdown()
            unregister_peripheral(therm)
            unregister_peripheral(stream)
            unregister_simulator(bank)
            bank.close()


def _responses(probe: MqttProbe) -> dict[str, dict[str, Any]]:
    out = {}
    for message in probe.messages:
        if message.topic == f"{ROOT}/response":
            body = orjson.loads(message.payload)
            if body.get("id"):
                out[body["id"]] = body
    return out


async def ask(probe: MqttProbe, op: str, address: str, *, wait: bool = True, **fields: Any) -> dict[str, Any]:
    request_id = f"t-{next(_IDS)}"
    timeout = fields.pop("timeout", 5.0)
    deadline = fields.pop("deadline", time.time() + timeout)
    request = pp.ProxyRequest(
        request_id, op, fields.pop("owner", OWNER), address, deadline, timeout, **fields
    )
    probe.publish(f"{ROOT}/request", request.to_payload())
    if not wait:
        return {"id": request_id}
    await probe.wait_for(lambda: request_id in _responses(probe), timeout=10, what=f"answer to {op}")
    return _responses(probe)[request_id]


def slots(probe: MqttProbe) -> dict[str, Any]:
    return probe.json(f"{ROOT}/slots")  # type: ignore[no-any-return]


async def test_connect_read_notify_and_slots(mosquitto) -> None:
    sim = SimConfig(batteries=(48,), latency_scale=0.05, advert_interval=0.05)
    async with proxied_reader(mosquitto.url, sim, proxy_slots=1) as (_reader, probe, therm, _stream):
        assert slots(probe) == {**slots(probe), "limit": 1, "free": 1, "allocated": []}
        await asyncio.sleep(0.2)  # let the scanner hear them
        answer = await ask(probe, "connect", THERM)
        assert answer["ok"] and answer["mtu"] == 247
        await probe.wait_for(lambda: slots(probe)["allocated"] == [THERM], what="slot taken")
        busy = await ask(probe, "connect", STREAM)
        assert not busy["ok"] and busy["error"] == pp.ERR_INSUFFICIENT_RESOURCES
        services = await ask(probe, "services", THERM)
        chars = {c["uuid"]: c for s in services["services"] for c in s["characteristics"]}
        temperature = chars["00002a6e-0000-1000-8000-00805f9b34fb"]
        assert temperature["properties"] == 0x12  # read | notify
        read = await ask(probe, "read", THERM, handle=temperature["handle"])
        assert read["ok"] and bytes.fromhex(read["data"]) == therm.values[temperature["handle"]]
        bad = await ask(probe, "read", THERM, handle=0x7777)
        assert not bad["ok"] and bad["error"] == pp.ERR_INVALID_HANDLE
        other = await ask(probe, "read", THERM, handle=temperature["handle"], owner="other/boot")
        assert not other["ok"] and other["error"] == pp.ERR_NOT_CONNECTED  # not its connection
        notify = await ask(probe, "notify", THERM, handle=temperature["handle"], enable=True)
        assert notify["ok"]
        # Writing the CCCD (as bleak-esphome does next) is taken as turning notifications on, not refused.
        cccd = temperature["descriptors"][0]["handle"]
        assert (await ask(probe, "write_descriptor", THERM, handle=cccd, data=b"\x01\x00"))["ok"]
        await probe.wait_for(
            lambda: sum(1 for m in probe.messages if m.topic == f"{ROOT}/notify") >= 3, what="notifications"
        )
        note = orjson.loads(next(m.payload for m in probe.messages if m.topic == f"{ROOT}/notify"))
        assert note["address"] == THERM and note["owner"] == OWNER and note["handle"] == temperature["handle"]
        assert (await ask(probe, "disconnect", THERM))["ok"]
        await probe.wait_for(lambda: slots(probe)["allocated"] == [], what="slot freed")
        assert therm.central is None


async def test_unsolicited_disconnect_and_expired_request(mosquitto) -> None:
    sim = SimConfig(batteries=(48,), latency_scale=0.05, advert_interval=0.05)
    async with proxied_reader(mosquitto.url, sim) as (_reader, probe, therm, _stream):
        late = await ask(probe, "connect", THERM, deadline=time.time() - 1)
        assert not late["ok"] and late["error"] == pp.ERR_CONN_TIMEOUT and therm.central is None
        assert (await ask(probe, "connect", THERM))["ok"]
        therm.drop_link()
        await probe.wait_for(
            lambda: any(
                m.topic == f"{ROOT}/response" and orjson.loads(m.payload).get("event") == "disconnected"
                for m in probe.messages
            ),
            what="disconnected event",
        )
        await probe.wait_for(lambda: slots(probe)["allocated"] == [], what="slot freed")


async def test_gateway_gone_releases_its_connections(mosquitto) -> None:
    sim = SimConfig(batteries=(48,), latency_scale=0.05, advert_interval=0.05)
    async with proxied_reader(mosquitto.url, sim) as (_reader, probe, therm, stream):
        assert (await ask(probe, "connect", THERM))["ok"]
        assert (await ask(probe, "connect", STREAM, owner="garage/boot9"))["ok"]
        # The gateway restarted (new boot id): its old connection goes, the other gateway's stays.
        probe.publish(
            "renogy/bridge/gateway/default/state", {"schema": 1, "state": "online", "boot_id": "boot2"}
        )
        await probe.wait_for(lambda: slots(probe)["allocated"] == [STREAM], what="stale connection dropped")
        assert therm.central is None and stream.central is not None
        probe.publish(
            "renogy/bridge/gateway/garage/state", {"schema": 1, "state": "offline", "boot_id": "boot9"}
        )
        await probe.wait_for(
            lambda: slots(probe)["allocated"] == [], what="offline gateway's connection dropped"
        )


async def _cycle_times(reader: Reader, count: int) -> list[float]:
    out = []
    for _ in range(count):
        assert await reader.cycle() == len(reader.cfg.batteries)
        out.append(reader.stats.last_cycle_s)
    return out


async def test_poll_cycle_keeps_its_timing_while_a_proxied_device_streams(mosquitto) -> None:
    # Timing scaled to 40 % of a real BT-2's: a cycle of 2 batteries takes ~0.4 s.
    sim = SimConfig(batteries=(48, 49), latency_scale=0.4, advert_interval=0.05)
    async with proxied_reader(mosquitto.url, sim) as (reader, probe, _therm, stream):
        await reader.cycle()  # connect to the BT-2, read the info blocks once
        quiet = await _cycle_times(reader, 5)
        floor = reader.stats.last_cycle_floor_s
        assert (await ask(probe, "connect", STREAM))["ok"]
        services = await ask(probe, "services", STREAM)
        chars = {c["uuid"]: c["handle"] for s in services["services"] for c in s["characteristics"]}
        assert (await ask(probe, "notify", STREAM, handle=chars[NUS_TX], enable=True))["ok"]
        rx = chars["6e400002-b5a3-f393-e0a9-e50e24dcca9e"]
        assert (await ask(probe, "write", STREAM, handle=rx, data=STREAM_START, response=True))["ok"]
        before = stream.notifications_sent
        busy = await _cycle_times(reader, 5)
        streamed = stream.notifications_sent - before
        rate = streamed / sum(busy)
        print(
            f"\n[proxy] cycle quiet median {statistics.median(quiet) * 1000:.0f} ms, while streaming "
            f"{rate:.0f} notifications/s median {statistics.median(busy) * 1000:.0f} ms "
            f"(floor {floor and floor * 1000:.0f} ms)"
        )
        assert rate > 50, f"the device streamed only {rate:.0f}/s"
        assert statistics.median(busy) <= 1.10 * statistics.median(quiet)
        assert reader.proxy is not None and reader.proxy.notifications >= streamed * 0.9


async def test_a_hung_proxied_connect_never_blocks_a_cycle(mosquitto) -> None:
    sim = SimConfig(batteries=(48, 49), latency_scale=0.2, advert_interval=0.05)
    async with proxied_reader(mosquitto.url, sim) as (reader, probe, therm, _stream):
        await reader.cycle()
        quiet = statistics.median(await _cycle_times(reader, 3))
        therm.faults.append("connect_hang")  # the device never completes the connection
        pending = await ask(probe, "connect", THERM, wait=False, timeout=30.0)
        await asyncio.sleep(0.1)
        assert slots(probe)["allocated"] == [THERM]  # connecting holds its slot
        assert statistics.median(await _cycle_times(reader, 3)) <= 1.10 * quiet
        # The BT-2 link drops: its reconnect goes first, the proxied connect attempt is cancelled.
        assert reader.link is not None
        await reader.link.disconnect()
        started = time.monotonic()
        await reader.cycle()
        assert time.monotonic() - started < 3 * quiet + 2 * 1.3 * 0.2 + 1.0
        await probe.wait_for(
            lambda: pending["id"] in _responses(probe), what="the cancelled connect answered"
        )
        answer = _responses(probe)[pending["id"]]
        assert not answer["ok"] and answer["error"] == pp.ERR_CONN_CANCELLED
        await probe.wait_for(lambda: slots(probe)["allocated"] == [], what="slot freed")
