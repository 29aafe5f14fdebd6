"""Controllers and DC-DC chargers on the same bus as batteries charge and draw the simulated packs:
what the controller reports it delivered (and its load drew) over time is what the packs gained (or
lost), a full bank floats, and it all depends only on the seed and the simulated time."""

from __future__ import annotations

from typing import Any

import pytest

from services.simulator import BankSimulator, SimConfig
from services.simulator.physics import HOUR
from shared.devices import decode, family
from shared.modbus import ReadRequest, WriteRequest, encode_write_response
from shared.registers import BLOCK_STATUS, decode_block
from tests.simulator.conftest import ManualClock

STEP = 5.0  # the physics grid (SimConfig.physics_step)
CONTROLLER = family("controller")
DCC = family("dcc")


def _sim(clock: ManualClock, start_hour: float, seed: int = 2, **changes: Any) -> BankSimulator:
    changes.setdefault("devices", (("controller", 1),))
    changes.setdefault("batteries", (48,))
    config = SimConfig(latency_scale=0.0, seed=seed, sim_start=start_hour * HOUR, **changes)
    return BankSimulator(config, clock=clock)


def _words(frame: bytes) -> list[int]:
    return [int.from_bytes(frame[3 + 2 * k : 5 + 2 * k], "big") for k in range(frame[2] // 2)]


def _battery(sim: BankSimulator, slave: int = 48) -> dict[str, Any]:
    (frame,) = sim.transact(ReadRequest(slave, *BLOCK_STATUS).encode())
    return decode_block(BLOCK_STATUS[0], _words(frame))


def _controller(sim: BankSimulator, slave: int = 1) -> dict[str, Any]:
    (frame,) = sim.transact(ReadRequest(slave, 0x0100, 34).encode())
    values, dropped = decode(CONTROLLER, 0x0100, _words(frame))
    assert not dropped
    return values


def test_controller_charging_raises_the_bank_by_its_current_times_time(clock: ManualClock) -> None:
    sim = _sim(clock, 11.0)
    first = _battery(sim)
    charged = drawn = house = 0.0
    for _ in range(int(0.5 * HOUR / STEP)):  # every grid step of half an hour around noon
        reading = _controller(sim)
        assert reading["charging_state"] == "mppt"
        charged += reading["charging_current"] * STEP / HOUR
        drawn += reading["load_current"] * STEP / HOUR
        house += sim.physics.house_load(sim.sim_time()) * STEP / HOUR
        clock.advance(STEP)
    gained = _battery(sim)["remaining_charge"] - first["remaining_charge"]
    assert charged > 2.0 and drawn > 0.1  # the window really charged, and the load really drew
    # Registers carry 0.01 A and 0.001 Ah: only their rounding is left.
    assert gained == pytest.approx(charged - drawn - house, abs=0.01)


def test_the_load_drains_the_bank_while_it_is_on(clock: ManualClock) -> None:
    on, off = _sim(clock, 1.0), _sim(clock, 1.0)  # the same seed and hour: the same house and night
    assert off.transact(WriteRequest(1, 0x010A, 0).encode()) == [encode_write_response(1, 0x010A, 0)]
    before = {sim: _battery(sim)["remaining_charge"] for sim in (on, off)}
    drawn = 0.0
    for _ in range(int(HOUR / STEP)):
        lit, dark = _controller(on), _controller(off)
        assert lit["pv_power"] == 0 and lit["load_on"] is True and lit["load_current"] > 0.4
        assert dark["load_on"] is False and dark["load_current"] == 0
        drawn += lit["load_current"] * STEP / HOUR
        clock.advance(STEP)
    lost = {sim: before[sim] - _battery(sim)["remaining_charge"] for sim in (on, off)}
    # What the switched-on load drew is the difference; the 0.01 A steps of the pack current remain.
    assert lost[on] - lost[off] == pytest.approx(drawn, abs=0.012)
    assert drawn > 0.4


def test_a_full_bank_floats_and_takes_no_charge(clock: ManualClock) -> None:
    sim = _sim(clock, 12.0)
    for pack in sim.physics.packs.values():
        pack.remaining = pack.spec.capacity  # charged to the top before the first step
    clock.advance(2 * STEP)
    remaining = _battery(sim)["capacity"]
    for _ in range(int(0.25 * HOUR / STEP)):
        reading, battery = _controller(sim), _battery(sim)
        assert reading["charging_state"] == "floating" and reading["battery_soc"] == 100
        # The bank takes nothing: the PV covers what the loads draw (a cloud lets them draw a little).
        assert battery["current"] <= 0 and battery["remaining_charge"] <= remaining
        remaining = battery["remaining_charge"]
        clock.advance(STEP)
    assert reading["pv_power"] > 0  # noon: the sun is there, the bank just does not want it


def test_controller_battery_values_follow_the_packs_and_a_dcc_scales_them(clock: ManualClock) -> None:
    sim = _sim(clock, 12.5, batteries=(48, 49), devices=(("controller", 1), ("dcc", 96)))
    clock.advance(600.0)
    packs = [_battery(sim, slave) for slave in (48, 49)]
    volts = sum(p["voltage"] for p in packs) / 2
    soc = sum(p["remaining_charge"] for p in packs) / sum(p["capacity"] for p in packs)
    reading = _controller(sim)
    assert reading["battery_voltage"] == pytest.approx(volts, abs=0.06)
    assert reading["battery_soc"] == round(100 * soc)
    (frame,) = sim.transact(ReadRequest(96, 0x0100, 30).encode())
    dcc, dropped = decode(DCC, 0x0100, _words(frame))
    # A 12 V charger on the 15-cell bank reports in its 12 V frame: x 4/15 volts, the same watts.
    assert not dropped and dcc["battery_voltage"] == pytest.approx(volts * 4 / 15, abs=0.06)
    assert dcc["battery_soc"] == round(100 * soc)


def test_coupled_readings_depend_only_on_seed_and_time(clock: ManualClock) -> None:
    devices = (("controller", 1), ("dcc", 96))
    often, once = _sim(clock, 8.0, devices=devices), _sim(clock, 8.0, devices=devices)
    for k in range(int(HOUR / 7.0)):  # one read the other never makes, in a changing order
        if k % 2:
            often.devices[96].values(often.sim_time())
        often.devices[1].values(often.sim_time())
        _battery(often)
        clock.advance(7.0)
    assert once.devices[96].values(once.sim_time()) == often.devices[96].values(often.sim_time())
    assert once.devices[1].values(once.sim_time()) == often.devices[1].values(often.sim_time())
    assert _battery(once) == _battery(often)
