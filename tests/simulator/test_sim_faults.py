"""Every fault kind, shown through the bleak backend, plus rate-driven and seeded injection."""

from __future__ import annotations

import asyncio
import time

import pytest
from bleak import BleakClient
from bleak.exc import BleakDBusError, BleakError

from services.simulator import (
    ADAPTER_NO_BLUEZ,
    ADAPTER_NO_DBUS,
    CONNECT_FAULTS,
    HANG_IN_START_NOTIFY,
    NOTIFY_CHAR_UUID,
    REQUEST_FAULTS,
    WRITE_CHAR_UUID,
    BankSimulator,
    FaultInjector,
    FaultKind,
    SimBT2Client,
    SimConfig,
)
from shared.modbus import FrameError, FrameErrorKind, ReadRequest, ReadResponse, ResponseAssembler, crc_ok

STATUS = ReadRequest(48, 5042, 7)


async def test_bad_crc(link) -> None:
    conn = await link()
    conn.sim.faults.inject_next(FaultKind.BAD_CRC)
    (event,) = await conn.read(STATUS)
    assert isinstance(event, FrameError) and event.kind is FrameErrorKind.BAD_CRC
    assert not conn.sim.truth.is_genuine(48, 5042, event.data)
    assert conn.sim.truth.delivered == 0
    assert conn.sim.faults.counts[FaultKind.BAD_CRC] == 1
    assert [f.kind for f in conn.sim.truth.faults] == ["bad_crc"]
    (good,) = await conn.read(STATUS)  # the next request is answered normally
    assert isinstance(good, ReadResponse)


async def test_truncated(link) -> None:
    conn = await link(mtu=23)
    conn.sim.faults.inject_next("truncated")
    await conn.client.write_gatt_char(WRITE_CHAR_UUID, ReadRequest(48, 5000, 34).encode(), response=False)
    await conn.drained()
    assembler = ResponseAssembler(ReadRequest(48, 5000, 34))
    events = [e for data in conn.received() for e in assembler.feed(data)]
    assert events == []
    assert 0 < len(assembler.pending) < 73
    assert conn.client.is_connected
    assert conn.sim.truth.delivered == 0


async def test_dropped(link) -> None:
    conn = await link()
    conn.sim.faults.inject_next("dropped")
    await conn.client.write_gatt_char(WRITE_CHAR_UUID, STATUS.encode(), response=False)
    await conn.drained()
    assert conn.received() == []
    (good,) = await conn.read(STATUS)
    assert isinstance(good, ReadResponse)


async def test_late_reply_arrives_after_the_next_one(link) -> None:
    conn = await link(late_delay=0.05)
    conn.sim.faults.inject_next("late")
    first, second = ReadRequest(48, 5042, 7), ReadRequest(49, 5042, 7)
    started = time.perf_counter()
    await conn.client.write_gatt_char(WRITE_CHAR_UUID, first.encode(), response=False)
    await conn.client.write_gatt_char(WRITE_CHAR_UUID, second.encode(), response=False)
    async with asyncio.timeout(1.0):
        early = await conn.notifications.get()
        late = await conn.notifications.get()
    assert time.perf_counter() - started >= 0.05
    assert early[0] == 49 and late[0] == 48
    assert crc_ok(late)  # a genuine frame, just too late
    assert not conn.sim.truth.is_genuine(48, 5042, late)  # never counted as truth
    assert conn.sim.truth.is_genuine(49, 5042, early)


def test_late_delay_is_absolute(clock) -> None:
    sim = BankSimulator(SimConfig(latency_scale=0.0), clock=clock)
    sim.faults.inject_next("late")
    actions = sim.handle_write(STATUS.encode())
    assert [a.delay for a in actions] == [2.5]


async def test_wrong_slave(link) -> None:
    conn = await link()
    conn.sim.faults.inject_next("wrong_slave")
    (event,) = await conn.read(STATUS)
    assert isinstance(event, FrameError) and event.kind is FrameErrorKind.WRONG_SLAVE
    assert crc_ok(event.data) and event.data[0] != 48
    assert conn.sim.truth.delivered == 0


async def test_exception_04(link) -> None:
    conn = await link()
    conn.sim.faults.inject_next("exception")
    (event,) = await conn.read(STATUS)
    assert isinstance(event, FrameError) and event.kind is FrameErrorKind.EXCEPTION
    assert event.exception_code == 0x04


@pytest.mark.parametrize("mtu", [23, 251])
async def test_garbage_before_an_intact_reply(link, mtu: int) -> None:
    conn = await link(mtu=mtu)
    conn.sim.faults.inject_next("garbage")
    events = await conn.read(STATUS)
    reply = events[-1]
    assert isinstance(reply, ReadResponse)
    garbage = conn.sim.truth.faults[-1]
    assert garbage.kind == "garbage" and garbage.frame
    assert conn.sim.truth.is_genuine(48, 5042, reply.frame)  # the reply itself is genuine


