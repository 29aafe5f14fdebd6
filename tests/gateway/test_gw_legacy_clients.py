"""What clients older than the pinned one send, byte for byte, and what they must get back.

aioesphomeapi up to 29.x (Home Assistant up to 2025.4) sends ConnectRequest (id 3, today's
AuthenticationRequest) right after Hello and waits for ConnectResponse; clients before 34.x (HA
2025.7) know nothing of sub-devices; clients that subscribe to advertisements without the raw flag
expect the parsed form (id 67). The real old clients run in tests/compat; these tests pin the
exact wire behaviour without their venvs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from services.gateway import messages as ids
from services.gateway.bluetooth import AdvertBatch, RawAdvert
from services.gateway.connection import ConnectionState, client_knows_sub_devices
from services.gateway.framing import Frame, PlaintextDecoder, encode_plaintext
from services.gateway.messages import CLASS_OF, message_id
from services.gateway.proto import pb
from tests.gateway.support import all_configs, bare_server, battery_state, wait_until


@dataclass
class RawClient:
    """A plaintext API session on a socket, speaking only what the test sends."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    decoder: PlaintextDecoder = field(default_factory=PlaintextDecoder)
    received: list[Frame] = field(default_factory=list)

    def send(self, *messages: Any) -> None:
        self.writer.write(b"".join(encode_plaintext(message_id(type(m)), m.SerializeToString()) for m in messages))

    async def until(self, cls: Any, *, count: int = 1, within: float = 5.0) -> list[Any]:
        """Read until ``count`` messages of ``cls`` arrived; returns them parsed."""
        wanted = message_id(cls)
        async with asyncio.timeout(within):
            while sum(f.msg_type == wanted for f in self.received) < count:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError(f"closed before {count} x {cls.__name__}")
                self.received.extend(self.decoder.feed(data))
        found = [CLASS_OF[f.msg_type].FromString(f.payload) for f in self.received if f.msg_type == wanted]
        return found

    def parsed(self, cls: Any) -> list[Any]:
        wanted = message_id(cls)
        return [cls.FromString(f.payload) for f in self.received if f.msg_type == wanted]


