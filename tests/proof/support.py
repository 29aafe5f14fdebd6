"""What the proof tests share: a supervised stack, process figures, the truth audit, a watching client.

Everything here observes real processes from the outside (/proc, MQTT, the native API) so the
figures are the ones a user would see; nothing reaches into a service.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import math
import os
import re
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson
from aioesphomeapi.client import APIClient
from aioesphomeapi.model import SensorInfo, SensorState

from services.reader.readings import PUBLISHED_FIELDS
from shared import registers
from shared.modbus import ReadRequest, ReadResponse, ResponseAssembler
from tests.support.brokers import MosquittoBroker
from tests.support.fuzz import long_run
from tests.support.probe import MqttProbe
from tests.support.stack import SERVICES, ServiceProcess, Stack

T = TypeVar("T", int, float)
SLAVES = (48, 49, 50, 51)
BATTERY_DEVICES = tuple(f"battery_{s}" for s in SLAVES)
DEVICES = (*BATTERY_DEVICES, "bank")
ENERGY_KEYS = ("energy_in", "energy_out")
ENTITIES = 55
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Fast, faithful timing for soaks: every modelled latency x 0.01, reads back to back.
FAST_ENV = {
    "RENOGY_SIM_LATENCY_SCALE": "0.01",
    "RENOGY_POLL_INTERVAL": "0",
    "RENOGY_REQUEST_TIMEOUT": "0.2",
    "RENOGY_CONNECT_TIMEOUT": "1",
    "RENOGY_SCAN_TIMEOUT": "2",
    # A late reply must still be late (> request timeout) but arrive while the reader is busy.
    "RENOGY_SIM_LATE_DELAY": "0.3",
    "RENOGY_LOG_LEVEL": "info",
}


# The whole-stack proofs' timing: modelled latencies x 0.05, short timeouts (a fault costs little time).
STACK_TIMING = {
    "RENOGY_SIM_LATENCY_SCALE": "0.05",
    "RENOGY_REQUEST_TIMEOUT": "0.3",
    "RENOGY_CONNECT_TIMEOUT": "2",
}


def proof_scale(short: T, long: T) -> T:
    """A size for this run: ``long`` under RENOGY_PROOF=long, else ``short``."""
    return long if long_run() else short


# --- process figures ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcSample:
    at: float
    rss_kb: int
    fds: int
    cpu_s: float


def proc_sample(pid: int) -> ProcSample | None:
    """RSS, open file descriptors and CPU seconds (user + system) of a live process; None once it is gone."""
    try:
        rss = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
                break
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return ProcSample(time.monotonic(), rss, fds, cpu)


class BackgroundTask:
    """A coroutine ``_run`` started on the running loop and cancelled by ``stop``."""

    _task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class Sampler(BackgroundTask):
    """Samples RSS/FDs/CPU of named processes at a fixed interval (a measurement, not a wait)."""

    def __init__(self, pids: Callable[[], Mapping[str, int | None]], interval: float = 1.0) -> None:
        self._pids = pids
        self.interval = interval
        self.series: dict[str, list[ProcSample]] = defaultdict(list)
        self._task: asyncio.Task[None] | None = None

    def sample_now(self) -> None:
        for name, pid in self._pids().items():
            if pid is not None and (sample := proc_sample(pid)) is not None:
                self.series[name].append(sample)

    async def _run(self) -> None:
        while True:
            self.sample_now()
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        await super().stop()
        self.sample_now()


# --- logs -----------------------------------------------------------------------------------------

UNHANDLED = re.compile(
    r"Traceback \(most recent call last\)|Exception in callback|exception was never retrieved"
    r"|unexpected error|Unhandled exception|Fatal error|Task was destroyed but it is pending"
)


def unhandled_exceptions(text: str) -> list[str]:
    """Lines of a service log that show an exception nobody handled."""
    return [line for line in text.splitlines() if UNHANDLED.search(line)]


# --- a stack that restarts what dies, like docker's restart policy ----------------------------------


@dataclass
class Exit:
    service: str
    code: int | None
    at: float


class Supervised:
    """Services watched for exits nobody asked for; ``restart`` says whether such a one starts again.

    The reader exits on purpose when the adapter is gone, as under docker or systemd, so the single-host
    proofs restart (like a restart policy); the multi-host proof must do without, so it only records.
    """

    services: dict[str, ServiceProcess]
    restart = True

    def _init_supervision(self) -> None:
        self.exits: list[Exit] = []
        self.expected_down: set[str] = set()
        self._watch: asyncio.Task[None] | None = None

    async def start_service(self, name: str) -> None:
        await self.services[name].start()
        self.expected_down.discard(name)

    async def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        self.expected_down.add(name)
        service = self.services[name]
        await service.signal(sig)
        if service.process is not None:
            await service.process.wait()

    def supervise(self) -> None:
        self._watch = asyncio.get_running_loop().create_task(self._supervise())

    async def _supervise(self) -> None:
        while True:
            for name, service in self.services.items():
                if name in self.expected_down or service.process is None:
                    continue
                code = service.process.returncode
                if code is not None:
                    self.exits.append(Exit(name, code, time.monotonic()))
                    if self.restart:
                        await self.start_service(name)
                    else:
                        self.expected_down.add(name)
            await asyncio.sleep(0.1)  # the supervisor's polling interval

    async def stop_supervising(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        self.expected_down.update(self.services)

    def pids(self) -> dict[str, int | None]:
        return {n: (s.pid if s.running else None) for n, s in self.services.items()}

    def unhandled(self) -> dict[str, list[str]]:
        return {n: found for n, s in self.services.items() if (found := unhandled_exceptions(s.log()))}


class ProofStack(Supervised, Stack):
    """The three services as processes; the reader gets a fresh truth log (and fault seed) per start."""

    def __init__(self, broker_url: str, workdir: Path, env: Mapping[str, str] | None = None) -> None:
        super().__init__(broker_url, workdir, env_overrides=dict(env or {}))
        self._init_supervision()
        self.truth_dir = workdir / "truth"
        self.truth_dir.mkdir(exist_ok=True)
        self._base_seed = int(self.services["reader"].env.get("RENOGY_SIM_SEED", "0") or 0)

    @property
    def truth_logs(self) -> list[Path]:
        return sorted(self.truth_dir.glob("truth-*.jsonl"))

    async def start_service(self, name: str) -> None:
        service = self.services[name]
        if name == "reader":
            n = service.starts
            service.env["RENOGY_SIM_TRUTH_LOG"] = str(self.truth_dir / f"truth-{n:04d}.jsonl")
            service.env["RENOGY_SIM_SEED"] = str(self._base_seed + n)
        await super().start_service(name)

    async def start(self) -> None:
        for name in SERVICES:
            await self.start_service(name)

    async def stop(self) -> None:
        await self.stop_supervising()
        await super().stop()


class RunnableStack(Protocol):
    api_port: int

    async def start(self) -> None: ...

    def supervise(self) -> None: ...

    async def stop(self) -> None: ...

    def logs(self) -> str: ...


@contextlib.asynccontextmanager
async def watched(stack: RunnableStack, api_host: str = "127.0.0.1") -> AsyncIterator[ClientWatch]:
    """Start and supervise the stack; yield once a watching client has every entity; always stop it.
    A failure prints the services' logs."""
    await stack.start()
    stack.supervise()
    watch = ClientWatch(stack.api_port, host=api_host)
    watch.start()
    try:
        await watch.wait_complete(60)
        yield watch
    except BaseException:
        print(stack.logs())
        raise
    finally:
        await watch.stop()
        await stack.stop()


