"""A stand-in ``bluetoothd``: org.bluez on a D-Bus bus, driven by the BT-2 simulator core.

What bleak's BlueZ backend (``BleakClientBlueZDBus``, ``BleakScannerBlueZDBus``) calls and listens
to is served here: the object manager at ``/`` (GetManagedObjects, InterfacesAdded/Removed),
``Adapter1`` (Powered, StartDiscovery, StopDiscovery, SetDiscoveryFilter, RemoveDevice),
``AdvertisementMonitorManager1`` (RegisterMonitor/UnregisterMonitor, then ``Activate`` and
``DeviceFound`` on the client's monitor, as BlueZ does for passive scanning), ``Device1`` (Connect,
Disconnect, Connected, ServicesResolved, RSSI, Name, Alias, ManufacturerData, ServiceData, UUIDs,
TxPower), ``GattService1``, ``GattCharacteristic1`` (ReadValue, WriteValue, StartNotify, StopNotify,
Value via PropertiesChanged, MTU) and ``GattDescriptor1``.

There is no second BT-2 model here. Each connection is a :class:`SimBT2Client` of the simulator
core, so the battery bank, Modbus replies, fragmentation by MTU, timing model, truth record and
the core's fault injector behave exactly as with the bleak-backend simulator; the advertisements
come from the same sources as :class:`SimScanner`'s. What this module adds is BlueZ itself, and the
faults that only exist at this level (:class:`BlueZFaults` and the methods of :class:`StandInBlueZ`).

The core's connection faults show up as BlueZ would report them: ``connect_fail`` is
``org.bluez.Error.Failed: le-connection-abort-by-local`` (after a brief Connected=true/false),
``hang`` a Connect (or StartNotify) that does not return until the client gives up and calls
Disconnect, ``adapter_gone``/``no_bluez`` a bluetoothd that dies (the caller gets
``org.freedesktop.DBus.Error.NoReply``, later calls ``ServiceUnknown``) and comes back, and
``adapter_gone``/``no_dbus`` an adapter that disappears (USB adapter unplugged) and comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.exc import BleakDBusError, BleakDeviceNotFoundError
from dbus_fast import BusType, Message, MessageType, RequestNameReply, Variant
from dbus_fast.aio import MessageBus

from services.simulator.adverts import SimAdvertisement, parse_ad
from services.simulator.backend import SimBT2Client
from services.simulator.bank import BankSimulator
from services.simulator.scanner import advert_interval, simulated_sources

from .objects import (
    DOES_NOT_EXIST,
    FAILED,
    IN_PROGRESS,
    NOT_CONNECTED,
    NOT_READY,
    TEXT_DOES_NOT_EXIST,
    TEXT_IN_PROGRESS,
    TEXT_NOT_CONNECTED,
    TEXT_NOT_READY,
    ObjectTree,
    bluez_error,
)

_LOGGER = logging.getLogger(__name__)

BLUEZ: Final = "org.bluez"
ADAPTER: Final = "org.bluez.Adapter1"
MONITOR_MANAGER: Final = "org.bluez.AdvertisementMonitorManager1"
MONITOR: Final = "org.bluez.AdvertisementMonitor1"
DEVICE: Final = "org.bluez.Device1"
SERVICE: Final = "org.bluez.GattService1"
CHARACTERISTIC: Final = "org.bluez.GattCharacteristic1"
DESCRIPTOR: Final = "org.bluez.GattDescriptor1"
DEFAULT_ADAPTER_ADDRESS: Final = "00:1A:7D:DA:71:13"
ABORT_BY_LOCAL: Final = "le-connection-abort-by-local"
_IDLE: Final = 0.05


@dataclass
class BlueZFaults:
    """Faults of bluetoothd itself (the core's FaultInjector keeps the BT-2's and the link's).

    ``hang_next(member)``: the next call(s) of that D-Bus method never get a reply.
    ``discovery_busy``: the next StartDiscovery calls fail with InProgress "Operation already in
    progress" (bluetoothd's discovery state is stuck). ``notifications_stopped``: the link stays up
    but no notification reaches D-Bus any more (a stalled GATT client).
    """

    tree: ObjectTree
    discovery_busy: int = 0
    notifications_stopped: bool = False

    def hang_next(self, member: str, count: int = 1) -> None:
        self.tree.hang[member] += count


@dataclass
class _Device:
    path: str
    address: str
    sim: BankSimulator | None = None
    client: SimBT2Client | None = None
    connecting: asyncio.Task[None] | None = None
    chars: dict[str, BleakGATTCharacteristic] = field(default_factory=dict)
    descriptors: dict[str, BleakGATTDescriptor] = field(default_factory=dict)
    notifying: set[str] = field(default_factory=set)
    monitored: bool = False

    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.is_connected


@dataclass
class _Monitor:
    sender: str
    path: str
    patterns: list[tuple[int, int, bytes]] = field(default_factory=list)
    active: bool = False


class StandInBlueZ:
    """``org.bluez`` for the simulators in ``sims``, on the bus at ``bus_address`` (default: the system bus)."""

    def __init__(
        self,
        sims: Sequence[BankSimulator],
        *,
        bus_address: str | None = None,
        adapter: str = "hci0",
        adapter_address: str = DEFAULT_ADAPTER_ADDRESS,
        restart_gap: float = 0.2,
        seed: int = 0,
    ) -> None:
        self.sims = list(sims)
        self.bus_address = bus_address
        self.adapter = adapter
        self.adapter_path = f"/org/bluez/{adapter}"
        self.adapter_address = adapter_address.upper()
        self.restart_gap = restart_gap
        self.tree = ObjectTree()
        self.faults = BlueZFaults(self.tree)
        self.powered = True
        self.rfkill_blocked = False
        self.connects = 0  # successful Connect calls
        self.powered_writes: list[bool] = []  # Powered values clients set (adapter power-cycles)
        self.restarts = 0
        self._bus: MessageBus | None = None
        self._devices: dict[str, _Device] = {}
        self._discovery: dict[str, dict[str, Any]] = {}  # sender -> discovery filter
        self._monitors: dict[tuple[str, str], _Monitor] = {}
        self._rng = random.Random(f"{seed}:bluez")
        self._sources = [(sim, source) for sim in self.sims for source in simulated_sources(sim)]
        self._advertiser: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.adverts_sent = 0
        self._register_methods()

    # -- life cycle ---------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._bus is not None and self._bus.connected

    async def start(self) -> None:
        """Connect to the bus, own ``org.bluez`` and publish the adapter."""
        if self.running:
            return
        bus = (
            MessageBus(bus_address=self.bus_address)
            if self.bus_address
            else MessageBus(bus_type=BusType.SYSTEM)
        )
        await bus.connect()
        self._bus = bus
        self.tree.attach(bus)
        self.tree.on_signal = self._on_signal
        await self._add_match(
            "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',member='NameOwnerChanged'"
        )
        reply = await bus.request_name(BLUEZ)
        if reply is not RequestNameReply.PRIMARY_OWNER:
            raise RuntimeError(f"cannot own {BLUEZ} on the bus: {reply}")
        self._add_adapter()
        self._advertiser = asyncio.create_task(self._advertise(), name="standin-bluez-adverts")

    async def stop(self, *, clean: bool = True) -> None:
        """bluetoothd exits: cleanly (links down, objects removed and announced) or as a crash."""
        if self._advertiser is not None:
            self._advertiser.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._advertiser
            self._advertiser = None
        for device in list(self._devices.values()):
            self._drop_link(device, announce=clean)
        if clean:
            self.tree.remove(self.adapter_path)
        self.tree.clear()
        self._devices.clear()
        self._discovery.clear()
        self._monitors.clear()
        self.tree.detach()
        for task in list(self._background):
            task.cancel()
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.disconnect()
            with contextlib.suppress(Exception):
                await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    async def restart(self, gap: float | None = None, *, clean: bool = False) -> None:
        """``systemctl restart bluetooth`` (clean) or a bluetoothd crash and restart (not clean)."""
        self.restarts += 1
        await self.stop(clean=clean)
        await asyncio.sleep(self.restart_gap if gap is None else gap)
        await self.start()

    async def __aenter__(self) -> StandInBlueZ:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- faults only BlueZ has ----------------------------------------------------------------------

    def remove_adapter(self) -> None:
        """The adapter disappears (USB adapter unplugged): its devices and then itself are removed."""
        for device in list(self._devices.values()):
            self._drop_link(device)
        self.tree.remove(self.adapter_path)
        self._devices.clear()
        self._discovery.clear()
        self._monitors.clear()

    def add_adapter(self) -> None:
        """The adapter is back (plugged in again), powered unless rfkill blocks it."""
        if not self.tree.has(self.adapter_path):
            self._add_adapter()

    def rfkill(self, blocked: bool) -> None:
        """rfkill block/unblock: blocked powers the adapter off and refuses Powered=true."""
        self.rfkill_blocked = blocked
        self._set_powered(not blocked)

    def drop_link(self, address: str) -> None:
        """The connection to ``address`` is lost (supervision timeout)."""
        device = self._devices.get(self._device_path(address))
        if device is not None and device.client is not None:
            device.client._link_dropped()

    def device_connected(self, address: str) -> bool:
        device = self._devices.get(self._device_path(address))
        return device is not None and device.connected

    # -- adapter --------------------------------------------------------------------------------------

    def _add_adapter(self) -> None:
        self.powered = not self.rfkill_blocked
        self.tree.add(
            self.adapter_path,
            {
                ADAPTER: {
                    "Address": Variant("s", self.adapter_address),
                    "AddressType": Variant("s", "public"),
                    "Name": Variant("s", "renogy-standin"),
                    "Alias": Variant("s", "renogy-standin"),
                    "Class": Variant("u", 0),
                    "Powered": Variant("b", self.powered),
                    "PowerState": Variant("s", "on" if self.powered else "off-blocked"),
                    "Discoverable": Variant("b", False),
                    "DiscoverableTimeout": Variant("u", 180),
                    "Pairable": Variant("b", False),
                    "PairableTimeout": Variant("u", 0),
                    "Discovering": Variant("b", False),
                    "UUIDs": Variant("as", []),
                    "Modalias": Variant("s", "usb:v1D6Bp0246d0554"),
                    "Roles": Variant("as", ["central", "peripheral"]),
                    "ExperimentalFeatures": Variant("as", []),
                },
                MONITOR_MANAGER: {
                    "SupportedMonitorTypes": Variant("as", ["or_patterns"]),
                    "SupportedFeatures": Variant("as", []),
                },
            },
        )

    def _set_powered(self, powered: bool) -> None:
        self.powered = powered
        if not powered:
            for device in list(self._devices.values()):
                self._drop_link(device)
            self._discovery.clear()
        state = "on" if powered else ("off-blocked" if self.rfkill_blocked else "off")
        self.tree.update(
            self.adapter_path,
            ADAPTER,
            {
                "Powered": Variant("b", powered),
                "PowerState": Variant("s", state),
                "Discovering": Variant("b", bool(self._discovery)),
            },
        )

    def _powered_setter(self, path: str, value: Variant) -> None:
        wanted = bool(value.value)
        self.powered_writes.append(wanted)
        if wanted and self.rfkill_blocked:
            raise bluez_error(FAILED, "Blocked through rfkill")
        self._set_powered(wanted)

    def _require_powered(self) -> None:
        if not self.powered:
            raise bluez_error(NOT_READY, TEXT_NOT_READY)

    async def _start_discovery(self, msg: Message) -> Message:
        self._require_powered()
        sender = msg.sender or ""
        if self.faults.discovery_busy > 0:
            self.faults.discovery_busy -= 1
            raise bluez_error(IN_PROGRESS, TEXT_IN_PROGRESS)
        if sender in self._discovery and self._discovery[sender].get("active"):
            # bluetoothd's start_discovery(): one discovery session per D-Bus client
            raise bluez_error(IN_PROGRESS, TEXT_IN_PROGRESS)
        self._discovery.setdefault(sender, {})["active"] = True
        self.tree.update(self.adapter_path, ADAPTER, {"Discovering": Variant("b", True)})
        return Message.new_method_return(msg)

    async def _stop_discovery(self, msg: Message) -> Message:
        self._require_powered()
        session = self._discovery.get(msg.sender or "")
        if session is None or not session.get("active"):
            raise bluez_error(FAILED, "No discovery started")
        del self._discovery[msg.sender or ""]
        if not self._active_sessions():
            self.tree.update(self.adapter_path, ADAPTER, {"Discovering": Variant("b", False)})
        return Message.new_method_return(msg)

    async def _set_discovery_filter(self, msg: Message) -> Message:
        filters = {k: v.value for k, v in msg.body[0].items()}
        session = self._discovery.setdefault(msg.sender or "", {})
        session["filter"] = filters
        if not filters and not session.get("active"):
            del self._discovery[msg.sender or ""]
        return Message.new_method_return(msg)

    async def _remove_device(self, msg: Message) -> Message:
        path = msg.body[0]
        device = self._devices.pop(path, None)
        if device is None:
            raise bluez_error(DOES_NOT_EXIST, TEXT_DOES_NOT_EXIST)
        self._drop_link(device)
        self.tree.remove(path)
        return Message.new_method_return(msg)

    def _active_sessions(self) -> list[dict[str, Any]]:
        return [s for s in self._discovery.values() if s.get("active")]

    # -- advertisement monitors (passive scanning) ------------------------------------------------

    async def _register_monitor(self, msg: Message) -> Message:
        sender, path = msg.sender or "", msg.body[0]
        key = (sender, path)
        if key in self._monitors:
            raise bluez_error("org.bluez.Error.AlreadyExists", "Already Exists")
        self._monitors[key] = _Monitor(sender, path)
        # Like BlueZ's GDBusClient: the app's objects appear through its InterfacesAdded signals.
        await self._add_match(
            f"type='signal',sender='{sender}',interface='org.freedesktop.DBus.ObjectManager',member='InterfacesAdded'"
        )
        return Message.new_method_return(msg)

    async def _unregister_monitor(self, msg: Message) -> Message:
        if self._monitors.pop((msg.sender or "", msg.body[0]), None) is None:
            raise bluez_error("org.bluez.Error.DoesNotExist", TEXT_DOES_NOT_EXIST)
        for device in self._devices.values():
            device.monitored = False
        return Message.new_method_return(msg)

    def _on_signal(self, msg: Message) -> None:
        if msg.member == "InterfacesAdded" and msg.interface == "org.freedesktop.DBus.ObjectManager":
            path, interfaces = msg.body
            monitor = self._monitors.get((msg.sender or "", path))
            if monitor is not None and MONITOR in interfaces:
                props = interfaces[MONITOR]
                patterns = props["Patterns"].value if "Patterns" in props else []
                monitor.patterns = [(int(a), int(b), bytes(c)) for a, b, c in patterns]
                monitor.active = True
                self._call_app(monitor, "Activate")
        elif msg.member == "NameOwnerChanged" and msg.body and not msg.body[2]:
            gone = msg.body[0]
            # bluetoothd's disconnect watch: a client's discovery session and monitors end with it
            if self._discovery.pop(gone, None) is not None and not self._active_sessions():
                self.tree.update(self.adapter_path, ADAPTER, {"Discovering": Variant("b", False)})
            for key in [k for k in self._monitors if k[0] == gone]:
                del self._monitors[key]

    def _call_app(
        self, monitor: _Monitor, member: str, signature: str = "", body: list[Any] | None = None
    ) -> None:
        self.tree.send(
            Message(
                destination=monitor.sender,
                path=monitor.path,
                interface=MONITOR,
                member=member,
                signature=signature,
                body=body or [],
            )
        )

    @staticmethod
    def _matches(monitor: _Monitor, raw: bytes) -> bool:
        structures: list[tuple[int, bytes]] = []
        i = 0
        while i < len(raw) and raw[i]:
            length = raw[i]
            structures.append((raw[i + 1], raw[i + 2 : i + 1 + length]))
            i += 1 + length
        return any(
            ad_type == wanted and data[start : start + len(content)] == content
            for start, wanted, content in monitor.patterns
            for ad_type, data in structures
        )

    # -- advertisements -------------------------------------------------------------------------------

    async def _advertise(self) -> None:
        loop = asyncio.get_running_loop()
        due = dict.fromkeys(range(len(self._sources)), 0.0)
        while True:
            now = loop.time()
            next_due = now + _IDLE
            listening = self.powered and self.tree.has(self.adapter_path)
            scanning = listening and bool(self._active_sessions())
            monitors = [m for m in self._monitors.values() if m.active] if listening else []
            for index, (sim, source) in enumerate(self._sources):
                if due[index] <= now:
                    due[index] = now + advert_interval(sim) * source.interval_factor
                    if scanning or monitors:
                        rssi = max(-100, min(-20, round(source.base_rssi + self._rng.gauss(0.0, 2.5))))
                        advert = source.make(rssi)
                        if advert is not None:
                            self._heard(advert, sim if source.details is sim else None, scanning, monitors)
                next_due = min(next_due, due[index])
            await asyncio.sleep(max(0.0, next_due - loop.time()))

    def _device_path(self, address: str) -> str:
        return f"{self.adapter_path}/dev_{address.upper().replace(':', '_')}"

    def _heard(
        self, advert: SimAdvertisement, sim: BankSimulator | None, scanning: bool, monitors: list[_Monitor]
    ) -> None:
        matching = [m for m in monitors if self._matches(m, advert.raw)]
        if not scanning and not matching:
            return
        self.adverts_sent += 1
        parsed = parse_ad(advert.raw)
        path = self._device_path(advert.address)
        props: dict[str, Variant] = {
            "RSSI": Variant("n", advert.rssi),
            "UUIDs": Variant("as", list(advert.service_uuids)),
            "ManufacturerData": Variant(
                "a{qv}", {k: Variant("ay", v) for k, v in advert.manufacturer_data.items()}
            ),
            "ServiceData": Variant("a{sv}", {k: Variant("ay", v) for k, v in advert.service_data.items()}),
        }
        if parsed.flags is not None:
            props["AdvertisingFlags"] = Variant("ay", bytes((parsed.flags,)))
        if advert.local_name is not None:
            props["Name"] = Variant("s", advert.local_name)
            props["Alias"] = Variant("s", advert.local_name)
        if advert.tx_power is not None:
            props["TxPower"] = Variant("n", advert.tx_power)
        device = self._devices.get(path)
        if device is None:
            device = self._devices[path] = _Device(path, advert.address, sim)
            self.tree.add(
                path,
                {
                    DEVICE: {
                        "Address": Variant("s", advert.address),
                        "AddressType": Variant("s", advert.address_type),
                        "Alias": Variant("s", advert.local_name or advert.address.replace(":", "-")),
                        "Paired": Variant("b", False),
                        "Bonded": Variant("b", False),
                        "Trusted": Variant("b", False),
                        "Blocked": Variant("b", False),
                        "LegacyPairing": Variant("b", False),
                        "Connected": Variant("b", False),
                        "ServicesResolved": Variant("b", False),
                        "Adapter": Variant("o", self.adapter_path),
                        **props,
                    }
                },
            )
        else:
            self.tree.update(path, DEVICE, props)
        for monitor in matching:
            if not device.monitored:
                device.monitored = True
                self._call_app(monitor, "DeviceFound", "o", [path])

    # -- devices: connection --------------------------------------------------------------------------

    def _device_for(self, msg: Message) -> _Device:
        device = self._devices.get(msg.path or "")
        if device is None:
            raise bluez_error(DOES_NOT_EXIST, TEXT_DOES_NOT_EXIST)
        return device

    async def _connect(self, msg: Message) -> Message:
        self._require_powered()
        device = self._device_for(msg)
        if device.connected:
            raise bluez_error("org.bluez.Error.AlreadyConnected", "Already Connected")
        if device.connecting is not None:
            raise bluez_error(IN_PROGRESS, TEXT_IN_PROGRESS)
        if device.sim is None:
            await asyncio.sleep(0.05)
            raise bluez_error(FAILED, ABORT_BY_LOCAL)  # a neighbour that does not accept connections
        task = asyncio.ensure_future(self._link_up(device))
        device.connecting = task
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the stand-in itself is stopping
            raise bluez_error(FAILED, "Operation canceled") from None  # Disconnect cancelled it
        finally:
            device.connecting = None
        return Message.new_method_return(msg)

    async def _link_up(self, device: _Device) -> None:
        assert device.sim is not None
        sim = device.sim
        client: SimBT2Client = SimBT2Client(
            BLEDevice(device.address, sim.local_name, sim),
            disconnected_callback=lambda: self._link_lost(device, client),
        )
        try:
            await client.connect()
        except BleakDBusError as exc:
            if exc.dbus_error == "org.freedesktop.DBus.Error.ServiceUnknown":
                # the core's adapter_gone/no_bluez: bluetoothd dies under this call and comes back
                self._later(self.restart(clean=False))
                await asyncio.get_running_loop().create_future()  # answered NoReply by the daemon
            if exc.dbus_error_details == ABORT_BY_LOCAL:
                # BlueZ saw the link come up before the controller aborted it
                self._set_device(device, Connected=True)
                self._set_device(device, Connected=False)
            raise bluez_error(exc.dbus_error, exc.dbus_error_details or exc.dbus_error) from None
        except BleakDeviceNotFoundError:
            raise bluez_error(FAILED, ABORT_BY_LOCAL) from None  # held by another central: never answers
        except FileNotFoundError:
            self._later(self._adapter_unplugged())
            await asyncio.get_running_loop().create_future()  # answered by the adapter's removal
        device.client = client
        self.connects += 1
        self._set_device(device, Connected=True)
        self._export_gatt(device, client)
        self._set_device(device, ServicesResolved=True)

    async def _adapter_unplugged(self) -> None:
        self.remove_adapter()
        await asyncio.sleep(self.restart_gap)
        self.add_adapter()

    def _later(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _disconnect(self, msg: Message) -> Message:
        device = self._device_for(msg)
        if device.connecting is not None:
            device.connecting.cancel()
        elif device.client is not None:
            await device.client.disconnect()
        return Message.new_method_return(msg)

    def _link_lost(self, device: _Device, client: SimBT2Client) -> None:
        if device.client is client:
            self._drop_link(device)

    def _drop_link(self, device: _Device, *, announce: bool = True) -> None:
        if device.connecting is not None:
            device.connecting.cancel()
        client, device.client = device.client, None
        if client is None:
            return
        if client.is_connected:
            client._teardown()
        device.notifying.clear()
        if announce:
            self._set_device(device, ServicesResolved=False)
            self._set_device(device, Connected=False)
            for service in [p for p in self.tree.objects if p.startswith(device.path + "/")]:
                if len(service) == len(device.path) + len("/service0000"):
                    self.tree.remove(service)
        else:
            for path in [p for p in self.tree.objects if p.startswith(device.path + "/")]:
                self.tree.objects.pop(path, None)
        device.chars.clear()
        device.descriptors.clear()

    def _set_device(self, device: _Device, **changes: bool) -> None:
        self.tree.update(device.path, DEVICE, {k: Variant("b", v) for k, v in changes.items()})

    # -- devices: GATT --------------------------------------------------------------------------------

    def _export_gatt(self, device: _Device, client: SimBT2Client) -> None:
        assert client.services is not None and device.sim is not None
        mtu = device.sim.mtu
        for service in client.services:
            service_path = f"{device.path}/service{service.handle:04x}"
            self.tree.add(
                service_path,
                {
                    SERVICE: {
                        "UUID": Variant("s", service.uuid),
                        "Device": Variant("o", device.path),
                        "Primary": Variant("b", True),
                        "Includes": Variant("ao", []),
                    }
                },
            )
            for char in service.characteristics:
                # BlueZ names a characteristic by its declaration handle, one below the value's
                char_path = f"{service_path}/char{char.handle - 1:04x}"
                props = {
                    "UUID": Variant("s", char.uuid),
                    "Service": Variant("o", service_path),
                    "Value": Variant("ay", b""),
                    "Flags": Variant("as", list(char.properties)),
                    "MTU": Variant("q", mtu),
                }
                if {"notify", "indicate"} & set(char.properties):
                    props["Notifying"] = Variant("b", False)
                    props["NotifyAcquired"] = Variant("b", False)
                if "write-without-response" in char.properties:
                    props["WriteAcquired"] = Variant("b", False)
                self.tree.add(char_path, {CHARACTERISTIC: props})
                device.chars[char_path] = char
                for descriptor in char.descriptors:
                    desc_path = f"{char_path}/desc{descriptor.handle:04x}"
                    self.tree.add(
                        desc_path,
                        {
                            DESCRIPTOR: {
                                "UUID": Variant("s", descriptor.uuid),
                                "Characteristic": Variant("o", char_path),
                                "Value": Variant("ay", b""),
                                "Flags": Variant("as", ["read"]),
                            }
                        },
                    )
                    device.descriptors[desc_path] = descriptor

    def _gatt_target(self, msg: Message) -> tuple[_Device, SimBT2Client]:
        path = msg.path or ""
        for device in self._devices.values():
            if path.startswith(device.path + "/"):
                if device.client is None or not device.client.is_connected:
                    raise bluez_error(NOT_CONNECTED, TEXT_NOT_CONNECTED)
                return device, device.client
        raise bluez_error(DOES_NOT_EXIST, TEXT_DOES_NOT_EXIST)

    async def _char_read(self, msg: Message) -> Message:
        device, client = self._gatt_target(msg)
        value = bytes(await client.read_gatt_char(device.chars[msg.path or ""]))
        self.tree.update(msg.path or "", CHARACTERISTIC, {"Value": Variant("ay", value)})
        return Message.new_method_return(msg, "ay", [value])

    async def _char_write(self, msg: Message) -> Message:
        device, client = self._gatt_target(msg)
        data, options = bytes(msg.body[0]), msg.body[1]
        kind = options["type"].value if "type" in options else "request"
        await client.write_gatt_char(device.chars[msg.path or ""], data, response=kind == "request")
        return Message.new_method_return(msg)

    async def _start_notify(self, msg: Message) -> Message:
        device, client = self._gatt_target(msg)
        path = msg.path or ""
        if path in device.notifying:
            return Message.new_method_return(msg)

        def on_value(data: bytearray) -> None:
            if self.faults.notifications_stopped or path not in device.notifying:
                return
            self.tree.touch(path, CHARACTERISTIC, {"Value": Variant("ay", bytes(data))})

        device.notifying.add(path)
        try:
            await client.start_notify(device.chars[path], on_value)
        except BaseException:
            device.notifying.discard(path)
            raise
        self.tree.update(path, CHARACTERISTIC, {"Notifying": Variant("b", True)})
        return Message.new_method_return(msg)

    async def _stop_notify(self, msg: Message) -> Message:
        device, client = self._gatt_target(msg)
        path = msg.path or ""
        if path not in device.notifying:
            raise bluez_error(FAILED, "No notify session started")
        device.notifying.discard(path)
        await client.stop_notify(device.chars[path])
        self.tree.update(path, CHARACTERISTIC, {"Notifying": Variant("b", False)})
        return Message.new_method_return(msg)

    async def _desc_read(self, msg: Message) -> Message:
        device, client = self._gatt_target(msg)
        value = bytes(await client.read_gatt_descriptor(device.descriptors[msg.path or ""]))
        return Message.new_method_return(msg, "ay", [value])

    async def _desc_write(self, msg: Message) -> Message:
        device, client = self._gatt_target(msg)
        await client.write_gatt_descriptor(device.descriptors[msg.path or ""], bytes(msg.body[0]))
        return Message.new_method_return(msg)

    # -- plumbing ---------------------------------------------------------------------------------------

    def _register_methods(self) -> None:
        methods = self.tree.methods
        methods[(ADAPTER, "StartDiscovery")] = self._start_discovery
        methods[(ADAPTER, "StopDiscovery")] = self._stop_discovery
        methods[(ADAPTER, "SetDiscoveryFilter")] = self._set_discovery_filter
        methods[(ADAPTER, "RemoveDevice")] = self._remove_device
        methods[(MONITOR_MANAGER, "RegisterMonitor")] = self._register_monitor
        methods[(MONITOR_MANAGER, "UnregisterMonitor")] = self._unregister_monitor
        methods[(DEVICE, "Connect")] = self._connect
        methods[(DEVICE, "Disconnect")] = self._disconnect
        methods[(CHARACTERISTIC, "ReadValue")] = self._char_read
        methods[(CHARACTERISTIC, "WriteValue")] = self._char_write
        methods[(CHARACTERISTIC, "StartNotify")] = self._start_notify
        methods[(CHARACTERISTIC, "StopNotify")] = self._stop_notify
        methods[(DESCRIPTOR, "ReadValue")] = self._desc_read
        methods[(DESCRIPTOR, "WriteValue")] = self._desc_write
        self.tree.setters[(ADAPTER, "Powered")] = self._powered_setter

    async def _add_match(self, rule: str) -> None:
        assert self._bus is not None
        reply = await self._bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="AddMatch",
                signature="s",
                body=[rule],
            )
        )
        if reply is None or reply.message_type is MessageType.ERROR:
            raise RuntimeError(f"AddMatch {rule} failed: {reply.body if reply else None}")
