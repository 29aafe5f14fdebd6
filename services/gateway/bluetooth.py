"""Passive Bluetooth proxy: the reader's advertisement batches and scanner state, fanned out to API clients.

Advertisements are batched ESPHome's way (at most 16 per BluetoothLERawAdvertisementsResponse,
flushed every 100 ms); one encoded batch goes to every subscriber, and a subscriber whose socket
is backed up loses the batch instead of queueing it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final, Protocol

from services.gateway import messages as ids
from services.gateway.adparse import legacy_advert_message
from services.gateway.framing import Frame
from services.gateway.proto import pb
from shared.payloads import PayloadError, dumps, loads_object
from shared.topics import SCHEMA

if TYPE_CHECKING:
    from services.gateway.gatt_proxy import GattProxy

_LOGGER = logging.getLogger(__name__)

FEATURE_PASSIVE_SCAN: Final = 1 << 0
FEATURE_RAW_ADVERTISEMENTS: Final = 1 << 5
FEATURE_STATE_AND_MODE: Final = 1 << 6
FEATURE_FLAGS: Final = FEATURE_PASSIVE_SCAN | FEATURE_RAW_ADVERTISEMENTS | FEATURE_STATE_AND_MODE

BATCH_SIZE: Final = 16
FLUSH_INTERVAL: Final = 0.1
MAX_AD_BYTES: Final = 62
MAX_BATCH_IN: Final = 1024

SCANNER_STATES: Final = {"idle": 0, "starting": 1, "running": 2, "failed": 3, "stopping": 4, "stopped": 5}
SCANNER_MODES: Final = {"passive": 0, "active": 1}
MODE_NAMES: Final = {v: k for k, v in SCANNER_MODES.items()}
_ADDRESS = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")


@dataclass(frozen=True, slots=True)
class RawAdvert:
    address: int
    address_type: int
    rssi: int
    data: bytes


@dataclass(frozen=True, slots=True)
class AdvertBatch:
    adverts: tuple[RawAdvert, ...]
    adapter_address: str | None
    rejected: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ScannerStatus:
    state: int = SCANNER_STATES["idle"]
    mode: int = SCANNER_MODES["passive"]
    configured_mode: int = SCANNER_MODES["passive"]
    adapter_address: str | None = None


def address_to_int(text: str) -> int:
    if not _ADDRESS.match(text):
        raise ValueError(f"{text!r} is not a Bluetooth address")
    return int(text.replace(":", ""), 16)


def _adapter_address(obj: dict[str, Any]) -> str | None:
    value = obj.get("adapter_address")
    if value is None:
        return None
    if not isinstance(value, str) or not _ADDRESS.match(value):
        raise PayloadError("'adapter_address' must be a Bluetooth address like 00:1A:7D:DA:71:13")
    return value.upper()


def _int_field(item: dict[str, Any], key: str, low: int, high: int) -> int:
    value = item.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key!r} must be an integer {low}..{high}")
    return value


def _advert(item: Any) -> RawAdvert:
    if not isinstance(item, dict):
        raise ValueError("not an object")
    address = item.get("address")
    if not isinstance(address, str):
        raise ValueError("'address' must be a string")
    data = item.get("data", "")
    if not isinstance(data, str):
        raise ValueError("'data' must be a hex string")
    try:
        raw = bytes.fromhex(data)
    except ValueError:
        raise ValueError("'data' is not hex") from None
    if len(raw) > MAX_AD_BYTES:
        raise ValueError(f"'data' holds {len(raw)} bytes, at most {MAX_AD_BYTES} allowed")
    return RawAdvert(
        address=address_to_int(address),
        address_type=_int_field(item, "address_type", 0, 4),
        rssi=_int_field(item, "rssi", -128, 20),
        data=raw,
    )


def parse_advertisements(payload: bytes | bytearray | str) -> AdvertBatch:
    """A reader advertisement batch; single bad entries are skipped and reported in ``rejected``."""
    obj = loads_object(payload)
    items = obj.get("advertisements")
    if not isinstance(items, list) or len(items) > MAX_BATCH_IN:
        raise PayloadError(f"'advertisements' must be a list of at most {MAX_BATCH_IN} entries")
    adverts: list[RawAdvert] = []
    rejected: list[str] = []
    for index, item in enumerate(items):
        try:
            adverts.append(_advert(item))
        except ValueError as exc:
            rejected.append(f"advertisements[{index}]: {exc}")
    return AdvertBatch(tuple(adverts), _adapter_address(obj), tuple(rejected))


def parse_scanner_state(payload: bytes | bytearray | str) -> ScannerStatus:
    obj = loads_object(payload)
    state = obj.get("state")
    if not isinstance(state, str) or state not in SCANNER_STATES:
        raise PayloadError(f"'state' must be one of {', '.join(SCANNER_STATES)}")
    mode = obj.get("mode", "passive")
    configured = obj.get("configured_mode", mode)
    # Type checks first: a list or object is unhashable and would raise TypeError in the lookups.
    if (
        not isinstance(mode, str)
        or not isinstance(configured, str)
        or mode not in SCANNER_MODES
        or configured not in SCANNER_MODES
    ):
        raise PayloadError("'mode' and 'configured_mode' must be passive or active")
    return ScannerStatus(
        SCANNER_STATES[state], SCANNER_MODES[mode], SCANNER_MODES[configured], _adapter_address(obj)
    )


def mode_request_payload(mode: int) -> bytes:
    return dumps({"schema": SCHEMA, "mode": MODE_NAMES.get(mode, "passive")})


def scanner_frame(status: ScannerStatus) -> Frame:
    msg = pb.BluetoothScannerStateResponse(
        state=status.state, mode=status.mode, configured_mode=status.configured_mode
    )
    return Frame(ids.BT_SCANNER_STATE, msg.SerializeToString())


def adverts_frame(adverts: Iterable[RawAdvert]) -> Frame:
    msg = pb.BluetoothLERawAdvertisementsResponse()
    add = msg.advertisements.add
    for ad in adverts:
        add(address=ad.address, rssi=ad.rssi, address_type=ad.address_type, data=ad.data)
    return Frame(ids.BT_RAW_ADVERTISEMENTS, msg.SerializeToString())


def legacy_adverts_frames(adverts: Iterable[RawAdvert]) -> list[Frame]:
    """The parsed, one-message-per-advertisement form for clients that did not ask for raw."""
    frames = []
    for ad in adverts:
        msg = legacy_advert_message(ad.address, ad.address_type, ad.rssi, ad.data)
        frames.append(Frame(ids.BT_LEGACY_ADVERTISEMENT, msg.SerializeToString()))
    return frames


class AdvertSubscriber(Protocol):
    def send_advertisements(self, frames: list[Frame]) -> bool:
        """Queue a batch unless the client is backed up; False when it was dropped."""

    def send_frames(self, frames: list[Frame]) -> None: ...


class BluetoothHub:
    """Scanner state, pending advertisements and the set of subscribed connections."""

    def __init__(
        self,
        *,
        batch_size: int = BATCH_SIZE,
        flush_interval: float = FLUSH_INTERVAL,
        on_mode_request: Callable[[int], None] | None = None,
    ) -> None:
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.on_mode_request = on_mode_request
        self.subscribers: set[AdvertSubscriber] = set()
        self.legacy_subscribers: set[AdvertSubscriber] = set()  # a subset: they get the parsed form
        self.status = ScannerStatus()
        self._status_known = False
        self._pending: list[RawAdvert] = []
        self._timer: asyncio.TimerHandle | None = None
        self.address_listeners: list[Callable[[str], None]] = []
        # The active proxy (GATT connections through the reader), None for a passive-only proxy.
        self.gatt: GattProxy | None = None
        self.adapter_address: str | None = None
        self.received = 0
        self.forwarded = 0
        self.dropped = 0
        self.batches = 0

    @property
    def feature_flags(self) -> int:
        """DeviceInfo / DeviceCapabilities flags: passive, plus the active proxy's when it is on."""
        return FEATURE_FLAGS | (self.gatt.feature_flags if self.gatt is not None else 0)

    def subscribe(self, subscriber: AdvertSubscriber, *, legacy: bool = False) -> None:
        """Add a subscriber and tell it the scanner state at once (bleak-esphome waits for it)."""
        self.subscribers.add(subscriber)
        if legacy:
            self.legacy_subscribers.add(subscriber)
        else:
            self.legacy_subscribers.discard(subscriber)
        subscriber.send_frames([scanner_frame(self.status)])

    def unsubscribe(self, subscriber: AdvertSubscriber) -> None:
        self.subscribers.discard(subscriber)
        self.legacy_subscribers.discard(subscriber)

    def request_mode(self, mode: int) -> None:
        if mode not in MODE_NAMES:
            _LOGGER.warning("ignoring scanner mode request %d", mode)
            return
        _LOGGER.info("client requests %s scanning", MODE_NAMES[mode])
        if self.on_mode_request is not None:
            self.on_mode_request(mode)

    def set_status(self, status: ScannerStatus) -> None:
        self._status_known = True
        self._note_address(status.adapter_address)
        if status == self.status:
            return
        self.status = status
        frames = [scanner_frame(status)]
        for subscriber in list(self.subscribers):
            subscriber.send_frames(frames)

    def reader_offline(self) -> None:
        if self._status_known:
            self.set_status(replace(self.status, state=SCANNER_STATES["stopped"]))

    def add(self, batch: AdvertBatch) -> None:
        self._note_address(batch.adapter_address)
        if not self._status_known and batch.adverts:
            running = ScannerStatus(state=SCANNER_STATES["running"], adapter_address=batch.adapter_address)
            self.set_status(running)
        self.received += len(batch.adverts)
        if not self.subscribers:
            return
        self._pending.extend(batch.adverts)
        while len(self._pending) >= self.batch_size:
            chunk, self._pending = self._pending[: self.batch_size], self._pending[self.batch_size :]
            self._send(chunk)
        if self._pending and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.flush_interval, self.flush)

    def flush(self) -> None:
        self._timer = None
        pending, self._pending = self._pending, []
        if pending:
            self._send(pending)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending.clear()
        self.subscribers.clear()
        self.legacy_subscribers.clear()
        if self.gatt is not None:
            self.gatt.close()

    def _send(self, chunk: list[RawAdvert]) -> None:
        if not self.subscribers:
            return
        raw = [adverts_frame(chunk)] if len(self.subscribers) > len(self.legacy_subscribers) else []
        legacy = legacy_adverts_frames(chunk) if self.legacy_subscribers else []
        self.batches += 1
        for subscriber in list(self.subscribers):
            if subscriber.send_advertisements(legacy if subscriber in self.legacy_subscribers else raw):
                self.forwarded += len(chunk)
            else:
                self.dropped += len(chunk)

    def _note_address(self, address: str | None) -> None:
        if address is None or address == self.adapter_address:
            return
        self.adapter_address = address
        for listener in self.address_listeners:
            try:
                listener(address)
            except Exception:
                _LOGGER.exception("Bluetooth address listener %r failed", listener)
