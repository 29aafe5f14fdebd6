"""Which of the host's addresses the gateway announces by mDNS.

Home Assistant connects to the first address it is given and moves an existing config entry to it,
so an unreachable address (docker0, a compose network, a VPN) breaks the link. ``choose_addresses``
is the pure decision over a list of interfaces; ``gather_interfaces`` and ``default_route_interface``
are the thin readers of psutil, /sys and /proc around it.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["physical", "bridge", "bridge-port", "tunnel", "virtual", "unknown"]

SYS_NET = Path("/sys/class/net")
PROC_ROUTE = Path("/proc/net/route")
PROC_IPV6_ROUTE = Path("/proc/net/ipv6_route")
PROC_IF_INET6 = Path("/proc/net/if_inet6")
WILDCARD_BINDS = ("", "0.0.0.0", "::")

# Never announced, whatever sysfs says: container, VM and overlay networks (Home Assistant on the
# LAN cannot reach them) and VPN tunnels (mDNS does not cross them). Names are matched whole.
_SKIPPED_NAMES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"docker\d+|docker_gwbridge|br-[0-9a-f]{12}"), "Docker network"),
    (re.compile(r"veth.*"), "container link"),
    (re.compile(r"(virbr|lxcbr|lxdbr|incusbr|cni|podman|flannel|cali|cilium|kube-|weave|vxlan|genev).*"),
     "container or VM network"),
    (re.compile(r"(tun|tap|wg|tailscale|zt).*"), "VPN tunnel"),
)
# /proc/net/if_inet6 flags: temporary (privacy), DAD failed, deprecated, tentative. Announcing them
# would change the record every time the host rotates its privacy address.
_UNSTABLE_IPV6 = 0x01 | 0x08 | 0x20 | 0x40
_RTF_UP = 0x0001
_RTF_REJECT = 0x0200


@dataclass(frozen=True, slots=True)
class Interface:
    name: str
    addresses: tuple[str, ...]
    up: bool = True
    loopback: bool = False
    kind: Kind = "unknown"


@dataclass(frozen=True, slots=True)
class Choice:
    addresses: tuple[str, ...]
    reason: str
    skipped: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        """One log line: what is announced, why, and what was left out."""
        text = f"{', '.join(self.addresses) or 'no addresses'} {self.reason}"
        if self.skipped:
            text += "; skipped " + ", ".join(f"{name}: {why}" for name, why in self.skipped)
        return text


def _skip_reason(iface: Interface, default_route: str | None) -> str | None:
    # What the interface is comes before whether it is up: docker0 is down until a container runs.
    if iface.loopback:
        return "loopback"
    for pattern, why in _SKIPPED_NAMES:
        if pattern.fullmatch(iface.name):
            return why
    if iface.kind == "bridge-port":
        return "bridge port"
    if iface.kind == "tunnel":
        return "VPN tunnel"
    # A LAN bridge (br0 on hosts with VMs) carries the default route; any other bridge is a
    # container or VM network under a custom name.
    if iface.kind == "bridge" and iface.name != default_route:
        return "bridge without the default route"
    return None if iface.up else "down"


def _usable(addresses: Iterable[str], ipv6: bool) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    found = []
    for text in addresses:
        try:
            addr = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            continue
        if addr.is_loopback or addr.is_unspecified or addr.is_multicast:
            continue
        if addr.version == 6 and (not ipv6 or addr.is_link_local):
            continue
        found.append(addr)
    return sorted(set(found), key=lambda a: (a.version, int(a)))


def _order(iface: Interface, default_route: str | None) -> tuple[int, str]:
    rank = 0 if iface.name == default_route else 1 if iface.kind == "physical" else 2
    return rank, iface.name


def choose_addresses(
    interfaces: Iterable[Interface],
    default_route: str | None = None,
    *,
    bind: str = "0.0.0.0",
    explicit: Sequence[str] = (),
    only_interface: str | None = None,
) -> Choice:
    """The addresses to announce, in a deterministic order (Home Assistant uses the first).

    Precedence: ``explicit`` (gateway.mdns_addresses), a specific ``bind`` address,
    ``only_interface`` (gateway.mdns_interface), else every qualifying interface with the
    default-route interface first, then physical NICs, then other interfaces, each by name.
    IPv6 only with a dual-stack bind; never loopback or IPv6 link-local; IPv4 link-local
    (169.254/16) only when nothing else qualifies.
    """
    if explicit:
        chosen = dict.fromkeys(str(ipaddress.ip_address(a.strip())) for a in explicit)
        return Choice(tuple(chosen), "from gateway.mdns_addresses")
    if bind not in WILDCARD_BINDS:
        return Choice((bind,), "from gateway.bind")
    ipv6 = bind != "0.0.0.0"
    ordered = sorted(interfaces, key=lambda i: _order(i, default_route))
    chosen_addrs: list[str] = []
    fallback: list[str] = []
    used: list[str] = []
    skipped: list[tuple[str, str]] = []
    for iface in ordered:
        usable = _usable(iface.addresses, ipv6)
        if only_interface is not None:
            why = None if iface.name == only_interface else "not gateway.mdns_interface"
            why = "down" if why is None and not iface.up else why
        else:
            why = _skip_reason(iface, default_route)
        if why is not None:
            if usable:  # only interfaces that would have added an address are worth a word
                skipped.append((iface.name, why))
            continue
        normal = [str(a) for a in usable if not a.is_link_local]
        if normal:
            used.append(f"{iface.name} (default route)" if iface.name == default_route else iface.name)
        chosen_addrs += [a for a in normal if a not in chosen_addrs]
        fallback += [str(a) for a in usable if a.is_link_local and str(a) not in fallback]
    if only_interface is not None:
        found = any(i.name == only_interface for i in ordered)
        reason = f"on gateway.mdns_interface {only_interface}" + ("" if found else " (not found)")
    elif chosen_addrs:
        reason = "on " + ", ".join(used)
    elif fallback:
        reason = "(IPv4 link-local: nothing else qualifies)"
    else:
        reason = "(no usable interface)"
    return Choice(tuple(chosen_addrs or fallback), reason, tuple(skipped))


# --- the host as it is (blocking I/O) ----------------------------------------------------------------


def interface_kind(sys_net: Path, name: str) -> Kind:
    base = sys_net / name
    if not base.is_dir():
        return "unknown"
    if (base / "bridge").exists():
        return "bridge"
    if (base / "brport").exists():
        return "bridge-port"
    if (base / "tun_flags").exists():
        return "tunnel"
    # Hardware NICs have a `device` link; veth, dummy, bond, vlan, wireguard ... do not.
    return "physical" if (base / "device").exists() else "virtual"


def _hex(text: str) -> int:
    try:
        return int(text, 16)
    except ValueError:
        return 0


def _default4(line: str) -> tuple[int, str] | None:
    # Iface Destination Gateway Flags RefCnt Use Metric Mask ...
    f = line.split()
    if len(f) < 8 or f[1] != "00000000" or f[7] != "00000000" or not _hex(f[3]) & _RTF_UP:
        return None
    return _hex(f[6]), f[0]


def _default6(line: str) -> tuple[int, str] | None:
    # dest dest_len src src_len next_hop metric refcnt use flags iface
    f = line.split()
    if len(f) < 10 or f[0] != "0" * 32 or f[1] != "00" or f[9] == "lo":
        return None
    if not _hex(f[8]) & _RTF_UP or _hex(f[8]) & _RTF_REJECT:
        return None
    return _hex(f[5]), f[9]


def _best_default(path: Path, parse: Callable[[str], tuple[int, str] | None]) -> str | None:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    routes = [route for route in map(parse, lines) if route is not None]
    return min(routes)[1] if routes else None  # the kernel prefers the lowest metric


def default_route_interface(proc_route: Path = PROC_ROUTE, proc_ipv6_route: Path = PROC_IPV6_ROUTE) -> str | None:
    """The interface of the preferred (lowest metric) IPv4 default route, else the IPv6 one."""
    return _best_default(proc_route, _default4) or _best_default(proc_ipv6_route, _default6)


def stable_ipv6(proc_if_inet6: Path = PROC_IF_INET6) -> set[str] | None:
    """The host's IPv6 addresses that are neither temporary, deprecated nor tentative (None: unknown)."""
    try:
        lines = proc_if_inet6.read_text().splitlines()
    except OSError:
        return None
    stable = set()
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or len(fields[0]) != 32 or _hex(fields[4]) & _UNSTABLE_IPV6:
            continue
        stable.add(str(ipaddress.IPv6Address(bytes.fromhex(fields[0]))))
    return stable


