"""Real MQTT brokers for tests: Mosquitto on a free port (a process per test) and embedded amqtt."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


async def wait_port(port: int, *, up: bool = True, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while port_open(port) != up:
        if time.monotonic() > deadline:
            raise TimeoutError(f"port {port} did not become {'open' if up else 'closed'} in {timeout} s")
        await asyncio.sleep(0.02)


@dataclass
class MosquittoBroker:
    """A private Mosquitto; stop()/start() keep the port (chaos tests restart it)."""

    workdir: Path
    port: int = field(default_factory=free_port)
    extra_config: str = ""
    kind: str = "mosquitto"
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        return "\n".join(
            [
                f"listener {self.port} 127.0.0.1",
                "allow_anonymous true",
                "persistence false",
                "max_queued_messages 0",
                "max_inflight_messages 100",
                "set_tcp_nodelay true",  # as deploy/mosquitto/mosquitto.conf
                f"log_dest file {self.workdir / 'mosquitto.log'}",
                "log_type error",
                "log_type warning",
                self.extra_config,
                "",
            ]
        )

    async def start(self) -> None:
        assert MOSQUITTO is not None
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.config_text())
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            await wait_port(self.port)
        except TimeoutError:
            self.process.kill()
            _, err = self.process.communicate()
            raise RuntimeError(f"mosquitto did not start: {err.decode(errors='replace')}") from None

    async def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            await asyncio.to_thread(self.process.wait, 10)
        self.process = None
        await wait_port(self.port, up=False)


@dataclass
class AmqttBroker:
    """The embedded amqtt broker, in the test's event loop."""

    port: int = field(default_factory=free_port)
    kind: str = "amqtt"
    broker: Any = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def start(self) -> None:
        from services.broker import make_broker

        self.broker = make_broker("127.0.0.1", self.port)
        await self.broker.start()

    async def stop(self) -> None:
        if self.broker is not None:
            await self.broker.shutdown()
        self.broker = None
