"""The active Bluetooth proxy end to end: reader on the simulator + gateway + Home Assistant's client.

The client side is built the way Home Assistant's esphome integration builds it: an aioesphomeapi
``APIClient``, ``bleak_esphome.connect_scanner`` (scanner, connection-slot tracking, raw advertisements)
and bleak's ``BleakClient`` on the ``ESPHomeClient`` backend (habluetooth's connector does the same
``partial(ESPHomeClient, client_data=...)``). habluetooth's manager is created but not set up: its
``async_setup`` patches bleak process-wide, which would also reroute the reader's own connections.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aioesphomeapi.client import APIClient
from bleak import BleakClient
from bleak.backends.device import BLEDevice
from bleak_esphome import connect_scanner
from bleak_esphome.backend.client import ESPHomeClient, ESPHomeClientData
from habluetooth import BluetoothManager, set_manager

from services.gateway.service import Gateway
from services.reader.service import Backends, Reader
from services.reader.simulate import SIM_ADAPTER_ADDRESS
from services.simulator import (
    BankSimulator,
    SimBT2Client,
    SimConfig,
    SimScanner,
    register_simulator,
    unregister_simulator,
)
from services.simulator.devices import (
    SimPeripheral,
    SimPeripheralClient,
    register_peripheral,
    stream_device,
    thermometer,
    unregister_peripheral,
)
from shared.config import Config, load_config
from tests.gateway.support import wait_until
from tests.support.brokers import free_port

THERMOMETER = "A4:C1:38:AA:00:01"
STREAMER = "C8:11:22:33:44:55"


def stack_config(broker_url: str, state_dir: Path, **overrides: Any) -> Config:
    values: dict[str, Any] = {
        "mqtt.url": broker_url,
        "state_dir": str(state_dir),
        "gateway.api_port": free_port(),
        "gateway.bind": "127.0.0.1",
        "gateway.mdns": False,
        "gateway.mac": "02:AA:BB:CC:DD:EE",
        "reader.request_timeout": 0.3,
        "reader.connect_timeout": 2.0,
        "reader.scan_timeout": 2.0,
        "reader.batteries": [48, 49],
        "log_level": "debug",
    }
    values.update(overrides)
    return load_config(None, environ={}, overrides=values)


@dataclass
class ProxyStack:
    config: Config
    reader: Reader
    gateway: Gateway
    sim: BankSimulator
    thermometer: SimPeripheral
    streamer: SimPeripheral


@contextlib.asynccontextmanager
async def proxy_stack(
    broker_url: str, state_dir: Path, *, sim: SimConfig | None = None, **overrides: Any
) -> AsyncIterator[ProxyStack]:
    """Reader (simulated BT-2 + two connectable peripherals) and gateway on one broker, both started."""
    config = stack_config(broker_url, state_dir, **overrides)
    bank = BankSimulator.from_config(
        sim or SimConfig(batteries=(48, 49), latency_scale=0.05, advert_interval=0.1)
    )
    register_simulator(bank)
    therm = thermometer(THERMOMETER, latency_scale=0.2, advert_interval=0.1, notify_interval=0.05)
    stream = stream_device(STREAMER, latency_scale=0.2, advert_interval=0.1)
    for peripheral in (therm, stream):
        register_peripheral(peripheral)
    reader = Reader(
        config,
        Backends(SimBT2Client, SimScanner, SIM_ADAPTER_ADDRESS, bank, proxy_client=SimPeripheralClient),
    )
    gateway = Gateway(config, relist_delay=0.3, flush_interval=0.05)
    try:
        await reader.start()
        await gateway.start()
        assert await reader.runtime.mqtt.wait_subscribed(10)
        assert await gateway.runtime.mqtt.wait_subscribed(10)
        await wait_until(lambda: gateway.gatt_proxy and gateway.gatt_proxy.slots, what="the reader's slots")
        yield ProxyStack(config, reader, gateway, bank, therm, stream)
    finally:
        await gateway.stop()
        await reader.shutdown()
        for peripheral in (therm, stream):
            unregister_peripheral(peripheral)
        unregister_simulator(bank)
        bank.close()


@dataclass
class HaSide:
    """One Home Assistant's view of the proxy: the API client, the scanner and its connection slots."""

    cli: APIClient
    data: ESPHomeClientData
    cancel_scanner: Any

    @property
    def device(self) -> Any:
        return self.data.bluetooth_device

    def ble_device(self, address: str, name: str = "") -> BLEDevice:
        """The device as the scanner heard it (the details HA's connector passes on), or made up."""
        scanner = self.data.scanner
        assert scanner is not None
        seen = scanner.discovered_devices_and_advertisement_data.get(address)
        if seen is not None:
            return seen[0]
        return BLEDevice(address, name, {"source": scanner.source, "address_type": 0})

    def bleak_client(self, address: str, **kwargs: Any) -> BleakClient:
        data = self.data

        class HaESPHomeClient(ESPHomeClient):  # habluetooth binds client_data with a partial
            def __init__(self, *args: Any, **kw: Any) -> None:
                super().__init__(*args, client_data=data, **kw)

        return BleakClient(self.ble_device(address), backend=HaESPHomeClient, timeout=10.0, **kwargs)


@contextlib.asynccontextmanager
async def home_assistant(port: int, name: str = "Home Assistant 2026.3.0") -> AsyncIterator[HaSide]:
    set_manager(BluetoothManager())
    cli = APIClient("127.0.0.1", port, None, client_info=name)
    await cli.connect(login=True)
    try:
        info = await cli.device_info()
        data = connect_scanner(cli, info, available=True)
        assert data.scanner is not None
        cancel = data.scanner.async_setup()
        try:
            yield HaSide(cli, data, cancel)
        finally:
            cancel()
    finally:
        with contextlib.suppress(Exception):
            await cli.disconnect()
