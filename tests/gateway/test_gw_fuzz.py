"""Random, mutated, oversized and truncated input over real sockets: only that connection suffers."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aioesphomeapi.client import APIClient
from aioesphomeapi.model import EntityState
from aioesphomeapi.noise import NoiseHandshake
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.gateway import messages as ids
from services.gateway.framing import (
    MAX_PAYLOAD,
    PlaintextDecoder,
    encode_noise_frame,
    encode_plaintext,
    encode_varint,
)
from services.gateway.messages import message_id
from services.gateway.proto import pb
from services.gateway.server import GatewayServer
from tests.gateway.support import all_configs, bare_server, battery_state, wait_until
from tests.support.logs import RecordingHandler, recording

KEY = base64.b64encode(os.urandom(32)).decode()

_HELLO = pb.HelloRequest(client_info="fuzz", api_version_major=1, api_version_minor=19).SerializeToString()
# A whole plaintext session as the client pipelines it.
VALID_SESSION = b"".join(
    encode_plaintext(message_id(type(m)), m.SerializeToString())
    for m in (
        pb.HelloRequest(client_info="fuzz", api_version_major=1, api_version_minor=19),
        pb.AuthenticationRequest(),
        pb.DeviceInfoRequest(),
        pb.ListEntitiesRequest(),
        pb.DeviceCapabilitiesRequest(),
        pb.SubscribeStatesRequest(),
        pb.SubscribeHomeassistantServicesRequest(),
        pb.SubscribeHomeAssistantStatesRequest(),
        pb.SubscribeBluetoothLEAdvertisementsRequest(flags=1),
        pb.SubscribeLogsRequest(level=5),
        pb.PingRequest(),
        pb.BluetoothScannerSetModeRequest(mode=1),
        pb.DisconnectRequest(),
    )
)


def _noise_opening() -> bytes:
    message = NoiseHandshake(KEY, b"NoiseAPIInit\x00\x00").write_message()
    return b"\x01\x00\x00" + encode_noise_frame(b"\x00" + message)


class ServerThread:
    """A gateway API server on its own event loop thread, so hypothesis can drive it synchronously."""

    def __init__(self, tmp_path: Path, api_key: str | None) -> None:
        self.loop = asyncio.new_event_loop()
        self.errors: list[str] = []
        self.loop.set_exception_handler(lambda _loop, ctx: self.errors.append(str(ctx.get("message"))))
        self.server: GatewayServer | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        main = self._main(tmp_path, api_key)
        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(main,))
        self._thread.start()
        assert self._ready.wait(10)

    async def _main(self, tmp_path: Path, api_key: str | None) -> None:
        self._stop = asyncio.Event()
        async with bare_server(tmp_path, configs=all_configs(), api_key=api_key) as server:
            self.server = server
            self._ready.set()
            await self._stop.wait()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    def close(self) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def internal_errors() -> Iterator[RecordingHandler]:
    with recording("services.gateway", logging.ERROR) as handler:
        yield handler


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    thread = ServerThread(tmp_path_factory.mktemp("plain"), None)
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def noise_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    thread = ServerThread(tmp_path_factory.mktemp("noise"), KEY)
    yield thread
    thread.close()


def _spray(port: int, data: bytes) -> None:
    """Send the bytes, read until the server closes or goes quiet, then hang up."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.settimeout(0.05)
        try:
            sock.sendall(data)
        except OSError:
            return  # closed on us mid-send: fine
        try:
            while sock.recv(65536):
                pass
        except (TimeoutError, OSError):
            pass


def _healthy(port: int) -> None:
    """A fresh plaintext client still gets Hello and Ping answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(encode_plaintext(ids.HELLO_REQUEST, _HELLO) + encode_plaintext(ids.PING_REQUEST, b""))
        decoder = PlaintextDecoder()
        frames: list[int] = []
        while 8 not in frames:
            data = sock.recv(4096)
            assert data, "server closed a healthy connection"
            frames += [f.msg_type for f in decoder.feed(data)]
        assert frames[:2] == [2, 8]


def _mutate(data: st.DataObject, stream: bytes) -> bytes:
    buf = bytearray(stream)
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if not buf:
            break
        i = data.draw(st.integers(0, len(buf) - 1))
        if op == "flip":
            buf[i] = data.draw(st.integers(0, 255))
        elif op == "insert":
            buf[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del buf[i]
        else:
            del buf[i:]
    return bytes(buf)


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.binary(min_size=1, max_size=3000))
def test_random_bytes_plaintext(
    plain_server: ServerThread, internal_errors: RecordingHandler, blob: bytes
) -> None:
    _spray(plain_server.port, blob)
    _healthy(plain_server.port)
    assert not plain_server.errors and not internal_errors.records


@FUZZ
@given(st.data())
def test_mutated_sessions_plaintext(
    plain_server: ServerThread, internal_errors: RecordingHandler, data: st.DataObject
) -> None:
    _spray(plain_server.port, _mutate(data, VALID_SESSION))
    _healthy(plain_server.port)
    assert not plain_server.errors and not internal_errors.records


@FUZZ
@given(st.data())
def test_mutated_and_truncated_noise_handshakes(
    noise_server: ServerThread, internal_errors: RecordingHandler, data: st.DataObject
) -> None:
    opening = _noise_opening()
    garbage = data.draw(st.binary(max_size=200))
    _spray(noise_server.port, _mutate(data, opening) + garbage)
    assert not noise_server.errors and not internal_errors.records


def test_oversized_frames_close_only_that_connection(plain_server: ServerThread) -> None:
    server = plain_server.server
    assert server is not None
    before = server.counters.bad_frames
    _spray(plain_server.port, b"\x00" + encode_varint(MAX_PAYLOAD + 1) + b"\x07" + b"x" * 100)
    _spray(plain_server.port, encode_plaintext(ids.HELLO_REQUEST, _HELLO) + b"\x00\xff\xff\x7f")
    _healthy(plain_server.port)
    assert server.counters.bad_frames >= before + 2


async def test_a_subscribed_client_keeps_getting_states_through_abuse(tmp_path: Path) -> None:
    async with bare_server(tmp_path, configs=all_configs()) as server:
        client = APIClient("127.0.0.1", server.port, None)
        await client.connect(login=True)
        await client.list_entities_services()
        states: list[EntityState] = []
        client.subscribe_states(states.append)
        await wait_until(lambda: len(states) >= 55)
        loop = asyncio.get_running_loop()
        rng = os.urandom
        for i in range(60):
            choices = [rng(200), VALID_SESSION[: i * 7], b"\x01\x00\x00" + rng(50), b"\x00" + b"\xff" * 5]
            payload = choices[i % 4]
            await loop.run_in_executor(None, _spray, server.port, payload)
        states.clear()
        server.registry.set_state("battery_48", battery_state(48, offset=9.0))
        await wait_until(lambda: states, what="a state after the abuse")
        assert server.counters.bad_frames > 0
        await client.disconnect()
