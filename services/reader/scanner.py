"""The one BLE scanner of the reader: finds the BT-2 and feeds the Bluetooth proxy.

BlueZ discovery can hang or silently stop (a known failure of long-running scanners), so start and
stop have deadlines, and a watchdog restarts the scanner when no advertisement arrived for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner

from services.reader.bluez_errors import Diagnosis
from shared.service import RepeatFilter

_LOGGER = logging.getLogger(__name__)

Mode = Literal["active", "passive"]
START_TIMEOUT = 10.0
BT2_PREFIX = "BT-TH-"


@dataclass(slots=True)
class Sighting:
    device: BLEDevice
    name: str
    rssi: int
    seen_at: float


class Scanner:
    """A restartable BleakScanner with deadlines, a silence watchdog and a table of BT-2 sightings."""

    def __init__(
        self,
        *,
        backend: type[BaseBleakScanner] | None,
        adapter: str,
        mode: Mode,
        on_advertisement: Callable[[BLEDevice, AdvertisementData], None] | None,
        on_state: Callable[[str, Mode], None],
        watchdog_after: float = 90.0,
    ) -> None:
        self._backend = backend
        self._adapter = adapter
        self.mode: Mode = mode
        self.configured_mode: Mode = mode
        self._on_advertisement = on_advertisement
        self._on_state = on_state
        self.watchdog_after = watchdog_after
        self._scanner: BleakScanner | None = None
        # Monotonic time of the last advertisement or of the last (attempted) start: never 0, which
        # would make the silence the host's uptime.
        self._last_advert = time.monotonic()
        # Why the last start failed (None while running or never tried).
        self.problem: Diagnosis | None = None
        self._found = asyncio.Event()
        self.bt2_sightings: dict[str, Sighting] = {}
        self.restarts = 0
        self.state = "stopped"
        self._log = RepeatFilter(_LOGGER)

    async def start(self) -> bool:
        """Start scanning; False (logged, state 'failed') when the adapter refuses or hangs."""
        self._set_state("starting")
        kwargs: dict[str, Any] = {"scanning_mode": self.mode, "backend": self._backend}
        if self._backend is None:
            kwargs["bluez"] = {"adapter": self._adapter}
            if self.mode == "passive":
                # BlueZ passive scanning needs an advertisement-monitor pattern; match any flags AD.
                kwargs["bluez"]["or_patterns"] = [(0, 0x01, b"\x06"), (0, 0x01, b"\x1a"), (0, 0x01, b"\x02")]
        try:
            scanner = BleakScanner(self._detected, **kwargs)
            async with asyncio.timeout(START_TIMEOUT):
                await scanner.start()
        except Exception as exc:
            from services.reader.bluez_errors import diagnose  # noqa: PLC0415 - only on the error path

            self.problem = diagnose(exc, self._adapter)
            self._last_advert = time.monotonic()
            self._log.failure("scan", "BLE scanner did not start: %s", self.problem.message)
            self._set_state("failed")
            return False
        self.problem = None
        self._log.success("scan")
        self._scanner = scanner
        self._last_advert = time.monotonic()
        self._set_state("running")
        return True

    async def stop(self) -> None:
        scanner, self._scanner = self._scanner, None
        if scanner is None:
            return
        self._set_state("stopping")
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await scanner.stop()
        except Exception as exc:
            _LOGGER.debug("scanner stop did not complete cleanly: %r", exc)
        self._set_state("stopped")

    async def restart(self, mode: Mode | None = None) -> bool:
        if mode is not None:
            self.mode = self.configured_mode = mode
        self.restarts += 1
        await self.stop()
        return await self.start()

    async def watch(self, stop: asyncio.Event) -> None:
        """Restart the scanner when it went silent or failed; runs until stop is set."""
        period = max(1.0, self.watchdog_after / 3)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), period)
            if stop.is_set():
                return
            silent_for = time.monotonic() - self._last_advert
            if self._scanner is None or silent_for > self.watchdog_after:
                # Once per streak: a scanner that cannot start (no D-Bus socket) must not flood the log.
                self._log.failure(
                    "watch",
                    "BLE scanner %s (no advertisement for %.0f s); restarting it",
                    "is not running" if self._scanner is None else "went silent",
                    silent_for,
                )
                if await self.restart():
                    self._log.success("watch")

    async def find_bt2(self, *, address: str | None, name: str | None, timeout: float) -> Sighting | None:
        """Wait until a matching BT-2 advertises (first BT-TH-* when neither address nor name is given)."""
        deadline = time.monotonic() + timeout
        while True:
            sighting = self._match(address, name)
            if sighting is not None:
                return sighting
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._found.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._found.wait(), remaining)

    def _match(self, address: str | None, name: str | None) -> Sighting | None:
        candidates = sorted(self.bt2_sightings.values(), key=lambda s: -s.seen_at)
        for sighting in candidates:
            if address and sighting.device.address.upper() == address.upper():
                return sighting
            if not address and (name is None or sighting.name == name.strip()):
                return sighting
        return None

    def _detected(self, device: BLEDevice, adv: AdvertisementData) -> None:
        self._last_advert = time.monotonic()
        name = (adv.local_name or device.name or "").strip()
        if name.startswith(BT2_PREFIX) or name.upper().startswith(("RNGRBP", "RNGC")):
            self.bt2_sightings[device.address.upper()] = Sighting(device, name, adv.rssi, time.time())
            self._found.set()
        if self._on_advertisement is not None:
            self._on_advertisement(device, adv)

    def _set_state(self, state: str) -> None:
        self.state = state
        self._on_state(state, self.mode)
