"""Node identity (MAC, name per gateway.instance) and the key store."""

from __future__ import annotations

import base64
import re
import stat
from pathlib import Path

import pytest

from services.gateway.identity import (
    MAC_FILE,
    Mac,
    derive_bluetooth_mac,
    host_nic_mac,
    parse_mac,
    resolve_node_mac,
)
from services.gateway.keystore import KeySource, KeyStore, new_key_text
from services.gateway.mdns import MdnsAnnouncer
from shared.config import load_config
from shared.noise_key import InvalidKeyError, decode_key
from tests.conftest import Broker
from tests.gateway.support import running_gateway
from tests.support.brokers import free_port


def _fake_sys(tmp_path: Path) -> tuple[Path, Path]:
    net = tmp_path / "net"
    for name, mac, physical in (
        ("lo", "00:00:00:00:00:00", False),
        ("docker0", "02:42:ac:11:00:01", False),
        ("eth0", "52:54:00:12:34:56", True),
        ("wlan0", "dc:a6:32:00:00:01", True),
    ):
        (net / name).mkdir(parents=True)
        (net / name / "address").write_text(mac + "\n")
        if physical:
            (net / name / "device").mkdir()
    route = tmp_path / "route"
    route.write_text("Iface\tDestination\tGateway\nwlan0\t00000000\t0102A8C0\n")
    return net, route


def test_mac_formats() -> None:
    mac = parse_mac("ac:bc:32:89:0e:a9")
    assert mac.colon_upper == "AC:BC:32:89:0E:A9"
    assert mac.hex_lower == "acbc32890ea9"
    assert parse_mac("ACBC32890EA9") == mac
    with pytest.raises(ValueError):
        parse_mac("not a mac")


def test_host_nic_prefers_default_route(tmp_path: Path) -> None:
    net, route = _fake_sys(tmp_path)
    assert host_nic_mac(net, route) == parse_mac("dc:a6:32:00:00:01")
    assert host_nic_mac(net, tmp_path / "missing") == parse_mac("52:54:00:12:34:56")


def test_resolution_order_and_persistence(tmp_path: Path) -> None:
    net, route = _fake_sys(tmp_path)
    mac, source = resolve_node_mac("02:11:22:33:44:55", "node", tmp_path, sys_net=net, proc_route=route)
    assert mac == parse_mac("02:11:22:33:44:55") and "config" in source
    mac, source = resolve_node_mac(None, "node", tmp_path, sys_net=net, proc_route=route)
    assert mac == parse_mac("dc:a6:32:00:00:01") and "interface" in source
    empty = tmp_path / "empty"
    empty.mkdir()
    first, source = resolve_node_mac(None, "node", tmp_path / "state", sys_net=empty, proc_route=route)
    assert "derived" in source
    assert first.raw[0] & 0x02 and not first.raw[0] & 0x01  # locally administered unicast
    assert (tmp_path / "state" / MAC_FILE).exists()
    again, source = resolve_node_mac(None, "other-name", tmp_path / "state", sys_net=empty, proc_route=route)
    assert again == first and "persisted" in source
    assert derive_bluetooth_mac(first) != first


def test_default_instance_keeps_todays_identity(tmp_path: Path) -> None:
    """Existing Home Assistant entries are keyed on these values: pinned as they were before instances."""
    net, route = _fake_sys(tmp_path)
    gateway = load_config(None, environ={}).gateway
    assert (gateway.instance, gateway.name, gateway.friendly_name) == ("default", "renogy-bt-proxy", "Renogy BT Proxy")
    mac, _ = resolve_node_mac(gateway.mac, gateway.name, tmp_path / "state", sys_net=net, proc_route=route)
    assert mac == parse_mac("DC:A6:32:00:00:01")  # the default-route NIC, unchanged
    assert derive_bluetooth_mac(mac) == parse_mac("CE:DF:CA:F7:DF:A7")
    empty = tmp_path / "empty"
    empty.mkdir()
    derived, _ = resolve_node_mac(None, gateway.name, tmp_path / "fresh", sys_net=empty, proc_route=route)
    assert derived == parse_mac("6E:D1:5D:3D:30:5D")  # no NIC: derived from the node name, as before
    assert derive_bluetooth_mac(derived) == parse_mac("EE:7F:F8:06:BA:12")


def _identity(environ: dict[str, str], state: Path, net: Path, route: Path) -> tuple[str, str, Mac, str]:
    gateway = load_config(None, environ=environ).gateway
    mac, source = resolve_node_mac(
        gateway.mac, gateway.name, state, instance=gateway.instance, sys_net=net, proc_route=route
    )
    return gateway.name, gateway.friendly_name, mac, source


