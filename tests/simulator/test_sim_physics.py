"""Battery physics: coulomb counting, OCV curve, temperatures, BMS limits, ranges over long runs."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.simulator import BankPhysics, BankSimulator, SimConfig, default_packs, ocv
from services.simulator.physics import DAY, HOUR
from shared.modbus import ReadRequest
from shared.registers import BLOCK_CELLS, BLOCK_INFO, BLOCK_STATUS, check_plausible, decode_block

SLAVES = (48, 49, 50, 51)


def _bank(seed: int = 0, step: float = 5.0) -> BankPhysics:
    return BankPhysics(default_packs(SLAVES), seed=seed, step=step)


def test_ocv_curve_is_monotonic_with_a_plateau_and_two_knees() -> None:
    socs = [i / 1000 for i in range(1001)]
    volts = [ocv(s) for s in socs]
    assert all(b >= a for a, b in itertools.pairwise(volts))
    assert ocv(0.0) <= 2.6 and ocv(1.0) >= 3.45
    assert all(3.2 <= ocv(s) <= 3.36 for s in (0.15, 0.3, 0.5, 0.7, 0.9))
    assert ocv(0.03) - ocv(0.0) > 0.4  # lower knee
    assert ocv(1.0) - ocv(0.95) > 0.1  # upper knee
    assert ocv(-1.0) == ocv(0.0) and ocv(2.0) == ocv(1.0)


def test_soc_is_the_integral_of_the_current() -> None:
    bank = _bank(seed=3)
    start = bank.start + 8 * HOUR  # 18:00 to 24:00
    steps = int(6 * HOUR / bank.step)
    before = {s: bank.reading(s, start).remaining for s in SLAVES}
    charge = dict.fromkeys(SLAVES, 0.0)
    for k in range(steps):
        for slave in SLAVES:
            charge[slave] += bank.reading(slave, start + k * bank.step).current * bank.step / HOUR
    for slave in SLAVES:
        after = bank.reading(slave, start + steps * bank.step).remaining
        assert after - before[slave] == pytest.approx(charge[slave], abs=1e-9)
    assert any(abs(c) > 1.0 for c in charge.values())  # the window really moved charge


def test_soc_integral_holds_through_the_registers(clock) -> None:
    sim = BankSimulator(SimConfig(seed=5, physics_step=5.0), clock=clock)
    step = sim.config.physics_step
    window = int(3 * HOUR / step)

    def status() -> dict[str, object]:
        frame = b"".join(sim.transact(ReadRequest(48, *BLOCK_STATUS).encode()))
        return decode_block(5042, [int.from_bytes(frame[3 + 2 * k : 5 + 2 * k], "big") for k in range(7)])

    first = status()
    counted = 0.0
    for _ in range(window):
        counted += status()["current"] * step / HOUR  # type: ignore[operator]
        clock.advance(step)
    last = status()
    # Registers carry 0.01 A exactly and remaining to 0.001 Ah: only the two roundings remain.
    assert last["remaining_charge"] - first["remaining_charge"] == pytest.approx(counted, abs=0.0011)  # type: ignore[operator]


def test_reading_does_not_depend_on_how_often_it_is_asked() -> None:
    often, once = _bank(seed=11), _bank(seed=11)
    end = often.start + 5 * HOUR + 123.4
    t = often.start
    while t < end:
        for slave in SLAVES:
            often.reading(slave, t)
        t += 17.0
    for slave in SLAVES:
        assert often.reading(slave, end) == once.reading(slave, end)


def test_current_is_shared_with_small_differences() -> None:
    bank = _bank(seed=2)
    t = bank.start + 1 * HOUR  # 11:00, sun up
    currents = [bank.reading(s, t).current for s in SLAVES]
    assert all(c != 0 for c in currents)
    assert len(set(currents)) > 1
    assert max(currents) - min(currents) < 0.15 * max(abs(c) for c in currents)


def test_a_day_charges_by_day_discharges_by_night_and_idles() -> None:
    bank = _bank(seed=0, step=10.0)
    day = [bank.reading(48, bank.start + k * 60.0) for k in range(int(DAY / 60))]
    hours = [((r.sim_time % DAY) / HOUR, r.current) for r in day]
    assert any(c > 2.0 for h, c in hours if 9 <= h <= 15)
    assert any(c < -1.0 for h, c in hours if h >= 19 or h <= 5)
    assert any(c == 0.0 for h, c in hours if h >= 19 or h <= 5)


def test_voltage_follows_soc_at_rest() -> None:
    bank = _bank(seed=4, step=30.0)
    resting = []
    for k in range(int(3 * DAY / 300)):
        for slave in SLAVES:
            reading = bank.reading(slave, bank.start + k * 300.0)
            if reading.current == 0.0:
                resting.append((slave, reading.soc, reading.voltage))
    for slave in SLAVES:
        points = sorted((soc, volts) for s, soc, volts in resting if s == slave)
        assert len(points) > 5
        assert all(b[1] >= a[1] - 1e-9 for a, b in itertools.pairwise(points))


def test_voltage_rises_with_charge_current() -> None:
    bank = _bank(seed=1)
    t = bank.start + HOUR
    reading = bank.reading(48, t)
    assert reading.current > 0
    pack = bank.packs[48]
    rest = sum(ocv(reading.soc + off) for off in pack.cell_offsets)
    assert reading.voltage == pytest.approx(rest + reading.current * pack.resistance)


def test_temperatures_drift_and_sensors_differ() -> None:
    bank = _bank(seed=6, step=30.0)
    temps = [bank.reading(48, bank.start + k * 600.0).temperatures for k in range(int(DAY / 600))]
    firsts = [t[0] for t in temps]
    assert max(firsts) - min(firsts) > 1.0
    assert all(len(set(t)) > 1 for t in temps)
    assert all(-40.0 <= v <= 90.0 for t in temps for v in t)


def test_full_pack_tapers_to_zero_and_reports_fully_charged(clock) -> None:
    sim = BankSimulator(SimConfig(seed=0, physics_step=30.0, speed=1.0), clock=clock)
    clock.advance(4 * HOUR)  # 14:00 on a sunny afternoon for seed 0
    reading = sim.physics.reading(48, sim.sim_time())
    assert reading.soc >= 0.999
    assert reading.current == 0.0
    values = sim.values(48)
    assert values["status2"] & (1 << 11)  # type: ignore[operator]
    info = decode_block(5104, sim.registers(48, *BLOCK_INFO))
    assert info["fully_charged"] is True
    assert info["charge_mosfet_on"] is True and info["discharge_mosfet_on"] is True


def test_empty_pack_stops_discharging() -> None:
    bank = _bank(seed=1, step=30.0)  # seed 1 has a heavy load: the bank runs flat at night
    cut = None
    for k in range(int(4 * DAY / 300)):
        reading = bank.reading(48, bank.start + k * 300.0)
        if reading.discharge_cut:
            cut = reading
            break
    assert cut is not None
    assert cut.current >= 0.0
    assert cut.remaining <= 0.01
    values = bank.values(48, cut.sim_time)
    assert not values["status1"] & (1 << 2)  # type: ignore[operator]
    assert values["charge_discharge_status"] == 0x80
    assert min(cut.cell_voltages) >= 2.0


def test_cycle_count_grows_with_discharged_throughput() -> None:
    bank = _bank(seed=0, step=60.0)
    first = bank.reading(48, bank.start).cycle_count
    later = bank.reading(48, bank.start + 20 * DAY)
    pack = bank.packs[48]
    assert later.cycle_count - first == int(pack.discharged / pack.spec.capacity) > 3


def test_speed_accelerates_simulated_time(clock) -> None:
    sim = BankSimulator(SimConfig(speed=3600.0), clock=clock)
    t0 = sim.sim_time()
    clock.advance(2.0)
    assert sim.sim_time() - t0 == pytest.approx(7200.0)
    assert sim.latency_scale == 1.0  # speed does not touch the link timing
    sim.speed = 1.0  # changing speed keeps simulated time continuous
    assert sim.sim_time() - t0 == pytest.approx(7200.0)
    clock.advance(2.0)
    assert sim.sim_time() - t0 == pytest.approx(7202.0)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(min_value=0, max_value=2**31), days=st.integers(min_value=3, max_value=12))
def test_every_register_stays_in_range_over_long_runs(seed: int, days: int) -> None:
    sim = BankSimulator(SimConfig(seed=seed, physics_step=120.0, speed=1.0), clock=lambda: 0.0)
    for k in range(int(days * DAY / (3 * HOUR))):
        now = k * 3 * HOUR + (seed % 997)  # clock seconds = simulated seconds after the start
        for slave in sim.slaves:
            for start, words in (BLOCK_STATUS, BLOCK_CELLS, BLOCK_INFO):
                values = decode_block(start, sim.registers(slave, start, words, now))
                check_plausible(values)
            reading = sim.physics.reading(slave, sim.sim_time(now))
            assert 0.0 <= reading.remaining <= reading.capacity
            assert abs(reading.current) <= 55.0
            assert all(2.0 <= v <= 4.5 for v in reading.cell_voltages)
            assert all(-40.0 <= v <= 90.0 for v in reading.temperatures)
