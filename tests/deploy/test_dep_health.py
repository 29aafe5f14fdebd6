"""Honest health: a reader that cannot work is unhealthy and says why; `status` expects every configured
battery and one reader per BT-2 (issue 11)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.ops import Retained, check_service, evaluate, render_table
from services.reader import scanner as scanner_module
from services.reader.bluez_errors import DBUS_ANCHOR
from services.reader.scanner import Scanner
from shared.config import load_config
from shared.topics import Topics
from tests.deploy.support import ROOT, Run, cli
from tests.reader.support import reader_on_sim
from tests.support.stack import ServiceProcess, Stack


async def run_cli(*args: str, env: dict[str, str], timeout: float = 60) -> Run:
    return await asyncio.to_thread(cli, *args, env=env, timeout=timeout)


async def _until(check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.3)


async def test_reader_without_dbus_socket_is_unhealthy_and_blames_the_socket(
    mosquitto: Any, tmp_path: Path
) -> None:
    """The real reader on BlueZ with no D-Bus socket: healthcheck fails, the log names the socket, not the BT-2."""
    env = {
        "RENOGY_MQTT_URL": mosquitto.url,
        "RENOGY_STATE_DIR": str(tmp_path),
        "RENOGY_POLL_INTERVAL": "0.5",
        "RENOGY_SCAN_TIMEOUT": "2",
        "RENOGY_WATCHDOG_CYCLES": "50",
        "RENOGY_MQTT_RECONNECT_MAX_DELAY": "1",
    }
    process_env = {k: v for k, v in os.environ.items() if not k.startswith("RENOGY_")}
    process_env |= {**env, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path / 'no-such-socket'}"}
    reader = ServiceProcess("reader", process_env, tmp_path / "reader.log")
    await reader.start()
    try:

        async def unhealthy() -> Run | None:
            result = await run_cli("healthcheck", "reader", env=env)
            return result if result.code == 1 and "Bluetooth adapter" in result.out else None

        result = await _until(unhealthy, 20)
        assert result is not None, "healthcheck reader stayed healthy without a D-Bus socket"
        assert "cannot use the Bluetooth adapter" in result.out and "D-Bus" in result.out, result.out
        status = await run_cli("status", env=env)
        assert status.code == 1 and "cannot use the Bluetooth adapter" in status.out
        log = reader.log()
        assert "no D-Bus system bus socket" in log
        assert f"troubleshooting.md#{DBUS_ANCHOR}" in log
        assert "is it powered" not in log, "the log blamed the BT-2 for a scanner that never started"
    finally:
        await reader.stop()


async def test_no_good_reading_for_watchdog_cycles_is_unhealthy(mosquitto: Any) -> None:
    """A reader that is online but has read nothing for watchdog_cycles polls fails its healthcheck."""
    async with reader_on_sim(
        mosquitto.url, bt2_address="C4:64:E3:00:00:01", watchdog_cycles=2, connect_timeout=1.0
    ) as (reader, _sim, _probe):
        config = reader.config
        first = reader.watchdog.cycle_done(await reader.cycle())
        assert first.value == "none"
        reader._publish_health()
        await asyncio.sleep(0.3)
        early = await asyncio.to_thread(check_service, config, "reader", "default")
        assert early.healthy, f"one bad poll is within the start-up grace: {early.text}"
        reader.watchdog.cycle_done(await reader.cycle())
        reader._publish_health()
        await asyncio.sleep(0.3)
        verdict = await asyncio.to_thread(check_service, config, "reader", "default")
        assert not verdict.healthy
        assert "no good reading for 2 polls (reader.watchdog_cycles = 2" in verdict.text, verdict.text


def test_scanner_silence_counts_from_its_start_not_the_host_boot(monkeypatch: pytest.MonkeyPatch) -> None:
    """`no advertisement for <n> s` was the host's uptime: _last_advert started at 0."""
    clock = [1_000_000.0]
    monkeypatch.setattr(scanner_module.time, "monotonic", lambda: clock[0])
    scanner = Scanner(
        backend=None, adapter="hci0", mode="active", on_advertisement=None, on_state=lambda s, m: None
    )
    clock[0] += 95.0
    silent_for = scanner_module.time.monotonic() - scanner._last_advert
    assert silent_for == 95.0


