"""The three services as separate processes wired the way docker-compose wires them (config by environment).

Used by the end-to-end, chaos and soak tests: start/kill/restart each service, and read what Home
Assistant would see through a real aioesphomeapi client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aioesphomeapi import APIClient, SensorInfo, SensorState

from tests.support.brokers import free_port

SERVICES = ("reader", "aggregator", "gateway")


@dataclass
class ServiceProcess:
    name: str
    env: dict[str, str]
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    starts: int = 0
    launcher: tuple[str, ...] = ()  # e.g. ("ip", "netns", "exec", "host1"): run it on another host

    async def start(self) -> None:
        log = self.log_path.open("ab")
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.launcher,
                sys.executable,
                "-m",
                "services.cli",
                self.name,
                env=self.env,
                stdout=log,
                stderr=log,
            )
        finally:
            log.close()
        self.starts += 1

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def signal(self, sig: signal.Signals) -> None:
        if self.running:
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    async def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.process is None:
            return None
        await self.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            await self.kill()
        return self.process.returncode

    async def kill(self) -> None:
        if self.process is None:
            return
        await self.signal(signal.SIGKILL)
        await self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Stack:
    """Reader (on the simulator), aggregator and gateway against one broker URL."""

    broker_url: str
    workdir: Path
    env_overrides: Mapping[str, str] = field(default_factory=dict)
    api_port: int = field(default_factory=free_port)
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state_dir = self.workdir / "state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "RENOGY_MQTT_URL": self.broker_url,
            "RENOGY_STATE_DIR": str(self.state_dir),
            "RENOGY_SIMULATE": "true",
            "RENOGY_POLL_INTERVAL": "1",
            "RENOGY_SIM_LATENCY_SCALE": "0.05",
            "RENOGY_API_PORT": str(self.api_port),
            "RENOGY_API_BIND": "127.0.0.1",
            "RENOGY_MDNS": "false",
            "RENOGY_MQTT_RECONNECT_MAX_DELAY": "1",
            "RENOGY_LOG_LEVEL": "info",
            **self.env_overrides,
        }
        for name in SERVICES:
            self.services[name] = ServiceProcess(name, dict(env), self.workdir / f"{name}.log")

    def __getitem__(self, name: str) -> ServiceProcess:
        return self.services[name]

    async def start(self) -> None:
        for service in self.services.values():
            await service.start()

    async def stop(self) -> None:
        for name in reversed(SERVICES):
            await self.services[name].stop()

    def logs(self) -> str:
        return "\n".join(f"==== {name}\n{service.log()[-4000:]}" for name, service in self.services.items())


@dataclass
class ApiSnapshot:
    entities: dict[str, SensorInfo]  # by object_id
    states: dict[int, SensorState]  # by key

    def value(self, object_id: str) -> float | None:
        state = self.states.get(self.entities[object_id].key)
        if state is None or state.missing_state:
            return None
        return float(state.state)


async def api_snapshot(port: int, *, expect_entities: int, timeout: float = 10.0) -> ApiSnapshot:
    """Connect like Home Assistant, list entities and collect one state per entity."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        client = APIClient("127.0.0.1", port, None)
        try:
            async with asyncio.timeout(max(0.5, deadline - time.monotonic())):
                await client.connect(login=True)
                entities, _ = await client.list_entities_services()
                sensors = {e.object_id: e for e in entities if isinstance(e, SensorInfo)}
                if len(sensors) < expect_entities:
                    raise AssertionError(f"{len(sensors)} of {expect_entities} entities listed")
                states: dict[int, SensorState] = {}
                complete = asyncio.Event()

                def on_state(
                    state: Any,
                    states: dict[int, SensorState] = states,
                    complete: asyncio.Event = complete,
                    wanted: int = len(sensors),
                ) -> None:
                    if isinstance(state, SensorState):
                        states[state.key] = state
                        if len(states) >= wanted:
                            complete.set()

                client.subscribe_states(on_state)
                await complete.wait()
                return ApiSnapshot(sensors, states)
        except (Exception, TimeoutError) as exc:  # not up yet, or relisting: try again until the deadline
            last_error = exc
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 2)
        await asyncio.sleep(0.1)
    raise TimeoutError(f"gateway on port {port} did not serve {expect_entities} entities: {last_error!r}")
