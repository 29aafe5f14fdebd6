"""Fuzz: the Modbus assembler, the API frame parsers (plaintext and Noise), a whole API connection, and
every MQTT payload parser, with hostile input. Zero crashes; every rejection is logged once with its reason.

`make test` runs a short budget; `make fuzz` (RENOGY_PROOF=long) runs >= 100,000 API frames and
>= 10,000 MQTT payloads (each test counts what it fed and asserts the floor).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aioesphomeapi.noise import NoiseHandshake
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.aggregator.inputs import parse_reader_health
from services.aggregator.service import Aggregator
from services.gateway import messages as ids
from services.gateway.bluetooth import BluetoothHub, parse_advertisements, parse_scanner_state
from services.gateway.connection import ApiConnection, Keepalive, Limits
from services.gateway.framing import (
    MAX_PAYLOAD,
    MAX_VARINT_BYTES,
    Frame,
    NoiseFrameDecoder,
    PlaintextDecoder,
    encode_noise_frame,
    encode_plaintext,
)
from services.gateway.identity import parse_mac
from services.gateway.inbound import Inbound
from services.gateway.keystore import KeyStore
from services.gateway.noise import STATE_FAILED, STATE_READY, NoiseCodec
from services.gateway.proto import pb
from services.gateway.registry import Registry
from services.gateway.server import GatewayServer, NodeInfo
from shared import registers
from shared.config import load_config
from shared.modbus import (
    BROADCAST_SLAVE,
    MAX_BUFFER,
    FrameError,
    FrameErrorKind,
    ReadRequest,
    ReadResponse,
    ResponseAssembler,
    crc_ok,
    encode_exception_response,
    encode_read_response,
    with_crc,
)
from shared.mqtt import Message
from shared.payloads import (
    PayloadError,
    loads_object,
    parse_device_config,
    parse_device_state,
    parse_reading,
)
from shared.topics import Topics
from tests.gateway.support import all_configs, battery_state
from tests.support.fuzz import budget, long_run
from tests.support.logs import RecordingHandler, recording

TOPICS = Topics()
FUZZ = settings(
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
    database=None,
    # `make test` replays the same short budget every time (no flaky CI); `make fuzz` explores afresh.
    derandomize=not long_run(),
)
LONG_API_FRAMES = 100_000


def fuzz(max_examples: int) -> settings:
    return settings(FUZZ, max_examples=max_examples)


LONG_MQTT_PAYLOADS = 10_000


# What every fuzz test fed, over the module (the last test checks the long budget and records it).
TOTALS: Counter[str] = Counter()


def _report(name: str, counts: Counter[str], total: str | None = None, key: str = "frames") -> None:
    print(f"\n{name}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if total is not None:
        TOTALS[total] += counts[key]


# --- byte-level mutation ---------------------------------------------------------------------------------


def mutate(data: st.DataObject, stream: bytes, max_ops: int = 4) -> bytes:
    buf = bytearray(stream)
    for _ in range(data.draw(st.integers(1, max_ops))):
        op = data.draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "duplicate"]))
        if not buf:
            break
        i = data.draw(st.integers(0, len(buf) - 1))
        if op == "flip":
            buf[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set":
            buf[i] = data.draw(
                st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF, data.draw(st.integers(0, 255))])
            )
        elif op == "insert":
            buf[i:i] = data.draw(st.binary(min_size=1, max_size=12))
        elif op == "delete":
            del buf[i : i + data.draw(st.integers(1, 8))]
        elif op == "truncate":
            del buf[i:]
        else:
            j = data.draw(st.integers(i, min(len(buf), i + 64)))
            buf[i:i] = buf[i:j]
    return bytes(buf)


def split(data: st.DataObject, stream: bytes, largest: int = 300) -> list[bytes]:
    """The stream in random pieces, as TCP or BLE notifications deliver it."""
    pieces = []
    pos = 0
    while pos < len(stream):
        size = data.draw(st.integers(1, largest))
        pieces.append(stream[pos : pos + size])
        pos += size
    return pieces


# --- Modbus: the reply assembler ----------------------------------------------------------------------------

BLOCKS = (registers.BLOCK_STATUS, registers.BLOCK_CELLS, registers.BLOCK_INFO, (5000, 17), (5122, 8))


@st.composite
def modbus_piece(draw: Any, request: ReadRequest) -> tuple[str, bytes]:
    slave = request.slave if request.slave != BROADCAST_SLAVE else draw(st.sampled_from([48, 49, 50, 51]))
    words = draw(st.lists(st.integers(0, 0xFFFF), min_size=request.count, max_size=request.count))
    genuine = encode_read_response(slave, words)
    kind = draw(
        st.sampled_from(
            [
                "genuine",
                "exception",
                "wrong_slave",
                "wrong_count",
                "bad_crc",
                "truncated",
                "random",
                "mutated",
            ]
        )
    )
    if kind == "genuine":
        return kind, genuine
    if kind == "exception":
        return kind, encode_exception_response(slave, 3, draw(st.integers(1, 11)))
    if kind == "wrong_slave":
        other = draw(st.integers(1, 247).filter(lambda s: s != slave))
        return kind, with_crc(bytes((other,)) + genuine[1:-2])
    if kind == "wrong_count":
        other_words = draw(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=40))
        return kind, encode_read_response(slave, other_words)
    if kind == "bad_crc":
        return kind, genuine[:-1] + bytes((genuine[-1] ^ draw(st.integers(1, 255)),))
    if kind == "truncated":
        return kind, genuine[: draw(st.integers(1, len(genuine) - 1))]
    if kind == "random":
        return kind, draw(st.binary(min_size=1, max_size=80))
    flipped = bytearray(genuine)
    flipped[draw(st.integers(0, len(genuine) - 1))] ^= 1 << draw(st.integers(0, 7))
    return kind, bytes(flipped)


def test_fuzz_modbus_assembler() -> None:
    counts: Counter[str] = Counter()

    @fuzz(budget(150, 15_000))
    @given(st.data())
    def run(data: st.DataObject) -> None:
        start, count = data.draw(st.sampled_from(BLOCKS))
        slave = data.draw(st.sampled_from([48, 49, 50, 51, BROADCAST_SLAVE, 1, 247]))
        request = ReadRequest(slave, start, count)
        pieces = data.draw(st.lists(modbus_piece(request), min_size=1, max_size=6))
        stream = b"".join(p for _, p in pieces)
        assembler = ResponseAssembler(request)
        events = []
        for fragment in split(data, stream, 248):
            events += assembler.feed(fragment)
            assert len(assembler.pending) <= MAX_BUFFER
        counts["frames"] += len(pieces)
        for event in events:
            if isinstance(event, ReadResponse):
                counts["accepted"] += 1
                frame = bytes(event.frame)
                # Only a CRC-valid reply to exactly this request that really was in the stream.
                assert crc_ok(frame) and frame in stream
                assert frame[1] == 3 and frame[2] == 2 * count and len(event.registers) == count
                assert slave in (BROADCAST_SLAVE, frame[0])
            else:
                assert isinstance(event, FrameError)
                assert event.kind in FrameErrorKind and str(event.detail)  # a reason, always
                counts[f"rejected {event.kind.value}"] += 1
        if [k for k, _ in pieces] == ["genuine"]:
            assert len(events) == 1 and isinstance(events[0], ReadResponse) and events[0].frame == stream

    run()
    _report("modbus assembler", counts, "modbus_frames")
    assert counts["accepted"] > 0 and counts["rejected garbage"] > 0


# --- API: plaintext frames -------------------------------------------------------------------------------------

frame_st = st.tuples(
    st.integers(0, 2**21 - 1) | st.sampled_from([1, 3, 5, 7, 9, 11, 20, 28, 34, 38, 66, 87, 124, 127, 149]),
    st.binary(max_size=300) | st.builds(lambda n: b"\x5a" * n, st.integers(0, 70_000)),
)


def test_fuzz_api_plaintext_frames() -> None:
    counts: Counter[str] = Counter()

    @fuzz(budget(60, 3_000))
    @given(st.data(), st.lists(frame_st, min_size=20, max_size=60))
    def run(data: st.DataObject, frames: list[tuple[int, bytes]]) -> None:
        frames = [(t, p[:MAX_PAYLOAD]) for t, p in frames]
        stream = b"".join(encode_plaintext(t, p) for t, p in frames)
        mutated = data.draw(st.booleans())
        if mutated:
            stream = mutate(data, stream)
        decoder = PlaintextDecoder()
        out: list[Frame] = []
        for piece in split(data, stream, 4096):
            out += decoder.feed(piece)
            # The per-connection input buffer never holds more than one frame's worth.
            assert decoder.buffered <= MAX_PAYLOAD + 1 + 2 * MAX_VARINT_BYTES
        counts["frames"] += len(frames)
        counts["decoded"] += len(out)
        assert all(len(f.payload) <= MAX_PAYLOAD for f in out)
        if decoder.error is not None:
            assert decoder.error.kind in {"bad_indicator", "oversized", "malformed"} and str(decoder.error)
            counts[f"rejected {decoder.error.kind}"] += 1
            assert decoder.feed(b"\x00\x00\x07") == []  # dead for good
        if not mutated:
            assert decoder.error is None and [(f.msg_type, f.payload) for f in out] == frames

    run()
    _report("API plaintext", counts, "api_frames")
    if long_run():
        assert counts["frames"] >= LONG_API_FRAMES


# --- API: Noise handshake and data phase ------------------------------------------------------------------

PSK = os.urandom(32)
PSK_TEXT = base64.b64encode(PSK).decode()
PROLOGUE = b"NoiseAPIInit\x00\x00"


def _noise_pair() -> tuple[NoiseCodec, Any, Any]:
    server = NoiseCodec(PSK, "renogy-bt-proxy", "02aabbccddee")
    client = NoiseHandshake(PSK_TEXT, PROLOGUE)
    server.feed(b"\x01\x00\x00" + encode_noise_frame(b"\x00" + client.write_message()))
    decoder = NoiseFrameDecoder()
    decoder.feed(server.take_output())
    _hello, reply = decoder.next_body(), decoder.next_body()
    assert reply is not None and server.state == STATE_READY
    client.read_message(reply[1:])
    encrypt, decrypt = client.get_ciphers()
    return server, encrypt, decrypt


def test_fuzz_api_noise_frames() -> None:
    """Data phase: a tampered stream may only end the session; it never yields a frame that was not sent."""
    counts: Counter[str] = Counter()

    @fuzz(budget(40, 3_000))
    @given(
        st.data(),
        st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=200)), min_size=20, max_size=60),
    )
    def run(data: st.DataObject, frames: list[tuple[int, bytes]]) -> None:
        server, encrypt, _ = _noise_pair()
        stream = b"".join(
            encode_noise_frame(encrypt.encrypt(t.to_bytes(2, "big") + len(p).to_bytes(2, "big") + p))
            for t, p in frames
        )
        mutated = data.draw(st.booleans())
        if mutated:
            stream = mutate(data, stream)
        out: list[Frame] = []
        for piece in split(data, stream, 2048):
            out += server.feed(piece)
        counts["frames"] += len(frames)
        # Authenticity: whatever came out is exactly what was sent, in order.
        assert [(f.msg_type, f.payload) for f in out] == frames[: len(out)]
        if server.state == STATE_FAILED:
            assert server.error and server.error_kind
            counts[f"rejected {server.error_kind}"] += 1
        if not mutated:
            assert server.state == STATE_READY and len(out) == len(frames)

    run()
    _report("API Noise data phase", counts, "api_frames")
    if long_run():
        assert counts["frames"] >= LONG_API_FRAMES


def test_fuzz_api_noise_handshake() -> None:
    counts: Counter[str] = Counter()

    @fuzz(budget(80, 5_000))
    @given(st.data())
    def run(data: st.DataObject) -> None:
        key = PSK_TEXT if data.draw(st.booleans()) else base64.b64encode(os.urandom(32)).decode()
        client = NoiseHandshake(key, PROLOGUE)
        opening = b"\x01\x00\x00" + encode_noise_frame(b"\x00" + client.write_message())
        opening = mutate(data, opening) + data.draw(st.binary(max_size=64))
        server = NoiseCodec(PSK, "renogy-bt-proxy", "02aabbccddee")
        for piece in split(data, opening, 64):
            server.feed(piece)
        counts["frames"] += 2
        output = server.take_output()
        if server.state == STATE_FAILED:
            counts[f"rejected {server.error_kind}"] += 1
            assert server.error and server.error_kind
            bodies = _noise_bodies(output)
            # The server hello, then either the handshake reply (0x00: the failure came in the data phase,
            # where the connection just closes) or a reject (0x01 + the reason, as ESPHome sends it).
            if not any(body[:1] == b"\x00" for body in bodies[1:]):
                assert bodies and bodies[-1][0] == 0x01 and bodies[-1][1:].decode("ascii")

    run()
    _report("API Noise handshake", counts, "api_frames")


# --- API: a whole connection (real ApiConnection and server logic, in memory) ---------------------------------


class MemoryTransport(asyncio.Transport):
    def __init__(self, peer: tuple[str, int]) -> None:
        super().__init__()
        self.peer = peer
        self.output = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.output += data

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


@pytest.fixture
def gateway_logs() -> Iterator[RecordingHandler]:
    with recording("services.gateway") as handler:
        yield handler


_HELLO = pb.HelloRequest(client_info="fuzz", api_version_major=1, api_version_minor=19).SerializeToString()
SESSION = [
    (ids.HELLO_REQUEST, _HELLO),
    (ids.AUTH_REQUEST, b""),
    (ids.DEVICE_INFO_REQUEST, b""),
    (ids.LIST_ENTITIES_REQUEST, b""),
    (ids.CAPABILITIES_REQUEST, b""),
    (ids.SUBSCRIBE_STATES, b""),
    (ids.SUBSCRIBE_HA_SERVICES, b""),
    (ids.SUBSCRIBE_HA_STATES, b""),
    (ids.BT_SUBSCRIBE, pb.SubscribeBluetoothLEAdvertisementsRequest(flags=1).SerializeToString()),
    (ids.BT_SUBSCRIBE, pb.SubscribeBluetoothLEAdvertisementsRequest(flags=0).SerializeToString()),
    (ids.SUBSCRIBE_LOGS, pb.SubscribeLogsRequest(level=5, dump_config=True).SerializeToString()),
    (ids.BT_CONNECTIONS_FREE_SUBSCRIBE, b""),
    (ids.PING_REQUEST, b""),
    (ids.BT_SET_MODE, pb.BluetoothScannerSetModeRequest(mode=1).SerializeToString()),
    (ids.BT_UNSUBSCRIBE, b""),
    (ids.PING_RESPONSE, b""),
]


def _server(tmp_path: Path, api_key: str | None) -> GatewayServer:
    registry = Registry()
    for config in all_configs():
        registry.set_config(config.device.id, config)
        if config.device.id.startswith("battery_"):
            registry.set_state(config.device.id, battery_state(int(config.device.id.split("_")[1])))
    node = NodeInfo(name="fuzz-node", friendly_name="Fuzz", mac=parse_mac("02:AA:BB:CC:DD:EE"))
    return GatewayServer(node, registry, KeyStore(api_key, tmp_path), BluetoothHub(flush_interval=10.0))


def _rejection_lines(records: list[logging.LogRecord], peer: str) -> list[str]:
    lines = [r.getMessage() for r in records]
    return [
        line
        for line in lines
        if peer in line and ("closing" in line or "failed the handshake" in line or "is not reading" in line)
    ]


def _noise_bodies(data: bytes) -> list[bytes]:
    decoder = NoiseFrameDecoder()
    decoder.feed(data)
    bodies = []
    while (body := decoder.next_body()) is not None:
        bodies.append(body)
    return bodies


# SetKeyRequest (124) is left out: a valid one switches the server to encryption for all later examples.
connection_frame_st = frame_st.filter(lambda f: f[0] != ids.SET_KEY_REQUEST).map(lambda f: (f[0], f[1][:512]))


@pytest.mark.parametrize("encrypted", [False, True], ids=["plaintext", "noise"])
def test_fuzz_api_connection(tmp_path: Path, gateway_logs: RecordingHandler, encrypted: bool) -> None:
    """A real connection object fed hostile sessions: no internal error; a rejected client is logged once, with why."""
    loop = asyncio.new_event_loop()
    server = _server(tmp_path, PSK_TEXT if encrypted else None)
    counts: Counter[str] = Counter()
    ports = iter(range(10_000, 10_000_000))

    def feed(connection: ApiConnection, data: st.DataObject, stream: bytes) -> None:
        for piece in split(data, stream, 512):
            connection.data_received(piece)

    async def session(data: st.DataObject) -> None:
        peer = ("10.0.0.1", next(ports))
        connection = ApiConnection(server, Keepalive(), Limits())
        transport = MemoryTransport(peer)
        gateway_logs.records.clear()
        failures_before = server.counters.bad_frames + server.counters.handshake_failures
        connection.connection_made(transport)
        try:
            await _session(data, connection, transport, peer, failures_before)
        finally:
            # Also when hypothesis stops an example mid-draw: a connection left open would hold a
            # pre-Hello slot of the next examples.
            connection.connection_lost(None)

    async def _session(
        data: st.DataObject,
        connection: ApiConnection,
        transport: MemoryTransport,
        peer: tuple[str, int],
        failures_before: int,
    ) -> None:
        frames = data.draw(st.lists(st.sampled_from(SESSION) | connection_frame_st, max_size=20))
        frames = [(ids.HELLO_REQUEST, _HELLO), *frames] if data.draw(st.booleans()) else frames
        where = data.draw(
            st.sampled_from(["nowhere", "handshake", "frames"] if encrypted else ["nowhere", "frames"])
        )
        if encrypted:
            right_key = data.draw(st.sampled_from([True, True, True, False]))
            key = PSK_TEXT if right_key else base64.b64encode(os.urandom(32)).decode()
            client = NoiseHandshake(key, PROLOGUE)
            opening = b"\x01\x00\x00" + encode_noise_frame(b"\x00" + client.write_message())
            feed(connection, data, mutate(data, opening) if where == "handshake" else opening)
            codec = connection.codec
            if codec is not None and codec.ready:
                counts["handshakes"] += 1
                bodies = _noise_bodies(bytes(transport.output))
                client.read_message(bodies[1][1:])
                encrypt, _ = client.get_ciphers()
                stream = b"".join(
                    encode_noise_frame(encrypt.encrypt(t.to_bytes(2, "big") + len(p).to_bytes(2, "big") + p))
                    for t, p in frames
                    if t <= 0xFFFF
                )
                feed(connection, data, mutate(data, stream) if where == "frames" else stream)
        else:
            stream = b"".join(encode_plaintext(t, p) for t, p in frames)
            feed(connection, data, mutate(data, stream) if where == "frames" else stream)
        counts["frames"] += len(frames) + (2 if encrypted else 0)
        errors = [r for r in gateway_logs.records if r.levelno >= logging.ERROR or r.exc_info]
        assert not errors, [r.getMessage() for r in errors]
        lines = _rejection_lines(gateway_logs.records, f"{peer[0]}:{peer[1]}")
        rejected = server.counters.bad_frames + server.counters.handshake_failures > failures_before
        if rejected:
            counts["rejected"] += 1
            assert len(lines) == 1, lines  # logged once, with the reason after the peer
            assert connection.closing
        else:
            assert not lines, lines

    @fuzz(budget(80, 4_000))
    @given(st.data())
    def run(data: st.DataObject) -> None:
        loop.run_until_complete(session(data))

    try:
        run()
    finally:
        loop.close()
    _report(f"API connection ({'noise' if encrypted else 'plaintext'})", counts, "api_frames")
    assert counts["rejected"] > 0


# --- MQTT payloads ---------------------------------------------------------------------------------------------

json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=24),
    st.sampled_from(["", "0", "²", "٣", "NaN", "1e400", "c464e3383d0e", "active", "running", "sensor"]),
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=10), inner, max_size=6),
    max_leaves=24,
)


NOW = round(time.time(), 3)  # fixed for the run: generation must not depend on the clock


def _reading_template(slave: int = 48) -> dict[str, Any]:
    return {
        "schema": 1,
        "ts": NOW,
        "bt2": "c464e3383d0e",
        "slave_id": slave,
        "complete": True,
        "boot_id": "5f0c",
        "voltage": 52.4,
        "current": -3.26,
        "remaining_charge": 49.8,
        "capacity": 50.0,
        "cycle_count": 12,
        "cell_voltages": [3.4] * 15,
        "temperatures": [14.0] * 15,
        "model": "RBT50LFP48S",
        "serial": "22RBH4A051020000",
        "firmware": "V104",
        "status1": 0,
        "charge_mosfet_on": True,
        "raw": {"5042": "3003"},
    }


TEMPLATES: dict[str, Callable[[], dict[str, Any]]] = {
    "reading": _reading_template,
    "device_config": lambda: orjson.loads(all_configs()[0].to_payload()),
    "bank_config": lambda: orjson.loads(all_configs()[-1].to_payload()),
    "device_state": lambda: orjson.loads(battery_state(48).to_payload()),
    "reader_health": lambda: {
        "schema": 1,
        "ts": NOW,
        "bt2": "c464e3383d0e",
        "rssi": -60,
        "link_quality": 98,
        "cycles": 3,
        "errors": {"timeout": 1},
        "batteries": {"48": {"link_quality": 100, "last_good_ts": NOW, "consecutive_failures": 0}},
    },
    "advertisements": lambda: {
        "schema": 1,
        "ts": NOW,
        "adapter_address": "00:1A:7D:DA:71:13",
        "advertisements": [
            {"address": "A4:C1:38:12:34:56", "address_type": 0, "rssi": -71, "data": "020106"}
        ],
    },
    "scanner": lambda: {
        "schema": 1,
        "ts": NOW,
        "state": "running",
        "mode": "passive",
        "configured_mode": "passive",
        "adapter_address": "00:1A:7D:DA:71:13",
    },
    "bridge_state": lambda: {"schema": 1, "state": "offline", "version": "0.1.0", "boot_id": "x", "ts": NOW},
}


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            yield (*prefix, index)
            yield from _paths(value, (*prefix, index))


def _set(obj: Any, path: tuple[Any, ...], value: Any, delete: bool = False) -> None:
    for step in path[:-1]:
        obj = obj[step]
    if delete:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value


@st.composite
def mqtt_payload(draw: Any) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(sorted(TEMPLATES)))
    obj = TEMPLATES[kind]()
    for _ in range(draw(st.integers(0, 4))):
        paths = list(_paths(obj))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "delete":
            _set(obj, path, None, delete=True)
        elif action == "add" and isinstance(obj, dict):
            obj[draw(st.text(max_size=10))] = draw(json_value)
        else:
            _set(obj, path, draw(json_value))
    data = orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)
    form = draw(st.sampled_from(["json", "json", "json", "bytes", "random", "huge", "deep"]))
    if form == "bytes":
        data = mutate(draw(st.data()), data, 3)
    elif form == "random":
        data = draw(st.binary(max_size=200))
    elif form == "huge":
        data = data[:-1] + b',"pad":"' + b"x" * draw(st.integers(0, 300_000)) + b'"}'
    elif form == "deep":
        depth = draw(st.integers(1, 3000))
        data = b'{"schema":1,"values":' + b"[" * depth + b"]" * depth + b"}"
    return kind, data


PARSERS: dict[str, Callable[[bytes], Any]] = {
    "loads_object": loads_object,
    "reading": parse_reading,
    "device_config": parse_device_config,
    "device_state": parse_device_state,
    "reader_health": parse_reader_health,
    "advertisements": parse_advertisements,
    "scanner": parse_scanner_state,
}


def test_fuzz_mqtt_payload_parsers() -> None:
    """Every parser either returns or raises PayloadError with a reason: no other exception, ever."""
    counts: Counter[str] = Counter()

    @fuzz(budget(300, 12_000))
    @given(mqtt_payload())
    def run(case: tuple[str, bytes]) -> None:
        _, data = case
        counts["payloads"] += 1
        for name, parser in PARSERS.items():
            try:
                parser(data)
            except PayloadError as exc:
                assert str(exc)
                counts[f"{name} rejected"] += 1
            else:
                counts[f"{name} accepted"] += 1

    run()
    _report("MQTT payload parsers", counts, "mqtt_payloads", "payloads")
    if long_run():
        assert counts["payloads"] >= LONG_MQTT_PAYLOADS


def _topic_for(kind: str, rng: random.Random) -> str:
    slave = rng.choice([48, 49, 50, 51])
    return {
        "reading": TOPICS.reading("c464e3383d0e", slave),
        "device_config": TOPICS.device_config(f"battery_{slave}"),
        "bank_config": TOPICS.device_config("bank"),
        "device_state": TOPICS.device_state(f"battery_{slave}"),
        "reader_health": TOPICS.bridge_health("reader", "default"),
        "advertisements": TOPICS.advertisements("default"),
        "scanner": TOPICS.scanner_state("default"),
        "bridge_state": TOPICS.bridge_state("reader", "default"),
    }[kind]


def test_fuzz_mqtt_payloads_through_the_services(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The aggregator and the gateway's inbound side take every payload; each rejection is one log line with its
    reason and topic; nothing reaches a generic exception handler."""
    config = load_config(
        environ={},
        overrides={"state_dir": str(tmp_path), "aggregator.profile": "extended", "reader.info_interval": 600},
    )
    aggregator = Aggregator(config)
    registry, hub = Registry(), BluetoothHub(flush_interval=10.0)
    inbound = Inbound(TOPICS, "default", registry, hub)
    counts: Counter[str] = Counter()
    rng = random.Random(1)
    caplog.set_level(logging.DEBUG)
    loop = asyncio.new_event_loop()

    async def deliver(kind: str, data: bytes) -> None:
        topic = _topic_for(kind, rng)
        message = Message(topic, data, retain=rng.random() < 0.3)
        caplog.clear()
        before_drops = sum(aggregator.core.stats.dropped.values())
        before_bad = inbound.bad_payloads
        aggregator._on_message(message)
        inbound.handle(message)
        records = caplog.records
        errors = [r for r in records if r.levelno >= logging.ERROR or r.exc_info]
        assert not errors, [r.getMessage() for r in errors]
        counts["payloads"] += 1
        dropped = sum(aggregator.core.stats.dropped.values()) - before_drops
        bad = inbound.bad_payloads - before_bad
        drop_lines = [r.getMessage() for r in records if r.getMessage().startswith("dropped message on")]
        if dropped:
            counts["aggregator rejected"] += 1
            assert len(drop_lines) == 1 and topic in drop_lines[0] and drop_lines[0].split(": ", 1)[1], (
                drop_lines
            )
        bad_lines = [
            r.getMessage() for r in records if "dropping" in r.getMessage() and "bad" in r.getMessage()
        ]
        if bad:
            counts["gateway rejected"] += 1
            assert len(bad_lines) == 1 and topic in bad_lines[0], bad_lines

    @fuzz(budget(200, 10_000))
    @given(mqtt_payload())
    def run(case: tuple[str, bytes]) -> None:
        loop.run_until_complete(deliver(*case))

    try:
        run()
    finally:
        loop.close()
    _report("MQTT payloads through aggregator and gateway", counts, "mqtt_payloads", "payloads")
    assert counts["aggregator rejected"] > 0 and counts["gateway rejected"] > 0
    if long_run():
        assert counts["payloads"] >= LONG_MQTT_PAYLOADS


