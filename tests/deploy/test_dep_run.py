"""`renogy-proxy run` next to a broker it cannot use, credentials in the URL, client ids per root topic (issue 11)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.mqtt_probe import Answer, probe
from shared.config import ConfigError, load_config
from shared.service import ServiceRuntime, client_id
from tests.deploy.support import ROOT, cli, tool
from tests.support.brokers import MOSQUITTO, MosquittoBroker, free_port

USER, PASSWORD = "renogy", "s3cret:/@pw"  # characters that need percent-encoding in a URL
URL_PASSWORD = "s3cret%3A%2F%40pw"


class PasswordMosquitto(MosquittoBroker):
    """Mosquitto that admits only USER/PASSWORD, like Home Assistant's add-on."""

    def config_text(self) -> str:
        passwd = self.workdir / "passwd"
        subprocess.run([str(tool("mosquitto_passwd")), "-c", "-b", str(passwd), USER, PASSWORD], check=True)
        passwd.chmod(0o600)
        text = super().config_text().replace("allow_anonymous true", "allow_anonymous false")
        # As root, Mosquitto drops to its own user, which cannot read a 0600 file of the test's.
        run_as = "user root\n" if os.geteuid() == 0 else ""
        return text + f"password_file {passwd}\n{run_as}"


@pytest.fixture
async def locked_broker(tmp_path: Path) -> AsyncIterator[PasswordMosquitto]:
    if MOSQUITTO is None or tool("mosquitto_passwd") is None:
        pytest.skip("mosquitto and mosquitto_passwd are needed (apt-get install mosquitto)")
    broker = PasswordMosquitto(tmp_path / "broker")
    broker.workdir.mkdir()
    await broker.start()
    yield broker
    await broker.stop()


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"RENOGY_STATE_DIR": str(tmp_path / "state"), "RENOGY_MDNS": "false", **extra}


async def test_run_next_to_a_password_protected_broker_says_so_and_exits_non_zero(
    locked_broker: PasswordMosquitto, tmp_path: Path
) -> None:
    port = locked_broker.port
    done = await asyncio.to_thread(
        cli, "run", "--broker-port", str(port), "--api-port", str(free_port()), env=_env(tmp_path), timeout=40
    )
    message = done.err + done.out
    assert done.code == 2, message
    assert f"an MQTT broker answers on 127.0.0.1:{port} but refused our login without credentials" in message
    assert "not authorized" in message
    assert f"--mqtt mqtt://USER:PASSWORD@127.0.0.1:{port}" in message and "RENOGY_MQTT_USERNAME" in message
    assert "Traceback" not in message and "did not come up" not in message
    assert "started reader" not in message, "no service may start when the stack cannot work"


async def test_run_next_to_a_port_held_by_another_program(tmp_path: Path) -> None:
    with _not_mqtt_server() as port:
        assert probe("127.0.0.1", port).answer is Answer.NOT_MQTT
        done = await asyncio.to_thread(cli, "run", "--broker-port", str(port), env=_env(tmp_path), timeout=40)
    message = done.err + done.out
    assert done.code == 2, message
    assert f"port 127.0.0.1:{port} is taken by a program that is not an MQTT broker" in message
    assert f"--broker-port {port + 1}" in message and "Traceback" not in message


async def test_credentials_in_the_url_are_used(locked_broker: PasswordMosquitto, tmp_path: Path) -> None:
    """`run --mqtt mqtt://user:pass@host` reaches a password-protected broker; status and diagnose too."""
    url = f"mqtt://{USER}:{URL_PASSWORD}@127.0.0.1:{locked_broker.port}"
    assert probe("127.0.0.1", locked_broker.port, username=USER, password=PASSWORD).answer is Answer.ACCEPTED
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RENOGY_")}
    environ |= _env(tmp_path, RENOGY_POLL_INTERVAL="1", RENOGY_SIM_LATENCY_SCALE="0.05")
    api_port = free_port()
    run = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "run",
        "--mqtt",
        url,
        "--api-port",
        str(api_port),
        env=environ,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        status = await asyncio.to_thread(
            cli, "status", "--mqtt", url, "--wait", "40", env=_env(tmp_path), timeout=60
        )
        assert status.code == 0, status.out + status.err
        diag = await asyncio.to_thread(cli, "diagnose", "--mqtt", url, env=_env(tmp_path))
        assert diag.code == 0 and "reachable : yes" in diag.out and PASSWORD not in diag.out + diag.err
        assert URL_PASSWORD not in diag.out + diag.err
    finally:
        with contextlib.suppress(ProcessLookupError):
            run.send_signal(signal.SIGINT)
        out, _ = await asyncio.wait_for(run.communicate(), 30)
    text = out.decode(errors="replace")
    assert run.returncode == 0, text
    assert "refused the connection" not in text and PASSWORD not in text


