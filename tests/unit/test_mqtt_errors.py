"""Connection errors against a real Mosquitto (issue 13 item 6): TLS failures name the certificate problem
and mqtt.ca_file; a wrong password is logged once with the remedy, not on every retry; a failure that
repeats is summarised every few minutes instead of flooding the log."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.config import MqttConfig
from shared.mqtt import MqttClient
from tests.support.brokers import MOSQUITTO, MosquittoBroker
from tests.support.logs import RecordingHandler, recording

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="needs mosquitto (apt-get install mosquitto)")


# --- certificates ----------------------------------------------------------------------------------------


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _pem(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


@dataclass(frozen=True)
class Pki:
    ca: Path  # what the client trusts
    cert: Path  # what the broker shows
    key: Path


def make_pki(
    directory: Path,
    *,
    hosts: tuple[str, ...] = ("127.0.0.1",),
    expired: bool = False,
    self_signed: bool = False,
    trusted_ca: str = "issuing",
) -> Pki:
    """A broker certificate for ``hosts`` (IP addresses), signed by a CA or by itself."""
    ca_key, ca_cert = _ca("renogy-test-ca")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    start, end = (
        (now - dt.timedelta(days=3), now - dt.timedelta(days=1))
        if expired
        else (now - dt.timedelta(days=1), now + dt.timedelta(days=1))
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("broker"))
        .issuer_name(_name("broker") if self_signed else ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(h)) for h in hosts]),
            critical=False,
        )
    )
    cert = builder.sign(key if self_signed else ca_key, hashes.SHA256())
    directory.mkdir(exist_ok=True)
    key_path = directory / "server.key"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    trusted = ca_cert if trusted_ca == "issuing" else _ca("some-other-ca")[1]
    return Pki(_pem(directory / "ca.crt", trusted), _pem(directory / "server.crt", cert), key_path)


# --- a Mosquitto with TLS and/or a password file ----------------------------------------------------------


@dataclass
class StrictMosquitto(MosquittoBroker):
    pki: Pki | None = None
    passwords: Path | None = None

    def config_text(self) -> str:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence false",
            f"log_dest file {self.workdir / 'm.log'}",
        ]
        if self.pki is not None:
            lines += [f"certfile {self.pki.cert}", f"keyfile {self.pki.key}"]
        if self.passwords is not None:
            lines += ["allow_anonymous false", f"password_file {self.passwords}"]
        else:
            lines.append("allow_anonymous true")
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to a user that cannot read pytest's tmp dirs
        return "\n".join([*lines, ""])


@pytest.fixture
async def strict_broker(tmp_path: Path) -> AsyncIterator[Callable[..., StrictMosquitto]]:
    started: list[StrictMosquitto] = []

    def make(**kwargs: object) -> StrictMosquitto:
        broker = StrictMosquitto(tmp_path, **kwargs)  # type: ignore[arg-type]
        started.append(broker)
        return broker

    yield make
    for broker in started:
        await broker.stop()


async def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        await asyncio.sleep(0.02)


def _warnings(log: RecordingHandler) -> list[str]:
    return [r.getMessage() for r in log.records if r.levelno >= logging.WARNING]


# --- TLS: the reason, and where to fix it -----------------------------------------------------------------


@needs_mosquitto
@pytest.mark.parametrize(
    ("case", "reasons"),
    [
        ("wrong CA", ("unable to get local issuer certificate",)),
        ("self-signed", ("self-signed certificate", "self signed certificate")),
        ("expired", ("certificate has expired",)),
        ("host mismatch", ("mismatch",)),
    ],
)
async def test_tls_failure_names_the_certificate_problem_and_ca_file(
    case: str, reasons: tuple[str, ...], tmp_path: Path, strict_broker: Callable[..., StrictMosquitto]
) -> None:
    pki = make_pki(
        tmp_path / "pki",
        expired=case == "expired",
        self_signed=case == "self-signed",
        trusted_ca="other" if case == "wrong CA" else "issuing",
        hosts=("10.9.9.9",) if case == "host mismatch" else ("127.0.0.1",),
    )
    broker = strict_broker(pki=pki)
    await broker.start()
    config = MqttConfig(url=f"mqtts://127.0.0.1:{broker.port}", ca_file=pki.ca, reconnect_max_delay=0.2)
    client = MqttClient(config, f"tls-{case.replace(' ', '-')}")
    with recording("shared.mqtt", logging.DEBUG) as log:
        await client.start()
        try:
            await _until(lambda: len(log.records) >= 3, 15, "three failed attempts")
        finally:
            await client.stop()
    warned = _warnings(log)
    assert len(warned) == 1, warned  # identical repeats are not logged again
    assert any(reason in warned[0] for reason in reasons), warned
    assert "TLS with MQTT broker" in warned[0] and "mqtt.ca_file" in warned[0], warned


@needs_mosquitto
async def test_tls_with_the_right_ca_connects(
    tmp_path: Path, strict_broker: Callable[..., StrictMosquitto]
) -> None:
    pki = make_pki(tmp_path / "pki")
    broker = strict_broker(pki=pki)
    await broker.start()
    client = MqttClient(MqttConfig(url=f"mqtts://127.0.0.1:{broker.port}", ca_file=pki.ca), "tls-good")
    await client.start()
    try:
        assert await client.wait_connected(10)
    finally:
        await client.stop()


# --- a wrong password: once, with the remedy --------------------------------------------------------------


async def _refused(
    tmp_path: Path,
    make: Callable[..., StrictMosquitto],
    until: Callable[[RecordingHandler], bool],
    **client_args: float,
) -> tuple[RecordingHandler, float]:
    """A client with the wrong password retrying every 0.1 s against a Mosquitto that lets in only
    renogy / right, until ``until(log)``; returns its records and how long it ran."""
    passwords = tmp_path / "passwords"
    assert MOSQUITTO_PASSWD is not None
    command = [MOSQUITTO_PASSWD, "-b", "-c", str(passwords), "renogy", "right"]
    await asyncio.to_thread(subprocess.run, command, check=True)
    broker = make(passwords=passwords)
    await broker.start()
    config = MqttConfig(url=broker.url, username="renogy", password="wrong", reconnect_max_delay=0.1)
    client = MqttClient(config, f"refused-{time.monotonic_ns()}", **client_args)  # type: ignore[arg-type]
    with recording("shared.mqtt", logging.DEBUG) as log:
        await client.start()
        started = time.monotonic()
        try:
            await _until(lambda: until(log), 30, "the expected log records")
        finally:
            await client.stop()
    return log, time.monotonic() - started


needs_passwd = pytest.mark.skipif(MOSQUITTO_PASSWD is None, reason="needs mosquitto_passwd")


@needs_mosquitto
@needs_passwd
async def test_wrong_password_is_logged_once_with_the_remedy(
    tmp_path: Path, strict_broker: Callable[..., StrictMosquitto]
) -> None:
    # Old behaviour: a WARNING per attempt. Wait for many attempts (every attempt leaves one record).
    log, _ = await _refused(tmp_path, strict_broker, lambda log: len(log.records) >= 20)
    attempts = len([r for r in log.records if "refused" in r.getMessage()])
    warned = _warnings(log)
    assert attempts >= 20 and len(warned) == 1, (attempts, warned)
    assert "refused the connection" in warned[0], warned
    assert "mqtt.username" in warned[0] and "mqtt.password" in warned[0], warned
    assert "wrong" not in warned[0], warned  # never the password


@needs_mosquitto
@needs_passwd
async def test_a_repeating_failure_is_summarised_far_less_often_than_it_happens(
    tmp_path: Path, strict_broker: Callable[..., StrictMosquitto]
) -> None:
    def two_summaries(log: RecordingHandler) -> bool:
        return sum("still cannot reach" in m for m in _warnings(log)) >= 2

    # The 5-minute summary interval scaled down to 1 s, as the retry interval is.
    log, elapsed = await _refused(tmp_path, strict_broker, two_summaries, failure_summary_interval=1.0)
    warned = _warnings(log)
    attempts = len(log.records)  # one record per attempt: in full, summarised or at DEBUG
    summaries = [m for m in warned if "still cannot reach" in m]
    assert len(warned) <= 1 + elapsed / 1.0 + 1 and attempts >= 4 * len(warned), (attempts, warned)
    assert "attempts in the last" in summaries[0], summaries
    assert "Not authorized" in summaries[0] or "Bad user name or password" in summaries[0], summaries


# --- the streak itself (sans-IO: the clock is an argument) ------------------------------------------------


def test_failure_streak_logs_a_reason_once_then_a_summary_per_interval() -> None:
    from shared.mqtt import FailureStreak  # new here: the tests above also run on old code

    streak = FailureStreak(interval=300.0)
    lines = 0
    for i in range(86_400 // 2):  # a day of failures every 2 s
        verdict = streak.record("unreachable: Connection refused", now=2.0 * i)
        if verdict == "summary":
            assert streak.attempts in (150, 151), streak.attempts  # 300 s of attempts every 2 s (fence posts)
            streak.summarised(2.0 * i)
        lines += verdict is not None
    assert lines == 1 + 86_400 // 300 - 1, lines  # about 288 lines a day instead of 43,200
    assert streak.record("tls: certificate has expired", now=86_400.0) == "first"  # a new reason: at once
    streak.clear()
    assert streak.record("tls: certificate has expired", now=86_401.0) == "first"  # after a connection
