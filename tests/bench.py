"""`make bench`: every benchmark, printed and recorded in docs/benchmarks.md (with date and machine).

Figures:

- reader: 4-battery cycle time vs the modelled floor and vs the old 0.5 s-sleep approach, same simulator
  (tests/bench_reader.py);
- latency: a reading's arrival at the reader -> the changed state at an aioesphomeapi client, p50/p99,
  through the whole stack (reader, broker, aggregator, broker, gateway);
- gateway: full-sync time and state updates/s for 64 batteries and 16 clients (tests/bench_gateway.py);
- resources: CPU seconds per minute and RSS of each service at 4 batteries polled every 120 s and
  every 30 s (the default), real simulator timing, a client subscribed, over a fixed window;
- startup: `renogy-proxy run` -> a client holding all 55 states.

Every run is appended to docs/benchmarks.json (the history); docs/benchmarks.md is rendered from it, so
earlier runs' lines are kept. The long proof runs (`make soak`, `make chaos`, `make fuzz`) add their
figures to the same history through :func:`record`.

    python -m tests.bench [--quick] [--window 180] [--only reader,latency,...] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
HISTORY = DOCS / "benchmarks.json"
MARKDOWN = DOCS / "benchmarks.md"
OLD_MONOLITH_CPU_S_PER_MIN = 0.34
BENCHES = ("reader", "bluez", "proxy", "airtime", "latency", "gateway", "resources", "footprint", "startup")
# The system we replace, run unchanged on our simulator side by side with this stack (issue 15): the
# reference row of the footprint table. Its totals include ~0.4 s/min of the simulator's own scanner.
MONOLITH = {
    "cycle_s": 12.67,
    "start_to_first_cycle_s": 21.3,
    "ping_p99_ms": 4939,
    "cpu_s_per_min_120s": 0.47,
    "cpu_s_per_min_30s": 0.39,
    "startup_cpu_s": "0.6-0.9",
    "rss_mb": 50,
    "pss_mb": 40,
    "processes": 1,
}


# --- where and when -------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


def machine_text(info: dict[str, Any]) -> str:
    return f"{info['cpu']}, {info['cores']} cores, {info['ram_gb']} GB RAM, Python {info['python']}, {info['os']}"


def now_text() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


# --- history and the document -----------------------------------------------------------------------------------


def load_history(path: Path = HISTORY) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    return list(data.get("runs", []))


def record(
    kind: str, name: str, figures: dict[str, Any], *, path: Path = HISTORY, markdown: Path = MARKDOWN
) -> None:
    """Append one run to the history and re-render the document."""
    runs = load_history(path)
    runs.append({"kind": kind, "name": name, "date": now_text(), "machine": machine(), "figures": figures})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runs": runs}, indent=1, sort_keys=False, default=str) + "\n")
    markdown.write_text(render(runs))


def _get(figures: dict[str, Any], dotted: str) -> Any:
    value: Any = figures
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        value += 0.0  # no "-0"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


# (column title, dotted key in the bench figures)
BENCH_COLUMNS = (
    ("cycle s (MTU 251)", "reader.mtu251.cycle_s"),
    ("merged cycle s", "reader.cycle_4_batteries.merged_s"),
    ("floor s", "reader.mtu251.floor_s"),
    ("× floor", "reader.mtu251.ratio_to_floor"),
    ("old 0.5 s-sleep cycle s", "reader.old_0_5s_sleep.cycle_s"),
    ("reading→client p50 ms", "latency.p50_ms"),
    ("p99 ms", "latency.p99_ms"),
    ("full sync 64 batt. ms", "gateway.full_sync_p50_ms"),
    ("updates/s per client (16)", "gateway.fanout_updates_per_s_per_client"),
    ("CPU s/min @120 s (r/a/g)", "resources.poll_120s.cpu_s_per_min"),
    ("CPU s/min @30 s (r/a/g)", "resources.poll_30s.cpu_s_per_min"),
    ("RSS MB @30 s (r/a/g)", "resources.poll_30s.rss_mb"),
    ("own CPU s/min @120 s (sim. subtracted)", "resources.poll_120s.own_cpu_s_per_min_total"),
    ("PSS MB run tree", "footprint.run_tree.pss_mb_total"),
    ("start-up CPU s run tree", "footprint.run_tree.startup_cpu_s_total"),
    ("µs/advert @1000/s", "footprint.adverts.rate_1000.total_us"),
    ("run → 55 states s", "startup.median_s"),
)

PROOF_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "fault_soak": (
        ("result", "result"),
        ("cycles", "cycles"),
        ("requests", "requests"),
        ("fault share", "fault_share"),
        ("wrong values", "wrong_values_published"),
        ("unhandled exc.", "unhandled_exceptions"),
        ("worst cycles to recover", "worst_cycles_to_recover"),
        ("client values not from sim", "client_values_not_produced_by_the_simulator"),
        ("energy decreases", "energy_decreases"),
        ("wall s", "wall_s"),
    ),
    "day_soak": (
        ("result", "result"),
        ("simulated h", "simulated_hours"),
        ("wall s", "wall_s"),
        ("RSS growth MB reader", "services.reader.rss_growth_mb"),
        ("aggregator", "services.aggregator.rss_growth_mb"),
        ("gateway", "services.gateway.rss_growth_mb"),
        ("FDs reader", "services.reader.fds_range"),
        ("FDs aggregator", "services.aggregator.fds_range"),
        ("FDs gateway", "services.gateway.fds_range"),
        ("bank in Wh", "bank_in_wh"),
        ("Σ batteries in Wh", "sum_battery_in_wh"),
    ),
    "chaos_broker": (
        ("result", "result"),
        ("restarts", "restarts"),
        ("retained back max s", "retained_back_s_max"),
        ("entities back max s", "entities_back_s_max"),
        ("updates back max s", "updates_back_s_max"),
        ("energy decreases", "energy_decreases"),
    ),
    "chaos_sigkill": (
        ("result", "result"),
        ("kills per service", "kills_per_service"),
        ("reader: entities back max s", "reader_entities_back_s_max"),
        ("aggregator", "aggregator_entities_back_s_max"),
        ("gateway", "gateway_entities_back_s_max"),
        ("gateway bind max s", "gateway_bind_s_max"),
        ("unexpected exits", "unexpected_exits"),
        ("energy decreases", "energy_decreases"),
    ),
    "broker_outage": (
        ("result", "result"),
        ("outage s", "outage_s"),
        ("poll s", "poll_s"),
        ("energy counted Wh", "energy_counted_wh"),
        ("truth Wh", "energy_truth_wh"),
        ("error %", "error_pct"),
        ("readings kept (peak)", "outbox.peak"),
        ("dropped", "outbox.dropped"),
        ("gateway unknown after s", "gateway_unknown_after_s"),
    ),
    "clock_steps": (
        ("result", "result"),
        ("steps", "steps"),
        ("s per phase", "phase_s"),
        ("energy counted Wh", "energy_counted_wh"),
        ("truth Wh", "energy_truth_wh"),
        ("error %", "error_pct"),
        ("host steps logged", "host_step_lines"),
        ("reader steps logged", "reader_step_lines"),
    ),
    "multi_host": (
        ("result", "result"),
        ("cut s", "cut_s"),
        ("reader back s", "recovery_s.reader"),
        ("aggregator", "recovery_s.aggregator"),
        ("gateway", "recovery_s.gateway"),
        ("error %", "error_pct"),
        ("wrong values", "wrong_values"),
        ("restarts", "restarts"),
    ),
    "persistence": (
        ("result", "result"),
        ("poll s", "poll_interval_s"),
        ("batteries", "batteries"),
        ("state file writes per hour", "writes_per_hour"),
        ("before", "writes_per_hour_before"),
        ("save interval s", "save_interval_s"),
    ),
    "fuzz": (
        ("result", "result"),
        ("API frames", "api_frames"),
        ("MQTT payloads", "mqtt_payloads"),
        ("Modbus frames", "modbus_frames"),
        ("crashes", "crashes"),
    ),
}

INTRO = """# Benchmarks and proof runs

