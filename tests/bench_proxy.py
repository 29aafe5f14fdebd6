"""Active Bluetooth proxy benchmark: Home Assistant's client -> gateway -> MQTT -> reader -> device.

Connect time, GATT read round trip and notification latency through the whole stack, against the
simulator's modelled floor (one BLE connection interval, 45 ms, per acknowledged operation; the
connect itself is modelled as 0.3 s), with the peripherals' timing unscaled.

    python -m tests.bench_proxy [--reads 50] [--notifications 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

from services.simulator.devices import BATTERY_LEVEL_UUID, NUS_RX, NUS_TX, STREAM_FORMAT, STREAM_START
from shared.timing import DEFAULT_TIMING
from tests.gateway.proxy_support import STREAMER, THERMOMETER, home_assistant, proxy_stack
from tests.support.brokers import MosquittoBroker


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


async def bench_proxy(reads: int = 50, notifications: int = 200) -> dict[str, Any]:
    interval = DEFAULT_TIMING.connection_interval
    with tempfile.TemporaryDirectory() as tmp:
        broker = MosquittoBroker(Path(tmp), extra_config="set_tcp_nodelay true\n")
        await broker.start()
        try:
            async with proxy_stack(broker.url, Path(tmp)) as stack, home_assistant(stack.gateway.port) as ha:
                for peripheral in (stack.thermometer, stack.streamer):
                    peripheral.latency_scale = 1.0
                stack.streamer.notify_interval = 0.02
                connects = []
                for _ in range(5):
                    client = ha.bleak_client(THERMOMETER)
                    started = time.perf_counter()
                    await client.connect()
                    connects.append(time.perf_counter() - started)
                    await client.disconnect()
                client = ha.bleak_client(THERMOMETER)
                await client.connect()
                char = client.services.get_characteristic(BATTERY_LEVEL_UUID)
                assert char is not None
                rtts = []
                for _ in range(reads):
                    started = time.perf_counter()
                    await client.read_gatt_char(char)
                    rtts.append(time.perf_counter() - started)
                await client.disconnect()

                stream = ha.bleak_client(STREAMER)
                await stream.connect()
                latencies: list[float] = []
                done = asyncio.Event()

                def on_data(_c: Any, data: bytearray) -> None:
                    _seq, sent_at = struct.unpack(STREAM_FORMAT, data)
                    latencies.append(time.monotonic() - sent_at)
                    if len(latencies) >= notifications:
                        done.set()

                await stream.start_notify(NUS_TX, on_data)
                await stream.write_gatt_char(NUS_RX, STREAM_START, response=True)
                await asyncio.wait_for(done.wait(), 60)
                await stream.disconnect()
        finally:
            await broker.stop()
    connect_floor = 0.3  # the modelled connect time of the simulated peripherals
    return {
        "connect_ms_p50": _ms(connects, 0.5),
        "connect_floor_ms": round(connect_floor * 1000, 1),
        "read_rtt_ms_p50": _ms(rtts, 0.5),
        "read_rtt_ms_p99": _ms(rtts, 0.99),
        "read_floor_ms": round(interval * 1000, 1),
        "notify_latency_ms_p50": _ms(latencies, 0.5),
        "notify_latency_ms_p99": _ms(latencies, 0.99),
        "notify_floor_ms": round(interval * 1000, 1),
        "read_overhead_ms_p50": round(1000 * (statistics.median(rtts) - interval), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=50)
    parser.add_argument("--notifications", type=int, default=200)
    args = parser.parse_args()
    for key, value in asyncio.run(bench_proxy(args.reads, args.notifications)).items():
        print(f"{key:28} {value}")


if __name__ == "__main__":
    main()
