"""A LAN of network namespaces: each "host" its own namespace, joined by veth pairs to a bridge.

The bridge lives in a namespace of its own (the switch), so cutting one host's cable (`ip link set
eth0 down` on that host) leaves every other link up. The test process itself is one more host on the
LAN (an `observer` veth in the root namespace), as Home Assistant would be. Needs root and iproute2.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.brokers import MOSQUITTO, MosquittoBroker, port_open

IP = shutil.which("ip")


def netns_unavailable() -> str | None:
    """Why this machine cannot build the LAN (None when it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if IP is None:
        return "iproute2 (`ip`) is not installed"
    if MOSQUITTO is None:
        return "needs Mosquitto (apt-get install mosquitto)"
    probe = f"rpchk{os.getpid() % 100000}"
    made = subprocess.run([IP, "netns", "add", probe], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run([IP, "netns", "delete", probe], capture_output=True, check=False)
    return None


def _ip(*args: str) -> None:
    assert IP is not None
    done = subprocess.run([IP, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _free_subnet() -> str:
    """A 10.77.x.0/24 no route of this machine uses (the observer's veth adds one)."""
    assert IP is not None
    routes = subprocess.run([IP, "-4", "route"], capture_output=True, text=True, check=True).stdout
    for third in range(os.getpid() % 200, 256):
        if f"10.77.{third}." not in routes:
            return f"10.77.{third}"
    raise RuntimeError("no free 10.77.x.0/24 subnet")


@dataclass
class Lan:
    """Hosts by name; ``address(name)`` is its IPv4 address, ``netns(name)`` its namespace."""

    tag: str = field(default_factory=lambda: f"rp{os.getpid() % 100000}")
    subnet: str = field(default_factory=_free_subnet)
    hosts: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (namespace, address)
    observer_address: str = ""
    _namespaces: list[str] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return f"{self.tag}sw"

    @property
    def observer(self) -> str:
        return f"{self.tag}o"  # the root namespace's veth (<= 15 characters)

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def build(self, names: list[str]) -> None:
        """The switch, one host per name (addresses .1, .2, ...) and the observer (.254)."""
        self._add_namespace(self.switch)
        _ip("-n", self.switch, "link", "add", "name", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for octet, name in enumerate(names, start=1):
            netns, address = f"{self.tag}{name}", f"{self.subnet}.{octet}"
            self._add_namespace(netns)
            port = f"p{octet}"
            _ip(
                "-n",
                self.switch,
                "link",
                "add",
                "name",
                port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                netns,
            )
            _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
            _ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", netns, "link", "set", "eth0", "up")
            self.hosts[name] = (netns, address)
        _ip("link", "add", "name", self.observer, "type", "veth", "peer", "name", "obs", "netns", self.switch)
        _ip("-n", self.switch, "link", "set", "obs", "master", "br0", "up")
        self.observer_address = f"{self.subnet}.254"
        _ip("addr", "add", f"{self.observer_address}/24", "dev", self.observer)
        _ip("link", "set", self.observer, "up")

    def netns(self, name: str) -> str:
        return self.hosts[name][0]

    def address(self, name: str) -> str:
        return self.hosts[name][1]

    def launcher(self, name: str) -> tuple[str, ...]:
        """The command prefix that runs a program on that host (`ip netns exec` execs: same PID)."""
        assert IP is not None
        return (IP, "netns", "exec", self.netns(name))

    def cut(self, name: str) -> None:
        """Pull the host's cable: its interface goes down (the address stays, its route goes)."""
        _ip("-n", self.netns(name), "link", "set", "eth0", "down")

    def restore(self, name: str) -> None:
        _ip("-n", self.netns(name), "link", "set", "eth0", "up")

    def close(self) -> None:
        """Delete every namespace (their veths go with them) and the observer's veth; never raises."""
        assert IP is not None
        for netns in reversed(self._namespaces):
            subprocess.run([IP, "netns", "delete", netns], capture_output=True, check=False)
        self._namespaces.clear()
        subprocess.run([IP, "link", "delete", self.observer], capture_output=True, check=False)


@dataclass
class HostMosquitto(MosquittoBroker):
    """A Mosquitto on one host of the LAN, listening on that host's address."""

    lan: Lan | None = None
    host: str = ""

    @property
    def address(self) -> str:
        assert self.lan is not None
        return self.lan.address(self.host)

    @property
    def url(self) -> str:
        return f"mqtt://{self.address}:{self.port}"

    def config_text(self) -> str:
        return (
            super()
            .config_text()
            .replace(f"listener {self.port} 127.0.0.1", f"listener {self.port} {self.address}")
        )

    async def start(self) -> None:
        assert MOSQUITTO is not None and self.lan is not None
        conf = Path(self.workdir) / "mosquitto.conf"
        conf.write_text(self.config_text())
        self.process = subprocess.Popen(
            [*self.lan.launcher(self.host), MOSQUITTO, "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while not port_open(self.port, self.address):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                _, err = self.process.communicate()
                raise RuntimeError(f"mosquitto on {self.host} did not start: {err.decode(errors='replace')}")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            await asyncio.to_thread(self.process.wait, 10)
        self.process = None
