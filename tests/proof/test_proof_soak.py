"""Soaks of the whole stack on the simulator, time accelerated: reader, aggregator and gateway as processes,
a real broker, and an aioesphomeapi client subscribed like Home Assistant.

- Fault soak: 10 % of requests hit by every kind of simulator fault, mixed; every published reading
  is audited against the simulator's truth log, every value the client saw against what genuine
  replies could produce.
- Day soak: a simulated day at the default 30 s poll interval, minutes of wall time; memory, file
  descriptors and tasks of each service stay flat and the energy counters add up.

Short forms run in `make test`; `make soak` runs the long ones (RENOGY_PROOF=long).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.simulator import ALL_FAULT_KINDS, REQUEST_FAULTS
from tests.conftest import Broker
from tests.proof.support import (
    ENERGY_KEYS,
    FAST_ENV,
    SLAVES,
    CycleCounter,
    Sampler,
    Truth,
    ValueBook,
    audit_reading,
    cycle_records,
    energy_decreases_mqtt,
    health_messages,
    proof_scale,
    proof_stack,
    reading_messages,
    record_figures,
    recovery,
    write_figures,
)
from tests.support.probe import MqttProbe

pytestmark = pytest.mark.slow

PROBE_FILTERS = (
    "renogy/bt2/+/battery/+/reading",
    "renogy/bridge/+/+/health",
    "renogy/bridge/+/+/state",
    "renogy/device/+/state",
)


async def run_cycles(probe: MqttProbe, cycles: int, timeout: float) -> float:
    counter = CycleCounter(probe)
    started = time.monotonic()
    await probe.wait_for(lambda: counter.total >= cycles, timeout, f"{cycles} reader cycles")
    return time.monotonic() - started


# --- fault soak ------------------------------------------------------------------------------------------------


# RENOGY_SOAK_CYCLES overrides the size (e.g. a 1,000-cycle run while investigating).
SOAK_CYCLES = int(os.environ.get("RENOGY_SOAK_CYCLES") or proof_scale(120, 10_000))


@pytest.mark.timeout(120 + SOAK_CYCLES)
async def test_fault_soak(mosquitto: Broker, tmp_path: Path) -> None:
    cycles = SOAK_CYCLES
    env = {**FAST_ENV, "RENOGY_SIM_FAULT_RATE": "0.1", "RENOGY_SIM_SEED": "1000"}
    async with proof_stack(mosquitto.url, tmp_path, env, *PROBE_FILTERS) as (stack, probe, watch):
        wall = await run_cycles(probe, cycles, 60 + cycles)
        healths_before_stop = health_messages(probe, "reader")
    # Stopped: every log and truth record is complete now.
    truth = Truth.load(stack.truth_logs)
    readings = reading_messages(probe)
    problems = {i: p for i, r in enumerate(readings) if (p := audit_reading(r, truth))}
    wrong_values = sum(len(p) for p in problems.values())
    processes = cycle_records(health_messages(probe, "reader"), readings, truth)
    rec = recovery(processes)
    book = ValueBook.from_truth(truth)
    unproduced = watch.unproduced(book)
    energy_bad = energy_decreases_mqtt(probe) + watch.energy_decreases()
    unhandled = stack.unhandled()
    kinds = truth.fault_kinds()
    requests = truth.records + sum(v for k, v in kinds.items() if k in {str(f) for f in REQUEST_FAULTS})
    late_discarded = sum(
        max((int(h.get("late_replies", 0)) for h in p_healths), default=0)
        for p_healths in _per_process(healths_before_stop)
    )
    figures: dict[str, Any] = {
        "cycles": sum(len(p) for p in processes),
        "batteries": len(SLAVES),
        "wall_s": round(wall, 1),
        "cycles_per_s": round(cycles / wall, 1),
        "requests": requests,
        "request_faults": sum(v for k, v in kinds.items() if k in {str(f) for f in REQUEST_FAULTS}),
        "fault_share": round(
            sum(v for k, v in kinds.items() if k in {str(f) for f in REQUEST_FAULTS}) / max(1, requests), 4
        ),
        "connect_faults": sum(v for k, v in kinds.items() if k not in {str(f) for f in REQUEST_FAULTS}),
        "faults_by_kind": kinds,
        "readings_published": len(readings),
        "readings_complete_share": round(
            sum(1 for r in readings if r.get("complete")) / max(1, len(readings)), 4
        ),
        "wrong_values_published": wrong_values,
        "unhandled_exceptions": sum(len(v) for v in unhandled.values()),
        "fault_episodes": rec.episodes,
        "cycles_to_recover": dict(sorted(rec.cycles_to_recover.items())),
        "worst_cycles_to_recover": rec.worst,
        "clean_cycles_incomplete": len(rec.clean_but_incomplete),
        "reader_restarts_adapter_gone": sum(1 for e in stack.exits if e.service == "reader" and e.code == 4),
        "other_exits": [
            f"{e.service}:{e.code}" for e in stack.exits if not (e.service == "reader" and e.code == 4)
        ],
        "late_replies_discarded": late_discarded,
        "client_states_seen": len(watch.states),
        "client_values_not_produced_by_the_simulator": len(unproduced),
        "energy_decreases": len(energy_bad),
        "truth_records": truth.records,
    }
    write_figures("fault_soak", figures)
    assert not problems, [readings[i]["slave_id"] for i in problems][:5] and list(problems.values())[:5]
    assert not unhandled, unhandled
    assert not rec.clean_but_incomplete, rec.clean_but_incomplete[:10]
    assert rec.worst <= 1, rec.cycles_to_recover
    assert rec.episodes > 0
    assert not unproduced, unproduced[:10]
    assert not energy_bad, energy_bad[:10]
    assert not figures["other_exits"], figures["other_exits"]
    assert 0.05 <= figures["fault_share"] <= 0.15
    expected_kinds = {str(k) for k in (ALL_FAULT_KINDS if cycles >= 1000 else REQUEST_FAULTS)}
    if cycles >= 1000:
        assert set(kinds) >= expected_kinds, kinds
    else:
        assert len(set(kinds) & expected_kinds) >= 5, kinds
    record_figures("fault_soak", figures)


def _per_process(healths: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    out: list[list[dict[str, Any]]] = []
    last = 0
    for health in healths:
        cycles = int(health.get("cycles", 0))
        if not out or cycles < last:
            out.append([])
        out[-1].append(health)
        last = cycles
    return out


# --- a simulated day ----------------------------------------------------------------------------------------

DAY_POLL_S = 0.05  # wall seconds per cycle; x SPEED = the default 30 s poll interval in simulated time
DAY_SPEED = 600.0


def _series_figures(samples: list[Any], warmup_fraction: float = 0.2) -> dict[str, Any]:
    """RSS growth and FD range after the warm-up (median of the first and last tenth, in MB)."""
    if len(samples) < 5:
        return {"samples": len(samples)}
    steady = samples[int(len(samples) * warmup_fraction) :]
    tenth = max(1, len(steady) // 10)
    first = statistics.median(s.rss_kb for s in steady[:tenth]) / 1024
    last = statistics.median(s.rss_kb for s in steady[-tenth:]) / 1024
    return {
        "samples": len(samples),
        "rss_start_mb": round(samples[0].rss_kb / 1024, 1),
        "rss_after_warmup_mb": round(first, 1),
        "rss_end_mb": round(last, 1),
        "rss_growth_mb": round(last - first, 2),
        "rss_max_mb": round(max(s.rss_kb for s in samples) / 1024, 1),
        "fds_after_warmup": steady[0].fds,
        "fds_end": steady[-1].fds,
        "fds_range": [min(s.fds for s in steady), max(s.fds for s in steady)],
        "cpu_s": round(samples[-1].cpu_s - samples[0].cpu_s, 1),
    }


@pytest.mark.timeout(proof_scale(120, 3 * 3600))
async def test_day_soak(mosquitto: Broker, tmp_path: Path) -> None:
    days = proof_scale(1, 1)
    cycles = proof_scale(240, days * 2880)  # short: two simulated hours
    env = {
        **FAST_ENV,
        "RENOGY_POLL_INTERVAL": str(DAY_POLL_S),
        "RENOGY_SIM_SPEED": str(DAY_SPEED),
        "RENOGY_SIM_FAULT_RATE": "0",
    }
    async with proof_stack(mosquitto.url, tmp_path, env, *PROBE_FILTERS) as (stack, probe, watch):
        sampler = Sampler(stack.pids, interval=proof_scale(0.5, 2.0))
        sampler.start()
        try:
            wall = await run_cycles(probe, cycles, proof_scale(100, 3 * 3600 - 600))
        finally:
            await sampler.stop()
        tasks = {
            service: [h["tasks"] for h in health_messages(probe, service) if "tasks" in h]
            for service in ("reader", "aggregator", "gateway")
        }
    state = orjson.loads((stack.state_dir / "aggregator-default.json").read_bytes())
    batteries_in = sum(b["counter"]["in_wh"] for b in state["batteries"].values())
    batteries_out = sum(b["counter"]["out_wh"] for b in state["batteries"].values())
    bank = state["banks"]["bank"]
    truth = Truth.load(stack.truth_logs)
    readings = reading_messages(probe)
    wrong = [p for r in readings for p in audit_reading(r, truth)]
    levels = [v for t, o, v in watch.states if o == "bank_battery_level" and v is not None]
    last_states = {
        m.topic.split("/")[2]: orjson.loads(m.payload)["values"]
        for m in probe.messages
        if m.topic.startswith("renogy/device/") and m.payload
    }
    published_sum = {k: sum(last_states[f"battery_{s}"][k] or 0.0 for s in SLAVES) for k in ENERGY_KEYS}
    per_service = {name: _series_figures(series) for name, series in sampler.series.items()}
    figures: dict[str, Any] = {
        "simulated_hours": round(cycles * 30 / 3600, 1),
        "cycles": cycles,
        "wall_s": round(wall, 1),
        "poll_interval_simulated_s": 30,
        "services": per_service,
        "tasks": {
            k: {"first": v[0], "last": v[-1], "min": min(v), "max": max(v), "samples": len(v)}
            for k, v in tasks.items()
            if v
        },
        "bank_in_wh": round(bank["in_wh"], 4),
        "sum_battery_in_wh": round(batteries_in, 4),
        "bank_out_wh": round(bank["out_wh"], 4),
        "sum_battery_out_wh": round(batteries_out, 4),
        "published_bank_energy_kwh": {k: last_states["bank"][k] for k in ENERGY_KEYS},
        "published_battery_energy_sum_kwh": published_sum,
        "bank_level_range_pct": [min(levels, default=None), max(levels, default=None)],
        "wrong_values_published": len(wrong),
        "unhandled_exceptions": sum(len(v) for v in stack.unhandled().values()),
    }
    write_figures("day_soak", figures)
    assert not wrong, wrong[:5]
    assert not stack.unhandled(), stack.unhandled()
    assert not stack.exits, stack.exits
    for name, series in per_service.items():
        assert series["rss_growth_mb"] <= 5.0, (name, series)
        low, high = series["fds_range"]
        assert high - low <= 2 and abs(series["fds_end"] - series["fds_after_warmup"]) <= 1, (name, series)
    for name, counts in tasks.items():
        steady = counts[len(counts) // 5 :] or counts
        if not steady:
            continue  # the gateway publishes health every 30 s: none in a short run
        assert max(steady) - min(steady) <= 2, (name, counts[-20:])
    assert bank["in_wh"] == pytest.approx(batteries_in, rel=1e-9, abs=1e-9)
    assert bank["out_wh"] == pytest.approx(batteries_out, rel=1e-9, abs=1e-9)
    for key in ENERGY_KEYS:
        # Published values are each rounded down to 0.0001 kWh: the sum of five roundings differs by < 0.0005.
        assert abs(last_states["bank"][key] - published_sum[key]) < 5e-4, (key, last_states)
    assert not energy_decreases_mqtt(probe) and not watch.energy_decreases()
    if cycles >= 2880:
        assert levels and max(levels) - min(levels) > 5, "a simulated day moves the state of charge"
    record_figures("day_soak", figures)


def test_proof_stack_helpers_cover_every_fault_kind() -> None:
    # The soak's expectations name every kind the simulator has; a new kind must be added to the proof.
    assert {str(k) for k in ALL_FAULT_KINDS} == {
        "bad_crc",
        "truncated",
        "dropped",
        "late",
        "wrong_slave",
        "exception",
        "garbage",
        "disconnect",
        "connect_fail",
        "hang",
        "adapter_gone",
    }


async def test_truth_log_round_trip(tmp_path: Path) -> None:
    """The audit reads what the simulator writes (guards the proof against a silent format change)."""
    from services.simulator import BankSimulator, SimConfig
    from shared.modbus import ReadRequest

    log = tmp_path / "truth-0000.jsonl"
    sim = BankSimulator.from_config(SimConfig(latency_scale=0.0, truth_log=log, record_truth=False))
    try:
        frames = sim.transact(ReadRequest(48, 5042, 7).encode())
        sim.faults.inject_next("bad_crc")
        sim.transact(ReadRequest(49, 5042, 7).encode())
    finally:
        sim.close()
    truth = Truth.load([log])
    assert truth.records == 1 and truth.fault_kinds() == {"bad_crc": 1}
    reading = {"slave_id": 48, "ts": time.time(), "complete": False, "raw": {"5042": frames[-1].hex()}}
    from tests.proof.support import decode_frame

    reading.update(
        {
            k: v
            for k, v in decode_frame(48, 5042, frames[-1]).items()
            if k in ("current", "voltage", "remaining_charge", "capacity", "cycle_count")
        }
    )
    assert audit_reading(reading, truth) == []
    reading["voltage"] = 1.0
    assert any("voltage" in p for p in audit_reading(reading, truth))
    await asyncio.sleep(0)


def test_recovery_is_counted_in_fault_free_cycles() -> None:
    """The recovery figure on a synthetic run: faults in cycles 2-3, cycle 4 clean but incomplete, 5 good."""
    from tests.proof.support import recovery

    truth = Truth()
    truth.faults = [(11.5, "bad_crc", 48, 5042), (12.5, "dropped", 49, 5000)]
    healths = [{"cycles": n, "ts": 10.0 + n - 1 + 0.9, "last_cycle_s": 0.9} for n in range(1, 6)]
    complete = {1: SLAVES, 2: (48, 50, 51), 3: SLAVES, 4: (48, 49, 50), 5: SLAVES}
    readings = [
        {"slave_id": s, "ts": 10.0 + n - 1 + 0.1 * (i + 1), "complete": True}
        for n, slaves in complete.items()
        for i, s in enumerate(slaves)
    ]
    processes = cycle_records(healths, readings, truth)
    assert [len(p) for p in processes] == [5]
    assert [r.faults for r in processes[0]] == [0, 1, 1, 0, 0]
    result = recovery(processes)
    assert result.episodes == 1 and dict(result.cycles_to_recover) == {2: 1} and result.worst == 2
    assert len(result.clean_but_incomplete) == 1 and "[51]" in result.clean_but_incomplete[0]