Figures a user can re-run on their own machine. Every run appends to `docs/benchmarks.json`, and this
page is rendered from it: the newest figures first, then the history of every run.

| command | what it does | time |
|---|---|---|
| `make bench` | every benchmark below; `ARGS="--quick"` for a smoke run | ~10 min |
| `make soak` | 10,000-cycle fault soak and a simulated day (long forms) | ~1 h |
| `make chaos` | broker restarts, SIGKILLs, 5 min broker outage, clock steps, 60 s cut between 4 hosts | ~35 min |
| `make fuzz` | >= 100,000 API frames and >= 10,000 MQTT payloads (long budget) | ~5 min |
| `make test` | the short forms of soak, chaos and fuzz, with everything else | ~3 min |

How each figure is measured:

- **Cycle time**: the reader's median steady-state cycle of 4 batteries (5042 x 7 and 5000 x 34 each)
  on the simulator with its real timing model (45 ms connection interval, 9600 baud, turnaround and
  line silence), against the modelled floor (the sum of the minimum times of those reads) and against
  the old approach (five blocks per battery, 0.5 s sleep after each) on the same simulator.
- **Reading → client latency**: from the moment the reader received a battery's 5042 block to the moment
  an aioesphomeapi client subscribed to the gateway received the changed current; whole stack, each
  service its own process, Mosquitto in between.
