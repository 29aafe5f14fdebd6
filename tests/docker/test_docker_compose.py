"""`docker compose up` for real: the image, the compose file and the external-broker override on an engine.

Runs only with RENOGY_DOCKER_TEST=1 (``make test-docker``); ``make test`` shows it as skipped. Uses the
machine's Docker Engine when one answers, else installs Debian's docker.io and starts dockerd for the
test (tests/docker/engine.py); base images that cannot be pulled are debootstrap stand-ins
(tests/docker/bases.py). The deployable files are copied to a scratch directory, as a user's clone
with its own ``.env``, and run on the built-in simulator:

1. bundled Mosquitto: ``docker compose up -d --build``; every container healthy; ``renogy-proxy status
   --wait`` on the published port exits 0; a real aioesphomeapi client gets every state; ``restart
   reader``; SIGKILL of the gateway's main process is undone by the restart policy (measured);
   ``down`` + ``up`` keeps the energy counters and a provisioned API key; no anonymous volume; every
   container non-root with a read-only root filesystem; image size per layer.
2. an existing Mosquitto (on the host, with a password file) selected by ``COMPOSE_FILE`` in ``.env``
   as docs/deploy.md describes: ours is not started, everything works through the user's broker.

Each stage prints its time; containers, volumes, images and the daemon started here are removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from aioesphomeapi import SensorInfo, SensorState
from aioesphomeapi.client import APIClient
from aioesphomeapi.core import RequiresEncryptionAPIError

from services.gateway.keystore import KEY_FILE, new_key_text
from tests.deploy.support import COMPOSE, DOCKERFILE, ROOT, cli
from tests.docker import bases
from tests.docker.engine import Engine, EngineUnavailableError, engine, log
from tests.support.brokers import MOSQUITTO, free_port, wait_port
from tests.support.stack import api_snapshot

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("RENOGY_DOCKER_TEST") != "1",
        reason="docker test: run `make test-docker` (or set RENOGY_DOCKER_TEST=1)",
    ),
    pytest.mark.timeout(2400),
]

HERE = Path(__file__).resolve().parent
ENGINE_OVERRIDE = HERE / "compose.engine20.yml"
EXTERNAL_OVERRIDE = "deploy/compose.external-broker.yml"
# What a user's clone holds and compose needs (.dockerignore picks the build context from it).
DEPLOYABLE = (
    "docker-compose.yml",
    ".dockerignore",
    "pyproject.toml",
    "README.md",
    "deploy",
    "shared",
    "services",
)
PROXIES = ("reader", "aggregator", "gateway")
ENTITIES = 55
APP_LAYER_LIMIT_MB = 40.0
HEALTHY_TIMEOUT = 180.0
SIMULATOR_ENV = {
    "RENOGY_SIMULATE": "true",
    "RENOGY_POLL_INTERVAL": "2",
    "RENOGY_SIM_LATENCY_SCALE": "0.05",
    "RENOGY_API_BIND": "127.0.0.1",
    "RENOGY_MDNS": "false",
    "RENOGY_LOG_LEVEL": "info",
}


# --- bookkeeping ----------------------------------------------------------------------------------


@dataclass
class Stages:
    """Times of the named stages, printed as they finish and as a table at the end."""

    title: str
    times: dict[str, float] = field(default_factory=dict)
    figures: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # property checks: collected, asserted at the end

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        log(f"{self.title}: {name} ...")
        try:
            yield
        finally:
            self.times[name] = time.monotonic() - started
            log(f"{self.title}: {name}: {self.times[name]:.2f} s")

    def check(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)
            log(f"{self.title}: PROBLEM {problem}")

    def report(self) -> str:
        lines = [f"==== {self.title}: stage times"]
        lines += [f"  {name:<52} {seconds:7.2f} s" for name, seconds in self.times.items()]
        lines.append(f"  {'total':<52} {sum(self.times.values()):7.2f} s")
        lines += [f"  {name}: {value}" for name, value in self.figures.items()]
        return "\n".join(lines)


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)  # the poll interval of a condition with a deadline, not a guess


# --- the lab: engine, base images, builder image --------------------------------------------------


@dataclass
class Lab:
    engine: Engine
    image: str  # the test tag of renogy-bt-esphome-proxy
    builder: str
    stages: Stages
    images_before: set[str]


def _compose_images() -> list[str]:
    data = yaml.safe_load(COMPOSE.read_text())
    return [s["image"] for s in data["services"].values() if "build" not in s]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    stages = Stages("docker setup")
    with contextlib.ExitStack() as stack:
        try:
            box = stack.enter_context(engine())
        except EngineUnavailableError as exc:
            pytest.skip(f"no Docker Engine: {exc}")
        stack.callback(lambda: print(stages.report()))
        for note in box.notes:
            log(f"engine: {note}")
        images_before = set(box.out("images", "--all", "--quiet", "--no-trunc").split())
        stack.callback(_remove_new_images, box, images_before)
        stood_in = []
        with stages.stage("base images"):
            for image in [*bases.dockerfile_bases(DOCKERFILE.read_text()), *_compose_images()]:
                base = bases.ensure_image(box, image)
                stood_in.append(f"{base.tag}: {base.how}")
        for line in stood_in:
            log(f"base image {line}")
        stages.figures["base images"] = "; ".join(stood_in)
        served: dict[str, Path] = {}
        port = stack.enter_context(bases.serve_directories(served))
        tag = f"renogy-test-{os.getpid()}"
        with stages.stage("builder image (pip set-up)"):
            python_base = bases.dockerfile_bases(DOCKERFILE.read_text())[0]
            setup = bases.builder_image(box, python_base, f"{tag}-builder:latest", port, served)
        for note in setup.notes:
            log(f"builder: {note}")
        yield Lab(box, f"{tag}:latest", f"{tag}-builder:latest", stages, images_before)


def _remove_new_images(box: Engine, before: set[str]) -> None:
    """Every image that was not there when the test started (ours, stand-ins, build intermediates)."""
    if box.started_pid is not None:
        return  # the whole data root of the daemon we started goes
    for _ in range(3):  # children before parents: a few rounds until nothing new is left
        now = set(box.out("images", "--all", "--quiet", "--no-trunc").split())
        new = sorted(now - before)
        if not new:
            return
        box.run("rmi", "--force", *new, check=False, timeout=300)


# --- one compose project in a scratch copy of the repository --------------------------------------


@dataclass
class Project:
    lab: Lab
    directory: Path
    name: str
    env_file: dict[str, str]
    files: list[str] | None  # -f options; None: COMPOSE_FILE from .env decides, as for a user
    api_port: int

    def write_env(self) -> None:
        text = "".join(f"{k}={v}\n" for k, v in self.env_file.items())
        (self.directory / ".env").write_text(text)

    def compose(
        self, *args: str, timeout: float = 300.0, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        files = [a for f in self.files or [] for a in ("-f", f)]
        images = {"DOCKER_TEST_IMAGE": self.lab.image, "DOCKER_TEST_BUILDER_IMAGE": self.lab.builder}
        return self.lab.engine.run(
            "compose", "-p", self.name, *files, *args,
            cwd=self.directory, timeout=timeout, check=check, env={**images, **(env or {})},
        )  # fmt: skip

    def containers(self) -> dict[str, dict[str, Any]]:
        """docker inspect of each container of the project, by service."""
        ids = self.compose("ps", "--all", "--quiet").stdout.split()
        if not ids:
            return {}
        data = json.loads(self.lab.engine.out("inspect", *ids))
        return {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in data}

    def healthy(self, services: tuple[str, ...]) -> dict[str, dict[str, Any]] | None:
        containers = self.containers()
        for name in services:
            state = containers.get(name, {}).get("State", {})
            if not state.get("Running") or state.get("Health", {}).get("Status") != "healthy":
                return None
        return containers

    def wait_healthy(
        self, services: tuple[str, ...], timeout: float = HEALTHY_TIMEOUT
    ) -> dict[str, dict[str, Any]]:
        try:
            result: dict[str, dict[str, Any]] = wait_until(
                lambda: self.healthy(services), timeout, f"{self.name}: {services} healthy"
            )
        except AssertionError:
            print(self.describe())
            raise
        return result

    def describe(self) -> str:
        out = [self.compose("ps", "--all", check=False).stdout]
        for name, container in self.containers().items():
            health = container["State"].get("Health", {})
            last = (health.get("Log") or [{}])[-1].get("Output", "")
            out.append(
                f"---- {name}: {container['State']['Status']} health={health.get('Status')} {last[-600:]}"
            )
        out.append(self.compose("logs", "--no-color", "--tail", "60", check=False).stdout[-12000:])
        return "\n".join(out)


@contextlib.contextmanager
def scratch_clone() -> Iterator[Path]:
    """The deployable files of the working tree in a directory of their own (a user's clone)."""
    with tempfile.TemporaryDirectory(prefix="renogy-compose-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # mosquitto (uid 1883) reads its bind-mounted config from here
        for name in DEPLOYABLE:
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(source, root / name)
        yield root


@contextlib.contextmanager
def project(
    lab: Lab, directory: Path, suffix: str, env: dict[str, str], files: list[str] | None
) -> Iterator[Project]:
    api_port = free_port()
    box = Project(
        lab, directory, f"renogy-test-{os.getpid()}-{suffix}", {**SIMULATOR_ENV, **env}, files, api_port
    )
    box.env_file["RENOGY_API_PORT"] = str(api_port)
    box.write_env()
    try:
        yield box
    except BaseException:
        print(box.describe())
        raise
    finally:
        box.compose("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False)


def volumes(lab: Lab) -> set[str]:
    return set(lab.engine.out("volume", "ls", "--quiet").split())


def volume_path(lab: Lab, name: str) -> Path:
    return Path(json.loads(lab.engine.out("volume", "inspect", name))[0]["Mountpoint"])


def anonymous(names: set[str]) -> set[str]:
    return {n for n in names if re.fullmatch(r"[0-9a-f]{64}", n)}


# --- the ESPHome API as Home Assistant sees it ----------------------------------------------------


async def _collect(client: APIClient) -> dict[str, float | None]:
    """One connection: list the sensors and wait for a state of each."""
    await client.connect(login=True)
    entities, _ = await client.list_entities_services()
    sensors = {e.key: e.object_id for e in entities if isinstance(e, SensorInfo)}
    states: dict[str, float | None] = {}
    complete = asyncio.Event()

    def on_state(state: Any) -> None:
        if isinstance(state, SensorState) and state.key in sensors:
            states[sensors[state.key]] = None if state.missing_state else float(state.state)
            if len(states) == len(sensors) >= ENTITIES:
                complete.set()

    client.subscribe_states(on_state)
    await complete.wait()
    return states


async def _snapshot(port: int, noise_psk: str | None, timeout: float) -> dict[str, float | None]:
    """object_id -> value of every sensor, through a real client (encrypted when a key is given)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        client = APIClient("127.0.0.1", port, None, noise_psk=noise_psk, client_info="docker-test")
        try:
            async with asyncio.timeout(max(1.0, deadline - time.monotonic())):
                return await _collect(client)
        except (Exception, TimeoutError) as exc:  # not up yet: again until the deadline
            last = exc
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 2)
        await asyncio.sleep(0.2)  # between connection attempts, bounded by the deadline
    raise AssertionError(f"no {ENTITIES} sensor states on port {port}: {last!r}")


def snapshot(port: int, noise_psk: str | None = None, timeout: float = 60.0) -> dict[str, float | None]:
    return asyncio.run(_snapshot(port, noise_psk, timeout))


def energies(states: dict[str, float | None]) -> dict[str, float]:
    out = {k: v for k, v in states.items() if k.endswith(("_energy_in", "_energy_out")) and v is not None}
    assert len(out) >= 10, f"energy counters missing: {sorted(out)}"
    return out


async def _provision(port: int, key: str) -> bool:
    client = APIClient("127.0.0.1", port, None, client_info="docker-test")
    await client.connect(login=True)
    try:
        return bool(await client.noise_encryption_set_key(key.encode()))
    finally:
        await client.disconnect()


async def _plaintext_refused(port: int) -> bool:
    client = APIClient("127.0.0.1", port, None, client_info="docker-test")
    try:
        await client.connect(login=True)
    except RequiresEncryptionAPIError:
        return True
    await client.disconnect()
    return False


def status(project: Project, url: str, extra: dict[str, str] | None = None, wait: float = 120.0) -> int:
    env = {"RENOGY_MQTT_URL": url, **(extra or {})}
    done = cli("status", "--wait", str(int(wait)), env=env, timeout=wait + 60)
    log(f"{project.name}: renogy-proxy status --wait -> {done.code}\n{done.out}")
    assert done.code == 0, done.out + done.err
    return done.code


# --- checks on what runs --------------------------------------------------------------------------


def check_lockdown(stages: Stages, containers: dict[str, dict[str, Any]]) -> None:
    for name, container in containers.items():
        host = container["HostConfig"]
        stages.check(host.get("ReadonlyRootfs") is True, f"{name}: root filesystem is writable")
        stages.check(host.get("CapDrop") in (["ALL"], ["all"]), f"{name}: capabilities not dropped")
        stages.check(
            any(o.startswith("no-new-privileges") for o in host.get("SecurityOpt") or []),
            f"{name}: no-new-privileges not set",
        )
        root = psutil.Process(container["State"]["Pid"])
        uids = {p.pid: p.uids().real for p in [root, *root.children(recursive=True)]}
        stages.check(all(uids.values()), f"{name}: runs as root ({uids})")
        stages.figures[f"{name} user"] = (
            f"{container['Config']['User'] or 'image default'} uids={sorted(set(uids.values()))}"
        )


def check_image(stages: Stages, lab: Lab) -> None:
    engine = lab.engine
    base_name = bases.dockerfile_bases(DOCKERFILE.read_text())[-1]  # the runtime stage's base
    image, base = json.loads(engine.out("image", "inspect", lab.image, base_name))

    def history(name: str) -> list[dict[str, Any]]:
        out = engine.out("history", "--no-trunc", "--human=false", "--format", "{{json .}}", name)
        return [json.loads(line) for line in out.splitlines()]

    ours = history(lab.image)
    own = ours[: len(ours) - len(history(base_name))]  # newest first: the rows above the base's
    app_bytes = image["Size"] - base["Size"]
    stages.figures["image size"] = f"{image['Size'] / 1e6:.1f} MB on {base_name} {base['Size'] / 1e6:.1f} MB"
    stages.figures["app layers"] = f"{app_bytes / 1e6:.1f} MB (limit {APP_LAYER_LIMIT_MB:.0f} MB)"
    for index, layer in enumerate(own):
        command = re.sub(r"\s+", " ", layer["CreatedBy"].replace("/bin/sh -c #(nop) ", ""))[:100]
        stages.figures[f"layer {index:2d} {int(layer['Size']) / 1e6:8.2f} MB"] = command
    stages.check(
        app_bytes <= APP_LAYER_LIMIT_MB * 1e6,
        f"app layers {app_bytes / 1e6:.1f} MB > {APP_LAYER_LIMIT_MB} MB",
    )
    probe = (
        "import importlib.metadata as m, importlib.util as u;"
        "names = sorted(d.metadata['Name'].lower() for d in m.distributions());"
        "print(','.join(names));"
        "print(','.join(n for n in ('pip', 'setuptools', 'wheel', 'amqtt') if u.find_spec(n)))"
    )
    done = engine.run("run", "--rm", "--read-only", "--entrypoint", "python", lab.image, "-c", probe)
    distributions, importable = [*done.stdout.splitlines(), "", ""][:2]
    stages.figures["distributions in the venv"] = distributions
    stages.check(not importable, f"the runtime venv carries {importable}")
    for name in ("reader", "aggregator", "gateway", "status", "healthcheck"):
        ran = engine.run("run", "--rm", "--read-only", lab.image, name, "--help", check=False)
        stages.check(
            ran.returncode == 0, f"renogy-proxy {name} --help fails in the image: {ran.stderr[-300:]}"
        )


def main_pid(container: dict[str, Any]) -> int:
    """The service's own process: the child of docker-init (init: true), else PID 1 of the container."""
    root = psutil.Process(container["State"]["Pid"])
    children = root.children()
    return int(children[0].pid if children else root.pid)


def kill_gateway(stages: Stages, proj: Project) -> None:
    """SIGKILL the gateway's main process; the restart policy brings it back (measured)."""
    gateway = proj.containers()["gateway"]
    restarts = gateway["RestartCount"]
    pid = main_pid(gateway)
    killed, killed_wall = time.monotonic(), time.time()
    with stages.stage("SIGKILL gateway main process -> restarted"):
        os.kill(pid, signal.SIGKILL)

        def restarted() -> bool:
            now = proj.containers()["gateway"]
            return bool(now["RestartCount"] > restarts and now["State"]["Running"])

        wait_until(restarted, 60, "gateway restarted by its restart policy", interval=0.05)
        back = time.monotonic() - killed
    with stages.stage("  ... gateway serving the API and healthy again"):
        snapshot(proj.api_port, timeout=60)
        serving = time.monotonic() - killed
        proj.wait_healthy(("gateway",))
        healthy = time.monotonic() - killed
    died = proj.lab.engine.out(
        "events", "--since", f"{killed_wall - 1:.3f}", "--until", f"{time.time():.3f}",
        "--filter", f"container={gateway['Id']}", "--filter", "event=die", "--format", "{{json .}}",
    ).splitlines()  # fmt: skip
    exit_codes = [json.loads(line)["Actor"]["Attributes"]["exitCode"] for line in died]
    assert exit_codes == ["137"], f"the gateway container died with {exit_codes}, expected one SIGKILL"
    stages.figures["gateway after SIGKILL"] = (
        f"exit 137; running again after {back:.2f} s, API serving after {serving:.2f} s, healthy after {healthy:.2f} s"
    )


# --- the tests ------------------------------------------------------------------------------------


def test_compose_with_the_bundled_mosquitto(lab: Lab) -> None:
    stages = Stages("bundled mosquitto")
    broker_port = free_port()
    volumes_before = volumes(lab)
    try:
        with (
            scratch_clone() as clone,
            project(
                lab,
                clone,
                "bundled",
                {"RENOGY_MQTT_PORT": str(broker_port)},
                ["docker-compose.yml", str(ENGINE_OVERRIDE)],
            ) as proj,
        ):
            url = f"mqtt://127.0.0.1:{broker_port}"
            with stages.stage("build (docker compose build)"):
                proj.compose("build", timeout=1200)
            stages.figures["build time"] = (
                f"{stages.times['build (docker compose build)']:.1f} s (classic builder)"
            )
            # Engine 25+ builds with BuildKit, which first pulls the frontend a "# syntax=" line names.
            with stages.stage("build with BuildKit, no registry"):
                proj.compose(
                    "build", "reader", env={"DOCKER_BUILDKIT": "1", "DOCKER_TEST_IMAGE": f"{lab.image}-bk"}
                )
            with stages.stage("docker compose up -d --build"):
                proj.compose("up", "--detach", "--build", timeout=600)
            with stages.stage("all containers healthy"):
                containers = proj.wait_healthy(("mosquitto", *PROXIES))
            with stages.stage("renogy-proxy status --wait (published port)"):
                status(proj, url)
            with stages.stage(f"aioesphomeapi: {ENTITIES} states"):
                first = asyncio.run(api_snapshot(proj.api_port, expect_entities=ENTITIES, timeout=60))
                assert len(first.states) >= ENTITIES and len(first.states) == len(first.entities)

            with stages.stage("docker compose restart reader -> healthy"):
                started = containers["reader"]["State"]["StartedAt"]
                proj.compose("restart", "reader")
                wait_until(
                    lambda: (c := proj.healthy(("reader",))) and c["reader"]["State"]["StartedAt"] != started,
                    HEALTHY_TIMEOUT,
                    "restarted reader healthy",
                )
            kill_gateway(stages, proj)

            key = new_key_text()
            with stages.stage("provision an API key (as Home Assistant does)"):
                assert asyncio.run(_provision(proj.api_port, key))
                before = energies(snapshot(proj.api_port, noise_psk=key))
                assert max(before.values()) > 0, f"no energy counted yet: {before}"
                stages.figures["energy before down"] = (
                    f"{len(before)} counters, max {max(before.values()):.4f}"
                )

            with stages.stage("docker compose down"):
                proj.compose("down", "--timeout", "30")
                assert proj.containers() == {}
            with stages.stage("docker compose up -d (again) -> healthy"):
                proj.compose("up", "--detach", timeout=600)
                containers = proj.wait_healthy(("mosquitto", *PROXIES))
            with stages.stage("key and energy counters survived"):
                assert asyncio.run(_plaintext_refused(proj.api_port)), "the provisioned key was lost"
                after = energies(snapshot(proj.api_port, noise_psk=key))
                went_back = {k: (v, after.get(k)) for k, v in before.items() if (after.get(k) or 0.0) < v}
                assert not went_back, f"energy counters went back after down/up: {went_back}"
                assert (volume_path(lab, f"{proj.name}_gateway-state") / KEY_FILE).read_text().strip() == key
                counters = volume_path(lab, f"{proj.name}_aggregator-state") / "aggregator-default.json"
                assert json.loads(counters.read_text()), f"no {counters.name} in the aggregator-state volume"
                status(proj, url)

            new_volumes = volumes(lab) - volumes_before
            stages.figures["volumes after up/down/up"] = ", ".join(sorted(new_volumes))
            stages.check(not anonymous(new_volumes), f"anonymous volumes: {sorted(anonymous(new_volumes))}")
            stages.check(
                new_volumes
                == {f"{proj.name}_{v}" for v in ("mosquitto-data", "aggregator-state", "gateway-state")},
                f"unexpected volumes {sorted(new_volumes)}",
            )
            with stages.stage("lockdown and image checks"):
                check_lockdown(stages, containers)
                logs = proj.compose("logs", "--no-color", "mosquitto").stdout
                stages.check(
                    "Read-only file system" not in logs, "mosquitto's entrypoint fails to chown at start"
                )
                check_image(stages, lab)
            with stages.stage("docker compose down --volumes"):
                proj.compose("down", "--volumes", "--timeout", "30")
        left = volumes(lab) - volumes_before
        assert not left, f"volumes left behind: {sorted(left)}"
    finally:
        print(stages.report())
    assert not stages.problems, "\n".join(stages.problems)


@contextlib.contextmanager
def host_mosquitto(user: str, password: str) -> Iterator[int]:
    """A Mosquitto on the host (127.0.0.1, a free port) that wants a user name and password."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto binary not installed (apt-get install mosquitto)")
    with tempfile.TemporaryDirectory(prefix="renogy-host-mosquitto-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # started as root, mosquitto drops to its own user
        passwd = root / "passwd"
        subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), user, password], check=True, timeout=30)
        passwd.chmod(0o644)
        port = free_port()
        conf = root / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\nlog_dest stdout\n"
        )
        process = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            asyncio.run(wait_port(port))
            yield port
        finally:
            process.terminate()
            process.wait(10)


def test_compose_with_an_existing_broker(lab: Lab) -> None:
    stages = Stages("existing broker")
    volumes_before = volumes(lab)
    user, password = "renogy", secrets.token_urlsafe(12)
    try:
        with host_mosquitto(user, password) as port, scratch_clone() as clone:
            url = f"mqtt://127.0.0.1:{port}"
            env = {
                # As docs/deploy.md "I already run Mosquitto" says, plus the engine override of the test.
                "COMPOSE_FILE": f"docker-compose.yml:{EXTERNAL_OVERRIDE}:{ENGINE_OVERRIDE}",
                "RENOGY_MQTT_URL": url,
                "RENOGY_MQTT_USERNAME": user,
                "RENOGY_MQTT_PASSWORD": password,
                "RENOGY_MQTT_PORT": "1",  # must not matter: ours is not started
            }
            with project(lab, clone, "external", env, None) as proj:
                with stages.stage("docker compose up -d --build"):
                    proj.compose("up", "--detach", "--build", timeout=1200)
                with stages.stage("reader, aggregator, gateway healthy"):
                    containers = proj.wait_healthy(PROXIES)
                assert sorted(containers) == sorted(PROXIES), (
                    f"started {sorted(containers)}: ours must not run"
                )
                with stages.stage("renogy-proxy status --wait (the existing broker)"):
                    status(proj, url, {"RENOGY_MQTT_USERNAME": user, "RENOGY_MQTT_PASSWORD": password})
                refused = cli("status", "--timeout", "5", env={"RENOGY_MQTT_URL": url}, timeout=60)
                assert refused.code != 0, "the existing broker let an anonymous client in"
                with stages.stage(f"aioesphomeapi: {ENTITIES} states"):
                    states = snapshot(proj.api_port)
                    assert len(states) >= ENTITIES
                with stages.stage("docker compose down --volumes"):
                    proj.compose("down", "--volumes", "--timeout", "30")
        left = volumes(lab) - volumes_before
        assert not left, f"volumes left behind: {sorted(left)}"
    finally:
        print(stages.report())
