"""One BLE connection to a BT-2 and the one-request-at-a-time Modbus exchange over it.

Replies carry no register address, so exactly one request is outstanding at a time and a reply is
matched by slave id, function and byte count. A late reply must never be taken for the answer to
the next request, so after a failure the session is cleaned before it is used again:

- the BT-2 answered, but wrongly (bad CRC, wrong slave...): it is done with that request; every
  notification is discarded until the link has been quiet for a while (flush). A Modbus exception
  from the addressed slave is a complete answer and needs no flush;
- nothing, or only part of a reply, arrived in time: a reply may still be on its way, so the
  connection is dropped and made anew (``LinkError.reconnect``), which discards it for certain.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice

from shared.modbus import (
    FrameError,
    FrameErrorKind,
    ReadRequest,
    ReadResponse,
    ResponseAssembler,
    WriteAssembler,
    WriteRequest,
    WriteResponse,
)

_LOGGER = logging.getLogger(__name__)

WRITE_SERVICE = "0000ffd0-0000-1000-8000-00805f9b34fb"
WRITE_CHAR = "0000ffd1-0000-1000-8000-00805f9b34fb"
NOTIFY_SERVICE = "0000fff0-0000-1000-8000-00805f9b34fb"
NOTIFY_CHAR = "0000fff1-0000-1000-8000-00805f9b34fb"


class LinkError(Exception):
    """A request failed; ``kind`` is the error-count key of the health topic.

    ``reconnect`` says the session cannot be trusted any more: drop the connection and make it anew.
    """

    reconnect = False

    def __init__(self, kind: str, detail: str, *, reconnect: bool | None = None) -> None:
        super().__init__(detail)
        self.kind = kind
        if reconnect is not None:
            self.reconnect = reconnect


class LinkLost(LinkError):
    """The BLE connection is gone; reconnect before the next request."""

    reconnect = True


@dataclass(slots=True)
class Exchange:
    """What happened to one request (for the capture file and timing figures)."""

    request: ReadRequest | WriteRequest
    sent_at: float
    notifications: list[tuple[float, bytes]] = field(default_factory=list)
    response: ReadResponse | WriteResponse | None = None
    error: str | None = None
    ended_at: float = 0.0

    @property
    def elapsed(self) -> float:
        return self.ended_at - self.sent_at


class Bt2Link:
    """Connect, request, flush, disconnect. Every awaited BLE call has a deadline."""

    def __init__(
        self,
        device: BLEDevice | str,
        *,
        backend: type[BaseBleakClient] | None,
        connect_timeout: float,
        request_timeout: float,
        quiet_window: float | None = None,
        on_exchange: Callable[[Exchange], None] | None = None,
    ) -> None:
        self.device = device
        self._backend = backend
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        # A BT-2 answers within ~350 ms; after a failure, silence this long means nothing more is coming.
        self.quiet_window = quiet_window if quiet_window is not None else max(0.3, request_timeout * 2 / 3)
        self._on_exchange = on_exchange
        self._client: BleakClient | None = None
        self._write_char: BleakGATTCharacteristic | None = None
        self._assembler: ResponseAssembler | WriteAssembler | None = None
        self._waiter: asyncio.Future[ReadResponse | WriteResponse] | None = None
        self._exchange: Exchange | None = None
        self._first_error: FrameError | None = None
        self._dirty = False
        self._last_rx = 0.0
        self._rx_since_connect = 0
        self._drops_while_connecting: int | None = None
        self.late_replies = 0
        self.disconnected = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected and not self.disconnected.is_set()

    @property
    def mtu(self) -> int | None:
        """The ATT MTU of the link: BlueZ's characteristic MTU property (5.62+), else the backend's."""
        if self._write_char is not None and isinstance(self._write_char.obj, tuple):
            props = self._write_char.obj[1] if len(self._write_char.obj) > 1 else None
            if isinstance(props, dict) and isinstance(props.get("MTU"), int):
                return int(props["MTU"])
        backend = self.backend_object
        if backend is None or type(backend).__name__ == "BleakClientBlueZDBus":
            return None  # its mtu_size is a warning and 23 unless _acquire_mtu() ran
        return getattr(backend, "mtu_size", None)

    @property
    def backend_object(self) -> Any:
        """The bleak backend instance (the simulator exposes its timing model here)."""
        return getattr(self._client, "_backend", None)

    def read_floor(self, words: int) -> float | None:
        """The backend's modelled minimum time of a read, when it models timing."""
        floor = getattr(self.backend_object, "read_floor", None)
        return float(floor(words)) if callable(floor) else None

    async def connect(self) -> None:
        """Connect and enable notifications within connect_timeout; raises LinkError kinds."""
        self.disconnected.clear()
        client = BleakClient(
            self.device,
            disconnected_callback=self._on_disconnect,
            timeout=self.connect_timeout,
            backend=self._backend,
        )
        self._client = client
        self._drops_while_connecting = 0
        try:
            async with asyncio.timeout(self.connect_timeout):
                await client.connect()
                self._write_char = _find_char(client, WRITE_SERVICE, WRITE_CHAR)
                notify_char = _find_char(client, NOTIFY_SERVICE, NOTIFY_CHAR)
                await client.start_notify(notify_char, self._on_notify)
        except TimeoutError:
            drops = self._drops_while_connecting or 0
            self._drops_while_connecting = None
            await self._abandon(client)
            detail = f"connect + notify setup did not finish in {self.connect_timeout:.0f} s"
            if drops:
                detail += f" ({_aborted(drops)})"
            raise LinkError("connect_failed", detail) from None
        except BaseException:
            self._drops_while_connecting = None
            await self._abandon(client)
            raise
        drops, self._drops_while_connecting = self._drops_while_connecting or 0, None
        if drops:
            _LOGGER.warning("connected to BT-2 %s after %s", _address(self.device), _aborted(drops))
        self._rx_since_connect = 0
        if client.is_connected:
            # bleak's BlueZ backend retries an aborted connect (le-connection-abort-by-local) inside
            # connect() and reports the aborted attempt through the disconnected callback: that
            # link is gone, this one is up.
            self.disconnected.clear()
        self._dirty = False
        _LOGGER.info("connected to BT-2 %s (MTU %s)", _address(self.device), self.mtu)

    async def disconnect(self) -> None:
        client, self._client = self._client, None
        self._fail_waiter(LinkLost("disconnected", "disconnecting"))
        if client is not None:
            await self._abandon(client)

    async def request(self, request: ReadRequest) -> ReadResponse:
        """Send one read and wait for its reply; raises LinkError (kind = health error key)."""
        response = await self._transact(request, ResponseAssembler(request))
        assert isinstance(response, ReadResponse)
        return response

    async def write(self, request: WriteRequest) -> WriteResponse:
        """Send one write-single-register (function 6) and wait for its echo, within the request
        deadline; raises LinkError like :meth:`request` (kind ``modbus_exception``: the device refused)."""
        response = await self._transact(request, WriteAssembler(request))
        assert isinstance(response, WriteResponse)
        return response

    async def _transact(
        self, request: ReadRequest | WriteRequest, assembler: ResponseAssembler | WriteAssembler
    ) -> ReadResponse | WriteResponse:
        if not self.connected or self._client is None or self._write_char is None:
            raise LinkLost("disconnected", "not connected")
        if self._dirty:
            await self._flush()
        loop = asyncio.get_running_loop()
        self._assembler = assembler
        self._first_error = None
        self._waiter = loop.create_future()
        self._exchange = Exchange(request, time.monotonic())
        try:
            try:
                async with asyncio.timeout(self.request_timeout):
                    await self._client.write_gatt_char(self._write_char, request.encode(), response=False)
                    return await self._waiter
            except TimeoutError:
                raise self._timeout_error(request) from None
        except LinkError as exc:
            # An exception reply is the whole answer (right slave, valid CRC): nothing more is coming.
            self._dirty = exc.kind != FrameErrorKind.EXCEPTION.value
            self._finish_exchange(error=exc.kind)
            raise
        except Exception as exc:
            # A backend that raises on write (link dropped under us) is a lost link, not a crash.
            self._dirty = True
            self._finish_exchange(error="disconnected")
            raise LinkLost("disconnected", f"write failed: {_explain(exc)}") from exc
        finally:
            waiter, self._waiter = self._waiter, None
            if waiter is not None and waiter.done() and not waiter.cancelled():
                waiter.exception()  # failed by a disconnect while the write was still in flight: seen
            self._assembler = None

    def _timeout_error(self, request: ReadRequest | WriteRequest) -> LinkError:
        if not self.connected:
            return LinkLost("disconnected", "link dropped while waiting for the reply")
        pending = self._assembler.pending if self._assembler else b""
        if self._first_error is not None and not pending:
            return LinkError(
                "garbage",
                f"only stray bytes within {self.request_timeout} s ({self._first_error})",
                reconnect=True,
            )
        if pending:
            return LinkError(
                "truncated",
                f"only {len(pending)} of {request.response_length} reply bytes within {self.request_timeout} s",
                reconnect=True,
            )
        if not self._rx_since_connect:
            return LinkError(
                "timeout",
                f"no reply within {self.request_timeout} s, and no notification at all since connecting "
                "(the link is up but BlueZ delivers no notifications)",
                reconnect=True,
            )
        return LinkError("timeout", f"no reply within {self.request_timeout} s", reconnect=True)

    async def _flush(self) -> None:
        """Wait until the link has been quiet for quiet_window, discarding whatever arrives."""
        deadline = time.monotonic() + 4 * self.quiet_window
        self._last_rx = max(self._last_rx, time.monotonic())
        while True:
            quiet_until = self._last_rx + self.quiet_window
            now = time.monotonic()
            if now >= quiet_until:
                break
            if now >= deadline or not self.connected:
                raise LinkLost("late_reply", "the link kept sending after a failed request; reconnecting")
            await asyncio.sleep(min(quiet_until, deadline) - now)
        self._dirty = False

    def _on_notify(self, _char: BleakGATTCharacteristic, data: bytearray) -> None:
        now = time.monotonic()
        self._last_rx = now
        self._rx_since_connect += 1
        assembler, waiter = self._assembler, self._waiter
        if assembler is None or waiter is None or waiter.done():
            self.late_replies += 1
            _LOGGER.debug("discarded %d bytes outside a request: %s", len(data), bytes(data).hex())
            return
        if self._exchange is not None:
            self._exchange.notifications.append((now, bytes(data)))
        for event in assembler.feed(data):
            if isinstance(event, ReadResponse | WriteResponse):
                self._finish_exchange(response=event)
                waiter.set_result(event)
                return
            if event.kind is FrameErrorKind.GARBAGE:
                _LOGGER.debug("ignored %s", event)
                if self._first_error is None:
                    self._first_error = event
                continue
            # A definite wrong answer: fail now instead of waiting for the deadline.
            waiter.set_exception(LinkError(event.kind.value, str(event)))
            return

    def _on_disconnect(self, _client: BleakClient) -> None:
        if self._drops_while_connecting is not None:
            self._drops_while_connecting += 1
        self.disconnected.set()
        self._fail_waiter(LinkLost("disconnected", "BT-2 disconnected"))

    def _fail_waiter(self, error: LinkError) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)

    def _finish_exchange(
        self, *, response: ReadResponse | WriteResponse | None = None, error: str | None = None
    ) -> None:
        exchange, self._exchange = self._exchange, None
        if exchange is None:
            return
        exchange.response, exchange.error, exchange.ended_at = response, error, time.monotonic()
        if self._on_exchange is not None:
            self._on_exchange(exchange)

    async def _abandon(self, client: BleakClient) -> None:
        """Best-effort disconnect that cannot hang the reader (BlueZ sometimes never answers)."""
        try:
            async with asyncio.timeout(5):
                await client.disconnect()
        except Exception as exc:  # any failure here only matters as a log line
            _LOGGER.debug("disconnect from %s did not complete cleanly: %r", _address(self.device), exc)