- **Gateway**: full sync (connect, device info, list entities, all initial states) of 64 batteries
  (775 entities); state updates/s to each of 16 subscribed clients (tests/bench_gateway.py).
- **Resources**: CPU seconds (user + system, /proc/<pid>/stat) per minute and RSS of each service with
  4 batteries, a client subscribed, the simulator in real time, over a fixed window after start-up.
  For comparison, the old monolith used 0.34 s of CPU per minute at a 120 s poll interval.
- **Footprint** (issue 15): the simulator runs inside the reader (it is its bleak backend), so its
  cost is measured on its own: the same simulator (config, seed, neighbours, timing) in a process of
  its own with the BT-2 held connected, its scanner feeding a no-op callback and every battery's
  registers read once per poll; its CPU over the same window is subtracted from the reader's ("own
  CPU"). CPU is the scheduler's run time of every thread (/proc/<pid>/task/*/schedstat, ns), memory is
  RSS, PSS and USS from /proc/<pid>/smaps_rollup. `run_tree`: `renogy-proxy run` against an external
  broker, poll 120 s, one client, start-up CPU of the whole tree until the client holds all 55 states
  (bytecode compiled beforehand, as pip and the Docker image install it; `without_bytecode`: the same
  with every module of ours compiled at start, PYTHONDONTWRITEBYTECODE=1) and memory after 60 s
  (nothing else of the stack runs beside it; the benchmark's own client shares
  the interpreter's pages, as Home Assistant on the same machine would not). `adverts`: CPU µs per
  forwarded advertisement (reader -> MQTT -> gateway -> client; reader, broker and gateway, not the
  client) at 10, 100 and 1,000 extra adverts/s from 2,000 distinct neighbours, over the stack's cost
  without them; the generator's own cost (measured alone) is subtracted. The resource runs at 120 s
  and 30 s run at the same time, so their PSS is shared with the other stack and lower than alone.
- **Start-up**: `renogy-proxy run` (embedded broker, simulator) until a client holds a value for all
  55 entities.
"""


FINDINGS = """## What the proof runs found (and what was fixed)

- **Fault soak, 10,000 cycles**: one fault-free cycle missed a battery. Its reads had failed in the two
  cycles before because the BT-2 link could not be re-established (a connect fault after a dropped
  link), and the reader took that for a silent battery and skipped it in the next cycle: recovery took
  2 cycles. Now only a battery that was asked and did not answer is backed off
  (services/reader/service.py; tests/proof/test_proof_regressions.py).
- **Security, buffer caps**: one read holding 20,000 pipelined ListEntities requests queued ~68 MB of
  replies before the 4 MB per-connection cap was checked (replies were corked until the whole read was
  handled). The cap now applies while corked (services/gateway/connection.py).
- **Fuzz, MQTT payloads**: a scanner state whose `state` or `mode` was a list or an object raised
  TypeError in the gateway instead of being rejected (services/gateway/bluetooth.py); a reader health
  payload with a battery key such as "²" raised ValueError in the aggregator (services/aggregator/inputs.py).
  Both are now rejected with a reason, like every other bad payload.
- **Late replies**: the reader never accepted a late reply (0 wrong values; the simulator's late
  replies arrive 0.3 s after a 0.2 s timeout, and a timeout drops the connection, which discards them).
- **Clock steps** (issue 13; `clock_steps`: reader and aggregator under libfaketime, one clock stepped
  +2 years, back, then -120 s): energy stopped counting after a step back (every reading "out of order",
  the future anchor persisted) and values froze for the size of the step. Readings now carry the reader's
  monotonic time; energy is integrated over monotonic intervals and freshness judged by age on the
  aggregator's monotonic clock (services/aggregator/energy.py, model.py, core.py).
- **SD card writes** (`persistence`): the state file was written on every reading, 480 times an hour at
  the default 30 s poll with 4 batteries; now once per `aggregator.save_interval` (5 min) when a counter
  changed, the retained device states (with the exact counter) being the second copy: 12 an hour.
- **Broker outage** (`broker_outage`): readings taken while the broker was away were lost. The reader
  keeps them (services/reader/outbox.py) and publishes them in order afterwards; the energy counted
  through the outage equals the simulator's truth, and the gateway serves values as unknown once no
  state arrived for `stale_after`.
- **Footprint, what each process loads** (issue 15, 2026-12-02, `run_tree`): every service imported
  importlib.metadata for its version string (~1.7 MB of heap, 50 ms) and paho's urllib.request (with
  http.client and email: 40 modules, ~2 MB), which paho uses only with PySocks installed. The version
  is now a constant (shared/version.py) and urllib.request loads on first use
  (shared/lazy_import.py): PSS of the run tree 52.1 -> 49.6-49.8 MB, largest RSS 38.3 -> 36.5 MB.
