"""Active Bluetooth proxy with Home Assistant's own client (bleak-esphome over aioesphomeapi).

bleak-esphome -> gateway (ESPHome API) -> MQTT -> reader (simulator backend) -> simulated peripheral,
and back: connect, service discovery, read, write, notifications, disconnect, slots, errors.
"""

from __future__ import annotations

import asyncio
import struct
import time
from pathlib import Path

import orjson
import pytest
from aioesphomeapi import BluetoothProxyFeature
from bleak.exc import BleakError

from services.simulator.devices import (
    BATTERY_LEVEL_UUID,
    CONTROL_UUID,
    NUS_RX,
    NUS_TX,
    STREAM_FORMAT,
    STREAM_START,
    STREAM_STOP,
    TEMPERATURE_UUID,
)
from tests.conftest import Broker
from tests.gateway.proxy_support import STREAMER, THERMOMETER, home_assistant, proxy_stack
from tests.gateway.support import wait_until


async def test_home_assistant_client_reads_writes_and_subscribes(mosquitto: Broker, tmp_path: Path) -> None:
    async with proxy_stack(mosquitto.url, tmp_path) as stack, home_assistant(stack.gateway.port) as ha:
        info = await ha.cli.device_info()
        flags = info.bluetooth_proxy_feature_flags
        assert (
            flags & BluetoothProxyFeature.ACTIVE_CONNECTIONS and flags & BluetoothProxyFeature.REMOTE_CACHING
        )
        assert ha.data.scanner is not None and ha.data.scanner.connectable
        await wait_until(lambda: ha.device.ble_connections_limit == 2, what="2 connection slots")
        assert ha.device.ble_connections_free == 2
        # The peripherals' advertisements reach Home Assistant's scanner through the proxy.
        scanner = ha.data.scanner
        await wait_until(
            lambda: {THERMOMETER, STREAMER} <= set(scanner.discovered_devices_and_advertisement_data),
            what="both peripherals advertised through the proxy",
        )

        client = ha.bleak_client(THERMOMETER)
        await client.connect()
        assert client.is_connected
        await wait_until(lambda: ha.device.ble_connections_free == 1, what="one slot in use")
        assert ha.device.ble_allocations == [0xA4C138AA0001]  # the addresses in use, as ESPHome lists them
        uuids = {c.uuid for s in client.services for c in s.characteristics}
        assert {TEMPERATURE_UUID, BATTERY_LEVEL_UUID, CONTROL_UUID} <= uuids
        assert await client.read_gatt_char(BATTERY_LEVEL_UUID) == b"\x57"
        assert struct.unpack("<h", await client.read_gatt_char(TEMPERATURE_UUID))[0] == 2150
        await client.write_gatt_char(CONTROL_UUID, b"\x05", response=True)
        assert stack.thermometer.values[stack.thermometer.char_by_uuid(CONTROL_UUID).handle] == b"\x05"
        with pytest.raises(BleakError, match="Read not permitted"):
            await client.read_gatt_char(CONTROL_UUID)  # the real ATT error code, not a timeout

        got: list[bytes] = []
        await client.start_notify(TEMPERATURE_UUID, lambda _c, data: got.append(bytes(data)))
        await wait_until(lambda: len(got) >= 5, what="temperature notifications")
        await client.stop_notify(TEMPERATURE_UUID)
        await asyncio.sleep(0.3)
        settled = len(got)
        await asyncio.sleep(0.3)
        assert len(got) == settled, "notifications went on after stop_notify"

        await client.disconnect()
        assert not client.is_connected
        await wait_until(lambda: ha.device.ble_connections_free == 2, what="the slot freed")
        assert not stack.reader.proxy._peers  # type: ignore[union-attr]
        assert stack.thermometer.central is None


async def test_device_that_needs_a_write_before_it_notifies(mosquitto: Broker, tmp_path: Path) -> None:
    async with proxy_stack(mosquitto.url, tmp_path) as stack, home_assistant(stack.gateway.port) as ha:
        await wait_until(lambda: ha.device.ble_connections_free == 2, what="slots")
        client = ha.bleak_client(STREAMER)
        await client.connect()
        got: list[tuple[int, float]] = []
        await client.start_notify(NUS_TX, lambda _c, data: got.append(struct.unpack(STREAM_FORMAT, data)))
        await asyncio.sleep(0.2)
        assert got == []  # subscribed, but it waits for the start command
        await client.write_gatt_char(NUS_RX, STREAM_START, response=False)
        await wait_until(lambda: len(got) >= 20, what="a notification stream")
        sequence = [seq for seq, _ in got]
        assert sequence == list(range(sequence[0], sequence[0] + len(sequence))), "lost or reordered"
        await client.write_gatt_char(NUS_RX, STREAM_STOP, response=True)
        await client.disconnect()
        await wait_until(lambda: ha.device.ble_connections_free == 2, what="the slot freed")


