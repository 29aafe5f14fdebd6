"""The simulated BT-2's bus answers controllers, DC-DC chargers and inverters at their slave ids through
the same request path as batteries (timing, faults, truth), and takes writes (function 6)."""

from __future__ import annotations

import pytest

from services.reader.simulate import simulator_for_config
from services.simulator import BankSimulator, SimConfig
from services.simulator.faults import FaultKind
from shared.config import load_config
from shared.devices import decode, family
from shared.modbus import ReadRequest, WriteRequest, encode_exception_response, encode_write_response

DEVICES = (("controller", 1), ("dcc", 96), ("inverter", 32))


def _sim(**changes: object) -> BankSimulator:
    return BankSimulator(SimConfig(latency_scale=0.0, batteries=(48,), devices=DEVICES, **changes))  # type: ignore[arg-type]


def _registers(reply: bytes) -> list[int]:
    return [int.from_bytes(reply[3 + 2 * i : 5 + 2 * i], "big") for i in range(reply[2] // 2)]


@pytest.mark.parametrize(("kind", "slave"), DEVICES)
def test_each_device_answers_its_blocks_and_the_truth_is_recorded(kind: str, slave: int) -> None:
    sim = _sim()
    fam = family(kind)
    for block in fam.blocks:
        (reply,) = sim.transact(ReadRequest(slave, block.start, block.words).encode())
        assert reply[:2] == bytes((slave, 3)) and reply[2] == 2 * block.words
        values, dropped = decode(fam, block.start, _registers(reply))
        assert not dropped
        assert sim.truth.is_genuine(slave, block.start, reply)
        truth = sim.truth.latest(slave, block.start)
        assert truth is not None and truth.values == values


def test_a_read_outside_the_family_blocks_is_exception_02() -> None:
    sim = _sim()
    (reply,) = sim.transact(ReadRequest(1, 0x0100, 40).encode())
    assert reply == encode_exception_response(1, 3, 0x02)
    assert sim.transact(ReadRequest(7, 0x0100, 34).encode()) == []  # nobody at slave 7


def test_device_reads_take_the_modelled_time_like_battery_reads() -> None:
    sim = BankSimulator(SimConfig(batteries=(48,), devices=DEVICES))
    actions = sim.handle_write(ReadRequest(1, 0x0100, 34).encode(), now=0.0)
    assert actions and max(a.delay for a in actions) >= sim.timing.reply_start(34)


def test_device_replies_suffer_the_injected_faults() -> None:
    sim = _sim(fault_rate=1.0, fault_kinds=frozenset({FaultKind.BAD_CRC}))
    (reply,) = sim.transact(ReadRequest(96, 0x0100, 30).encode())
    assert not sim.truth.is_genuine(96, 0x0100, reply)
    assert sim.truth.faults[-1].kind == "bad_crc"


def test_writes_go_through_the_models() -> None:
    sim = _sim()
    assert sim.transact(WriteRequest(1, 0x010A, 0).encode()) == [encode_write_response(1, 0x010A, 0)]
    assert sim.devices[1].values(sim.sim_time())["load_on"] is False
    assert sim.transact(WriteRequest(1, 0x010A, 7).encode()) == [encode_exception_response(1, 6, 0x03)]
    assert sim.transact(WriteRequest(1, 0x0100, 1).encode()) == [encode_exception_response(1, 6, 0x02)]
    assert sim.transact(WriteRequest(96, 0x010A, 1).encode()) == [encode_exception_response(96, 6, 0x02)]
    # Batteries stay as they were: they answer no function but 3.
    assert sim.transact(WriteRequest(48, 0x010A, 1).encode()) == [encode_exception_response(48, 6, 0x01)]


def test_config_devices_and_read_settings_reach_the_simulator() -> None:
    config = load_config(
        environ={
            "RENOGY_SIMULATE": "true",
            "RENOGY_SIM_DEVICES": "battery:48,controller:1,dcc:96",
            "RENOGY_SIM_MAX_READ_WORDS": "34",
            "RENOGY_SIM_READ_RESERVED": "true",
        }
    )
    assert config.reader.devices == ["controller:1", "dcc:96"]
    sim = simulator_for_config(config)
    try:
        assert sim.slaves == (48,) and sorted(sim.devices) == [1, 96]
        assert sim.config.max_read_words == 34 and sim.config.read_reserved is True
    finally:
        sim.close()


def test_bad_device_lists_are_refused() -> None:
    with pytest.raises(ValueError, match="not simulated"):
        SimConfig(devices=(("shunt", 1),))
    with pytest.raises(ValueError, match="distinct"):
        SimConfig(batteries=(48,), devices=(("controller", 48),))
