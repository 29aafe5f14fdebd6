"""docker-compose.yml and deploy/Dockerfile: schema-valid, consistent with each other and with the CLI."""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.cli import build_parser
from shared.config import load_config, settings
from tests.deploy.support import COMPOSE, DOCKERFILE, MOSQUITTO_CONF, ROOT, compose, tool

PROXY_SERVICES = ("reader", "aggregator", "gateway")
_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?::-(?P<default>[^}]*))?\}")


def _check_schema(path: Path) -> subprocess.CompletedProcess[str]:
    checker = tool("check-jsonschema")
    if checker is None:
        pytest.skip("check-jsonschema is not installed (pip install check-jsonschema)")
    return subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def _interpolate(value: str, environ: dict[str, str]) -> str:
    """Compose's ${VAR:-default} as docker compose would expand it with the given environment."""
    return _INTERPOLATION.sub(lambda m: environ.get(m["name"]) or (m["default"] or ""), value)


def _service_env(service: dict[str, Any], environ: dict[str, str] | None = None) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment must be a mapping (merged from the shared anchor)"
    return {str(k): _interpolate(str(v), environ or {}) for k, v in env.items()}


def _dockerfile() -> str:
    return DOCKERFILE.read_text()


def _dockerfile_env() -> dict[str, str]:
    text = _dockerfile().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for token in shlex.split(line[4:]):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def test_compose_file_is_valid_against_the_compose_spec() -> None:
    result = _check_schema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_catches_a_broken_file(tmp_path: Path) -> None:
    broken = compose()
    broken["services"]["reader"]["healthcheck"]["interval"] = 30
    broken["services"]["gateway"]["bogus_key"] = True
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = _check_schema(path)
    assert result.returncode != 0
    assert "bogus_key" in result.stdout + result.stderr


