"""End to end through bleak: SimScanner finds the BT-2, SimBT2Client connects, reads and disconnects."""

from __future__ import annotations

import asyncio
import time

import pytest
from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakDeviceNotFoundError, BleakError

from services.simulator import (
    BT2_SERVICE_UUID,
    NOTIFY_CHAR_HANDLE,
    NOTIFY_CHAR_UUID,
    WRITE_CHAR_HANDLE,
    WRITE_CHAR_UUID,
    WRITE_SERVICE_UUID,
    BankSimulator,
    SimBT2Client,
    SimConfig,
    SimScanner,
    advertisements,
    encode_advertisement_data,
    parse_ad,
    registered,
    simulator_for,
)
from shared.modbus import ReadRequest, ReadResponse, ResponseAssembler
from shared.registers import BLOCK_CELLS, BLOCK_STATUS, check_plausible, decode_block


async def _scan_until(scanner_kwargs: dict[str, object], wanted: int) -> tuple[SimScanner, dict[str, tuple]]:
    """Scan until ``wanted`` distinct devices were heard; returns the backend and what was seen."""
    seen: dict[str, tuple[BLEDevice, AdvertisementData]] = {}
    enough = asyncio.Event()

    def on_advert(device: BLEDevice, adv: AdvertisementData) -> None:
        seen[device.address] = (device, adv)
        if len(seen) >= wanted:
            enough.set()

    scanner = BleakScanner(on_advert, backend=SimScanner, **scanner_kwargs)  # type: ignore[arg-type]
    async with scanner, asyncio.timeout(2.0):
        await enough.wait()
    backend = scanner._backend
    assert isinstance(backend, SimScanner)
    return backend, seen


async def test_scanner_finds_the_bt2_and_its_neighbours(make_sim) -> None:
    sim = make_sim(latency_scale=0.0)
    backend, seen = await _scan_until({}, 4)
    device, adv = seen["C4:64:E3:38:3D:0E"]
    assert device.details is sim
    assert adv.local_name is not None and adv.local_name.strip() == "BT-TH-E3383D0E"
    assert adv.manufacturer_data == {25796: bytes.fromhex("e3383d0e")}  # 0x64C4, as in the brief
    assert adv.service_uuids == [BT2_SERVICE_UUID]
    others = [a for addr, (_, a) in seen.items() if addr != sim.address]
    assert any(a.service_data for a in others)  # thermometer
    assert any(a.manufacturer_data.get(0x004C, b"")[:2] == b"\x02\x15" for a in others)  # iBeacon
    assert any(a.platform_data[1]["AddressType"] == "random" for a in others)
    assert all(-100 <= a.rssi <= -20 for _, a in seen.values())
    # Raw AD bytes of what was emitted parse back to exactly what bleak reported.
    for advert in backend.emitted:
        parsed = parse_ad(advert.raw)
        data = advert.advertisement_data()
        assert parsed.local_name == data.local_name
        assert parsed.manufacturer_data == data.manufacturer_data
        assert parsed.service_data == data.service_data
        assert parsed.service_uuids == data.service_uuids
        assert parsed.tx_power == data.tx_power
        assert encode_advertisement_data(data) == advert.raw
        assert len(advert.raw) <= 62  # fits ADV + SCAN_RSP


async def test_find_device_by_name_and_service_filter(make_sim) -> None:
    sim = make_sim(latency_scale=0.0)
    device = await BleakScanner.find_device_by_name("BT-TH-E3383D0E", timeout=2.0, backend=SimScanner)
    assert device is not None and device.details is sim
    _, seen = await _scan_until({"service_uuids": [BT2_SERVICE_UUID]}, 1)
    assert list(seen) == [sim.address]


async def test_some_names_are_space_padded(make_sim) -> None:
    make_sim(latency_scale=0.0, other_devices=False)
    names: set[str] = set()
    done = asyncio.Event()

    def on_advert(device: BLEDevice, adv: AdvertisementData) -> None:
        names.add(adv.local_name or "")
        if len(names) == 2:
            done.set()

    async with BleakScanner(on_advert, backend=SimScanner), asyncio.timeout(5.0):
        await done.wait()
    assert names == {"BT-TH-E3383D0E", "BT-TH-E3383D0E    "}


async def test_advertisement_helper_matches_the_scanner(make_sim) -> None:
    sim = make_sim()
    adverts = advertisements(sim)
    assert adverts[0].address == sim.address
    assert len(adverts) == 4
    assert parse_ad(adverts[0].raw).flags == 0x06


