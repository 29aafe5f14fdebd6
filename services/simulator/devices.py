"""Connectable simulated BLE peripherals (for the active Bluetooth proxy) and their bleak client backend.

Two kinds, both with a GATT table and timing from the BT-2's model (one connection interval per
acknowledged operation, ``connect_time`` to connect, all times multiplied by ``latency_scale``):

- :func:`thermometer`: Environmental Sensing temperature (read + notify, a notification every
  ``notify_interval`` while subscribed), humidity (read), battery level (read), a write-only
  control point (reading it fails with "read not permitted").
- :func:`stream_device`: a Nordic-UART-like device that notifies only after a write: writing
  ``01`` to RX starts a counter stream on TX (``<seq u32><sent_at f64 monotonic>``), ``00`` stops it.

Faults (``SimPeripheral.faults``, consumed one per connect / operation): ``connect_fail``,
``connect_hang``, ``drop_after_connect`` (the link is lost right after it came up), ``read_error``
(the next read fails with an ATT error), ``drop_on_op`` (the link drops during the next operation).
``SimPeripheral.drop_link()`` drops the link at any time.

Use: ``register_peripheral(p)``; the simulator's scanner then hears it advertise (it stops while a
central holds it), and ``BleakClient(address, backend=SimPeripheralClient)`` connects to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from bleak.args import SizedBuffer
from bleak.assigned_numbers import CharacteristicPropertyName
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.service import BleakGATTServiceCollection
from bleak.exc import BleakDBusError, BleakDeviceNotFoundError, BleakError
from bleak.uuids import normalize_uuid_16

from shared.timing import DEFAULT_TIMING, TimingModel

from .adverts import PUBLIC, SimAdvertisement, _advertisement
from .gatt import service_collection
from .link import SimLinkClient

_LOGGER = logging.getLogger(__name__)

CCCD_UUID: Final = normalize_uuid_16(0x2902)
NUS_SERVICE: Final = "6e400001-b5a3-f393-e0a9-e50e24dcca9e"
NUS_RX: Final = "6e400002-b5a3-f393-e0a9-e50e24dcca9e"
NUS_TX: Final = "6e400003-b5a3-f393-e0a9-e50e24dcca9e"
TEMPERATURE_UUID: Final = normalize_uuid_16(0x2A6E)
HUMIDITY_UUID: Final = normalize_uuid_16(0x2A6F)
BATTERY_LEVEL_UUID: Final = normalize_uuid_16(0x2A19)
CONTROL_UUID: Final = "0000aa01-0000-1000-8000-00805f9b34fb"
STREAM_FORMAT: Final = "<Id"
STREAM_START: Final = b"\x01"
STREAM_STOP: Final = b"\x00"
FAULTS: Final = frozenset({"connect_fail", "connect_hang", "drop_after_connect", "read_error", "drop_on_op"})


@dataclass(slots=True)
class CharSpec:
    handle: int  # value handle
    uuid: str
    properties: list[CharacteristicPropertyName]
    value: bytes = b""
    cccd: int | None = None  # handle of its Client Characteristic Configuration descriptor


@dataclass(slots=True)
class ServiceSpec:
    handle: int
    uuid: str
    chars: list[CharSpec]


@dataclass
class SimPeripheral:
    """One connectable device: advertisement, GATT table, behaviour, faults and its current central."""

    address: str
    name: str
    services: list[ServiceSpec]
    kind: str = "generic"
    address_type: str = PUBLIC
    mtu: int = 247
    rssi: int = -65
    timing: TimingModel = DEFAULT_TIMING
    latency_scale: float = 1.0
    connect_time: float = 0.3
    advert_interval: float = 1.0
    notify_interval: float = 0.5
    faults: deque[str] = field(default_factory=deque)
    central: SimPeripheralClient | None = None
    paired: bool = False
    connects: int = 0
    notifications_sent: int = 0
    streaming: bool = False
    on_write: Callable[[SimPeripheral, CharSpec, bytes], None] | None = None
    values: dict[int, bytes] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _seq: int = 0

    def __post_init__(self) -> None:
        self.address = self.address.upper()
        for service in self.services:
            for char in service.chars:
                self.values[char.handle] = char.value
                if char.cccd is not None:
                    self.values[char.cccd] = b"\x00\x00"

    # -- what the radio shows ----------------------------------------------------------------------

    @property
    def interval(self) -> float:
        """One connection interval on this link, in (scaled) seconds."""
        return self.timing.connection_interval * self.latency_scale

    def advertisement(self, rssi: int) -> SimAdvertisement | None:
        """Its advertisement; none while a central holds it (a peripheral stops advertising then)."""
        if self.central is not None:
            return None
        uuids = tuple(s.uuid for s in self.services if s.uuid != normalize_uuid_16(0x1800))[:2]
        return _advertisement(
            self.address, self.address_type, rssi, local_name=self.name, service_uuids=uuids
        )

    def char(self, handle: int) -> CharSpec | None:
        for service in self.services:
            for char in service.chars:
                if char.handle == handle:
                    return char
        return None

    def char_by_uuid(self, uuid: str) -> CharSpec:
        for service in self.services:
            for char in service.chars:
                if char.uuid == uuid:
                    return char
        raise KeyError(uuid)

    def take_fault(self, *kinds: str) -> str | None:
        if self.faults and self.faults[0] in kinds:
            return self.faults.popleft()
        return None

    def drop_link(self) -> None:
        """The radio link is lost (out of range, device reset): the central sees a disconnect."""
        if self.central is not None:
            self.central._link_dropped()

    # -- behaviour ---------------------------------------------------------------------------------

    def subscribed(self, char: CharSpec) -> bool:
        return char.cccd is not None and self.values.get(char.cccd, b"\x00\x00")[:1] in (b"\x01", b"\x02")

    def update_stream(self) -> None:
        """Start or stop the notification task as subscriptions and writes require."""
        want = self.central is not None and self._wants_stream()
        if want and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._stream(), name=f"sim-{self.kind}")
        elif not want and self._task is not None:
            self._task.cancel()
            self._task = None

    def _wants_stream(self) -> bool:
        if self.kind == "thermometer":
            return self.subscribed(self.char_by_uuid(TEMPERATURE_UUID))
        if self.kind == "stream":
            return self.streaming and self.subscribed(self.char_by_uuid(NUS_TX))
        return False

    def _next_value(self) -> tuple[CharSpec, bytes]:
        self._seq += 1
        if self.kind == "thermometer":
            char = self.char_by_uuid(TEMPERATURE_UUID)
            value = struct.pack("<h", 2150 + (self._seq % 20))  # 0.01 °C
            self.values[char.handle] = value
            return char, value
        char = self.char_by_uuid(NUS_TX)
        return char, struct.pack(STREAM_FORMAT, self._seq, time.monotonic())

    async def _stream(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.notify_interval)
                central = self.central
                if central is None:
                    return
                char, value = self._next_value()
                central._notify_later(char.handle, value)
        except asyncio.CancelledError:
            pass

    def disconnected(self) -> None:
        self.central = None
        self.streaming = False
        for service in self.services:
            for char in service.chars:
                if char.cccd is not None:
                    self.values[char.cccd] = b"\x00\x00"
        self.update_stream()


def _u16(value: int) -> str:
    return normalize_uuid_16(value)


def thermometer(address: str, name: str = "Sim Thermometer", **kwargs: Any) -> SimPeripheral:
    """A thermometer: readable + notifying temperature, readable humidity and battery, a write-only char."""
    services = [
        ServiceSpec(0x0001, _u16(0x1800), [CharSpec(0x0003, _u16(0x2A00), ["read"], name.encode())]),
        ServiceSpec(
            0x0010,
            _u16(0x181A),
            [
                CharSpec(0x0012, TEMPERATURE_UUID, ["read", "notify"], struct.pack("<h", 2150), cccd=0x0013),
                CharSpec(0x0015, HUMIDITY_UUID, ["read"], struct.pack("<H", 4800)),
                CharSpec(0x0017, CONTROL_UUID, ["write"], b""),
            ],
        ),
        ServiceSpec(0x0020, _u16(0x180F), [CharSpec(0x0022, BATTERY_LEVEL_UUID, ["read"], b"\x57")]),
    ]
    return SimPeripheral(address, name, services, kind="thermometer", **kwargs)


def _stream_write(peripheral: SimPeripheral, char: CharSpec, data: bytes) -> None:
    if char.uuid == NUS_RX:
        if data == STREAM_START:
            peripheral.streaming = True
        elif data == STREAM_STOP:
            peripheral.streaming = False
        peripheral.update_stream()


def stream_device(address: str, name: str = "Sim Stream", **kwargs: Any) -> SimPeripheral:
    """A UART-like device: write 01 to RX to start notifications on TX, 00 to stop them."""
    kwargs.setdefault("notify_interval", 0.02)
    services = [
        ServiceSpec(0x0001, _u16(0x1800), [CharSpec(0x0003, _u16(0x2A00), ["read"], name.encode())]),
        ServiceSpec(
            0x0030,
            NUS_SERVICE,
            [
                CharSpec(0x0032, NUS_RX, ["write", "write-without-response"]),
                CharSpec(0x0034, NUS_TX, ["notify"], cccd=0x0035),
            ],
        ),
    ]
    return SimPeripheral(address, name, services, kind="stream", on_write=_stream_write, **kwargs)


# --- registry ------------------------------------------------------------------------------------

_PERIPHERALS: dict[str, SimPeripheral] = {}


def register_peripheral(peripheral: SimPeripheral) -> None:
    _PERIPHERALS[peripheral.address] = peripheral


def unregister_peripheral(peripheral: SimPeripheral) -> None:
    if _PERIPHERALS.get(peripheral.address) is peripheral:
        del _PERIPHERALS[peripheral.address]
    peripheral.drop_link()


def peripheral_for(address: str) -> SimPeripheral | None:
    return _PERIPHERALS.get(address.upper())


def registered_peripherals() -> list[SimPeripheral]:
    return list(_PERIPHERALS.values())


# --- bleak backend -------------------------------------------------------------------------------


def _not_permitted(what: str) -> BleakDBusError:
    return BleakDBusError("org.bluez.Error.NotPermitted", [f"{what} not permitted"])


class SimPeripheralClient(SimLinkClient):
    """``BleakClient(address, backend=SimPeripheralClient)``: a link to a registered SimPeripheral."""

    def __init__(self, address_or_ble_device: BLEDevice | str, **kwargs: Any) -> None:
        super().__init__(address_or_ble_device, **kwargs)
        self._peripheral: SimPeripheral | None = self._details(address_or_ble_device, SimPeripheral)
        self._pending: set[asyncio.TimerHandle] = set()

    @property
    def peripheral(self) -> SimPeripheral:
        self._peripheral = self._resolve(self._peripheral, peripheral_for)
        return self._peripheral

    @property
    def mtu_size(self) -> int:
        return self.peripheral.mtu

    @property
    def name(self) -> str:
        return self.peripheral.name

    async def connect(self, pair: bool = False, **kwargs: Any) -> None:
        if self._connected:
            return
        p = self.peripheral
        fault = p.take_fault("connect_fail", "connect_hang", "drop_after_connect")
        if fault == "connect_hang":
            await asyncio.get_running_loop().create_future()  # a wedged connect: only cancellation ends it
        await asyncio.sleep(p.connect_time * p.latency_scale)
        if fault == "connect_fail":
            raise BleakDBusError("org.bluez.Error.Failed", ["le-connection-abort-by-local"])
        if p.central is not None:
            raise BleakDeviceNotFoundError(self.address, f"{self.address} is connected to another central")
        p.central = self
        p.connects += 1
        self._connected = True
        self.services = self._build_services()
        if fault == "drop_after_connect":
            asyncio.get_running_loop().call_later(p.interval, self._link_dropped)

    def _build_services(self) -> BleakGATTServiceCollection:
        p = self.peripheral
        return service_collection(p.services, lambda: p.mtu - 3)

    def _teardown(self) -> None:
        self._connected = False
        self._callbacks.clear()
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()
        p = self._peripheral
        if p is not None and p.central is self:
            p.disconnected()

    def _link_dropped(self) -> None:
        if self._connected:  # a drop racing a disconnect is a no-op
            super()._link_dropped()

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        await self._op()
        self.peripheral.paired = True

    async def unpair(self) -> None:
        self.peripheral.paired = False

    async def _op(self, acknowledged: bool = True) -> SimPeripheral:
        """One ATT operation: waits a connection interval for its response (when acknowledged)."""
        if not self._connected:
            raise BleakError("Not connected")
        p = self.peripheral
        if p.take_fault("drop_on_op"):
            await asyncio.sleep(p.interval / 2)
            self._link_dropped()
            raise BleakError("Not connected")
        if acknowledged:
            await asyncio.sleep(p.interval)
        if not self._connected:
            raise BleakError("Not connected")
        return p

    async def read_gatt_char(self, characteristic: BleakGATTCharacteristic, **kwargs: Any) -> bytearray:
        p = await self._op()
        spec = p.char(characteristic.handle)
        if spec is None:
            raise BleakError(f"Characteristic with handle {characteristic.handle} was not found")
        if p.take_fault("read_error"):
            raise BleakDBusError("org.bluez.Error.Failed", ["Operation failed with ATT error: 0x0e"])
        if "read" not in spec.properties:
            raise _not_permitted("Read")
        return bytearray(p.values.get(spec.handle, b""))

    async def read_gatt_descriptor(self, descriptor: BleakGATTDescriptor, **kwargs: Any) -> bytearray:
        p = await self._op()
        return bytearray(p.values.get(descriptor.handle, b""))

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: SizedBuffer, response: bool
    ) -> None:
        p = await self._op(acknowledged=response)
        spec = p.char(characteristic.handle)
        if spec is None:
            raise BleakError(f"Characteristic with handle {characteristic.handle} was not found")
        wanted = "write" if response else "write-without-response"
        if wanted not in spec.properties:
            raise _not_permitted("Write")
        payload = bytes(memoryview(data))
        p.values[spec.handle] = payload
        if p.on_write is not None:
            p.on_write(p, spec, payload)

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: SizedBuffer) -> None:
        p = await self._op()
        if descriptor.uuid == CCCD_UUID:
            # BlueZ refuses CCCD writes over D-Bus ("use StartNotify"), and so does this backend.
            raise _not_permitted("Write")
        p.values[descriptor.handle] = bytes(memoryview(data))

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        p = await self._op()
        spec = p.char(characteristic.handle)
        if spec is None or spec.cccd is None:
            raise BleakError(f"Characteristic {characteristic.uuid} does not notify")
        self._callbacks[spec.handle] = callback
        p.values[spec.cccd] = b"\x01\x00"
        p.update_stream()

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        p = await self._op()
        self._callbacks.pop(characteristic.handle, None)
        spec = p.char(characteristic.handle)
        if spec is not None and spec.cccd is not None:
            p.values[spec.cccd] = b"\x00\x00"
        p.update_stream()

    def _notify_later(self, handle: int, data: bytes) -> None:
        """A notification goes out in the next connection event, one interval from now."""
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle | None = None

        def deliver() -> None:
            if timer is not None:
                self._pending.discard(timer)
            callback = self._callbacks.get(handle)
            if callback is None or not self._connected:
                return
            self.peripheral.notifications_sent += 1
            with contextlib.suppress(Exception):
                callback(bytearray(data))

        timer = loop.call_later(self.peripheral.interval, deliver)
        self._pending.add(timer)
