"""The one BLE scanner of the reader: finds the BT-2 and feeds the Bluetooth proxy.

BlueZ discovery can hang or silently stop (a known failure of long-running scanners), so start and
stop have deadlines, and a watchdog restarts the scanner when no advertisement arrived for a while.

Airtime (services/reader/airtime.py) can *hold* the scanner: while any hold is in place it is stopped
(state ``idle``, as ESPHome's tracker reports between scan windows), except while ``find_bt2`` waits for
the BT-2, which needs the radio; the watchdog leaves a held scanner alone.
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
from shared.registers import Family, family_for_advertisement
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
    family: Family = Family.BT2  # what the advertisement says the pack is (shared.registers)


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
        # Airtime holds (reasons the scanner rests), searches that need it anyway, and the last scanner a
        # hold stopped (the active proxy still finds the devices it saw). One transition at a time.
        self._holds: set[str] = set()
        self._demand = 0
        self._rested: BleakScanner | None = None
        self._lock = asyncio.Lock()

    @property
    def held(self) -> bool:
        """True while an airtime hold keeps the scanner stopped (no search needs it right now)."""
        return bool(self._holds) and self._demand == 0

    async def hold(self, reason: str) -> None:
        """Stop scanning (state 'idle') until every hold is released; a no-op for a reason already held."""
        self._holds.add(reason)
        await self._apply()

    async def release(self, reason: str) -> None:
        """Drop one hold; the last one starts the scanner again (a no-op for a reason not held)."""
        if reason in self._holds:
            self._holds.discard(reason)
            await self._apply()

    def drop(self, reason: str) -> None:
        """Forget a hold without starting the scanner (the holder is shutting down)."""
        self._holds.discard(reason)

    async def _apply(self) -> None:
        """Bring the scanner in line with the holds: stop it while held, start what a hold stopped."""
        async with self._lock:
            if self.held and self._scanner is not None:
                await self._stop("idle")
            elif not self.held and self._scanner is None and self.state == "idle":
                await self._start()

    async def start(self) -> bool:
        """Start scanning; False (logged, state 'failed') when the adapter refuses or hangs."""
        async with self._lock:
            if self.held:
                self._set_state("idle")
                return True
            return await self._start()

    async def _start(self) -> bool:
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
        async with self._lock:
            self._rested = None
            if self.state == "idle":
                self._set_state("stopped")
            await self._stop("stopped")

    async def _stop(self, final: str) -> None:
        scanner, self._scanner = self._scanner, None
        if scanner is None:
            return
        self._set_state("stopping")
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await scanner.stop()
        except Exception as exc:
            _LOGGER.debug("scanner stop did not complete cleanly: %r", exc)
        if final == "idle":
            self._rested = scanner
        self._set_state(final)

    async def restart(self, mode: Mode | None = None) -> bool:
        """Stop and start again (in ``mode`` when given); a held scanner only takes the mode and stays idle."""
        async with self._lock:
            if mode is not None:
                self.mode = self.configured_mode = mode
            self.restarts += 1
            if self.held:
                if self._scanner is not None:
                    await self._stop("idle")
                else:
                    self._set_state("idle")  # tells the gateway the new mode
                return True
            await self._stop("stopped")
            return await self._start()

    async def watch(self, stop: asyncio.Event) -> None:
        """Restart the scanner when it went silent or failed; runs until stop is set."""
        period = max(1.0, self.watchdog_after / 3)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), period)
            if stop.is_set():
                return
            if self.held or self.state == "idle":
                continue  # resting on purpose; starting it again resets the silence clock
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
        sighting = self._match(address, name)
        if sighting is not None or timeout <= 0:
            return sighting
        resting = bool(self._holds)
        self._demand += 1
        try:
            if resting:
                await self._apply()  # a held scanner scans while the BT-2 is searched for
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
        finally:
            self._demand -= 1
            if self._holds:
                await self._apply()

    def device(self, address: str) -> BLEDevice | None:
        """The scanner's last sighting of ``address`` (what the Bluetooth proxy connects to), if any."""
        wanted = address.upper()
        for scanner in (self._scanner, self._rested):
            if scanner is None:
                continue
            for key, (device, _adv) in scanner.discovered_devices_and_advertisement_data.items():
                if key.upper() == wanted:
                    return device
        return None

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
        key = device.address.upper()
        if not name and key in self.bt2_sightings:
            name = self.bt2_sightings[key].name  # a later advertisement without the name (passive scan)
        # BT-TH-*, the Pro packs RNGRBP*/RNGC*/RNGPRO*, and a pack showing only Renogy's 0xE14C id.
        family = family_for_advertisement(name, adv.manufacturer_data)
        if family is not None:
            self.bt2_sightings[key] = Sighting(device, name, adv.rssi, time.time(), family)
            self._found.set()
        if self._on_advertisement is not None:
            self._on_advertisement(device, adv)

    def _set_state(self, state: str) -> None:
        self.state = state
        self._on_state(state, self.mode)
