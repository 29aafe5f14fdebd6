"""bleak client backend that talks to a simulated BT-2: ``BleakClient(device, backend=SimBT2Client)``."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from typing import Any, NoReturn

from bleak.args import SizedBuffer
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.exc import BleakDBusError, BleakDeviceNotFoundError, BleakError

from .bank import Action, BankSimulator, LinkDrop, Notification
from .faults import ADAPTER_NO_DBUS, HANG_IN_CONNECT, HANG_IN_START_NOTIFY, Fault, FaultKind
from .gatt import NOTIFY_CHAR_HANDLE, WRITE_CHAR_UUID, WRITE_SERVICE_UUID, build_services
from .link import SimLinkClient
from .registry import simulator_for

_LOGGER = logging.getLogger(__name__)

_CLOCK_RESOLUTION = time.get_clock_info("monotonic").resolution
CCCD_NOTIFY = b"\x01\x00"


class SimBT2Client(SimLinkClient):
    """A BT-2 reached over a simulated BLE link; finds its simulator in BLEDevice.details or the registry."""

    def __init__(self, address_or_ble_device: BLEDevice | str, **kwargs: Any) -> None:
        super().__init__(address_or_ble_device, **kwargs)
        self._sim: BankSimulator | None = self._details(address_or_ble_device, BankSimulator)
        self._values: dict[int, bytes] = {}
        self._queue: list[tuple[float, int, Action]] = []
        self._seq = itertools.count()
        self._timer: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._notify_fault: Fault | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    # -- identity -------------------------------------------------------------------------------

    @property
    def simulator(self) -> BankSimulator:
        """The simulated BT-2 behind this client (raises BleakDeviceNotFoundError when there is none)."""
        self._sim = self._resolve(self._sim, simulator_for)
        return self._sim

    @property
    def name(self) -> str:
        """The BT-2's advertised name."""
        return self.simulator.local_name

    @property
    def mtu_size(self) -> int:
        """The ATT MTU the simulated BT-2 negotiates."""
        return self.simulator.mtu

    @property
    def pending_notifications(self) -> int:
        """Planned notifications (and link drops) not delivered yet."""
        return len(self._queue)

    async def drained(self) -> None:
        """Wait until every planned notification has been delivered (or discarded by a disconnect)."""
        await self._idle.wait()

    def read_floor(self, words: int) -> float:
        """Modelled write-to-reply time of a read of ``words`` registers on this link (seconds)."""
        return self.simulator.read_floor(words)

    # -- connection -------------------------------------------------------------------------------

    async def connect(self, pair: bool = False, **kwargs: Any) -> None:
        """Connect after the modelled connection time, unless a fault or another central is in the way."""
        if self._connected:
            return
        sim = self.simulator
        fault = sim.next_connect_fault()
        if fault is not None:
            if fault.kind is FaultKind.ADAPTER_GONE:
                _raise_adapter_gone(fault)
            if fault.kind is FaultKind.HANG and fault.variant == HANG_IN_CONNECT:
                await _hang()
        connect_time = sim.timing.connect_time * sim.latency_scale
        if sim.central is not None and sim.central is not self:
            await asyncio.sleep(connect_time)
            # A BT-2 holding a link stops advertising, so BlueZ cannot find it.
            raise BleakDeviceNotFoundError(
                self.address, f"Device with address {self.address} was not found (busy with another central)."
            )
        sim.central = self
        try:
            await asyncio.sleep(connect_time)
            if fault is not None and fault.kind is FaultKind.CONNECT_FAIL:
                raise BleakDBusError("org.bluez.Error.Failed", ["le-connection-abort-by-local"])
        except BaseException:
            sim.central = None
            raise
        self._loop = asyncio.get_running_loop()
        self.services, self._values = build_services(sim.local_name, lambda: sim.mtu - 3)
        self._notify_fault = fault if fault is not None and fault.variant == HANG_IN_START_NOTIFY else None
        self._connected = True
        _LOGGER.debug("simulated link to %s up (MTU %d)", self.address, sim.mtu)

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        """A BT-2 needs no pairing."""

    async def unpair(self) -> None:
        """A BT-2 needs no pairing."""

    def _teardown(self) -> None:
        self._connected = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()
        self._idle.set()
        self._callbacks.clear()
        self.services = None
        sim = self._sim
        if sim is not None:
            if sim.central is self:
                sim.central = None
            sim.link_lost()

    # -- GATT I/O ---------------------------------------------------------------------------------

    def _require_connection(self) -> BankSimulator:
        if not self._connected:
            raise BleakError("Not connected")
        return self.simulator

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        """The characteristic's last value (fff1: the last notification)."""
        self._require_connection()
        return bytearray(self._values.get(characteristic.handle, b""))

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        """The descriptor's value."""
        self._require_connection()
        return bytearray(self._values.get(descriptor.handle, b""))

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: SizedBuffer, response: bool
    ) -> None:
        """A write to ffd1 goes to the RS485 bus; other characteristics just keep the value."""
        sim = self._require_connection()
        payload = bytes(memoryview(data))
        if characteristic.uuid == WRITE_CHAR_UUID and characteristic.service_uuid == WRITE_SERVICE_UUID:
            self._schedule(sim.handle_write(payload, sim.clock()))
        else:
            self._values[characteristic.handle] = payload
        if response:
            # A write request waits for the ATT response in the next connection event.
            await asyncio.sleep(sim.timing.connection_interval * sim.latency_scale)

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: SizedBuffer) -> None:
        """Keep the descriptor's value."""
        self._require_connection()
        self._values[descriptor.handle] = bytes(memoryview(data))

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        """Subscribe (writes the CCCD); a queued 'hang' fault makes this never return."""
        self._require_connection()
        if self._notify_fault is not None:
            self._notify_fault = None
            await _hang()
        self._callbacks[characteristic.handle] = callback
        for descriptor in characteristic.descriptors:
            if descriptor.uuid.startswith("00002902"):
                self._values[descriptor.handle] = CCCD_NOTIFY

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        """Unsubscribe."""
        self._require_connection()
        self._callbacks.pop(characteristic.handle, None)

    # -- delivery -----------------------------------------------------------------------------------

    def _schedule(self, actions: list[Action]) -> None:
        loop = self._loop or asyncio.get_running_loop()
        base = loop.time()
        for action in actions:
            heapq.heappush(self._queue, (base + action.delay, next(self._seq), action))
        if self._queue:
            self._idle.clear()
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._queue or self._loop is None:
            self._idle.set()
            return
        delay = self._queue[0][0] - self._loop.time()
        self._timer = (
            self._loop.call_soon(self._pump) if delay <= 0 else self._loop.call_later(delay, self._pump)
        )

    def _pump(self) -> None:
        self._timer = None
        if self._loop is None:
            return
        horizon = self._loop.time() + _CLOCK_RESOLUTION
        while self._queue and self._queue[0][0] <= horizon and self._connected:
            _, _, action = heapq.heappop(self._queue)
            if isinstance(action, LinkDrop):
                self._link_dropped()
                return
            self._notify(action)
        self._arm()

    def _notify(self, action: Notification) -> None:
        self._values[NOTIFY_CHAR_HANDLE] = action.data
        callback = self._callbacks.get(NOTIFY_CHAR_HANDLE)
        if callback is None:
            return  # notifications not enabled: the BT-2 sends nothing
        try:
            callback(bytearray(action.data))
        except Exception:
            _LOGGER.exception("notification callback failed")
        self.simulator.delivered(action)

    def _link_dropped(self) -> None:
        _LOGGER.debug("simulated link to %s dropped", self.address)
        super()._link_dropped()


async def _hang() -> NoReturn:
    """Never return, but stay cancellable (a wedged BlueZ call)."""
    await asyncio.get_running_loop().create_future()
    raise AssertionError("unreachable")  # pragma: no cover


def _raise_adapter_gone(fault: Fault) -> NoReturn:
    if fault.variant == ADAPTER_NO_DBUS:
        raise FileNotFoundError(2, "No such file or directory")
    raise BleakDBusError(
        "org.freedesktop.DBus.Error.ServiceUnknown",
        ["The name org.bluez was not provided by any .service files"],
    )
