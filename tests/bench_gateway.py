"""Gateway benchmarks: full sync, state fan-out to 16 clients, ping under load, MQTT-to-client latency.

The API server runs in its own process (as in production) and the real aioesphomeapi clients in
this one, so client-side decoding does not steal the server's CPU. ``bench_gateway`` returns the
figures as a dict; ``python -m tests.bench_gateway`` prints them as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from aioesphomeapi.client import APIClient
from aioesphomeapi.model import EntityState

from services.gateway import messages as ids
from services.gateway.entities import fnv1_32
from services.gateway.proto import pb
from shared.payloads import DeviceState
from tests.gateway.support import all_configs, battery_state, publish_devices, wait_until
from tests.support.brokers import MOSQUITTO, AmqttBroker, MosquittoBroker, free_port, port_open
from tests.support.probe import MqttProbe


def _pct(values: Iterable[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def _ms(value: float) -> float:
    return round(value * 1000, 2)


# --- the server process -----------------------------------------------------------------------------


def _serve(pipe: Connection, batteries: int) -> None:
    asyncio.run(_serve_async(pipe, batteries))


async def _serve_async(pipe: Connection, batteries: int) -> None:
    from tests.gateway.support import bare_server

    slaves = range(1, batteries + 1)
    with tempfile.TemporaryDirectory() as tmp:
        async with bare_server(Path(tmp), configs=all_configs(slaves), max_clients=64) as server:
            pipe.send(server.port)
            loop = asyncio.get_running_loop()
            while True:
                command = await loop.run_in_executor(None, pipe.recv)
                if command[0] == "stop":
                    break
                if command[0] == "updates":
                    documents = command[1]
                    started = time.perf_counter()
                    for i in range(documents):
                        slave = slaves[i % len(slaves)]
                        server.registry.set_state(f"battery_{slave}", _changed(slave, i))
                        if i % 4 == 3:
                            await asyncio.sleep(0)  # let the transports drain, as MQTT arrivals would
                    pipe.send(time.perf_counter() - started)


def _changed(slave: int, i: int) -> DeviceState:
    """A state document in which all 12 values differ from the previous one."""
    base = battery_state(slave, missing=())
    return DeviceState(
        base.ts + i, {k: float(v) + (i + 1) * 0.001 for k, v in base.values.items() if v is not None}
    )


# --- measurements -------------------------------------------------------------------------------------


async def _full_sync(port: int, expected_states: int) -> float:
    """Connect, DeviceInfo + ListEntities, SubscribeStates until every initial state is in."""
    started = time.perf_counter()
    client = APIClient("127.0.0.1", port, None, client_info="bench")
    await client.connect(login=True)
    await client.device_info_and_list_entities()
    done = asyncio.get_running_loop().create_future()
    seen = 0

    def on_state(_: EntityState) -> None:
        nonlocal seen
        seen += 1
        if seen == expected_states and not done.done():
            done.set_result(None)

    client.subscribe_states(on_state)
    await asyncio.wait_for(done, 60)
    elapsed = time.perf_counter() - started
    await client.disconnect()
    return elapsed


def _pinger(port: int, seconds: float, pipe: Connection) -> None:
    """A raw plaintext client in its own process: Hello, then Ping every 2 ms; sends back the RTTs."""
    from services.gateway.framing import PlaintextDecoder, encode_plaintext

    hello = pb.HelloRequest(client_info="pinger", api_version_major=1, api_version_minor=19)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        decoder = PlaintextDecoder()
        sock.sendall(encode_plaintext(ids.HELLO_REQUEST, hello.SerializeToString()))
        while not any(f.msg_type == 2 for f in decoder.feed(sock.recv(4096))):
            pass
        pipe.send("ready")
        rtts: list[float] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            sock.sendall(b"\x00\x00\x07")
            while not any(f.msg_type == 8 for f in decoder.feed(sock.recv(4096))):
                pass
            rtts.append(time.perf_counter() - started)
            time.sleep(0.002)
    pipe.send(rtts)


async def _ping_rtts(port: int, seconds: float, during: Any = None) -> list[float]:
    """Ping RTTs measured from another process, optionally while ``during`` (a coroutine) runs."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_pinger, args=(port, seconds, child), daemon=True)
    proc.start()
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, parent.recv) == "ready"
    if during is not None:
        await during
    rtts: list[float] = await loop.run_in_executor(None, parent.recv)
    proc.join(10)
    return rtts


