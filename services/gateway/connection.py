"""One API client: transport codec, request handlers, keepalive and a bounded output buffer."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from google.protobuf.message import DecodeError

from services.gateway import messages as ids
from services.gateway.bluetooth import BluetoothHub
from services.gateway.framing import Frame
from services.gateway.logs import LOG_CONFIG, LOG_INFO, LogFanout, log_frame
from services.gateway.messages import frame_of
from services.gateway.proto import pb
from services.gateway.registry import Registry

if TYPE_CHECKING:  # imported by the service only with controls = true (start-up time)
    from services.gateway.controls import Controls

_LOGGER = logging.getLogger(__name__)

# ESPHome accepts only these before a successful Hello and closes on anything else it knows.
_BEFORE_HELLO: Final = frozenset(
    {ids.HELLO_REQUEST, ids.DISCONNECT_REQUEST, ids.DISCONNECT_RESPONSE, ids.PING_REQUEST, ids.PING_RESPONSE}
)
_HANDSHAKE_KINDS: Final = frozenset({"mac_failure", "handshake", "bad_indicator"})
PING_FRAME: Final = Frame(ids.PING_REQUEST, b"")
SUBSCRIBE_RAW_FLAG: Final = 1  # BluetoothProxySubscriptionFlag.RAW_ADVERTISEMENTS
DISCONNECT_FRAME: Final = Frame(ids.DISCONNECT_REQUEST, b"")
# Password-less firmware's answer to ConnectRequest: invalid_password unset (false).
CONNECT_RESPONSE_FRAME: Final = Frame(ids.AUTH_RESPONSE, b"")

# Clients announcing API 1.12 or later all know sub-devices (aioesphomeapi 38+). 34.x-37.x knew them
# but still said 1.10, so for those Home Assistant's own version in client_info decides: sub-devices
# arrived in Home Assistant 2025.7 together with ESPHome 2025.7.
_SUB_DEVICES_MINOR: Final = 12
_SUB_DEVICES_HA: Final = (2025, 7)
_HA_CLIENT = re.compile(r"^Home Assistant (\d{4})\.(\d{1,2})\b")


def client_knows_sub_devices(api_minor: int, client_info: str) -> bool:
    """Whether a client reads DeviceInfo.devices and entity device ids (else it gets a flat view)."""
    if api_minor >= _SUB_DEVICES_MINOR:
        return True
    match = _HA_CLIENT.match(client_info)
    return match is not None and (int(match[1]), int(match[2])) >= _SUB_DEVICES_HA


class ConnectionState(enum.Enum):
    """Where one session is, as aioesphomeapi's own ConnectionState tracks the client side."""

    HANDSHAKE = "handshake"  # socket open (and Noise handshake if any); no Hello yet
    CONNECTED = "connected"  # Hello answered: every request is served
    DISCONNECTING = "disconnecting"  # we sent DisconnectRequest and wait for the client's reply
    CLOSING = "closing"  # flushing what is queued, then the socket closes
    CLOSED = "closed"


_OPEN_STATES: Final = frozenset(
    {ConnectionState.HANDSHAKE, ConnectionState.CONNECTED, ConnectionState.DISCONNECTING}
)
_SESSION_STATES: Final = frozenset({ConnectionState.CONNECTED, ConnectionState.DISCONNECTING})


@dataclass(frozen=True, slots=True)
class Keepalive:
    """Server-side keepalive as ESPHome does it; injectable so tests need not wait minutes."""

    ping_after: float = 60.0
    timeout: float = 150.0
    # A real client sends Hello within milliseconds of connecting (aioesphomeapi: at once, Noise
    # included); a silent socket is a port scanner or a stuck client holding a pre-Hello slot.
    handshake_timeout: float = 10.0
    disconnect_timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class Limits:
    """Output bounds: optional traffic is dropped above ``soft``; a client above ``hard`` is cut off."""

    soft: int = 64 * 1024
    hard: int = 4 * 1024 * 1024
    # Connections that have not sent Hello have their own budget, so they can never lock out a real
    # client: when it is full, the oldest of them that has been silent for ``pending_grace`` is closed
    # to make room. Younger ones are real clients mid-handshake as often as not (Home Assistant and a
    # few tools reconnecting at once), so they are let in over the budget, up to ``pending_cap``.
    pending: int = 8
    pending_grace: float = 2.0
    pending_cap: int = 64
    # Requests a client may send: a burst, then a steady rate (pings included). Home Assistant sends
    # about a dozen when it connects and a ping every 20 s; a flood is cut off instead of costing CPU.
    burst: int = 1000
    rate: float = 200.0


