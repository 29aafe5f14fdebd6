"""Energy and freshness when wall clocks step (a Pi without RTC: fake-hwclock at boot, NTP later).

The core gets the aggregator's wall time (`now`) and monotonic time (`mono`) separately, and every
reading carries the reader's wall `ts`, its boot id and its monotonic time, so these tests step each
wall clock on its own and check that energy keeps counting and values are neither frozen nor stale.
"""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.aggregator.energy import EnergyCounter, Step
from shared.payloads import parse_device_config
from tests.aggregator.support import make_core, reading

T0 = 1_795_000_000.0  # a 2026 wall time
BOOT = "b" * 32
POLL = 30.0
YEARS_2 = 2 * 365 * 86400.0
VOLTAGE, CURRENT = 52.0, -10.0
POWER = VOLTAGE * CURRENT


def at(slave: int, ts: float, mono: float, boot: str = BOOT, **kwargs):  # type: ignore[no-untyped-def]
    return reading(slave, ts, boot_id=boot, mono=mono, voltage=VOLTAGE, current=CURRENT, **kwargs)


def out_wh(core, device: str = "battery_48") -> float:  # type: ignore[no-untyped-def]
    return core.batteries[device].counter.out_wh


# Offsets of a wall clock against true time at each poll: 0, a jump ahead, NTP stepping back, small steps.
offsets = st.lists(
    st.sampled_from([0.0, YEARS_2, -120.0, 3600.0, -3600.0, 299.0, 5.0]), min_size=2, max_size=40
)


@settings(max_examples=200, deadline=None)
@given(reader_offsets=offsets, host_offsets=offsets)
def test_energy_counts_whatever_either_wall_clock_does(
    reader_offsets: list[float], host_offsets: list[float]
) -> None:
    """Constant power for n polls is n - 1 intervals of energy, through any sequence of wall steps."""
    core = make_core(max_gap=3 * POLL, stale_after=3 * POLL)
    polls = max(len(reader_offsets), len(host_offsets))
    for i in range(polls):
        true_time = T0 + i * POLL
        reader_wall = true_time + reader_offsets[min(i, len(reader_offsets) - 1)]
        host_wall = true_time + host_offsets[min(i, len(host_offsets) - 1)]
        core.accept(at(48, reader_wall, mono=100.0 + i * POLL), host_wall, 5_000.0 + i * POLL)
    expected = -POWER * POLL * (polls - 1) / 3600
    assert out_wh(core) == pytest.approx(expected, rel=1e-9)
    assert core.batteries["battery_48"].counter.in_wh == 0.0


def test_two_years_ahead_then_ntp_keeps_counting_on_one_host() -> None:
    """The issue's case: reader and aggregator share a clock that runs 2 years ahead, then NTP steps it back."""
    core = make_core()
    mono = 0.0
    for i in range(4):  # 2 years ahead
        ts = T0 + YEARS_2 + i * POLL
        core.accept(at(48, ts, mono), ts)
        mono += POLL
    for i in range(4):  # NTP corrected it
        ts = T0 + 4 * POLL + i * POLL
        core.accept(at(48, ts, mono), ts)
        mono += POLL
    assert out_wh(core) == pytest.approx(-POWER * 7 * POLL / 3600)
    assert core.stats.steps["out_of_order"] == 0
    # Nothing in the future is saved: the anchor was moved by the later readings.
    snapshot = core.snapshot(T0 + 8 * POLL)
    assert snapshot["batteries"]["battery_48"]["counter"]["last_ts"] <= T0 + 8 * POLL


def test_a_wall_step_of_the_reader_is_logged_once_with_its_size(caplog: pytest.LogCaptureFixture) -> None:
    core = make_core()
    with caplog.at_level(logging.WARNING):
        for i in range(6):
            step = YEARS_2 if i >= 3 else 0.0
            for slave in (48, 49, 50, 51):
                ts = T0 + i * POLL + step
                core.accept(at(slave, ts, 100.0 + i * POLL), ts)
    steps = [r.getMessage() for r in caplog.records if "clock stepped" in r.getMessage()]
    assert len(steps) == 1, steps
    assert "+63072000" in steps[0]


def test_backward_step_does_not_freeze_values() -> None:
    """A 120 s step back: the next reading's values are shown at once (they were held for 120 s)."""
    core = make_core(stale_after=90.0)
    core.accept(at(48, T0, 100.0, remaining=40.0), T0)
    core.accept(at(48, T0 + 30 - 120, 130.0, remaining=39.0), T0 + 30 - 120)
    view = core.view(core.batteries["battery_48"], T0 + 30 - 120)
    assert view.remaining_charge == 39.0


def test_values_go_stale_after_stale_after_even_when_the_host_clock_steps_back() -> None:
    core = make_core(stale_after=90.0)
    core.accept(at(48, T0, 100.0), T0, 100.0)
    # 100 s later on the monotonic clock, but the wall clock was stepped back by 120 s.
    out = core.pending(T0 - 20.0, 200.0)
    battery = core.batteries["battery_48"]
    assert core.view(battery, 200.0).voltage is None
    assert any(item.kind == "state" for item in out)


