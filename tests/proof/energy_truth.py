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
