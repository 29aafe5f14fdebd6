"""Simulated BLE advertisements: the BT-2's own and a few neighbours, with their raw AD bytes (pure)."""

from __future__ import annotations

import random
import struct
import uuid as uuid_module
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from bleak.backends.scanner import AdvertisementData
from bleak.uuids import normalize_uuid_16

AD_FLAGS: Final = 0x01
AD_UUID16_COMPLETE: Final = 0x03
AD_UUID32_COMPLETE: Final = 0x05
AD_UUID128_COMPLETE: Final = 0x07
AD_SHORT_NAME: Final = 0x08
AD_COMPLETE_NAME: Final = 0x09
AD_TX_POWER: Final = 0x0A
AD_SERVICE_DATA16: Final = 0x16
AD_SERVICE_DATA32: Final = 0x20
AD_SERVICE_DATA128: Final = 0x21
AD_MANUFACTURER: Final = 0xFF
FLAGS_LE_GENERAL_NO_BREDR: Final = 0x06

BT2_SERVICE_UUID: Final = normalize_uuid_16(0xFFD0)
APPLE_COMPANY_ID: Final = 0x004C
ENVIRONMENTAL_SENSING_UUID: Final = normalize_uuid_16(0x181A)
_BASE_SUFFIX: Final = "-0000-1000-8000-00805f9b34fb"
PUBLIC: Final = "public"
RANDOM: Final = "random"


def _short_uuid(uuid: str) -> bytes:
    """The shortest AD encoding of a UUID, little endian (2, 4 or 16 bytes)."""
    uuid = uuid.lower()
    if uuid.endswith(_BASE_SUFFIX):
        value = int(uuid[:8], 16)
        return value.to_bytes(2 if value <= 0xFFFF else 4, "little")
    return uuid_module.UUID(uuid).bytes[::-1]


def _long_uuid(raw: bytes) -> str:
    if len(raw) in (2, 4):
        return f"{int.from_bytes(raw, 'little'):08x}{_BASE_SUFFIX}"
    return str(uuid_module.UUID(bytes=raw[::-1]))


def _structure(ad_type: int, payload: bytes) -> bytes:
    if len(payload) > 254:
        raise ValueError("AD structure too long")
    return bytes((len(payload) + 1, ad_type)) + payload


def encode_ad(
    *,
    local_name: str | None = None,
    manufacturer_data: Mapping[int, bytes] | None = None,
    service_data: Mapping[str, bytes] | None = None,
    service_uuids: Sequence[str] = (),
    tx_power: int | None = None,
    flags: int | None = FLAGS_LE_GENERAL_NO_BREDR,
) -> bytes:
    """AD structures in a fixed order: flags, service UUIDs (16/32/128-bit lists), service data,
    manufacturer data (one structure per company id), TX power, complete local name."""
    out = bytearray()
    if flags is not None:
        out += _structure(AD_FLAGS, bytes((flags,)))
    by_width: dict[int, list[bytes]] = {2: [], 4: [], 16: []}
    for uuid in service_uuids:
        raw = _short_uuid(uuid)
        by_width[len(raw)].append(raw)
    for width, ad_type in ((2, AD_UUID16_COMPLETE), (4, AD_UUID32_COMPLETE), (16, AD_UUID128_COMPLETE)):
        if by_width[width]:
            out += _structure(ad_type, b"".join(by_width[width]))
    for uuid, data in (service_data or {}).items():
        raw = _short_uuid(uuid)
        ad_type = {2: AD_SERVICE_DATA16, 4: AD_SERVICE_DATA32, 16: AD_SERVICE_DATA128}[len(raw)]
        out += _structure(ad_type, raw + data)
    for company, data in (manufacturer_data or {}).items():
        out += _structure(AD_MANUFACTURER, company.to_bytes(2, "little") + data)
    if tx_power is not None:
        out += _structure(AD_TX_POWER, struct.pack("b", tx_power))
    if local_name is not None:
        out += _structure(AD_COMPLETE_NAME, local_name.encode("utf-8"))
    return bytes(out)