@contextlib.asynccontextmanager
async def raw_client(port: int) -> AsyncIterator[RawClient]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield RawClient(reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _hello(minor: int, client_info: str = "aioesphomeapi") -> Any:
    return pb.HelloRequest(client_info=client_info, api_version_major=1, api_version_minor=minor)


@pytest.mark.parametrize("minor", [9, 10])
async def test_connect_request_is_answered_like_passwordless_firmware(tmp_path: Path, minor: int) -> None:
    """21.x (API 1.9) and 24.x-29.x (1.10) wait 30 s for both replies; without the second they loop."""
    async with bare_server(tmp_path, configs=all_configs()) as server, raw_client(server.port) as client:
        client.send(_hello(minor), pb.AuthenticationRequest())
        (hello,) = await client.until(pb.HelloResponse)
        (login,) = await client.until(pb.AuthenticationResponse)
        assert hello.api_version_major == 1
        assert login.invalid_password is False
        # Hello comes first: old clients match replies in order.
        kinds = [f.msg_type for f in client.received]
        assert kinds.index(ids.HELLO_RESPONSE) < kinds.index(ids.AUTH_RESPONSE)
        client.send(pb.PingRequest())
        await client.until(pb.PingResponse)
        (conn,) = server.connections
        assert conn.state is ConnectionState.CONNECTED


async def test_connect_request_before_hello_closes(tmp_path: Path) -> None:
    """ESPHome accepts nothing but Hello, ping and disconnect before Hello."""
    async with bare_server(tmp_path) as server, raw_client(server.port) as client:
        client.send(pb.AuthenticationRequest())
        with pytest.raises(ConnectionError):
            await client.until(pb.AuthenticationResponse)
        assert client.parsed(pb.AuthenticationResponse) == []


async def test_clients_without_sub_devices_get_unique_names_on_the_main_device(tmp_path: Path) -> None:
    async with bare_server(tmp_path, configs=all_configs()) as server, raw_client(server.port) as client:
        client.send(_hello(10, "Home Assistant 2025.4.4"), pb.AuthenticationRequest())
        await client.until(pb.AuthenticationResponse)
        client.send(pb.DeviceInfoRequest(), pb.ListEntitiesRequest())
        (info,) = await client.until(pb.DeviceInfoResponse)
        await client.until(pb.ListEntitiesDoneResponse)
        sensors = client.parsed(pb.ListEntitiesSensorResponse)
        assert len(sensors) == 55
        assert len(info.devices) == 0  # no empty sub-devices for a client that cannot fill them
        assert {s.device_id for s in sensors} == {0}
        names = [s.name for s in sensors]
        assert len(set(names)) == 55, sorted(n for n in names if names.count(n) > 1)
        assert "Battery 48 Voltage" in names and "Battery Bank Power" in names
        assert len({s.object_id for s in sensors}) == 55
        assert all(s.object_id for s in sensors)  # clients below API 1.14 never compute object ids

        client.send(pb.SubscribeStatesRequest())
        states = await client.until(pb.SensorStateResponse, count=55)
        assert {s.device_id for s in states} == {0}  # HA looks states up by the device id it listed
        server.registry.set_state("battery_48", _changed_power())
        states = await client.until(pb.SensorStateResponse, count=56)
        assert states[-1].device_id == 0 and states[-1].state == pytest.approx(-99.5)


async def test_clients_with_sub_devices_keep_them(tmp_path: Path) -> None:
    async with bare_server(tmp_path, configs=all_configs()) as server, raw_client(server.port) as client:
        client.send(_hello(10, "Home Assistant 2025.7.1"), pb.AuthenticationRequest())
        await client.until(pb.AuthenticationResponse)
        client.send(pb.DeviceInfoRequest(), pb.ListEntitiesRequest())
        (info,) = await client.until(pb.DeviceInfoResponse)
        await client.until(pb.ListEntitiesDoneResponse)
        sensors = client.parsed(pb.ListEntitiesSensorResponse)
        assert len(info.devices) == 5
        assert sum(s.name == "Voltage" for s in sensors) == 4
        assert len({(s.device_id, s.name) for s in sensors}) == 55


@pytest.mark.parametrize(
    ("minor", "client_info", "knows"),
    [
        (9, "Home Assistant 2024.1.6", False),
        (10, "Home Assistant 2025.4.4", False),
        (10, "Home Assistant 2025.6.3", False),
        (10, "Home Assistant 2025.7.0", True),
        (10, "Home Assistant 2025.10.0b1", True),
        (10, "aioesphomeapi", False),
        (12, "aioesphomeapi", True),
        (14, "Home Assistant 2026.2.3", True),
        (19, "", True),
    ],
)
def test_sub_device_support_rule(minor: int, client_info: str, knows: bool) -> None:
    assert client_knows_sub_devices(minor, client_info) is knows


async def test_legacy_advertisement_subscription_gets_parsed_adverts(tmp_path: Path) -> None:
    """flags=0 is the pre-raw subscription: one parsed BluetoothLEAdvertisementResponse per advert."""
    async with bare_server(tmp_path) as server, raw_client(server.port) as client:
        client.send(_hello(9), pb.SubscribeBluetoothLEAdvertisementsRequest(flags=0))
        await client.until(pb.BluetoothScannerStateResponse)
        data = (
            bytes.fromhex("020106")  # flags
            + b"\x0f\x09BT-TH-E3383D0E"  # complete local name
            + bytes.fromhex("0303f0ff")  # 16-bit service UUID 0xfff0
            + bytes.fromhex("05ff4ce10102")  # manufacturer 0xe14c, data 01 02
        )
        raw = RawAdvert(0xA4C138E3383D, 0, -61, data)
        server.bluetooth.add(AdvertBatch((raw,), None))
        (advert,) = await client.until(pb.BluetoothLEAdvertisementResponse)
        assert advert.address == 0xA4C138E3383D
        assert advert.rssi == -61
        assert bytes(advert.name) == b"BT-TH-E3383D0E"
        assert list(advert.service_uuids) == ["0000fff0-0000-1000-8000-00805f9b34fb"]
        (maker,) = advert.manufacturer_data
        assert maker.uuid == "0xE14C" and bytes(maker.data) == b"\x01\x02"
        assert client.parsed(pb.BluetoothLERawAdvertisementsResponse) == []


async def test_raw_and_legacy_subscribers_side_by_side(tmp_path: Path) -> None:
    async with (
        bare_server(tmp_path) as server,
        raw_client(server.port) as legacy,
        raw_client(server.port) as raw,
    ):
        legacy.send(_hello(9), pb.SubscribeBluetoothLEAdvertisementsRequest(flags=0))
        raw.send(_hello(19), pb.SubscribeBluetoothLEAdvertisementsRequest(flags=1))
        await legacy.until(pb.BluetoothScannerStateResponse)
        await raw.until(pb.BluetoothScannerStateResponse)
        await wait_until(lambda: len(server.bluetooth.subscribers) == 2, what="two subscribers")
        ads = tuple(RawAdvert(0xA4C138000000 + i, 1, -50, bytes.fromhex("020106")) for i in range(3))
        server.bluetooth.add(AdvertBatch(ads, None))
        got = await legacy.until(pb.BluetoothLEAdvertisementResponse, count=3)
        (batch,) = await raw.until(pb.BluetoothLERawAdvertisementsResponse)
        assert [a.address for a in got] == [a.address for a in batch.advertisements]
        assert legacy.parsed(pb.BluetoothLERawAdvertisementsResponse) == []


def _changed_power() -> Any:
    return battery_state(48, offset=71.3)
