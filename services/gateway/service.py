"""The gateway service: MQTT in, ESPHome native API (and mDNS) out, until asked to stop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from typing import TYPE_CHECKING, Any

from services.gateway.bluetooth import BluetoothHub, mode_request_payload
from services.gateway.connection import Keepalive, Limits
from services.gateway.discovery import Discovery
from services.gateway.entities import fnv1_32
from services.gateway.gatt_proxy import GattProxy
from services.gateway.identity import resolve_node_mac
from services.gateway.inbound import Inbound
from services.gateway.keystore import KeyStore
from services.gateway.legacy_naming import LegacyNaming
from services.gateway.logs import LogFanout
from services.gateway.mdns import MdnsAnnouncer, build_txt
from services.gateway.registry import Registry
from services.gateway.server import GatewayServer, NodeInfo
from shared.config import Config
from shared.service import ServiceRuntime

if TYPE_CHECKING:
    from services.gateway.controls import Controls

_LOGGER = logging.getLogger(__name__)

HEALTH_INTERVAL = 30.0
EXIT_OK = 0
EXIT_STARTUP_FAILED = 2


def legacy_naming(config: Config) -> LegacyNaming | None:
    """The legacy entity naming when gateway.entity_naming is "legacy" (docs/migrating.md)."""
    if config.gateway.entity_naming != "legacy":
        return None
    return LegacyNaming(config.gateway.legacy_device_name, hash_key=fnv1_32)


class GatewayStartError(RuntimeError):
    """The gateway cannot start (e.g. the API port is taken); the message says what to change."""


def describe_port_holder(port: int) -> str:
    """Which process listens on a TCP port, as far as we may know (blocking)."""
    try:
        import psutil  # noqa: PLC0415 - only needed on this error path

        for conn in psutil.net_connections(kind="inet"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
                if conn.pid is None:
                    return "a process of another user (run as root to see which)"
                proc = psutil.Process(conn.pid)
                return f"pid {conn.pid} ({' '.join(proc.cmdline())[:120] or proc.name()})"
    except Exception as exc:  # diagnosis only, never fatal
        return f"an unknown process ({exc.__class__.__name__})"
    return "an unknown process"


class Gateway:
    """All parts of the gateway wired together; ``run`` drives one for the service."""

    def __init__(
        self,
        config: Config,
        *,
        keepalive: Keepalive | None = None,
        limits: Limits | None = None,
        relist_delay: float = 1.5,
        key_announce_timeout: float = 30.0,
        flush_interval: float = 0.1,
        health_interval: float = HEALTH_INTERVAL,
        logs: bool = True,
    ) -> None:
        self.config = config
        self.keepalive = keepalive
        self.limits = limits
        self.relist_delay = relist_delay
        self.key_announce_timeout = key_announce_timeout
        self.health_interval = health_interval
        self.runtime = ServiceRuntime(config, "gateway", config.gateway.instance, on_message=self._on_message)
        self.registry = Registry(legacy_naming(config))
        self.bluetooth = BluetoothHub(flush_interval=flush_interval, on_mode_request=self._on_mode_request)
        self.inbound = Inbound(
            self.runtime.topics,
            config.reader.instance,
            self.registry,
            self.bluetooth,
            stale_after=config.aggregator_stale_after,
        )
        self.gatt_proxy: GattProxy | None = None
        if config.reader.proxy and config.reader.proxy_slots > 0:  # active proxy through the reader
            self.gatt_proxy = GattProxy(
                topics=self.runtime.topics,
                reader_instance=config.reader.instance,
                owner=f"{config.gateway.instance}/{self.runtime.boot_id}",
                publish=lambda topic, payload: self.runtime.mqtt.publish(topic, payload, qos=1),
            )
            self.bluetooth.gatt = self.gatt_proxy
        self.controls: Controls | None = None
        if config.controls:  # imported only then: the device tables cost start-up time
            from services.gateway.controls import Controls  # noqa: PLC0415

            self.controls = Controls(
                self.runtime.topics,
                self.registry,
                lambda topic, payload: self.runtime.mqtt.publish(topic, payload, qos=1),  # never retained
                owner=f"gw-{self.runtime.boot_id[:12]}",
            )
        self.keystore = KeyStore(config.gateway.api_key, config.state_dir, config.gateway.instance)
        self.discovery: Discovery | None = None
        if config.gateway.discovery:
            self.discovery = Discovery(
                lambda topic, payload: self.runtime.mqtt.publish(topic, payload, retain=True),
                self.runtime.mqtt.clear_retained,
                self.runtime.topics,
                prefix=config.gateway.discovery_prefix,
                node=config.gateway.name,
                aggregator_instance=config.aggregator.instance,
            )
        self._want_logs = logs
        self.log_fanout: LogFanout | None = None
        self.server: GatewayServer | None = None
        self.mdns: MdnsAnnouncer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._health_task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return self.server.port if self.server is not None else 0

    async def start(self) -> None:
        cfg = self.config.gateway
        mac, source = await asyncio.to_thread(
            resolve_node_mac, cfg.mac, cfg.name, self.config.state_dir, instance=cfg.instance
        )
        await asyncio.to_thread(self.keystore.load)
        _LOGGER.info(
            "node %s (%s), MAC %s (%s), encryption: %s",
            cfg.name,
            cfg.friendly_name,
            mac,
            source,
            self.keystore.source.value,
        )
        if cfg.entity_naming == "legacy":
            _LOGGER.info(
                "legacy entity naming: the object ids of jorik41/renogy-bt on one device (alias %s)",
                cfg.legacy_device_name or "from each battery's BT-2",
            )
        loop = asyncio.get_running_loop()
        if self._want_logs:
            self.log_fanout = LogFanout(loop)
            logging.getLogger().addHandler(self.log_fanout)
        node = NodeInfo(name=cfg.name, friendly_name=cfg.friendly_name, mac=mac)
        self.server = GatewayServer(
            node,
            self.registry,
            self.keystore,
            self.bluetooth,
            logs=self.log_fanout,
            max_clients=cfg.max_clients,
            keepalive=self.keepalive,
            limits=self.limits,
            relist_delay=self.relist_delay,
        )
        self.server.controls = self.controls
        try:
            await self.server.start(cfg.bind, cfg.api_port)
        except OSError as exc:
            self._remove_log_handler()
            if exc.errno == errno.EADDRINUSE:
                holder = await asyncio.to_thread(describe_port_holder, cfg.api_port)
                raise GatewayStartError(
                    f"port {cfg.api_port} on {cfg.bind} is already in use by {holder}; stop it or choose "
                    "another port with gateway.api_port / RENOGY_API_PORT (--api-port)"
                ) from None
            raise GatewayStartError(
                f"cannot listen on {cfg.bind}:{cfg.api_port} ({exc.strerror or exc}); check gateway.bind / "
                "RENOGY_API_BIND and gateway.api_port / RENOGY_API_PORT"
            ) from None
        proxy_filters = self.gatt_proxy.filters if self.gatt_proxy is not None else []
        discovery_filters = self.discovery.filters if self.discovery else []
        control_filters = self.controls.filters if self.controls is not None else []
        for topic_filter, qos in self.inbound.filters + proxy_filters + discovery_filters + control_filters:
            self.runtime.mqtt.subscribe(topic_filter, qos)
        await self.runtime.start()
        if cfg.mdns:
            self.mdns = MdnsAnnouncer(
                cfg.name,
                self.server.port,
                cfg.bind,
                self._txt(),
                addresses=cfg.mdns_addresses,
                interface=cfg.mdns_interface,
            )
            self.mdns.start()
        self.keystore.listeners.append(self._on_key_changed)
        self._health_task = loop.create_task(self._health_loop())

    async def stop(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        if self.server is not None:
            await self.server.stop()
        if self.mdns is not None:
            await self.mdns.stop()
        for task in list(self._tasks):
            task.cancel()
        if self.controls is not None:
            self.controls.close()
        self._remove_log_handler()
        if self.server is not None:
            self.runtime.publish_health(self.health())
        await self.runtime.stop()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def health(self) -> dict[str, Any]:
        body = self.server.health() if self.server is not None else {}
        body["bad_payloads"] = self.inbound.bad_payloads
        if self.gatt_proxy is not None:
            body.update(self.gatt_proxy.health())
            body["bad_payloads"] += self.gatt_proxy.bad_payloads
        body["api_port"] = self.port
        return body

    def _remove_log_handler(self) -> None:
        if self.log_fanout is not None:
            logging.getLogger().removeHandler(self.log_fanout)
            self.log_fanout = None

    def _txt(self) -> dict[str, str]:
        assert self.server is not None
        node = self.server.node
        return build_txt(
            mac=node.mac,
            friendly_name=node.friendly_name,
            esphome_version=node.esphome_version,
            project_name=node.project_name,
            project_version=node.project_version,
            encrypted=self.keystore.encryption_required,
        )

    def _on_key_changed(self) -> None:
        task = asyncio.get_running_loop().create_task(self._switch_encryption())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _switch_encryption(self) -> None:
        """After a key change: move the clients to the new mode, then announce it, one step at a time.

        Home Assistant provisions the key halfway through setting up the entry, so nothing happens
        until that client has subscribed to states (or left). Then, as ESPHome does, every session in
        the old mode is asked to disconnect: Home Assistant reconnects, finds the key it stored and
        comes back encrypted. Only once a session in the new mode is set up does the mDNS TXT record
        change: a TXT change makes Home Assistant's zeroconf discovery re-check the entry, and if the
        announced address differs from the entry's it moves the host and reloads the entry; during a
        setup that reload fails ("already been setup!") and every entity stays unavailable.
        """
        server = self.server
        assert server is not None
        timeout = self.key_announce_timeout
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.provisioning_settled.wait(), timeout)
        server.mode_session_ready.clear()
        if server.disconnect_other_mode():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.mode_session_ready.wait(), timeout)
        if self.mdns is not None:
            await self.mdns.update(self._txt())

    def _on_message(self, message: Any) -> None:
        if self.gatt_proxy is not None and self.gatt_proxy.handle_message(message):
            return
        if self.controls is not None and self.controls.handle_message(message):
            return
        self.inbound.handle(message)
        if self.discovery is not None:
            self.discovery.handle(message)

    def _on_mode_request(self, mode: int) -> None:
        topic = self.runtime.topics.scanner_set(self.config.reader.instance)
        if not self.runtime.mqtt.publish(topic, mode_request_payload(mode), qos=1):
            _LOGGER.warning("could not pass the scanner mode request to the reader (MQTT down)")

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval)
            self.runtime.publish_health(self.health())


async def run(config: Config) -> int:
    """Run the gateway until SIGINT/SIGTERM; returns the process exit code."""
    gateway = Gateway(config)
    try:
        await gateway.start()
    except GatewayStartError as exc:
        _LOGGER.error("gateway cannot start: %s", exc)
        await gateway.runtime.stop()
        return EXIT_STARTUP_FAILED
    gateway.runtime.install_signal_handlers()
    try:
        await gateway.runtime.stop_event.wait()
    finally:
        await gateway.stop()
    return EXIT_OK
