"""The D-Bus path's cost: the reader on bleak's BlueZ backend + the stand-in BlueZ, next to the
reader on the bleak-backend simulator (same simulator core, same settings).

Cycle wall time and process CPU (the stand-in runs in the same process, so its CPU counts too: an
upper bound of the reader's own share), at latency_scale 0 (pure overhead) and 1 (the real timing
model), MTU 251 and 23; plus CPU per advertisement heard through D-Bus. Run:
`python -m tests.bench_bluez` (needs dbus-daemon), or `make bench` (entry "bluez").
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from services.simulator import SimConfig
from services.simulator.bluez import PrivateSystemBus
from services.simulator.bluez.bus import ENV
from tests.reader.support import reader_on_sim
from tests.support.bluez import reader_on_bluez, standin
from tests.support.brokers import AmqttBroker


async def _cycles(reader: Any, cycles: int) -> dict[str, float]:
    await reader.cycle()  # connect + the info block: not the steady state
    walls, cpus = [], []
    for _ in range(cycles):
        cpu, wall = time.process_time(), time.perf_counter()
        good = await reader.cycle()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        assert good == len(reader.cfg.batteries), reader.stats.errors
    return {
        "cycle_ms": round(statistics.median(walls) * 1000, 2),
        "cpu_ms_per_cycle": round(statistics.median(cpus) * 1000, 2),
    }


async def _adverts(bluez: Any, reader: Any, window: float) -> dict[str, float]:
    start_seen, start_cpu, start = reader._batcher.seen, time.process_time(), time.perf_counter()
    await asyncio.sleep(window)  # a measurement window, not a wait for a condition
    seen = reader._batcher.seen - start_seen
    cpu = time.process_time() - start_cpu
    return {
        "adverts_per_s": round(seen / (time.perf_counter() - start), 1),
        "cpu_us_per_advert": round(cpu / seen * 1e6, 1) if seen else float("nan"),
    }


async def bench_bluez(cycles: int = 10, window: float = 3.0) -> dict[str, Any]:
    broker = AmqttBroker()
    await broker.start()
    out: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            bus = PrivateSystemBus(Path(tmp) / "bus")
            bus.start()
            previous = os.environ.get(ENV)
            os.environ[ENV] = bus.address
            try:
                for scale in (0.0, 1.0):
                    for mtu in (251, 23):
                        sim_config = SimConfig(
                            mtu=mtu, latency_scale=scale, advert_interval=0.1, record_truth=False
                        )
                        settings = {"request_timeout": 1.5, "info_interval": 3600}
                        key = f"latency{scale:g}_mtu{mtu}"
                        async with reader_on_sim(broker.url, sim_config, **settings) as (reader, _sim, _p):
                            sim_figures = await _cycles(reader, cycles)
                        async with (
                            standin(bus, sim_config) as (bluez, sim),
                            reader_on_bluez(broker.url, bluez, sim, **settings) as (reader, _p),
                        ):
                            bluez_figures = await _cycles(reader, cycles)
                        out[key] = {
                            "simulator_backend": sim_figures,
                            "bluez_standin": bluez_figures,
                            "dbus_overhead_ms_per_cycle": round(
                                bluez_figures["cycle_ms"] - sim_figures["cycle_ms"], 2
                            ),
                        }
                sim_config = SimConfig(latency_scale=0.0, advert_interval=0.01, record_truth=False)
                async with reader_on_sim(broker.url, sim_config) as (reader, _sim, _p):
                    out["adverts_simulator_backend"] = await _adverts(None, reader, window)
                async with (
                    standin(bus, sim_config) as (bluez, sim),
                    reader_on_bluez(broker.url, bluez, sim) as (
                        reader,
                        _p,
                    ),
                ):
                    out["adverts_bluez_standin"] = await _adverts(bluez, reader, window)
            finally:
                if previous is None:
                    os.environ.pop(ENV, None)
                else:
                    os.environ[ENV] = previous
                bus.close()
    finally:
        await broker.stop()
    out["cycles"] = cycles
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(bench_bluez()), indent=2))
