"""A miniature run of the gateway benchmark so it keeps working between `make bench` runs."""

from __future__ import annotations

from tests.bench_gateway import bench_gateway
from tests.conftest import Broker


async def test_bench_gateway_small(mosquitto: Broker) -> None:
    figures = await bench_gateway(
        batteries=2,
        sync_clients=1,
        fanout_clients=2,
        documents=20,
        latency_samples=5,
        broker_url=mosquitto.url,
    )
    assert figures["entities"] == 31
    assert figures["full_sync_p50_ms"] > 0
    assert figures["fanout_updates_per_s_per_client"] > 0
    assert figures["ping_under_load_samples"] > 0
    assert figures["mqtt_to_client_samples"] == 5
