"""The active Bluetooth proxy over MQTT: requests (gateway -> reader), responses, notifications, slots.

docs/mqtt.md ("Active Bluetooth proxy") is the prose version. Every request carries an ``id`` (echoed in
its response) and a ``deadline`` (epoch seconds) plus ``timeout`` (seconds): the reader never starts a
request whose deadline has passed (a broker may deliver a request late, e.g. after a reconnect) and
bounds the operation by the earlier of the two. Error codes are the ones ESPHome reports and
aioesphomeapi / bleak-esphome understand (``ESPHOME_GATT_ERRORS``, ``BLEConnectionError``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from shared.payloads import PayloadError, dumps, loads_object
from shared.topics import SCHEMA, Topics

OPS: Final = (
    "connect",
    "disconnect",
    "services",
    "read",
    "read_descriptor",
    "write",
    "write_descriptor",
    "notify",
    "pair",
    "unpair",
    "clear_cache",
)
HANDLE_OPS: Final = frozenset({"read", "read_descriptor", "write", "write_descriptor", "notify"})
DISCONNECTED_EVENT: Final = "disconnected"

# How long the gateway gives the reader (the client itself waits 30 s: an answer arrives before it gives up).
CONNECT_TIMEOUT: Final = 20.0
GATT_TIMEOUT: Final = 10.0
# After the deadline the gateway answers on the reader's behalf (reader or broker gone).
ANSWER_GRACE: Final = 2.0

# GATT / connection error codes (aioesphomeapi core.ESPHOME_GATT_ERRORS and ble_defs.BLEConnectionError).
ERR_NOT_CONNECTED: Final = -1  # bleak-esphome marks the device disconnected on this one
ERR_INVALID_HANDLE: Final = 0x01
ERR_READ_NOT_PERMITTED: Final = 0x02
ERR_WRITE_NOT_PERMITTED: Final = 0x03
ERR_INVALID_PDU: Final = 0x04
ERR_INSUFFICIENT_AUTHENTICATION: Final = 0x05
ERR_REQUEST_NOT_SUPPORTED: Final = 0x06
ERR_INVALID_OFFSET: Final = 0x07
ERR_INSUFFICIENT_AUTHORIZATION: Final = 0x08
ERR_INVALID_ATTRIBUTE_LENGTH: Final = 0x0D
ERR_UNLIKELY: Final = 0x0E
ERR_INSUFFICIENT_ENCRYPTION: Final = 0x0F
ERR_INSUFFICIENT_RESOURCES: Final = 0x11  # no free connection slot
ERR_BUSY: Final = 0x84  # the device is held by another client
ERR_GATT_ERROR: Final = 0x85  # generic failure, timeouts
ERR_CONN_TIMEOUT: Final = 0x08  # connection: supervision / connect timeout
ERR_CONN_TERMINATED_BY_PEER: Final = 0x13
ERR_CONN_TERMINATED_LOCALLY: Final = 0x16
ERR_CONN_FAIL_ESTABLISH: Final = 0x3E
ERR_CONN_CANCELLED: Final = 0x100

_ADDRESS = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2}){5}$")
_ID = re.compile(r"^[A-Za-z0-9_.:/-]{1,80}$")
MAX_DATA: Final = 512  # an attribute value is at most 512 bytes
MAX_SERVICES: Final = 64
MAX_CHARS: Final = 64


def request_topic(topics: Topics, instance: str) -> str:
    return f"{topics.root}/bridge/reader/{instance}/proxy/request"


def response_topic(topics: Topics, instance: str) -> str:
    return f"{topics.root}/bridge/reader/{instance}/proxy/response"


def notify_topic(topics: Topics, instance: str) -> str:
    return f"{topics.root}/bridge/reader/{instance}/proxy/notify"


def slots_topic(topics: Topics, instance: str) -> str:
    return f"{topics.root}/bridge/reader/{instance}/proxy/slots"


def int_to_address(value: int) -> str:
    if not 0 <= value < 1 << 48:
        raise ValueError(f"{value} is not a 48-bit Bluetooth address")
    text = f"{value:012X}"
    return ":".join(text[i : i + 2] for i in range(0, 12, 2))


def address_to_int(text: str) -> int:
    return int(text.replace(":", ""), 16)


def _address(obj: Mapping[str, Any], key: str = "address") -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not _ADDRESS.match(value.upper()):
        raise PayloadError(f"{key!r} must be a Bluetooth address like A4:C1:38:12:34:56")
    return value.upper()


def _int(obj: Mapping[str, Any], key: str, low: int, high: int, default: int | None = None) -> int:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PayloadError(f"{key!r} must be an integer {low}..{high}")
    return value


def _float(obj: Mapping[str, Any], key: str) -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PayloadError(f"{key!r} must be a finite number")
    return float(value)


def _hex(obj: Mapping[str, Any], key: str = "data") -> bytes:
    value = obj.get(key, "")
    if not isinstance(value, str):
        raise PayloadError(f"{key!r} must be a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise PayloadError(f"{key!r} is not hex") from None
    if len(raw) > MAX_DATA:
        raise PayloadError(f"{key!r} holds {len(raw)} bytes, at most {MAX_DATA} allowed")
    return raw


def _bool(obj: Mapping[str, Any], key: str, default: bool = False) -> bool:
    value = obj.get(key, default)
    if not isinstance(value, bool):
        raise PayloadError(f"{key!r} must be true or false")
    return value


def _text(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not _ID.match(value):
        raise PayloadError(f"{key!r} must be 1-80 characters of [A-Za-z0-9_.:/-]")
    return value


@dataclass(frozen=True, slots=True)
class ProxyRequest:
    """One operation the gateway asks the reader to run on its adapter."""

    id: str
    op: str
    owner: str  # "<gateway instance>/<gateway boot id>": who holds the connection
    address: str
    deadline: float
    timeout: float
    address_type: int = 0
    handle: int = 0
    data: bytes = b""
    response: bool = False
    enable: bool = False

    def to_payload(self) -> bytes:
        body: dict[str, Any] = {
            "schema": SCHEMA,
            "id": self.id,
            "op": self.op,
            "owner": self.owner,
            "address": self.address,
            "deadline": round(self.deadline, 3),
            "timeout": self.timeout,
        }
        if self.op == "connect":
            body["address_type"] = self.address_type
        if self.op in HANDLE_OPS:
            body["handle"] = self.handle
        if self.op in ("write", "write_descriptor"):
            body["data"] = self.data.hex()
        if self.op == "write":
            body["response"] = self.response
        if self.op == "notify":
            body["enable"] = self.enable
        return dumps(body)


def parse_request(payload: bytes | bytearray | str) -> ProxyRequest:
    obj = loads_object(payload)
    op = obj.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise PayloadError(f"'op' must be one of {', '.join(OPS)}")
    timeout = _float(obj, "timeout")
    if not 0 < timeout <= 120:
        raise PayloadError("'timeout' must be in (0, 120] seconds")
    return ProxyRequest(
        id=_text(obj, "id"),
        op=op,
        owner=_text(obj, "owner"),
        address=_address(obj),
        deadline=_float(obj, "deadline"),
        timeout=timeout,
        address_type=_int(obj, "address_type", 0, 4, 0),
        handle=_int(obj, "handle", 0, 0xFFFF, 0),
        data=_hex(obj),
        response=_bool(obj, "response"),
        enable=_bool(obj, "enable"),
    )


@dataclass(frozen=True, slots=True)
class GattDescriptor:
    uuid: str
    handle: int


@dataclass(frozen=True, slots=True)
class GattCharacteristic:
    uuid: str
    handle: int
    properties: int
    descriptors: tuple[GattDescriptor, ...] = ()


@dataclass(frozen=True, slots=True)
class GattService:
    uuid: str
    handle: int
    characteristics: tuple[GattCharacteristic, ...] = ()


def services_to_json(services: tuple[GattService, ...]) -> list[dict[str, Any]]:
    return [
        {
            "uuid": s.uuid,
            "handle": s.handle,
            "characteristics": [
                {
                    "uuid": c.uuid,
                    "handle": c.handle,
                    "properties": c.properties,
                    "descriptors": [{"uuid": d.uuid, "handle": d.handle} for d in c.descriptors],
                }
                for c in s.characteristics
            ],
        }
        for s in services
    ]


_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _uuid(obj: Mapping[str, Any]) -> str:
    value = obj.get("uuid")
    if not isinstance(value, str) or not _UUID.match(value.lower()):
        raise PayloadError("'uuid' must be a 128-bit UUID string")
    return value.lower()


def _list(obj: Mapping[str, Any], key: str, limit: int) -> list[Any]:
    value = obj.get(key, [])
    if not isinstance(value, list) or len(value) > limit or not all(isinstance(v, dict) for v in value):
        raise PayloadError(f"{key!r} must be a list of at most {limit} objects")
    return value


def parse_services(items: Any) -> tuple[GattService, ...]:
    if not isinstance(items, list):
        raise PayloadError("'services' must be a list")
    out = []
    for svc in _list({"services": items}, "services", MAX_SERVICES):
        chars = []
        for char in _list(svc, "characteristics", MAX_CHARS):
            descs = tuple(
                GattDescriptor(_uuid(d), _int(d, "handle", 0, 0xFFFF)) for d in _list(char, "descriptors", 16)
            )
            chars.append(
                GattCharacteristic(
                    _uuid(char), _int(char, "handle", 0, 0xFFFF), _int(char, "properties", 0, 0xFFFF), descs
                )
            )
        out.append(GattService(_uuid(svc), _int(svc, "handle", 0, 0xFFFF), tuple(chars)))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class ProxyResponse:
    """The answer to one request (``id`` set) or a connection event (``event`` set, ``id`` None)."""

    address: str
    owner: str
    id: str | None = None
    op: str | None = None
    event: str | None = None
    ok: bool = True
    error: int = 0
    reason: str = ""
    mtu: int = 0
    handle: int = 0
    data: bytes = b""
    paired: bool = False
    services: tuple[GattService, ...] = field(default_factory=tuple)

    def to_payload(self) -> bytes:
        body: dict[str, Any] = {
            "schema": SCHEMA,
            "id": self.id,
            "address": self.address,
            "owner": self.owner,
            "ok": self.ok,
            "error": self.error,
        }
        optional = (
            ("op", self.op, self.op is not None),
            ("event", self.event, self.event is not None),
            ("reason", self.reason, bool(self.reason)),
            ("mtu", self.mtu, bool(self.mtu)),
            ("handle", self.handle, self.op in HANDLE_OPS),
            ("data", self.data.hex(), self.op in ("read", "read_descriptor")),
            ("paired", self.paired, self.op in ("pair", "unpair")),
        )
        body.update({key: value for key, value, wanted in optional if wanted})
        if self.op == "services":
            body["services"] = services_to_json(self.services)
        return dumps(body)


def parse_response(payload: bytes | bytearray | str) -> ProxyResponse:
    obj = loads_object(payload)
    request_id = obj.get("id")
    event = obj.get("event")
    if request_id is None:
        if event != DISCONNECTED_EVENT:
            raise PayloadError("a message without 'id' must be a 'disconnected' event")
    elif not isinstance(request_id, str) or not _ID.match(request_id):
        raise PayloadError("'id' must be a request id")
    op = obj.get("op")
    if op is not None and (not isinstance(op, str) or op not in OPS):
        raise PayloadError(f"'op' must be one of {', '.join(OPS)}")
    reason = obj.get("reason", "")
    if not isinstance(reason, str):
        raise PayloadError("'reason' must be a string")
    return ProxyResponse(
        address=_address(obj),
        owner=_text(obj, "owner"),
        id=request_id,
        op=op,
        event=event if isinstance(event, str) else None,
        ok=_bool(obj, "ok", True),
        error=_int(obj, "error", -1, 0xFFFF, 0),
        reason=reason[:200],
        mtu=_int(obj, "mtu", 0, 517, 0),
        handle=_int(obj, "handle", 0, 0xFFFF, 0),
        data=_hex(obj),
        paired=_bool(obj, "paired"),
        services=parse_services(obj.get("services", [])),
    )


@dataclass(frozen=True, slots=True)
class Notification:
    address: str
    owner: str
    handle: int
    data: bytes

    def to_payload(self) -> bytes:
        return dumps(
            {
                "schema": SCHEMA,
                "address": self.address,
                "owner": self.owner,
                "handle": self.handle,
                "data": self.data.hex(),
            }
        )


def parse_notification(payload: bytes | bytearray | str) -> Notification:
    obj = loads_object(payload)
    return Notification(_address(obj), _text(obj, "owner"), _int(obj, "handle", 0, 0xFFFF), _hex(obj))


@dataclass(frozen=True, slots=True)
class Slots:
    """The reader's connection slots: ``limit`` in all, ``allocated`` the addresses holding one."""

    limit: int
    allocated: tuple[str, ...] = ()
    ts: float = 0.0

    @property
    def free(self) -> int:
        return max(0, self.limit - len(self.allocated))

    def to_payload(self) -> bytes:
        return dumps(
            {
                "schema": SCHEMA,
                "ts": round(self.ts, 3),
                "limit": self.limit,
                "free": self.free,
                "allocated": list(self.allocated),
            }
        )


def parse_slots(payload: bytes | bytearray | str) -> Slots:
    obj = loads_object(payload)
    allocated = obj.get("allocated", [])
    if not isinstance(allocated, list) or len(allocated) > 16:
        raise PayloadError("'allocated' must be a list of at most 16 addresses")
    addresses = tuple(_address({"address": a}) for a in allocated)
    return Slots(_int(obj, "limit", 0, 16), addresses, float(obj.get("ts", 0.0) or 0.0))
