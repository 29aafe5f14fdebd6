"""The node's MAC address: configured, else the host's primary NIC, else derived and persisted.

Home Assistant keys the config entry on this MAC, so it must never change between restarts, and
the same value goes into DeviceInfo (``AA:BB:..``), the Noise server hello and mDNS (``aabb..``).
A gateway.instance other than ``default`` shares the host's NIC, so it reports a MAC derived from
that one and its instance name: a second device in Home Assistant, not a clash with the first.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from shared.config import DEFAULT_INSTANCE

_LOGGER = logging.getLogger(__name__)

MAC_FILE = "gateway_mac"
_MAC_TEXT = re.compile(r"^([0-9a-f]{2}[:-]?){5}[0-9a-f]{2}$")


@dataclass(frozen=True, slots=True)
class Mac:
    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 6:
            raise ValueError("a MAC address has 6 bytes")

    @property
    def colon_upper(self) -> str:
        """DeviceInfo form: ``AC:BC:32:89:0E:A9``."""
        return ":".join(f"{b:02X}" for b in self.raw)

    @property
    def hex_lower(self) -> str:
        """Noise hello and mDNS form: ``acbc32890ea9``."""
        return self.raw.hex()

    def __str__(self) -> str:
        return self.colon_upper


def parse_mac(text: str) -> Mac:
    cleaned = text.strip().lower()
    if not _MAC_TEXT.match(cleaned):
        raise ValueError(f"{text!r} is not a MAC address")
    return Mac(bytes.fromhex(cleaned.replace(":", "").replace("-", "")))


def derived_mac(seed: str) -> Mac:
    """A locally administered unicast MAC derived from a seed."""
    digest = bytearray(hashlib.sha256(seed.encode()).digest()[:6])
    digest[0] = (digest[0] | 0x02) & 0xFE
    return Mac(bytes(digest))


def instance_mac(base: Mac, instance: str) -> Mac:
    """A non-default instance's own MAC: stable for (base, instance), never the base itself."""
    mac = derived_mac(f"renogy-proxy:instance:{instance}:{base.hex_lower}")
    return mac if mac != base else derived_mac(f"renogy-proxy:instance2:{instance}:{base.hex_lower}")


def derive_bluetooth_mac(node: Mac) -> Mac:
    """A scanner MAC for Home Assistant when the reader has not told us its adapter's address."""
    mac = derived_mac(f"bluetooth:{node.hex_lower}")
    return mac if mac != node else derived_mac(f"bluetooth2:{node.hex_lower}")


def _default_route_interface(proc_route: Path) -> str | None:
    # The first IPv4 default route as listed (netif.default_route_interface weighs metrics):
    # kept as it was, since a different pick would change the MAC of existing installs.
    try:
        lines = proc_route.read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000":
            return fields[0]
    return None


def _nic_mac(sys_net: Path, iface: str) -> Mac | None:
    base = sys_net / iface
    # Physical NICs have a `device` link; lo, bridges, veth, tun, docker0 ... do not.
    if iface == "lo" or not (base / "device").exists():
        return None
    try:
        mac = parse_mac((base / "address").read_text())
    except (OSError, ValueError):
        return None
    if mac.raw == bytes(6) or mac.raw[0] & 0x01:
        return None
    return mac


def host_nic_mac(
    sys_net: Path = Path("/sys/class/net"), proc_route: Path = Path("/proc/net/route")
) -> Mac | None:
    """MAC of the default-route NIC if it is physical, else of the first physical NIC by name."""
    preferred = _default_route_interface(proc_route)
    if preferred is not None:
        mac = _nic_mac(sys_net, preferred)
        if mac is not None:
            return mac
    try:
        names = sorted(p.name for p in sys_net.iterdir())
    except OSError:
        return None
    for name in names:
        mac = _nic_mac(sys_net, name)
        if mac is not None:
            return mac
    return None


def resolve_node_mac(
    configured: str | None,
    name: str,
    state_dir: Path,
    *,
    instance: str = DEFAULT_INSTANCE,
    sys_net: Path = Path("/sys/class/net"),
    proc_route: Path = Path("/proc/net/route"),
) -> tuple[Mac, str]:
    """(MAC, where it came from). Blocking file I/O: call it off the event loop.

    A configured MAC is used as it is, for any instance: it is this gateway's identity.
    """
    if configured:
        return parse_mac(configured), "config gateway.mac"
    base, source = _base_mac(name, state_dir, sys_net, proc_route)
    if instance == DEFAULT_INSTANCE:
        return base, source
    return instance_mac(base, instance), f"{source}, {base} made distinct for gateway.instance {instance}"


def _base_mac(name: str, state_dir: Path, sys_net: Path, proc_route: Path) -> tuple[Mac, str]:
    nic = host_nic_mac(sys_net, proc_route)
    if nic is not None:
        return nic, "host network interface"
    path = state_dir / MAC_FILE
    try:
        return parse_mac(path.read_text()), f"persisted in {path}"
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        _LOGGER.warning("ignoring unreadable %s (%s); deriving the MAC again", path, exc)
    mac = derived_mac(f"renogy-proxy:{name}")
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(mac.colon_upper + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        _LOGGER.warning("could not persist the derived MAC in %s: %s", path, exc)
    return mac, "derived from the node name"