def _find_char(client: BleakClient, service_uuid: str, char_uuid: str) -> BleakGATTCharacteristic:
    """Resolve a characteristic inside its own service (Pro packs repeat UUIDs across services)."""
    service = client.services.get_service(service_uuid)
    char = service.get_characteristic(char_uuid) if service is not None else None
    if char is None:
        char = client.services.get_characteristic(char_uuid)
    if char is None:
        raise LinkError("connect_failed", f"characteristic {char_uuid} not found: is this a BT-2?")
    return char


def _address(device: BLEDevice | str) -> str:
    return device if isinstance(device, str) else device.address


def backend_name(backend: type[BaseBleakClient] | None) -> str:
    """The bleak client backend class that ``backend`` (None: the platform's own) stands for."""
    if backend is not None:
        return backend.__name__
    try:
        from bleak.backends.client import get_platform_client_backend_type  # noqa: PLC0415

        return get_platform_client_backend_type()[0].__name__
    except Exception:  # no backend for this platform: bleak raises when it is used
        return "unavailable"


def _aborted(drops: int) -> str:
    return (
        f"the link dropped {drops} time(s) while connecting and bleak retried: usually "
        "le-connection-abort-by-local, RF interference or another connect in progress "
        "(docs/troubleshooting.md#connection-aborted)"
    )


def _explain(exc: Exception) -> str:
    """A BLE call's error in words (BlueZ's error name and remedy where it is a known one)."""
    from bleak.exc import BleakError  # noqa: PLC0415

    from services.reader.bluez_errors import diagnose  # noqa: PLC0415 - only on the error path

    if isinstance(exc, BleakError | OSError):
        return diagnose(exc, "adapter").message
    return repr(exc)
