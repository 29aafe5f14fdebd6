"""Active Bluetooth proxy on the reader: GATT connections to other devices for the gateway's API clients.

The gateway publishes requests on ``.../proxy/request`` (shared.proxy_payloads); each runs as its own
task, so a proxied connection never waits for the BT-2 poll cycle and the cycle never waits for it.
Operations on one device run one at a time, in arrival order (as on an ESP32 proxy). At most
``slots`` devices are connected or connecting; the BT-2 link has its own and never counts. Proxied
connects run one at a time (as BlueZ creates LE connections one at a time), and
:meth:`ProxyConnections.yield_adapter` cancels a pending one when the BT-2 needs to (re)connect,
so a proxied device that never answers cannot hold up a cycle.

A connection belongs to the gateway boot that asked for it (``owner``); when that gateway goes offline
(its last will) or restarts (a new boot id), the reader drops its connections and frees the slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

from bleak import BleakClient
from bleak.assigned_numbers import CHARACTERISTIC_PROPERTIES
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.exc import BleakDBusError, BleakError

from shared import proxy_payloads as pp
from shared.mqtt import Message
from shared.payloads import PayloadError, loads_object
from shared.service import RepeatFilter
from shared.topics import Topics

_LOGGER = logging.getLogger(__name__)

CCCD_UUID: Final = "00002902-0000-1000-8000-00805f9b34fb"
DISCONNECT_TIMEOUT: Final = 5.0
DEFAULT_MTU: Final = 23
_PROPERTY_MASK: Final = {name: mask for mask, name in CHARACTERISTIC_PROPERTIES.items()}
_ATT_ERROR = re.compile(r"ATT error: 0x([0-9a-fA-F]{1,2})")
_DBUS_CODES: Final = {
    "org.bluez.Error.NotAuthorized": pp.ERR_INSUFFICIENT_AUTHORIZATION,
    "org.bluez.Error.NotSupported": pp.ERR_REQUEST_NOT_SUPPORTED,
    "org.bluez.Error.InvalidOffset": pp.ERR_INVALID_OFFSET,
    "org.bluez.Error.InvalidValueLength": pp.ERR_INVALID_ATTRIBUTE_LENGTH,
    "org.bluez.Error.InProgress": pp.ERR_BUSY,
    "org.bluez.Error.NotConnected": pp.ERR_NOT_CONNECTED,
}

Publish = Callable[[str, bytes, int, bool], bool]


def gatt_error(exc: BaseException, op: str) -> tuple[int, str]:
    """ESPHome's error code for a failed GATT operation, and the reason in words."""
    if isinstance(exc, TimeoutError):
        return pp.ERR_GATT_ERROR, "timed out"
    if isinstance(exc, BleakDBusError):
        details = exc.dbus_error_details or ""
        if exc.dbus_error == "org.bluez.Error.NotPermitted":
            return (pp.ERR_READ_NOT_PERMITTED if op.startswith("read") else pp.ERR_WRITE_NOT_PERMITTED), str(
                exc
            )
        match = _ATT_ERROR.search(details)
        if match:
            return int(match[1], 16), str(exc)
        return _DBUS_CODES.get(exc.dbus_error, pp.ERR_GATT_ERROR), str(exc)
    if isinstance(exc, BleakError) and "not connected" in str(exc).lower():
        return pp.ERR_NOT_CONNECTED, str(exc)
    return pp.ERR_GATT_ERROR, f"{type(exc).__name__}: {exc}"


def mtu_of(client: BleakClient) -> int:
    """The link's ATT MTU: BlueZ's characteristic MTU property (5.62+), else the backend's, else 23."""
    backend = getattr(client, "_backend", None)
    if backend is None or type(backend).__name__ == "BleakClientBlueZDBus":
        with contextlib.suppress(Exception):
            for char in client.services.characteristics.values():
                obj = char.obj
                if isinstance(obj, tuple) and len(obj) > 1 and isinstance(obj[1], dict):
                    value = obj[1].get("MTU")
                    if isinstance(value, int):
                        return value
        return DEFAULT_MTU
    value = getattr(backend, "mtu_size", DEFAULT_MTU)
    return value if isinstance(value, int) and 23 <= value <= 517 else DEFAULT_MTU


def services_of(client: BleakClient) -> tuple[pp.GattService, ...]:
    out = []
    for service in client.services:
        chars = []
        for char in service.characteristics:
            mask = 0
            for name in char.properties:
                mask |= _PROPERTY_MASK.get(name, 0)
            descs = tuple(pp.GattDescriptor(d.uuid, d.handle) for d in char.descriptors)
            chars.append(pp.GattCharacteristic(char.uuid, char.handle, mask, descs))
        out.append(pp.GattService(service.uuid, service.handle, tuple(chars)))
    return tuple(out)


