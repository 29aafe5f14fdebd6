"""Footprint figures for `make bench` (issue 15): the services' own CPU with the simulator's cost measured
separately and subtracted, PSS from /proc/<pid>/smaps_rollup, and the CPU cost of each forwarded
advertisement (reader -> MQTT -> gateway -> client) at 10, 100 and 1,000 adverts/s.

The simulator runs inside the reader (it is the reader's bleak backend), so its cost cannot be read off
the reader's /proc figures. It is measured on its own instead: the same simulator (same config, seed,
neighbours and timing model) in a process of its own, with the BT-2 held connected as the reader holds
it, its scanner delivering to a no-op callback and the registers of every battery read once per poll
interval; that process's CPU over the same window is subtracted from the reader's.

Child processes (started by the benchmark, not by users)::

    python -m tests.bench_footprint sim-alone              # the simulator alone (config from RENOGY_*)
    python -m tests.bench_footprint flood-alone --rate N   # the advert generator alone, no-op consumer
    python -m tests.bench_footprint flood-reader --rate N  # the reader, with N extra adverts/s heard

Just the run-tree figures (what `make bench ARGS="--only footprint"` measures first), printed as JSON::

    python -m tests.bench_footprint run-tree [--settle 60] [--no-fork]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
FLOOD_ADDRESSES = 2000  # distinct addresses, so a 0.1 s batch never folds two adverts of one device
FLOOD_TICK = 0.01


# --- /proc ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mem:
    rss_kb: int
    pss_kb: int
    uss_kb: int  # Private_Clean + Private_Dirty: what this process alone holds


def mem(pid: int) -> Mem | None:
    """RSS, PSS and USS of a live process from /proc/<pid>/smaps_rollup (None once it is gone)."""
    values: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    for line in text.splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key.strip()] = int(parts[0])
    return Mem(
        values.get("Rss", 0),
        values.get("Pss", 0),
        values.get("Private_Clean", 0) + values.get("Private_Dirty", 0),
    )


def cpu_s(pid: int) -> float | None:
    """CPU seconds of a live process (its own, not its children's), to the nanosecond where possible.

    /proc/<pid>/stat counts in clock ticks (10 ms), too coarse for a few seconds of an idle service, so
    the sum of the scheduler's run time of every live thread (/proc/<pid>/task/*/schedstat, ns) is used;
    threads that already exited are only in the ticks, so the larger of the two wins.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks = (int(fields[11]) + int(fields[12])) / CLK_TCK
        ns = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                ns += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    precise = ns / 1e9
    return precise if precise + 2 / CLK_TCK >= ticks else ticks


def tree(pid: int) -> dict[int, str]:
    """pid -> a short name for a process and all its descendants (psutil, already a dependency)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    out = {}
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            out[proc.pid] = _role(proc.cmdline(), proc.name())
    return out


def _role(cmdline: list[str], comm: str = "") -> str:
    """The service of a fork (named renogy-<service>: it has the supervisor's command line), 'supervisor'
    for `renogy-proxy run`, else the service subcommand (reader, gateway, ...)."""
    from services.supervisor import process_name

    for service in ("reader", "aggregator", "gateway", "broker"):
        if comm == process_name(service):
            return service
    for word in cmdline:
        if word == "run":
            return "supervisor"
        if word in ("reader", "aggregator", "gateway", "broker"):
            return word
    return Path(cmdline[0]).name if cmdline else "?"


# --- child: the simulator alone ------------------------------------------------------------------------------


async def _sim_alone() -> None:
    from services.reader.simulate import simulator_for_config
    from services.simulator import SimScanner, register_simulator
    from shared.config import load_config

    config = load_config(None)
    sim = simulator_for_config(config)
    register_simulator(sim)
    sim.central = object()  # the reader holds the BT-2's link, so the BT-2 does not advertise
    scanner = SimScanner(lambda _device, _adv: None, None)
    await scanner.start()
    stop = _stop_event()
    interval = config.reader.poll_interval or 1.0
    try:
        while not stop.is_set():
            for slave in config.simulator.batteries:  # the reads of one cycle, as the reader asks them
                sim.registers(slave, 5042, 7)
                sim.registers(slave, 5000, 34)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
    finally:
        await scanner.stop()
        sim.close()


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


# --- child: a flood of neighbours' advertisements ------------------------------------------------------------


def flood_scanner(rate: float) -> type[Any]:
    """A SimScanner subclass that also hears ``rate`` adverts/s from FLOOD_ADDRESSES other devices."""
    from bleak.backends.scanner import AdvertisementData

    from services.simulator import SimScanner

    adverts = [
        (
            f"F0:00:00:00:{i >> 8:02X}:{i & 0xFF:02X}",
            AdvertisementData(
                local_name=None,
                manufacturer_data={0x004C: bytes((0x10, 0x05, i & 0xFF, 0x1C, 0x3A, 0x7F, 0x01))},
                service_data={},
                service_uuids=[],
                tx_power=None,
                rssi=-60 - i % 30,
                platform_data=(),
            ),
        )
        for i in range(FLOOD_ADDRESSES)
    ]

    class FloodScanner(SimScanner):
        _flood: asyncio.Task[None] | None = None

        async def start(self) -> None:
            await super().start()
            if self._flood is None and rate > 0:
                self._flood = asyncio.create_task(self._run_flood(), name="bench-flood")

        async def stop(self) -> None:
            flood, self._flood = self._flood, None
            if flood is not None:
                flood.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await flood
            await super().stop()

        async def _run_flood(self) -> None:
            loop = asyncio.get_running_loop()
            started, sent, index = loop.time(), 0, 0
            while True:
                due = int((loop.time() - started) * rate)
                while sent < due:
                    address, adv = adverts[index]
                    index = (index + 1) % len(adverts)
                    device = self.create_or_update_device(address, address, None, None, adv)
                    self.call_detection_callbacks(device, adv)
                    sent += 1
                await asyncio.sleep(max(FLOOD_TICK, 1 / rate))  # no faster than needed

    return FloodScanner


async def _flood_alone(rate: float) -> None:
    scanner = flood_scanner(rate)(lambda _device, _adv: None, None, simulators=[])
    await scanner.start()
    await _stop_event().wait()
    await scanner.stop()


def _flood_reader(rate: float) -> int:
    """The reader, its simulator backends with the flood scanner in place of SimScanner."""
    from services.cli import main
    from services.reader import simulate

    original = simulate.simulator_backends

    def backends(config: Any) -> Any:
        return dataclasses.replace(original(config), scanner=flood_scanner(rate))

    simulate.simulator_backends = backends
    return main(["reader"])


# --- parent: the figures -------------------------------------------------------------------------------------


@dataclass
class Child:
    """A bench child process (python -m tests.bench_footprint MODE ...)."""

    argv: list[str]
    env: dict[str, str]
    log: Path
    process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.bench_footprint",
                *self.argv,
                env=self.env,
                stdout=log,
                stderr=log,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 15)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


async def advert_cost(rates: tuple[int, ...], window: float, settle: float) -> dict[str, Any]:
    """CPU µs per forwarded advertisement at each rate: reader, broker, gateway (the client excluded).

    Each rate runs the whole stack (Mosquitto, reader with the flood, aggregator, gateway) at a 120 s
    poll with a client subscribed to raw advertisements; the flood generator's own cost (measured alone)
    and the stack's cost at rate 0 are subtracted, and the remainder is divided by the adverts the client
    received beyond rate 0's.
    """
    from tests.bench import _broker, _env_for_stack
    from tests.proof.support import ProofStack

    runs: dict[int, dict[str, Any]] = {}
    for rate in (0, *rates):
        with tempfile.TemporaryDirectory() as tmp_text:
            tmp = Path(tmp_text)
            broker = await _broker(tmp)
            env = _env_for_stack({"RENOGY_POLL_INTERVAL": "120", "RENOGY_SIM_LATENCY_SCALE": "1"})
            stack = ProofStack(broker.url, tmp, env)
            reader_env = stack.services["reader"].env
            flood_reader = Child(["flood-reader", "--rate", str(rate)], reader_env, tmp / "reader.log")
            alone = Child(["flood-alone", "--rate", str(rate)], reader_env, tmp / "flood.log")
            client = AdvertCounter(stack.api_port)
            try:
                for name in ("aggregator", "gateway"):
                    await stack.start_service(name)
                await flood_reader.start()
                await alone.start()
                client.start()
                await asyncio.sleep(settle)
                pids = {
                    "reader": flood_reader.pid,
                    "gateway": stack.services["gateway"].pid,
                    "broker": getattr(getattr(broker, "process", None), "pid", None),
                    "generator": alone.pid,
                }
                first = {k: cpu_s(p) for k, p in pids.items() if p}
                seen = client.adverts
                await asyncio.sleep(window)
                last = {k: cpu_s(p) for k, p in pids.items() if p}
                received = client.adverts - seen
            finally:
                await client.stop()
                await flood_reader.stop()
                await alone.stop()
                await stack.stop()
                await broker.stop()
        cpu = {k: (last[k] or 0.0) - (first[k] or 0.0) for k in first if first[k] is not None and k in last}
        runs[rate] = {"cpu_s": cpu, "received": received, "client_error": client.error}
    base = runs[0]
    out: dict[str, Any] = {"window_s": window, "poll_interval_s": 120}
    for rate in rates:
        run = runs[rate]
        extra = run["received"] - base["received"]
        row: dict[str, Any] = {"received_per_s": round(run["received"] / window, 1)}
        total = 0.0
        for name in ("reader", "broker", "gateway"):
            spent = run["cpu_s"].get(name, 0.0) - base["cpu_s"].get(name, 0.0)
            if name == "reader":
                spent -= run["cpu_s"].get("generator", 0.0) - base["cpu_s"].get("generator", 0.0)
            total += spent
            row[f"{name}_us"] = round(spent / extra * 1e6, 1) if extra > 0 else None
        row["total_us"] = round(total / extra * 1e6, 1) if extra > 0 else None
        generator = run["cpu_s"].get("generator", 0.0) - base["cpu_s"].get("generator", 0.0)
        row["generator_us_subtracted"] = round(generator / max(1.0, rate * window) * 1e6, 1)
        out[f"rate_{rate}"] = row
        if not run["received"] and run["client_error"]:
            row["client_error"] = run["client_error"]
    return out


class AdvertCounter:
    """An aioesphomeapi client subscribed to raw advertisements, counting what it receives."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.adverts = 0
        self.error: str | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        from aioesphomeapi.client import APIClient

        while True:
            client = APIClient("127.0.0.1", self.port, None, client_info="bench-adverts")
            stopped = asyncio.Event()

            async def on_stop(expected: bool, stopped: asyncio.Event = stopped) -> None:
                stopped.set()

            def on_adverts(message: Any) -> None:
                self.adverts += len(message.advertisements)

            try:
                await asyncio.wait_for(client.connect(on_stop=on_stop, login=True, log_errors=False), 5)
                await asyncio.wait_for(client.device_info(), 5)
                client.subscribe_bluetooth_le_raw_advertisements(on_adverts)
                await stopped.wait()
            except (Exception, TimeoutError) as exc:  # not up yet
                self.error = repr(exc)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.disconnect(), 2)
            await asyncio.sleep(0.2)


SERVICES = ("reader", "aggregator", "gateway")


async def resources_at(interval: float, window: float, tmp: Path) -> dict[str, Any]:
    """CPU s/min (the simulator's measured cost subtracted), start-up CPU, RSS/PSS/USS of each service.

    4 batteries polled every ``interval`` s on the simulator in real time, a client subscribed to every
    state, Mosquitto (or amqtt) as the broker; the simulator alone runs beside the stack, measured over
    the same window, and its CPU is subtracted from the reader's.
    """
    from tests.bench import _broker, _env_for_stack
    from tests.proof.support import ClientWatch, ProofStack

    broker = await _broker(tmp)
    stack = ProofStack(
        broker.url,
        tmp,
        _env_for_stack({"RENOGY_POLL_INTERVAL": str(interval), "RENOGY_SIM_LATENCY_SCALE": "1"}),
    )
    alone = Child(["sim-alone"], dict(stack.services["reader"].env), tmp / "sim-alone.log")
    try:
        await stack.start()
        started = time.monotonic()
        await alone.start()
        watch = ClientWatch(stack.api_port)
        watch.start()
        try:
            await watch.wait_complete(90)
            to_complete = time.monotonic() - started
            pids = {
                **stack.pids(),
                "broker": getattr(getattr(broker, "process", None), "pid", None),
                "simulator": alone.pid,
            }
            first = {name: cpu_s(pid) for name, pid in pids.items() if pid}
            await asyncio.sleep(window)  # the measurement window
            last = {name: cpu_s(pid) for name, pid in pids.items() if pid}
            memory = {name: mem(pid) for name, pid in pids.items() if pid}
        finally:
            await watch.stop()
    finally:
        await alone.stop()
        await stack.stop()
        await broker.stop()
    per_min: dict[str, float] = {}
    for name, start in first.items():
        end = last.get(name)
        if start is not None and end is not None:
            per_min[name] = (end - start) / window * 60
    simulator = per_min.get("simulator", 0.0)
    own = {name: per_min[name] for name in SERVICES if name in per_min}
    if "reader" in own:
        own["reader"] = max(0.0, own["reader"] - simulator)

    def mb(kind: str) -> dict[str, float]:
        return {
            name: round(getattr(m, kind) / 1024, 1)
            for name in SERVICES
            if (m := memory.get(name)) is not None
        }

    startup = {name: round(first[name] or 0.0, 2) for name in SERVICES if name in first}
    return {
        "poll_interval_s": interval,
        "window_s": window,
        "cpu_s_per_min": {name: round(per_min[name], 3) for name in SERVICES if name in per_min},
        "cpu_s_per_min_total": round(sum(per_min.get(k, 0.0) for k in SERVICES), 3),
        "simulator_cpu_s_per_min": round(simulator, 3),
        "own_cpu_s_per_min": {name: round(value, 3) for name, value in own.items()},
        "own_cpu_s_per_min_total": round(sum(own.values()), 3),
        "broker_cpu_s_per_min": round(per_min["broker"], 3) if "broker" in per_min else None,
        "startup_cpu_s": startup,
        "startup_cpu_s_total": round(sum(startup.values()), 2),
        "start_to_55_states_s": round(to_complete, 2),
        "rss_mb": mb("rss_kb"),
        "pss_mb": mb("pss_kb"),
        "uss_mb": mb("uss_kb"),
        "pss_mb_total": round(sum(mb("pss_kb").values()), 1),
    }


# Everything `renogy-proxy run` imports, for compile_bytecode's warm-up.
STACK_MODULES = (
    "services.cli",
    "services.supervisor",
    "services.reader.service",
    "services.aggregator.service",
    "services.gateway.service",
    "services.simulator",
)


def compile_bytecode(prefix: Path) -> Path:
    """Bytecode for every module the stack loads in a private PYTHONPYCACHEPREFIX, as an install has it
    (pip and the Docker image compile at install). Without it a checkout run with PYTHONDONTWRITEBYTECODE=1
    (the image's runtime setting, and CI sandboxes) compiles our ~150 modules again at every start."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(prefix)
    root = Path(__file__).resolve().parent.parent
    for argv in (
        ["-m", "compileall", "-q", str(root / "services"), str(root / "shared")],
        ["-c", "; ".join(f"import {name}" for name in STACK_MODULES)],  # the dependencies and stdlib
    ):
        subprocess.run([sys.executable, *argv], env=env, cwd=root, check=True, timeout=300)
    return prefix


async def run_tree(
    broker_url: str | None,
    settle: float,
    tmp: Path,
    *,
    pycache: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """`renogy-proxy run` as a user starts it (external broker unless None), one client subscribed.

    Start-up: wall time and the CPU the whole process tree spent until the client held all 55 states.
    Memory: RSS, PSS and USS of every process of the tree ``settle`` s after start (broker excluded
    when it is external). Poll interval 120 s, simulator in real time. ``pycache``: a bytecode prefix
    from compile_bytecode (None: whatever this environment does).
    """
    from tests.proof.support import ENTITIES, ClientWatch
    from tests.support.brokers import free_port

    api_port, broker_port = free_port(), free_port()
    env = (
        {key: value for key, value in os.environ.items() if not key.startswith("RENOGY_")}
        | {
            "RENOGY_API_PORT": str(api_port),
            "RENOGY_API_BIND": "127.0.0.1",
            "RENOGY_MDNS": "false",
            "RENOGY_STATE_DIR": str(tmp / "state"),
            "RENOGY_POLL_INTERVAL": "120",
            "RENOGY_LOG_LEVEL": "info",
        }
        | (extra_env or {})
    )
    if pycache is not None:
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    script = Path(sys.executable).parent / "renogy-proxy"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "services.cli"]
    argv += ["run", *(["--mqtt", broker_url] if broker_url else ["--broker-port", str(broker_port)])]
    started = time.monotonic()
    with (tmp / "run.log").open("ab") as log:
        process = await asyncio.create_subprocess_exec(*argv, env=env, stdout=log, stderr=log)
    watch = ClientWatch(api_port, expect=ENTITIES)
    watch.start()
    cpu: dict[str, float] = {}
    memory: dict[str, Mem] = {}
    try:
        async with asyncio.timeout(120):
            while True:
                latest = {object_id: value for _, object_id, value in watch.states}
                if len(latest) >= ENTITIES and all(v is not None for v in latest.values()):
                    break
                await asyncio.sleep(0.02)  # polling the client's record of states
        to_states = time.monotonic() - started
        for pid, role in tree(process.pid).items():
            if (spent := cpu_s(pid)) is not None:
                cpu[role] = cpu.get(role, 0.0) + spent
        await asyncio.sleep(max(0.0, settle - (time.monotonic() - started)))
        for pid, role in tree(process.pid).items():
            if (found := mem(pid)) is not None:
                memory[role] = found
    finally:
        await watch.stop()
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        await process.wait()
    pss = {role: round(m.pss_kb / 1024, 1) for role, m in memory.items()}
    return {
        "broker": "external" if broker_url else "embedded (amqtt)",
        "start_to_55_states_s": round(to_states, 2),
        "startup_cpu_s": {role: round(value, 2) for role, value in cpu.items()},
        "startup_cpu_s_total": round(sum(cpu.values()), 2),
        "after_s": settle,
        "rss_mb": {role: round(m.rss_kb / 1024, 1) for role, m in memory.items()},
        "pss_mb": pss,
        "uss_mb": {role: round(m.uss_kb / 1024, 1) for role, m in memory.items()},
        "pss_mb_total": round(sum(pss.values()), 1),
        "rss_mb_max": round(max((m.rss_kb for m in memory.values()), default=0) / 1024, 1),
    }


async def bench_footprint(quick: bool) -> dict[str, Any]:
    """`renogy-proxy run` against an external broker (the goal's setting) and the advert cost."""
    from tests.bench import _broker

    settle = 15.0 if quick else 60.0
    with tempfile.TemporaryDirectory() as tmp_text:
        tmp = Path(tmp_text)
        prefix = compile_bytecode(tmp / "pycache")
        broker = await _broker(tmp)
        try:
            tree_figures = await run_tree(broker.url, settle, tmp, pycache=prefix)
        finally:
            await broker.stop()
        # Start-up again with nothing of ours compiled (PYTHONDONTWRITEBYTECODE=1, no prefix): what a
        # checkout without __pycache__ pays at every start. A fresh broker: no retained documents.
        cold_tmp = tmp / "no-pyc"
        cold_tmp.mkdir()
        broker = await _broker(cold_tmp)
        try:
            with _env(PYTHONDONTWRITEBYTECODE="1"):
                cold = await run_tree(broker.url, 0.0, cold_tmp)
        finally:
            await broker.stop()
    tree_figures["bytecode"] = "compiled, as installed"
    tree_figures["without_bytecode"] = {
        key: cold[key] for key in ("start_to_55_states_s", "startup_cpu_s", "startup_cpu_s_total")
    }
    adverts = await advert_cost((10, 100, 1000), 5.0 if quick else 30.0, 10.0)
    return {"run_tree": tree_figures, "adverts": adverts}


async def _run_tree_alone(settle: float, *, fork: bool) -> dict[str, Any]:
    """run_tree as bench_footprint runs it (compiled bytecode, external broker), nothing else."""
    from tests.bench import _broker

    with tempfile.TemporaryDirectory() as tmp_text:
        tmp = Path(tmp_text)
        prefix = compile_bytecode(tmp / "pycache")
        broker = await _broker(tmp)
        try:
            fork_env = {"RENOGY_RUN_FORK": "true" if fork else "false"}
            return await run_tree(broker.url, settle, tmp, pycache=prefix, extra_env=fork_env)
        finally:
            await broker.stop()


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench_footprint")
    parser.add_argument("mode", choices=("sim-alone", "flood-alone", "flood-reader", "run-tree"))
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--settle", type=float, default=60.0, help="run-tree: seconds before memory")
    parser.add_argument("--no-fork", action="store_true", help="run-tree: RENOGY_RUN_FORK=false")
    args = parser.parse_args(argv)
    if args.mode == "run-tree":
        figures = asyncio.run(_run_tree_alone(args.settle, fork=not args.no_fork))
        print(json.dumps(figures, indent=1))
    elif args.mode == "sim-alone":
        asyncio.run(_sim_alone())
    elif args.mode == "flood-alone":
        asyncio.run(_flood_alone(args.rate))
    else:
        return _flood_reader(args.rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