def test_fuzz_totals() -> None:
    """Runs after the fuzzers above (file order): the long budget was fed, and is recorded with its figures."""
    if not TOTALS:
        pytest.skip("no fuzz test ran in this session")
    print(f"\nfuzz totals: {dict(TOTALS)}")
    if long_run():
        assert TOTALS["api_frames"] >= LONG_API_FRAMES and TOTALS["mqtt_payloads"] >= LONG_MQTT_PAYLOADS, (
            TOTALS
        )
        from tests.bench import record

        record("proof", "fuzz", {"result": "passed", **TOTALS, "crashes": 0})


# --- regressions the fuzzers found ---------------------------------------------------------------------------


@pytest.mark.parametrize("state", [{}, [], {"a": 1}])
def test_regression_scanner_state_of_the_wrong_type_is_a_payload_error(state: Any) -> None:
    payload = orjson.dumps({"schema": 1, "state": state, "mode": "passive"})
    with pytest.raises(PayloadError):
        parse_scanner_state(payload)
    with pytest.raises(PayloadError):
        parse_scanner_state(orjson.dumps({"schema": 1, "state": "running", "mode": state}))


@pytest.mark.parametrize("key", ["²", "٣", "४८"])
def test_regression_reader_health_with_non_ascii_digits_is_a_payload_error(key: str) -> None:
    payload = orjson.dumps({"schema": 1, "ts": NOW, "bt2": "c464e3383d0e", "batteries": {key: {}}})
    with pytest.raises(PayloadError):
        parse_reader_health(payload)


def test_regression_one_read_of_many_requests_cannot_queue_more_than_the_hard_limit(tmp_path: Path) -> None:
    """20,000 pipelined ListEntities requests in one read used to queue ~68 MB of replies before the cap was
    checked (the replies were corked until the whole read was handled); now the client is cut off at the cap."""
    loop = asyncio.new_event_loop()
    server = _server(tmp_path, None)

    # The message-rate budget would close this client first; the output cap is tested on its own.
    unlimited = Limits(burst=1_000_000)

    async def flood() -> MemoryTransport:
        connection = ApiConnection(server, Keepalive(), unlimited)
        transport = MemoryTransport(("10.0.0.2", 1))
        connection.connection_made(transport)
        flood = encode_plaintext(ids.LIST_ENTITIES_REQUEST, b"") * 20_000
        connection.data_received(encode_plaintext(ids.HELLO_REQUEST, _HELLO) + flood)
        assert connection.closing and transport.closed
        connection.connection_lost(None)
        return transport

    try:
        transport = loop.run_until_complete(flood())
    finally:
        loop.close()
    assert len(transport.output) <= Limits().hard
    assert server.counters.slow_client_disconnects == 1
