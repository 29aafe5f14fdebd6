"""The native API listener: node identity, client limit, fan-out of states, relisting, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from services.gateway import messages as ids
from services.gateway.bluetooth import BluetoothHub
from services.gateway.connection import ApiConnection, Codec, ConnectionState, Counters, Keepalive, Limits
from services.gateway.entities import Catalog
from services.gateway.framing import Frame, PlainCodec, encode_plaintext_many
from services.gateway.identity import Mac, derive_bluetooth_mac
from services.gateway.keystore import KeyStore
from services.gateway.logs import LogFanout
from services.gateway.noise import NoiseCodec
from services.gateway.proto import pb
from services.gateway.registry import Registry
from services.gateway.throttle import ThrottledLog
from shared.service import VERSION, RepeatFilter

if TYPE_CHECKING:
    from services.gateway.controls import Controls

_LOGGER = logging.getLogger(__name__)

API_MAJOR: Final = 1
API_MINOR: Final = 19
ESPHOME_VERSION: Final = "2026.10.0"
MANUFACTURER: Final = "Renogy"
MODEL: Final = "BT-2 ESPHome proxy"
# Home Assistant shows a set project_name's two dotted parts as manufacturer and model (and skips
# its ESPHome-firmware nag), so it carries the same words as the fields it overrides.
PROJECT_NAME: Final = f"{MANUFACTURER}.{MODEL}"


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """Static identity of the node as Home Assistant sees it."""

    name: str
    friendly_name: str
    mac: Mac
    model: str = MODEL
    manufacturer: str = MANUFACTURER
    project_name: str = PROJECT_NAME
    project_version: str = VERSION
    esphome_version: str = ESPHOME_VERSION

    @property
    def server_info(self) -> str:
        return f"renogy-bt-esphome-proxy {VERSION}"[:32]


class GatewayServer:
    """Accepts API clients and serves the registry, the Bluetooth hub and the log stream."""

    def __init__(
        self,
        node: NodeInfo,
        registry: Registry,
        keystore: KeyStore,
        bluetooth: BluetoothHub,
        *,
        logs: LogFanout | None = None,
        max_clients: int = 16,
        keepalive: Keepalive | None = None,
        limits: Limits | None = None,
        relist_delay: float = 1.5,
        refusal_log_interval: float = 60.0,
    ) -> None:
        self.node = node
        self.registry = registry
        self.keystore = keystore
        self.bluetooth = bluetooth
        self.logs = logs
        self.max_clients = max_clients
        self.keepalive = keepalive or Keepalive()
        self.limits = limits or Limits()
        self.relist_delay = relist_delay
        self.counters = Counters()
        self.controls: Controls | None = None  # set by the gateway with controls = true
        self.connections: set[ApiConnection] = set()
        self._flat_clients: set[ApiConnection] = set()
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._fallback_bt_mac = derive_bluetooth_mac(node.mac)
        self._identity_generation = 0
        self._relist_timer: asyncio.TimerHandle | None = None
        self._relist_first: float | None = None
        self._failures = RepeatFilter(_LOGGER)
        self._refusals = ThrottledLog(_LOGGER, refusal_log_interval)
        self._all_closed = asyncio.Event()
        # Clear while a client that just provisioned a key is still setting up (see Gateway._on_key_changed).
        self.provisioning_settled = asyncio.Event()
        self.provisioning_settled.set()
        self.mode_session_ready = asyncio.Event()  # a session in the current encryption mode is set up
        registry.state_listeners.append(self._on_states)
        registry.catalog_listeners.append(self._on_catalog)
        bluetooth.address_listeners.append(self._on_bluetooth_address)

    # --- life cycle -------------------------------------------------------------------------------

    async def start(self, host: str | None, port: int) -> None:
        """Listen; raises OSError (e.g. EADDRINUSE) when the port cannot be bound."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ApiConnection(self, self.keepalive, self.limits),
            host=host or None,
            port=port,
            reuse_address=True,
            backlog=64,
        )
        sockets = self._server.sockets
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        _LOGGER.info(
            "ESPHome API listening on %s:%d (%s)",
            host or "*",
            self.port,
            "Noise encryption" if self.keystore.encryption_required else "plaintext",
        )

    async def stop(self, grace: float = 2.0) -> None:
        """Stop listening, ask every client to disconnect, and close whoever has not after ``grace``."""
        if self._relist_timer is not None:
            self._relist_timer.cancel()
            self._relist_timer = None
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.request_disconnect()
        if self.connections:
            self._all_closed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), grace)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self.bluetooth.close()
        await asyncio.sleep(0)

    # --- what connections ask for -----------------------------------------------------------------

    def new_codec(self) -> Codec:
        psk = self.keystore.psk
        if psk is None:
            return PlainCodec()
        return NoiseCodec(psk, self.node.name, self.node.mac.hex_lower)

    @property
    def bluetooth_mac(self) -> str:
        return self.bluetooth.adapter_address or self._fallback_bt_mac.colon_upper

    @property
    def generation(self) -> tuple[int, int]:
        return self.registry.catalog.version, self._identity_generation

    def hello_frame(self) -> Frame:
        msg = pb.HelloResponse(
            api_version_major=API_MAJOR,
            api_version_minor=API_MINOR,
            server_info=self.node.server_info,
            name=self.node.name,
        )
        return Frame(ids.HELLO_RESPONSE, msg.SerializeToString())

    def device_info_frame(self, *, sub_devices: bool = True) -> Frame:
        node = self.node
        msg = pb.DeviceInfoResponse(
            name=node.name,
            friendly_name=node.friendly_name,
            mac_address=node.mac.colon_upper,
            esphome_version=node.esphome_version,
            model=node.model,
            manufacturer=node.manufacturer[:20],
            project_name=node.project_name,
            project_version=node.project_version,
            bluetooth_proxy_feature_flags=self.bluetooth.feature_flags,
            bluetooth_mac_address=self.bluetooth_mac,
            api_encryption_supported=True,
        )
        if sub_devices:  # a flat client would only get empty devices from these
            for device in self.registry.catalog.devices:
                msg.devices.add(device_id=device.device_id, name=device.name)
        return Frame(ids.DEVICE_INFO_RESPONSE, msg.SerializeToString())

    def capabilities_frame(self) -> Frame:
        msg = pb.DeviceCapabilitiesResponse()
        msg.bluetooth_proxy.feature_flags = self.bluetooth.feature_flags
        msg.bluetooth_proxy.mac_address = self.bluetooth_mac
        return Frame(ids.CAPABILITIES_RESPONSE, msg.SerializeToString())

    def config_dump(self) -> list[str]:
        catalog = self.registry.catalog
        return [
            f"name: {self.node.name} ({self.node.friendly_name})",
            f"mac: {self.node.mac.colon_upper}, bluetooth scanner: {self.bluetooth_mac}",
            f"version: {self.node.project_version} (ESPHome API {API_MAJOR}.{API_MINOR})",
            f"encryption: {self.keystore.source.value}",
            f"devices: {len(catalog.devices)}, entities: {len(catalog.entities)}",
            f"clients: {len(self.connections)} of {self.max_clients}",
        ]

    async def set_key(self, key: bytes) -> bool:
        self.provisioning_settled.clear()
        ok = await self.keystore.provision(key)
        if not ok:
            self.provisioning_settled.set()
        return ok

    def provisioner_settled(self, connection: ApiConnection) -> None:
        """The client that set the key has finished its setup (subscribed to states) or left."""
        self.provisioning_settled.set()

    def session_ready(self, connection: ApiConnection) -> None:
        """A client subscribed to states: its setup is done."""
        codec = connection.codec
        if codec is not None and codec.encrypted == self.keystore.encryption_required:
            self.mode_session_ready.set()

    def disconnect_other_mode(self) -> int:
        """Ask every session whose encryption no longer matches the key to reconnect; how many."""
        wanted = self.keystore.encryption_required
        stale = [c for c in self.connections if c.codec is not None and c.codec.encrypted != wanted]
        if stale:
            _LOGGER.info(
                "API key %s: asking %d %s client(s) to reconnect %s",
                "set" if wanted else "cleared",
                len(stale),
                "plaintext" if wanted else "encrypted",
                "encrypted" if wanted else "in plaintext",
            )
        for connection in stale:
            connection.request_disconnect()
        return len(stale)

    def connection_opened(self, connection: ApiConnection) -> bool:
        """Every connection is let in; the oldest pre-Hello one goes when their budget is full (one
        silent past the grace period, or any once the hard cap is reached)."""
        pending = [c for c in self.connections if c.state is ConnectionState.HANDSHAKE]
        oldest = min(pending, key=lambda c: c.opened_at, default=None)
        if (
            oldest is not None
            and len(pending) >= self.limits.pending
            and self._evictable(oldest, len(pending))
        ):
            self.counters.pending_evicted += 1
            self.report_refusal(
                "pending",
                "closing %s: %d connections have not sent Hello (port scanner or stuck client?); "
                "the oldest makes room for %s",
                oldest.peer,
                len(pending),
                connection.peer,
            )
            oldest.evict()
            self.connections.discard(oldest)
        self.connections.add(connection)
        self.counters.connections_total += 1
        return True

    def _evictable(self, oldest: ApiConnection, pending: int) -> bool:
        """A burst of real clients connecting at once stays in: only one silent past the grace period
        goes, or any once the hard cap is reached."""
        silent_for = asyncio.get_running_loop().time() - oldest.opened_at
        return silent_for >= self.limits.pending_grace or pending >= self.limits.pending_cap

    def session_admitted(self, connection: ApiConnection) -> bool:
        sessions = sum(1 for c in self.connections if c.hello_done and c is not connection)
        if sessions >= self.max_clients:
            self.counters.rejected_full += 1
            self.report_refusal(
                "full",
                "refusing client %s (%r): %d clients connected (gateway.max_clients)",
                connection.peer,
                connection.client_info,
                sessions,
            )
            return False
        return True

    def report_refusal(self, kind: str, msg: str, *args: Any) -> None:
        self._refusals.log(kind, msg, *args)

    def client_view_opened(self, connection: ApiConnection) -> None:
        if not connection.sub_devices:
            self._flat_clients.add(connection)
            if self._on_flat_states not in self.registry.flat_state_listeners:
                self.registry.flat_state_listeners.append(self._on_flat_states)

    def connection_closed(self, connection: ApiConnection) -> None:
        self._flat_clients.discard(connection)
        if not self._flat_clients and self._on_flat_states in self.registry.flat_state_listeners:
            self.registry.flat_state_listeners.remove(self._on_flat_states)
        if connection in self.connections:
            self.connections.discard(connection)
            if connection.hello_done:
                _LOGGER.info("client %s (%s) disconnected", connection.peer, connection.client_info)
        if not self.connections:
            self._all_closed.set()

    def report_failure(self, peer: str, msg: str, *args: Any) -> None:
        self._failures.failure(peer, msg, *args)

    def report_success(self, peer: str) -> None:
        self._failures.success(peer)

    # --- fan-out ----------------------------------------------------------------------------------

    def _on_states(self, frames: list[Frame]) -> None:
        self._fan_out([c for c in self.connections if c.states_subscribed and c.sub_devices], frames)

    def _on_flat_states(self, frames: list[Frame]) -> None:
        self._fan_out([c for c in self._flat_clients if c.states_subscribed], frames)

    def _fan_out(self, connections: list[ApiConnection], frames: list[Frame]) -> None:
        """The plaintext bytes are built once for every plaintext client; a Noise client's are its own
        (each session encrypts with its own key and nonce)."""
        plain: bytes | None = None
        for conn in connections:
            codec = conn.codec
            if codec is None or codec.encrypted or not conn.ready:
                conn.send_frames(frames)
                continue
            if plain is None:
                try:
                    plain = encode_plaintext_many(frames)
                except ValueError as exc:
                    _LOGGER.error("cannot encode a state message: %s", exc)
                    return
            conn.send_encoded(plain)

    def _on_catalog(self, catalog: Catalog) -> None:
        self.schedule_relist()

    def _on_bluetooth_address(self, address: str) -> None:
        _LOGGER.info("Bluetooth scanner address is %s", address)
        self._identity_generation += 1
        self.schedule_relist()

    def schedule_relist(self) -> None:
        """Debounced: clients that listed an older catalog are asked to reconnect once it settles."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._relist_first is None:
            self._relist_first = now
        if self._relist_timer is not None:
            self._relist_timer.cancel()
        # Keep waiting while documents arrive, but never longer than 4 delays in total.
        when = min(now + self.relist_delay, self._relist_first + 4 * self.relist_delay)
        self._relist_timer = loop.call_at(when, self._relist)

    def _relist(self) -> None:
        self._relist_timer = None
        self._relist_first = None
        current = self.generation
        stale = [c for c in self.connections if c.synced_generation not in (None, current)]
        if stale:
            _LOGGER.info("entity set changed: asking %d client(s) to reconnect and list again", len(stale))
        for conn in stale:
            conn.request_disconnect()

    def health(self) -> dict[str, Any]:
        counters = self.counters
        return {
            "clients": len(self.connections),
            "devices": self.registry.device_count,
            "entities": self.registry.entity_count,
            "encryption": self.keystore.source.value,
            "connections_total": counters.connections_total,
            "rejected_full": counters.rejected_full,
            "bad_frames": counters.bad_frames,
            "handshake_failures": counters.handshake_failures,
            "rate_limited": counters.rate_limited,
            "pending_evicted": counters.pending_evicted,
            "slow_client_disconnects": counters.slow_client_disconnects,
            "adverts_received": self.bluetooth.received,
            "adverts_forwarded": self.bluetooth.forwarded,
            "adverts_dropped": self.bluetooth.dropped,
            "bluetooth_subscribers": len(self.bluetooth.subscribers),
            "logs_dropped": counters.logs_dropped,
        }
