"""Configuration: precedence, validation errors that name the key, secrets masked."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import ConfigError, effective, env_for, load_config, settings
from shared.noise_key import generate_key


def test_defaults() -> None:
    config = load_config(environ={})
    assert config.reader.batteries == [48, 49, 50, 51] and config.reader.poll_interval == 30.0
    assert config.gateway.api_port == 6053 and config.mqtt.url == "mqtt://127.0.0.1:1883"
    assert config.aggregator_max_gap == 90.0 and config.aggregator_stale_after == 90.0


def test_precedence_file_env_command_line(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[reader]\npoll_interval = 10\nbatteries = [48]\n[mqtt]\nurl = "mqtt://file:1"\n')
    config = load_config(path, environ={"RENOGY_POLL_INTERVAL": "20"}, overrides={"mqtt.url": "mqtt://cli:2"})
    assert config.reader.poll_interval == 20.0 and config.reader.batteries == [48]
    assert config.mqtt.url == "mqtt://cli:2"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"RENOGY_POLL_INTERVAL": "soon"},
            "reader.poll_interval (environment RENOGY_POLL_INTERVAL): expected a number",
        ),
        ({"RENOGY_BATTERIES": "48,x"}, "reader.batteries"),
        ({"RENOGY_BATTERIES": "48,48"}, "duplicate slave ids"),
        ({"RENOGY_API_PORT": "70000"}, "gateway.api_port"),
        ({"RENOGY_NAME": "Renogy Proxy"}, "gateway.name"),
        ({"RENOGY_API_KEY": "short"}, "gateway.api_key"),
        ({"RENOGY_BT2_ADDRESS": "nope"}, "reader.bt2_address"),
        ({"RENOGY_PROFILE": "everything"}, "aggregator.profile"),
        ({"RENOGY_SIM_FAULT_RATE": "2"}, "simulator.fault_rate"),
    ],
)
def test_errors_name_the_key(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(environ=environ)


def test_unknown_keys_in_the_file_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[reader]\npoll_intervall = 5\n")
    with pytest.raises(ConfigError, match=r"unknown key reader\.'poll_intervall'"):
        load_config(path, environ={})


def test_secrets_are_masked_and_env_round_trips() -> None:
    key = generate_key()
    config = load_config(environ={"RENOGY_API_KEY": key, "RENOGY_MQTT_PASSWORD": "hunter2"})
    shown = repr(effective(config))
    assert key not in shown and "hunter2" not in shown and "***" in shown
    env = env_for({"reader.batteries": [48, 49], "simulator.enabled": True, "reader.poll_interval": 5.0})
    again = load_config(environ=env)
    assert (
        again.reader.batteries == [48, 49] and again.simulator.enabled and again.reader.poll_interval == 5.0
    )


def test_every_setting_has_a_unique_env_name_or_a_shared_meaning() -> None:
    names = [s.env for s in settings()]
    assert all(name.startswith("RENOGY_") for name in names)
    assert len(names) == len(set(names))
