"""The energy integrator: trapezoids, zero crossings, gaps, duplicates, order, persistence form."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.aggregator.energy import EnergyCounter, Step, trapezoid
from tests.support.fuzz import budget


def test_trapezoid_same_sign() -> None:
    assert trapezoid(0, 100, 3600, 100) == (100.0, 0.0)
    assert trapezoid(0, 0, 3600, 200) == (100.0, 0.0)
    assert trapezoid(0, -50, 1800, -150) == (0.0, 50.0)


def test_trapezoid_splits_at_zero_crossing() -> None:
    # +100 W to -100 W over an hour crosses zero at 30 min: two 25 Wh triangles.
    assert trapezoid(0, 100, 3600, -100) == pytest.approx((25.0, 25.0))
    # -300 W to +100 W over 40 min: crossing at 30 min -> out 300*1800/2 J, in 100*600/2 J.
    charged, discharged = trapezoid(0, -300, 2400, 100)
    assert charged == pytest.approx(100 * 600 / 2 / 3600)
    assert discharged == pytest.approx(300 * 1800 / 2 / 3600)


def test_tiny_power_across_zero_never_gives_a_negative_area() -> None:
    charged, discharged = trapezoid(0.0, -10088.801126023463, 415.75, 1.175494351e-38)
    assert charged >= 0 and discharged == pytest.approx(10088.801126023463 * 415.75 / 2 / 3600)


def test_trapezoid_of_empty_or_reversed_interval_is_zero() -> None:
    assert trapezoid(10, 100, 10, 100) == (0.0, 0.0)
    assert trapezoid(10, 100, 5, 100) == (0.0, 0.0)


def test_counter_rules() -> None:
    counter = EnergyCounter()
    assert counter.add(100.0, 360.0, max_gap=60) is Step.FIRST
    assert counter.add(110.0, 360.0, max_gap=60) is Step.INTEGRATED
    assert counter.in_wh == pytest.approx(1.0)
    assert counter.add(110.0, 9999.0, max_gap=60) is Step.DUPLICATE
    assert counter.add(105.0, 9999.0, max_gap=60) is Step.OUT_OF_ORDER
    assert (counter.last_ts, counter.last_power) == (110.0, 360.0)
    assert counter.add(111.0, None, max_gap=60) is Step.NO_POWER
    assert counter.add(200.0, -720.0, max_gap=60) is Step.GAP  # 90 s > 60 s: nothing counted
    assert (counter.in_wh, counter.out_wh) == (pytest.approx(1.0), 0.0)
    assert counter.add(210.0, -720.0, max_gap=60) is Step.INTEGRATED
    assert counter.out_wh == pytest.approx(2.0)
    assert counter.add(270.0, -720.0, max_gap=60) is Step.INTEGRATED  # exactly max_gap still counts


def test_counter_uses_reading_time_not_arrival_order() -> None:
    counter = EnergyCounter()
    for ts in (0.0, 10.0, 20.0):
        counter.add(ts, 360.0, max_gap=60)
    counter.add(15.0, 360.0, max_gap=60)  # a delayed replay lands nowhere: no double count
    assert counter.in_wh == pytest.approx(2.0)


def test_raise_to_takes_the_larger_value_only() -> None:
    counter = EnergyCounter(10.0, 5.0)
    assert counter.raise_to(8.0, 4.0) is False
    assert counter.raise_to(10.0 + 1e-9, None) is False  # below the tolerance: a rounded copy of itself
    assert counter.raise_to(12.0, math.nan) is True
    assert (counter.in_wh, counter.out_wh) == (12.0, 5.0)


def test_json_round_trip_and_validation() -> None:
    counter = EnergyCounter(1.5, 2.5, 100.0, -20.0)
    assert EnergyCounter.from_json(counter.to_json()) == counter
    for bad in (
        {"in_wh": -1, "out_wh": 0},
        {"in_wh": "1", "out_wh": 0},
        {"out_wh": 1},
        [],
        {"in_wh": 1, "out_wh": 1, "last_ts": 5},
        {"in_wh": 1, "out_wh": True},
    ):
        with pytest.raises(ValueError):
            EnergyCounter.from_json(bad)


samples = st.lists(
    st.tuples(
        st.floats(0, 1_000, allow_nan=False),
        st.one_of(st.none(), st.floats(-40_000, 40_000, allow_nan=False)),
    ),
    max_size=60,
)


@settings(max_examples=budget(300))
@given(samples, st.floats(1, 500))
def test_random_sequences_never_decrease_a_counter(
    sequence: list[tuple[float, float | None]], gap: float
) -> None:
    counter = EnergyCounter()
    before = (0.0, 0.0)
    for ts, power in sequence:
        counter.add(ts, power, max_gap=gap)
        assert counter.in_wh >= before[0] and counter.out_wh >= before[1]
        assert counter.in_wh >= 0 and counter.out_wh >= 0
        assert math.isfinite(counter.in_wh) and math.isfinite(counter.out_wh)
        before = (counter.in_wh, counter.out_wh)


@settings(max_examples=budget(200))
@given(
    st.floats(-30_000, 30_000, allow_nan=False), st.integers(2, 200), st.floats(0.1, 60), st.floats(1e6, 2e9)
)
def test_constant_power_integrates_exactly(power: float, count: int, step: float, start: float) -> None:
    counter = EnergyCounter()
    for index in range(count):
        counter.add(start + index * step, power, max_gap=60)
    # The timestamps themselves carry the float error of start + i * step.
    elapsed = (start + (count - 1) * step) - start
    expected = abs(power) * elapsed / 3600
    got = counter.in_wh if power > 0 else counter.out_wh
    other = counter.out_wh if power > 0 else counter.in_wh
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert other == 0.0


@settings(max_examples=budget(300))
@given(st.floats(0.001, 20_000), st.floats(0.001, 20_000), st.floats(0.001, 3_600), st.booleans())
def test_zero_crossing_conserves_the_triangles(a: float, b: float, dt: float, rising: bool) -> None:
    p0, p1 = (-a, b) if rising else (a, -b)
    charged, discharged = trapezoid(0.0, p0, dt, p1)
    # Triangles either side of the crossing at t = dt * a / (a + b).
    pos, neg = (b, a) if rising else (a, b)
    assert charged == pytest.approx(pos * pos * dt / (2 * (a + b)) / 3600, rel=1e-9)
    assert discharged == pytest.approx(neg * neg * dt / (2 * (a + b)) / 3600, rel=1e-9)
    # The net energy equals the signed trapezoid.
    assert charged - discharged == pytest.approx((p0 + p1) / 2 * dt / 3600, rel=1e-9, abs=1e-12)