async def test_read_through_bleak(make_sim) -> None:
    sim = make_sim(latency_scale=0.0)
    device = await BleakScanner.find_device_by_address(sim.address, timeout=2.0, backend=SimScanner)
    assert device is not None
    received: asyncio.Queue[bytes] = asyncio.Queue()
    async with BleakClient(device, backend=SimBT2Client) as client:
        assert client.is_connected
        assert client.mtu_size == 251
        assert client.name == "BT-TH-E3383D0E"
        write = client.services.get_characteristic(WRITE_CHAR_UUID)
        notify = client.services.get_characteristic(NOTIFY_CHAR_UUID)
        assert write is not None and write.handle == WRITE_CHAR_HANDLE == 0x1D
        assert write.service_uuid == WRITE_SERVICE_UUID
        assert set(write.properties) == {"read", "write-without-response", "write"}
        assert notify is not None and notify.handle == NOTIFY_CHAR_HANDLE == 0x2E
        assert set(notify.properties) == {"read", "notify"}
        assert write.max_write_without_response_size == 248
        for uuid in ("ffd2", "ffd3", "ffd4", "ffd5"):
            assert client.services.get_characteristic(f"0000{uuid}-0000-1000-8000-00805f9b34fb") is not None
        assert await client.read_gatt_char("00002a00-0000-1000-8000-00805f9b34fb") == b"BT-TH-E3383D0E"

        await client.start_notify(NOTIFY_CHAR_UUID, lambda _c, data: received.put_nowait(bytes(data)))
        for slave in sim.slaves:
            for block in (BLOCK_STATUS, BLOCK_CELLS):
                request = ReadRequest(slave, *block)
                assembler = ResponseAssembler(request)
                await client.write_gatt_char(WRITE_CHAR_UUID, request.encode(), response=False)
                async with asyncio.timeout(1.0):
                    events = assembler.feed(await received.get())
                (reply,) = events
                assert isinstance(reply, ReadResponse)
                check_plausible(decode_block(request.start, reply.registers))
                assert sim.truth.is_genuine(slave, request.start, reply.frame)
        assert await client.read_gatt_char(NOTIFY_CHAR_UUID) == reply.frame
    assert not client.is_connected
    assert sim.central is None
    assert sim.truth.delivered == 8


async def test_write_with_response_also_works(link) -> None:
    conn = await link()
    request = ReadRequest(49, 5042, 6)
    await conn.client.write_gatt_char(WRITE_CHAR_UUID, request.encode(), response=True)
    async with asyncio.timeout(1.0):
        data = await conn.notifications.get()
    assert ResponseAssembler(request).feed(data)[0].slave == 49  # type: ignore[union-attr]


async def test_mtu_23_gives_20_byte_notifications(link) -> None:
    conn = await link(mtu=23)
    assert conn.client.mtu_size == 23
    request = ReadRequest(48, *BLOCK_CELLS)
    events = await conn.read(request)
    assert isinstance(events[-1], ReadResponse)
    await conn.drained()
    assert conn.notifications.empty()
    assert conn.sim.truth.delivered == 1


async def test_timing_through_bleak_matches_the_floor(link) -> None:
    conn = await link(latency_scale=0.2)
    floor = conn.backend.read_floor(34)
    assert floor == pytest.approx(conn.sim.timing.read_floor(34, 1) * 0.2)
    started = time.perf_counter()
    await conn.read(ReadRequest(48, *BLOCK_CELLS))
    elapsed = time.perf_counter() - started
    assert floor - 0.002 <= elapsed <= floor + 0.2


async def test_address_lookup_through_the_registry(make_sim) -> None:
    sim = make_sim(latency_scale=0.0)
    client = BleakClient(sim.address.lower(), backend=SimBT2Client)
    await client.connect()
    assert client.is_connected and sim.central is client._backend
    await client.disconnect()


async def test_unknown_address_is_not_found() -> None:
    client = BleakClient("00:11:22:33:44:55", backend=SimBT2Client)
    with pytest.raises(BleakDeviceNotFoundError):
        await client.connect()


async def test_one_central_at_a_time(make_sim) -> None:
    sim = make_sim(latency_scale=0.0)
    first = BleakClient(sim.address, backend=SimBT2Client)
    second = BleakClient(sim.address, backend=SimBT2Client)
    await first.connect()
    with pytest.raises(BleakError, match="not found"):
        await second.connect()
    # A connected BT-2 does not advertise.
    assert all(a.address != sim.address for a in advertisements(sim))
    await first.disconnect()
    await second.connect()
    assert second.is_connected
    await second.disconnect()


async def test_disconnect_cancels_pending_deliveries_and_calls_back(link) -> None:
    conn = await link(latency_scale=0.05)
    write_char = conn.client.services.get_characteristic(WRITE_CHAR_UUID)
    await conn.client.write_gatt_char(write_char, ReadRequest(48, 5000, 34).encode(), response=False)
    assert conn.backend.pending_notifications == 1
    await conn.client.disconnect()
    assert conn.backend.pending_notifications == 0
    assert conn.disconnects == 1
    assert not conn.client.is_connected
    with pytest.raises(BleakError, match="Not connected"):
        await conn.backend.write_gatt_char(write_char, ReadRequest(48, 5042, 7).encode(), False)
    assert conn.sim.truth.delivered == 0


async def test_notifications_need_a_subscription(make_sim) -> None:
    sim = make_sim(latency_scale=0.0)
    async with BleakClient(sim.address, backend=SimBT2Client) as client:
        await client.write_gatt_char(WRITE_CHAR_UUID, ReadRequest(48, 5042, 7).encode(), response=False)
        backend = client._backend
        assert isinstance(backend, SimBT2Client)
        async with asyncio.timeout(1.0):
            await backend.drained()
    assert sim.truth.delivered == 0


async def test_scanner_with_explicit_simulators_and_the_registered_context() -> None:
    sim = BankSimulator(SimConfig(address="60:98:66:ED:FC:11", latency_scale=0.0, other_devices=False))
    _, seen = await _scan_until({"simulators": [sim]}, 1)
    (adv,) = (a for _, a in seen.values())
    assert adv.local_name is not None and adv.local_name.strip() == "BT-TH-66EDFC11"
    assert adv.manufacturer_data == {39008: bytes.fromhex("66edfc11")}  # 0x9860, as in the brief
    assert simulator_for(sim.address) is None
    with registered(sim):
        assert simulator_for("60:98:66:ed:fc:11") is sim
        async with BleakClient(sim.address, backend=SimBT2Client) as client:
            assert client.is_connected
    assert simulator_for(sim.address) is None
