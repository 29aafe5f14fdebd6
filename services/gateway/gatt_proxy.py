"""Active Bluetooth proxy on the gateway: ESPHome's connection and GATT messages, carried to the reader.

API clients (Home Assistant's bleak-esphome) send ``BluetoothDeviceRequest`` and the GATT requests;
each becomes an MQTT request with an id and a deadline (shared.proxy_payloads) that the reader runs
on its adapter, and the reader's answer becomes the message the client waits for. The gateway keeps
who holds which device (one API client per address), answers on the reader's behalf when it does not
answer in time, reports every unsolicited disconnect (``connected=false``, so no client call hangs)
and releases a client's devices when the client goes away.

Slots: the reader owns them (``reader.proxy_slots``) and publishes its allocation (retained); the
gateway also counts connects it has sent but the reader has not confirmed yet, so two clients
asking at once never both see the last slot free. ``BluetoothConnectionsFreeResponse`` goes to every
subscribed client at once and after every change.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from google.protobuf.message import DecodeError

from services.gateway import messages as ids
from services.gateway.framing import Frame
from services.gateway.messages import frame_of
from services.gateway.proto import pb
from shared import proxy_payloads as pp
from shared.mqtt import Message
from shared.payloads import PayloadError, loads_object
from shared.service import RepeatFilter
from shared.topics import Topics

_LOGGER = logging.getLogger(__name__)

FEATURE_ACTIVE_CONNECTIONS: Final = 1 << 1
FEATURE_REMOTE_CACHING: Final = 1 << 2
FEATURE_PAIRING: Final = 1 << 3
# Home Assistant's client refuses ACTIVE_CONNECTIONS without REMOTE_CACHING (only V3 connects exist).
# CACHE_CLEARING is not offered: BlueZ keeps its own GATT cache and bleak cannot clear it.
ACTIVE_FLAGS: Final = FEATURE_ACTIVE_CONNECTIONS | FEATURE_REMOTE_CACHING | FEATURE_PAIRING

CONNECT: Final = 0
DISCONNECT: Final = 1
PAIR: Final = 2
UNPAIR: Final = 3
CONNECT_WITH_CACHE: Final = 4
CONNECT_WITHOUT_CACHE: Final = 5
CLEAR_CACHE: Final = 6

_GATT_OPS: Final = {
    ids.BT_GATT_GET_SERVICES: (pb.BluetoothGATTGetServicesRequest, "services"),
    ids.BT_GATT_READ: (pb.BluetoothGATTReadRequest, "read"),
    ids.BT_GATT_READ_DESCRIPTOR: (pb.BluetoothGATTReadDescriptorRequest, "read_descriptor"),
    ids.BT_GATT_WRITE: (pb.BluetoothGATTWriteRequest, "write"),
    ids.BT_GATT_WRITE_DESCRIPTOR: (pb.BluetoothGATTWriteDescriptorRequest, "write_descriptor"),
    ids.BT_GATT_NOTIFY: (pb.BluetoothGATTNotifyRequest, "notify"),
}
REQUEST_TYPES: Final = frozenset({ids.BT_DEVICE_REQUEST, *_GATT_OPS})


class ProxyClient(Protocol):
    """What the proxy needs from an API connection."""

    peer: str

    @property
    def closing(self) -> bool: ...

    def send_frames(self, frames: list[Frame]) -> None: ...


@dataclass(eq=False)
class _Pending:
    client: ProxyClient
    op: str
    address: int
    handle: int
    timer: asyncio.TimerHandle | None = None
    sent_at: float = 0.0


def uuid_words(uuid: str) -> tuple[int, int]:
    """A UUID as ESPHome's two 64-bit words (high, low)."""
    value = int(uuid.replace("-", ""), 16)
    return value >> 64, value & ((1 << 64) - 1)