- **Footprint, preload against per-process RSS** (issue 15, 2026-12-02, `run_tree`, 15 s): a forked
  child maps every anonymous page the supervisor holds when it forks, so its RSS counts what it shares.
  Preloading every service before the first fork (kept): PSS 49.6 MB, RSS 29.8 / 29.8 / 30.8 MB
  (reader / aggregator / gateway), supervisor 36.5, 55 states after 3.25 s. Forking each service as
  soon as its own modules are in (reader first): RSS 24.9 / 25.4 / 30.7 MB and 3.01-3.12 s, but PSS
  53.7 MB (the supervisor's later imports copy pages the reader still shares: the interned-string
  table, refcounts). Not preloading the gateway (protobuf: ~3.2 MB of heap): RSS 25.7 / 25.7 / 32.2
  MB, PSS 51.3 MB. RSS <= 25 MB for every process and PSS <= 50 MB cannot both hold on CPython 3.11
  with aioesphomeapi's protobuf classes in the gateway.
- **First values after start** (issue 15): the first cycle asked every pack for the merged 5000 x 49
  read, which packs refuse (5034 is reserved): 4 refused reads before the first values. A pack is now
  asked only after it answered its blocks, and a restart takes the previous verdicts from the
  reader's retained health (services/reader/poller.py).
