"""Turn BlueZ, D-Bus and bleak errors into a kind, a clear message and a remedy hint."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bleak.exc import BleakDBusError, BleakDeviceNotFoundError, BleakError

# The heading of docs/troubleshooting.md that explains the missing socket (a test checks it exists).
DBUS_ANCHOR = "no-d-bus-system-bus-socket"


@dataclass(frozen=True, slots=True)
class Diagnosis:
    kind: str  # health error key: adapter_error or connect_failed
    message: str
    fatal: bool = False  # only a new process can recover (orphaned D-Bus proxies)


def in_docker() -> bool:
    return Path("/.dockerenv").exists() or os.environ.get("container") == "docker"  # noqa: SIM112 - set by container runtimes


def diagnose(exc: BaseException, adapter: str) -> Diagnosis:
    text = str(exc)
    if isinstance(exc, FileNotFoundError) or ("No such file or directory" in text and "dbus" in text.lower()):
        hint = (
            "mount the host D-Bus socket into the container (volumes: /run/dbus:/run/dbus:ro)"
            if in_docker()
            else "is D-Bus running? (systemctl status dbus)"
        )
        return Diagnosis(
            "adapter_error", f"no D-Bus system bus socket ({exc}); {hint} (docs/troubleshooting.md#{DBUS_ANCHOR})"
        )
    if isinstance(exc, BleakDBusError):
        name = exc.dbus_error
        if name == "org.freedesktop.DBus.Error.ServiceUnknown":
            # Not fatal: bleak finds bluetoothd again once it is back on the bus (a restart, an upgrade).
            return Diagnosis(
                "adapter_error",
                f"BlueZ is not on the system bus ({exc.dbus_error_details or name}): start it with "
                "'systemctl start bluetooth'; retrying with back-off "
                "(docs/troubleshooting.md#bluez-is-not-on-the-system-bus)",
            )
        if name == "org.freedesktop.DBus.Error.AccessDenied":
            return Diagnosis(
                "adapter_error",
                f"D-Bus denied access to BlueZ ({exc.dbus_error_details}): run as a user allowed by the "
                "bluetooth D-Bus policy (group bluetooth) or check AppArmor (security_opt apparmor:unconfined)",
            )
        if name == "org.bluez.Error.NotReady" or (name == "org.bluez.Error.Failed" and "powered" in text.lower()):
            # BlueZ answers "Resource Not Ready" to discovery and connects while the adapter is off.
            return Diagnosis(
                "adapter_error",
                f"adapter {adapter} is powered off or blocked: try 'rfkill unblock "
                f"bluetooth' and 'bluetoothctl power on' ({exc})",
            )
        if name == "org.freedesktop.DBus.Error.UnknownObject":
            return Diagnosis(
                "connect_failed",
                f"BlueZ no longer has this object ({exc.dbus_error_details or name}): bluetoothd was restarted "
                "or the adapter was reset or removed; reconnecting (the next scan finds the BT-2 again)",
            )
        if name == "org.freedesktop.DBus.Error.NoReply":
            return Diagnosis(
                "connect_failed",
                f"BlueZ did not answer ({exc.dbus_error_details or name}): bluetoothd is hung or was restarted "
                "under us; will retry; if it repeats, 'sudo systemctl restart bluetooth'",
            )
        if name == "org.bluez.Error.InProgress":
            return Diagnosis("connect_failed", f"BlueZ is busy with another operation ({exc}); will retry")
        return Diagnosis("connect_failed", f"BlueZ error {name}: {exc.dbus_error_details or text}")
    if isinstance(exc, BleakDeviceNotFoundError):
        return Diagnosis(
            "connect_failed",
            f"BT-2 {exc.identifier} not found: is it powered, in range, and not connected to the Renogy app "
            "(a BT-2 accepts one connection and stops advertising while connected)?",
        )
    if isinstance(exc, BleakError):
        if "le-connection-abort-by-local" in text:
            return Diagnosis(
                "connect_failed",
                f"connection aborted by the adapter ({text}): usually RF interference or another connect in "
                "progress; a Pi's 2.4 GHz Wi-Fi hotspot starves BLE",
            )
        if text.startswith("device '") and text.endswith("' not found"):
            # bleak's BlueZ manager lost the device object (bluetoothd restarted, adapter reset or removed)
            return Diagnosis(
                "connect_failed",
                f"BlueZ no longer knows the BT-2 ({text}): bluetoothd was restarted or the adapter was reset "
                "or removed; the next scan finds it again",
            )
        if "not found" in text.lower() and "adapter" in text.lower():
            return Diagnosis(
                "adapter_error",
                f"Bluetooth adapter {adapter} not found ({text}): check "
                "'bluetoothctl list' and 'rfkill list'",
            )
        return Diagnosis("connect_failed", f"Bluetooth error: {text}")
    if isinstance(exc, OSError):
        return Diagnosis("adapter_error", f"{type(exc).__name__}: {exc}")
    return Diagnosis("connect_failed", f"{type(exc).__name__}: {exc}")