async def test_scanner_watchdog_message_has_the_real_silence(caplog: pytest.LogCaptureFixture) -> None:
    class NoBus:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        async def start(self) -> None:
            raise FileNotFoundError(2, "No such file or directory")

        async def stop(self) -> None:
            pass

    scanner = Scanner(
        backend=NoBus,  # type: ignore[arg-type]
        adapter="hci0",
        mode="active",
        on_advertisement=None,
        on_state=lambda s, m: None,
        watchdog_after=0.3,
    )
    assert not await scanner.start()
    assert scanner.problem is not None and scanner.problem.kind == "adapter_error"
    stop = asyncio.Event()
    task = asyncio.create_task(scanner.watch(stop))
    await asyncio.sleep(1.5)
    stop.set()
    await task
    seconds = [float(m) for m in re.findall(r"no advertisement for (\d+) s", caplog.text)]
    assert seconds and max(seconds) < 10, caplog.text
    assert caplog.text.count("is not running") == 1, "a scanner that cannot start is logged once per streak"


def test_troubleshooting_has_every_anchor_the_code_and_deploy_files_point_to() -> None:
    doc = (ROOT / "docs" / "troubleshooting.md").read_text()
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', doc))
    for heading in re.findall(r"^#+ (.+)$", doc, re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    files = [
        *(ROOT / "services").rglob("*.py"),
        *(ROOT / "shared").rglob("*.py"),
        ROOT / "docker-compose.yml",
    ]
    files += [p for p in (ROOT / "deploy").rglob("*") if p.is_file()]
    pointed = {}
    for path in files:
        text = path.read_text(errors="replace")
        for anchor in re.findall(r"troubleshooting\.md#([A-Za-z0-9{}_-]+)", text):
            pointed[anchor.replace("{DBUS_ANCHOR}", DBUS_ANCHOR)] = path.relative_to(ROOT)
    assert DBUS_ANCHOR in pointed
    missing = {a: str(p) for a, p in pointed.items() if a not in anchors}
    assert not missing, f"docs/troubleshooting.md has no heading/anchor for {missing}"


# --- status: every configured battery, one reader per BT-2 ------------------------------------------


def _reader_messages(now: float, instance: str = "default", bt2: str = "c464e3383d0e") -> dict[str, bytes]:
    topics = Topics()
    return {
        topics.bridge_state("reader", instance): orjson.dumps({"schema": 1, "state": "online", "ts": now}),
        topics.bridge_health("reader", instance): orjson.dumps(
            {"schema": 1, "ts": now, "bt2": bt2, "poll_interval": 30.0}
        ),
    }


def _reading(now: float, slave: int, bt2: str = "c464e3383d0e") -> dict[str, bytes]:
    body = {"schema": 1, "ts": now, "voltage": 52.0, "current": 1.0, "remaining_charge": 25, "capacity": 50}
    return {Topics().reading(bt2, slave): orjson.dumps(body)}


def test_configured_batteries_that_never_reported_are_missing() -> None:
    now = 10_000.0
    config = load_config(environ={"RENOGY_BATTERIES": "48,49,50,51"})
    report = evaluate(Retained({**_reader_messages(now), **_reading(now, 48)}), config, now=now)
    assert not report.healthy
    assert [m.slave_id for m in report.missing] == [49, 50, 51]
    assert any(
        "battery 49 @?: configured (reader.batteries) but never reported" in p for p in report.problems
    )
    table = render_table(report)
    assert re.search(r"^battery 51 @\?\s+missing", table, re.M), table
    banked = load_config(
        environ={
            "RENOGY_BATTERIES": "48",
            "RENOGY_BANKS": '[{"id": "house", "batteries": [48, "c4:64:e3:38:3d:0e:52"]}]',
        }
    )
    report = evaluate(Retained({**_reader_messages(now), **_reading(now, 48)}), banked, now=now)
    assert [(m.slave_id, m.bt2) for m in report.missing] == [(52, "c464e3383d0e")]
    assert "aggregator.banks[0] 'house'" in report.problems[-1]


def test_two_readers_on_one_bt2_are_unhealthy() -> None:
    now = 10_000.0
    config = load_config(environ={"RENOGY_BATTERIES": "48"})
    messages = {**_reader_messages(now), **_reader_messages(now, "second"), **_reading(now, 48)}
    report = evaluate(Retained(messages), config, now=now)
    assert any("claimed by reader/default and reader/second" in p for p in report.problems), report.problems
    apart = {**_reader_messages(now), **_reader_messages(now, "second", "c464e3000002"), **_reading(now, 48)}
    assert not [p for p in evaluate(Retained(apart), config, now=now).problems if "claimed by" in p]


async def test_status_wait_waits_for_every_configured_battery(mosquitto: Any, tmp_path: Path) -> None:
    """Batteries 49-51 configured, only 48 on the (simulated) bus: `status --wait` must not say healthy."""
    stack = Stack(
        mosquitto.url,
        tmp_path,
        env_overrides={
            "RENOGY_SIM_BATTERIES": "48",
            "RENOGY_BATTERIES": "48,49,50,51",
            "RENOGY_REQUEST_TIMEOUT": "0.2",
        },
    )
    await stack.start()
    try:
        env = {k: v for k, v in stack["gateway"].env.items() if k.startswith("RENOGY_")}
        result = await run_cli("status", "--wait", "8", env=env)
        assert result.code == 1, result.out + result.err
        for slave in (49, 50, 51):
            assert re.search(rf"^battery {slave} @\S+\s+missing", result.out, re.M), result.out
        assert "battery 48 @c464e3383d0e" in result.out
        assert "of 4 batteries with fresh readings" in result.err
    except BaseException:
        print(stack.logs())
        raise
    finally:
        await stack.stop()


async def test_a_second_simulated_bt2_is_a_setting_and_sharing_one_is_unhealthy(
    mosquitto: Any, tmp_path: Path
) -> None:
    stack = Stack(mosquitto.url, tmp_path, env_overrides={"RENOGY_BATTERIES": "48,49,50,51"})
    base = dict(stack["reader"].env)
    env = {k: v for k, v in base.items() if k.startswith("RENOGY_")}
    same = ServiceProcess("reader", {**base, "RENOGY_READER_INSTANCE": "second"}, tmp_path / "same.log")
    other = ServiceProcess(
        "reader",
        {
            **base,
            "RENOGY_READER_INSTANCE": "third",
            "RENOGY_SIM_ADDRESS": "C4:64:E3:00:00:02",
            "RENOGY_SIM_NAME": "BT-TH-SECOND",
        },
        tmp_path / "other.log",
    )
    await stack["reader"].start()
    await same.start()
    try:

        async def claimed() -> Run | None:
            result = await run_cli("status", "--json", env=env)
            return result if "claimed by reader/default and reader/second" in result.out else None

        assert await _until(claimed, 20), (await run_cli("status", env=env)).out
        await same.stop()
        await other.start()

        async def second_bt2() -> dict[str, Any] | None:
            report = orjson.loads((await run_cli("status", "--json", env=env)).out)
            bt2s = {b["bt2"] for b in report["batteries"]}
            return report if "c464e3000002" in bt2s else None

        report = await _until(second_bt2, 20)
        assert report is not None
        assert not [p for p in report["problems"] if "claimed by" in p]
        assert "BT-TH-SECOND" in (await run_cli("status", env=env)).out
    finally:
        await other.stop()
        await same.stop()
        await stack["reader"].stop()


def test_slave_ids_are_1_to_247_everywhere() -> None:
    from services.aggregator.banks import parse_selector
    from services.simulator import SimConfig
    from shared.config import ConfigError

    for key, env in (
        ("reader.batteries", "RENOGY_BATTERIES"),
        ("simulator.batteries", "RENOGY_SIM_BATTERIES"),
    ):
        with pytest.raises(ConfigError, match=rf"{re.escape(key)}: slave id 248 outside 1\.\.247"):
            load_config(environ={env: "248"})
        assert load_config(environ={env: "247"})
    with pytest.raises(ConfigError, match=r"outside 1\.\.247"):
        parse_selector("aggregator.banks[0].batteries[0]", 250)
    with pytest.raises(ValueError, match=r"outside 1\.\.247"):
        SimConfig(batteries=(250,))


def test_sim_batteries_error_names_its_key() -> None:
    done = cli("reader", "--simulate", "--sim-batteries", "250", env={"RENOGY_STATE_DIR": "/tmp"}, timeout=30)
    assert done.code == 2 and "simulator.batteries" in done.err and "reader.backend" not in done.err, done.err


if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("Linux only")