"""


def render(runs: list[dict[str, Any]]) -> str:
    out = [INTRO, FINDINGS]
    benches = [r for r in runs if r["kind"] == "bench"]
    if benches:
        latest = benches[-1]
        out.append(f"## Latest benchmark\n\n{latest['date']} on {machine_text(latest['machine'])}.\n")
        out.append(_latest_bench(latest["figures"]))
        out.append(_against_monolith(latest["figures"]))
    proofs = [r for r in runs if r["kind"] == "proof"]
    if proofs:
        out.append("## Proof runs (long forms)\n")
        latest_by_name: dict[str, dict[str, Any]] = {}
        for run in proofs:
            latest_by_name[run["name"]] = run
        for name, run in latest_by_name.items():
            out.append(f"### {name.replace('_', ' ')}\n\n{run['date']} on {machine_text(run['machine'])}.\n")
            out.append(_kv_table(run["figures"]))
    peers = [r for r in runs if r["kind"] == "peers"]
    if peers:
        out.append(
            "## Real peers\n\nFigures of the runs against real peers (`make compat`, `make test-ha`, "
            "`make test-docker`), the newest of each.\n"
        )
        latest_peer: dict[str, dict[str, Any]] = {}
        for run in peers:
            latest_peer[run["name"]] = run
        for name, run in latest_peer.items():
            out.append(f"### {name}\n\n{run['date']} on {machine_text(run['machine'])}.\n")
            out.append(_kv_table(run["figures"]))
    out.append("## History\n")
    if benches:
        out.append("### Benchmarks\n")
        header = ["date", "machine", *(title for title, _ in BENCH_COLUMNS)]
        rows = [
            [
                run["date"],
                f"{run['machine']['cpu']} ×{run['machine']['cores']}",
                *(_fmt(_get(run["figures"], key)) for _, key in BENCH_COLUMNS),
            ]
            for run in benches
        ]
        out.append(_table(header, rows))
    for name, columns in PROOF_COLUMNS.items():
        named = [r for r in proofs if r["name"] == name]
        if not named:
            continue
        out.append(f"### {name.replace('_', ' ')}\n")
        header = ["date", "machine", *(title for title, _ in columns)]
        rows = [
            [
                run["date"],
                f"{run['machine']['cpu']} ×{run['machine']['cores']}",
                *(_fmt(_get(run["figures"], key)) for _, key in columns),
            ]
            for run in named
        ]
        out.append(_table(header, rows))
    return "\n".join(out).rstrip() + "\n"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _kv_table(figures: dict[str, Any], prefix: str = "") -> str:
    rows = []

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            for sub, inner in value.items():
                walk(inner, f"{key}.{sub}" if key else sub)
        else:
            rows.append([key, _fmt(value)])

    for key, value in figures.items():
        walk(value, f"{prefix}{key}")
    return _table(["figure", "value"], rows)


def _against_monolith(figures: dict[str, Any]) -> str:
    """The footprint table: the old monolith's figures (the reference row) and this run's."""

    def get(key: str) -> Any:
        return _get(figures, key)

    def cpu(poll: str) -> str:
        total = get(f"resources.{poll}.cpu_s_per_min_total")
        own = get(f"resources.{poll}.own_cpu_s_per_min_total")
        sim = get(f"resources.{poll}.simulator_cpu_s_per_min")
        broker = get(f"resources.{poll}.broker_cpu_s_per_min")
        if total is None:
            return "–"
        return f"{_fmt(total)} (own {_fmt(own)}, simulator {_fmt(sim)}) + broker {_fmt(broker)}"

    tree = get("footprint.run_tree") or {}
    pss = tree.get("pss_mb") or {}
    rss = tree.get("rss_mb") or {}
    memory = (
        f"RSS {_fmt(sum(rss.values()))} MB, PSS {_fmt(tree.get('pss_mb_total'))} MB ({len(pss)} processes: "
        + ", ".join(f"{k} {_fmt(v)}" for k, v in pss.items())
        + ")"
        if pss
        else "–"
    )
    merged, blocks = get("reader.cycle_4_batteries.merged_s"), get("reader.mtu251.cycle_s")
    cycle = f"{_fmt(merged)} merged reads ({_fmt(blocks)} in blocks)" if merged is not None else _fmt(blocks)
    rows = [
        ["4-battery read cycle s", _fmt(MONOLITH["cycle_s"]), cycle],
        ["CPU s/min, poll 120 s", _fmt(MONOLITH["cpu_s_per_min_120s"]), cpu("poll_120s")],
        ["CPU s/min, poll 30 s", _fmt(MONOLITH["cpu_s_per_min_30s"]), cpu("poll_30s")],
        ["start-up CPU s", str(MONOLITH["startup_cpu_s"]), _fmt(tree.get("startup_cpu_s_total"))],
        ["start -> 55 states s", "–", _fmt(tree.get("start_to_55_states_s"))],
        ["memory", f"RSS {MONOLITH['rss_mb']} MB, PSS {MONOLITH['pss_mb']} MB (1 process)", memory],
        ["largest process RSS MB", _fmt(MONOLITH["rss_mb"]), _fmt(tree.get("rss_mb_max"))],
        *(
            [f"CPU µs per advert @{rate}/s", "–", _fmt(get(f"footprint.adverts.rate_{rate}.total_us"))]
            for rate in (10, 100, 1000)
        ),
    ]
    return (
        "**Against the old monolith** (its figures from issue 15, measured on the same simulator; its CPU "
        "includes ~0.4 s/min of the simulator's scanner, like our total)\n\n"
        + _table(["figure", "old monolith", "this run"], rows)
    )


def _latest_bench(figures: dict[str, Any]) -> str:
    parts = []
    for name in BENCHES:
        if name in figures:
            parts.append(f"**{name}**\n")
            parts.append(_kv_table(figures[name]))
    return "\n".join(parts)


# --- the benchmarks ---------------------------------------------------------------------------------------------


async def bench_reader_figures(quick: bool) -> dict[str, Any]:
    try:
        from tests.bench_reader import bench_reader  # the lead's benchmark
    except ImportError:  # pragma: no cover - tolerated: the reader benchmark is written separately
        return {"skipped": "tests/bench_reader.py not found"}
    figures: dict[str, Any] = await bench_reader(cycles=2 if quick else 10, old_cycles=1 if quick else 3)
    return figures


async def bench_bluez_figures(quick: bool) -> dict[str, Any]:
    """The reader on bleak's BlueZ backend + stand-in BlueZ next to the bleak-backend simulator."""
    import shutil

    if shutil.which("dbus-daemon") is None:
        return {"skipped": "dbus-daemon not installed"}
    from tests.bench_bluez import bench_bluez

    return await bench_bluez(cycles=2 if quick else 10, window=1.0 if quick else 3.0)


