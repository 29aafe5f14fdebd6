"""mDNS addresses on a network that looks like a Pi running Docker, built in Linux network namespaces.

Namespace ``gw`` is the Pi: ``lan0`` 192.0.2.2/24 with the default route, ``docker0`` 172.17.0.1/16
with a container's veth, a compose network ``br-0123456789ab`` 172.19.0.1/16 (the three addresses
of issue 10), and a bridge with an unremarkable name to prove the sysfs check. Namespace ``lan``
is the LAN where Home Assistant lives (the other end of ``lan0``), ``ct`` a container. The real
gathering code runs inside ``gw`` with ``ip netns exec``, as it would on the host.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


@dataclass
class Network:
    gw: str
    lan: str
    ct: str
    ipv6: bool

    def run(self, namespace: str, code: str, *args: str, timeout: float = 30) -> str:
        result = subprocess.run(
            ["ip", "netns", "exec", namespace, PYTHON, "-c", code, *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=timeout,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout


def _build(net: Network) -> None:
    gw, lan, ct = net.gw, net.lan, net.ct
    for ns in (gw, lan, ct):
        _ip("-n", ns, "link", "set", "lo", "up")
    # The LAN link is a veth to the `lan` namespace (dummy devices are not in every kernel).
    _ip("-n", gw, "link", "add", "lan0", "type", "veth", "peer", "name", "uplink", "netns", lan)
    _ip("-n", gw, "addr", "add", "192.0.2.2/24", "dev", "lan0")
    _ip("-n", gw, "link", "set", "lan0", "up")
    _ip("-n", lan, "addr", "add", "192.0.2.1/24", "dev", "uplink")
    _ip("-n", lan, "link", "set", "uplink", "up")
    _ip("-n", lan, "route", "add", "224.0.0.0/4", "dev", "uplink")
    _ip("-n", gw, "route", "add", "default", "via", "192.0.2.1", "dev", "lan0")
    for bridge, cidr in (("docker0", "172.17.0.1/16"), ("br-0123456789ab", "172.19.0.1/16"),
                         ("services0", "203.0.113.1/24")):
        _ip("-n", gw, "link", "add", bridge, "type", "bridge")
        _ip("-n", gw, "addr", "add", cidr, "dev", bridge)
        _ip("-n", gw, "link", "set", bridge, "up")
    _ip("-n", gw, "link", "add", "veth1a2b3c4", "type", "veth", "peer", "name", "eth0", "netns", ct)
    _ip("-n", gw, "link", "set", "veth1a2b3c4", "master", "docker0", "up")
    _ip("-n", ct, "addr", "add", "172.17.0.2/16", "dev", "eth0")
    _ip("-n", ct, "link", "set", "eth0", "up")
    try:
        _ip("-n", gw, "addr", "add", "2001:db8::2/64", "dev", "lan0", "nodad")
        net.ipv6 = True
    except RuntimeError:
        net.ipv6 = False  # IPv6 disabled in this kernel: the IPv4 checks still run


@pytest.fixture(scope="module")
def network() -> Iterator[Network]:
    if sys.platform != "linux":
        pytest.skip("network namespaces are Linux only")
    if os.geteuid() != 0:
        pytest.skip("needs root for `ip netns add` (run the tests as root to include this check)")
    if shutil.which("ip") is None:
        pytest.skip("`ip` (iproute2) is not installed")
    prefix = f"rgw{os.getpid()}"
    net = Network(f"{prefix}-gw", f"{prefix}-lan", f"{prefix}-ct", ipv6=False)
    created: list[str] = []
    try:
        for ns in (net.gw, net.lan, net.ct):
            try:
                _ip("netns", "add", ns)
            except RuntimeError as exc:
                pytest.skip(f"`ip netns add` is unavailable here: {exc}")
            created.append(ns)
        try:
            _build(net)
        except RuntimeError as exc:
            pytest.skip(f"cannot build the test network: {exc}")
        yield net
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


_ADDRESSES = """
import json, sys
from services.gateway.mdns import host_addresses
kwargs = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
print(json.dumps(host_addresses(sys.argv[1], **kwargs)))
"""


def _addresses(net: Network, bind: str, **kwargs: object) -> list[str]:
    args = [bind, json.dumps(kwargs)] if kwargs else [bind]
    return list(json.loads(net.run(net.gw, _ADDRESSES, *args)))


def test_pi_with_docker_announces_only_the_lan_address(network: Network) -> None:
    assert _addresses(network, "0.0.0.0") == ["192.0.2.2"]


def test_dual_stack_bind_adds_the_global_ipv6_address_only(network: Network) -> None:
    expected = ["192.0.2.2", "2001:db8::2"] if network.ipv6 else ["192.0.2.2"]
    assert _addresses(network, "::") == expected


def test_mdns_interface_announces_that_interface(network: Network) -> None:
    assert _addresses(network, "0.0.0.0", interface="lan0") == ["192.0.2.2"]
    assert _addresses(network, "0.0.0.0", interface="services0") == ["203.0.113.1"]


def test_mdns_addresses_override_the_choice(network: Network) -> None:
    assert _addresses(network, "0.0.0.0", addresses=["198.51.100.7"]) == ["198.51.100.7"]


_ANNOUNCE = """
import asyncio, logging, sys
from services.gateway.mdns import MdnsAnnouncer
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
async def main():
    announcer = MdnsAnnouncer("renogy-netns-test", 6053, "0.0.0.0", {"mac": "02aabbccddee"})
    announcer.start()
    await asyncio.sleep(float(sys.argv[1]))
    await announcer.stop()
asyncio.run(main())
"""

_RESOLVE = """
import json
from zeroconf import ServiceInfo, Zeroconf
zc = Zeroconf(interfaces=["192.0.2.1"])
info = ServiceInfo("_esphomelib._tcp.local.", "renogy-netns-test._esphomelib._tcp.local.")
found = info.request(zc, 3000)
print(json.dumps(info.parsed_addresses() if found else None))
zc.close()
"""


def test_home_assistant_on_the_lan_resolves_only_the_lan_address(network: Network) -> None:
    """The real announcer in `gw`, a zeroconf resolver in `lan` (where Home Assistant would be)."""
    announcer = subprocess.Popen(
        ["ip", "netns", "exec", network.gw, PYTHON, "-c", _ANNOUNCE, "20"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    log: list[str] = []
    try:
        line = _line_with(announcer, "via mDNS", log, within=20)
        resolved = None
        deadline = time.monotonic() + 15
        while resolved is None and time.monotonic() < deadline:
            resolved = json.loads(network.run(network.lan, _RESOLVE))
        assert resolved == ["192.0.2.2"]
    finally:
        announcer.terminate()
        announcer.wait(timeout=10)
    assert "192.0.2.2" in line and "lan0 (default route)" in line, log
    assert "docker0" in line and "br-0123456789ab" in line and "services0" in line, line
    assert "172.17.0.1" not in line.split(";")[0], line


def _line_with(proc: subprocess.Popen[str], text: str, log: list[str], within: float) -> str:
    """The first stderr line of ``proc`` containing ``text`` (every line read is kept in ``log``)."""
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stderr is not None
    stream = proc.stderr
    threading.Thread(target=lambda: [lines.put(line) for line in stream], daemon=True).start()
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        log.append(line)
        if text in line:
            return line
    raise AssertionError(f"no {text!r} from the announcer within {within} s: {''.join(log)}")
