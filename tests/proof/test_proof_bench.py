"""The benchmark record: every run is kept (a history table), the page is rendered from it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.bench import BENCH_COLUMNS, machine, record, render


def test_runs_accumulate_and_render(tmp_path: Path) -> None:
    history, page = tmp_path / "benchmarks.json", tmp_path / "benchmarks.md"
    first = {
        "reader": {"mtu251": {"cycle_s": 1.43, "floor_s": 1.41, "ratio_to_floor": 1.01}},
        "latency": {"p50_ms": 9.5},
    }
    second = {
        "reader": {"mtu251": {"cycle_s": 1.42, "floor_s": 1.41, "ratio_to_floor": 1.007}},
        "latency": {"p50_ms": 8.0},
    }
    record("bench", "bench", first, path=history, markdown=page)
    record("bench", "bench", second, path=history, markdown=page)
    record(
        "proof", "fault_soak", {"cycles": 10_000, "wrong_values_published": 0}, path=history, markdown=page
    )
    runs = json.loads(history.read_text())["runs"]
    assert [r["kind"] for r in runs] == ["bench", "bench", "proof"]
    text = page.read_text()
    assert text == render(runs)
    assert "## Latest benchmark" in text and "## History" in text and "### fault soak" in text
    history_rows = [line for line in text.splitlines() if line.startswith("| 20")]
    assert len(history_rows) >= 3  # both bench runs and the proof run, each on its own line
    assert "1.43" in text and "1.42" in text
    assert all(title in text for title, _ in BENCH_COLUMNS)


def test_machine_description() -> None:
    info = machine()
    assert set(info) == {"cpu", "cores", "ram_gb", "python", "os"}
    assert info["cores"] >= 1 and info["ram_gb"] > 0
