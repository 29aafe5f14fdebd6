"""Wall-clock steps of whole processes (libfaketime): energy keeps counting, values stay fresh.

A Pi has no RTC: fake-hwclock restores a stale time at boot and NTP steps it later, or the clock runs
ahead and NTP steps it back. The reader and the aggregator run under libfaketime with one shared
offset file (one Pi, one clock), and the test moves it: +2 years, back to the true time, then 120 s
back. Monotonic clocks are left alone (FAKETIME_DONT_FAKE_MONOTONIC), as an NTP step leaves them.
The energy counted across all of it must equal the simulator's truth within 1 %, each step is logged
with its size, and the client keeps receiving fresh values.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from functools import partial
from pathlib import Path

import orjson
import pytest

from tests.proof.energy_truth import audit_energy
from tests.proof.support import (
    SLAVES,
    STACK_TIMING,
    ClientWatch,
    ProofStack,
    counted_after,
    counter_of,
    energy_decreases_mqtt,
    mosquitto_stack,
    proof_scale,
    reading_messages,
    record_figures,
    write_figures,
)
from tests.support.brokers import MOSQUITTO

LIBFAKETIME = next(
    (
        p
        for p in (
            Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"),
            Path("/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"),
            Path("/usr/lib/faketime/libfaketime.so.1"),
        )
        if p.exists()
    ),
    None,
)
SITE = Path(__file__).resolve().parents[1] / "support" / "faketime_site"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(MOSQUITTO is None, reason="needs Mosquitto"),
    pytest.mark.skipif(LIBFAKETIME is None, reason="needs libfaketime (apt-get install faketime)"),
]

SPEED = 10.0
YEARS_2 = 2 * 365 * 86400
STEP_SIZE = re.compile(r"stepped by ([+-][0-9.]+) s")


def step_sizes(lines: list[str]) -> list[float]:
    return [float(found.group(1)) for line in lines if (found := STEP_SIZE.search(line))]


STEPS = (("+2y", YEARS_2), ("+0", -YEARS_2), ("-120", -120))
CLOCK_ENV = {
    "RENOGY_POLL_INTERVAL": "1",
    **STACK_TIMING,
    "RENOGY_SIM_SEED": "4000",
    "RENOGY_SIM_SPEED": str(SPEED),
    "RENOGY_SAVE_INTERVAL": "2",  # saves during every phase: nothing from the future may stay on disk
}


def faked(stack: ProofStack, offset_file: Path) -> None:
    for name in ("reader", "aggregator"):
        stack[name].env.update(
            {
                "LD_PRELOAD": str(LIBFAKETIME),
                "FAKETIME_TIMESTAMP_FILE": str(offset_file),
                "FAKETIME_NO_CACHE": "1",
                "FAKETIME_DONT_FAKE_MONOTONIC": "1",
                "PYTHONPATH": str(SITE),
            }
        )


def set_offset(offset_file: Path, spec: str) -> None:
    """Atomically: libfaketime re-reads the file on every clock call, and a half-written one reads as +0."""
    tmp = offset_file.with_suffix(".tmp")
    tmp.write_text(f"{spec}\n")
    os.replace(tmp, offset_file)


def fresh_power_since(watch: ClientWatch, since: float) -> bool:
    return any(t > since and o == "battery_48_power" and v is not None for t, o, v in watch.states)


@pytest.mark.timeout(proof_scale(150, 900))
async def test_clock_steps_of_the_whole_host(tmp_path: Path) -> None:
    phase = proof_scale(8.0, 120.0)
    offset_file = tmp_path / "faketime.rc"
    offset_file.write_text("+0\n")
    fresh_after_step: list[bool] = []
    filters = ("renogy/bt2/#", "renogy/device/#")
    prepare = partial(faked, offset_file=offset_file)
    async with mosquitto_stack(tmp_path, CLOCK_ENV, *filters, prepare=prepare) as (_, stack, probe, watch):
        started = time.monotonic()
        await probe.wait_for(lambda: counted_after(probe, started + 1), 30, "counting")
        before = {s: counter_of(probe, s) for s in SLAVES}
        for spec, _ in STEPS:
            set_offset(offset_file, spec)
            stepped = time.monotonic()
            await asyncio.sleep(phase)  # running with the stepped clock: an input of the experiment
            fresh_after_step.append(fresh_power_since(watch, stepped + 3))
        mark = time.monotonic()
        await probe.wait_for(lambda: counted_after(probe, mark + 1), 30, "counting at the end")
        after = {s: counter_of(probe, s) for s in SLAVES}
    energy = audit_energy(reading_messages(probe), stack.truth_logs, before, after, SPEED)
    log = stack["aggregator"].log()
    host_steps = [line for line in log.splitlines() if "this host's clock stepped" in line]
    reader_steps = [line for line in log.splitlines() if "reader's wall clock stepped" in line]
    saved = orjson.loads((stack.state_dir / "aggregator-default.json").read_bytes())
    anchors = [b["counter"]["last_ts"] for b in saved["batteries"].values() if b["counter"]["last_ts"]]
    figures = {
        "steps": [spec for spec, _ in STEPS],
        "phase_s": phase,
        **energy.figures(),
        "host_step_lines": len(host_steps),
        "reader_step_lines": len(reader_steps),
        "fresh_values_after_each_step": fresh_after_step,
        "latest_anchor_ahead_of_real_time_s": round(max(anchors) - time.time(), 1) if anchors else None,
        "unhandled_exceptions": sum(len(v) for v in stack.unhandled().values()),
    }
    write_figures("clock_steps", figures)
    assert not energy.problems(), (energy.problems(), figures)
    for _, size in STEPS:
        # Wall and monotonic time are read a moment apart: on a loaded machine a step's logged size is
        # off by a few tenths of a second, so compare numbers, not their text.
        assert any(abs(logged - size) < 1.0 for logged in step_sizes(host_steps)), (size, host_steps)
        assert any(abs(logged - size) < 1.0 for logged in step_sizes(reader_steps)), (size, reader_steps)
    # Not spammed: a few lines per step. libfaketime (FAKETIME_NO_CACHE) now and then hands one clock
    # call the real time (seen: a -2y/+2y pair 17 ms apart inside one phase), and the aggregator
    # rightly logs such a pair, so the bound allows for a couple of them.
    assert len(host_steps) <= 4 * len(STEPS) and len(reader_steps) <= 4 * len(STEPS), (
        host_steps,
        reader_steps,
    )
    assert all(fresh_after_step), fresh_after_step
    assert anchors and max(anchors) <= time.time() + 5  # nothing from the future on disk
    assert not energy_decreases_mqtt(probe)
    assert not stack.unhandled(), stack.unhandled()
    assert not stack.exits, stack.exits
    record_figures("clock_steps", figures)