def _env_for_stack(extra: dict[str, str]) -> dict[str, str]:
    return {"RENOGY_LOG_LEVEL": "info", **extra}


async def _broker(tmp: Path) -> Any:
    from tests.support.brokers import MOSQUITTO, AmqttBroker, MosquittoBroker

    broker = MosquittoBroker(tmp) if MOSQUITTO else AmqttBroker()
    await broker.start()
    return broker


async def bench_latency(seconds: float) -> dict[str, Any]:
    """A reading -> the changed state at a subscribed aioesphomeapi client, through the whole stack.

    Two starting points: the reading's arrival at an MQTT subscriber (what the aggregator sees; the
    pipeline aggregator -> broker -> gateway -> client), and the reader's receipt of the battery's
    5042 block (adds reading the battery's remaining block and publishing).
    """
    import orjson

    from tests.proof.support import ClientWatch, ProofStack, TimedProbe, percentile

    with tempfile.TemporaryDirectory() as tmp_text:
        tmp = Path(tmp_text)
        broker = await _broker(tmp)
        # Physics sped up x10 so every reading (each 0.5 s) carries a new current to follow.
        env = _env_for_stack(
            {"RENOGY_POLL_INTERVAL": "0.5", "RENOGY_SIM_LATENCY_SCALE": "0.1", "RENOGY_SIM_SPEED": "10"}
        )
        stack = ProofStack(broker.url, tmp, env)
        try:
            probe = TimedProbe(broker.url, "renogy/bt2/+/battery/+/reading")
            async with probe:
                await stack.start()
                watch = ClientWatch(stack.api_port)
                watch.start()
                try:
                    await watch.wait_complete(60)
                    skip = len(probe.messages)
                    offset = time.time() - time.monotonic()
                    await asyncio.sleep(seconds)  # the measurement window
                finally:
                    await watch.stop()
        finally:
            await stack.stop()
            await broker.stop()
        from_mqtt: list[float] = []
        from_block: list[float] = []
        previous: dict[int, float] = {}
        states = [(t, o, v) for t, o, v in watch.states if o.endswith("_current") and v is not None]
        for message, arrived in list(zip(probe.messages, probe.arrivals, strict=True))[skip:]:
            reading = orjson.loads(message.payload)
            slave, current = reading["slave_id"], reading.get("current")
            if current is None or previous.get(slave) == current:
                continue  # the gateway only sends changes: an unchanged current has nothing to time
            previous[slave] = current
            name = f"battery_{slave}_current"
            for at, object_id, value in states:
                if (
                    object_id == name
                    and at >= arrived - 0.001
                    and abs(value - current) <= 1e-4 * max(1.0, abs(current))
                ):
                    from_mqtt.append(at - arrived)
                    from_block.append(at + offset - float(reading["ts"]))
                    break
    return {
        "samples": len(from_mqtt),
        "window_s": seconds,
        "p50_ms": round(percentile(from_mqtt, 50) * 1000, 1),
        "p99_ms": round(percentile(from_mqtt, 99) * 1000, 1),
        "max_ms": round(max(from_mqtt, default=float("nan")) * 1000, 1),
        "from_5042_block_p50_ms": round(percentile(from_block, 50) * 1000, 1),
        "from_5042_block_p99_ms": round(percentile(from_block, 99) * 1000, 1),
    }


async def bench_gateway_figures(quick: bool) -> dict[str, Any]:
    from tests.bench_gateway import bench_gateway

    if quick:
        return await bench_gateway(
            batteries=8, sync_clients=2, fanout_clients=4, documents=200, latency_samples=20
        )
    return await bench_gateway(
        batteries=64, sync_clients=8, fanout_clients=16, documents=3000, latency_samples=200
    )


