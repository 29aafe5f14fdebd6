"""Passive Bluetooth proxy: scanner state, raw advertisement batches, mode requests, slow subscribers."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import orjson
from aioesphomeapi.client import APIClient
from aioesphomeapi.model import BluetoothScannerMode, BluetoothScannerState

from services.gateway import messages as ids
from services.gateway.bluetooth import AdvertBatch, RawAdvert
from services.gateway.connection import Limits
from services.gateway.framing import encode_plaintext
from services.gateway.proto import pb
from tests.conftest import Broker
from tests.gateway.support import api_client, bare_server, gateway_config, running_gateway, wait_until
from tests.support.probe import MqttProbe

ADAPTER = "00:1A:7D:DA:71:13"
READER = "default"


def _scanner(mode: str) -> dict[str, Any]:
    return {
        "schema": 1,
        "ts": 1.0,
        "state": "running",
        "mode": mode,
        "configured_mode": "passive",
        "adapter_address": ADAPTER,
    }


def _adverts(count: int, base: int = 0) -> dict[str, Any]:
    return {
        "schema": 1,
        "ts": 1795524654.3,
        "adapter_address": ADAPTER,
        "advertisements": [
            {
                "address": f"A4:C1:38:12:{(base + i) >> 8:02X}:{(base + i) & 0xFF:02X}",
                "address_type": i % 2,
                "rssi": -40 - i % 50,
                "data": f"0201060aff{(base + i) & 0xFF:02x}",
            }
            for i in range(count)
        ],
    }


async def test_scanner_state_adverts_and_mode(broker: Broker, tmp_path: Path) -> None:
    topics_root = "renogy/bridge/reader/" + READER
    config = gateway_config(broker.url, tmp_path)
    async with MqttProbe(broker.url, f"{topics_root}/scanner/set") as probe:
        probe.publish(f"{topics_root}/scanner", _scanner("passive"), retain=True)
        async with running_gateway(config) as gateway:
            await wait_until(lambda: gateway.bluetooth.adapter_address == ADAPTER, what="adapter address")
            clients = [APIClient("127.0.0.1", gateway.port, None, client_info=f"ha{i}") for i in range(2)]
            await asyncio.gather(*(c.connect(login=True) for c in clients))
            info = await clients[0].device_info()
            assert info.bluetooth_mac_address == ADAPTER
            scanner_states: list[list[Any]] = [[], []]
            batches: list[list[Any]] = [[], []]
            for client, st, bt in zip(clients, scanner_states, batches, strict=True):
                client.subscribe_bluetooth_scanner_state(st.append)
                client.subscribe_bluetooth_le_raw_advertisements(bt.append)
            await wait_until(lambda: all(scanner_states), what="scanner state on subscribe")
            assert scanner_states[0][0].state == BluetoothScannerState.RUNNING
            assert scanner_states[0][0].mode == BluetoothScannerMode.PASSIVE

            probe.publish(f"{topics_root}/advertisements", _adverts(40))
            await wait_until(
                lambda: all(sum(len(b.advertisements) for b in bt) == 40 for bt in batches),
                what="40 advertisements on both clients",
            )
            assert [len(b.advertisements) for b in batches[0]] == [16, 16, 8]
            first = batches[0][0].advertisements[0]
            assert first.address == 0xA4C138120000 and first.rssi == -40 and first.address_type == 0
            assert bytes(first.data) == bytes.fromhex("0201060aff00")

            clients[1].bluetooth_scanner_set_mode(BluetoothScannerMode.ACTIVE)
            await probe.wait_for(lambda: probe.messages, what="mode request on MQTT")
            assert orjson.loads(probe.messages[0].payload) == {"schema": 1, "mode": "active"}
            probe.publish(f"{topics_root}/scanner", _scanner("active"), retain=True)
            await wait_until(lambda: all(len(s) >= 2 for s in scanner_states), what="state change pushed")
            assert scanner_states[1][-1].mode == BluetoothScannerMode.ACTIVE
            assert gateway.health()["adverts_forwarded"] == 80
            await asyncio.gather(*(c.disconnect() for c in clients))


async def test_slow_subscriber_loses_batches_not_the_others(tmp_path: Path) -> None:
    async with bare_server(tmp_path, limits=Limits(soft=1, hard=64 * 1024 * 1024)) as server:
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        slow.setblocking(False)
        await asyncio.get_running_loop().sock_connect(slow, ("127.0.0.1", server.port))
        hello = pb.HelloRequest(client_info="slow", api_version_major=1, api_version_minor=19)
        opening = encode_plaintext(ids.HELLO_REQUEST, hello.SerializeToString())
        opening += encode_plaintext(ids.BT_SUBSCRIBE, b"")
        await asyncio.get_running_loop().sock_sendall(slow, opening)
        async with api_client(server.port) as fast:
            got: list[int] = []
            fast.subscribe_bluetooth_le_raw_advertisements(lambda m: got.append(len(m.advertisements)))
            await wait_until(lambda: len(server.bluetooth.subscribers) == 2, what="two subscribers")
            ads = tuple(RawAdvert(0xA4C138000000 + i, 0, -50, bytes(31)) for i in range(16))
            sent = 0
            while server.bluetooth.dropped == 0 and sent < 20000:
                server.bluetooth.add(AdvertBatch(ads, None))
                sent += 1
                await asyncio.sleep(0)
            assert server.bluetooth.dropped > 0, "the slow client never backed up"
            await wait_until(lambda: sum(got) == 16 * sent, what="every batch on the fast client")
            assert len(server.connections) == 2  # the slow one is only dropped from, not cut off
        slow.close()


async def test_unsubscribe_stops_adverts(tmp_path: Path) -> None:
    async with bare_server(tmp_path) as server, api_client(server.port) as client:
        got: list[Any] = []
        unsub = client.subscribe_bluetooth_le_raw_advertisements(got.append)
        await wait_until(lambda: server.bluetooth.subscribers, what="subscriber")
        unsub()
        await wait_until(lambda: not server.bluetooth.subscribers, what="unsubscribed")
        server.bluetooth.add(AdvertBatch((RawAdvert(1, 0, -50, b""),), None))
        await asyncio.sleep(0.1)
        assert got == []
