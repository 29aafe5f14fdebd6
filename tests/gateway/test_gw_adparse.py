"""The AD-structure parser behind the legacy (parsed) advertisement form."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from services.gateway.adparse import ad_structures, legacy_advert_message, parse_advert
from services.gateway.proto import pb


def _ad(kind: int, value: bytes) -> bytes:
    return bytes([len(value) + 1, kind]) + value


def test_every_field_kind() -> None:
    long_uuid = uuid.UUID("0000ffd0-1234-5678-9abc-def012345678")
    data = (
        _ad(0x01, b"\x06")
        + _ad(0x08, b"BT-TH")  # short name, replaced by the complete one
        + _ad(0x09, b"BT-TH-E3383D0E")
        + _ad(0x03, bytes.fromhex("f0ff0a18"))
        + _ad(0x05, bytes.fromhex("78563412"))
        + _ad(0x07, long_uuid.bytes[::-1])
        + _ad(0x16, bytes.fromhex("1a18") + b"\x01\x02")
        + _ad(0xFF, bytes.fromhex("4ce1") + b"\xaa")
    )
    parsed = parse_advert(data)
    assert parsed.name == b"BT-TH-E3383D0E"
    assert parsed.service_uuids == [
        "0000fff0-0000-1000-8000-00805f9b34fb",
        "0000180a-0000-1000-8000-00805f9b34fb",
        "12345678-0000-1000-8000-00805f9b34fb",
        str(long_uuid),
    ]
    assert parsed.service_data == {"0000181a-0000-1000-8000-00805f9b34fb": b"\x01\x02"}
    assert parsed.manufacturer_data == {0xE14C: b"\xaa"}


def test_truncated_structure_keeps_what_came_before() -> None:
    data = _ad(0x09, b"ok") + bytes([9, 0xFF, 1])
    assert ad_structures(data) == [(0x09, b"ok")]
    assert parse_advert(data).name == b"ok"


def test_zero_length_is_padding() -> None:
    assert ad_structures(_ad(0x09, b"x") + b"\x00" * 10 + _ad(0x09, b"y")) == [(0x09, b"x")]


@given(st.binary(max_size=62))
def test_any_bytes_parse_and_encode(data: bytes) -> None:
    msg = legacy_advert_message(0xA4C138000001, 1, -70, data)
    again = pb.BluetoothLEAdvertisementResponse.FromString(msg.SerializeToString())
    assert again.address == 0xA4C138000001 and again.rssi == -70
    for maker in again.manufacturer_data:
        int(maker.uuid, 16)  # what the client does with it


@given(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=20)), max_size=6))
def test_well_formed_structures_round_trip(structures: list[tuple[int, bytes]]) -> None:
    data = b"".join(_ad(kind, value) for kind, value in structures)
    assert ad_structures(data) == structures