def test_two_instances_on_one_host_are_two_devices(tmp_path: Path) -> None:
    """Issue 10 item 5: a second gateway on the same host must not share the NIC's MAC and name."""
    net, route = _fake_sys(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    for sys_net in (net, empty):  # from the host NIC, and from the persisted derived MAC
        state = tmp_path / f"state-{sys_net.name}"
        default = _identity({}, state, sys_net, route)
        garage = _identity({"RENOGY_GATEWAY_INSTANCE": "garage"}, state, sys_net, route)
        assert garage[0] == "renogy-bt-proxy-garage" and garage[1] == "Renogy BT Proxy (garage)"
        assert default[0] == "renogy-bt-proxy"
        assert garage[2] != default[2]
        assert garage[2].raw[0] & 0x02 and not garage[2].raw[0] & 0x01  # locally administered unicast
        assert "garage" in garage[3]
        assert derive_bluetooth_mac(garage[2]) != derive_bluetooth_mac(default[2])
        assert _identity({"RENOGY_GATEWAY_INSTANCE": "garage"}, state, sys_net, route) == garage  # restart
        shed = _identity({"RENOGY_GATEWAY_INSTANCE": "shed"}, state, sys_net, route)
        assert len({default[2], garage[2], shed[2]}) == 3
    assert _identity({}, tmp_path / "state-net", net, route)[2] == parse_mac("DC:A6:32:00:00:01")


def test_explicit_name_and_mac_win_for_any_instance(tmp_path: Path) -> None:
    net, route = _fake_sys(tmp_path)
    env = {"RENOGY_GATEWAY_INSTANCE": "garage", "RENOGY_NAME": "renogy-bt-proxy", "RENOGY_FRIENDLY_NAME": "Garage"}
    name, friendly, _, _ = _identity(env, tmp_path, net, route)
    assert (name, friendly) == ("renogy-bt-proxy", "Garage")
    env = {"RENOGY_GATEWAY_INSTANCE": "garage", "RENOGY_MAC": "02:11:22:33:44:55"}
    assert _identity(env, tmp_path, net, route)[2] == parse_mac("02:11:22:33:44:55")


def test_instance_names_become_valid_node_names(tmp_path: Path) -> None:
    net, route = _fake_sys(tmp_path)
    names = set()
    for instance in ("Garage_2", "a" * 64, "a" * 63 + "b", "x"):
        name = _identity({"RENOGY_GATEWAY_INSTANCE": instance}, tmp_path, net, route)[0]
        assert re.fullmatch(r"[a-z0-9-]{1,31}", name), name
        names.add(name)
    assert len(names) == 4
    assert "renogy-bt-proxy-garage-2" in names


async def test_keystore_precedence_and_provisioning(tmp_path: Path) -> None:
    store = KeyStore(None, tmp_path)
    store.load()
    assert not store.encryption_required
    assert store.source.value == "none"
    key = new_key_text()
    assert await store.provision(key.encode())
    assert store.psk == decode_key(key) and store.source is KeySource.PROVISIONED
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert not await store.provision(base64.b64encode(bytes(32)))  # all-zero key refused
    assert not await store.provision(b"short")
    reloaded = KeyStore(None, tmp_path)
    reloaded.load()
    assert reloaded.psk == decode_key(key)
    configured = new_key_text()
    wins = KeyStore(configured, tmp_path)
    wins.load()
    assert wins.psk == decode_key(configured) and wins.source is KeySource.CONFIG
    assert not await wins.provision(new_key_text().encode())
    assert await reloaded.provision(b"")
    assert not reloaded.path.exists() and reloaded.psk is None


def test_keygen_text_is_a_valid_key() -> None:
    assert len(decode_key(new_key_text())) == 32
    with pytest.raises(InvalidKeyError):
        KeyStore(base64.b64encode(bytes(32)).decode(), Path("/nonexistent"))


def test_mdns_txt_records() -> None:
    from services.gateway.mdns import build_txt

    mac = parse_mac("AC:BC:32:89:0E:A9")
    common = {
        "mac": mac,
        "friendly_name": "Renogy",
        "esphome_version": "2026.10.0",
        "project_name": "renogy.bt_esphome_proxy",
        "project_version": "0.1.0",
    }
    plain = build_txt(**common, encrypted=False)  # type: ignore[arg-type]
    assert plain["mac"] == "acbc32890ea9"
    assert plain["api_encryption_supported"] == "Noise_NNpsk0_25519_ChaChaPoly_SHA256"
    assert "api_encryption" not in plain
    keyed = build_txt(**common, encrypted=True)  # type: ignore[arg-type]
    assert keyed["api_encryption"] == "Noise_NNpsk0_25519_ChaChaPoly_SHA256"
    assert "api_encryption_supported" not in keyed
    assert keyed["version"] == "2026.10.0" and keyed["friendly_name"] == "Renogy"


async def test_two_gateways_on_this_host_serve_two_identities(
    mosquitto: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service wiring: instance, name, MAC and the mDNS settings reach the server and announcer."""
    monkeypatch.setattr(MdnsAnnouncer, "start", lambda self: None)  # no real multicast from a test
    nodes = []
    for instance in ("default", "garage"):
        config = load_config(
            None,
            environ={},
            overrides={
                "mqtt.url": mosquitto.url,
                "state_dir": str(tmp_path),
                "gateway.instance": instance,
                "gateway.api_port": free_port(),
                "gateway.bind": "127.0.0.1",
                "gateway.mdns_interface": "lan0",
                "gateway.mdns_addresses": ["198.51.100.7"],
            },
        )
        async with running_gateway(config) as gateway:
            assert gateway.server is not None and gateway.mdns is not None
            assert (gateway.mdns.name, gateway.mdns.interface) == (gateway.server.node.name, "lan0")
            assert gateway.mdns.addresses == ("198.51.100.7",)
            nodes.append(gateway.server.node)
    default, garage = nodes
    assert (default.name, garage.name) == ("renogy-bt-proxy", "renogy-bt-proxy-garage")
    assert default.mac != garage.mac
    assert default.friendly_name != garage.friendly_name


async def test_two_instances_on_one_state_dir_keep_their_own_keys(tmp_path: Path) -> None:
    """A key Home Assistant gives one gateway must not become the other's after a restart."""
    default, garage = KeyStore(None, tmp_path), KeyStore(None, tmp_path, "garage")
    key = new_key_text().encode()
    assert await garage.provision(key)
    default.load()
    assert default.psk is None
    reloaded = KeyStore(None, tmp_path, "garage")
    reloaded.load()
    assert reloaded.psk == decode_key(key.decode())
    assert default.path.name == "gateway_api_key"  # today's file: existing installs keep their key