def encode_advertisement_data(
    adv: AdvertisementData, *, flags: int | None = FLAGS_LE_GENERAL_NO_BREDR
) -> bytes:
    """The AD bytes of a bleak AdvertisementData, in :func:`encode_ad` order."""
    return encode_ad(
        local_name=adv.local_name,
        manufacturer_data=adv.manufacturer_data,
        service_data=adv.service_data,
        service_uuids=adv.service_uuids,
        tx_power=adv.tx_power,
        flags=flags,
    )


class ParsedAd(NamedTuple):
    """The content of AD bytes, independent of structure order."""

    flags: int | None
    local_name: str | None
    manufacturer_data: dict[int, bytes]
    service_data: dict[str, bytes]
    service_uuids: list[str]
    tx_power: int | None


def parse_ad(raw: bytes) -> ParsedAd:
    """Parse AD structures (stops at a zero length, as padding ends the data)."""
    flags: int | None = None
    name: str | None = None
    manufacturer: dict[int, bytes] = {}
    service_data: dict[str, bytes] = {}
    uuids: list[str] = []
    tx_power: int | None = None
    i = 0
    while i < len(raw):
        length = raw[i]
        if length == 0 or i + 1 + length > len(raw):
            break
        ad_type, payload = raw[i + 1], bytes(raw[i + 2 : i + 1 + length])
        i += 1 + length
        if ad_type == AD_FLAGS and payload:
            flags = payload[0]
        elif ad_type in (AD_COMPLETE_NAME, AD_SHORT_NAME):
            name = payload.decode("utf-8", errors="replace")
        elif ad_type in (0x02, AD_UUID16_COMPLETE):
            uuids += [_long_uuid(payload[k : k + 2]) for k in range(0, len(payload) - 1, 2)]
        elif ad_type in (0x04, AD_UUID32_COMPLETE):
            uuids += [_long_uuid(payload[k : k + 4]) for k in range(0, len(payload) - 3, 4)]
        elif ad_type in (0x06, AD_UUID128_COMPLETE):
            uuids += [_long_uuid(payload[k : k + 16]) for k in range(0, len(payload) - 15, 16)]
        elif ad_type in (AD_SERVICE_DATA16, AD_SERVICE_DATA32, AD_SERVICE_DATA128):
            width = {AD_SERVICE_DATA16: 2, AD_SERVICE_DATA32: 4, AD_SERVICE_DATA128: 16}[ad_type]
            service_data[_long_uuid(payload[:width])] = payload[width:]
        elif ad_type == AD_MANUFACTURER and len(payload) >= 2:
            manufacturer[int.from_bytes(payload[:2], "little")] = payload[2:]
        elif ad_type == AD_TX_POWER and payload:
            tx_power = struct.unpack("b", payload[:1])[0]
    return ParsedAd(flags, name, manufacturer, service_data, uuids, tx_power)


@dataclass(frozen=True, slots=True)
class SimAdvertisement:
    """One advertisement as emitted: what bleak reports plus the raw AD bytes (ADV + SCAN_RSP)."""

    address: str
    address_type: str
    local_name: str | None
    manufacturer_data: dict[int, bytes] = field(default_factory=dict)
    service_data: dict[str, bytes] = field(default_factory=dict)
    service_uuids: tuple[str, ...] = ()
    tx_power: int | None = None
    rssi: int = -127
    raw: bytes = b""

    def advertisement_data(self) -> AdvertisementData:
        """The bleak view; platform_data mimics BlueZ's (path, props)."""
        path = "/org/bluez/hci0/dev_" + self.address.replace(":", "_")
        props = {
            "Address": self.address,
            "AddressType": self.address_type,
            "Name": self.local_name,
            "Alias": self.local_name or self.address.replace(":", "-"),
            "RSSI": self.rssi,
            "UUIDs": list(self.service_uuids),
            "ManufacturerData": dict(self.manufacturer_data),
            "ServiceData": dict(self.service_data),
        }
        return AdvertisementData(
            local_name=self.local_name,
            manufacturer_data=dict(self.manufacturer_data),
            service_data=dict(self.service_data),
            service_uuids=list(self.service_uuids),
            tx_power=self.tx_power,
            rssi=self.rssi,
            platform_data=(path, props),
        )


