"""Noise encryption with the real client: right key, wrong key, mismatches, and key provisioning."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest
from aioesphomeapi.client import APIClient
from aioesphomeapi.core import (
    EncryptionPlaintextAPIError,
    InvalidEncryptionKeyAPIError,
    RequiresEncryptionAPIError,
)

from services.gateway.keystore import KEY_FILE, new_key_text
from services.gateway.mdns import MdnsAnnouncer
from tests.conftest import Broker
from tests.gateway.support import (
    all_configs,
    api_client,
    gateway_config,
    publish_devices,
    running_gateway,
    wait_entities,
    wait_until,
)
from tests.support.probe import MqttProbe


async def _expect(error: type[Exception], port: int, noise_psk: str | None) -> Exception:
    client = APIClient("127.0.0.1", port, None, noise_psk=noise_psk, client_info="pytest")
    with pytest.raises(error) as info:
        await client.connect(login=True)
    return info.value


async def test_noise_right_and_wrong_key(mosquitto: Broker, tmp_path: Path) -> None:
    key = new_key_text()
    config = gateway_config(mosquitto.url, tmp_path, api_key=key, name="noise-node")
    async with MqttProbe(mosquitto.url) as probe:
        publish_devices(probe, all_configs())
        async with running_gateway(config) as gateway:
            await wait_entities(gateway, 55)
            async with api_client(gateway.port, noise_psk=key) as client:
                info = await client.device_info()
                assert info.name == "noise-node"
                entities, _ = await client.list_entities_services()
                assert len(entities) == 55
                states: list[object] = []
                client.subscribe_states(states.append)
                # Refusing a new key while one is configured (config beats provisioning).
                assert await client.noise_encryption_set_key(new_key_text().encode()) is False
            wrong = await _expect(InvalidEncryptionKeyAPIError, gateway.port, new_key_text())
            assert wrong.received_name == "noise-node"  # type: ignore[attr-defined]
            assert wrong.received_mac == "02aabbccddee"  # type: ignore[attr-defined]
            await _expect(RequiresEncryptionAPIError, gateway.port, None)
            health = gateway.health()
            assert health["handshake_failures"] == 2
            # The server kept serving after the failures.
            async with api_client(gateway.port, noise_psk=key) as client:
                assert (await client.device_info()).mac_address == "02:AA:BB:CC:DD:EE"


async def test_noise_client_against_plaintext_server(mosquitto: Broker, tmp_path: Path) -> None:
    async with running_gateway(gateway_config(mosquitto.url, tmp_path)) as gateway:
        await _expect(EncryptionPlaintextAPIError, gateway.port, new_key_text())


async def test_key_provisioning_persists_and_switches_to_noise(mosquitto: Broker, tmp_path: Path) -> None:
    config = gateway_config(mosquitto.url, tmp_path)
    key = new_key_text()
    async with running_gateway(config) as gateway:
        async with api_client(gateway.port) as client:
            assert (await client.device_info()).api_encryption_supported
            assert await client.noise_encryption_set_key(key.encode()) is True
            # The session that provisioned stays usable.
            assert (await client.device_info()).name == config.gateway.name
        path = tmp_path / KEY_FILE
        assert path.read_text().strip() == key
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        await _expect(RequiresEncryptionAPIError, gateway.port, None)
        async with api_client(gateway.port, noise_psk=key) as client:
            assert (await client.device_info()).name == config.gateway.name
    # After a restart the provisioned key still applies.
    async with running_gateway(config) as gateway:
        await _expect(RequiresEncryptionAPIError, gateway.port, None)
        async with api_client(gateway.port, noise_psk=key) as client:
            entities, _ = await client.list_entities_services()
            assert entities == []


async def test_provisioning_moves_clients_to_noise_then_announces_it(
    mosquitto: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Home Assistant provisions mid-setup: nothing changes until it is set up, then it is moved.

    As ESPHome does, the plaintext session is asked to disconnect once the provisioning client has
    subscribed to states (Home Assistant reconnects with the key it stored). The TXT record changes
    only after an encrypted session is set up: a TXT change makes Home Assistant's discovery re-check
    the entry, and a host change then reloads the entry, which fails during a setup.
    """
    txt_updates: list[dict[str, str]] = []

    async def record(self: MdnsAnnouncer, txt: dict[str, str]) -> None:
        txt_updates.append(txt)

    monkeypatch.setattr(MdnsAnnouncer, "start", lambda self: None)  # no real multicast from a test
    monkeypatch.setattr(MdnsAnnouncer, "update", record)
    config = gateway_config(mosquitto.url, tmp_path, mdns=True)
    key = new_key_text()
    async with running_gateway(config) as gateway:
        disconnected = asyncio.Event()
        client = APIClient("127.0.0.1", gateway.port, None, client_info="pytest")
        await client.connect(on_stop=lambda expected: _set(disconnected), login=True)
        assert await client.noise_encryption_set_key(key.encode()) is True
        await client.device_info()  # a round trip: the server has handled everything before it
        assert txt_updates == [], "TXT changed while the provisioning client was still setting up"
        assert not disconnected.is_set()
        client.subscribe_states(lambda state: None)
        async with asyncio.timeout(10):
            await disconnected.wait()  # the gateway asked the plaintext session to go
        assert txt_updates == []
        async with api_client(gateway.port, noise_psk=key) as encrypted:
            encrypted.subscribe_states(lambda state: None)
            await wait_until(lambda: txt_updates, what="the TXT update once an encrypted session is set up")
        assert "api_encryption" in txt_updates[0] and "api_encryption_supported" not in txt_updates[0]


async def _set(event: asyncio.Event) -> None:
    event.set()


async def test_mdns_update_after_the_provisioner_leaves(
    mosquitto: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    txt_updates: list[dict[str, str]] = []

    async def record(self: MdnsAnnouncer, txt: dict[str, str]) -> None:
        txt_updates.append(txt)

    monkeypatch.setattr(MdnsAnnouncer, "start", lambda self: None)
    monkeypatch.setattr(MdnsAnnouncer, "update", record)
    config = gateway_config(mosquitto.url, tmp_path, mdns=True)
    async with running_gateway(config) as gateway:
        async with api_client(gateway.port) as client:
            assert await client.noise_encryption_set_key(new_key_text().encode()) is True
        # No plaintext session is left to move: the record changes at once.
        await wait_until(lambda: txt_updates, what="the TXT update after the client left")
