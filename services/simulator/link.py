"""Plumbing shared by the simulated bleak backends (SimBT2Client, SimPeripheralClient)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.device import BLEDevice
from bleak.exc import BleakDeviceNotFoundError

_T = TypeVar("_T")


class SimLinkClient(BaseBleakClient):
    """A bleak client over a simulated link: the link flag, the notify callbacks and the disconnect path.

    Subclasses that add state take ``(address_or_ble_device, **kwargs)`` and pass both on.
    """

    def __init__(
        self,
        address_or_ble_device: BLEDevice | str,
        *,
        disconnected_callback: Callable[[], None] | None = None,
        timeout: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(address_or_ble_device, disconnected_callback=disconnected_callback, timeout=timeout)
        self._connected = False
        self._callbacks: dict[int, NotifyCallback] = {}

    @staticmethod
    def _details(address_or_ble_device: BLEDevice | str, kind: type[_T]) -> _T | None:
        """The simulated device carried in ``BLEDevice.details``, if it is a ``kind``."""
        details = address_or_ble_device.details if isinstance(address_or_ble_device, BLEDevice) else None
        return details if isinstance(details, kind) else None

    def _not_found(self) -> BleakDeviceNotFoundError:
        return BleakDeviceNotFoundError(self.address, f"Device with address {self.address} was not found.")

    def _resolve(self, known: _T | None, lookup: Callable[[str], _T | None]) -> _T:
        """``known`` (from the BLEDevice), else what ``lookup`` registers at this address; looked up on
        use, not at construction, so a client made before its device is registered still finds it."""
        device = known if known is not None else lookup(self.address)
        if device is None:
            raise self._not_found()
        return device

    @property
    def is_connected(self) -> bool:
        """True while the simulated link is up."""
        return self._connected

    async def disconnect(self) -> None:
        """Drop the link; BlueZ reports solicited disconnects too."""
        if not self._connected:
            return
        self._teardown()
        await asyncio.sleep(0)
        if self._disconnected_callback is not None:
            self._disconnected_callback()

    def _link_dropped(self) -> None:
        """The radio link is lost (unsolicited): tear it down and tell the owner."""
        self._teardown()
        if self._disconnected_callback is not None:
            self._disconnected_callback()

    def _teardown(self) -> None:
        raise NotImplementedError