async def bench_resources(window: float) -> dict[str, Any]:
    """Both poll intervals at once (separate brokers and stacks), each over the same fixed window."""
    from tests.bench_footprint import resources_at

    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        slow, default = await asyncio.gather(
            resources_at(120.0, window, Path(a)), resources_at(30.0, window, Path(b))
        )
    return {"poll_120s": slow, "poll_30s": default}


async def _bench_proxy(quick: bool) -> dict[str, Any]:
    """Active proxy: connect, GATT read round trip and notification latency through the whole stack."""
    from tests.bench_proxy import bench_proxy

    return await bench_proxy(reads=10 if quick else 50, notifications=40 if quick else 200)


async def _bench_airtime(quick: bool) -> dict[str, Any]:
    """Scanner duty cycle and pause during reads: cycle time and adverts forwarded per minute."""
    from tests.bench_airtime import bench_airtime

    return await bench_airtime(window=15.0 if quick else 60.0)


async def _bench_footprint(quick: bool) -> dict[str, Any]:
    from tests.bench_footprint import bench_footprint

    return await bench_footprint(quick)


async def _startup_once(tmp: Path) -> float:
    from tests.proof.support import ENTITIES, ClientWatch
    from tests.support.brokers import free_port

    api_port, broker_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("RENOGY_")} | {
        "RENOGY_API_PORT": str(api_port),
        "RENOGY_API_BIND": "127.0.0.1",
        "RENOGY_MDNS": "false",
        "RENOGY_STATE_DIR": str(tmp / "state"),
    }
    script = Path(sys.executable).parent / "renogy-proxy"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "services.cli"]
    log = (tmp / "run.log").open("ab")
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        *argv, "run", "--broker-port", str(broker_port), env=env, stdout=log, stderr=log
    )
    log.close()
    watch = ClientWatch(api_port)
    watch.start()
    try:
        async with asyncio.timeout(120):
            while True:
                latest = {object_id: value for _, object_id, value in watch.states}
                if len(latest) >= ENTITIES and all(v is not None for v in latest.values()):
                    return time.monotonic() - started
                await asyncio.sleep(0.02)  # polling the client's record of states
    finally:
        await watch.stop()
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        await process.wait()
    raise AssertionError("unreachable")  # pragma: no cover


async def bench_startup(runs: int) -> dict[str, Any]:
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            times.append(await _startup_once(Path(tmp)))
    return {
        "runs": runs,
        "median_s": round(statistics.median(times), 2),
        "max_s": round(max(times), 2),
        "all_s": [round(t, 2) for t in times],
    }


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    only = set(args.only.split(",")) if args.only else set(BENCHES)
    unknown = only - set(BENCHES)
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {sorted(unknown)}; choose from {', '.join(BENCHES)}")
    steps: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
        "reader": lambda: bench_reader_figures(args.quick),
        "bluez": lambda: bench_bluez_figures(args.quick),
        "proxy": lambda: _bench_proxy(args.quick),
        "airtime": lambda: _bench_airtime(args.quick),
        "latency": lambda: bench_latency(10.0 if args.quick else 60.0),
        "gateway": lambda: bench_gateway_figures(args.quick),
        "resources": lambda: bench_resources(args.window if args.window else (20.0 if args.quick else 240.0)),
        "footprint": lambda: _bench_footprint(args.quick),
        "startup": lambda: bench_startup(1 if args.quick else 3),
    }
    figures: dict[str, Any] = {}
    for name in BENCHES:
        if name not in only:
            continue
        started = time.monotonic()
        print(f"-- {name} ...", file=sys.stderr, flush=True)
        figures[name] = await steps[name]()
        print(f"-- {name}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        print(json.dumps({name: figures[name]}, indent=2, default=str), flush=True)
    if args.quick:
        figures["quick"] = True
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not figures to keep")
    parser.add_argument(
        "--window", type=float, default=0.0, help="resource measurement window in s (default 240)"
    )
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHES)}")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    figures = asyncio.run(run_all(args))
    print(f"machine: {machine_text(machine())}; {now_text()}")
    if not args.no_write and not args.quick:
        record("bench", "bench", figures)
        print(f"recorded in {MARKDOWN.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
