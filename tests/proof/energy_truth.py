"""The simulator's truth about energy: what the batteries really charged and discharged between two readings.

Every genuine 5042 reply is in the simulator's truth log with its simulated time; a published reading
carries the same frame (`raw`) and the reader's monotonic time (`mono`). Matching them in order gives,
per battery, the true samples of power and their true spacing (simulated seconds / speed, independent
of any wall clock), integrated like the aggregator does (trapezoid, split at zero crossings).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.aggregator.energy import trapezoid


@dataclass(frozen=True, slots=True)
class Sample:
    mono: float  # the reading's monotonic time on the reader
    seconds: float  # true time of the reply, s (simulated time / speed)
    power: float


def truth_records(paths: Iterable[Path]) -> dict[int, list[dict[str, Any]]]:
    """Genuine 5042 replies per slave, in simulated-time order."""
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                continue
            if data.get("type") == "truth" and data.get("start") == 5042 and data.get("exception") is None:
                out[int(data["slave"])].append(data)
    for records in out.values():
        records.sort(key=lambda r: float(r["sim_time"]))
    return out


def true_samples(
    readings: Iterable[Mapping[str, Any]], truth: Mapping[int, list[dict[str, Any]]], speed: float
) -> dict[int, list[Sample]]:
    """Per slave, the readings (deduplicated by boot and monotonic time) matched to their truth records."""
    by_slave: dict[int, dict[tuple[str, float], Mapping[str, Any]]] = defaultdict(dict)
    for reading in readings:
        if reading.get("mono") is None or "5042" not in (reading.get("raw") or {}):
            continue
        by_slave[int(reading["slave_id"])][(str(reading["boot_id"]), float(reading["mono"]))] = reading
    out: dict[int, list[Sample]] = {}
    for slave, unique in by_slave.items():
        records = truth.get(slave, [])
        pointer = 0
        samples = []
        for _, reading in sorted(unique.items(), key=lambda item: item[0][1]):
            frame = reading["raw"]["5042"]
            while pointer < len(records) and records[pointer]["frame"] != frame:
                pointer += 1
            if pointer == len(records):
                raise AssertionError(
                    f"battery {slave}: a reading at mono {reading['mono']} is not in the truth log"
                )
            record = records[pointer]
            values = record["values"]
            samples.append(
                Sample(
                    float(reading["mono"]),
                    float(record["sim_time"]) / speed,
                    values["voltage"] * values["current"],
                )
            )
            pointer += 1
        out[slave] = samples
    return out


def true_energy_wh(
    records: list[dict[str, Any]], samples: list[Sample], mono_from: float, mono_to: float, speed: float
) -> tuple[float, float, int]:
    """(charged Wh, discharged Wh, replies) from the reply read at `mono_from` to the one read at
    `mono_to`, over every genuine reply in between (also those whose readings the test's client missed)."""
    if not samples:
        raise AssertionError("no reading matched the truth log")
    # Reader's monotonic clock -> true seconds, from the readings that were matched (median offset).
    offsets = sorted(s.seconds - s.mono for s in samples)
    offset = offsets[len(offsets) // 2]
    times = [float(r["sim_time"]) / speed for r in records]

    def nearest(mono: float) -> int:
        target = mono + offset
        return min(range(len(times)), key=lambda i: abs(times[i] - target))

    first, last = nearest(mono_from), nearest(mono_to)
    charged = discharged = 0.0
    for a, b in zip(records[first:last], records[first + 1 : last + 1], strict=True):
        pa = a["values"]["voltage"] * a["values"]["current"]
        pb = b["values"]["voltage"] * b["values"]["current"]
        c, d = trapezoid(float(a["sim_time"]) / speed, pa, float(b["sim_time"]) / speed, pb)
        charged += c
        discharged += d
    return charged, discharged, last - first + 1


@dataclass
class EnergyAudit:
    """Energy the aggregator counted between two counter snapshots against the simulator's truth."""

    counted: dict[str, float]  # "in", "out": Wh, summed over the batteries
    true: dict[str, float]
    batteries: dict[int, dict[str, Any]]

    @property
    def total_counted(self) -> float:
        return self.counted["in"] + self.counted["out"]

    @property
    def total_true(self) -> float:
        return self.true["in"] + self.true["out"]

    @property
    def error_pct(self) -> float:
        return 100 * abs(self.total_counted - self.total_true) / max(self.total_true, 1e-9)

    def figures(self) -> dict[str, Any]:
        return {
            "energy_counted_wh": round(self.total_counted, 3),
            "energy_truth_wh": round(self.total_true, 3),
            "error_pct": round(self.error_pct, 3),
            "batteries": self.batteries,
        }

    def problems(self, share: float = 0.01) -> list[str]:
        """Why the count is not the truth within ``share`` (of the total, per direction too)."""
        if self.total_true <= 1.0:
            return [f"too little energy flowed to judge: {self.total_true:.3f} Wh"]
        problems = []
        if abs(self.total_counted - self.total_true) > share * self.total_true:
            problems.append(f"counted {self.total_counted:.3f} Wh, truth {self.total_true:.3f} Wh")
        problems.extend(
            f"energy {key}: counted {self.counted[key]:.3f} Wh, truth {self.true[key]:.3f} Wh"
            for key in ("in", "out")
            if abs(self.counted[key] - self.true[key]) > share * self.total_true
        )
        return problems


def audit_energy(
    readings: Iterable[Mapping[str, Any]],
    truth_logs: Iterable[Path],
    before: Mapping[int, Mapping[str, Any] | None],
    after: Mapping[int, Mapping[str, Any] | None],
    speed: float,
) -> EnergyAudit:
    """Per battery of ``before``: the counters' gain (in_wh, out_wh at last_mono) against the truth."""
    truth = truth_records(truth_logs)
    samples = true_samples(readings, truth, speed)
    counted = {"in": 0.0, "out": 0.0}
    true = {"in": 0.0, "out": 0.0}
    batteries: dict[int, dict[str, Any]] = {}
    for slave, a in before.items():
        b = after[slave]
        if a is None or b is None:
            raise AssertionError(f"battery {slave}: no energy counter published")
        charged, discharged, replies = true_energy_wh(
            truth[slave], samples[slave], a["last_mono"], b["last_mono"], speed
        )
        gained = (b["in_wh"] - a["in_wh"], b["out_wh"] - a["out_wh"])
        counted["in"] += gained[0]
        counted["out"] += gained[1]
        true["in"] += charged
        true["out"] += discharged
        batteries[slave] = {
            "counted_wh": [round(v, 3) for v in gained],
            "truth_wh": [round(charged, 3), round(discharged, 3)],
            "replies_counted": replies,
            "seconds_counted": round(b["last_mono"] - a["last_mono"], 1),
        }
    return EnergyAudit(counted, true, batteries)
