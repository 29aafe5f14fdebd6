"""Which addresses the gateway announces by mDNS: the pure choice, and the sysfs/procfs readers.

Issue 10 item 4: a Pi running Docker announced 192.0.2.2, 172.17.0.1, 172.19.0.1 and Home Assistant
switched the config entry to the docker bridge address.
"""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.gateway.netif import (
    Interface,
    choose_addresses,
    default_route_interface,
    interface_kind,
    stable_ipv6,
)
from shared.config import ConfigError, env_for, load_config

LO = Interface("lo", ("127.0.0.1", "::1"), loopback=True, kind="virtual")
ETH0 = Interface("eth0", ("192.0.2.2", "fe80::5054:ff:fe12:3456", "2001:db8::2"), kind="physical")
WLAN0 = Interface("wlan0", ("198.51.100.7",), kind="physical")
DOCKER0 = Interface("docker0", ("172.17.0.1",), kind="bridge")
COMPOSE = Interface("br-0123456789ab", ("172.19.0.1",), kind="bridge")
VETH = Interface("veth1a2b3c4", ("fe80::1",), kind="bridge-port")
PI_WITH_DOCKER = [LO, ETH0, DOCKER0, COMPOSE, VETH]


def test_pi_with_docker_announces_only_the_lan_address() -> None:
    choice = choose_addresses(PI_WITH_DOCKER, "eth0")
    assert choice.addresses == ("192.0.2.2",)
    text = choice.describe()
    assert "eth0 (default route)" in text
    for skipped in ("docker0: Docker network", "br-0123456789ab: Docker network"):
        assert skipped in text
    assert "veth" not in text  # only IPv6 link-local there: nothing it could have added
    assert "\n" not in text


def test_bridges_are_skipped_by_kind_even_with_an_unknown_name() -> None:
    custom = Interface("services0", ("203.0.113.1",), kind="bridge")
    port = Interface("eth1", ("198.51.100.9",), kind="bridge-port")
    tunnel = Interface("myvpn", ("10.8.0.2",), kind="tunnel")
    choice = choose_addresses([ETH0, custom, port, tunnel], "eth0")
    assert choice.addresses == ("192.0.2.2",)
    assert {name for name, _ in choice.skipped} == {"services0", "eth1", "myvpn"}


def test_a_lan_bridge_carrying_the_default_route_is_announced() -> None:
    # Hosts with VMs or LXC often put the LAN address on br0; the default route says it is the LAN.
    br0 = Interface("br0", ("192.0.2.10",), kind="bridge")
    assert choose_addresses([br0, DOCKER0, LO], "br0").addresses == ("192.0.2.10",)
    assert choose_addresses([br0, DOCKER0, LO], None).addresses == ()


def test_container_and_vpn_names_are_skipped_even_on_the_default_route() -> None:
    for name in ("docker0", "docker_gwbridge", "br-0123456789ab", "veth0", "virbr0", "lxcbr0", "cni0",
                 "podman0", "flannel.1", "cali1234", "vxlan.calico", "tun0", "tap0", "wg0", "tailscale0",
                 "ztabcdef12"):
        iface = Interface(name, ("198.51.100.20",), kind="virtual")
        assert choose_addresses([iface], name).addresses == (), name
    # A LAN bridge named like OpenWrt's is not a docker network.
    assert choose_addresses([Interface("br-lan", ("192.0.2.1",), kind="bridge")], "br-lan").addresses


def test_default_route_interface_first_then_physical_then_virtual_by_name() -> None:
    bond = Interface("bond0", ("192.0.2.30",), kind="virtual")
    eth1 = Interface("eth1", ("192.0.2.40",), kind="physical")
    choice = choose_addresses([bond, eth1, ETH0, WLAN0], "wlan0")
    assert choice.addresses == ("198.51.100.7", "192.0.2.2", "192.0.2.40", "192.0.2.30")


def test_down_interfaces_and_ipv4_bind_family() -> None:
    down = Interface("eth1", ("192.0.2.50",), up=False, kind="physical")
    choice = choose_addresses([ETH0, down], "eth0")
    assert choice.addresses == ("192.0.2.2",)
    assert ("eth1", "down") in choice.skipped


def test_dual_stack_bind_adds_global_ipv6_never_link_local_or_loopback() -> None:
    for bind in ("::", ""):
        choice = choose_addresses(PI_WITH_DOCKER, "eth0", bind=bind)
        assert choice.addresses == ("192.0.2.2", "2001:db8::2")