class MessageBudget:
    """A token bucket over received messages: ``take`` is False once a client sends too fast."""

    def __init__(self, burst: int, rate: float, now: float) -> None:
        self.burst = burst
        self.rate = rate
        self._tokens = float(burst)
        self._last = now

    def take(self, count: int, now: float) -> bool:
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= count
        return self._tokens >= 0


class Codec(Protocol):
    @property
    def ready(self) -> bool: ...

    @property
    def encrypted(self) -> bool: ...

    error: str | None
    error_kind: str | None

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]: ...

    def take_output(self) -> bytes: ...

    def encode(self, frames: Iterable[Frame]) -> bytes: ...


@dataclass
class Counters:
    connections_total: int = 0
    rejected_full: int = 0
    bad_frames: int = 0
    handshake_failures: int = 0
    rate_limited: int = 0
    pending_evicted: int = 0
    slow_client_disconnects: int = 0
    logs_dropped: int = 0


class Node(Protocol):
    """What a connection needs from the server."""

    registry: Registry
    bluetooth: BluetoothHub
    logs: LogFanout | None
    counters: Counters
    controls: Controls | None  # None with controls = false

    def new_codec(self) -> Codec: ...

    def hello_frame(self) -> Frame: ...

    def device_info_frame(self, *, sub_devices: bool = True) -> Frame: ...

    def capabilities_frame(self) -> Frame: ...

    def config_dump(self) -> list[str]: ...

    @property
    def generation(self) -> tuple[int, int]: ...

    async def set_key(self, key: bytes) -> bool: ...

    def connection_opened(self, connection: ApiConnection) -> bool: ...

    def client_view_opened(self, connection: ApiConnection) -> None:
        """Hello told which entity view the client needs."""

    def provisioner_settled(self, connection: ApiConnection) -> None:
        """A client that set the API key subscribed to states (its setup is done) or disconnected."""

    def session_ready(self, connection: ApiConnection) -> None:
        """A client subscribed to states."""

    def connection_closed(self, connection: ApiConnection) -> None: ...

    def report_failure(self, peer: str, msg: str, *args: Any) -> None: ...

    def report_success(self, peer: str) -> None: ...

    def report_refusal(self, kind: str, msg: str, *args: Any) -> None:
        """A refusal, logged at most once per interval per kind (with how many were not logged)."""

    def session_admitted(self, connection: ApiConnection) -> bool:
        """Hello arrived: False when the real-client limit is reached."""


class ProtocolViolation(Exception):
    """The client sent something that ends its connection."""


def _parse(cls: Any, payload: bytes) -> Any:
    msg = cls()
    try:
        msg.ParseFromString(payload)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ProtocolViolation(f"undecodable {cls.__name__}: {exc}") from None
    return msg


