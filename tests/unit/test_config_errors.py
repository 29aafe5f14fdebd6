"""Bad configuration input: every entry point that reads the configuration exits 2 with one line that names
the key, never a traceback (issue 13 item 6). The real CLI in a subprocess, as an operator runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.config import ConfigError, load_config
from shared.mqtt_url import parse_url

ROOT = Path(__file__).resolve().parents[2]
# Every command that loads the configuration; `run` loads it in the supervisor before any child starts.
COMMANDS = (
    ("reader", "--simulate"),
    ("aggregator",),
    ("gateway",),
    ("run",),
    ("status",),
    ("config", "check"),
)
READER_COMMANDS = (("reader", "--simulate"), ("run",), ("config", "check"))


@dataclass(frozen=True)
class Case:
    key: str  # what the one error line must name
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    toml: str | None = None  # written to c.toml and passed with --config
    commands: tuple[tuple[str, ...], ...] = COMMANDS


def _files(tmp: Path) -> None:
    (tmp / "adir").mkdir()
    (tmp / "afile").write_text("not a certificate\n")
    (tmp / "latin1.toml").write_bytes(b'log_level = "info"\n# caf\xe9\n')


CASES: dict[str, Case] = {
    "toml not utf-8": Case("--config", args=("--config", "{tmp}/latin1.toml")),
    "--config a directory": Case("--config", args=("--config", "{tmp}/adir")),
    "RENOGY_CONFIG a directory": Case("RENOGY_CONFIG", env=(("RENOGY_CONFIG", "{tmp}/adir"),)),
    "mqtt.url http:// (env)": Case("mqtt.url", env=(("RENOGY_MQTT_URL", "http://x"),)),
    "mqtt.url http:// (flag)": Case("mqtt.url", args=("--mqtt", "http://x")),
    "mqtt.url port 99999 (file)": Case("mqtt.url", toml='[mqtt]\nurl = "mqtt://127.0.0.1:99999"\n'),
    "mqtt.url without host": Case("mqtt.url", env=(("RENOGY_MQTT_URL", "mqtt://:1883"),)),
    "state_dir a file (env)": Case("state_dir", env=(("RENOGY_STATE_DIR", "{tmp}/afile"),)),
    "state_dir under a file (flag)": Case("state_dir", args=("--state-dir", "{tmp}/afile/state")),
    "mqtt.ca_file missing": Case(
        "mqtt.ca_file", toml='[mqtt]\nurl = "mqtts://127.0.0.1:1"\nca_file = "{tmp}/missing.pem"\n'
    ),
    "mqtt.ca_file not a certificate": Case(
        "mqtt.ca_file",
        env=(("RENOGY_MQTT_URL", "mqtts://127.0.0.1:1"), ("RENOGY_MQTT_CA_FILE", "{tmp}/afile")),
    ),
    "mqtt.cert_file missing": Case("mqtt.cert_file", env=(("RENOGY_MQTT_CERT_FILE", "{tmp}/missing.crt"),)),
    "mqtt.key_file without cert_file": Case("mqtt.key_file", env=(("RENOGY_MQTT_KEY_FILE", "{tmp}/afile"),)),
    "reader.capture_file a directory": Case(
        "reader.capture_file", args=("--capture", "{tmp}/adir"), commands=READER_COMMANDS
    ),
}


def _spawn(command: tuple[str, ...], case: Case, tmp: Path) -> subprocess.Popen[str]:
    args = [*command, *(arg.format(tmp=tmp) for arg in case.args)]
    if case.toml is not None:
        path = tmp / "c.toml"
        path.write_text(case.toml.format(tmp=tmp))
        args += ["--config", str(path)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENOGY_")}
    env["XDG_STATE_HOME"] = str(tmp / "xdg")  # old code would start services: keep them out of $HOME
    env.update({name: value.format(tmp=tmp) for name, value in case.env})
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_one_line_naming_the_key(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    _files(tmp_path)
    # All commands at once: each fails at start, so this takes one interpreter start-up, not six.
    procs = {" ".join(command): _spawn(command, case, tmp_path) for command in case.commands}
    problems = []
    for command, proc in procs.items():
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            problems.append(f"{command}: still running after 30 s, stderr ends {err[-300:]!r}")
            continue
        lines = err.strip().splitlines()
        if command == "config check":  # `error: ...` lines, then the count
            errors = [line for line in lines if line.startswith("error: ")]
            ok = len(errors) == 1 and lines[-1].startswith("1 problem(s)")
        else:
            errors = lines
            ok = len(lines) == 1 and lines[0].startswith("configuration error: ")
        if proc.returncode != 2 or not ok or case.key not in " ".join(errors) or "Traceback" in err:
            problems.append(f"{command}: exit {proc.returncode}, stderr {err[-400:]!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://x", "unsupported MQTT URL scheme 'http'"),
        ("mqtt://h:0", "bad port"),
        ("mqtt://h:65536", "bad port"),
        ("mqtt://h:abc", "bad port"),
        ("mqtts://", "no host"),
    ],
)
def test_parse_url_rejects_with_a_reason(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_url(url)


def test_url_errors_never_show_the_password() -> None:
    from shared.mqtt_url import redact  # new here: the cases above also run on old code

    with pytest.raises(ConfigError) as caught:
        load_config(environ={"RENOGY_MQTT_URL": "mqtt://user:hunter2@broker:99999"})
    assert "hunter2" not in str(caught.value) and "mqtt://user:***@broker:99999" in str(caught.value)
    assert redact("mqtt://broker:1883") == "mqtt://broker:1883"


def test_good_paths_pass(tmp_path: Path) -> None:
    """A state_dir that does not exist yet is fine (the services make it); so is a capture file to come."""
    config = load_config(
        environ={
            "RENOGY_STATE_DIR": str(tmp_path / "new" / "state"),
            "RENOGY_CAPTURE_FILE": str(tmp_path / "c.jsonl"),
        }
    )
    assert config.state_dir == tmp_path / "new" / "state"