def test_a_reading_ahead_of_the_host_clock_is_not_shown_and_freezes_nothing() -> None:
    """ts = now + 299 s (the old limit was 300 s): refused for display; the next good reading shows."""
    core = make_core(stale_after=90.0)
    core.accept(at(48, T0, 100.0, remaining=40.0), T0)
    core.accept(at(48, T0 + 30 + 299, 130.0, remaining=20.0), T0 + 30)
    battery = core.batteries["battery_48"]
    assert core.view(battery, T0 + 30).remaining_charge == 40.0  # the ahead one is not shown
    core.accept(at(48, T0 + 60, 160.0, remaining=38.0), T0 + 60)
    assert core.view(battery, T0 + 60).remaining_charge == 38.0
    assert out_wh(core) == pytest.approx(-POWER * 60 / 3600)  # and its energy counted
    assert core.stats.clock["display_refused"] == 1


def test_ahead_refusal_uses_the_configured_margin() -> None:
    core = make_core()
    assert core.settings.max_ahead == 30.0
    core.accept(at(48, T0 + 29, 100.0, remaining=41.0), T0, 100.0)
    assert core.view(core.batteries["battery_48"], 100.0).remaining_charge == 41.0


def test_a_reader_restart_is_a_gap_and_the_new_boot_wins() -> None:
    core = make_core()
    core.accept(at(48, T0, 5000.0, remaining=40.0), T0, 1.0)
    step = core.accept(at(48, T0 + 30, 2.0, boot="c" * 32, remaining=39.0), T0 + 30, 31.0)
    assert step is Step.RESTART
    assert out_wh(core) == 0.0
    assert core.view(core.batteries["battery_48"], 31.0).remaining_charge == 39.0
    assert core.accept(at(48, T0 + 60, 32.0, boot="c" * 32), T0 + 60, 61.0) is Step.INTEGRATED


def test_an_anchor_in_the_future_is_never_saved_nor_resumed() -> None:
    core = make_core(started=T0)
    core.accept(reading(48, T0 + 200), T0 + 200)  # wall-only reading, a host clock ahead by 200 s
    snapshot = core.snapshot(T0)  # the clock is back
    assert snapshot["batteries"]["battery_48"]["counter"]["last_ts"] is None
    restored = make_core(started=T0)
    document = {
        "batteries": {
            "battery_48": {
                "bt2": "c464e3383d0e",
                "slave_id": 48,
                "counter": {"in_wh": 1.0, "out_wh": 2.0, "last_ts": T0 + YEARS_2, "last_power": -10.0},
            }
        }
    }
    restored.restore(document)
    counter = restored.batteries["battery_48"].counter
    assert (counter.in_wh, counter.out_wh, counter.last_ts) == (1.0, 2.0, None)
    # So the first reading counts from here on instead of being out of order for two years.
    restored.accept(reading(48, T0 + 10), T0 + 10)
    assert restored.accept(reading(48, T0 + 40), T0 + 40) is Step.INTEGRATED


def test_wall_only_readings_recover_from_a_big_step_back() -> None:
    """Readers without monotonic time (older versions): a step back by more than max_gap restarts counting."""
    counter = EnergyCounter()
    assert counter.add(T0 + YEARS_2, -500.0, 90.0) is Step.FIRST
    assert counter.add(T0, -500.0, 90.0) is Step.CLOCK_STEP
    assert counter.add(T0 + 30, -500.0, 90.0) is Step.INTEGRATED
    assert counter.out_wh == pytest.approx(500 * 30 / 3600)


def test_a_forged_anchor_cannot_stop_counting() -> None:
    """A monotonic time far ahead in the anchor (a forged copy): counting restarts rather than stops."""
    counter = EnergyCounter(0.0, 0.0, T0, -500.0, BOOT, 1e12)
    assert counter.add(T0 + 30, -500.0, 90.0, boot=BOOT, mono=100.0) is Step.CLOCK_STEP
    assert counter.add(T0 + 60, -500.0, 90.0, boot=BOOT, mono=130.0) is Step.INTEGRATED


def test_duplicates_and_replays_by_monotonic_time() -> None:
    counter = EnergyCounter()
    counter.add(T0, -500.0, 90.0, boot=BOOT, mono=100.0)
    assert counter.add(T0 + 30, -500.0, 90.0, boot=BOOT, mono=130.0) is Step.INTEGRATED
    assert counter.add(T0 + 30, -500.0, 90.0, boot=BOOT, mono=130.0) is Step.DUPLICATE
    assert counter.add(T0 + 0, -500.0, 90.0, boot=BOOT, mono=100.0) is Step.OUT_OF_ORDER
    assert counter.out_wh == pytest.approx(500 * 30 / 3600)


def test_the_anchor_with_boot_and_monotonic_time_round_trips() -> None:
    counter = EnergyCounter(1.0, 2.0, T0, -500.0, BOOT, 123.5)
    assert EnergyCounter.from_json(counter.to_json()) == counter
    with pytest.raises(ValueError):
        EnergyCounter.from_json({**counter.to_json(), "last_mono": None})


def test_device_config_still_valid_with_monotonic_readings() -> None:
    core = make_core()
    core.accept(at(48, T0, 1.0), T0, 1.0)
    out = core.pending(T0, 1.0)
    config = next(item for item in out if item.kind == "config" and item.device_id == "battery_48")
    assert parse_device_config(config.payload).device.id == "battery_48"
