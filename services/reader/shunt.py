"""The Smart Shunt 300: its own BLE device, read over its own connection beside the BT-2's.

The shunt is notify-only: the reader connects, subscribes to ``c411`` and gets a 110-byte live frame
about once a second. :class:`ShuntFrames` is the Sans-IO part (decode, screen, throttle);
:class:`ShuntReader` is the transport loop the reader service runs as a task of its own, so a shunt
that is away, slow or wedged never holds up the BT-2 cycle.

Topic: the shunt is behind no BT-2, so its own address stands for the ``<bt2>`` level and its slave id
is 0: ``renogy/bt2/<shunt address, 12 hex>/shunt/0/reading``. At most one reading is published per
``reader.poll_interval`` (the latest frame wins), with ``mono``/``boot_id`` like every reading.

Every BLE call has a deadline (connect + subscribe: ``reader.connect_timeout``; disconnect:
``DISCONNECT_TIMEOUT``); a lost link is reconnected with back-off; a shunt that stays connected but
sends nothing for ``silence_timeout`` seconds is disconnected and reconnected (logged once, with what
to do about it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from bleak import BleakClient
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice

from services.reader.readings import DeviceCycle
from services.reader.recovery import Backoff
from shared.devices.base import decode
from shared.devices.shunt import NOTIFY_UUID, PAYLOAD_LENGTH, SHUNT, payload_words
from shared.registers import BlockError, Value
from shared.topics import bt2_id

_LOGGER = logging.getLogger(__name__)

SLAVE_ID: Final = 0  # a shunt has no Modbus id; 0 is the family's default
DISCONNECT_TIMEOUT: Final = 5.0
# The shunt notifies about once a second: this long without a frame on a live link means it is stuck.
SILENCE_TIMEOUT: Final = 15.0
# Bad frames are logged at most once per this many seconds (with the count since the last line).
BAD_FRAME_LOG_INTERVAL: Final = 60.0


@dataclass(frozen=True, slots=True)
class Frame:
    """One good live frame: its screened values and when it arrived."""

    values: dict[str, Value]
    ts: float
    mono: float
    dropped: tuple[str, ...] = ()


@dataclass
class ShuntFrames:
    """Sans-IO: notifications in, at most one reading per ``interval`` out (the newest good frame)."""

    address: str
    interval: float
    frames: int = 0
    bad_frames: int = 0
    latest: Frame | None = None
    _published: Frame | None = None
    _next_due: float = 0.0  # monotonic time the next reading may go out
    _bad_logged_at: float | None = None
    _bad_unlogged: int = 0
    _dropped_logged: set[str] = field(default_factory=set)

    @property
    def bt2(self) -> str:
        return bt2_id(self.address)

    def feed(self, data: bytes, ts: float, mono: float) -> Frame | None:
        """Decode one notification; a bad one is logged (rate-limited) and dropped, never half-used."""
        try:
            if len(data) != PAYLOAD_LENGTH:
                raise BlockError(f"{len(data)} bytes, a live frame has {PAYLOAD_LENGTH}")
            values, dropped = decode(SHUNT, 0, payload_words(data))
        except BlockError as exc:
            self._bad(data, str(exc), mono)
            return None
        for line in dropped:
            name = line.split(" ", 1)[0]
            if name not in self._dropped_logged:  # once per field: a broken sensor keeps sending it
                self._dropped_logged.add(name)
                _LOGGER.warning("shunt %s: dropped %s (frame %s)", self.address, line, data.hex())
        self.frames += 1
        self.latest = Frame(values, ts, mono, tuple(dropped))
        return self.latest

    def _bad(self, data: bytes, why: str, mono: float) -> None:
        self.bad_frames += 1
        self._bad_unlogged += 1
        if self._bad_logged_at is not None and mono - self._bad_logged_at < BAD_FRAME_LOG_INTERVAL:
            return
        more = f" ({self._bad_unlogged} bad frames since the last such line)" if self._bad_logged_at else ""
        _LOGGER.warning(
            "shunt %s: dropped a bad notification: %s%s; frame %s",
            self.address,
            why,
            more,
            data[:PAYLOAD_LENGTH].hex(),
        )
        self._bad_logged_at, self._bad_unlogged = mono, 0

    def next_due(self) -> float | None:
        """Monotonic time a held frame goes out, None when none is waiting."""
        if self.latest is None or self.latest is self._published:
            return None
        return self._next_due

    def take(self, mono: float) -> DeviceCycle | None:
        """The reading to publish now, if one is due (the newest frame not published yet)."""
        due = self.next_due()
        if due is None or mono < due:
            return None
        frame = self.latest
        assert frame is not None
        self._published = frame
        self._next_due = mono + self.interval
        return DeviceCycle(
            SHUNT,
            self.bt2,
            SLAVE_ID,
            ts=frame.ts,
            mono=frame.mono,
            values=dict(frame.values),
            failed=[0] if frame.dropped else [],
        )

    def forget(self) -> None:
        """A new link: a frame of the old one is not published after it."""
        if self.latest is not self._published:
            self.latest = None


class ShuntReader:
    """Connect, subscribe, publish throttled readings, reconnect with back-off; until ``stop`` is set."""

    def __init__(
        self,
        address: str,
        *,
        interval: float,
        publish: Callable[[DeviceCycle], None],
        backend: type[BaseBleakClient] | None,
        find_device: Callable[[str], BLEDevice | None] | None = None,
        connect_timeout: float = 20.0,
        silence_timeout: float = SILENCE_TIMEOUT,
    ) -> None:
        self.address = address.upper()
        self.handler = ShuntFrames(self.address, interval)
        self.publish = publish
        self.backend = backend
        self.find_device = find_device
        self.connect_timeout = connect_timeout
        self.silence_timeout = silence_timeout
        self.backoff = Backoff(initial=1.0, maximum=60.0)
        self.client: BleakClient | None = None
        self.connects = 0
        self.stalls = 0
        self.last_error: str | None = None
        self._wake = asyncio.Event()
        self._lost = asyncio.Event()
        self._stall_logged = False

    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.is_connected

    def health(self) -> dict[str, Any]:
        latest = self.handler.latest
        return {
            "address": self.address,
            "connected": self.connected,
            "connects": self.connects,
            "frames": self.handler.frames,
            "bad_frames": self.handler.bad_frames,
            "stalls": self.stalls,
            "last_frame_age": None if latest is None else round(time.monotonic() - latest.mono, 1),
            "error": self.last_error,
        }

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            delay = self.backoff.next_delay()
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    return
            try:
                await self._connect()
            except asyncio.CancelledError:
                await self._disconnect()
                raise
            except Exception as exc:  # BleakError, D-Bus errors, deadline: all mean "try again later"
                self.last_error = str(exc) or type(exc).__name__
                level = logging.WARNING if self.backoff.failures <= 1 else logging.DEBUG
                _LOGGER.log(
                    level,
                    "shunt %s: no connection (%s); retrying with back-off",
                    self.address,
                    self.last_error,
                )
                await self._disconnect()
                continue
            try:
                await self._session(stop)
            finally:
                await self._disconnect()

    async def _connect(self) -> None:
        device: BLEDevice | str = (
            self.find_device(self.address) if self.find_device else None
        ) or self.address
        self._lost.clear()
        async with asyncio.timeout(self.connect_timeout):
            client = BleakClient(
                device,
                disconnected_callback=lambda _client: self._on_lost(),
                timeout=self.connect_timeout,
                backend=self.backend,
            )
            self.client = client
            await client.connect()
            self.handler.forget()
            await client.start_notify(NOTIFY_UUID, self._on_notify)
        self.connects += 1
        self.last_error = None
        _LOGGER.info("shunt %s: connected, subscribed to live frames", self.address)

    async def _session(self, stop: asyncio.Event) -> None:
        """Publish what is due until the link is lost, the shunt falls silent, or we stop."""
        last_frame = time.monotonic()
        seen = self.handler.frames
        while not stop.is_set():
            now = time.monotonic()
            if self.handler.frames != seen:
                seen, last_frame = self.handler.frames, now
                self.backoff.reset()  # frames flow: a later loss retries at once
            reading = self.handler.take(now)
            if reading is not None:
                self.publish(reading)
            if self._lost.is_set():
                _LOGGER.warning("shunt %s: link lost; reconnecting", self.address)
                return
            if now - last_frame >= self.silence_timeout:
                self._stalled()
                return
            wake_at = last_frame + self.silence_timeout
            due = self.handler.next_due()
            if due is not None:
                wake_at = min(wake_at, due)
            self._wake.clear()
            waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
            try:
                await asyncio.wait(
                    waits, timeout=max(0.0, wake_at - time.monotonic()), return_when="FIRST_COMPLETED"
                )
            finally:
                for waiter in waits:
                    waiter.cancel()

    def _stalled(self) -> None:
        self.stalls += 1
        if not self._stall_logged:
            self._stall_logged = True
            _LOGGER.warning(
                "shunt %s: connected but no live frame for %s s; reconnecting (if this keeps happening, "
                "close the Renogy app, which may hold the shunt, and power-cycle the shunt)",
                self.address,
                self.silence_timeout,
            )
        else:
            # Logged once per process: the count is in the reader's health (shunt.stalls).
            _LOGGER.debug("shunt %s: silent again (%d times); reconnecting", self.address, self.stalls)

    def _on_notify(self, _char: Any, data: bytearray) -> None:
        if self.handler.feed(bytes(data), time.time(), time.monotonic()) is not None:
            self._wake.set()

    def _on_lost(self) -> None:
        self._lost.set()
        self._wake.set()

    async def _disconnect(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        try:
            async with asyncio.timeout(DISCONNECT_TIMEOUT):
                await client.disconnect()
        except Exception as exc:
            _LOGGER.debug("shunt %s: disconnect did not complete cleanly: %r", self.address, exc)
