"""Raw advertisement bytes -> the parsed advertisement message of the pre-raw Bluetooth proxy API.

Clients that subscribe without the raw flag (aioesphomeapi before the 2023 raw form, or tools that
call the legacy subscription) get one ``BluetoothLEAdvertisementResponse`` per advertisement, with
name, service UUIDs, service data and manufacturer data taken from the AD structures. Sans-IO: a
truncated or malformed structure ends the parse and keeps what came before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from services.gateway.proto import pb

_BASE_UUID_TAIL: Final = "-0000-1000-8000-00805f9b34fb"

AD_UUID16: Final = frozenset({0x02, 0x03})
AD_UUID32: Final = frozenset({0x04, 0x05})
AD_UUID128: Final = frozenset({0x06, 0x07})
AD_SHORT_NAME: Final = 0x08
AD_COMPLETE_NAME: Final = 0x09
AD_SERVICE_DATA16: Final = 0x16
AD_SERVICE_DATA32: Final = 0x20
AD_SERVICE_DATA128: Final = 0x21
AD_MANUFACTURER: Final = 0xFF


@dataclass(slots=True)
class ParsedAdvert:
    name: bytes = b""
    service_uuids: list[str] = field(default_factory=list)
    service_data: dict[str, bytes] = field(default_factory=dict)
    manufacturer_data: dict[int, bytes] = field(default_factory=dict)


def ad_structures(data: bytes) -> list[tuple[int, bytes]]:
    """(AD type, value) pairs; stops at a zero length (padding) or a structure running past the end."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        length = data[pos]
        if length == 0 or pos + 1 + length > len(data):
            break
        out.append((data[pos + 1], data[pos + 2 : pos + 1 + length]))
        pos += 1 + length
    return out


def _uuid_text(raw: bytes) -> str:
    """Little-endian UUID bytes (2, 4 or 16 of them) as the 128-bit lowercase string."""
    value = int.from_bytes(raw, "little")
    if len(raw) == 16:
        text = f"{value:032x}"
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
    return f"{value:08x}{_BASE_UUID_TAIL}"


def _uuids(value: bytes, width: int) -> list[str]:
    return [_uuid_text(value[i : i + width]) for i in range(0, len(value) - width + 1, width)]


def parse_advert(data: bytes) -> ParsedAdvert:
    parsed = ParsedAdvert()
    for kind, value in ad_structures(data):
        if kind in AD_UUID16:
            parsed.service_uuids.extend(_uuids(value, 2))
        elif kind in AD_UUID32:
            parsed.service_uuids.extend(_uuids(value, 4))
        elif kind in AD_UUID128:
            parsed.service_uuids.extend(_uuids(value, 16))
        elif kind == AD_COMPLETE_NAME or (kind == AD_SHORT_NAME and not parsed.name):
            parsed.name = value
        elif kind in (AD_SERVICE_DATA16, AD_SERVICE_DATA32, AD_SERVICE_DATA128):
            width = {AD_SERVICE_DATA16: 2, AD_SERVICE_DATA32: 4, AD_SERVICE_DATA128: 16}[kind]
            if len(value) >= width:
                parsed.service_data[_uuid_text(value[:width])] = value[width:]
        elif kind == AD_MANUFACTURER and len(value) >= 2:
            parsed.manufacturer_data[int.from_bytes(value[:2], "little")] = value[2:]
    return parsed


def legacy_advert_message(address: int, address_type: int, rssi: int, data: bytes) -> Any:
    """The BluetoothLEAdvertisementResponse of one raw advertisement."""
    parsed = parse_advert(data)
    msg = pb.BluetoothLEAdvertisementResponse(
        address=address, rssi=rssi, address_type=address_type, name=parsed.name
    )
    msg.service_uuids.extend(parsed.service_uuids)
    for uuid, value in parsed.service_data.items():
        msg.service_data.add(uuid=uuid, data=value)
    for company, value in parsed.manufacturer_data.items():
        # ESPHome's form: "0x" and four upper-case hex digits; the client reads it with int(uuid, 16).
        msg.manufacturer_data.add(uuid=f"0x{company:04X}", data=value)
    return msg
