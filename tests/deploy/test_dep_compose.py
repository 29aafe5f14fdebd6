"""docker-compose.yml and deploy/Dockerfile: schema-valid, consistent with each other and with the CLI."""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from services.cli import build_parser
from shared.config import load_config, settings
from tests.deploy.support import COMPOSE, DOCKERFILE, MOSQUITTO_CONF, ROOT, compose, tool

PROXY_SERVICES = ("reader", "aggregator", "gateway")
EXTERNAL_BROKER = ROOT / "deploy" / "compose.external-broker.yml"
ENV_EXAMPLE = ROOT / "deploy" / "env.example"
LOCK = ROOT / "deploy" / "requirements.lock"
LOCK_SCRIPT = ROOT / "deploy" / "lock.sh"
# The eclipse-mosquitto:2 image declares these as VOLUMEs: anything not mounted becomes an anonymous volume.
MOSQUITTO_IMAGE_VOLUMES = ("/mosquitto/data", "/mosquitto/log")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class InterpolationError(ValueError):
    """``${VAR:?message}`` with VAR unset: compose refuses the file with this message."""


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


def _interpolate(value: str, environ: Mapping[str, str]) -> str:
    """Compose's interpolation with the given environment: ``$$``, ``$VAR``, ``${VAR}``, and ``${VAR:-x}``,
    ``${VAR-x}``, ``${VAR:?msg}``, ``${VAR?msg}``, ``${VAR:+x}``, ``${VAR+x}`` with nesting in ``x``."""
    out: list[str] = []
    i = 0
    while i < len(value):
        if value[i] != "$":
            out.append(value[i])
            i += 1
        elif value.startswith("$$", i):
            out.append("$")
            i += 2
        elif value.startswith("${", i):
            depth, j = 1, i + 2
            while depth:
                if j >= len(value):
                    raise InterpolationError(f"unclosed ${{ in {value!r}")
                if value.startswith("${", j):
                    depth, j = depth + 1, j + 2
                    continue
                depth -= value[j] == "}"
                j += 1
            out.append(_expand(value[i + 2 : j - 1], environ))
            i = j
        elif match := _NAME.match(value, i + 1):
            out.append(environ.get(match[0], ""))
            i = match.end()
        else:
            out.append("$")
            i += 1
    return "".join(out)