def test_ipv4_link_local_only_when_nothing_else_qualifies() -> None:
    apipa = Interface("eth1", ("169.254.10.20",), kind="physical")
    assert choose_addresses([ETH0, apipa], "eth0").addresses == ("192.0.2.2",)
    assert choose_addresses([apipa, DOCKER0], None).addresses == ("169.254.10.20",)


def test_specific_bind_is_the_only_address() -> None:
    choice = choose_addresses(PI_WITH_DOCKER, "eth0", bind="192.0.2.2")
    assert choice.addresses == ("192.0.2.2",) and "gateway.bind" in choice.reason


def test_mdns_interface_takes_only_that_interface() -> None:
    choice = choose_addresses([*PI_WITH_DOCKER, WLAN0], "eth0", only_interface="wlan0")
    assert choice.addresses == ("198.51.100.7",)
    assert "gateway.mdns_interface" in choice.describe()
    # The user's choice wins over the automatic skips, but loopback and link-local stay out.
    assert choose_addresses(PI_WITH_DOCKER, "eth0", only_interface="docker0").addresses == ("172.17.0.1",)
    assert choose_addresses(PI_WITH_DOCKER, "eth0", only_interface="veth1a2b3c4", bind="::").addresses == ()
    missing = choose_addresses(PI_WITH_DOCKER, "eth0", only_interface="eth9")
    assert missing.addresses == () and "eth9" in missing.describe()


def test_mdns_addresses_override_everything() -> None:
    choice = choose_addresses(
        PI_WITH_DOCKER,
        "eth0",
        bind="192.0.2.2",
        explicit=["198.51.100.7", "2001:DB8::7", "198.51.100.7"],
        only_interface="eth0",
    )
    assert choice.addresses == ("198.51.100.7", "2001:db8::7")
    assert "gateway.mdns_addresses" in choice.describe()


# --- properties -------------------------------------------------------------------------------------

_NAMES = ["lo", "eth0", "eth1", "wlan0", "end0", "br0", "bond0", "docker0", "docker_gwbridge",
          "br-0123456789ab", "veth9f8e7d6", "virbr0", "cni0", "tun0", "wg0", "services0"]
_ADDRESSES = ["192.0.2.2", "192.0.2.3", "198.51.100.7", "172.17.0.1", "172.19.0.1", "127.0.0.1",
              "169.254.3.4", "::1", "fe80::1", "fe80::2", "2001:db8::2", "2001:db8::3", "fd00::5"]
_KINDS = ["physical", "bridge", "bridge-port", "tunnel", "virtual", "unknown"]
_CONTAINER = {"docker0", "docker_gwbridge", "br-0123456789ab", "veth9f8e7d6", "virbr0", "cni0", "tun0", "wg0"}

_interfaces = st.lists(
    st.builds(
        Interface,
        name=st.sampled_from(_NAMES),
        addresses=st.lists(st.sampled_from(_ADDRESSES), max_size=4).map(tuple),
        up=st.booleans(),
        loopback=st.booleans(),
        kind=st.sampled_from(_KINDS),
    ),
    max_size=8,
    unique_by=lambda iface: iface.name,
)


def _qualifies(iface: Interface, default_route: str | None) -> bool:
    if not iface.up or iface.loopback or iface.name in _CONTAINER:
        return False
    if iface.kind in ("bridge-port", "tunnel"):
        return False
    return iface.kind != "bridge" or iface.name == default_route


@settings(max_examples=300, deadline=None)
@given(_interfaces, st.sampled_from([None, *_NAMES]), st.sampled_from(["0.0.0.0", "::"]), st.randoms())
def test_choice_is_deterministic_and_never_loopback_link_local_or_bridge(
    interfaces: list[Interface], default_route: str | None, bind: str, rnd: random.Random
) -> None:
    choice = choose_addresses(interfaces, default_route, bind=bind)
    shuffled = [
        Interface(i.name, tuple(rnd.sample(i.addresses, len(i.addresses))), i.up, i.loopback, i.kind)
        for i in rnd.sample(interfaces, len(interfaces))
    ]
    assert choose_addresses(shuffled, default_route, bind=bind) == choice
    assert len(set(choice.addresses)) == len(choice.addresses)
    allowed = {a for i in interfaces if _qualifies(i, default_route) for a in i.addresses}
    for text in choice.addresses:
        addr = ipaddress.ip_address(text)
        assert not addr.is_loopback
        assert not (addr.version == 6 and addr.is_link_local)
        assert bind == "::" or addr.version == 4
        assert text in allowed, (text, choice)
    assert "\n" not in choice.describe()


