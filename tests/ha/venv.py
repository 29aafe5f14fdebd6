"""A Home Assistant virtualenv for the real-HA test, built on first use and cached outside the repository.

Layout: ``${XDG_CACHE_HOME:-~/.cache}/renogy-bt-proxy/ha-<version>/`` holds the venv; ``.complete``
inside it (JSON: version, requirements, build seconds) marks a finished build, and
``ha-<version>.lock`` next to it serialises concurrent builders (a second test run waits for the first).

Home Assistant cannot install requirements at run time here (hass runs with ``--skip-pip``), so
everything the started integrations need is installed up front, pinned from the wheel itself: its
``homeassistant/package_constraints.txt`` plus the ``requirements`` of every
``homeassistant/components/<domain>/manifest.json`` that HA loads with the test's configuration
(the configured domains, HA's always-loaded core and default integrations read from the wheel's
``bootstrap.py``, the ``esphome`` config entry, and all their dependencies and after-dependencies).

The interpreter is pyenv's Python 3.13.0. Home Assistant 2026.2 requires 3.13.2, so it is installed
with ``--ignore-requires-python`` and started through ``tests/ha/launcher.py``; if that install fails
the builder falls back to 2025.4.4, the newest release that installs on 3.13.0 as it is.
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HA_VERSION = "2026.2.3"
FALLBACK_VERSION = "2025.4.4"  # the newest release whose wheel accepts Python 3.13.0 as it is
PYTHON_VERSION = "3.13.0"

# Domains named in the test's configuration.yaml (see tests/ha/hass.py) plus the config entry it adds.
CONFIGURED_DOMAINS = (
    "http",
    "api",
    "auth",
    "onboarding",
    "config",
    "websocket_api",
    "logger",
    "network",
    "zeroconf",
    "bluetooth",
    "sensor",
    "esphome",
)

STAMP = ".complete"
PIP_TIMEOUT = 1800.0


class HaUnavailableError(RuntimeError):
    """No usable interpreter for Home Assistant: the test skips with this reason."""


@dataclass(frozen=True)
class HaEnv:
    version: str
    root: Path
    build_seconds: float  # of the build that made it (from the stamp)
    built_now: bool
    fallback_reason: str | None = None

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def source(self, module: str) -> str:
        """Text of an installed HA module, e.g. ``components/esphome/manager.py`` ("" if absent)."""
        for path in self.root.glob(f"lib/python*/site-packages/homeassistant/{module}"):
            return path.read_text(errors="replace")
        return ""

    @property
    def provisions_keys(self) -> bool:
        """Whether this HA sends NoiseEncryptionSetKey to a keyless node that supports encryption."""
        return "noise_encryption_set_key" in self.source("components/esphome/manager.py")


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "renogy-bt-proxy"


def find_python() -> Path:
    """pyenv's Python 3.13.0 (or ``RENOGY_HA_PYTHON``); HaUnavailableError when there is none."""
    override = os.environ.get("RENOGY_HA_PYTHON")
    if override:
        path = Path(override)
        if not path.exists():
            raise HaUnavailableError(f"RENOGY_HA_PYTHON={override} does not exist")
        return path
    pyenv = shutil.which("pyenv") or str(Path.home() / ".pyenv" / "bin" / "pyenv")
    try:
        out = subprocess.run(
            [pyenv, "prefix", PYTHON_VERSION], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise HaUnavailableError(
            f"Home Assistant needs Python {PYTHON_VERSION} from pyenv (`pyenv prefix {PYTHON_VERSION}` failed: "
            f"{exc}); install it with `pyenv install {PYTHON_VERSION}` or set RENOGY_HA_PYTHON"
        ) from None
    python = Path(out.stdout.strip()) / "bin" / "python3"
    if not python.exists():
        raise HaUnavailableError(f"pyenv prefix {PYTHON_VERSION} has no {python}")
    return python


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(cmd: list[str], log: Callable[[str], None], timeout: float = PIP_TIMEOUT) -> None:
    log("$ " + " ".join(cmd[:8]) + (" ..." if len(cmd) > 8 else ""))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise subprocess.CalledProcessError(proc.returncode, cmd[:4], output=tail)


def _literal_set(source: str, name: str) -> set[str]:
    for node in ast.parse(source).body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == name
        ):
            return {str(x) for x in ast.literal_eval(node.value)}
    raise LookupError(f"{name} not found in homeassistant/bootstrap.py")