class ApiConnection(asyncio.Protocol):
    """The server side of one native-API session."""

    def __init__(self, node: Node, keepalive: Keepalive, limits: Limits) -> None:
        self.node = node
        self.keepalive = keepalive
        self.limits = limits
        self.transport: asyncio.Transport | None = None
        self.codec: Codec | None = None
        self.peer = "?"
        self.client_info = ""
        self.state = ConnectionState.HANDSHAKE
        self.hello_done = False  # Hello was answered at some point (stays true while closing)
        self.sub_devices = True  # False: the client gets the flat, pre-sub-device view
        self.states_subscribed = False
        self.provisioned_key = False  # this client set the API key and has not finished its setup yet
        self.synced_generation: tuple[int, int] | None = None
        self._loop = asyncio.get_running_loop()
        self._opened = self._loop.time()
        self.opened_at = self._opened
        self._budget = MessageBudget(limits.burst, limits.rate, self._opened)
        self._last_rx = self._opened
        self._ping_sent = False
        self._timer: asyncio.TimerHandle | None = None
        self._disconnect_timer: asyncio.TimerHandle | None = None
        self._cork: list[bytes] | None = None
        self._corked = 0  # bytes in _cork
        self._tasks: set[asyncio.Task[None]] = set()
        self._handlers: dict[int, Callable[[bytes], None]] = {
            ids.HELLO_REQUEST: self._on_hello,
            ids.AUTH_REQUEST: self._on_connect_request,
            ids.DISCONNECT_REQUEST: self._on_disconnect_request,
            ids.DISCONNECT_RESPONSE: self._on_disconnect_response,
            ids.PING_REQUEST: self._on_ping,
            ids.PING_RESPONSE: self._ignore,
            ids.DEVICE_INFO_REQUEST: self._on_device_info,
            ids.LIST_ENTITIES_REQUEST: self._on_list_entities,
            ids.SUBSCRIBE_STATES: self._on_subscribe_states,
            ids.SUBSCRIBE_LOGS: self._on_subscribe_logs,
            ids.SUBSCRIBE_HA_SERVICES: self._ignore,
            ids.SUBSCRIBE_HA_STATES: self._ignore,
            ids.GET_TIME_RESPONSE: self._ignore,
            ids.BT_SUBSCRIBE: self._on_bt_subscribe,
            ids.BT_UNSUBSCRIBE: self._on_bt_unsubscribe,
            ids.BT_CONNECTIONS_FREE_SUBSCRIBE: self._on_bt_connections_free,
            ids.BT_SET_MODE: self._on_bt_set_mode,
            ids.SET_KEY_REQUEST: self._on_set_key,
            ids.CAPABILITIES_REQUEST: self._on_capabilities,
            ids.SWITCH_COMMAND: self._on_switch_command,
        }
        gatt = node.bluetooth.gatt
        if gatt is not None:  # the active Bluetooth proxy (services/gateway/gatt_proxy.py)
            for msg_type in gatt.request_types:
                self._handlers[msg_type] = functools.partial(gatt.handle, self, msg_type)

    @property
    def closing(self) -> bool:
        return self.state not in _OPEN_STATES

    @property
    def disconnect_requested(self) -> bool:
        return self.state is ConnectionState.DISCONNECTING

    def _set_state(self, state: ConnectionState) -> None:
        # Closed is final, and a closing socket never reopens.
        if self.state is ConnectionState.CLOSED or (self.closing and state in _OPEN_STATES):
            return
        self.state = state

    # --- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self.node.connection_opened(self):
            self._set_state(ConnectionState.CLOSING)
            transport.abort()
            return
        self.codec = self.node.new_codec()
        self._schedule_keepalive()

    def data_received(self, data: bytes) -> None:
        if self.closing or self.codec is None:
            return
        self._last_rx = self._loop.time()
        self._ping_sent = False
        self._cork = []
        self._corked = 0
        try:
            codec = self.codec
            frames = codec.feed(data)
            handshake = codec.take_output()
            if handshake:
                self._write(handshake)
            if frames and not self._budget.take(len(frames), self._last_rx):
                self.node.counters.rate_limited += 1
                self.node.report_refusal(
                    "rate",
                    "closing %s%s: more than %d messages at once or %.0f/s (flood)",
                    self.peer,
                    f" ({self.client_info!r})" if self.client_info else "",
                    self.limits.burst,
                    self.limits.rate,
                )
                self._abort()
                return
            for frame in frames:
                if self._stopped():
                    break
                self._dispatch(frame)
            if codec.error is not None and not self._stopped():
                self._on_codec_error(codec)
        except ProtocolViolation as exc:
            self.node.counters.bad_frames += 1
            _LOGGER.info("closing %s: %s", self.peer, exc)
            self.close()
        except Exception:
            _LOGGER.exception("closing %s after an internal error", self.peer)
            self.close()
        finally:
            self._uncork()

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_state(ConnectionState.CLOSED)
        for timer in (self._timer, self._disconnect_timer):
            if timer is not None:
                timer.cancel()
        self.node.bluetooth.unsubscribe(self)
        if self.node.bluetooth.gatt is not None:
            self.node.bluetooth.gatt.client_gone(self)
        if self.node.logs is not None:
            self.node.logs.unsubscribe(self)
        if self.provisioned_key:
            self.provisioned_key = False
            self.node.provisioner_settled(self)
        self.node.connection_closed(self)
        self.transport = None

    def _stopped(self) -> bool:
        # A method rather than the property: handlers change the state behind mypy's narrowing.
        return self.closing

    # --- sending ----------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return not self.closing and self.transport is not None and self.codec is not None and self.codec.ready

    def send_frames(self, frames: list[Frame]) -> None:
        """Send messages; a client whose buffer exceeds the hard limit is disconnected."""
        if not self.ready or not frames:
            return
        assert self.codec is not None
        try:
            data = self.codec.encode(frames)
        except ValueError as exc:
            _LOGGER.error("cannot encode a message for %s: %s", self.peer, exc)
            return
        self._write(data)

    def send_encoded(self, data: bytes) -> None:
        """Send bytes already framed for this connection's codec (a fan-out encodes them once)."""
        if self.ready and data:
            self._write(data)

    def send_advertisements(self, frames: list[Frame]) -> bool:
        """Advertisement batch; dropped (False) while the client's socket is backed up."""
        if not self.ready or self.buffered > self.limits.soft:
            return False
        self.send_frames(frames)
        return True

    def send_log(self, frame: Frame, level: int) -> None:
        if not self.ready or self.buffered > self.limits.soft:
            self.node.counters.logs_dropped += 1
            return
        self.send_frames([frame])

    @property
    def buffered(self) -> int:
        transport = self.transport
        pending = self._corked if self._cork is not None else 0
        return pending + (transport.get_write_buffer_size() if transport is not None else 0)

    def _write(self, data: bytes) -> None:
        if self._cork is not None:
            self._cork.append(data)
            self._corked += len(data)
            # One read can hold thousands of requests: the replies count against the cap while corked.
            if self.buffered > self.limits.hard:
                self._cut_off(self.buffered)
            return
        transport = self.transport
        if transport is None or self.closing:
            return
        transport.write(data)
        self._check_backlog()

    def _uncork(self) -> None:
        cork, self._cork = self._cork, None
        if cork and self.transport is not None:
            self.transport.write(b"".join(cork))
            self._check_backlog()
        if self.closing and self.transport is not None:
            self.transport.close()

    def _check_backlog(self) -> None:
        transport = self.transport
        if transport is not None and transport.get_write_buffer_size() > self.limits.hard:
            self._cut_off(transport.get_write_buffer_size())

    def _cut_off(self, queued: int) -> None:
        """Drop a client that has more output queued than the hard limit allows."""
        self.node.counters.slow_client_disconnects += 1
        _LOGGER.warning("client %s is not reading (%d bytes queued); disconnecting it", self.peer, queued)
        self._set_state(ConnectionState.CLOSING)
        self._cork, self._corked = None, 0  # what was corked is dropped, not sent
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """Flush what is queued, then close."""
        self._set_state(ConnectionState.CLOSING)
        if self._cork is None and self.transport is not None:
            self.transport.close()

    def request_disconnect(self) -> None:
        """Ask the client to disconnect (it replies and reconnects); abort if it does not."""
        if self.state is not ConnectionState.CONNECTED:
            if self.state is ConnectionState.HANDSHAKE:
                self.close()
            return
        if not self.ready:
            self.close()
            return
        self._set_state(ConnectionState.DISCONNECTING)
        self.send_frames([DISCONNECT_FRAME])
        self._disconnect_timer = self._loop.call_later(self.keepalive.disconnect_timeout, self._abort)

    def _abort(self) -> None:
        """Drop the connection now; whatever is queued or corked is not sent."""
        self._set_state(ConnectionState.CLOSING)
        self._cork, self._corked = None, 0
        if self.transport is not None:
            self.transport.abort()

    def evict(self) -> None:
        """Closed to make room for a newer connection (the pre-Hello budget is full)."""
        self._abort()

    # --- keepalive --------------------------------------------------------------------------------

    def _schedule_keepalive(self) -> None:
        ka = self.keepalive
        deadline = self._last_rx + (ka.timeout if self._ping_sent else ka.ping_after)
        if not self.hello_done:
            deadline = min(deadline, self._opened + ka.handshake_timeout)
        self._timer = self._loop.call_at(max(deadline, self._loop.time() + 0.01), self._check_keepalive)

    def _check_keepalive(self) -> None:
        self._timer = None
        if self.closing or self.transport is None:
            return
        now = self._loop.time()
        idle = now - self._last_rx
        if not self.hello_done and now - self._opened >= self.keepalive.handshake_timeout:
            _LOGGER.info("closing %s: no Hello within %.0f s", self.peer, self.keepalive.handshake_timeout)
            self._abort()
            return
        if idle >= self.keepalive.timeout:
            _LOGGER.info("closing %s: nothing received for %.0f s", self.peer, idle)
            self._abort()
            return
        if idle >= self.keepalive.ping_after and not self._ping_sent:
            # Mid-handshake there is nothing to ping with; the timeout still applies.
            self._ping_sent = True
            if self.ready:
                self.send_frames([PING_FRAME])
        self._schedule_keepalive()

    # --- receiving --------------------------------------------------------------------------------

    def _on_codec_error(self, codec: Codec) -> None:
        kind = codec.error_kind or "malformed"
        if not self.hello_done and kind in _HANDSHAKE_KINDS:
            self.node.counters.handshake_failures += 1
            hint = " (wrong encryption key)" if kind == "mac_failure" else ""
            self.node.report_failure(
                self.peer.rpartition(":")[0],
                "client %s failed the handshake: %s%s",
                self.peer,
                codec.error,
                hint,
            )
        else:
            self.node.counters.bad_frames += 1
            _LOGGER.info("closing %s: %s", self.peer, codec.error)
        self.close()

    def _dispatch(self, frame: Frame) -> None:
        handler = self._handlers.get(frame.msg_type)
        if handler is None:
            return  # unknown or server-to-client ids are ignored, as ESPHome does
        if not self.hello_done and frame.msg_type not in _BEFORE_HELLO:
            raise ProtocolViolation(f"message {frame.msg_type} before Hello")
        handler(frame.payload)

    def _ignore(self, payload: bytes) -> None:
        pass

    def _on_hello(self, payload: bytes) -> None:
        msg = _parse(pb.HelloRequest, payload)
        first = not self.hello_done
        if first:
            self.client_info = str(msg.client_info)[:64]
            if not self.node.session_admitted(self):
                self._abort()
                return
            self.sub_devices = client_knows_sub_devices(int(msg.api_version_minor), self.client_info)
            self.hello_done = True
            self._set_state(ConnectionState.CONNECTED)
            self.node.client_view_opened(self)
        self.send_frames([self.node.hello_frame()])
        if first:
            self.node.report_success(self.peer.rpartition(":")[0])
            _LOGGER.info(
                "client %s connected: %r, API %d.%d%s%s",
                self.peer,
                self.client_info,
                msg.api_version_major,
                msg.api_version_minor,
                ", encrypted" if self.codec is not None and self.codec.encrypted else "",
                "" if self.sub_devices else ", without sub-devices (flat entity names)",
            )

    def _on_connect_request(self, payload: bytes) -> None:
        # Clients up to aioesphomeapi 29.x (HA 2025.4) wait for this after Hello; there is no password.
        _parse(pb.AuthenticationRequest, payload)
        self.send_frames([CONNECT_RESPONSE_FRAME])

    def _on_disconnect_request(self, payload: bytes) -> None:
        self.send_frames([Frame(ids.DISCONNECT_RESPONSE, b"")])
        _LOGGER.info("client %s disconnects", self.peer)
        self.close()

    def _on_disconnect_response(self, payload: bytes) -> None:
        self.close()

    def _on_ping(self, payload: bytes) -> None:
        self.send_frames([Frame(ids.PING_RESPONSE, b"")])

    def _on_device_info(self, payload: bytes) -> None:
        self.synced_generation = self.node.generation
        self.send_frames([self.node.device_info_frame(sub_devices=self.sub_devices)])

    def _on_list_entities(self, payload: bytes) -> None:
        self.synced_generation = self.node.generation
        catalog = self.node.registry.catalog
        self.send_frames(list(catalog.list_frames if self.sub_devices else catalog.flat_list_frames))

    def _on_subscribe_states(self, payload: bytes) -> None:
        self.states_subscribed = True
        self.node.session_ready(self)
        if self.provisioned_key:
            self.provisioned_key = False
            self.node.provisioner_settled(self)
        self.send_frames(self.node.registry.initial_frames(flat=not self.sub_devices))

    def _on_subscribe_logs(self, payload: bytes) -> None:
        msg = _parse(pb.SubscribeLogsRequest, payload)
        logs = self.node.logs
        if logs is None:
            return
        level = int(msg.level) or LOG_INFO  # unset means the default
        logs.subscribe(self, level)
        if msg.dump_config:
            lines = self.node.config_dump()
            self.send_frames([log_frame(LOG_CONFIG, f"[C][gateway]: {line}") for line in lines])

    def _on_bt_subscribe(self, payload: bytes) -> None:
        msg = _parse(pb.SubscribeBluetoothLEAdvertisementsRequest, payload)
        # Without the raw flag a client expects one parsed advertisement per message (pre-2023 form).
        self.node.bluetooth.subscribe(self, legacy=not (int(msg.flags) & SUBSCRIBE_RAW_FLAG))

    def _on_bt_unsubscribe(self, payload: bytes) -> None:
        self.node.bluetooth.unsubscribe(self)

    def _on_bt_connections_free(self, payload: bytes) -> None:
        if self.node.bluetooth.gatt is not None:
            self.node.bluetooth.gatt.subscribe_free(self)
            return
        # Passive proxy: no connection slots (HA never routes GATT connections here).
        msg = pb.BluetoothConnectionsFreeResponse(free=0, limit=0)
        self.send_frames([frame_of(msg)])

    def _on_bt_set_mode(self, payload: bytes) -> None:
        msg = _parse(pb.BluetoothScannerSetModeRequest, payload)
        self.node.bluetooth.request_mode(int(msg.mode))

    def _on_set_key(self, payload: bytes) -> None:
        msg = _parse(pb.NoiseEncryptionSetKeyRequest, payload)
        task = self._loop.create_task(self._set_key(bytes(msg.key)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _set_key(self, key: bytes) -> None:
        try:
            ok = await self.node.set_key(key)
        except Exception:
            _LOGGER.exception("storing the API key failed")
            ok = False
        if ok and not self.states_subscribed and not self.closing:
            self.provisioned_key = True
        elif ok:
            self.node.provisioner_settled(self)
        reply = pb.NoiseEncryptionSetKeyResponse(success=ok)
        self.send_frames([frame_of(reply)])

    def _on_capabilities(self, payload: bytes) -> None:
        self.send_frames([self.node.capabilities_frame()])

    def _on_switch_command(self, payload: bytes) -> None:
        msg = _parse(pb.SwitchCommandRequest, payload)
        controls = self.node.controls
        if controls is None:  # nothing is switchable: no switch entity is listed
            self.node.report_refusal(
                "switch", "ignoring a switch command from %s: controls are off (controls = false)", self.peer
            )
            return
        controls.command(int(msg.key), bool(msg.state), self.peer)