def _advertisement(
    address: str,
    address_type: str,
    rssi: int,
    *,
    local_name: str | None = None,
    manufacturer_data: dict[int, bytes] | None = None,
    service_data: dict[str, bytes] | None = None,
    service_uuids: Sequence[str] = (),
    tx_power: int | None = None,
) -> SimAdvertisement:
    manufacturer = manufacturer_data or {}
    data = service_data or {}
    raw = encode_ad(
        local_name=local_name,
        manufacturer_data=manufacturer,
        service_data=data,
        service_uuids=service_uuids,
        tx_power=tx_power,
    )
    return SimAdvertisement(
        address, address_type, local_name, manufacturer, data, tuple(service_uuids), tx_power, rssi, raw
    )


def bt2_manufacturer_data(address: str) -> dict[int, bytes]:
    """A BT-2's MAC-derived manufacturer data: id = first two MAC bytes little endian, payload = the rest."""
    mac = bytes.fromhex(address.replace(":", ""))
    return {int.from_bytes(mac[:2], "little"): mac[2:]}


def bt2_advertisement(
    address: str, rssi: int, *, padding: int = 0, name: str | None = None
) -> SimAdvertisement:
    """A BT-2's advertisement: BT-TH-<last four MAC bytes> (or ``name``), service ffd0, MAC-derived
    manufacturer data."""
    name = (name or "BT-TH-" + address.replace(":", "").upper()[4:]) + " " * padding
    return _advertisement(
        address.upper(),
        PUBLIC,
        rssi,
        local_name=name,
        manufacturer_data=bt2_manufacturer_data(address),
        service_uuids=(BT2_SERVICE_UUID,),
    )


def _derived_address(rng: random.Random, first: bytes) -> str:
    mac = first + rng.randbytes(6 - len(first))
    return ":".join(f"{b:02X}" for b in mac)


class Neighbourhood:
    """Other BLE devices near a BT-2, for the Bluetooth-proxy path: a thermometer, an iBeacon, a phone."""

    def __init__(self, seed: int, near: str) -> None:
        rng = random.Random(f"{seed}:{near}:neighbours")
        self.thermometer_address = _derived_address(rng, bytes.fromhex("A4C138"))
        static = rng.randbytes(1)[0] | 0xC0  # random static address: top two bits 11
        self.beacon_address = _derived_address(rng, bytes((static,)))
        private = (rng.randbytes(1)[0] & 0x3F) | 0x40  # resolvable private address: top bits 01
        self.phone_address = _derived_address(rng, bytes((private,)))
        self.beacon_uuid = rng.randbytes(16)
        self.beacon_major, self.beacon_minor = rng.randint(1, 0xFFFF), rng.randint(1, 0xFFFF)
        self.humidity = rng.uniform(35.0, 70.0)
        self._counter = 0

    @property
    def addresses(self) -> tuple[str, ...]:
        return (self.thermometer_address, self.beacon_address, self.phone_address)

    def thermometer(self, rssi: int, temperature: float) -> SimAdvertisement:
        """An ATC-firmware thermometer: service data 0x181A = MAC, 0.1 °C, %RH, battery % and mV, counter."""
        self._counter = (self._counter + 1) & 0xFF
        mac = bytes.fromhex(self.thermometer_address.replace(":", ""))
        payload = mac + struct.pack(
            ">hBBHB", round(temperature * 10), round(self.humidity), 87, 2950, self._counter
        )
        return _advertisement(
            self.thermometer_address,
            PUBLIC,
            rssi,
            local_name="ATC_" + self.thermometer_address.replace(":", "")[6:],
            service_data={ENVIRONMENTAL_SENSING_UUID: payload},
        )

    def beacon(self, rssi: int) -> SimAdvertisement:
        """An iBeacon (Apple manufacturer data 02 15 + UUID + major + minor + measured power)."""
        payload = (
            b"\x02\x15" + self.beacon_uuid + struct.pack(">HHb", self.beacon_major, self.beacon_minor, -59)
        )
        return _advertisement(
            self.beacon_address, RANDOM, rssi, manufacturer_data={APPLE_COMPANY_ID: payload}
        )

    def phone(self, rssi: int) -> SimAdvertisement:
        """A phone behind a resolvable private address (Apple 'nearby' manufacturer data, no name)."""
        return _advertisement(
            self.phone_address,
            RANDOM,
            rssi,
            manufacturer_data={APPLE_COMPANY_ID: bytes.fromhex("1005031c3a7f2e")},
            tx_power=12,
        )