def test_second_reader_snippet_in_docs_is_valid_and_extends_the_reader(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    match = re.search(r"```yaml\n# docker-compose.override.yml\n(.*?)```", text, re.S)
    assert match, "docs/deploy.md must show the second reader as a docker-compose.override.yml block"
    override = tmp_path / "docker-compose.override.yml"
    override.write_text(match[1])
    result = _check_schema(override)
    assert result.returncode == 0, result.stdout + result.stderr
    (service,) = yaml.safe_load(match[1])["services"].values()
    assert service["extends"] == {"file": "docker-compose.yml", "service": "reader"}
    env = {str(k): str(v) for k, v in service["environment"].items()}
    assert env["RENOGY_READER_INSTANCE"] != "default" and env["RENOGY_ADAPTER"] != "hci0"
    merged = {**_service_env(compose()["services"]["reader"]), **env}
    config = load_config(environ=merged)
    assert config.reader.instance == env["RENOGY_READER_INSTANCE"]


def test_every_image_service_is_built_by_our_dockerfile_and_runs_a_real_subcommand() -> None:
    services = compose()["services"]
    subcommands = set(next(a for a in build_parser()._actions if a.dest == "command").choices)
    images = {services[name]["image"] for name in PROXY_SERVICES}
    assert len(images) == 1, f"one image for all three services, got {images}"
    for name in PROXY_SERVICES:
        service = services[name]
        assert service["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}
        assert service["command"] == [name] and name in subcommands
        assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).exists()
    assert 'ENTRYPOINT ["renogy-proxy"]' in _dockerfile()
    tag = re.search(r"docker build -f deploy/Dockerfile -t (\S+) \.", _dockerfile())
    assert tag and images == {f"{tag[1]}:latest"}, "the Dockerfile's build line and compose name one image"
    for name in PROXY_SERVICES:
        assert services[name]["env_file"] == [{"path": ".env", "required": False}]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["renogy-proxy"] == "services.cli:main"


def test_healthchecks_mean_something() -> None:
    services = compose()["services"]
    subcommands = set(next(a for a in build_parser()._actions if a.dest == "command").choices)
    for name in PROXY_SERVICES:
        test = services[name]["healthcheck"]["test"]
        assert test == ["CMD", "renogy-proxy", "healthcheck", name]
        assert "healthcheck" in subcommands
    broker_check = services["mosquitto"]["healthcheck"]["test"]
    assert broker_check[1] == "mosquitto_sub" and "$$SYS/broker/uptime" in broker_check
    for name, service in services.items():
        flat = " ".join(service["healthcheck"]["test"])
        assert not re.search(r"\b(nc|netcat|curl|wget)\b", flat), f"{name}: an open port is not health"
        assert service["restart"] == "unless-stopped", name
        options = service["logging"]["options"]
        assert options["max-size"] and options["max-file"], f"{name}: log size must be capped"


def test_state_paths_and_volumes_agree_with_the_image() -> None:
    services = compose()["services"]
    state_dir = _dockerfile_env()["RENOGY_STATE_DIR"]
    assert re.search(rf"install -d -o renogy -g renogy -m 0750 {re.escape(state_dir)}\b", _dockerfile())
    for name in ("aggregator", "gateway"):
        targets = [v.split(":")[1] for v in services[name]["volumes"]]
        assert state_dir in targets, f"{name} must keep {state_dir} on a volume"
    named = {
        v.split(":")[0]
        for s in services.values()
        for v in s.get("volumes", [])
        if not v.startswith(("/", "."))
    }
    assert named <= set(compose()["volumes"])
    assert "USER renogy" in _dockerfile()


def test_reader_gets_dbus_read_only_and_no_privileges() -> None:
    reader = compose()["services"]["reader"]
    assert "/run/dbus:/run/dbus:ro" in reader["volumes"]
    assert "network_mode" not in reader, "the adapter reset goes through D-Bus; no host network needed"
    assert reader["cap_drop"] == ["ALL"] and "cap_add" not in reader
    assert "privileged" not in reader
    assert "no-new-privileges:true" in reader["security_opt"]


def test_gateway_on_host_network_reaches_the_loopback_broker_port() -> None:
    services = compose()["services"]
    gateway = services["gateway"]
    assert gateway["network_mode"] == "host"
    (published,) = services["mosquitto"]["ports"]
    host_ip, host_port, container_port = published.split(":")
    assert host_ip == "127.0.0.1", "the anonymous broker must not be published on the LAN by default"
    listener = re.search(r"^listener (\d+)$", MOSQUITTO_CONF.read_text(), re.M)
    assert listener and listener[1] == container_port
    assert _service_env(gateway)["RENOGY_MQTT_URL"] == f"mqtt://127.0.0.1:{host_port}"
    for name in ("reader", "aggregator"):
        assert _service_env(services[name])["RENOGY_MQTT_URL"] == f"mqtt://mosquitto:{container_port}"
    assert _dockerfile_env()["RENOGY_MQTT_URL"] == f"mqtt://mosquitto:{container_port}"
    conf_mount = services["mosquitto"]["volumes"][0].split(":")
    assert (ROOT / conf_mount[0]).resolve() == MOSQUITTO_CONF and conf_mount[1].endswith("mosquitto.conf")


def test_environment_names_are_settings_and_defaults_load() -> None:
    known = {info.env for info in settings()}
    services = compose()["services"]
    for name in PROXY_SERVICES:
        env = _service_env(services[name])
        unknown = set(env) - known - {"RENOGY_CONFIG"}
        assert not unknown, f"{name}: {unknown} are not settings (shared/config.py)"
        load_config(environ=env)
        load_config(environ=_service_env(services[name], {"RENOGY_SIMULATE": "true"}))
    poll = {_service_env(services[n])["RENOGY_POLL_INTERVAL"] for n in PROXY_SERVICES}
    assert len(poll) == 1, "reader and aggregator must share the poll interval (staleness horizon)"


def test_docker_context_contains_what_the_dockerfile_copies() -> None:
    ignore = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    included = {line[1:] for line in ignore if line.startswith("!")}
    assert ignore[0] == "*"
    for line in _dockerfile().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            *sources, _ = line.split()[1:]
            for source in sources:
                assert (ROOT / source).exists(), source
                assert source.rstrip("/") in included, f"{source} is excluded by .dockerignore"
    assert "--only-binary=:all:" in _dockerfile(), "nothing may need compiling on the Pi"