def wheel_requirements(wheel: Path, domains: Iterable[str]) -> tuple[list[str], str, list[str]]:
    """(requirements, package_constraints.txt text, loaded domains) read from the HA wheel itself."""
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        constraints = zf.read("homeassistant/package_constraints.txt").decode()
        bootstrap = zf.read("homeassistant/bootstrap.py").decode()
        start = {
            *domains,
            *_literal_set(bootstrap, "CORE_INTEGRATIONS"),
            *_literal_set(bootstrap, "DEFAULT_INTEGRATIONS"),
        }
        manifests: dict[str, dict[str, Any]] = {}
        todo = sorted(start)
        while todo:
            domain = todo.pop()
            path = f"homeassistant/components/{domain}/manifest.json"
            if domain in manifests or path not in names:
                continue
            manifest = json.loads(zf.read(path))
            manifests[domain] = manifest
            for key in ("dependencies", "after_dependencies"):
                todo.extend(str(d) for d in manifest.get(key, []) or [])
    requirements = sorted(
        {str(r) for manifest in manifests.values() for r in manifest.get("requirements", []) or []}
    )
    return requirements, constraints, sorted(manifests)


def _build(version: str, python: Path, root: Path, log: Callable[[str], None]) -> float:
    started = time.monotonic()
    if root.exists():
        shutil.rmtree(root)  # an unfinished earlier build
    _run([str(python), "-m", "venv", str(root)], log, timeout=300)
    pip = [str(root / "bin" / "python"), "-m", "pip"]
    _run([*pip, "install", "--quiet", "--upgrade", "pip"], log)
    with tempfile.TemporaryDirectory(prefix="ha-wheel-") as tmp:
        _run(
            [
                *pip,
                "download",
                "--quiet",
                "--no-deps",
                "--ignore-requires-python",
                "-d",
                tmp,
                f"homeassistant=={version}",
            ],
            log,
        )
        wheel = next(Path(tmp).glob("homeassistant-*.whl"))
        requirements, constraints, domains = wheel_requirements(wheel, CONFIGURED_DOMAINS)
        constraints_file = root / "package_constraints.txt"
        constraints_file.write_text(constraints)
        log(f"HA {version}: {len(domains)} integrations, {len(requirements)} integration requirements")
        _run(
            [
                *pip,
                "install",
                "--quiet",
                "--ignore-requires-python",
                "-c",
                str(constraints_file),
                str(wheel),
                *requirements,
            ],
            log,
        )
    seconds = time.monotonic() - started
    (root / STAMP).write_text(
        json.dumps({"version": version, "requirements": requirements, "domains": domains, "seconds": seconds})
    )
    return seconds


def ensure_version(version: str, python: Path, log: Callable[[str], None]) -> HaEnv:
    root = cache_root() / f"ha-{version}"
    with _locked(cache_root() / f"ha-{version}.lock"):
        stamp = root / STAMP
        if stamp.exists():
            seconds = float(json.loads(stamp.read_text()).get("seconds", 0.0))
            return HaEnv(version, root, seconds, built_now=False)
        log(f"building the Home Assistant {version} venv in {root} (first use; cached afterwards)")
        try:
            seconds = _build(version, python, root, log)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)  # leave no half-built venv in the cache
            raise
        log(f"Home Assistant {version} venv built in {seconds:.0f} s")
        return HaEnv(version, root, seconds, built_now=True)


def ensure_ha_env(log: Callable[[str], None] = print) -> HaEnv:
    """The cached HA venv, built if needed; falls back to FALLBACK_VERSION when HA_VERSION will not install."""
    python = find_python()
    version = os.environ.get("RENOGY_HA_VERSION", HA_VERSION)
    try:
        return ensure_version(version, python, log)
    except (subprocess.SubprocessError, OSError, StopIteration) as exc:
        detail = getattr(exc, "output", "") or ""
        reason = (
            f"installing homeassistant=={version} failed ({exc}); fell back to {FALLBACK_VERSION}\n{detail}"
        )
        log(reason)
        if version == FALLBACK_VERSION:
            raise
    env = ensure_version(FALLBACK_VERSION, python, log)
    return HaEnv(env.version, env.root, env.build_seconds, env.built_now, fallback_reason=reason)
