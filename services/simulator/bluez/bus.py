"""A private dbus-daemon with a system-bus-like policy, for the stand-in BlueZ and its clients.

The policy follows Debian's ``system.conf`` and BlueZ's ``bluetooth.conf``: method calls are denied
by default, the bus driver and ``org.bluez`` may be called by anyone, only the owner's user may own
``org.bluez`` and call back into clients' ``AdvertisementMonitor1`` objects. Point a process at it
with ``DBUS_SYSTEM_BUS_ADDRESS=<address>``.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Final
from xml.sax.saxutils import quoteattr

BLUEZ_NAME: Final = "org.bluez"
ENV: Final = "DBUS_SYSTEM_BUS_ADDRESS"

_CONFIG: Final = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Peer"/>
{default_bluez}
  </policy>
  <policy user={owner}>
    <allow own="org.bluez"/>
    <allow send_destination="org.bluez"/>
    <allow send_interface="org.bluez.AdvertisementMonitor1"/>
    <allow send_interface="org.freedesktop.DBus.ObjectManager"/>
    <allow send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
{limits}
</busconfig>
"""


class PrivateSystemBus:
    """``with PrivateSystemBus() as bus:`` a dbus-daemon on a temporary socket; ``bus.address``.

    ``deny_clients`` reproduces a host whose bluetooth policy does not admit the client (only the
    owner may then talk to org.bluez: ``org.freedesktop.DBus.Error.AccessDenied`` for others).
    ``reply_timeout`` (seconds) makes the daemon answer a call the service never replies to with
    ``org.freedesktop.DBus.Error.NoReply``, as a system bus with that limit does.
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        deny_clients: bool = False,
        reply_timeout: float | None = None,
        owner: str | None = None,
    ) -> None:
        self._own_dir = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="renogy-bluez-")) if directory is None else directory
        self.socket = self.directory / "system_bus_socket"
        self.address = f"unix:path={self.socket}"
        self.deny_clients = deny_clients
        self.reply_timeout = reply_timeout
        self.owner = owner or getpass.getuser()
        self._process: subprocess.Popen[str] | None = None

    def config_text(self) -> str:
        limits = (
            f'  <limit name="reply_timeout">{round(self.reply_timeout * 1000)}</limit>'
            if self.reply_timeout is not None
            else ""
        )
        default_bluez = "" if self.deny_clients else '    <allow send_destination="org.bluez"/>'
        return _CONFIG.format(
            socket=self.socket, owner=quoteattr(self.owner), default_bluez=default_bluez, limits=limits
        )

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> str:
        """Start the daemon; returns once it listens (it prints its address then)."""
        daemon = shutil.which("dbus-daemon")
        if daemon is None:
            raise FileNotFoundError("dbus-daemon not installed (apt-get install dbus)")
        self.directory.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        config = self.directory / "system.conf"
        config.write_text(self.config_text(), encoding="utf-8")
        # The daemon's own complaints (fd limits when not run by init) go to a log, not the terminal.
        with (self.directory / "dbus-daemon.log").open("a", encoding="utf-8") as log:
            self._process = subprocess.Popen(
                [daemon, f"--config-file={config}", "--nofork", "--nopidfile", "--print-address"],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        assert self._process.stdout is not None
        printed = self._process.stdout.readline().strip()
        if not printed.startswith("unix:"):
            self.stop()
            raise RuntimeError(f"dbus-daemon did not start (printed {printed!r})")
        return self.address

    def stop(self) -> None:
        """Stop the daemon (clients see their connection closed)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if process is not None and process.stdout is not None:
            process.stdout.close()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def environ(self) -> dict[str, str]:
        """The environment of a client process: this bus as its system bus."""
        return {**os.environ, ENV: self.address}

    def __enter__(self) -> PrivateSystemBus:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
