"""`renogy-proxy status`, `healthcheck` and `diagnose` as processes, against a running stack and a dead broker."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import orjson

from services.gateway import service as gateway_service
from services.gateway.keystore import KEY_FILE
from services.gateway.service import Gateway
from services.ops import (
    MISSED_BEATS,
    SERVICE_HEALTH_INTERVAL,
    Retained,
    _api_target,
    _redact_url,
    evaluate,
    probe_api,
    service_max_age,
)
from shared.config import load_config
from shared.noise_key import generate_key
from shared.topics import Topics
from tests.deploy.support import Run, cli
from tests.support.brokers import free_port
from tests.support.stack import Stack, api_snapshot

SECRET_PASSWORD = "pw-do-not-print-7f3a"


async def run_cli(*args: str, env: dict[str, str]) -> Run:
    return await asyncio.to_thread(cli, *args, env=env)


def renogy_env(stack: Stack) -> dict[str, str]:
    return {k: v for k, v in stack["gateway"].env.items() if k.startswith("RENOGY_")}


async def test_status_healthcheck_and_diagnose_against_a_running_stack(
    mosquitto: Any, tmp_path: Path
) -> None:
    stack = Stack(mosquitto.url, tmp_path)
    await stack.start()
    try:
        env = renogy_env(stack)
        first = await run_cli("status", "--wait", "30", env=env)  # right after start: waits for readings
        assert first.code == 0, first.out + first.err
        assert "waiting up to 30 s" in first.err and "healthy" in first.out
        await api_snapshot(stack.api_port, expect_entities=55, timeout=30)

        table = await run_cli("status", env=env)
        assert table.code == 0, table.out + table.err
        for name in ("reader/default", "aggregator/default", "gateway/default"):
            assert name in table.out
        battery_rows = [line for line in table.out.splitlines() if line.startswith("battery ")]
        assert len(battery_rows) == 4 and all(" V " in row and "%" in row for row in battery_rows)
        assert "healthy" in table.out.splitlines()[-1]

        report = orjson.loads((await run_cli("status", "--json", env=env)).out)
        assert report["healthy"] is True and not report["problems"]
        assert {b["slave_id"] for b in report["batteries"]} == {48, 49, 50, 51}
        for battery in report["batteries"]:
            assert 0 <= battery["level"] <= 100 and battery["voltage"] > 40
            assert battery["link_quality"] == 100 and battery["age_s"] < battery["max_age_s"]
            assert abs(battery["power"] - battery["voltage"] * battery["current"]) < 1e-6

        for service in ("reader", "aggregator", "gateway"):
            check = await run_cli("healthcheck", service, env=env)
            assert check.code == 0 and check.out.startswith("healthy"), check.out + check.err
        assert "answers (plaintext, node renogy-bt-proxy)" in (await run_cli("healthcheck", "gateway", env=env)).out

        secrets = {
            **env,
            "RENOGY_MQTT_USERNAME": "renogy",
            "RENOGY_MQTT_PASSWORD": SECRET_PASSWORD,
            "RENOGY_API_KEY": generate_key(),
        }
        for args in (("diagnose",), ("diagnose", "--json")):
            diag = await run_cli(*args, env=secrets)
            assert diag.code == 0, diag.out + diag.err
            for secret in (SECRET_PASSWORD, secrets["RENOGY_API_KEY"]):
                assert secret not in diag.out + diag.err
            assert "***" in diag.out and "renogy-bt-esphome-proxy" in diag.out
        text = (await run_cli("diagnose", env=secrets)).out
        assert "reachable : yes" in text and "reader/default online" in text
        assert "aioesphomeapi" in text and "paho-mqtt" in text and "bluez" in text

        await stack["aggregator"].signal(signal.SIGKILL)
        await stack["aggregator"].process.wait()  # type: ignore[union-attr]
        down = await run_cli("status", env=env)
        assert down.code == 1
        assert "aggregator/default is offline" in down.out  # its last will, published by the broker
        assert (await run_cli("healthcheck", "aggregator", env=env)).code == 1
        assert (await run_cli("healthcheck", "reader", env=env)).code == 0
    except BaseException:
        print(stack.logs())
        raise
    finally:
        await stack.stop()


async def test_dead_broker_gives_a_clear_message_and_exit_2(tmp_path: Path) -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    env = {"RENOGY_MQTT_URL": url, "RENOGY_STATE_DIR": str(tmp_path)}
    for args in (("status",), ("healthcheck", "reader"), ("diagnose",)):
        result = await run_cli(*args, env=env)
        assert result.code == 2, (args, result.out, result.err)
        message = result.err + result.out
        assert f"cannot reach the MQTT broker {url}" in message and "RENOGY_MQTT_URL" in message
        assert "Traceback" not in message
    diag = await run_cli("diagnose", env=env)
    assert "== versions" in diag.out and "reachable : no" in diag.out
    dead = orjson.loads((await run_cli("status", "--json", env=env)).out)
    assert dead["healthy"] is False and url in dead["error"]
    for bad_url in (
        f"mqtt://user:{SECRET_PASSWORD}@127.0.0.1:{free_port()}",
        f"mqtt://u:{SECRET_PASSWORD}@h:x",
    ):
        for args in (("status",), ("diagnose",), ("diagnose", "--json")):
            leaked = await run_cli(*args, env={**env, "RENOGY_MQTT_URL": bad_url})
            assert leaked.code == 2 and SECRET_PASSWORD not in leaked.out + leaked.err


async def test_empty_broker_is_unhealthy_and_names_what_is_missing(mosquitto: Any) -> None:
    result = await run_cli("status", env={"RENOGY_MQTT_URL": mosquitto.url})
    assert result.code == 1
    for service in ("reader", "aggregator", "gateway"):
        assert f"{service}/default: never published its state" in result.out
    assert (await run_cli("healthcheck", "gateway", env={"RENOGY_MQTT_URL": mosquitto.url})).code == 1


def _bridge(service: str, state: str, state_ts: float, **health: Any) -> dict[str, bytes]:
    topics = Topics()
    messages = {
        topics.bridge_state(service, "default"): orjson.dumps({"schema": 1, "state": state, "ts": state_ts}),
    }
    if health:
        messages[topics.bridge_health(service, "default")] = orjson.dumps({"schema": 1, **health})
    return messages


def test_staleness_rules() -> None:
    config = load_config(environ={})
    now = 10_000.0
    reading = orjson.dumps(
        {
            "schema": 1,
            "ts": now - 200,
            "voltage": 52.0,
            "current": 1.0,
            "remaining_charge": 25,
            "capacity": 50,
        }
    )
    messages = {
        **_bridge("reader", "online", now - 500, ts=now - 5, poll_interval=30.0, bt2="c464e3383d0e"),
        **_bridge("aggregator", "online", now - 100),
        **_bridge("gateway", "offline", now - 1),
        Topics().reading("c464e3383d0e", 48): reading,
    }
    report = evaluate(Retained(messages), config, now=now)
    by_name = {row.name: row for row in report.services}
    assert not by_name["reader/default"].problems  # heard 5 s ago through its health
    assert "last heard 100 s ago" in by_name["aggregator/default"].problems[0]
    assert by_name["gateway/default"].problems == ["gateway/default is offline"]
    (battery,) = report.batteries
    assert battery.level == 50.0 and battery.power == 52.0 and battery.max_age_s == 90.0
    assert "last reading 200 s old" in battery.problems[0]
    assert not evaluate(Retained(messages), config, now=now, max_age=300).batteries[0].problems
    assert service_max_age("reader", config) == 3 * 30 + 15 + 20


def test_health_interval_matches_the_services() -> None:
    from services.aggregator import service as aggregator_service

    assert aggregator_service.HEALTH_INTERVAL == SERVICE_HEALTH_INTERVAL
    assert gateway_service.HEALTH_INTERVAL == SERVICE_HEALTH_INTERVAL
    assert MISSED_BEATS >= 2


def test_url_passwords_are_masked() -> None:
    assert _redact_url("mqtt://user:hunter2@broker:1883") == "mqtt://user:***@broker:1883"
    assert _redact_url("mqtt://broker:1883") == "mqtt://broker:1883"


async def test_api_probe_speaks_noise_and_plaintext(mosquitto: Any, tmp_path: Path) -> None:
    key = generate_key()
    port = free_port()
    environ = {
        "RENOGY_MQTT_URL": mosquitto.url,
        "RENOGY_STATE_DIR": str(tmp_path),
        "RENOGY_API_PORT": str(port),
        "RENOGY_API_BIND": "127.0.0.1",
        "RENOGY_MDNS": "false",
    }
    plain_config = load_config(environ=environ)
    assert _api_target(plain_config) == ("127.0.0.1", port, False)
    async with Gateway(plain_config):
        verdict = await asyncio.to_thread(probe_api, "127.0.0.1", port, encrypted=False)
        assert verdict.healthy and "plaintext" in verdict.text
    noise_config = load_config(environ={**environ, "RENOGY_API_KEY": key})
    assert _api_target(noise_config)[2] is True
    async with Gateway(noise_config) as gateway:
        verdict = await asyncio.to_thread(probe_api, "127.0.0.1", port, encrypted=True)
        assert verdict.healthy and "Noise, node renogy-bt-proxy" in verdict.text
        assert gateway.server is not None and gateway.server.counters.handshake_failures == 0
        wrong = await asyncio.to_thread(probe_api, "127.0.0.1", port, encrypted=False)
        assert wrong.healthy and "expects Noise" in wrong.text
    (tmp_path / KEY_FILE).write_text(key + "\n")
    assert _api_target(plain_config)[2] is True, "a provisioned key means the API expects Noise"
    closed = await asyncio.to_thread(probe_api, "127.0.0.1", port, encrypted=True, timeout=1)
    assert not closed.healthy and "does not answer" in closed.text


async def test_scan_shows_progress_and_lists_the_bt2() -> None:
    result = await run_cli("scan", "--simulate", "--timeout", "2", env={})
    assert result.code == 0, result.err
    assert "BT-TH-" in result.out and ":" in result.out.split()[0]
    assert "scanning 2 s" in result.err and "  found " in result.err and "s left" in result.err
