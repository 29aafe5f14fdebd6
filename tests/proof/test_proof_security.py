"""Security checks on the running stack.

- API key set: plaintext clients are refused, a wrong key gets the MAC-failure reject, the right key works.
- MQTT user name/password and TLS against a Mosquitto that requires them (and refuses anything less).
- Secrets never appear in any log, nor in `renogy-proxy diagnose`.
- The API port limits clients and caps what one connection may make the gateway buffer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aioesphomeapi.client import APIClient
from aioesphomeapi.core import (
    APIConnectionError,
    InvalidEncryptionKeyAPIError,
    RequiresEncryptionAPIError,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.gateway import messages as ids
from services.gateway.framing import PlaintextDecoder, encode_plaintext, encode_varint
from services.gateway.proto import pb
from shared.config import MqttConfig
from shared.mqtt import MqttClient
from tests.proof.support import ENTITIES, ClientWatch, ProofStack, proc_sample
from tests.support.brokers import MOSQUITTO, MosquittoBroker, wait_port
from tests.support.stack import api_snapshot

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
pytestmark = pytest.mark.skipif(
    MOSQUITTO is None or MOSQUITTO_PASSWD is None,
    reason="needs mosquitto and mosquitto_passwd (apt-get install mosquitto)",
)

API_KEY = base64.b64encode(os.urandom(32)).decode()
MQTT_USER = "renogy"
MQTT_PASSWORD = "s3cret-" + base64.b32encode(os.urandom(10)).decode().lower()


# --- a Mosquitto that requires TLS and a password -----------------------------------------------------


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def make_pki(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost; returns (ca, cert, key) paths."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("renogy-proof-ca"))
        .issuer_name(_name("renogy-proof-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.crt", directory / "server.crt", directory / "server.key"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    for path in paths:
        path.chmod(0o644)  # mosquitto may drop to its own user
    return paths


@dataclass
class SecureMosquitto(MosquittoBroker):
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    passwords: Path | None = None

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        return "\n".join(
            [
                f"listener {self.port} 127.0.0.1",
                f"cafile {self.ca}",
                f"certfile {self.cert}",
                f"keyfile {self.key}",
                "tls_version tlsv1.2",
                "allow_anonymous false",
                f"password_file {self.passwords}",
                "persistence false",
                f"log_dest file {self.workdir / 'mosquitto.log'}",
                "log_type all",
                # As root, mosquitto drops to its own user, which cannot read pytest's private tmp dirs.
                "user root" if os.geteuid() == 0 else "",
                "",
            ]
        )


@contextlib.asynccontextmanager
async def secure_broker(tmp_path: Path) -> AsyncIterator[SecureMosquitto]:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca, cert, key = make_pki(pki)
    passwords = pki / "passwords"
    assert MOSQUITTO_PASSWD is not None
    await asyncio.to_thread(
        subprocess.run, [MOSQUITTO_PASSWD, "-b", "-c", str(passwords), MQTT_USER, MQTT_PASSWORD], check=True
    )
    passwords.chmod(0o644)
    broker = SecureMosquitto(tmp_path, ca=ca, cert=cert, key=key, passwords=passwords)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


async def _connects(config: MqttConfig, wait: float = 3.0) -> bool:
    client = MqttClient(config, f"proof-{os.getpid()}-{time.monotonic_ns()}")
    await client.start()
    try:
        return await client.wait_connected(wait)
    finally:
        await client.stop()


def secret_forms(*secrets: str) -> list[str]:
    """The secrets and the encodings a careless log line might use."""
    forms = []
    for secret in secrets:
        forms += [secret, secret.encode().hex(), base64.b64encode(secret.encode()).decode()]
        with contextlib.suppress(ValueError):
            raw = base64.b64decode(secret, validate=True)
            forms += [raw.hex(), repr(raw)[2:-1]]
    return forms


async def test_secure_stack_tls_password_and_noise(tmp_path: Path) -> None:
    async with secure_broker(tmp_path) as broker:
        assert broker.ca is not None
        good = MqttConfig(url=broker.url, username=MQTT_USER, password=MQTT_PASSWORD, ca_file=broker.ca)
        # The broker really requires all of it.
        assert await _connects(good)
        assert not await _connects(
            MqttConfig(url=broker.url, username=MQTT_USER, password="wrong", ca_file=broker.ca)
        )
        assert not await _connects(MqttConfig(url=broker.url, ca_file=broker.ca))  # anonymous
        assert not await _connects(
            MqttConfig(url=broker.url, username=MQTT_USER, password=MQTT_PASSWORD)
        )  # CA unknown
        assert not await _connects(
            MqttConfig(url=f"mqtt://127.0.0.1:{broker.port}", username=MQTT_USER, password=MQTT_PASSWORD)
        )

        env = {
            "RENOGY_MQTT_USERNAME": MQTT_USER,
            "RENOGY_MQTT_PASSWORD": MQTT_PASSWORD,
            "RENOGY_MQTT_CA_FILE": str(broker.ca),
            "RENOGY_API_KEY": API_KEY,
            "RENOGY_LOG_LEVEL": "debug",  # the most talkative logs must not leak either
        }
        stack = ProofStack(broker.url, tmp_path, env)
        await stack.start()
        try:
            # The right key: the whole device, over TLS + password MQTT end to end.
            watch = ClientWatch(stack.api_port, noise_psk=API_KEY)
            watch.start()
            try:
                await watch.wait_complete(60)
            finally:
                await watch.stop()
            assert any(v is not None for _, o, v in watch.states if o.endswith("_voltage"))
            # No key: refused (the gateway answers as ESPHome does, and the client says encryption is required).
            plain = APIClient("127.0.0.1", stack.api_port, None)
            with pytest.raises(RequiresEncryptionAPIError):
                await plain.connect(login=True)
            # A wrong key: the MAC-failure reject, which the client reports as an invalid key.
            wrong = APIClient(
                "127.0.0.1", stack.api_port, None, noise_psk=base64.b64encode(os.urandom(32)).decode()
            )
            with pytest.raises(InvalidEncryptionKeyAPIError):
                await wrong.connect(login=True)
            await _wait_log(stack["gateway"].log, "wrong encryption key", 10)
        finally:
            await stack.stop()
        logs = {name: service.log() for name, service in stack.services.items()}
        logs["mosquitto"] = (tmp_path / "mosquitto.log").read_text(errors="replace")
        assert "failed the handshake" in logs["gateway"] and "wrong encryption key" in logs["gateway"]
        leaks = {
            name: form
            for name, text in logs.items()
            for form in secret_forms(API_KEY, MQTT_PASSWORD)
            if form in text
        }
        assert not leaks, leaks
        assert "Traceback" not in logs["gateway"] + logs["reader"] + logs["aggregator"]


def test_diagnose_masks_secrets(tmp_path: Path) -> None:
    try:
        import services.ops  # noqa: F401
    except ImportError:
        pytest.skip("services/ops.py (diagnose) is not there yet: the deploy engineer's part")
    env = {
        **os.environ,
        "RENOGY_MQTT_URL": "mqtt://127.0.0.1:1",
        "RENOGY_MQTT_USERNAME": MQTT_USER,
        "RENOGY_MQTT_PASSWORD": MQTT_PASSWORD,
        "RENOGY_API_KEY": API_KEY,
        "RENOGY_STATE_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "diagnose", "--timeout", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert "RENOGY_MQTT_PASSWORD" in output or "password" in output, output[-2000:]
    leaks = [form for form in secret_forms(API_KEY, MQTT_PASSWORD) if form in output]
    assert not leaks, leaks


# --- the API port's limits ----------------------------------------------------------------------------------


def _hello() -> bytes:
    msg = pb.HelloRequest(client_info="proof", api_version_major=1, api_version_minor=19)
    return encode_plaintext(ids.HELLO_REQUEST, msg.SerializeToString())


def _closed_soon(sock: socket.socket, within: float) -> bool:
    """True when the server closes the connection within ``within`` seconds (whatever it sent first)."""
    sock.settimeout(within)
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except (TimeoutError, ConnectionResetError):
        return time.monotonic() < deadline
    return False


async def test_api_client_limit_and_buffer_caps(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    stack = ProofStack(mosquitto.url, tmp_path, {"RENOGY_MAX_CLIENTS": "3"})
    await stack.start()
    clients: list[APIClient] = []
    try:
        await api_snapshot(stack.api_port, expect_entities=ENTITIES, timeout=30)
        for _ in range(3):
            client = APIClient("127.0.0.1", stack.api_port, None)
            await client.connect(login=True)
            clients.append(client)
        fourth = APIClient("127.0.0.1", stack.api_port, None)
        with pytest.raises(APIConnectionError):
            await fourth.connect(login=True)
        await clients.pop().disconnect()
        await api_snapshot(stack.api_port, expect_entities=ENTITIES, timeout=10)  # a slot is free again

        loop = asyncio.get_running_loop()
        gateway = stack["gateway"]
        rss_before = proc_sample(gateway.pid)
        # Input cap: a frame announcing 1 MB is refused from its header, before any payload is buffered.
        with socket.create_connection(("127.0.0.1", stack.api_port)) as sock:
            sock.sendall(_hello() + b"\x00" + encode_varint(1_000_000) + b"\x07" + b"x" * 1000)
            assert await loop.run_in_executor(None, _closed_soon, sock, 5.0)
        # Request flood: a client that asks for the entity list 20,000 times and never reads is cut off by
        # the message budget (before the output cap, tested in test_proof_fuzz) instead of growing the
        # gateway's memory.
        with socket.create_connection(("127.0.0.1", stack.api_port)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            flood = _hello() + encode_plaintext(ids.LIST_ENTITIES_REQUEST, b"") * 20_000
            with contextlib.suppress(OSError):
                await loop.run_in_executor(None, sock.sendall, flood)
            assert await _wait_log(gateway.log, "(flood)", 10)
        rss_after = proc_sample(gateway.pid)
        assert rss_before is not None and rss_after is not None
        assert (rss_after.rss_kb - rss_before.rss_kb) / 1024 < 25, (rss_before, rss_after)
        # Everyone else is fine.
        await api_snapshot(stack.api_port, expect_entities=ENTITIES, timeout=10)
        log = gateway.log()
        assert "refusing client" in log and "exceeds 65535" in log
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await client.disconnect()
        await stack.stop()
    assert not stack.unhandled(), stack.unhandled()


async def _wait_log(read: object, text: str, timeout: float) -> bool:
    assert callable(read)
    async with asyncio.timeout(timeout):
        while text not in read():  # noqa: ASYNC110 - a log file another process writes: nothing to await
            await asyncio.sleep(0.05)
    return True


def test_plaintext_decoder_is_what_the_limit_test_speaks() -> None:
    # The raw-socket tests above hand-build frames; make sure they are what the server decodes.
    frames = PlaintextDecoder().feed(_hello() + encode_plaintext(ids.LIST_ENTITIES_REQUEST, b""))
    assert [f.msg_type for f in frames] == [1, 11]
    assert wait_port is not None
