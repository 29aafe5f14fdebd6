"""The GATT table of a BT-2 as the Renogy app discovered it (handles from the HCI trace, brief §1.2)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from bleak.assigned_numbers import CharacteristicPropertyName
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.uuids import normalize_uuid_16

WRITE_SERVICE_UUID: Final = normalize_uuid_16(0xFFD0)
WRITE_CHAR_UUID: Final = normalize_uuid_16(0xFFD1)
NOTIFY_SERVICE_UUID: Final = normalize_uuid_16(0xFFF0)
NOTIFY_CHAR_UUID: Final = normalize_uuid_16(0xFFF1)
WRITE_CHAR_HANDLE: Final = 0x001D
NOTIFY_CHAR_HANDLE: Final = 0x002E
CCCD_UUID: Final = normalize_uuid_16(0x2902)
USER_DESCRIPTION_UUID: Final = normalize_uuid_16(0x2901)
TI_OAD_SERVICE_UUID: Final = "f000ffd0-0451-4000-b000-000000000000"
TI_OAD_CHAR_UUID: Final = "f000ffd1-0451-4000-b000-000000000000"

_R: Final[list[CharacteristicPropertyName]] = ["read"]


@dataclass(frozen=True, slots=True)
class _Char:
    handle: int  # value handle; the declaration sits one below
    uuid: str
    properties: list[CharacteristicPropertyName]
    value: bytes = b""
    cccd: int | None = None
    user_description: int | None = None


@dataclass(frozen=True, slots=True)
class _Service:
    handle: int
    uuid: str
    chars: tuple[_Char, ...]


def _table(name: str) -> tuple[_Service, ...]:
    def u16(value: int) -> str:
        return normalize_uuid_16(value)

    return (
        _Service(
            0x0001,
            u16(0x1800),
            (
                _Char(0x0003, u16(0x2A00), _R, name.encode()),
                _Char(0x0005, u16(0x2A01), _R, b"\x00\x00"),
                _Char(0x0007, u16(0x2A04), _R, bytes.fromhex("240030000000f401")),
            ),
        ),
        _Service(
            0x0008,
            u16(0x180A),
            tuple(
                _Char(0x000A + 2 * i, u16(uuid), _R, value)
                for i, (uuid, value) in enumerate(
                    (
                        (0x2A23, bytes(8)),
                        (0x2A24, b"BT-2"),
                        (0x2A25, b"0000000000"),
                        (0x2A26, b"V1.0"),
                        (0x2A27, b"V1.0"),
                        (0x2A28, b"V1.0"),
                        (0x2A29, b"Renogy"),
                        (0x2A2A, bytes(8)),
                        (0x2A50, bytes(7)),
                    )
                )
            ),
        ),
        _Service(
            0x001B,
            WRITE_SERVICE_UUID,
            (
                _Char(
                    WRITE_CHAR_HANDLE,
                    WRITE_CHAR_UUID,
                    ["read", "write-without-response", "write"],
                    user_description=0x001E,
                ),
                _Char(0x0020, u16(0xFFD2), ["read", "notify"], cccd=0x0021, user_description=0x0022),
                _Char(0x0024, u16(0xFFD3), ["write"], user_description=0x0025),
                _Char(0x0027, u16(0xFFD4), ["read"], user_description=0x0028),
                _Char(0x002A, u16(0xFFD5), ["read", "write"], user_description=0x002B),
            ),
        ),
        _Service(
            0x002C,
            NOTIFY_SERVICE_UUID,
            (
                _Char(
                    NOTIFY_CHAR_HANDLE,
                    NOTIFY_CHAR_UUID,
                    ["read", "notify"],
                    cccd=0x002F,
                    user_description=0x0030,
                ),
            ),
        ),
        _Service(
            0x0031,
            TI_OAD_SERVICE_UUID,
            (_Char(0x0033, TI_OAD_CHAR_UUID, ["write-without-response", "write"]),),
        ),
    )


class CharLike(Protocol):
    """What :func:`service_collection` reads of a characteristic spec (gatt ``_Char``, devices ``CharSpec``)."""

    @property
    def handle(self) -> int: ...
    @property
    def uuid(self) -> str: ...
    @property
    def properties(self) -> list[CharacteristicPropertyName]: ...
    @property
    def cccd(self) -> int | None: ...


class ServiceLike(Protocol):
    """What :func:`service_collection` reads of a service spec."""

    @property
    def handle(self) -> int: ...
    @property
    def uuid(self) -> str: ...
    @property
    def chars(self) -> Sequence[CharLike]: ...


def service_collection(
    services: Iterable[ServiceLike], max_write_without_response_size: Callable[[], int]
) -> BleakGATTServiceCollection:
    """A bleak service collection of ``services``: every characteristic, and a CCCD where it has one."""
    collection = BleakGATTServiceCollection()
    for spec in services:
        service = BleakGATTService(None, spec.handle, spec.uuid)
        collection.add_service(service)
        for char_spec in spec.chars:
            char = BleakGATTCharacteristic(
                None,
                char_spec.handle,
                char_spec.uuid,
                list(char_spec.properties),
                max_write_without_response_size,
                service,
            )
            collection.add_characteristic(char)
            if char_spec.cccd is not None:
                collection.add_descriptor(BleakGATTDescriptor(None, char_spec.cccd, CCCD_UUID, char))
    return collection


def build_services(
    name: str, max_write_without_response_size: Callable[[], int]
) -> tuple[BleakGATTServiceCollection, dict[int, bytes]]:
    """The BT-2's service collection and the initial value of every readable handle."""
    table = _table(name)
    collection = service_collection(table, max_write_without_response_size)
    values: dict[int, bytes] = {}
    for spec in table:
        for char_spec in spec.chars:
            values[char_spec.handle] = char_spec.value
            if char_spec.cccd is not None:
                values[char_spec.cccd] = b"\x00\x00"
            if char_spec.user_description is not None:
                # After the CCCD in the characteristic's own descriptor list, as on the BT-2.
                char = collection.get_characteristic(char_spec.handle)
                assert char is not None
                collection.add_descriptor(
                    BleakGATTDescriptor(None, char_spec.user_description, USER_DESCRIPTION_UUID, char)
                )
                values[char_spec.user_description] = char_spec.uuid[4:8].upper().encode()
    return collection, values
