"""`renogy-proxy simulate-bluez` + `renogy-proxy reader` (no --simulate) as two processes: the Done-when test."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import orjson

from tests.reader.support import readings
from tests.support.probe import MqttProbe

SLAVES = {48, 49, 50, 51}


async def _exit(process: asyncio.subprocess.Process, timeout: float = 15.0) -> int:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        process.kill()
        return await process.wait()


async def test_simulate_bluez_then_reader_publish_the_truth(mosquitto, tmp_path: Path) -> None:
    truth_log = tmp_path / "truth.jsonl"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("RENOGY_") and key != "DBUS_SYSTEM_BUS_ADDRESS"
    }
    bluez = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "simulate-bluez",
        "--sim-latency-scale", "0.02", "--sim-truth-log", str(truth_log),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=(tmp_path / "bluez.log").open("wb"),
    )  # fmt: skip
    reader: asyncio.subprocess.Process | None = None
    try:
        assert bluez.stdout is not None
        first = (await asyncio.wait_for(bluez.stdout.readline(), 15)).decode().strip()
        name, _, address = first.partition("=")
        assert name == "DBUS_SYSTEM_BUS_ADDRESS" and address.startswith("unix:path="), first
        async with MqttProbe(mosquitto.url, "renogy/#") as probe:
            reader = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "services.cli", "reader",
                "--mqtt", mosquitto.url, "--poll-interval", "0.5", "--state-dir", str(tmp_path / "state"),
                env={**env, "DBUS_SYSTEM_BUS_ADDRESS": address, "RENOGY_REQUEST_TIMEOUT": "0.5"},
                stderr=(tmp_path / "reader.log").open("wb"),
            )  # fmt: skip
            await probe.wait_for(
                lambda: {r["slave_id"] for r in readings(probe)} == SLAVES, timeout=30, what="4 readings"
            )
            health_topic = "renogy/bridge/reader/default/health"
            await probe.wait_for(
                lambda: health_topic in probe.latest and probe.json(health_topic)["connected"]
            )
            assert probe.json(health_topic)["backend"] == "BleakClientBlueZDBus"
        truth = {
            (rec["slave"], rec["start"], rec["frame"])
            for rec in map(orjson.loads, truth_log.read_text().splitlines())
            if rec.get("type") == "truth"
        }
        for reading in readings(probe):
            for start, frame in reading["raw"].items():
                assert (reading["slave_id"], int(start), frame) in truth, (reading["slave_id"], start)
        assert reader.returncode is None  # still running: no exit path was taken
    finally:
        if reader is not None:
            assert await _exit(reader) == 0, (tmp_path / "reader.log").read_text()
        assert await _exit(bluez) == 0, (tmp_path / "bluez.log").read_text()
    log = (tmp_path / "reader.log").read_text()
    assert "Traceback" not in log, log


async def test_run_simulate_bluez_runs_the_stack_on_bleaks_bluez_backend(mosquitto, tmp_path: Path) -> None:
    from tests.support.brokers import free_port

    env = {key: value for key, value in os.environ.items() if not key.startswith("RENOGY_")}
    env.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
    env |= {
        "RENOGY_STATE_DIR": str(tmp_path / "state"),
        "RENOGY_POLL_INTERVAL": "0.5",
        "RENOGY_SIM_LATENCY_SCALE": "0.02",
        "RENOGY_MDNS": "false",
        "RENOGY_API_BIND": "127.0.0.1",
    }
    run = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "run", "--simulate-bluez",
        "--mqtt", mosquitto.url, "--api-port", str(free_port()),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with MqttProbe(mosquitto.url, "renogy/#") as probe:
            health_topic = "renogy/bridge/reader/default/health"
            await probe.wait_for(
                lambda: health_topic in probe.latest and probe.json(health_topic)["readings_published"] >= 4,
                timeout=40,
                what="the reader's first cycle",
            )
            health = probe.json(health_topic)
            assert health["backend"] == "BleakClientBlueZDBus" and health["errors"] == {}
            await probe.wait_for(
                lambda: any(t.startswith("renogy/device/") for t in probe.latest), timeout=20, what="devices"
            )
    finally:
        with contextlib.suppress(ProcessLookupError):
            run.send_signal(signal.SIGINT)
        out, _ = await asyncio.wait_for(run.communicate(), 30)
    text = out.decode(errors="replace")
    assert run.returncode == 0, text
    assert "Traceback" not in text, text
