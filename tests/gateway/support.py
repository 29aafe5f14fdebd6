"""Helpers for the gateway tests: the aggregator's device documents, a configured gateway, a real client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from aioesphomeapi.client import APIClient

from services.gateway.bluetooth import BluetoothHub
from services.gateway.identity import parse_mac
from services.gateway.keystore import KeyStore
from services.gateway.registry import Registry
from services.gateway.server import GatewayServer, NodeInfo
from services.gateway.service import Gateway
from shared.config import Config, load_config
from shared.payloads import DeviceConfig, DeviceInfo, DeviceState, EntitySpec
from shared.topics import Topics
from tests.support.brokers import free_port
from tests.support.probe import MqttProbe

SLAVES = (48, 49, 50, 51)
TOPICS = Topics()

# (key, name, unit, device_class, state_class, accuracy) exactly as the aggregator's default profile.
_BATTERY = (
    ("power", "Power", "W", "power", "measurement", 1),
    ("voltage", "Voltage", "V", "voltage", "measurement", 2),
    ("current", "Current", "A", "current", "measurement", 2),
    ("battery_level", "Battery level", "%", "battery", "measurement", 1),
    ("capacity", "Capacity", "Ah", None, "measurement", 1),
    ("remaining_charge", "Remaining charge", "Ah", None, "measurement", 2),
    ("energy_in", "Energy in", "kWh", "energy", "total_increasing", 3),
    ("energy_out", "Energy out", "kWh", "energy", "total_increasing", 3),
    ("cell_voltage_min", "Cell voltage min", "V", "voltage", "measurement", 3),
    ("cell_voltage_max", "Cell voltage max", "V", "voltage", "measurement", 3),
    ("temperature_min", "Temperature min", "°C", "temperature", "measurement", 1),
    ("temperature_max", "Temperature max", "°C", "temperature", "measurement", 1),
)
_BANK_KEYS = ("power", "current", "capacity", "remaining_charge", "battery_level", "energy_in", "energy_out")
BATTERY_SPECS = {row[0]: row for row in _BATTERY}


def _spec(row: tuple[Any, ...]) -> EntitySpec:
    key, name, unit, device_class, state_class, accuracy = row
    return EntitySpec(
        key=key, name=name, unit=unit, device_class=device_class, state_class=state_class, accuracy=accuracy
    )


def battery_config(slave: int) -> DeviceConfig:
    info = DeviceInfo(
        id=f"battery_{slave}",
        name=f"Battery {slave}",
        model="RBT50LFP48S",
        manufacturer="Renogy",
        serial=f"22RBH4A0510200{slave:02d}",
        via_device="bank",
    )
    return DeviceConfig(info, tuple(_spec(row) for row in _BATTERY))


def bank_config(slaves: Iterable[int] = SLAVES) -> DeviceConfig:
    info = DeviceInfo(
        id="bank", name="Battery Bank", model=f"{len(list(slaves))} x RBT50LFP48S", manufacturer="Renogy"
    )
    return DeviceConfig(info, tuple(_spec(BATTERY_SPECS[key]) for key in _BANK_KEYS))


def all_configs(slaves: Iterable[int] = SLAVES) -> list[DeviceConfig]:
    slaves = tuple(slaves)
    return [*(battery_config(s) for s in slaves), bank_config(slaves)]


def battery_state(
    slave: int, *, missing: Iterable[str] = ("temperature_max",), offset: float = 0.0
) -> DeviceState:
    values: dict[str, float | bool | None] = {
        "power": -170.8 + offset,
        "voltage": 52.4,
        "current": -3.26,
        "battery_level": 99.7,
        "capacity": 50.0,
        "remaining_charge": 49.84,
        "energy_in": 1.234,
        "energy_out": 0.5,
        "cell_voltage_min": 3.27,
        "cell_voltage_max": 3.29,
        "temperature_min": 13.0,
        "temperature_max": 14.0,
    }
    for key in missing:
        values[key] = None
    return DeviceState(1795524654.3, values)


def publish_devices(probe: MqttProbe, configs: Iterable[DeviceConfig], *, states: bool = True) -> None:
    for config in configs:
        ref = config.device.id
        probe.publish(TOPICS.device_config(ref), config.to_payload(), retain=True)
        if states and ref.startswith("battery_"):
            state = battery_state(int(ref.split("_")[1]))
            probe.publish(TOPICS.device_state(ref), state.to_payload(), retain=True)


def gateway_config(broker_url: str, state_dir: Path, **gateway: Any) -> Config:
    overrides: dict[str, Any] = {
        "mqtt.url": broker_url,
        "state_dir": str(state_dir),
        "gateway.api_port": free_port(),
        "gateway.bind": "127.0.0.1",
        "gateway.mdns": False,
        "gateway.mac": "02:AA:BB:CC:DD:EE",
        "log_level": "debug",
    }
    overrides.update({f"gateway.{k}": v for k, v in gateway.items()})
    return load_config(None, environ={}, overrides=overrides)


@contextlib.asynccontextmanager
async def running_gateway(config: Config, **kwargs: Any) -> AsyncIterator[Gateway]:
    kwargs.setdefault("relist_delay", 0.3)
    gateway = Gateway(config, **kwargs)
    await gateway.start()
    try:
        assert await gateway.runtime.mqtt.wait_subscribed(10), "gateway did not reach the broker"
        yield gateway
    finally:
        await gateway.stop()


async def wait_until(predicate: Any, within: float = 10.0, what: str = "condition") -> Any:
    """Poll a predicate on the event loop (for state kept by the gateway itself)."""
    async with asyncio.timeout(within):
        while True:
            result = predicate()
            if result:
                return result
            await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")  # pragma: no cover


async def wait_entities(gateway: Gateway, count: int) -> None:
    await wait_until(lambda: gateway.registry.entity_count == count, what=f"{count} entities")


@contextlib.asynccontextmanager
async def api_client(
    port: int, *, noise_psk: str | None = None, login: bool = True, **kwargs: Any
) -> AsyncIterator[APIClient]:
    client = APIClient("127.0.0.1", port, None, noise_psk=noise_psk, client_info="pytest", **kwargs)
    await client.connect(login=login)
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()


@contextlib.asynccontextmanager
async def bare_server(
    tmp_path: Path,
    *,
    configs: Iterable[DeviceConfig] = (),
    api_key: str | None = None,
    port: int = 0,
    **kwargs: Any,
) -> AsyncIterator[GatewayServer]:
    """The API server alone (no MQTT): registry filled directly, for socket-level tests."""
    registry = Registry()
    for config in configs:
        registry.set_config(config.device.id, config)
        if config.device.id.startswith("battery_"):
            registry.set_state(config.device.id, battery_state(int(config.device.id.split("_")[1])))
    keystore = KeyStore(api_key, tmp_path)
    hub = BluetoothHub(flush_interval=kwargs.pop("flush_interval", 0.05))
    node = NodeInfo(name="bare-node", friendly_name="Bare", mac=parse_mac("02:AA:BB:CC:DD:EE"))
    server = GatewayServer(node, registry, keystore, hub, **kwargs)
    await server.start("127.0.0.1", port)
    try:
        yield server
    finally:
        await server.stop(grace=0.5)
