"""BLE advertisements for the Bluetooth proxy: AD-structure encoding and batching (pure)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

MAX_AD_BYTES = 62  # ESPHome's BluetoothLERawAdvertisement.data limit (advertising + scan response)
BATCH_SIZE = 16
BATCH_INTERVAL = 0.1

_BASE_UUID_SUFFIX = "-0000-1000-8000-00805f9b34fb"
AD_COMPLETE_NAME = 0x09
AD_SHORT_NAME = 0x08
AD_TX_POWER = 0x0A
AD_UUID16 = 0x03
AD_UUID32 = 0x05
AD_UUID128 = 0x07
AD_SERVICE_DATA16 = 0x16
AD_SERVICE_DATA32 = 0x20
AD_SERVICE_DATA128 = 0x21
AD_MANUFACTURER = 0xFF


def _short_uuid(text: str) -> bytes:
    """The shortest little-endian form of a UUID (2, 4 or 16 bytes)."""
    value = uuid.UUID(text)
    if str(value).endswith(_BASE_UUID_SUFFIX):
        short = int(str(value)[:8], 16)
        return short.to_bytes(2 if short <= 0xFFFF else 4, "little")
    return value.bytes[::-1]


def _structure(ad_type: int, data: bytes) -> bytes:
    return bytes((len(data) + 1, ad_type)) + data


def encode_ad(adv: AdvertisementData) -> bytes:
    """Re-encode bleak's parsed advertisement as AD structures, most useful first, within 62 bytes.

    BlueZ hands bleak parsed fields, not the raw PDU, so the bytes are rebuilt; a backend that knows
    the raw bytes may pass them as ``platform_data[0]`` (bytes) and they are used as they are.
    """
    raw = adv.platform_data[0] if adv.platform_data else None
    if isinstance(raw, bytes | bytearray):
        return bytes(raw[:MAX_AD_BYTES])
    parts: list[bytes] = []
    for company, payload in adv.manufacturer_data.items():
        parts.append(_structure(AD_MANUFACTURER, company.to_bytes(2, "little") + payload))
    for service, payload in adv.service_data.items():
        short = _short_uuid(service)
        kind = {2: AD_SERVICE_DATA16, 4: AD_SERVICE_DATA32}.get(len(short), AD_SERVICE_DATA128)
        parts.append(_structure(kind, short + payload))
    by_size: dict[int, bytes] = {}
    for service in adv.service_uuids:
        short = _short_uuid(service)
        by_size[len(short)] = by_size.get(len(short), b"") + short
    for size, data in sorted(by_size.items()):
        parts.append(_structure({2: AD_UUID16, 4: AD_UUID32}.get(size, AD_UUID128), data))
    if adv.tx_power is not None:
        parts.append(_structure(AD_TX_POWER, (adv.tx_power & 0xFF).to_bytes(1, "little")))
    if adv.local_name:
        name = adv.local_name.encode("utf-8")
        parts.insert(
            0,
            _structure(AD_COMPLETE_NAME, name[:29])
            if len(name) <= 29
            else _structure(AD_SHORT_NAME, name[:29]),
        )
    out = b""
    for part in parts:
        if len(out) + len(part) <= MAX_AD_BYTES:
            out += part
    return out


def address_type(device: BLEDevice, adv: AdvertisementData) -> int:
    """0 = public, 1 = random, from BlueZ's AddressType property (platform_data is (path, props) there)."""
    props: Any = adv.platform_data[1] if len(adv.platform_data) > 1 else None
    if not isinstance(props, dict):
        details: Any = device.details
        props = details.get("props") if isinstance(details, dict) else None
    kind = props.get("AddressType") if isinstance(props, dict) else None
    return 1 if kind == "random" else 0


@dataclass(frozen=True, slots=True)
class RawAdvertisement:
    address: str
    address_type: int
    rssi: int
    data: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "address_type": self.address_type,
            "rssi": self.rssi,
            "data": self.data.hex(),
        }


class AdvertisementBatcher:
    """Collects advertisements; the latest per address wins within a batch (HA drops repeats anyway)."""

    def __init__(self, size: int = BATCH_SIZE) -> None:
        self.size = size
        self._pending: dict[str, RawAdvertisement] = {}
        self.seen = 0

    def add(self, adv: RawAdvertisement) -> bool:
        """Add one; True when the batch is full and should be flushed now."""
        self.seen += 1
        self._pending.pop(adv.address, None)
        self._pending[adv.address] = adv
        return len(self._pending) >= self.size

    def take(self) -> list[RawAdvertisement]:
        batch = list(self._pending.values())[: self.size]
        for adv in batch:
            del self._pending[adv.address]
        return batch

    def __len__(self) -> int:
        return len(self._pending)
