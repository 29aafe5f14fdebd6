"""`renogy-proxy diagnose`: versions, platform, effective config (masked), broker and adapter checks."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from services.ops.session import EXIT_HEALTHY, EXIT_UNREACHABLE, BrokerUnreachable, _redact_url, _Session
from shared.config import Config, effective
from shared.topics import Topics

# --- diagnose -------------------------------------------------------------------------------------

PACKAGES = (
    "renogy-bt-esphome-proxy",
    "bleak",
    "dbus-fast",
    "aioesphomeapi",
    "paho-mqtt",
    "amqtt",
    "zeroconf",
    "noiseprotocol",
    "orjson",
    "psutil",
)
DBUS_SOCKET = Path("/run/dbus/system_bus_socket")


def _versions() -> dict[str, str]:
    from importlib import metadata  # noqa: PLC0415

    out = {"python": f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})"}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["bluez"] = _bluez_version()
    return out


def _bluez_version() -> str:
    tool = shutil.which("bluetoothctl")
    if tool is None:
        return "bluetoothctl not installed (BlueZ version unknown here; in docker, check the host)"
    try:
        done = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=3, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bluetoothctl --version failed: {exc}"
    return (done.stdout or done.stderr).strip() or f"bluetoothctl exited with {done.returncode}"


def in_container() -> str | None:
    """'docker', 'podman' or another runtime name when running in a container, else None."""
    if Path("/.dockerenv").exists():
        return "docker"
    if Path("/run/.containerenv").exists():
        return "podman"
    runtime = os.environ.get("container")  # noqa: SIM112 - set by container runtimes
    return runtime or None


def _platform() -> dict[str, str]:
    info = {"system": platform.platform(), "machine": platform.machine(), "hostname": socket.gethostname()}
    for path in (Path("/proc/device-tree/model"), Path("/sys/firmware/devicetree/base/model")):
        with contextlib.suppress(OSError):
            info["board"] = path.read_text(errors="replace").strip("\x00\n ")
            break
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                info["os"] = line.partition("=")[2].strip('"')
    info["container"] = in_container() or "none"
    info["user"] = f"uid {os.getuid()} gid {os.getgid()}" if hasattr(os, "getuid") else "?"
    return info


def _rfkill() -> list[str]:
    """Soft/hard block state of every Bluetooth radio, from sysfs (no rfkill binary needed)."""
    out = []
    base = Path("/sys/class/rfkill")
    with contextlib.suppress(OSError):
        for entry in sorted(base.iterdir()):
            try:
                if (entry / "type").read_text().strip() != "bluetooth":
                    continue
                name = (entry / "name").read_text().strip()
                soft = (entry / "soft").read_text().strip() == "1"
                hard = (entry / "hard").read_text().strip() == "1"
            except OSError:
                continue
            state = "blocked" if soft or hard else "unblocked"
            reasons = [r for r, on in (("soft", soft), ("hard", hard)) if on]
            suffix = f" ({' and '.join(reasons)}; try 'rfkill unblock bluetooth')" if reasons else ""
            out.append(f"{name}: {state}{suffix}")
    return out


def _bluez_check(adapter: str, timeout: float = 3.0) -> dict[str, str]:
    """Is BlueZ on the system bus, and what does it say about the adapter?"""
    import asyncio  # noqa: PLC0415

    async def probe() -> dict[str, str]:
        from dbus_fast import Message  # noqa: PLC0415 - Linux only

        from services.reader.adapter import adapter_properties, system_bus  # noqa: PLC0415

        result: dict[str, str] = {}
        async with asyncio.timeout(timeout), system_bus() as bus:
            reply = await bus.call(
                Message(
                    destination="org.freedesktop.DBus",
                    path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus",
                    member="NameHasOwner",
                    signature="s",
                    body=["org.bluez"],
                )
            )
            on_bus = bool(reply and reply.body and reply.body[0])
            result["bluez_on_bus"] = "yes" if on_bus else "no (start it: systemctl start bluetooth)"
            if on_bus:
                reply = await bus.call(adapter_properties(adapter, "GetAll", "s"))
                if reply is None or reply.message_type.name == "ERROR":
                    error = reply.error_name if reply is not None else "no reply"
                    result["adapter"] = f"{adapter} not usable: {error} {reply.body if reply else ''}".strip()
                else:
                    props = {k: v.value for k, v in reply.body[0].items()}
                    result["adapter"] = (
                        f"{adapter} {props.get('Address', '?')}, powered {props.get('Powered')}, "
                        f"discovering {props.get('Discovering')}"
                    )
        return result

    try:
        return asyncio.run(probe())
    except TimeoutError:
        return {"bluez_on_bus": f"no answer from the system bus within {timeout:.0f} s"}
    except Exception as exc:  # diagnosis only: report whatever went wrong
        return {"bluez_on_bus": f"cannot ask D-Bus: {exc.__class__.__name__}: {exc}"}


def _adapter(config: Config) -> dict[str, Any]:
    info: dict[str, Any] = {"configured": config.reader.adapter}
    if config.simulator.enabled:
        info["note"] = "simulator enabled: no adapter is used"
    socket_path = Path(
        os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "").removeprefix("unix:path=") or DBUS_SOCKET
    )
    if socket_path.exists():
        info["dbus_socket"] = f"{socket_path} present"
        info.update(_bluez_check(config.reader.adapter))
    else:
        hint = (
            "mount the host's /run/dbus into the container (volumes: /run/dbus:/run/dbus:ro)"
            if in_container()
            else "is dbus running?"
        )
        info["dbus_socket"] = f"{socket_path} missing: {hint}"
    info["rfkill"] = _rfkill() or ["no Bluetooth radio in /sys/class/rfkill"]
    return info


def _broker(config: Config, timeout: float) -> tuple[bool, dict[str, Any]]:
    info: dict[str, Any] = {"url": _redact_url(config.mqtt.url)}
    try:
        session = _Session(config.mqtt, "diagnose")
        rtt = session.connect(timeout)
    except BrokerUnreachable as exc:
        info["reachable"] = f"no: {exc}"
        return False, info
    info["reachable"] = f"yes (CONNACK after {rtt * 1000:.0f} ms)"
    topics = Topics(config.mqtt.root_topic)
    try:
        retained = session.collect([topics.bridge_state_filter], time.monotonic() + timeout)
    finally:
        session.close()
    seen = []
    for topic in sorted(retained.messages):
        bridge = topics.parse_bridge(topic)
        body = retained.json(topic)
        if bridge is not None and body is not None:
            version, host = body.get("version"), body.get("host")
            seen.append(f"{bridge[0]}/{bridge[1]} {body.get('state')} (version {version}, host {host})")
    info["services"] = seen or [f"none under {config.mqtt.root_topic!r}/bridge"]
    return True, info


def _config_section(config: Config) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for section, values in effective(config, mask_secrets=True).items():
        if isinstance(values, dict):
            for key, value in values.items():
                flat[f"{section}.{key}"] = value
        else:
            flat[section] = values
    flat["mqtt.url"] = _redact_url(str(flat["mqtt.url"]))
    return flat


def build_diagnosis(
    config: Config, *, timeout: float = 5.0, config_path: str | None = None
) -> tuple[bool, dict[str, Any]]:
    """Everything a bug report needs; never raises for a missing piece. Returns (broker reachable, report)."""
    reachable, broker = _broker(config, timeout)
    env_names = sorted(name for name in os.environ if name.startswith("RENOGY_"))
    report: dict[str, Any] = {
        "versions": _versions(),
        "platform": _platform(),
        "configuration": {
            "file": config_path or "none (defaults + environment + command line)",
            "environment": env_names or ["no RENOGY_* variables set"],
            "effective": _config_section(config),
        },
        "broker": broker,
        "bluetooth": _adapter(config),
    }
    return reachable, report


def render_diagnosis(report: Mapping[str, Any]) -> str:
    lines = ["renogy-proxy diagnose (secrets are masked; paste this into a bug report)"]
    for section, body in report.items():
        lines.append("")
        lines.append(f"== {section}")
        _render_mapping(lines, body, indent="")
    return "\n".join(lines)


def _render_mapping(lines: list[str], body: Any, indent: str) -> None:
    if isinstance(body, Mapping):
        width = max((len(str(k)) for k in body), default=0)
        for key, value in body.items():
            if isinstance(value, Mapping):
                lines.append(f"{indent}{key}:")
                _render_mapping(lines, value, indent + "  ")
            elif isinstance(value, list):
                lines.append(
                    f"{indent}{str(key).ljust(width)} : " + (", ".join(map(str, value)) if value else "-")
                )
            else:
                shown = orjson.dumps(value).decode() if not isinstance(value, str) else value
                lines.append(f"{indent}{str(key).ljust(width)} : {shown}")
    else:
        lines.append(f"{indent}{body}")


def diagnose(args: argparse.Namespace, config: Config) -> int:
    """`renogy-proxy diagnose`: versions, platform, effective config (masked), broker and adapter checks."""
    path = args.config or os.environ.get("RENOGY_CONFIG") or None
    reachable, report = build_diagnosis(config, timeout=args.timeout, config_path=str(path) if path else None)
    if getattr(args, "json", False):
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print(render_diagnosis(report))
    if not reachable:
        print(f"error: {report['broker']['reachable'].removeprefix('no: ')}", file=sys.stderr)
        return EXIT_UNREACHABLE
    return EXIT_HEALTHY