@contextlib.asynccontextmanager
async def proof_stack(
    broker_url: str,
    workdir: Path,
    env: Mapping[str, str],
    *filters: str,
    prepare: Callable[[ProofStack], None] | None = None,
) -> AsyncIterator[tuple[ProofStack, MqttProbe, ClientWatch]]:
    """A supervised ProofStack with a probe on ``filters`` and a watching client; ``prepare`` edits it
    before it starts."""
    stack = ProofStack(broker_url, workdir, env)
    if prepare is not None:
        prepare(stack)
    async with MqttProbe(broker_url, *filters) as probe, watched(stack) as watch:
        yield stack, probe, watch


@contextlib.asynccontextmanager
async def mosquitto_stack(
    workdir: Path,
    env: Mapping[str, str],
    *filters: str,
    prepare: Callable[[ProofStack], None] | None = None,
) -> AsyncIterator[tuple[MosquittoBroker, ProofStack, MqttProbe, ClientWatch]]:
    """proof_stack on a Mosquitto of its own, which the test may stop and start (the port stays)."""
    broker = MosquittoBroker(workdir)
    await broker.start()
    try:
        async with proof_stack(broker.url, workdir, env, *filters, prepare=prepare) as running:
            yield (broker, *running)
    finally:
        await broker.stop()


