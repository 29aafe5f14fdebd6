"""The gateway against real aioesphomeapi releases from 21.x (HA 2024.1) to 46.x, plaintext and Noise.

One stack on the simulator (reader, aggregator, plaintext gateway) plus a second gateway on the same
broker configured with an API encryption key serves every release; each release runs
``client_probe.py`` in its own cached venv (tests/compat/venvs.py) against both gateways at once.
The result table is printed at the end of the module (``pytest -s``) and written to
``<cache>/renogy-bt-proxy/compat/matrix.txt``; ``python -m tests.compat table`` prints the last one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aioesphomeapi.client import APIClient
from aioesphomeapi.model import SensorInfo, SensorState

from tests.compat.venvs import (
    RELEASES,
    ClientRelease,
    ClientVenv,
    VenvUnavailable,
    client_env,
    ensure_venv,
    table_path,
)
from tests.support.brokers import MOSQUITTO, AmqttBroker, MosquittoBroker
from tests.support.stack import Stack

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(600)]

PROBE = Path(__file__).with_name("client_probe.py")
EXPECT_SENSORS = 55
EXPECT_SUB_DEVICES = 5  # four batteries and the bank, for releases whose model knows sub-devices
# Clients up to 29.x wait 30 s for ConnectResponse; the probe's deadline lets that error surface.
PROBE_TIMEOUT = 40.0
ADVERT_WAIT = 10.0
READY_TIMEOUT = 90.0


@dataclass
class Gateways:
    plaintext_port: int
    noise_port: int
    noise_psk: str
    stacks: tuple[Stack, ...]

    def logs(self) -> str:
        return "\n".join(stack.logs() for stack in self.stacks)


@dataclass(frozen=True, slots=True)
class Row:
    release: ClientRelease
    plaintext: dict[str, Any]
    noise: dict[str, Any]


@dataclass
class Matrix:
    builds: asyncio.Task[dict[str, ClientVenv | VenvUnavailable]]
    rows: list[Row] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    build_seconds: float | None = None

    async def venv(self, version: str) -> ClientVenv | VenvUnavailable:
        return (await self.builds)[version]


def _build_all() -> dict[str, ClientVenv | VenvUnavailable]:
    def one(release: ClientRelease) -> ClientVenv | VenvUnavailable:
        try:
            return ensure_venv(release.version)
        except VenvUnavailable as exc:
            return exc

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip((r.version for r in RELEASES), pool.map(one, RELEASES), strict=True))


async def _serve_once(client: APIClient) -> None:
    await client.connect(login=True)
    entities, _ = await client.list_entities_services()
    keys = {e.key for e in entities if isinstance(e, SensorInfo)}
    if len(keys) < EXPECT_SENSORS:
        raise AssertionError(f"{len(keys)} of {EXPECT_SENSORS} sensors listed")
    seen: set[int] = set()
    states, adverts = asyncio.Event(), asyncio.Event()

    def on_state(state: Any) -> None:
        if isinstance(state, SensorState) and state.key in keys:
            seen.add(state.key)
            if len(seen) == len(keys):
                states.set()

    client.subscribe_states(on_state)
    client.subscribe_bluetooth_le_raw_advertisements(lambda _batch: adverts.set())
    await states.wait()
    await adverts.wait()


async def _serving(port: int, psk: str | None, deadline: float) -> None:
    """Poll with the project's own client until the gateway lists 55 sensors, has their states and
    forwards advertisements, so a probe's failure is the client release's and not a slow start."""
    last: BaseException | None = None
    while time.monotonic() < deadline:
        client = APIClient("127.0.0.1", port, None, noise_psk=psk, client_info="compat-ready")
        try:
            async with asyncio.timeout(max(0.5, min(10.0, deadline - time.monotonic()))):
                await _serve_once(client)
            return
        except (Exception, TimeoutError) as exc:  # not up yet or relisting: try again until the deadline
            last = exc
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 2)
        await asyncio.sleep(0.2)  # between attempts; the deadline bounds the whole wait
    raise TimeoutError(f"gateway on port {port} not serving within {READY_TIMEOUT:.0f} s: {last!r}")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def matrix() -> AsyncIterator[Matrix]:
    """The venvs are built (or found) in threads while the gateways start; the table is the teardown."""

    async def build() -> dict[str, ClientVenv | VenvUnavailable]:
        venvs = await asyncio.to_thread(_build_all)
        result.build_seconds = time.monotonic() - result.started
        return venvs

    result = Matrix(asyncio.create_task(build()))
    try:
        yield result
    finally:
        with contextlib.suppress(BaseException):
            await result.builds  # a thread cannot be cancelled; let a build finish and stamp its venv
    if result.rows:
        text = render(result.rows, time.monotonic() - result.started, result.build_seconds)
        table_path().parent.mkdir(parents=True, exist_ok=True)
        table_path().write_text(text + "\n")
        table_path().with_suffix(".json").write_text(
            json.dumps(
                [
                    {"version": r.release.version, "plaintext": r.plaintext, "noise": r.noise}
                    for r in result.rows
                ],
                indent=1,
            )
        )
        print(f"\n{text}\n(written to {table_path()})")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateways(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateways]:
    workdir = tmp_path_factory.mktemp("compat")
    broker: MosquittoBroker | AmqttBroker = MosquittoBroker(workdir) if MOSQUITTO else AmqttBroker()
    await broker.start()
    psk = base64.b64encode(os.urandom(32)).decode()
    plain = Stack(broker.url, workdir / "plain")
    # A second gateway only (same broker, same reader and aggregator), with a key and its own instance.
    noise = Stack(
        broker.url,
        workdir / "noise",
        env_overrides={"RENOGY_API_KEY": psk, "RENOGY_GATEWAY_INSTANCE": "compat-noise"},
    )
    gws = Gateways(plain.api_port, noise.api_port, psk, (plain, noise))
    try:
        await plain.start()
        await noise["gateway"].start()
        deadline = time.monotonic() + READY_TIMEOUT
        try:
            await asyncio.gather(
                _serving(plain.api_port, None, deadline), _serving(noise.api_port, psk, deadline)
            )
        except BaseException:
            print(gws.logs())
            raise
        yield gws
    finally:
        await noise.stop()
        await plain.stop()
        await broker.stop()


async def _probe(python: Path, port: int, psk: str | None) -> dict[str, Any]:
    cmd = [str(python), "-I", str(PROBE), "127.0.0.1", str(port), "--timeout", str(PROBE_TIMEOUT)]
    cmd += ["--advert-wait", str(ADVERT_WAIT)]
    if psk:
        cmd += ["--psk", psk]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=client_env(),
        cwd=python.parent,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), PROBE_TIMEOUT + 20)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return {"error": f"probe process did not exit within {PROBE_TIMEOUT + 20:.0f} s"}
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        body: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = err.decode(errors="replace").strip().splitlines()[-6:]
        return {"error": f"probe exited {proc.returncode} without a result: " + " | ".join(tail)}
    return body


def _problems(label: str, version: str, probe: dict[str, Any]) -> Iterator[str]:
    checks = (
        (probe.get("error") is None, f"error {probe.get('error')}"),
        (probe.get("version") == version, f"client reports version {probe.get('version')}"),
        (probe.get("connected") is True, "did not connect"),
        (probe.get("sensors") == EXPECT_SENSORS, f"{probe.get('sensors')} sensors listed"),
        (probe.get("states") == EXPECT_SENSORS, f"{probe.get('states')} states received"),
        (
            probe.get("unique_names") is True,
            f"names not unique by {probe.get('unique_by')}: {probe.get('duplicate_names')}",
        ),
        (probe.get("unique_object_ids") is True, "object ids not unique"),
        (probe.get("unique_keys") is True, "entity keys not unique"),
        (
            probe.get("sub_devices") in (None, EXPECT_SUB_DEVICES),
            f"{probe.get('sub_devices')} sub-devices in DeviceInfo",
        ),
        ((probe.get("adverts") or 0) > 0, "no advertisement batch received"),
        (probe.get("disconnect") == "clean", f"disconnect: {probe.get('disconnect')}"),
    )
    for ok, what in checks:
        if not ok:
            yield f"{label}: {what}"
            if "error" in what:
                return  # the rest follows from the error


def _pair(row: Row, key: str, fmt: Any = str) -> str:
    values = [probe.get(key) for probe in (row.plaintext, row.noise)]
    shown = ["-" if v is None else fmt(v) for v in values]
    return shown[0] if shown[0] == shown[1] and key == "api_version" else " / ".join(shown)


def _status(label: str, row: Row, probe: dict[str, Any]) -> str:
    return "FAIL" if list(_problems(label, row.release.version, probe)) else "ok"


def render(rows: list[Row], seconds: float, build_seconds: float | None) -> str:
    """The matrix as an aligned text table (values are plaintext / noise) with each failure below it."""
    header = ["version", "HA release", "API", "plaintext", "noise", "sensors", "states", "unique names"]
    header += ["adverts", "time s"]
    table = [header]
    notes: list[str] = []
    for row in sorted(rows, key=lambda r: [int(p) for p in r.release.version.split(".")]):
        table.append(
            [
                row.release.version,
                row.release.ha_release,
                _pair(row, "api_version"),
                _status("plaintext", row, row.plaintext),
                _status("noise", row, row.noise),
                _pair(row, "sensors"),
                _pair(row, "states"),
                _pair(row, "unique_names", lambda v: "yes" if v else "no"),
                _pair(row, "adverts"),
                _pair(row, "elapsed", lambda v: f"{v:.1f}"),
            ]
        )
        for label, probe in (("plaintext", row.plaintext), ("noise", row.noise)):
            notes += [f"  {row.release.version} {p}" for p in _problems(label, row.release.version, probe)]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = [
        "| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) + " |"
        for line in table
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    build = "" if build_seconds is None else f"; venvs ready after {build_seconds:.1f} s"
    lines.append(f"(values: plaintext / noise; matrix {seconds:.1f} s{build})")
    if notes:
        lines += ["failures:", *notes]
    return "\n".join(lines)


@pytest.mark.parametrize("release", RELEASES, ids=[r.version for r in RELEASES])
async def test_client_release(release: ClientRelease, matrix: Matrix, gateways: Gateways) -> None:
    venv = await matrix.venv(release.version)
    if isinstance(venv, VenvUnavailable):
        pytest.skip(f"no venv for aioesphomeapi {release.version}: {venv}")
    plain, noise = await asyncio.gather(
        _probe(venv.python, gateways.plaintext_port, None),
        _probe(venv.python, gateways.noise_port, gateways.noise_psk),
    )
    matrix.rows.append(Row(release, plain, noise))
    print(f"\naioesphomeapi {release.version}: plaintext {json.dumps(plain)}\n  noise {json.dumps(noise)}")
    problems = [*_problems("plaintext", release.version, plain), *_problems("noise", release.version, noise)]
    assert not problems, f"aioesphomeapi {release.version} (HA {release.ha_release}):\n  " + "\n  ".join(
        problems
    )
