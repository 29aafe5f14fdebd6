"""Airtime benchmark: cycle time and advertisements forwarded per minute, with and without each option.

The real reader's poll loop on the simulator with its real timing model (latency_scale 1, a BT-2 plus
three neighbours advertising), polling every 10 s, for a fixed window per variant: scanning all the
time (the default), `reader.scan_duty = [5, 10]` (the old system's example), `reader.pause_during_reads`,
and both. "Forwarded" counts the advertisements the reader published for the Bluetooth proxy.

The simulator models no shared radio, so it shows what the options cost (advertisements, the time to
stop and start the scanner around a cycle), not how much Wi-Fi gains on a Pi Zero 2 W or Pi 3.

    python -m tests.bench_airtime [--window 60]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import orjson

from services.simulator import SimConfig
from tests.reader.support import reader_on_sim
from tests.support.brokers import AmqttBroker

ADVERTS = "renogy/bridge/reader/default/advertisements"
VARIANTS: dict[str, dict[str, Any]] = {
    "scan_always": {},
    "scan_duty_5_10": {"scan_duty": [5.0, 10.0]},
    "pause_during_reads": {"pause_during_reads": True},
    "duty_and_pause": {"scan_duty": [5.0, 10.0], "pause_during_reads": True},
}


async def _variant(broker_url: str, window: float, poll: float, settings: dict[str, Any]) -> dict[str, Any]:
    sim = SimConfig(latency_scale=1.0, record_truth=False)
    async with reader_on_sim(
        broker_url, sim, request_timeout=1.5, info_interval=3600, poll_interval=poll, **settings
    ) as (reader, _sim, probe):
        cycles: list[float] = []
        scanning: list[tuple[float, str]] = [(time.monotonic(), reader.scanner.state)]
        cycle, on_state = reader.cycle, reader.scanner._on_state

        async def timed() -> int:
            started = time.monotonic()
            good = await cycle()
            cycles.append(time.monotonic() - started)  # the whole cycle, pause and resume included
            return good

        def state(value: str, mode: Any) -> None:
            scanning.append((time.monotonic(), value))
            on_state(value, mode)

        reader.cycle = timed  # type: ignore[method-assign]
        reader.scanner._on_state = state
        loop = asyncio.create_task(reader._poll_loop())
        await asyncio.sleep(poll)  # warm-up: connect and the first cycle, outside the measured window
        start_count = len(probe.messages)
        started = time.monotonic()
        first_cycle = len(cycles)
        await asyncio.sleep(window)  # the measurement window itself
        ended = time.monotonic()
        forwarded = sum(
            len(orjson.loads(m.payload)["advertisements"])
            for m in probe.messages[start_count:]
            if m.topic == ADVERTS
        )
        reader.runtime.request_stop()
        await loop
        steady = cycles[first_cycle:] or cycles
        running = 0.0
        for (at, name), (next_at, _) in zip(scanning, [*scanning[1:], (ended, "")], strict=True):
            if name == "running":
                running += max(0.0, min(next_at, ended) - max(at, started))
        return {
            "cycle_s": round(statistics.median(steady), 3),
            "max_cycle_s": round(max(steady), 3),
            "adverts_per_min": round(forwarded * 60 / (ended - started), 1),
            "scanning_share": round(running / (ended - started), 3),
            "cycles": len(steady),
            "pause_overruns": reader.airtime.overruns,
            "errors": sum(reader.stats.errors.values()),
        }


async def bench_airtime(window: float = 60.0, poll: float = 10.0) -> dict[str, Any]:
    broker = AmqttBroker()
    await broker.start()
    try:
        figures: dict[str, Any] = {"window_s": window, "poll_interval_s": poll}
        for name, settings in VARIANTS.items():
            figures[name] = await _variant(broker.url, window, poll, settings)
        return figures
    finally:
        await broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--poll", type=float, default=10.0)
    args = parser.parse_args()
    print(orjson.dumps(asyncio.run(bench_airtime(args.window, args.poll)), option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