async def test_run_with_wrong_credentials_in_the_url_is_refused_clearly(
    locked_broker: PasswordMosquitto, tmp_path: Path
) -> None:
    url = f"mqtt://{USER}:wrong@127.0.0.1:{locked_broker.port}"
    done = await asyncio.to_thread(cli, "run", "--mqtt", url, env=_env(tmp_path), timeout=40)
    message = done.err + done.out
    assert done.code == 2, message
    assert f"refused our login as {USER!r} (not authorized)" in message and "wrong" not in message


def test_url_credentials_become_the_settings() -> None:
    config = load_config(environ={"RENOGY_MQTT_URL": f"mqtt://{USER}:{URL_PASSWORD}@broker:1884"})
    assert (config.mqtt.username, config.mqtt.password) == (USER, PASSWORD)
    same = load_config(environ={"RENOGY_MQTT_URL": f"mqtt://{USER}@broker", "RENOGY_MQTT_PASSWORD": "x"})
    assert (same.mqtt.username, same.mqtt.password) == (USER, "x")
    with pytest.raises(ConfigError, match=r"mqtt\.url names the user 'renogy' but mqtt\.username"):
        load_config(environ={"RENOGY_MQTT_URL": f"mqtt://{USER}:a@broker", "RENOGY_MQTT_USERNAME": "other"})
    with pytest.raises(ConfigError, match="different passwords") as refused:
        load_config(environ={"RENOGY_MQTT_URL": f"mqtt://{USER}:a@broker", "RENOGY_MQTT_PASSWORD": "b"})
    assert "a@" not in str(refused.value)
    with pytest.raises(ConfigError, match="a password without a user name"):
        load_config(environ={"RENOGY_MQTT_URL": "mqtt://:pw@broker"})


def test_client_id_includes_the_root_topic() -> None:
    assert client_id("renogy", "reader", "default") == "renogy-reader-default"
    assert client_id("home/renogy", "reader", "default") == "home_renogy-reader-default"


async def test_two_stacks_with_different_root_topics_share_a_broker(mosquitto: Any) -> None:
    """Same service and instance, different mqtt.root_topic: both stay connected (no kick-off loop)."""
    runtimes = [
        ServiceRuntime(
            load_config(
                environ={},
                overrides={
                    "mqtt.url": mosquitto.url,
                    "mqtt.root_topic": root,
                    "mqtt.reconnect_max_delay": 0.2,
                },
            ),
            "reader",
            "default",
        )
        for root in ("renogy", "renogy2")
    ]
    for runtime in runtimes:
        await runtime.start()
    try:
        for runtime in runtimes:
            assert await runtime.mqtt.wait_subscribed(10)
        await asyncio.sleep(2.5)
        assert [r.mqtt.connect_count for r in runtimes] == [1, 1]
        assert all(r.mqtt.connected.is_set() for r in runtimes)
    finally:
        for runtime in runtimes:
            await runtime.stop()


@contextlib.contextmanager
def _not_mqtt_server() -> Iterator[int]:
    """A TCP server that answers like a web server."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.recv(64)
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join(2)
        server.close()


async def test_run_stops_when_a_service_cannot_start_instead_of_restarting_it(tmp_path: Path) -> None:
    """The gateway's API port held by another program: exit 2 once, not a restart every few seconds."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        api_port = holder.getsockname()[1]
        env = _env(tmp_path, RENOGY_API_BIND="127.0.0.1", RENOGY_POLL_INTERVAL="1")
        done = await asyncio.to_thread(
            cli, "run", "--broker-port", str(free_port()), "--api-port", str(api_port), env=env, timeout=60
        )
    message = done.err + done.out
    assert done.code == 2, message
    assert f"port {api_port} on 127.0.0.1 is already in use" in message
    assert "gateway exited with code 2: it cannot start as configured" in message
    assert "restarting in" not in message