async def test_disconnect_mid_reply(link) -> None:
    conn = await link()
    conn.sim.faults.inject_next("disconnect")
    await conn.client.write_gatt_char(WRITE_CHAR_UUID, ReadRequest(48, 5000, 34).encode(), response=False)
    await conn.drained()
    (part,) = conn.received()
    assert 0 < len(part) < 73
    assert not conn.client.is_connected
    assert conn.disconnects == 1
    assert conn.sim.central is None
    assert conn.sim.truth.delivered == 0
    with pytest.raises(BleakError):
        await conn.client.write_gatt_char(WRITE_CHAR_UUID, STATUS.encode(), response=False)
    await conn.client.connect()  # the BT-2 is free again
    await conn.client.start_notify(NOTIFY_CHAR_UUID, conn.on_notify)
    (good,) = await conn.read(STATUS)
    assert isinstance(good, ReadResponse)


async def test_connect_fail(make_sim) -> None:
    sim = make_sim(latency_scale=0.0)
    sim.faults.inject_next("connect_fail")
    client = BleakClient(sim.address, backend=SimBT2Client)
    with pytest.raises(BleakError, match="le-connection-abort-by-local"):
        await client.connect()
    assert not client.is_connected and sim.central is None
    await client.connect()
    assert client.is_connected
    await client.disconnect()


async def test_hang_in_connect_is_cancellable(make_sim) -> None:
    sim = make_sim(latency_scale=0.0)
    sim.faults.inject_next("hang")
    client = BleakClient(sim.address, backend=SimBT2Client)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await client.connect()
    assert not client.is_connected and sim.central is None
    await client.connect()
    await client.disconnect()


async def test_hang_in_start_notify(make_sim) -> None:
    sim = make_sim(latency_scale=0.0)
    sim.faults.inject_next("hang", variant=HANG_IN_START_NOTIFY)
    client = BleakClient(sim.address, backend=SimBT2Client)
    await client.connect()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await client.start_notify(NOTIFY_CHAR_UUID, lambda _c, _d: None)
    await client.disconnect()
    assert sim.central is None


async def test_adapter_gone_without_dbus(make_sim) -> None:
    sim = make_sim(latency_scale=0.0)
    sim.faults.inject_next("adapter_gone", variant=ADAPTER_NO_DBUS)
    with pytest.raises(FileNotFoundError) as info:
        await BleakClient(sim.address, backend=SimBT2Client).connect()
    assert info.value.errno == 2


async def test_adapter_gone_without_bluez(make_sim) -> None:
    sim = make_sim(latency_scale=0.0)
    sim.faults.inject_next("adapter_gone", variant=ADAPTER_NO_BLUEZ)
    with pytest.raises(BleakDBusError) as info:
        await BleakClient(sim.address, backend=SimBT2Client).connect()
    assert info.value.dbus_error == "org.freedesktop.DBus.Error.ServiceUnknown"
    assert "org.bluez" in str(info.value)
    assert sim.faults.counts[FaultKind.ADAPTER_GONE] == 1


def test_bad_variant_is_refused() -> None:
    with pytest.raises(ValueError, match="variant"):
        FaultInjector().inject_next("hang", variant="sideways")


async def test_rate_one_breaks_every_reply(link) -> None:
    conn = await link(fault_rate=1.0, fault_kinds=frozenset({FaultKind.BAD_CRC}))
    for _ in range(5):
        (event,) = await conn.read(STATUS)
        assert isinstance(event, FrameError) and event.kind is FrameErrorKind.BAD_CRC
    assert conn.sim.faults.counts == {FaultKind.BAD_CRC: 5}


def test_rate_draws_are_seeded_and_respect_the_kinds(clock) -> None:
    def run(seed: int) -> list[str]:
        sim = BankSimulator(SimConfig(seed=seed, fault_rate=0.3, latency_scale=0.0), clock=clock)
        for _ in range(400):
            sim.handle_write(STATUS.encode())
            sim.next_connect_fault()
        return [f.kind for f in sim.truth.faults]

    first, again, other = run(1), run(1), run(2)
    assert first == again != other
    kinds = set(first)
    assert kinds <= {str(k) for k in REQUEST_FAULTS | CONNECT_FAULTS}
    assert len(kinds) == len(REQUEST_FAULTS | CONNECT_FAULTS)  # every kind drawn at least once
    assert 0.2 < len(first) / 800 < 0.4


def test_queued_faults_wait_for_an_answered_request(clock) -> None:
    sim = BankSimulator(SimConfig(latency_scale=0.0, batteries=(48,)), clock=clock)
    sim.faults.inject_next("dropped")
    assert sim.transact(ReadRequest(49, 5042, 7).encode()) == []  # silent id: fault not consumed
    assert sim.faults.pending == 1
    assert sim.transact(STATUS.encode()) == []
    assert sim.faults.pending == 0
