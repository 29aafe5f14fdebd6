"""A stand-in BlueZ on a private D-Bus bus, driven by the BT-2 simulator core.

Typical use (what ``renogy-proxy simulate-bluez`` and the ``standin_bluez`` test fixture do)::

    with PrivateSystemBus() as bus:                       # dbus-daemon, system-bus-like policy
        async with StandInBlueZ([sim], bus_address=bus.address) as bluez:
            ...  # any process with DBUS_SYSTEM_BUS_ADDRESS=bus.address sees sim as a BT-2 via bleak's BlueZ backend
"""

from .bus import PrivateSystemBus
from .standin import DEFAULT_ADAPTER_ADDRESS, BlueZFaults, StandInBlueZ

__all__ = ["DEFAULT_ADAPTER_ADDRESS", "BlueZFaults", "PrivateSystemBus", "StandInBlueZ"]