def gather_interfaces(sys_net: Path = SYS_NET, proc_if_inet6: Path = PROC_IF_INET6) -> list[Interface]:
    import psutil  # noqa: PLC0415 - only the announcing gateway needs it

    addrs = psutil.net_if_addrs()
    stats = psutil.net_if_stats()
    stable = stable_ipv6(proc_if_inet6)
    found = []
    for name in sorted(set(addrs) | set(stats)):
        ips = []
        for snic in addrs.get(name, []):
            text = snic.address.split("%", 1)[0]
            if snic.family == socket.AF_INET or (
                snic.family == socket.AF_INET6 and (stable is None or text in stable)
            ):
                ips.append(text)
        stat = stats.get(name)
        flags = set(stat.flags.split(",")) if stat is not None else set()
        found.append(
            Interface(
                name,
                tuple(ips),
                up=stat.isup if stat is not None else False,
                loopback="loopback" in flags or name == "lo",
                kind=interface_kind(sys_net, name),
            )
        )
    return found


def announced_addresses(
    bind: str, *, explicit: Sequence[str] = (), only_interface: str | None = None
) -> Choice:
    """``choose_addresses`` on this host (blocking: call it off the event loop)."""
    if explicit or bind not in WILDCARD_BINDS:
        return choose_addresses((), None, bind=bind, explicit=explicit)
    return choose_addresses(
        gather_interfaces(), default_route_interface(), bind=bind, only_interface=only_interface
    )
