"""Truth recording: genuine deliveries, bounded memory, a JSON-lines log another process can audit."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from services.simulator import BankSimulator, SimConfig, TruthRecorder
from shared.modbus import ReadRequest
from shared.registers import BLOCK_CELLS, BLOCK_INFO, BLOCK_STATUS, decode_block

REQUESTS = [ReadRequest(s, *b) for s in (48, 49, 50, 51) for b in (BLOCK_STATUS, BLOCK_CELLS, BLOCK_INFO)]


def test_records_carry_times_frames_and_values(clock) -> None:
    sim = BankSimulator(SimConfig(), clock=clock)
    clock.advance(60.0)
    frame = b"".join(sim.transact(REQUESTS[0].encode()))
    (record,) = sim.truth.records
    assert record.frame == frame
    assert record.slave == 48 and record.start == 5042 and record.words == 7
    assert record.sim_time == sim.sim_time()
    assert record.wall_time > 1.6e9
    assert record.values == decode_block(
        5042, [int.from_bytes(frame[3 + 2 * k : 5 + 2 * k], "big") for k in range(7)]
    )
    assert record.exception is None
    assert sim.truth.is_true_value(48, "current", record.values["current"])
    assert not sim.truth.is_true_value(48, "current", 499.0)
    assert sim.truth.is_true_value(48, "charge_mosfet_on", True) is False  # not in the 5042 block
    sim.transact(ReadRequest(48, *BLOCK_INFO).encode())
    assert sim.truth.is_true_value(48, "charge_mosfet_on", True)
    exception = b"".join(sim.transact(ReadRequest(48, 5034, 1).encode()))
    latest = sim.truth.latest(48, 5034)
    assert latest is not None and latest.exception == 2 and latest.frame == exception


def test_memory_is_bounded(clock) -> None:
    sim = BankSimulator(SimConfig(max_truth_records=5), clock=clock)
    for request in REQUESTS * 3:
        sim.transact(request.encode())
        clock.advance(1.0)
    assert len(sim.truth.records) == 5
    assert sim.truth.delivered == 36


def test_recording_can_be_switched_off_but_still_logs(clock, tmp_path: Path) -> None:
    log = tmp_path / "truth.jsonl"
    sim = BankSimulator(SimConfig(record_truth=False, truth_log=log), clock=clock)
    frame = b"".join(sim.transact(REQUESTS[0].encode()))
    assert len(sim.truth.records) == 0
    assert not sim.truth.is_genuine(48, 5042, frame)
    assert sim.truth.delivered == 1
    sim.close()
    assert TruthRecorder.load(log).is_genuine(48, 5042, frame)


def test_log_holds_truth_and_faults(clock, tmp_path: Path) -> None:
    log = tmp_path / "nested" / "truth.jsonl"
    sim = BankSimulator(SimConfig(truth_log=log), clock=clock)
    frames = [b"".join(sim.transact(r.encode())) for r in REQUESTS]
    sim.faults.inject_next("bad_crc")
    bad = b"".join(sim.transact(REQUESTS[0].encode()))
    sim.close()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["type"] for line in lines] == ["truth"] * 12 + ["fault"]
    audit = TruthRecorder.load(log)
    for request, frame in zip(REQUESTS, frames, strict=True):
        assert audit.is_genuine(request.slave, request.start, frame)
        latest = audit.latest(request.slave, request.start)
        assert latest is not None and latest.values == sim.truth.latest(request.slave, request.start).values  # type: ignore[union-attr]
    assert not audit.is_genuine(48, 5042, bad)
    assert [f.kind for f in audit.faults] == ["bad_crc"]
    assert audit.faults[0].frame == bad


def test_another_process_can_audit_the_log(tmp_path: Path) -> None:
    log = tmp_path / "truth.jsonl"
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from services.simulator import BankSimulator, SimConfig
        from shared.modbus import ReadRequest
        sim = BankSimulator(SimConfig(truth_log=Path({str(log)!r}), speed=600.0, latency_scale=0.0))
        for slave in sim.slaves:
            print(b"".join(sim.transact(ReadRequest(slave, 5042, 7).encode())).hex())
        sim.close()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        cwd=Path(__file__).resolve().parents[2],
    )
    frames = [bytes.fromhex(line) for line in done.stdout.split()]
    audit = TruthRecorder.load(log)
    assert len(frames) == 4
    assert all(audit.is_genuine(frame[0], 5042, frame) for frame in frames)
    assert not audit.is_genuine(48, 5042, frames[1])  # a frame of 49 is not 48's truth
