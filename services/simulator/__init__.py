"""A faithful stand-in for a Renogy BT-2 and its RBT50LFP48S bank, injected into bleak as a custom backend.

Typical use::

    sim = BankSimulator.from_config(SimConfig(latency_scale=0.0))
    register_simulator(sim)
    device = await BleakScanner.find_device_by_name(sim.local_name, backend=SimScanner)
    async with BleakClient(device, backend=SimBT2Client) as client: ...
"""

from .adverts import (
    BT2_SERVICE_UUID,
    ParsedAd,
    SimAdvertisement,
    bt2_advertisement,
    bt2_manufacturer_data,
    encode_ad,
    encode_advertisement_data,
    parse_ad,
)
from .backend import SimBT2Client
from .bank import Action, BankSimulator, LinkDrop, Notification, default_clock
from .config import DEFAULT_ADDRESS, DEFAULT_BATTERIES, SIM_SHUNT_ADDRESS, SimConfig
from .faults import (
    ADAPTER_NO_BLUEZ,
    ADAPTER_NO_DBUS,
    ALL_FAULT_KINDS,
    CONNECT_FAULTS,
    HANG_IN_CONNECT,
    HANG_IN_START_NOTIFY,
    REQUEST_FAULTS,
    Fault,
    FaultInjector,
    FaultKind,
)
from .gatt import (
    NOTIFY_CHAR_HANDLE,
    NOTIFY_CHAR_UUID,
    NOTIFY_SERVICE_UUID,
    WRITE_CHAR_HANDLE,
    WRITE_CHAR_UUID,
    WRITE_SERVICE_UUID,
)
from .physics import BankPhysics, PackReading, PackSpec, default_packs, ocv
from .registry import (
    register_simulator,
    registered,
    registered_simulators,
    simulator_for,
    unregister_simulator,
)
from .scanner import SimScanner, advert_interval, advertisements
from .shunt import ShuntPeripheral, shunt_name, simulated_shunt
from .truth import FaultRecord, TruthRecord, TruthRecorder

__all__ = [
    "ADAPTER_NO_BLUEZ",
    "ADAPTER_NO_DBUS",
    "ALL_FAULT_KINDS",
    "BT2_SERVICE_UUID",
    "CONNECT_FAULTS",
    "DEFAULT_ADDRESS",
    "DEFAULT_BATTERIES",
    "HANG_IN_CONNECT",
    "HANG_IN_START_NOTIFY",
    "NOTIFY_CHAR_HANDLE",
    "NOTIFY_CHAR_UUID",
    "NOTIFY_SERVICE_UUID",
    "REQUEST_FAULTS",
    "SIM_SHUNT_ADDRESS",
    "WRITE_CHAR_HANDLE",
    "WRITE_CHAR_UUID",
    "WRITE_SERVICE_UUID",
    "Action",
    "BankPhysics",
    "BankSimulator",
    "Fault",
    "FaultInjector",
    "FaultKind",
    "FaultRecord",
    "LinkDrop",
    "Notification",
    "PackReading",
    "PackSpec",
    "ParsedAd",
    "ShuntPeripheral",
    "SimAdvertisement",
    "SimBT2Client",
    "SimConfig",
    "SimScanner",
    "TruthRecord",
    "TruthRecorder",
    "advert_interval",
    "advertisements",
    "bt2_advertisement",
    "bt2_manufacturer_data",
    "default_clock",
    "default_packs",
    "encode_ad",
    "encode_advertisement_data",
    "ocv",
    "parse_ad",
    "register_simulator",
    "registered",
    "registered_simulators",
    "shunt_name",
    "simulated_shunt",
    "simulator_for",
    "unregister_simulator",
]
