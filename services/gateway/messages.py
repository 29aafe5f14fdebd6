"""Native-API message ids, read from the pinned aioesphomeapi's own table instead of typed by hand.

``MESSAGE_TYPE_TO_PROTO`` is the table the client dispatches with, so an id here can never disagree
with what the client expects, and a message renamed or renumbered in a client upgrade fails at import.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from services.gateway.esphome_protocol import load
from services.gateway.framing import Frame
from services.gateway.proto import pb

MESSAGE_TYPE_TO_PROTO: Final[Mapping[int, Any]] = load().core.MESSAGE_TYPE_TO_PROTO
ID_OF: Final[Mapping[type, int]] = {cls: msg_id for msg_id, cls in MESSAGE_TYPE_TO_PROTO.items()}
CLASS_OF: Final[Mapping[int, Any]] = dict(MESSAGE_TYPE_TO_PROTO)


def message_id(cls: Any) -> int:
    """The wire id of a protobuf message class (KeyError for a class the client does not know)."""
    return ID_OF[cls]


def frame_of(message: Any) -> Frame:
    """A message ready to encode: its id and serialized payload."""
    return Frame(ID_OF[type(message)], message.SerializeToString())


HELLO_REQUEST: Final = message_id(pb.HelloRequest)
HELLO_RESPONSE: Final = message_id(pb.HelloResponse)
# aioesphomeapi before 2025 called these ConnectRequest/ConnectResponse; the ids never changed.
AUTH_REQUEST: Final = message_id(pb.AuthenticationRequest)
AUTH_RESPONSE: Final = message_id(pb.AuthenticationResponse)
DISCONNECT_REQUEST: Final = message_id(pb.DisconnectRequest)
DISCONNECT_RESPONSE: Final = message_id(pb.DisconnectResponse)
PING_REQUEST: Final = message_id(pb.PingRequest)
PING_RESPONSE: Final = message_id(pb.PingResponse)
DEVICE_INFO_REQUEST: Final = message_id(pb.DeviceInfoRequest)
DEVICE_INFO_RESPONSE: Final = message_id(pb.DeviceInfoResponse)
LIST_ENTITIES_REQUEST: Final = message_id(pb.ListEntitiesRequest)
LIST_BINARY_SENSOR: Final = message_id(pb.ListEntitiesBinarySensorResponse)
LIST_SENSOR: Final = message_id(pb.ListEntitiesSensorResponse)
LIST_TEXT_SENSOR: Final = message_id(pb.ListEntitiesTextSensorResponse)
LIST_DONE: Final = message_id(pb.ListEntitiesDoneResponse)
SUBSCRIBE_STATES: Final = message_id(pb.SubscribeStatesRequest)
BINARY_SENSOR_STATE: Final = message_id(pb.BinarySensorStateResponse)
SENSOR_STATE: Final = message_id(pb.SensorStateResponse)
TEXT_SENSOR_STATE: Final = message_id(pb.TextSensorStateResponse)
# Opt-in controls (services/gateway/controls.py).
LIST_SWITCH: Final = message_id(pb.ListEntitiesSwitchResponse)
SWITCH_STATE: Final = message_id(pb.SwitchStateResponse)
SWITCH_COMMAND: Final = message_id(pb.SwitchCommandRequest)
SUBSCRIBE_LOGS: Final = message_id(pb.SubscribeLogsRequest)
LOGS: Final = message_id(pb.SubscribeLogsResponse)
SUBSCRIBE_HA_SERVICES: Final = message_id(pb.SubscribeHomeassistantServicesRequest)
SUBSCRIBE_HA_STATES: Final = message_id(pb.SubscribeHomeAssistantStatesRequest)
GET_TIME_REQUEST: Final = message_id(pb.GetTimeRequest)
GET_TIME_RESPONSE: Final = message_id(pb.GetTimeResponse)
BT_SUBSCRIBE: Final = message_id(pb.SubscribeBluetoothLEAdvertisementsRequest)
BT_LEGACY_ADVERTISEMENT: Final = message_id(pb.BluetoothLEAdvertisementResponse)
BT_UNSUBSCRIBE: Final = message_id(pb.UnsubscribeBluetoothLEAdvertisementsRequest)
BT_CONNECTIONS_FREE_SUBSCRIBE: Final = message_id(pb.SubscribeBluetoothConnectionsFreeRequest)
BT_CONNECTIONS_FREE: Final = message_id(pb.BluetoothConnectionsFreeResponse)
BT_RAW_ADVERTISEMENTS: Final = message_id(pb.BluetoothLERawAdvertisementsResponse)
BT_SCANNER_STATE: Final = message_id(pb.BluetoothScannerStateResponse)
BT_SET_MODE: Final = message_id(pb.BluetoothScannerSetModeRequest)
SET_KEY_REQUEST: Final = message_id(pb.NoiseEncryptionSetKeyRequest)
SET_KEY_RESPONSE: Final = message_id(pb.NoiseEncryptionSetKeyResponse)
CAPABILITIES_REQUEST: Final = message_id(pb.DeviceCapabilitiesRequest)
CAPABILITIES_RESPONSE: Final = message_id(pb.DeviceCapabilitiesResponse)
# Active Bluetooth proxy (GATT connections through the reader's adapter).
BT_DEVICE_REQUEST: Final = message_id(pb.BluetoothDeviceRequest)
BT_DEVICE_CONNECTION: Final = message_id(pb.BluetoothDeviceConnectionResponse)
BT_GATT_GET_SERVICES: Final = message_id(pb.BluetoothGATTGetServicesRequest)
BT_GATT_READ: Final = message_id(pb.BluetoothGATTReadRequest)
BT_GATT_WRITE: Final = message_id(pb.BluetoothGATTWriteRequest)
BT_GATT_READ_DESCRIPTOR: Final = message_id(pb.BluetoothGATTReadDescriptorRequest)
BT_GATT_WRITE_DESCRIPTOR: Final = message_id(pb.BluetoothGATTWriteDescriptorRequest)
BT_GATT_NOTIFY: Final = message_id(pb.BluetoothGATTNotifyRequest)
BT_SET_CONNECTION_PARAMS: Final = message_id(pb.BluetoothSetConnectionParamsRequest)