def services_frames(address: int, services: tuple[pp.GattService, ...]) -> list[Frame]:
    """One BluetoothGATTGetServicesResponse per service, then the done message (128-bit UUIDs: every
    client version reads them)."""
    frames = []
    for service in services:
        msg = pb.BluetoothGATTGetServicesResponse(address=address)
        svc = msg.services.add(handle=service.handle)
        svc.uuid.extend(uuid_words(service.uuid))
        for char in service.characteristics:
            c = svc.characteristics.add(handle=char.handle, properties=char.properties)
            c.uuid.extend(uuid_words(char.uuid))
            for desc in char.descriptors:
                d = c.descriptors.add(handle=desc.handle)
                d.uuid.extend(uuid_words(desc.uuid))
        frames.append(frame_of(msg))
    frames.append(frame_of(pb.BluetoothGATTGetServicesDoneResponse(address=address)))
    return frames


def connection_frame(address: int, connected: bool, mtu: int = 0, error: int = 0) -> Frame:
    return frame_of(
        pb.BluetoothDeviceConnectionResponse(address=address, connected=connected, mtu=mtu, error=error)
    )


def gatt_error_frame(address: int, handle: int, error: int) -> Frame:
    return frame_of(pb.BluetoothGATTErrorResponse(address=address, handle=handle, error=error))