def _expand(body: str, environ: Mapping[str, str]) -> str:
    match = re.fullmatch(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", body, re.S)
    if match is None:
        raise InterpolationError(f"invalid interpolation ${{{body}}}")
    value, op, arg = environ.get(match["name"]), match["op"], match["arg"] or ""
    present = bool(value) if op and op.startswith(":") else value is not None
    if op is None:
        return value or ""
    if op.endswith("-"):
        return value if present and value is not None else _interpolate(arg, environ)
    if op.endswith("?"):
        if not present or value is None:
            raise InterpolationError(f"{match['name']}: {_interpolate(arg, environ)}")
        return value
    return _interpolate(arg, environ) if present else ""


def _merge(base: Any, override: Any) -> Any:
    """Compose's merge of an override file, for the mappings and scalars our files use."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {k: _merge(base[k], v) if k in base else v for k, v in {**base, **override}.items()}
    return override


def _with_external_broker() -> dict[str, Any]:
    merged = _merge(compose(), yaml.safe_load(EXTERNAL_BROKER.read_text()))
    assert isinstance(merged, dict)
    return merged


def _published(service: dict[str, Any], environ: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(host address, host port, container port) of each short-syntax port entry."""
    out = []
    for entry in service.get("ports", []):
        host_ip, host_port, container_port = _interpolate(entry, environ).split(":")
        out.append((host_ip, host_port, container_port))
    return out


def _service_env(service: dict[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, str]:
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


@pytest.mark.parametrize(
    ("environ", "host_ip", "host_port", "network_url", "gateway_url"),
    [
        ({}, "127.0.0.1", "1883", "mqtt://mosquitto:1883", "mqtt://127.0.0.1:1883"),
        # A Pi whose own Mosquitto has 1883: ours moves, and the host-network gateway moves with it.
        ({"RENOGY_MQTT_PORT": "1884"}, "127.0.0.1", "1884", "mqtt://mosquitto:1883", "mqtt://127.0.0.1:1884"),
        ({"RENOGY_MQTT_BIND": "0.0.0.0"}, "0.0.0.0", "1883", "mqtt://mosquitto:1883", "mqtt://127.0.0.1:1883"),
        # One URL in .env reaches every service: none is left on the bundled broker.
        ({"RENOGY_MQTT_URL": "mqtts://broker.lan:8883"}, "127.0.0.1", "1883", "mqtts://broker.lan:8883",
         "mqtts://broker.lan:8883"),
    ],
)  # fmt: skip
def test_broker_url_and_published_port_come_from_env(
    environ: dict[str, str], host_ip: str, host_port: str, network_url: str, gateway_url: str
) -> None:
    services = compose()["services"]
    gateway = services["gateway"]
    assert gateway["network_mode"] == "host"
    (published,) = _published(services["mosquitto"], environ)
    listener = re.search(r"^listener (\d+)$", MOSQUITTO_CONF.read_text(), re.M)
    assert listener and published == (host_ip, host_port, listener[1])
    assert _service_env(gateway, environ)["RENOGY_MQTT_URL"] == gateway_url
    for name in ("reader", "aggregator"):
        assert _service_env(services[name], environ)["RENOGY_MQTT_URL"] == network_url
        assert "network_mode" not in services[name]
    assert _dockerfile_env()["RENOGY_MQTT_URL"] == f"mqtt://mosquitto:{listener[1]}"
    conf_mount = services["mosquitto"]["volumes"][0].split(":")
    assert (ROOT / conf_mount[0]).resolve() == MOSQUITTO_CONF and conf_mount[1].endswith("mosquitto.conf")


def test_no_setting_is_pinned_where_env_cannot_change_it() -> None:
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            assert "${" in str(value), f"{name}: {key}={value} cannot be changed from .env"
        for entry in service.get("ports", []):
            assert entry.count("${") == 2, f"{name}: published port {entry} needs address and port from .env"


def test_existing_broker_override_starts_no_mosquitto_and_points_every_service_at_it() -> None:
    assert EXTERNAL_BROKER.exists(), "deploy/compose.external-broker.yml: use an existing Mosquitto"
    result = _check_schema(EXTERNAL_BROKER)
    assert result.returncode == 0, result.stdout + result.stderr
    services = _with_external_broker()["services"]
    assert services["mosquitto"]["profiles"] == ["bundled-broker"], "ours must not start by default"
    url = "mqtt://127.0.0.1:1884"
    for name in PROXY_SERVICES:
        service = services[name]
        # Compose accepts a dependency that is not started only when it is not required.
        assert service["depends_on"]["mosquitto"] == {"condition": "service_healthy", "required": False}
        # 127.0.0.1 must mean the Pi for all three (a broker on the host listens on loopback).
        assert service["network_mode"] == "host", name
        env = _service_env(service, {"RENOGY_MQTT_URL": url, "RENOGY_MQTT_PORT": "1999"})
        assert env["RENOGY_MQTT_URL"] == url
        with pytest.raises(InterpolationError, match="RENOGY_MQTT_URL"):
            _service_env(service, {})
    docs = (ROOT / "docs" / "deploy.md").read_text()
    selector = "COMPOSE_FILE=docker-compose.yml:deploy/compose.external-broker.yml"
    assert "## I already run Mosquitto" in docs and selector in docs
    example = ENV_EXAMPLE.read_text()
    assert f"# {selector}" in example
    for line in example.splitlines():
        name = line.lstrip("# ").partition("=")[0]
        if line.lstrip("# ").startswith("RENOGY_") and "=" in line:
            assert name in _compose_variables() or name in {i.env for i in settings()}, name


def _compose_variables() -> set[str]:
    text = COMPOSE.read_text() + EXTERNAL_BROKER.read_text()
    return set(re.findall(r"\$\{([A-Z0-9_]+)", text))


def test_every_container_is_locked_down() -> None:
    services = compose()["services"]
    for name, service in services.items():
        assert service.get("read_only") is True, f"{name}: root filesystem must be read-only"
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
    # The image's own mosquitto user (uid 1883 owns /mosquitto/data); as non-root the entrypoint skips
    # its chown -R /mosquitto, which failed on the read-only mounts at every start.
    assert services["mosquitto"]["user"] == "1883:1883"
    assert "USER renogy" in _dockerfile()


def test_no_anonymous_volumes() -> None:
    mosquitto = compose()["services"]["mosquitto"]
    tmpfs = {t.split(":")[0] for t in mosquitto.get("tmpfs", [])}
    mounted = {v.split(":")[1] for v in mosquitto["volumes"]} | tmpfs
    for path in MOSQUITTO_IMAGE_VOLUMES:
        assert path in mounted, f"{path} (a VOLUME of the image) would get a new anonymous volume at each up"
    assert not re.search(r"^VOLUME\b", _dockerfile(), re.M)


def _lock() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of deploy/requirements.lock."""
    entries: dict[str, tuple[str, list[str]]] = {}
    text = LOCK.read_text().replace("\\\n", " ")
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        requirement, *options = line.split()
        name, _, version = requirement.partition("==")
        assert version, f"{requirement}: not pinned"
        hashes = [o.removeprefix("--hash=") for o in options if o.startswith("--hash=sha256:")]
        entries[canonicalize_name(name)] = (version, hashes)
    return entries


def test_dockerfile_needs_no_frontend_image() -> None:
    # A "# syntax=" parser directive makes BuildKit pull that frontend image first: offline builds fail.
    for line in _dockerfile().splitlines():
        if not line.startswith("#"):
            break
        assert not re.match(r"#\s*syntax\s*=", line, re.I), line


def test_dependencies_are_locked_with_hashes_and_installed_from_the_lock() -> None:
    assert LOCK.exists(), "deploy/requirements.lock (deploy/lock.sh)"
    lock = _lock()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for text in project["project"]["dependencies"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name == "amqtt":  # the embedded broker: compose runs Mosquitto
            assert name not in lock, "amqtt is not used by any compose service"
            continue
        assert name in lock, f"{name} is not in deploy/requirements.lock: run deploy/lock.sh"
        version, hashes = lock[name]
        assert requirement.specifier.contains(version, prereleases=True), f"{name}=={version} vs {text}"
    for text in project["build-system"]["requires"]:  # the image builds our wheel without the network
        requirement = Requirement(text)
        assert requirement.specifier.contains(lock[canonicalize_name(requirement.name)][0])
    for name, (version, hashes) in lock.items():
        assert hashes, f"{name}=={version} has no --hash"
    assert "deploy/lock.sh" in LOCK.read_text(), "the lock names the command that refreshes it"
    assert LOCK_SCRIPT.exists() and LOCK_SCRIPT.stat().st_mode & 0o111
    dockerfile = _dockerfile()
    assert re.search(r"--require-hashes\b.*-r\s+\S*requirements\.lock", dockerfile.replace("\\\n", " "))
    assert "COPY deploy/requirements.lock" in dockerfile


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
