"""`renogy-proxy healthcheck SERVICE`: one line and an exit code for docker and monitors."""

from __future__ import annotations

import argparse
import socket
import time
from dataclasses import dataclass

from services.ops.session import EXIT_HEALTHY, EXIT_UNHEALTHY, EXIT_UNREACHABLE, BrokerUnreachable, _Session
from services.ops.status import _age, _service_row
from shared.config import Config
from shared.topics import Topics

# --- healthcheck ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    healthy: bool
    text: str


def check_service(config: Config, service: str, instance: str, *, timeout: float = 5.0) -> Verdict:
    """Is this instance online, and has it spoken recently (its retained state/health on the broker)?"""
    topics = Topics(config.mqtt.root_topic)
    state_topic, health_topic = (
        topics.bridge_state(service, instance),
        topics.bridge_health(service, instance),
    )
    session = _Session(config.mqtt, "healthcheck")
    started = time.monotonic()
    session.connect(timeout)
    try:
        # Retained messages follow the SUBACK at once, so the quiet period after it is enough.
        retained = session.collect([state_topic, health_topic], started + timeout)
    finally:
        session.close()
    row = _service_row(
        service,
        instance,
        state=retained.json(state_topic),
        health=retained.json(health_topic),
        config=config,
        now=time.time(),
    )
    if row.problems:
        return Verdict(False, row.problems[0])
    return Verdict(True, f"{row.name} online, last heard {_age(row.age_s)} ago")


HELLO_TIMEOUT = 3.0
# The healthcheck runs every 30 s on a Pi: it avoids importing the protobuf table (~0.3 s of CPU);
# tests/gateway/test_gw_messages.py checks these against it.
MSG_PING_REQUEST = 7
MSG_PING_RESPONSE = 8
MSG_HELLO_REQUEST = 1
MSG_HELLO_RESPONSE = 2
NOISE_CLIENT_HELLO = b"\x01\x00\x00"


def _varint(value: int) -> bytes:
    out = b""
    while True:
        value, digit = value >> 7, value & 0x7F
        out += bytes((digit | (0x80 if value else 0),))
        if not value:
            return out


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data):
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos
    raise ValueError("truncated varint")


def hello_request() -> bytes:
    """A plaintext HelloRequest frame (client_info, API 1.10), encoded by hand: no protobuf import."""
    info = b"renogy-proxy healthcheck"
    body = b"\x0a" + _varint(len(info)) + info + b"\x10\x01\x18\x0a"
    return b"\x00" + _varint(len(body)) + _varint(MSG_HELLO_REQUEST) + body


def hello_name(frame: bytes) -> str | None:
    """The node name (field 4) of a plaintext HelloResponse frame; None when it is not one."""
    try:
        length, pos = _read_varint(frame, 1)
        msg_type, pos = _read_varint(frame, pos)
        body, pos = frame[pos : pos + length], 0
        if msg_type != MSG_HELLO_RESPONSE or len(body) < length:
            return None
        while pos < len(body):
            key, pos = _read_varint(body, pos)
            if key & 7 == 0:
                _, pos = _read_varint(body, pos)
            elif key & 7 == 2:
                size, pos = _read_varint(body, pos)
                if key >> 3 == 4:
                    return body[pos : pos + size].decode(errors="replace")
                pos += size
            else:
                return None
    except ValueError:
        return None
    return ""


def _receive(sock: socket.socket, first: bytes, timeout: float) -> bytes:
    """Read on until a plaintext frame is complete (a HelloResponse is longer than one segment at times)."""
    data = first
    deadline = time.monotonic() + timeout
    while data[:1] == b"\x00" and time.monotonic() < deadline:
        try:
            length, pos = _read_varint(data, 1)
            _, pos = _read_varint(data, pos)
        except ValueError:
            length, pos = 1, len(data)
        if len(data) >= pos + length:
            break
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def probe_api(
    host: str,
    port: int,
    *,
    encrypted: bool,
    timeout: float = HELLO_TIMEOUT,
    expect_name: str | None = None,
) -> Verdict:
    """Does the ESPHome API answer, and is it ours? Plaintext: a Hello; Noise: the server hello.

    Both carry the node name, so another process's gateway (or an ESPHome device) on the port is not
    taken for ours when ``expect_name`` is given.
    """
    request = NOISE_CLIENT_HELLO if encrypted else hello_request()
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(request)
            reply = sock.recv(4096)
            if reply and not encrypted:
                reply = _receive(sock, reply, timeout)
    except OSError as exc:
        return Verdict(False, f"ESPHome API on {host}:{port} does not answer ({exc.strerror or exc})")
    if not reply:
        return Verdict(False, f"ESPHome API on {host}:{port} closed the connection without answering")
    name: str | None = None
    if reply[0] == 0x01 and len(reply) >= 4:
        body = reply[3:]
        if body[:1] == b"\x01" and b"\x00" in body[1:]:
            name = body[1:].split(b"\x00", 1)[0].decode(errors="replace")
        if encrypted and name is not None:
            verdict = Verdict(True, f"ESPHome API on {host}:{port} answers (Noise, node {name})")
        else:
            verdict = Verdict(True, f"ESPHome API on {host}:{port} answers (it expects Noise encryption)")
    elif reply[0] == 0x00:
        name = hello_name(reply) if not encrypted else None
        if name is not None:
            verdict = Verdict(True, f"ESPHome API on {host}:{port} answers (plaintext, node {name})")
        else:
            verdict = Verdict(True, f"ESPHome API on {host}:{port} answers (plaintext only)")
    else:
        return Verdict(False, f"ESPHome API on {host}:{port} sent an unexpected reply {reply[:8].hex()}")
    if expect_name is not None and name and name != expect_name:
        return Verdict(
            False,
            f"ESPHome API on {host}:{port} answers as node {name!r}, not this gateway's {expect_name!r}: "
            "another gateway or ESPHome device holds the port (set --api-port / gateway.api_port, or "
            "gateway.name if that one is yours)",
        )
    return verdict


def _api_target(config: Config) -> tuple[str, int, bool]:
    from services.gateway.keystore import key_file_name  # noqa: PLC0415 - small module, no heavy imports

    gateway = config.gateway
    host = gateway.bind if gateway.bind not in ("", "0.0.0.0", "::") else "127.0.0.1"
    encrypted = bool(gateway.api_key) or (config.state_dir / key_file_name(gateway.instance)).exists()
    return host, gateway.api_port, encrypted


def healthcheck(args: argparse.Namespace, config: Config) -> int:
    """`renogy-proxy healthcheck SERVICE`: for docker compose and monitors; one line, exit code 0/1/2."""
    service = args.service
    instance = (
        args.instance
        or {
            "reader": config.reader.instance,
            "aggregator": config.aggregator.instance,
            "gateway": config.gateway.instance,
        }[service]
    )
    try:
        verdict = check_service(config, service, instance, timeout=args.timeout)
    except BrokerUnreachable as exc:
        print(f"unhealthy: {exc}")
        return EXIT_UNREACHABLE
    verdicts = [verdict]
    if service == "gateway" and config.gateway.api_port:
        host, port, encrypted = _api_target(config)
        verdicts.append(
            probe_api(
                host,
                port,
                encrypted=encrypted,
                timeout=min(args.timeout, HELLO_TIMEOUT),
                expect_name=config.gateway.name,
            )
        )
    healthy = all(v.healthy for v in verdicts)
    print(("healthy: " if healthy else "unhealthy: ") + "; ".join(v.text for v in verdicts))
    return EXIT_HEALTHY if healthy else EXIT_UNHEALTHY
