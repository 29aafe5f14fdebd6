"""Node MAC resolution and the key store."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from services.gateway.identity import (
    MAC_FILE,
    derive_bluetooth_mac,
    host_nic_mac,
    parse_mac,
    resolve_node_mac,
)
from services.gateway.keystore import KeySource, KeyStore, new_key_text
from shared.noise_key import InvalidKeyError, decode_key


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