# --- the simulator's truth, written by the reader process -------------------------------------------


@dataclass
class Truth:
    """Every genuine reply (with its delivery time) and every fault the simulator logged."""

    frames: dict[tuple[int, int, bytes], list[float]] = field(default_factory=lambda: defaultdict(list))
    faults: list[tuple[float, str, int | None, int | None]] = field(default_factory=list)
    fault_frames: dict[tuple[int, int, bytes], str] = field(default_factory=dict)
    values: dict[int, dict[int, list[dict[str, Any]]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    torn_lines: int = 0
    records: int = 0
    _fault_times: list[float] = field(default_factory=list)

    @classmethod
    def load(cls, paths: Iterable[Path]) -> Truth:
        truth = cls()
        for path in paths:
            truth._load(path)
        for times in truth.frames.values():
            times.sort()
        truth.faults.sort(key=lambda f: f[0])
        return truth

    def _load(self, path: Path) -> None:
        with path.open(encoding="utf-8") as log:
            for line in log:
                try:
                    data = json.loads(line)
                except json.JSONDecodeError:
                    self.torn_lines += 1  # a SIGKILL mid-line: that reply was never published
                    continue
                slave, start = data.get("slave"), data.get("start")
                frame = bytes.fromhex(data["frame"]) if data.get("frame") else b""
                if data.get("type") == "truth":
                    self.records += 1
                    self.frames[(slave, start, frame)].append(float(data["wall_time"]))
                    if data.get("exception") is None:
                        self.values[slave][start].append(data["values"])
                elif data.get("type") == "fault":
                    self.faults.append((float(data["wall_time"]), str(data["kind"]), slave, start))
                    if frame and slave is not None and start is not None:
                        self.fault_frames[(slave, start, frame)] = str(data["kind"])

    def fault_kinds(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for _, kind, _, _ in self.faults:
            counts[kind] += 1
        return dict(sorted(counts.items()))

    def delivered_between(self, key: tuple[int, int, bytes], low: float, high: float) -> bool:
        times = self.frames.get(key)
        if not times:
            return False
        index = bisect.bisect_left(times, low)
        return index < len(times) and times[index] <= high

    def faults_between(self, low: float, high: float) -> int:
        if len(self._fault_times) != len(self.faults):
            self._fault_times = [f[0] for f in self.faults]
        times = self._fault_times
        return bisect.bisect_right(times, high) - bisect.bisect_right(times, low)


def decode_frame(slave: int, start: int, frame: bytes) -> dict[str, registers.Value]:
    words = (len(frame) - 5) // 2
    events = ResponseAssembler(ReadRequest(slave, start, words)).feed(frame)
    response = next((e for e in events if isinstance(e, ReadResponse)), None)
    if response is None:
        raise ValueError(f"not a whole reply to {slave}/{start}: {frame.hex()}")
    return registers.decode_block(start, response.registers)


# How far a block's delivery may lie from the reading's ts (the time its 5042 block arrived).
STATUS_WINDOW = (-1.0, 0.002)
OTHER_WINDOW = (-0.002, 60.0)


def audit_reading(reading: Mapping[str, Any], truth: Truth) -> list[str]:
    """Why a published reading is not the simulator's truth at read time (empty when it is)."""
    problems: list[str] = []
    slave, ts = int(reading["slave_id"]), float(reading["ts"])
    raw: Mapping[str, str] = reading.get("raw") or {}
    if "5042" not in raw:
        problems.append(f"battery {slave}: reading without its 5042 block")
    for start_text, frame_hex in raw.items():
        start, frame = int(start_text), bytes.fromhex(frame_hex)
        key = (slave, start, frame)
        if key not in truth.frames:
            fault = truth.fault_frames.get(key)
            origin = f"the frame of a '{fault}' fault" if fault else "a frame the simulator never sent"
            problems.append(f"battery {slave} block {start} at {ts}: published {origin}: {frame_hex}")
            continue
        low, high = STATUS_WINDOW if start == 5042 else OTHER_WINDOW
        if not truth.delivered_between(key, ts + low, ts + high):
            problems.append(
                f"battery {slave} block {start}: genuine frame, but not delivered at read time {ts}"
            )
        decoded = decode_frame(slave, start, frame)
        problems.extend(
            f"battery {slave} {name}: published {reading.get(name)!r}, frame says {decoded[name]!r}"
            for name in PUBLISHED_FIELDS.get(start, ())
            if name in decoded and reading.get(name) != decoded[name]
        )
    for start, names in PUBLISHED_FIELDS.items():
        if str(start) not in raw and start != 5104:
            present = [n for n in names if n in reading]
            if present:
                problems.append(f"battery {slave}: fields {present} published without their block {start}")
    if not raw.keys() >= {"5042", "5000"} and reading.get("complete"):
        problems.append(f"battery {slave}: marked complete without blocks 5042 and 5000")
    return problems


def reading_messages(probe: MqttProbe) -> list[dict[str, Any]]:
    return [
        orjson.loads(m.payload)
        for m in probe.messages
        if m.topic.endswith("/reading") and m.payload and not m.retain
    ]


# --- what Home Assistant sees ----------------------------------------------------------------------


def _round(value: float, digits: int) -> float:
    return round(value, digits) + 0.0


@dataclass
class ValueBook:
    """Every value the aggregator could derive from genuine replies, per entity, as published (rounded)."""

    by_entity: dict[str, list[float]]

    @classmethod
    def from_truth(cls, truth: Truth) -> ValueBook:
        book: dict[str, set[float]] = defaultdict(set)
        for slave, blocks in truth.values.items():
            device = f"battery_{slave}"
            for values in blocks.get(5042, []):
                v, i, r, c = (values.get(k) for k in ("voltage", "current", "remaining_charge", "capacity"))
                if isinstance(v, float) and isinstance(i, float):
                    book[f"{device}_voltage"].add(_round(v, 3))
                    book[f"{device}_current"].add(_round(i, 3))
                    book[f"{device}_power"].add(_round(v * i, 2))
                if isinstance(r, float) and isinstance(c, float):
                    book[f"{device}_remaining_charge"].add(_round(r, 3))
                    book[f"{device}_capacity"].add(_round(c, 2))
                    if c > 0:
                        book[f"{device}_battery_level"].add(_round(min(100.0, max(0.0, 100 * r / c)), 2))
            for values in blocks.get(5000, []):
                cells, temps = values.get("cell_voltages"), values.get("temperatures")
                if isinstance(cells, list) and cells:
                    book[f"{device}_cell_voltage_min"].add(_round(min(cells), 4))
                    book[f"{device}_cell_voltage_max"].add(_round(max(cells), 4))
                if isinstance(temps, list) and temps:
                    book[f"{device}_temperature_min"].add(_round(min(temps), 2))
                    book[f"{device}_temperature_max"].add(_round(max(temps), 2))
        return cls({k: sorted(v) for k, v in book.items()})

    def produced(self, object_id: str, value: float) -> bool | None:
        """Whether a float32 value the client saw is one of the derived values; None for unchecked entities."""
        candidates = self.by_entity.get(object_id)
        if candidates is None:
            return None
        tolerance = 2e-7 * max(1.0, abs(value)) + 1e-9
        index = bisect.bisect_left(candidates, value - tolerance)
        return index < len(candidates) and candidates[index] <= value + tolerance


CHECKED_SUFFIXES = (
    "voltage",
    "current",
    "power",
    "remaining_charge",
    "capacity",
    "battery_level",
    "cell_voltage_min",
    "cell_voltage_max",
    "temperature_min",
    "temperature_max",
)


@dataclass
class ClientWatch(BackgroundTask):
    """An aioesphomeapi client that stays subscribed like Home Assistant, reconnecting when cut off.

    Keeps every state it receives; ``complete_times`` holds when each (re)subscription had a state
    for every listed entity (so chaos tests can time how long the client was without them).
    """

    port: int
    expect: int = ENTITIES
    host: str = "127.0.0.1"
    noise_psk: str | None = None
    states: list[tuple[float, str, float | None]] = field(default_factory=list)
    connects: int = 0
    complete_times: list[float] = field(default_factory=list)
    last_error: str | None = None
    _task: asyncio.Task[None] | None = None
    _complete: asyncio.Event = field(default_factory=asyncio.Event)
    _names: dict[int, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self._complete.is_set()

    async def wait_complete(self, timeout: float) -> float:
        """Seconds until the current connection has every entity's state."""
        started = time.monotonic()
        await asyncio.wait_for(self._complete.wait(), timeout)
        return time.monotonic() - started

    async def _run(self) -> None:
        while True:
            stopped = asyncio.Event()
            client = APIClient(
                self.host, self.port, None, noise_psk=self.noise_psk, client_info="proof-watch"
            )

            async def on_stop(expected: bool, stopped: asyncio.Event = stopped) -> None:
                stopped.set()

            try:
                await asyncio.wait_for(client.connect(on_stop=on_stop, login=True, log_errors=False), 5)
                entities, _ = await asyncio.wait_for(client.list_entities_services(), 5)
                sensors = {e.key: e.object_id for e in entities if isinstance(e, SensorInfo)}
                if len(sensors) < self.expect:
                    raise RuntimeError(f"{len(sensors)} of {self.expect} entities listed")
                self._names = sensors
                self.connects += 1
                seen: set[int] = set()

                def on_state(state: Any, seen: set[int] = seen) -> None:
                    if not isinstance(state, SensorState) or state.key not in self._names:
                        return
                    value = None if state.missing_state else float(state.state)
                    self.states.append((time.monotonic(), self._names[state.key], value))
                    seen.add(state.key)
                    if len(seen) >= len(self._names) and not self._complete.is_set():
                        self._complete.set()
                        self.complete_times.append(time.monotonic())

                client.subscribe_states(on_state)
                await stopped.wait()
            except (Exception, TimeoutError) as exc:  # the gateway is restarting or relisting
                self.last_error = repr(exc)
            finally:
                self._complete.clear()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.disconnect(), 2)
            await asyncio.sleep(0.1)  # reconnect pace, as Home Assistant's reconnect logic

    def unproduced(self, book: ValueBook) -> list[str]:
        """States the client saw that no genuine reply could have produced."""
        bad = []
        for _, object_id, value in self.states:
            if (
                value is None
                or not object_id.startswith("battery_")
                or not object_id.endswith(CHECKED_SUFFIXES)
            ):
                continue
            if book.produced(object_id, value) is False:
                bad.append(f"{object_id} = {value}")
        return bad

    def energy_decreases(self) -> list[str]:
        last: dict[str, float] = {}
        bad = []
        for _, object_id, value in self.states:
            if value is None or not object_id.endswith(ENERGY_KEYS):
                continue
            if value < last.get(object_id, -math.inf):
                bad.append(f"{object_id}: {last[object_id]} -> {value}")
            last[object_id] = max(value, last.get(object_id, -math.inf))
        return bad


class TimedProbe(MqttProbe):
    """A probe that also notes when each message arrived (time.monotonic)."""

    def __init__(self, url: str, *filters: str) -> None:
        super().__init__(url, *filters)
        self.arrivals: list[float] = []

    def _on_message(self, message: Any) -> None:
        self.arrivals.append(time.monotonic())
        super()._on_message(message)


def energy_decreases_mqtt(probe: MqttProbe) -> list[str]:
    """Energy values in device state documents that went down (over the whole run, across restarts)."""
    last: dict[str, float] = {}
    bad = []
    for message in probe.messages:
        if not message.topic.startswith("renogy/device/") or not message.topic.endswith("/state"):
            continue
        if not message.payload:
            continue
        device = message.topic.split("/")[2]
        values = orjson.loads(message.payload).get("values", {})
        for key in ENERGY_KEYS:
            value = values.get(key)
            if not isinstance(value, float | int):
                continue
            name = f"{device}.{key}"
            if value < last.get(name, -math.inf):
                bad.append(f"{name}: {last[name]} -> {value}")
            last[name] = max(float(value), last.get(name, -math.inf))
    return bad


def latest_energy(probe: MqttProbe) -> dict[str, float]:
    out: dict[str, float] = {}
    for device in DEVICES:
        topic = f"renogy/device/{device}/state"
        if topic in probe.latest:
            values = probe.json(topic)["values"]
            for key in ENERGY_KEYS:
                if isinstance(values.get(key), float | int):
                    out[f"{device}.{key}"] = float(values[key])
    return out


def health_messages(probe: MqttProbe, service: str, instance: str = "default") -> list[dict[str, Any]]:
    topic = f"renogy/bridge/{service}/{instance}/health"
    return [orjson.loads(m.payload) for m in probe.messages if m.topic == topic and m.payload]


def counter_of(probe: MqttProbe, slave: int) -> dict[str, Any] | None:
    """The energy counter of a battery in its latest device state (in_wh, out_wh, last_mono)."""
    topic = f"renogy/device/battery_{slave}/state"
    return probe.json(topic).get("counter") if topic in probe.latest else None


def counted_after(probe: MqttProbe, mono: float, slaves: Iterable[int] = SLAVES) -> bool:
    """Whether every battery's counter holds a reading taken after ``mono`` (the reader's monotonic clock)."""
    counters = [counter_of(probe, s) for s in slaves]
    return all(c is not None and (c.get("last_mono") or 0.0) > mono for c in counters)


def outbox_empty(probe: MqttProbe, instance: str = "default", batteries: int = len(SLAVES)) -> bool:
    """Whether the reader's outbox holds no backlog (its last health shows at most one cycle queued)."""
    healths = health_messages(probe, "reader", instance)
    # The health of a cycle is published right after its readings were queued: up to one per battery.
    return bool(healths) and (healths[-1].get("outbox") or {}).get("queued", 99) <= batteries


def total_reader_cycles(healths: list[dict[str, Any]]) -> int:
    """Cycles over every reader process (the count restarts with each process)."""
    total = last = 0
    for health in healths:
        cycles = int(health.get("cycles", 0))
        if cycles < last:
            total += last
        last = cycles
    return total + last


def percentile(values: Iterable[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def write_figures(name: str, figures: Mapping[str, Any]) -> None:
    """Print a proof run's figures (call before the assertions, so a failing run shows them too)."""
    print(f"\n{name}: " + json.dumps(figures, indent=2, default=str))


def record_figures(name: str, figures: Mapping[str, Any]) -> None:
    """A long run that passed: its figures go to docs/benchmarks.md (tests/bench.py keeps the history)."""
    if long_run():
        from tests.bench import record

        record("proof", name, {"result": "passed", **json.loads(json.dumps(figures, default=str))})


class CycleCounter:
    """Reader cycles over every reader process, counted incrementally from the probe's health messages."""

    TOPIC = "renogy/bridge/reader/default/health"

    def __init__(self, probe: MqttProbe) -> None:
        self.probe = probe
        self._index = 0
        self._done = 0
        self._last = 0

    @property
    def total(self) -> int:
        messages = self.probe.messages
        while self._index < len(messages):
            message = messages[self._index]
            self._index += 1
            if message.topic == self.TOPIC and message.payload and not message.retain:
                cycles = int(orjson.loads(message.payload).get("cycles", 0))
                if cycles < self._last:
                    self._done += self._last
                self._last = cycles
        return self._done + self._last


@dataclass
class CycleRecord:
    start: float
    end: float
    faults: int
    complete: frozenset[int]
    published: frozenset[int]
    health: dict[str, Any]


def cycle_records(
    healths: list[dict[str, Any]], readings: list[dict[str, Any]], truth: Truth
) -> list[list[CycleRecord]]:
    """Per reader process, one record per cycle: its time window (from the health published after it),
    the faults the simulator injected in that window, and the batteries published complete in it."""
    by_ts = sorted(readings, key=lambda r: float(r["ts"]))
    stamps = [float(r["ts"]) for r in by_ts]
    processes: list[list[CycleRecord]] = []
    last_cycles = 0
    for health in healths:
        cycles, duration = int(health.get("cycles", 0)), health.get("last_cycle_s")
        if cycles == 0 or duration is None:
            continue
        if cycles <= last_cycles:
            if cycles == last_cycles:
                continue  # the health published at shutdown repeats the last cycle
            processes.append([])
        if not processes:
            processes.append([])
        last_cycles = cycles
        end = float(health["ts"])
        start = end - float(duration) - 0.002
        low, high = bisect.bisect_left(stamps, start), bisect.bisect_right(stamps, end)
        inside = by_ts[low:high]
        processes[-1].append(
            CycleRecord(
                start,
                end,
                truth.faults_between(start, end),
                frozenset(int(r["slave_id"]) for r in inside if r.get("complete")),
                frozenset(int(r["slave_id"]) for r in inside),
                health,
            )
        )
    return processes


@dataclass
class Recovery:
    episodes: int = 0
    cycles_to_recover: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    clean_but_incomplete: list[str] = field(default_factory=list)
    faulted_cycles: int = 0
    clean_cycles: int = 0
    # An episode whose first clean cycle(s) were incomplete and which was cut short by new faults
    # took at least this many cycles, though it never shows in cycles_to_recover.
    at_least: int = 0

    @property
    def worst(self) -> int:
        return max(max(self.cycles_to_recover, default=0), self.at_least)


def recovery(processes: list[list[CycleRecord]], batteries: Iterable[int] = SLAVES) -> Recovery:
    """After every run of cycles hit by faults, how many fault-free cycles until every battery is read complete."""
    wanted = frozenset(batteries)
    result = Recovery()
    for cycles in processes:
        pending: int | None = None  # clean cycles seen since the last faulted one, while not yet recovered
        for record in cycles:
            if record.faults:
                result.faulted_cycles += 1
                if pending is None:
                    result.episodes += 1
                pending = 0
                continue
            result.clean_cycles += 1
            good = record.complete >= wanted
            if not good:
                missing = sorted(wanted - record.complete)
                result.clean_but_incomplete.append(
                    f"cycle {record.health.get('cycles')} at {record.end:.3f}: batteries {missing} not complete "
                    f"(errors so far {record.health.get('errors')})"
                )
            if pending is not None:
                pending += 1
                if good:
                    result.cycles_to_recover[pending] += 1
                    pending = None
                else:
                    result.at_least = max(result.at_least, pending + 1)
    return result