# --- readers of /sys and /proc ----------------------------------------------------------------------


def test_interface_kind_from_sysfs(tmp_path: Path) -> None:
    for name, marker in (("docker0", "bridge"), ("veth1", "brport"), ("eth0", "device"), ("tun0", "tun_flags")):
        (tmp_path / name).mkdir()
        (tmp_path / name / marker).touch()
    (tmp_path / "dummy0").mkdir()
    assert interface_kind(tmp_path, "docker0") == "bridge"
    assert interface_kind(tmp_path, "veth1") == "bridge-port"
    assert interface_kind(tmp_path, "eth0") == "physical"
    assert interface_kind(tmp_path, "tun0") == "tunnel"
    assert interface_kind(tmp_path, "dummy0") == "virtual"
    assert interface_kind(tmp_path, "missing0") == "unknown"


def test_default_route_lowest_metric_and_ipv6_fallback(tmp_path: Path) -> None:
    route = tmp_path / "route"
    route.write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "wlan0\t00000000\t0102A8C0\t0003\t0\t0\t303\t00000000\t0\t0\t0\n"
        "eth0\t00000000\t0102A8C0\t0003\t0\t0\t202\t00000000\t0\t0\t0\n"
        "docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n"
    )
    route6 = tmp_path / "ipv6_route"
    route6.write_text(
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
        "fe800000000000000000000000000001 00000400 00000001 00000000 00000003 end0\n"
    )
    assert default_route_interface(route, route6) == "eth0"
    assert default_route_interface(tmp_path / "missing", route6) == "end0"
    assert default_route_interface(tmp_path / "missing", tmp_path / "missing") is None


def test_temporary_deprecated_and_tentative_ipv6_are_not_stable(tmp_path: Path) -> None:
    inet6 = tmp_path / "if_inet6"
    inet6.write_text(
        "20010db8000000000000000000000002 02 40 00 80     eth0\n"  # permanent
        "20010db8000000001111222233334444 02 40 00 01     eth0\n"  # temporary (privacy)
        "20010db8000000000000000000000009 02 40 00 20     eth0\n"  # deprecated
        "20010db800000000000000000000000a 02 40 00 40     eth0\n"  # tentative (DAD)
        "fe800000000000000000000000000001 02 40 20 80     eth0\n"
    )
    assert stable_ipv6(inet6) == {"2001:db8::2", "fe80::1"}
    assert stable_ipv6(tmp_path / "missing") is None


# --- the settings -----------------------------------------------------------------------------------


def test_mdns_settings_from_file_environment_and_validation(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[gateway]\nmdns_interface = "eth0"\nmdns_addresses = ["192.0.2.2", "2001:db8::2"]\n')
    gateway = load_config(path, environ={}).gateway
    assert gateway.mdns_interface == "eth0" and gateway.mdns_addresses == ["192.0.2.2", "2001:db8::2"]
    env = {"RENOGY_MDNS_ADDRESSES": "198.51.100.7, 192.0.2.2", "RENOGY_MDNS_INTERFACE": "end0"}
    gateway = load_config(path, environ=env).gateway
    assert gateway.mdns_interface == "end0" and gateway.mdns_addresses == ["198.51.100.7", "192.0.2.2"]
    assert load_config(None, environ=env_for({"gateway.mdns_addresses": ["198.51.100.7", "::1"]})).gateway == (
        load_config(None, environ={"RENOGY_MDNS_ADDRESSES": "198.51.100.7,::1"}).gateway
    )
    defaults = load_config(None, environ={}).gateway
    assert defaults.mdns_interface is None and defaults.mdns_addresses == []
    for env, key in (
        ({"RENOGY_MDNS_ADDRESSES": "192.0.2.2,lan"}, "gateway.mdns_addresses"),
        ({"RENOGY_MDNS_INTERFACE": "eth0 eth1"}, "gateway.mdns_interface"),
        ({"RENOGY_MDNS_INTERFACE": "a-very-long-interface"}, "gateway.mdns_interface"),
    ):
        with pytest.raises(ConfigError, match=key):
            load_config(None, environ=env)