async def _fan_out(port: int, pipe: Connection, clients: int, documents: int) -> dict[str, float]:
    subscribers = [APIClient("127.0.0.1", port, None, client_info=f"bench{i}") for i in range(clients)]
    await asyncio.gather(*(c.connect(login=True) for c in subscribers))
    counts = [0] * clients
    initial = [0] * clients
    for index, client in enumerate(subscribers):
        await client.list_entities_services()

        def on_state(_: EntityState, index: int = index) -> None:
            counts[index] += 1

        client.subscribe_states(on_state)
    await asyncio.sleep(0.5)
    initial[:] = counts
    idle_rtts = await _ping_rtts(port, 0.5)
    expected = documents * 12
    result: dict[str, float] = {}

    async def storm() -> None:
        started = time.perf_counter()
        pipe.send(("updates", documents))
        loop = asyncio.get_running_loop()
        result["server_seconds"] = await loop.run_in_executor(None, pipe.recv)
        await wait_until(lambda: min(c - i for c, i in zip(counts, initial, strict=True)) >= expected, 120)
        result["elapsed"] = time.perf_counter() - started

    load_rtts = await _ping_rtts(port, 0.5, storm())
    elapsed, server_seconds = result["elapsed"], result["server_seconds"]
    await asyncio.gather(*(c.disconnect() for c in subscribers))
    return {
        "fanout_clients": clients,
        "fanout_state_updates": expected,
        "fanout_updates_per_s_per_client": round(expected / elapsed),
        "fanout_messages_per_s_total": round(expected * clients / elapsed),
        "fanout_server_push_s": round(server_seconds, 3),
        "fanout_server_push_msgs_per_s": round(expected * clients / server_seconds),
        "ping_idle_p50_ms": _ms(_pct(idle_rtts, 50)),
        "ping_under_load_p50_ms": _ms(_pct(load_rtts, 50)),
        "ping_under_load_p99_ms": _ms(_pct(load_rtts, 99)),
        "ping_under_load_max_ms": _ms(max(load_rtts, default=float("nan"))),
        "ping_under_load_samples": len(load_rtts),
    }


async def _mqtt_latency(broker_url: str, samples: int) -> dict[str, float]:
    """A state document published to the broker -> the changed state at a subscribed client."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "RENOGY_MQTT_URL": broker_url,
            "RENOGY_API_PORT": str(port),
            "RENOGY_API_BIND": "127.0.0.1",
            "RENOGY_MDNS": "false",
            "RENOGY_MAC": "02:00:00:00:00:02",
            "RENOGY_STATE_DIR": tmp,
            "RENOGY_LOG_LEVEL": "warning",
        }
        env.pop("RENOGY_CONFIG", None)
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.gateway", env=env)
        try:
            async with MqttProbe(broker_url) as probe:
                publish_devices(probe, all_configs())
                await wait_until(lambda: port_open(port), 20, "the gateway listening")
                client = APIClient("127.0.0.1", port, None, client_info="latency")
                await client.connect(login=True)
                for _ in range(200):  # the documents reach the gateway over MQTT
                    if len((await client.list_entities_services())[0]) >= 55:
                        break
                    await asyncio.sleep(0.1)
                sent: dict[float, float] = {}
                latencies: list[float] = []
                key = fnv1_32("battery_48_power")

                def on_state(state: EntityState) -> None:
                    value = round(getattr(state, "state", 0.0), 1)
                    if state.key == key and value in sent:
                        latencies.append(time.perf_counter() - sent.pop(value))

                client.subscribe_states(on_state)
                await asyncio.sleep(0.3)
                for i in range(samples):
                    state = battery_state(48, offset=1000.0 + i)
                    value = round(float(state.values["power"] or 0.0), 1)
                    sent[value] = time.perf_counter()
                    probe.publish("renogy/device/battery_48/state", state.to_payload(), retain=True)
                    await asyncio.sleep(0.02)
                with contextlib.suppress(TimeoutError):  # a lost sample shows in the sample count
                    await wait_until(lambda: len(latencies) >= samples or not sent, 10, "the last samples")
                await client.disconnect()
        finally:
            proc.terminate()
            await proc.wait()
    return {
        "mqtt_to_client_p50_ms": _ms(_pct(latencies, 50)),
        "mqtt_to_client_p99_ms": _ms(_pct(latencies, 99)),
        "mqtt_to_client_samples": len(latencies),
    }


async def bench_gateway(
    *,
    batteries: int = 64,
    sync_clients: int = 8,
    fanout_clients: int = 16,
    documents: int = 3000,
    latency_samples: int = 200,
    broker_url: str | None = None,
) -> dict[str, Any]:
    """Measure the gateway; returns a flat dict of figures (times in ms, rates per second)."""
    figures: dict[str, Any] = {"batteries": batteries, "entities": batteries * 12 + 7}
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(child, batteries), daemon=True)
    proc.start()
    try:
        loop = asyncio.get_running_loop()
        port = await loop.run_in_executor(None, parent.recv)
        expected = batteries * 12 + 7
        syncs = [await _full_sync(port, expected) for _ in range(sync_clients)]
        figures["full_sync_p50_ms"] = _ms(statistics.median(syncs))
        figures["full_sync_max_ms"] = _ms(max(syncs))
        started = time.perf_counter()
        await asyncio.gather(*(_full_sync(port, expected) for _ in range(fanout_clients)))
        figures[f"full_sync_{fanout_clients}_concurrent_ms"] = _ms(time.perf_counter() - started)
        figures.update(await _fan_out(port, parent, fanout_clients, documents))
        parent.send(("stop",))
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    broker: MosquittoBroker | AmqttBroker | None = None
    with tempfile.TemporaryDirectory() as tmp:
        if broker_url is None:
            broker = MosquittoBroker(Path(tmp)) if MOSQUITTO else AmqttBroker()
            await broker.start()
            broker_url = broker.url
        try:
            figures.update(await _mqtt_latency(broker_url, latency_samples))
            figures["broker"] = broker.kind if broker else broker_url
        finally:
            if broker is not None:
                await broker.stop()
    return figures


if __name__ == "__main__":
    print(json.dumps(asyncio.run(bench_gateway()), indent=2))
