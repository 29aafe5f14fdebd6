"""`renogy-proxy run` forks its services from a preloaded supervisor (issue 15 item 3), or starts them as
subprocesses (RENOGY_RUN_FORK=false): real processes, a real broker, /proc for the figures."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from services.supervisor import fork_available, process_name
from tests.bench_footprint import mem, tree
from tests.support.brokers import free_port
from tests.support.probe import MqttProbe

SERVICES = ("reader", "aggregator", "gateway")
# Run-tree PSS (supervisor + 3 services, external broker), measured on this tree 60 s after start with a
# client connected (docs/benchmarks.md): 84.5 MB with a fresh interpreter per service, 55 MB forked. The
# bound sits between the two with room for a busier machine: subprocesses cannot get under it.
PSS_BOUND_MB = 70.0


@dataclass
class Run:
    process: asyncio.subprocess.Process
    log: Path
    probe: MqttProbe

    def states(self) -> dict[str, dict[str, Any]]:
        return {
            service: self.probe.json(topic)
            for service in SERVICES
            if (topic := f"renogy/bridge/{service}/default/state") in self.probe.latest
        }

    async def online(self, exclude: dict[str, int] | None = None, timeout: float = 60.0) -> dict[str, int]:
        """service -> pid once every service is online (with a pid other than ``exclude``'s)."""

        def ready() -> dict[str, int] | None:
            states = self.states()
            pids = {name: state["pid"] for name, state in states.items() if state["state"] == "online"}
            if len(pids) < len(SERVICES) or any(pids[k] == v for k, v in (exclude or {}).items()):
                return None
            return pids

        found: dict[str, int] = await self.probe.wait_for(ready, timeout, "every service online")
        return found

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.asynccontextmanager
async def run_stack(broker_url: str, tmp_path: Path, *, fork: bool) -> AsyncIterator[Run]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENOGY_")} | {
        "RENOGY_API_PORT": str(free_port()),
        "RENOGY_API_BIND": "127.0.0.1",
        "RENOGY_MDNS": "false",
        "RENOGY_STATE_DIR": str(tmp_path / "state"),
        "RENOGY_POLL_INTERVAL": "120",
        "RENOGY_RUN_FORK": "true" if fork else "false",
    }
    log = tmp_path / "run.log"
    async with MqttProbe(broker_url, "renogy/bridge/+/+/state") as probe:
        with log.open("ab") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.cli",
                "run",
                "--mqtt",
                broker_url,
                env=env,
                stdout=out,
                stderr=out,
            )
        try:
            yield Run(process, log, probe)
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), 30)
                except TimeoutError:
                    process.kill()
                    await process.wait()


def _broker_connections(pid: int, port: int) -> int:
    return sum(
        1
        for c in psutil.Process(pid).net_connections("tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


@pytest.mark.parametrize("fork", [True, False], ids=["fork", "subprocess"])
async def test_each_service_is_its_own_process_and_mqtt_client(
    mosquitto: Any, tmp_path: Path, fork: bool
) -> None:
    port = int(mosquitto.url.rsplit(":", 1)[1])
    async with run_stack(mosquitto.url, tmp_path, fork=fork) as run:
        pids = await run.online()
        supervisor = psutil.Process(run.process.pid)
        assert len(set(pids.values())) == 3 and run.process.pid not in pids.values(), pids
        assert {child.pid for child in supervisor.children()} == set(pids.values())
        for service, pid in pids.items():
            child = psutil.Process(pid)
            assert _broker_connections(pid, port) == 1, f"{service} has no MQTT connection of its own"
            if fork:  # the supervisor's command line, a name of its own
                assert child.name() == process_name(service) and child.cmdline() == supervisor.cmdline()
            else:
                assert service in child.cmdline() and "services.cli" in child.cmdline()
        assert _broker_connections(run.process.pid, port) == 0
        assert "RENOGY_RUN_FORK" not in run.text(), "the switch is a known variable"


@pytest.mark.parametrize(
    ("fork", "stop"),
    [(True, signal.SIGTERM), (True, signal.SIGINT), (False, signal.SIGTERM)],
    ids=["fork-sigterm", "fork-ctrl-c", "subprocess-sigterm"],
)
async def test_a_killed_service_is_restarted_and_a_stop_signal_stops_all(
    mosquitto: Any, tmp_path: Path, fork: bool, stop: signal.Signals
) -> None:
    async with run_stack(mosquitto.url, tmp_path, fork=fork) as run:
        pids = await run.online()
        os.kill(pids["aggregator"], signal.SIGKILL)
        again = await run.online(exclude={"aggregator": pids["aggregator"]})
        assert again["reader"] == pids["reader"] and again["gateway"] == pids["gateway"]
        with contextlib.suppress(psutil.NoSuchProcess):
            assert psutil.Process(pids["aggregator"]).status() != psutil.STATUS_ZOMBIE, "not reaped"
        assert "aggregator exited with code -9" in run.text()
        run.process.send_signal(stop)
        assert await asyncio.wait_for(run.process.wait(), 30) == 0, run.text()[-2000:]
        await run.probe.wait_for(
            lambda: all(s["state"] == "offline" for s in run.states().values()), 10, "every service offline"
        )
        assert not any(psutil.pid_exists(pid) for pid in again.values()), run.text()[-2000:]
        for service in SERVICES:  # each stopped cleanly, with its own log prefix
            assert f"INFO    {service} shared.service: {service} default stopping (SIGTERM)" in run.text()


async def test_the_forked_tree_shares_its_memory(mosquitto: Any, tmp_path: Path) -> None:
    """Run-tree PSS (sum of smaps_rollup Pss, broker external) once every service is online."""
    async with run_stack(mosquitto.url, tmp_path, fork=True) as run:
        await run.online()
        memory = {pid: mem(pid) for pid in tree(run.process.pid)}
        pss = sum(m.pss_kb for m in memory.values() if m is not None) / 1024
    assert len(memory) == 4, memory
    assert pss <= PSS_BOUND_MB, f"run tree PSS {pss:.1f} MB > {PSS_BOUND_MB} MB: {memory}"


def test_fork_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RENOGY_RUN_FORK", "false")
    assert not fork_available()
    monkeypatch.setenv("RENOGY_RUN_FORK", "true")
    assert fork_available() == (sys.platform == "linux")
