"""A forked service gets its configuration from the supervisor (issue 15): load_config runs in the
supervisor before the fork, never in the child, where the objects it touches would copy shared pages.

The supervisor side runs in a process of its own (``python -m tests.test_supervisor_config``), as
`renogy-proxy run` would: a fork of pytest would inherit its capture and logging handlers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import shared.config
from services import supervisor
from services.supervisor import EXIT_CANNOT_START, Child, _fork
from shared.config import Config

RESULT = "RENOGY_TEST_RESULT"  # not a setting: where the probe service writes what it was given


async def run(config: Config) -> int:
    """The probe service's entry point (the `run(config) -> exit code` of a real service)."""
    text = f"{config.mqtt.url} {config.reader.poll_interval}"
    await asyncio.to_thread(Path(os.environ[RESULT]).write_text, text)
    return 0


async def _supervise_probe(tmp: Path, env: dict[str, str]) -> dict[str, Any]:
    calls = tmp / "load_config.pids"
    real = shared.config.load_config

    def load_config(*args: Any, **kwargs: Any) -> Config:
        with calls.open("a") as out:
            out.write(f"{os.getpid()}\n")
        return real(*args, **kwargs)

    supervisor.SERVICE_MODULES["probe"] = "tests.test_supervisor_config"
    vars(supervisor)["load_config"] = load_config  # the name the supervisor calls (from shared.config)
    child = Child("probe", [], {**os.environ, **env, RESULT: str(tmp / "result")}, fork=True)
    code = await asyncio.wait_for(_fork(child).wait(), 30)
    result = tmp / "result"
    return {
        "code": code,
        "result": result.read_text() if result.exists() else "",
        "load_config_pids": [int(line) for line in calls.read_text().split()] if calls.exists() else [],
        "supervisor": os.getpid(),
    }


def _probe(tmp_path: Path, env: dict[str, str]) -> tuple[dict[str, Any], str]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.test_supervisor_config", str(tmp_path), json.dumps(env)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    found: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    assert set(found["load_config_pids"]) <= {found["supervisor"]}, f"load_config ran in the child: {found}"
    return found, done.stderr


def test_a_forked_service_runs_on_the_config_its_environment_gives(tmp_path: Path) -> None:
    env = {"RENOGY_MQTT_URL": "mqtt://127.0.0.1:1999", "RENOGY_POLL_INTERVAL": "77"}
    found, stderr = _probe(tmp_path, env | {"RENOGY_STATE_DIR": str(tmp_path)})
    assert found["code"] == 0, stderr
    assert found["result"] == "mqtt://127.0.0.1:1999 77.0"


def test_a_forked_service_with_a_bad_setting_exits_2_with_the_message(tmp_path: Path) -> None:
    found, stderr = _probe(tmp_path, {"RENOGY_POLL_INTERVAL": "often", "RENOGY_STATE_DIR": str(tmp_path)})
    assert found["code"] == EXIT_CANNOT_START and not found["result"], stderr
    assert "configuration error:" in stderr and "often" in stderr, stderr


if __name__ == "__main__":
    figures = asyncio.run(_supervise_probe(Path(sys.argv[1]), json.loads(sys.argv[2])))
    print(json.dumps(figures))
