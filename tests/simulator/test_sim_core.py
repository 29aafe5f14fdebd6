"""The sans-IO BT-2 + Modbus slave core: replies, exceptions, silence, broadcast, fragments, timing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from services.simulator import BankSimulator, LinkDrop, Notification, SimConfig
from shared.modbus import (
    FrameError,
    FrameErrorKind,
    ReadRequest,
    ReadResponse,
    ResponseAssembler,
    crc_ok,
    with_crc,
)
from shared.registers import (
    BLOCK_CELLS,
    BLOCK_INFO,
    BLOCK_STATUS,
    block_is_mapped,
    check_plausible,
    decode_block,
)
from shared.timing import notification_count

# The captured frames: the copy shipped with the tests (identical to ../shared/vectors, which a CI
# clone may not have at the same absolute path).
VECTORS = Path(__file__).resolve().parents[1] / "data" / "renogy-frames.json"
BLOCKS = [BLOCK_STATUS, BLOCK_CELLS, BLOCK_INFO, (5042, 6), (5100, 8), (5122, 8), (5223, 1)]


def _sim(clock: object = None, **overrides: object) -> BankSimulator:
    config = SimConfig(**overrides)  # type: ignore[arg-type]
    return BankSimulator(config, clock=clock)  # type: ignore[arg-type]


def _reassemble(request: ReadRequest, fragments: list[bytes]) -> list[ReadResponse | FrameError]:
    assembler = ResponseAssembler(request)
    events: list[ReadResponse | FrameError] = []
    for fragment in fragments:
        events += assembler.feed(fragment)
    return events


@pytest.mark.parametrize(("start", "words"), BLOCKS)
@pytest.mark.parametrize("slave", [48, 49, 50, 51])
def test_read_decodes_to_plausible_values_and_to_the_truth(clock, slave: int, start: int, words: int) -> None:
    sim = _sim(clock)
    request = ReadRequest(slave, start, words)
    events = _reassemble(request, sim.transact(request.encode()))
    assert len(events) == 1
    reply = events[0]
    assert isinstance(reply, ReadResponse)
    assert reply.slave == slave
    values = decode_block(start, reply.registers)
    check_plausible(values)
    truth = sim.truth.latest(slave, start)
    assert truth is not None
    assert truth.frame == reply.frame
    assert truth.values == values
    assert truth.words == words
    assert sim.truth.is_genuine(slave, start, reply.frame)
    assert not sim.truth.is_genuine(slave, start + 1, reply.frame)


def test_status_block_is_an_rbt50lfp48s(clock) -> None:
    sim = _sim(clock)
    for slave, capacity in ((48, 50.0), (49, 49.995), (50, 50.0)):
        frame = b"".join(sim.transact(ReadRequest(slave, *BLOCK_STATUS).encode()))
        values = decode_block(5042, [int.from_bytes(frame[3 + 2 * k : 5 + 2 * k], "big") for k in range(7)])
        assert values["capacity"] == capacity
        assert 0.0 <= values["remaining_charge"] <= capacity  # type: ignore[operator]
        assert 40.0 < values["voltage"] < 56.0  # type: ignore[operator]
        assert abs(values["current"]) <= 55.0  # type: ignore[arg-type]


def test_cell_block_has_15_cells_and_15_sensors(clock) -> None:
    sim = _sim(clock)
    request = ReadRequest(48, *BLOCK_CELLS)
    (reply,) = _reassemble(request, sim.transact(request.encode()))
    assert isinstance(reply, ReadResponse)
    values = decode_block(5000, reply.registers)
    assert values["cell_count"] == 15
    assert values["temperature_count"] == 15
    cells = values["cell_voltages"]
    temps = values["temperatures"]
    assert isinstance(cells, list) and len(cells) == 15
    assert isinstance(temps, list) and len(temps) == 15
    assert reply.registers[16] == 0  # cell 16 unused
    assert all(2.0 <= v <= 4.5 for v in cells)
    assert len(set(temps)) > 1  # sensors differ slightly
    status = decode_block(5042, sim.registers(48, 5042, 2))
    # Module voltage is the sum of the (unquantised) cells, so it is close to the sum of the 0.1 V readings.
    assert abs(status["voltage"] - sum(cells)) <= 15 * 0.05 + 0.05  # type: ignore[operator]


def test_info_block_matches_the_captured_identity(clock) -> None:
    captured = next(v for v in json.loads(VECTORS.read_text()) if v["id"] == "trace-30-5104")
    real = bytes.fromhex(captured["response_hex"])
    sim = _sim(clock)
    ours = b"".join(sim.transact(bytes.fromhex(captured["request_hex"])))
    assert len(ours) == len(real) == 61
    # Serial, versions, model and firmware (registers 5110..5131) are byte-identical to the real pack.
    assert ours[3 + 2 * 6 : -2] == real[3 + 2 * 6 : -2]
    values = decode_block(5104, [int.from_bytes(ours[3 + 2 * k : 5 + 2 * k], "big") for k in range(28)])
    assert values["serial"] == "22RBH4A051020000"
    assert values["model"] == "RBT50LFP48S"
    assert values["firmware"] == "V104"
    assert values["charge_discharge_status"] == 0x00C0
    assert values["status1"] & 0x000E == 0x000E  # type: ignore[operator]
    assert values["status2"] & 0x0200  # type: ignore[operator]


def test_all_packs_share_one_serial_unless_told_otherwise(clock) -> None:
    def serials(sim: BankSimulator) -> set[object]:
        return {decode_block(5110, sim.registers(s, 5110, 8))["serial"] for s in sim.slaves}

    assert serials(_sim(clock)) == {"22RBH4A051020000"}
    assert len(serials(_sim(clock, distinct_serials=True))) == 4


@pytest.mark.parametrize(
    ("start", "words"), [(5034, 1), (0, 1), (5053, 1), (5030, 10), (136, 30), (5000, 48)]
)
def test_unmapped_registers_answer_exception_02(clock, start: int, words: int) -> None:
    sim = _sim(clock)
    request = ReadRequest(48, start, words)
    (event,) = _reassemble(request, sim.transact(request.encode()))
    assert isinstance(event, FrameError)
    assert event.kind is FrameErrorKind.EXCEPTION
    assert event.exception_code == 0x02
    assert event.data == with_crc(bytes((48, 0x83, 0x02)))


def test_too_many_registers_answer_exception_03(clock) -> None:
    sim = _sim(clock)
    frame = with_crc(bytes((48, 3)) + (5000).to_bytes(2, "big") + (126).to_bytes(2, "big"))
    assert sim.transact(frame) == [with_crc(bytes((48, 0x83, 0x03)))]


def test_other_functions_answer_exception_01(clock) -> None:
    sim = _sim(clock)
    write_single = with_crc(bytes((48, 6)) + (5223).to_bytes(2, "big") + (49).to_bytes(2, "big"))
    assert sim.transact(write_single) == [with_crc(bytes((48, 0x86, 0x01)))]


def test_bad_request_crc_gets_no_reply(clock) -> None:
    sim = _sim(clock)
    frame = bytearray(ReadRequest(48, 5042, 7).encode())
    frame[-1] ^= 0x01
    assert sim.transact(bytes(frame)) == []
    # The historic ASCII "ACK" some apps write is just a frame with a bad CRC.
    assert sim.transact(b"main recv data[30] [") == []


@pytest.mark.parametrize("slave", [0x31, 52, 0x01, 0xF7])
def test_ids_not_on_the_bus_stay_silent(clock, slave: int) -> None:
    sim = _sim(clock, batteries=(48,))
    assert sim.handle_write(ReadRequest(slave, 5042, 6).encode()) == []


def test_broadcast_with_one_battery_is_answered_with_its_own_id(clock) -> None:
    sim = _sim(clock, batteries=(48,))
    request = ReadRequest(0xFF, 5042, 7)
    (reply,) = _reassemble(request, sim.transact(request.encode()))
    assert isinstance(reply, ReadResponse)
    assert reply.slave == 48
    assert sim.truth.is_genuine(0xFF, 5042, reply.frame)
    assert sim.truth.is_genuine(48, 5042, reply.frame)
    record = sim.truth.latest(48, 5042)
    assert record is not None and record.request_slave == 0xFF


def test_broadcast_with_four_batteries_collides(clock) -> None:
    sim = _sim(clock)
    request = ReadRequest(0xFF, 5042, 7)
    fragments = sim.transact(request.encode())
    frame = b"".join(fragments)
    assert len(frame) == request.response_length
    assert not crc_ok(frame)
    assert not any(isinstance(e, ReadResponse) for e in _reassemble(request, fragments))
    assert sim.truth.latest(48, 5042) is None
    assert [f.kind for f in sim.truth.faults] == ["collision"]


def test_captured_requests_are_understood(clock) -> None:
    sim = _sim(clock, batteries=(48,))
    vectors = [v for v in json.loads(VECTORS.read_text()) if v["request_hex"]]
    assert len(vectors) > 20
    for vector in vectors:
        request = ReadRequest.decode(bytes.fromhex(vector["request_hex"]))
        fragments = sim.transact(request.encode())
        responder_present = request.slave in (48, 0xFF)
        if not responder_present:
            assert fragments == [], vector["id"]
            continue
        (event,) = _reassemble(request, fragments)
        if block_is_mapped(request.start, request.count):
            assert isinstance(event, ReadResponse), vector["id"]
            assert len(event.frame) == request.response_length
        else:
            assert isinstance(event, FrameError), vector["id"]
            assert event.exception_code == 0x02
        real = vector.get("response_hex")
        if vector["kind"] == "real_capture_exception":
            # Broadcast to register 0 and the read of register 136: byte-identical to the real battery.
            assert b"".join(fragments).hex() == real, vector["id"]


@pytest.mark.parametrize(("mtu", "sizes"), [(23, [20, 20, 20, 13]), (251, [73]), (50, [47, 26])])
def test_fragmentation_follows_the_mtu(clock, mtu: int, sizes: list[int]) -> None:
    sim = _sim(clock, mtu=mtu)
    request = ReadRequest(50, *BLOCK_CELLS)
    fragments = sim.transact(request.encode())
    assert [len(f) for f in fragments] == sizes
    (reply,) = _reassemble(request, fragments)
    assert isinstance(reply, ReadResponse)
    assert sim.truth.is_genuine(50, 5000, reply.frame)


@pytest.mark.parametrize(("words", "expected_ms"), [(6, 146), (7, 148), (28, 192), (34, 204)])
def test_delivery_time_equals_the_read_floor_at_mtu_251(clock, words: int, expected_ms: float) -> None:
    sim = _sim(clock, latency_scale=1.0)
    start = {6: 5042, 7: 5042, 28: 5104, 34: 5000}[words]
    actions = sim.handle_write(ReadRequest(48, start, words).encode())
    assert len(actions) == 1
    assert isinstance(actions[0], Notification)
    assert actions[0].delay == pytest.approx(sim.timing.read_floor(words, 1))
    assert actions[0].delay * 1000 == pytest.approx(expected_ms, abs=1.0)
    assert sim.read_floor(words) == pytest.approx(actions[0].delay)


def test_notifications_come_four_per_connection_interval(clock) -> None:
    sim = _sim(clock, latency_scale=1.0, mtu=23)
    words = 42  # 5100..5141: 89 bytes = 5 notifications at MTU 23
    actions = sim.handle_write(ReadRequest(48, 5100, words).encode())
    timing = sim.timing
    assert len(actions) == notification_count(5 + 2 * words, 23) == 5
    start = timing.reply_start(words)
    expected = [start + timing.connection_interval] * 4 + [start + 2 * timing.connection_interval]
    assert [a.delay for a in actions] == pytest.approx(expected)
    assert actions[-1].delay == pytest.approx(timing.read_floor(words, 5))
    assert sim.read_floor(words) == pytest.approx(actions[-1].delay)


@pytest.mark.parametrize("scale", [0.0, 0.25, 2.0])
def test_latency_scale_multiplies_every_delay(clock, scale: float) -> None:
    sim = _sim(clock, latency_scale=scale)
    (action,) = sim.handle_write(ReadRequest(48, 5000, 34).encode())
    assert action.delay == pytest.approx(sim.timing.read_floor(34, 1) * scale)


def test_the_bus_is_half_duplex(clock) -> None:
    sim = _sim(clock, latency_scale=1.0)
    first = sim.handle_write(ReadRequest(48, 5000, 34).encode())
    second = sim.handle_write(ReadRequest(49, 5042, 6).encode())
    assert second[0].delay == pytest.approx(first[-1].delay + sim.timing.read_floor(6, 1))
    clock.advance(10.0)
    (third,) = sim.handle_write(ReadRequest(49, 5042, 6).encode())
    assert third.delay == pytest.approx(sim.timing.read_floor(6, 1))


def test_exception_replies_are_timed_as_five_byte_frames(clock) -> None:
    sim = _sim(clock, latency_scale=1.0)
    (action,) = sim.handle_write(ReadRequest(48, 5034, 1).encode())
    assert action.delay == pytest.approx(sim.timing.read_floor(0, 1))


def test_transact_stops_at_a_link_drop(clock) -> None:
    sim = _sim(clock)
    sim.faults.inject_next("disconnect")
    actions = sim.handle_write(ReadRequest(48, 5000, 34).encode())
    assert isinstance(actions[-1], LinkDrop)
    sim.faults.inject_next("disconnect")
    fragments = sim.transact(ReadRequest(48, 5000, 34).encode())
    assert 0 < len(b"".join(fragments)) < 73


def test_same_seed_and_clock_give_identical_frames(clock) -> None:
    frames = []
    for _ in range(2):
        sim = _sim(clock, seed=7)
        frames.append(
            [b"".join(sim.transact(ReadRequest(s, *b).encode())) for s in sim.slaves for b in BLOCKS]
        )
    assert frames[0] == frames[1]
    other = _sim(clock, seed=8)
    assert frames[0] != [
        b"".join(other.transact(ReadRequest(s, *b).encode())) for s in other.slaves for b in BLOCKS
    ]


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="slave id"):
        SimConfig(batteries=(0,))
    with pytest.raises(ValueError, match="MTU"):
        SimConfig(mtu=10)
    with pytest.raises(ValueError, match="fault_rate"):
        SimConfig(fault_rate=1.5)
    with pytest.raises(ValueError, match="MAC"):
        SimConfig(address="C4:64")
    assert SimConfig(address="c4:64:e3:38:3d:0e").local_name == "BT-TH-E3383D0E"
    assert math.isclose(SimConfig().late_delay, 2.5)