async def test_slots_under_concurrent_clients(mosquitto: Broker, tmp_path: Path) -> None:
    async with (
        proxy_stack(mosquitto.url, tmp_path, **{"reader.proxy_slots": 1}) as stack,
        home_assistant(stack.gateway.port, "ha-one") as one,
        home_assistant(stack.gateway.port, "ha-two") as two,
    ):
        await wait_until(
            lambda: one.device.ble_connections_free == 1 and two.device.ble_connections_free == 1
        )
        a, b = one.bleak_client(THERMOMETER), two.bleak_client(STREAMER)
        results = await asyncio.gather(a.connect(), b.connect(), return_exceptions=True)
        winners = [r for r in results if not isinstance(r, BaseException)]
        assert len(winners) == 1, results  # one slot: exactly one of the two got it
        loser = results[0] if isinstance(results[0], BaseException) else results[1]
        assert isinstance(loser, BleakError | TimeoutError), loser
        for side in (one, two):
            await wait_until(lambda side=side: side.device.ble_connections_free == 0, what="no free slot")
        assert stack.reader.proxy is not None and len(stack.reader.proxy._peers) == 1
        winner = a if a.is_connected else b
        await winner.disconnect()
        for side in (one, two):
            await wait_until(lambda side=side: side.device.ble_connections_free == 1, what="slot back")


async def test_client_that_drops_frees_its_slot(mosquitto: Broker, tmp_path: Path) -> None:
    async with proxy_stack(mosquitto.url, tmp_path) as stack:  # noqa: SIM117 - the dropper ends first
        async with home_assistant(stack.gateway.port, "observer") as observer:
            async with home_assistant(stack.gateway.port, "dropper") as dropper:
                client = dropper.bleak_client(THERMOMETER)
                await client.connect()
                await client.start_notify(TEMPERATURE_UUID, lambda _c, _d: None)
                await wait_until(lambda: observer.device.ble_connections_free == 1, what="slot taken")
                # The API connection dies (HA crashed, network gone): no BLE disconnect is ever sent.
                assert stack.gateway.server is not None
                (session,) = [c for c in stack.gateway.server.connections if c.client_info == "dropper"]
                assert session.transport is not None
                session.transport.abort()
                await wait_until(lambda: observer.device.ble_connections_free == 2, what="slot freed")
            assert stack.thermometer.central is None
            assert stack.reader.proxy is not None and not stack.reader.proxy._peers


async def test_link_loss_and_connect_failure_are_reported(mosquitto: Broker, tmp_path: Path) -> None:
    async with proxy_stack(mosquitto.url, tmp_path) as stack, home_assistant(stack.gateway.port) as ha:
        await wait_until(lambda: ha.device.ble_connections_free == 2, what="slots")
        stack.thermometer.faults.append("connect_fail")
        client = ha.bleak_client(THERMOMETER)
        with pytest.raises(BleakError, match="while connecting"):
            await client.connect()
        await wait_until(lambda: ha.device.ble_connections_free == 2, what="slot back after a failed connect")

        lost = asyncio.Event()
        client = ha.bleak_client(THERMOMETER, disconnected_callback=lambda _c: lost.set())
        await client.connect()
        stack.thermometer.drop_link()  # out of range
        await asyncio.wait_for(lost.wait(), 5)
        assert not client.is_connected
        await wait_until(lambda: ha.device.ble_connections_free == 2, what="slot back after link loss")
        with pytest.raises(BleakError):
            await client.read_gatt_char(BATTERY_LEVEL_UUID)


async def test_gateway_answers_when_the_reader_does_not(mosquitto: Broker, tmp_path: Path) -> None:
    """No reader answers (gone, or the broker lost the request): the client gets an answer anyway."""
    from tests.gateway.support import gateway_config, running_gateway
    from tests.support.probe import MqttProbe

    config = gateway_config(mosquitto.url, tmp_path)
    async with MqttProbe(mosquitto.url, "renogy/bridge/reader/default/proxy/request") as probe:
        probe.publish(
            "renogy/bridge/reader/default/proxy/slots",
            {"schema": 1, "limit": 2, "allocated": []},
            retain=True,
        )
        async with running_gateway(config) as gateway, home_assistant(gateway.port) as ha:
            proxy = gateway.gatt_proxy
            assert proxy is not None
            proxy.connect_timeout, proxy.grace = 0.3, 0.1
            await wait_until(
                lambda: ha.device.ble_connections_free == 2, what="slots from the retained topic"
            )
            states: list[tuple[bool, int, int]] = []
            flags = (await ha.cli.device_info()).bluetooth_proxy_feature_flags
            await ha.cli.bluetooth_device_connect(
                0xA4C138AA0001, lambda *s: states.append(s), timeout=5, feature_flags=flags, address_type=0
            )
            assert states == [(False, 0, 8)]  # connection timeout, after the request's deadline
            await probe.wait_for(lambda: len(probe.messages) >= 2, what="the connect and the disconnect")
            requests = [orjson.loads(m.payload) for m in probe.messages]
            assert [r["op"] for r in requests] == [
                "connect",
                "disconnect",
            ]  # and the reader is told to let go
            assert requests[0]["deadline"] - requests[0]["timeout"] == pytest.approx(time.time(), abs=5)
            assert gateway.health()["bluetooth_answered_for_reader"] == 1
            await wait_until(lambda: ha.device.ble_connections_free == 2, what="the slot back")
            # A GATT request for a device the client does not hold is refused at once.
            with pytest.raises(Exception, match=r"Not connected|error=-1"):
                await ha.cli.bluetooth_gatt_read(0xA4C138AA0001, 18, timeout=2)