@dataclass(eq=False)
class _Peer:
    address: str
    owner: str
    state: str = "connecting"  # connecting | connected
    client: BleakClient | None = None
    task: asyncio.Task[Any] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    notifying: set[int] = field(default_factory=set)
    mtu: int = DEFAULT_MTU
    closing: bool = False
    cancelled: str | None = None  # why the connect attempt was cancelled
    waiting: list[pp.ProxyRequest] = field(default_factory=list)
    since: float = field(default_factory=time.monotonic)


class ProxyConnections:
    """The reader's proxied GATT connections, driven by MQTT requests."""

    def __init__(
        self,
        *,
        slots: int,
        backend: type[BaseBleakClient] | None,
        find_device: Callable[[str], BLEDevice | None],
        publish: Publish,
        topics: Topics,
        instance: str,
    ) -> None:
        self.slots = slots
        self.backend = backend
        self.find_device = find_device
        self.publish = publish
        self.topics = topics
        self.request_topic = pp.request_topic(topics, instance)
        self.response_topic = pp.response_topic(topics, instance)
        self.notify_topic = pp.notify_topic(topics, instance)
        self.slots_topic = pp.slots_topic(topics, instance)
        self.gateway_state_filter = f"{topics.root}/bridge/gateway/+/state"
        self._peers: dict[str, _Peer] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._connect_gate = asyncio.Lock()
        self._log = RepeatFilter(_LOGGER)
        self.requests = 0
        self.expired = 0
        self.failed = 0
        self.bad_requests = 0
        self.notifications = 0
        self.connects = 0

    @property
    def filters(self) -> list[tuple[str, int]]:
        return [(self.request_topic, 1), (self.gateway_state_filter, 1)]

    def start(self) -> None:
        self._publish_slots()

    def health(self) -> dict[str, Any]:
        return {
            "slots": self.slots,
            "free": max(0, self.slots - len(self._peers)),
            "connections": [
                {"address": p.address, "state": p.state, "owner": p.owner.partition("/")[0]}
                for p in self._peers.values()
            ],
            "requests": self.requests,
            "expired": self.expired,
            "failed": self.failed,
            "bad_requests": self.bad_requests,
            "notifications": self.notifications,
            "connects": self.connects,
        }

    # --- MQTT in ----------------------------------------------------------------------------------

    def handle(self, message: Message) -> bool:
        """Take a proxy request or a gateway state; False for any other topic."""
        if message.topic == self.request_topic:
            if not message.retain and message.payload:
                self._request(message.payload)
            return True
        parsed = self.topics.parse_bridge(message.topic)
        if parsed is not None and parsed[0] == "gateway" and parsed[2] == "state":
            self._gateway_state(parsed[1], message.payload)
            return True
        return False

    def _request(self, payload: bytes) -> None:
        try:
            request = pp.parse_request(payload)
        except PayloadError as exc:
            self.bad_requests += 1
            self._log.failure("request", "ignored a bad proxy request: %s", exc)
            return
        self.requests += 1
        task = asyncio.get_running_loop().create_task(self._run(request), name=f"proxy-{request.op}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _gateway_state(self, instance: str, payload: bytes) -> None:
        if not payload:
            return
        try:
            body = loads_object(payload)
        except PayloadError:
            return
        online = body.get("state") == "online"
        current = f"{instance}/{body.get('boot_id')}"
        for peer in list(self._peers.values()):
            if peer.owner.partition("/")[0] == instance and (not online or peer.owner != current):
                _LOGGER.info(
                    "gateway %s %s: dropping its proxied connection to %s",
                    instance,
                    "went offline" if not online else "restarted",
                    peer.address,
                )
                self._spawn(self._drop(peer))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- MQTT out ---------------------------------------------------------------------------------

    def _respond(
        self, request: pp.ProxyRequest, *, ok: bool = True, error: int = 0, reason: str = "", **kw: Any
    ) -> None:
        if not ok:
            self.failed += 1
            _LOGGER.info("proxy %s %s failed: %s (error %d)", request.op, request.address, reason, error)
        response = pp.ProxyResponse(
            address=request.address,
            owner=request.owner,
            id=request.id,
            op=request.op,
            ok=ok,
            error=error,
            reason=reason,
            handle=request.handle,
            **kw,
        )
        self.publish(self.response_topic, response.to_payload(), 1, False)

    def _publish_slots(self) -> None:
        slots = pp.Slots(self.slots, tuple(self._peers), time.time())
        self.publish(self.slots_topic, slots.to_payload(), 1, True)

    def _on_notify(self, peer: _Peer, char: BleakGATTCharacteristic, data: bytearray) -> None:
        if peer.closing:
            return
        self.notifications += 1
        note = pp.Notification(peer.address, peer.owner, char.handle, bytes(data))
        self.publish(self.notify_topic, note.to_payload(), 0, False)

    def _on_disconnect(self, peer: _Peer, _client: BleakClient) -> None:
        if peer.closing or self._peers.get(peer.address) is not peer or peer.state != "connected":
            return
        _LOGGER.info("proxied device %s disconnected", peer.address)
        peer.closing = True
        del self._peers[peer.address]
        event = pp.ProxyResponse(
            address=peer.address,
            owner=peer.owner,
            event=pp.DISCONNECTED_EVENT,
            ok=False,
            error=pp.ERR_CONN_TIMEOUT,
            reason="link lost",
        )
        self.publish(self.response_topic, event.to_payload(), 1, False)
        self._publish_slots()

    # --- running requests -------------------------------------------------------------------------

    async def _run(self, request: pp.ProxyRequest) -> None:
        remaining = min(request.timeout, request.deadline - time.time())
        if remaining <= 0:
            self.expired += 1
            error = pp.ERR_CONN_TIMEOUT if request.op == "connect" else pp.ERR_GATT_ERROR
            self._respond(request, ok=False, error=error, reason="deadline passed before the request arrived")
            return
        try:
            if request.op == "connect":
                await self._connect(request, remaining)
            elif request.op == "disconnect":
                await self._disconnect(request)
            else:
                await self._gatt(request, remaining)
        except Exception as exc:  # never let one request kill the reader
            _LOGGER.exception("proxy %s %s failed unexpectedly", request.op, request.address)
            self._respond(request, ok=False, error=pp.ERR_GATT_ERROR, reason=f"internal error: {exc!r}")

    async def _connect(self, request: pp.ProxyRequest, remaining: float) -> None:
        peer = self._peers.get(request.address)
        if peer is not None:
            if peer.owner != request.owner:
                self._respond(request, ok=False, error=pp.ERR_BUSY, reason="connected for another gateway")
            elif peer.state == "connected":
                self._respond(request, mtu=peer.mtu)
            else:
                peer.waiting.append(request)
            return
        if len(self._peers) >= self.slots:
            self._respond(
                request,
                ok=False,
                error=pp.ERR_INSUFFICIENT_RESOURCES,
                reason=f"no free connection slot ({self.slots} of {self.slots} in use)",
            )
            return
        peer = _Peer(request.address, request.owner, task=asyncio.current_task())
        self._peers[request.address] = peer
        self._publish_slots()
        error, reason = 0, ""
        try:
            async with asyncio.timeout(remaining):
                async with self._connect_gate:
                    device: BLEDevice | str = self.find_device(request.address) or request.address
                    client = BleakClient(
                        device,
                        disconnected_callback=partial(self._on_disconnect, peer),
                        timeout=remaining,
                        backend=self.backend,
                    )
                    peer.client = client
                    await client.connect()
        except asyncio.CancelledError:
            if peer.cancelled is None:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # cancelled on purpose (disconnect, BT-2 first): answer, then end normally
            error, reason = pp.ERR_CONN_CANCELLED, peer.cancelled
        except TimeoutError:
            error, reason = pp.ERR_CONN_TIMEOUT, f"no connection within {remaining:.1f} s"
        except Exception as exc:
            error, reason = pp.ERR_CONN_FAIL_ESTABLISH, gatt_error(exc, "connect")[1]
        if error or peer.closing:
            await self._forget(peer)
            for req in [request, *peer.waiting]:
                self._respond(
                    req, ok=False, error=error or pp.ERR_CONN_CANCELLED, reason=reason or "disconnected"
                )
            return
        peer.state = "connected"
        peer.task = None
        peer.mtu = mtu_of(client)
        self.connects += 1
        _LOGGER.info(
            "proxied connection to %s up (MTU %d) in %.2f s",
            peer.address,
            peer.mtu,
            time.monotonic() - peer.since,
        )
        for req in [request, *peer.waiting]:
            self._respond(req, mtu=peer.mtu)
        peer.waiting.clear()

    async def _disconnect(self, request: pp.ProxyRequest) -> None:
        peer = self._peers.get(request.address)
        if peer is not None and peer.owner != request.owner:
            self._respond(request, ok=False, error=pp.ERR_BUSY, reason="connected for another gateway")
            return
        if peer is not None:
            await self._drop(peer, "disconnect requested")
        self._respond(request)

    async def _drop(self, peer: _Peer, why: str = "dropped") -> None:
        """End a connection or connect attempt on purpose and free its slot."""
        if peer.state == "connecting" and peer.task is not None and not peer.task.done():
            peer.cancelled = why
            peer.task.cancel()
            return  # the connect task answers and frees the slot
        await self._forget(peer)

    async def _forget(self, peer: _Peer) -> None:
        peer.closing = True
        if self._peers.get(peer.address) is peer:
            del self._peers[peer.address]
            self._publish_slots()
        client = peer.client
        if client is not None:
            try:
                async with asyncio.timeout(DISCONNECT_TIMEOUT):
                    await client.disconnect()
            except Exception as exc:
                _LOGGER.debug("disconnect from %s did not complete cleanly: %r", peer.address, exc)

    async def yield_adapter(self) -> None:
        """The BT-2 needs the adapter to connect: cancel proxied connects still in progress."""
        for peer in list(self._peers.values()):
            if peer.state == "connecting":
                _LOGGER.info("cancelling the proxied connect to %s: the BT-2 reconnects first", peer.address)
                await self._drop(peer, "the reader reconnects to its BT-2 first")

    async def _gatt(self, request: pp.ProxyRequest, remaining: float) -> None:
        peer = self._peers.get(request.address)
        if peer is None or peer.state != "connected" or peer.owner != request.owner or peer.client is None:
            self._respond(request, ok=False, error=pp.ERR_NOT_CONNECTED, reason="not connected")
            return
        client = peer.client
        try:
            async with peer.lock, asyncio.timeout(remaining):
                await self._gatt_op(peer, client, request)
        except _Refused as exc:
            self._respond(request, ok=False, error=exc.code, reason=str(exc))
        except Exception as exc:
            code, reason = gatt_error(exc, request.op)
            if not client.is_connected:
                code = pp.ERR_NOT_CONNECTED
            self._respond(request, ok=False, error=code, reason=reason)

    async def _gatt_op(self, peer: _Peer, client: BleakClient, request: pp.ProxyRequest) -> None:
        op, handle = request.op, request.handle
        if op == "services":
            self._respond(request, services=services_of(client))
        elif op == "read":
            data = await client.read_gatt_char(_char(client, handle))
            self._respond(request, data=bytes(data))
        elif op == "read_descriptor":
            data = await client.read_gatt_descriptor(_descriptor(client, handle).handle)
            self._respond(request, data=bytes(data))
        elif op == "write":
            await client.write_gatt_char(_char(client, handle), request.data, response=request.response)
            self._respond(request)
        elif op == "write_descriptor":
            descriptor = _descriptor(client, handle)
            if descriptor.uuid == CCCD_UUID:
                # BlueZ owns the CCCD (writing it over D-Bus is refused): turn notifications on or off instead.
                char = _char(client, descriptor.characteristic_handle)
                await self._set_notify(peer, client, char, bool(request.data[:1] and request.data[0] & 0x03))
            else:
                await client.write_gatt_descriptor(descriptor.handle, request.data)
            self._respond(request)
        elif op == "notify":
            await self._set_notify(peer, client, _char(client, handle), request.enable)
            self._respond(request)
        elif op == "pair":
            await client.pair()
            self._respond(request, paired=True)
        elif op == "unpair":
            await client.unpair()
            self._respond(request, paired=False)
        else:  # clear_cache: BlueZ keeps its GATT cache per device; bleak cannot clear it
            raise _Refused(pp.ERR_REQUEST_NOT_SUPPORTED, "clearing the GATT cache is not supported")

    async def _set_notify(
        self, peer: _Peer, client: BleakClient, char: BleakGATTCharacteristic, on: bool
    ) -> None:
        if on and char.handle not in peer.notifying:
            if "notify" not in char.properties and "indicate" not in char.properties:
                raise _Refused(pp.ERR_REQUEST_NOT_SUPPORTED, f"characteristic {char.uuid} does not notify")
            await client.start_notify(char, partial(self._on_notify, peer))
            peer.notifying.add(char.handle)
        elif not on and char.handle in peer.notifying:
            peer.notifying.discard(char.handle)
            await client.stop_notify(char)

    async def close(self) -> None:
        """Reader shutdown: end every proxied connection."""
        for peer in list(self._peers.values()):
            peer.cancelled = "the reader stops"
            await self._drop(peer, "the reader stops")
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        self._peers.clear()
        self._publish_slots()


class _Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def _char(client: BleakClient, handle: int) -> BleakGATTCharacteristic:
    char = client.services.get_characteristic(handle)
    if char is None:
        raise _Refused(pp.ERR_INVALID_HANDLE, f"no characteristic with handle {handle}")
    return char


def _descriptor(client: BleakClient, handle: int) -> Any:
    descriptor = client.services.get_descriptor(handle)
    if descriptor is None:
        raise _Refused(pp.ERR_INVALID_HANDLE, f"no descriptor with handle {handle}")
    return descriptor
