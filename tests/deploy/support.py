"""Helpers of the deployment tests: repository paths, the CLI as a subprocess, tool lookup."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
MOSQUITTO_CONF = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
UNITS = sorted((ROOT / "deploy" / "systemd").glob("*.service"))
VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str | None:
    """A command-line tool from the venv or PATH."""
    local = VENV_BIN / name
    return str(local) if local.exists() else shutil.which(name)


def compose() -> dict[str, Any]:
    with COMPOSE.open() as handle:
        data = yaml.safe_load(handle)
    assert isinstance(data, dict)
    return data


@dataclass
class Run:
    code: int
    out: str
    err: str


def cli(*args: str, env: Mapping[str, str] | None = None, timeout: float = 60) -> Run:
    """`renogy-proxy ARGS` as a separate process, as users and docker healthchecks run it."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RENOGY_")}
    environ.update(env or {})
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
    )
    return Run(done.returncode, done.stdout, done.stderr)
