"""Server life cycle: keepalive, client limit, graceful shutdown, restart on the same port, port in use."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import pytest
from aioesphomeapi.client import APIClient
from aioesphomeapi.core import APIConnectionError

from services.gateway.connection import Keepalive
from services.gateway.framing import Frame, PlaintextDecoder, encode_plaintext
from services.gateway.proto import pb
from services.gateway.service import EXIT_STARTUP_FAILED, Gateway, GatewayStartError, run
from tests.conftest import Broker
from tests.gateway.support import (
    all_configs,
    api_client,
    bare_server,
    gateway_config,
    publish_devices,
    wait_until,
)
from tests.support.brokers import free_port, port_open
from tests.support.probe import MqttProbe

HELLO = encode_plaintext(
    1, pb.HelloRequest(client_info="raw", api_version_major=1, api_version_minor=19).SerializeToString()
)


async def _raw_connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _read_frames(reader: asyncio.StreamReader, decoder: PlaintextDecoder, within: float) -> list[Frame]:
    """Frames until the peer closes (returned with a trailing Frame(-1)) or ``within`` seconds pass."""
    frames: list[Frame] = []
    try:
        async with asyncio.timeout(within):
            while True:
                data = await reader.read(4096)
                if not data:
                    frames.append(Frame(-1, b""))
                    return frames
                frames += decoder.feed(data)
    except TimeoutError:
        return frames


async def test_server_pings_idle_client_and_drops_dead_one(tmp_path: Path) -> None:
    keepalive = Keepalive(ping_after=0.2, timeout=0.5, handshake_timeout=5)
    async with bare_server(tmp_path, keepalive=keepalive) as server:
        reader, writer = await _raw_connect(server.port)
        writer.write(HELLO)
        decoder = PlaintextDecoder()
        frames = await _read_frames(reader, decoder, 2.0)
        types = [f.msg_type for f in frames]
        assert types[0] == 2  # HelloResponse
        assert 7 in types  # PingRequest after idling
        assert types[-1] == -1  # then closed: the client never answered
        writer.close()

        # A live client answers the server's pings and stays connected well past the timeout.
        async with api_client(server.port, keepalive=60) as client:
            await asyncio.sleep(1.2)
            assert (await client.device_info()).name == "bare-node"


async def test_handshake_timeout(tmp_path: Path) -> None:
    async with bare_server(tmp_path, keepalive=Keepalive(handshake_timeout=0.3)) as server:
        reader, writer = await _raw_connect(server.port)
        frames = await _read_frames(reader, PlaintextDecoder(), 2.0)
        assert frames == [Frame(-1, b"")]
        writer.close()


async def test_client_limit_and_graceful_shutdown(tmp_path: Path) -> None:
    async with bare_server(tmp_path, configs=all_configs(), max_clients=2) as server:
        stops: list[bool] = []

        async def on_stop(expected: bool) -> None:
            stops.append(expected)

        clients = [APIClient("127.0.0.1", server.port, None) for _ in range(2)]
        for client in clients:
            await client.connect(on_stop=on_stop, login=True)
        extra = APIClient("127.0.0.1", server.port, None)
        with pytest.raises(APIConnectionError):
            await extra.connect(login=True)
        assert server.counters.rejected_full == 1
        await server.stop()
        await wait_until(lambda: len(stops) == 2, what="both clients told to disconnect")
        assert stops == [True, True]  # expected_disconnect: HA logs no error


async def test_restart_binds_the_same_port_at_once(tmp_path: Path) -> None:
    port = free_port()
    for _ in range(3):
        async with bare_server(tmp_path, port=port) as server, api_client(server.port) as client:
            assert server.port == port
            await client.device_info()


async def test_port_in_use_is_a_clear_startup_error(tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    config = gateway_config("mqtt://127.0.0.1:1", tmp_path, api_port=port)
    try:
        gateway = Gateway(config)
        with pytest.raises(GatewayStartError, match=r"gateway.api_port / RENOGY_API_PORT"):
            await gateway.start()
        assert await run(config) == EXIT_STARTUP_FAILED
    finally:
        holder.close()


async def test_subprocess_serves_and_stops_on_sigterm(mosquitto: Broker, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "RENOGY_MQTT_URL": mosquitto.url,
        "RENOGY_API_PORT": str(port),
        "RENOGY_API_BIND": "127.0.0.1",
        "RENOGY_MDNS": "false",
        "RENOGY_MAC": "02:00:00:00:00:01",
        "RENOGY_STATE_DIR": str(tmp_path),
        "RENOGY_NAME": "sub-node",
    }
    env.pop("RENOGY_CONFIG", None)
    async with MqttProbe(mosquitto.url) as probe:
        publish_devices(probe, all_configs())
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.gateway", env=env, cwd=Path.cwd(), stderr=asyncio.subprocess.PIPE
        )
        try:
            client = APIClient("127.0.0.1", port, None)
            stops: list[bool] = []

            async def on_stop(expected: bool) -> None:
                stops.append(expected)

            await wait_until(lambda: port_open(port), within=15, what="the subprocess listening")
            await client.connect(on_stop=on_stop, login=True)
            entities: list[object] = []

            async def listed() -> bool:
                entities[:] = (await client.list_entities_services())[0]
                return len(entities) == 55

            for _ in range(100):  # the documents reach the subprocess over MQTT shortly after it starts
                if await listed():
                    break
                await asyncio.sleep(0.1)
            assert len(entities) == 55
            proc.send_signal(signal.SIGTERM)
            await wait_until(lambda: stops, what="DisconnectRequest on shutdown")
            assert stops == [True]
            assert await asyncio.wait_for(proc.wait(), 10) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            assert proc.stderr is not None
            stderr = (await proc.stderr.read()).decode()
        assert "Traceback" not in stderr, stderr
        assert "ESPHome API listening" in stderr