class GattProxy:
    """Connections and GATT operations of API clients, forwarded to the reader over MQTT."""

    def __init__(
        self,
        *,
        topics: Topics,
        reader_instance: str,
        owner: str,
        publish: Callable[[str, bytes], bool],
        connect_timeout: float = pp.CONNECT_TIMEOUT,
        gatt_timeout: float = pp.GATT_TIMEOUT,
        grace: float = pp.ANSWER_GRACE,
    ) -> None:
        self.owner = owner
        self.publish = publish
        self.connect_timeout = connect_timeout
        self.gatt_timeout = gatt_timeout
        self.grace = grace
        self.request_topic = pp.request_topic(topics, reader_instance)
        self.response_topic = pp.response_topic(topics, reader_instance)
        self.notify_topic = pp.notify_topic(topics, reader_instance)
        self.slots_topic = pp.slots_topic(topics, reader_instance)
        self.reader_state_topic = topics.bridge_state("reader", reader_instance)
        self.feature_flags = ACTIVE_FLAGS
        self.request_types = REQUEST_TYPES
        self.slots: pp.Slots | None = None  # the reader's, None until it reports (or while it is offline)
        self.owners: dict[int, ProxyClient] = {}
        self.connecting: set[int] = set()
        self.connected: dict[int, int] = {}  # address -> MTU
        self.free_subscribers: set[ProxyClient] = set()
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count(1)
        self._prefix = owner.rpartition("/")[2][:12] or "gw"
        self._last_free: tuple[int, int, tuple[int, ...]] | None = None
        self._log = RepeatFilter(_LOGGER)
        self.requests_sent = 0
        self.notifications_forwarded = 0
        self.answered_for_reader = 0
        self.bad_payloads = 0

    @property
    def filters(self) -> list[tuple[str, int]]:
        return [(self.response_topic, 1), (self.notify_topic, 0), (self.slots_topic, 1)]

    # --- slots ------------------------------------------------------------------------------------

    def free_state(self) -> tuple[int, int, tuple[int, ...]]:
        """(free, limit, allocated addresses) as BluetoothConnectionsFreeResponse carries them."""
        limit = self.slots.limit if self.slots is not None else 0
        in_use = set(self.connecting) | set(self.connected)
        if self.slots is not None:
            in_use |= {pp.address_to_int(a) for a in self.slots.allocated}
        return max(0, limit - len(in_use)), limit, tuple(sorted(in_use))

    def _free_frame(self) -> Frame:
        free, limit, allocated = self.free_state()
        return frame_of(pb.BluetoothConnectionsFreeResponse(free=free, limit=limit, allocated=allocated))

    def subscribe_free(self, client: ProxyClient) -> None:
        self.free_subscribers.add(client)
        client.send_frames([self._free_frame()])

    def _slots_changed(self) -> None:
        state = self.free_state()
        if state == self._last_free:
            return
        self._last_free = state
        frame = self._free_frame()
        for client in list(self.free_subscribers):
            client.send_frames([frame])

    # --- API side ---------------------------------------------------------------------------------

    def handle(self, client: ProxyClient, msg_type: int, payload: bytes) -> None:
        """A connection or GATT request of an API client."""
        if msg_type == ids.BT_DEVICE_REQUEST:
            msg = _parse(pb.BluetoothDeviceRequest, payload)
            if msg is not None:
                self._device_request(client, msg)
            return
        cls, op = _GATT_OPS[msg_type]
        msg = _parse(cls, payload)
        if msg is None:
            return
        address = int(msg.address)
        handle = int(getattr(msg, "handle", 0))
        if self.owners.get(address) is not client or address not in self.connected:
            client.send_frames([gatt_error_frame(address, handle, pp.ERR_NOT_CONNECTED)])
            return
        self._send(
            client,
            op,
            address,
            self.gatt_timeout,
            handle=handle,
            data=bytes(getattr(msg, "data", b"")),
            response=bool(getattr(msg, "response", False)),
            enable=bool(getattr(msg, "enable", False)),
        )

    def _device_request(self, client: ProxyClient, msg: Any) -> None:
        address, kind = int(msg.address), int(msg.request_type)
        holder = self.owners.get(address)
        if kind in (CONNECT_WITH_CACHE, CONNECT_WITHOUT_CACHE):
            if holder is not None and holder is not client:
                client.send_frames([connection_frame(address, False, error=pp.ERR_BUSY)])
            elif holder is client:
                if address in self.connected:
                    client.send_frames([connection_frame(address, True, self.connected[address])])
                # still connecting: the answer is on its way
            elif self.free_state()[0] <= 0:
                client.send_frames(
                    [
                        connection_frame(address, False, error=pp.ERR_INSUFFICIENT_RESOURCES),
                        self._free_frame(),
                    ]
                )
            else:
                self.owners[address] = client
                self.connecting.add(address)
                address_type = int(msg.address_type) if msg.has_address_type else 0
                self._send(client, "connect", address, self.connect_timeout, address_type=address_type)
                self._slots_changed()
        elif kind == DISCONNECT:
            if holder is not None and holder is not client:
                client.send_frames([connection_frame(address, False)])  # not this client's to end
                return
            self._send(client, "disconnect", address, self.gatt_timeout)
        elif kind in (PAIR, UNPAIR):
            op = "pair" if kind == PAIR else "unpair"
            if holder is not client or address not in self.connected:
                client.send_frames([_pairing_frame(op, address, False, pp.ERR_NOT_CONNECTED)])
                return
            self._send(client, op, address, self.connect_timeout)
        elif kind == CLEAR_CACHE:
            reply = pb.BluetoothDeviceClearCacheResponse(
                address=address, success=False, error=pp.ERR_REQUEST_NOT_SUPPORTED
            )
            client.send_frames([frame_of(reply)])
        else:  # CONNECT (v1): gone from ESPHome, which answers it with "disconnected"
            client.send_frames([connection_frame(address, False)])

    def _send(self, client: ProxyClient, op: str, address: int, timeout: float, **fields: Any) -> None:
        request_id = f"{self._prefix}-{next(self._ids)}"
        now = time.time()
        request = pp.ProxyRequest(
            id=request_id,
            op=op,
            owner=self.owner,
            address=pp.int_to_address(address),
            deadline=now + timeout,
            timeout=timeout,
            **fields,
        )
        pending = _Pending(client, op, address, int(fields.get("handle", 0)), sent_at=time.monotonic())
        self._pending[request_id] = pending
        if not self.publish(self.request_topic, request.to_payload()):
            self._log.failure("publish", "cannot pass a Bluetooth %s request to the reader (MQTT down)", op)
            self._give_up(request_id, pp.ERR_NOT_CONNECTED)
            return
        self._log.success("publish")
        self.requests_sent += 1
        loop = asyncio.get_running_loop()
        pending.timer = loop.call_later(timeout + self.grace, self._give_up, request_id, pp.ERR_GATT_ERROR)

    def _give_up(self, request_id: str, error: int) -> None:
        """No answer from the reader in time (or it cannot be asked): answer the client ourselves."""
        pending = self._pending.pop(request_id, None)
        if pending is None:
            return
        self.answered_for_reader += 1
        if pending.timer is not None:
            pending.timer.cancel()
        address, client = pending.address, pending.client
        if pending.op == "connect":
            self.connecting.discard(address)
            if self.owners.get(address) is client:
                del self.owners[address]
            # The reader may still connect later: make sure it lets go again.
            self._publish_only("disconnect", address)
            self._slots_changed()
            frame = connection_frame(address, False, error=pp.ERR_CONN_TIMEOUT if error >= 0 else error)
        elif pending.op == "disconnect":
            self._release(address)
            frame = connection_frame(address, False)
        elif pending.op in ("pair", "unpair"):
            frame = _pairing_frame(pending.op, address, False, error)
        else:
            frame = gatt_error_frame(address, pending.handle, error)
        if not client.closing:
            client.send_frames([frame])

    def _publish_only(self, op: str, address: int) -> None:
        request = pp.ProxyRequest(
            id=f"{self._prefix}-{next(self._ids)}",
            op=op,
            owner=self.owner,
            address=pp.int_to_address(address),
            deadline=time.time() + self.gatt_timeout,
            timeout=self.gatt_timeout,
        )
        self.publish(self.request_topic, request.to_payload())

    def _release(self, address: int) -> None:
        self.owners.pop(address, None)
        self.connecting.discard(address)
        self.connected.pop(address, None)
        self._slots_changed()

    def client_gone(self, client: ProxyClient) -> None:
        """An API client disconnected: end its connections (and attempts) and free their slots."""
        self.free_subscribers.discard(client)
        for address in [a for a, holder in self.owners.items() if holder is client]:
            _LOGGER.info(
                "API client %s left: releasing its Bluetooth connection to %s",
                client.peer,
                pp.int_to_address(address),
            )
            self._publish_only("disconnect", address)
            self._release(address)
        for request_id, pending in list(self._pending.items()):
            if pending.client is client and pending.op != "connect":  # a late connect is undone on arrival
                self._pending.pop(request_id)
                if pending.timer is not None:
                    pending.timer.cancel()

    # --- MQTT side --------------------------------------------------------------------------------

    def handle_message(self, message: Message) -> bool:
        """A reader message for the proxy; False for topics that are not the proxy's."""
        topic = message.topic
        try:
            if topic == self.notify_topic:
                self._notification(message.payload)
            elif topic == self.response_topic:
                if message.payload and not message.retain:
                    self._response(pp.parse_response(message.payload))
            elif topic == self.slots_topic:
                self.slots = pp.parse_slots(message.payload) if message.payload else None
                self._slots_changed()
            elif topic == self.reader_state_topic:
                if message.payload and loads_object(message.payload).get("state") == "offline":
                    self.reader_offline()
                return False  # the Bluetooth hub reads it too
            else:
                return False
        except PayloadError as exc:
            self.bad_payloads += 1
            self._log.failure(topic, "dropping a bad payload on %s: %s", topic, exc)
        return True

    def _notification(self, payload: bytes) -> None:
        note = pp.parse_notification(payload)
        if note.owner != self.owner:
            return
        address = pp.address_to_int(note.address)
        client = self.owners.get(address)
        if client is None or address not in self.connected:
            return
        self.notifications_forwarded += 1
        client.send_frames(
            [
                frame_of(
                    pb.BluetoothGATTNotifyDataResponse(address=address, handle=note.handle, data=note.data)
                )
            ]
        )

    def _response(self, resp: pp.ProxyResponse) -> None:
        if resp.owner != self.owner:
            return
        address = pp.address_to_int(resp.address)
        if resp.id is None:  # unsolicited: the device disconnected
            client = self.owners.get(address)
            if address in self.connected:
                self._release(address)
                if client is not None:
                    _LOGGER.info(
                        "Bluetooth device %s disconnected (%s)", resp.address, resp.reason or resp.error
                    )
                    client.send_frames([connection_frame(address, False, error=resp.error)])
            return
        pending = self._pending.pop(resp.id, None)
        if pending is None:
            if resp.op == "connect" and resp.ok and self.owners.get(address) is None:
                self._publish_only("disconnect", address)  # answered too late: nobody wants it now
            return
        if pending.timer is not None:
            pending.timer.cancel()
        client, gone = pending.client, pending.client.closing
        frames: list[Frame]
        if pending.op == "connect":
            self.connecting.discard(address)
            if resp.ok and not gone and self.owners.get(address) is client:
                self.connected[address] = resp.mtu or 23
                frames = [connection_frame(address, True, resp.mtu or 23)]
            else:
                if self.owners.get(address) is client:
                    del self.owners[address]
                if resp.ok:
                    self._publish_only("disconnect", address)
                frames = [connection_frame(address, False, error=resp.error or pp.ERR_CONN_FAIL_ESTABLISH)]
            self._slots_changed()
        elif pending.op == "disconnect":
            if self.owners.get(address) in (client, None):
                self._release(address)
            frames = [connection_frame(address, False)]
        elif not resp.ok:
            if pending.op in ("pair", "unpair"):
                frames = [_pairing_frame(pending.op, address, False, resp.error)]
            else:
                frames = [gatt_error_frame(address, pending.handle, resp.error)]
        elif pending.op == "services":
            frames = services_frames(address, resp.services)
        elif pending.op in ("read", "read_descriptor"):
            frames = [
                frame_of(pb.BluetoothGATTReadResponse(address=address, handle=pending.handle, data=resp.data))
            ]
        elif pending.op in ("write", "write_descriptor"):
            frames = [frame_of(pb.BluetoothGATTWriteResponse(address=address, handle=pending.handle))]
        elif pending.op == "notify":
            frames = [frame_of(pb.BluetoothGATTNotifyResponse(address=address, handle=pending.handle))]
        else:
            frames = [_pairing_frame(pending.op, address, True, 0)]
        if not gone:
            client.send_frames(frames)

    def reader_offline(self) -> None:
        """The reader is gone, and with it every link it held: tell the clients, fail what is pending."""
        for address, client in list(self.owners.items()):
            if address in self.connected and not client.closing:
                client.send_frames([connection_frame(address, False, error=pp.ERR_CONN_TERMINATED_LOCALLY)])
        for request_id in list(self._pending):
            self._give_up(request_id, pp.ERR_NOT_CONNECTED)
        self.owners.clear()
        self.connecting.clear()
        self.connected.clear()
        self.slots = None
        self._slots_changed()

    def close(self) -> None:
        for pending in self._pending.values():
            if pending.timer is not None:
                pending.timer.cancel()
        self._pending.clear()
        self.free_subscribers.clear()

    def health(self) -> dict[str, Any]:
        free, limit, _allocated = self.free_state()
        return {
            "bluetooth_slots_free": free,
            "bluetooth_slots": limit,
            "bluetooth_connections": len(self.connected),
            "bluetooth_requests": self.requests_sent,
            "bluetooth_notifications": self.notifications_forwarded,
            "bluetooth_answered_for_reader": self.answered_for_reader,
        }


def _pairing_frame(op: str, address: int, ok: bool, error: int) -> Frame:
    if op == "pair":
        return frame_of(pb.BluetoothDevicePairingResponse(address=address, paired=ok, error=error))
    return frame_of(pb.BluetoothDeviceUnpairingResponse(address=address, success=ok, error=error))


def _parse(cls: Any, payload: bytes) -> Any:
    msg = cls()
    try:
        msg.ParseFromString(payload)
    except (DecodeError, ValueError, RuntimeError) as exc:
        _LOGGER.info("ignoring an undecodable %s: %s", cls.__name__, exc)
        return None
    return msg
