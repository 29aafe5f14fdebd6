"""The BLE reader: owns the adapter, holds one BT-2 connection, reads every device each cycle.

A thin asyncio shell around the pure parts (shared.modbus, shared.registers, readings, stats,
recovery). It publishes raw per-device readings and, for the Bluetooth proxy, batches of the
advertisements its scanner sees. Commands on its BT-2's ``.../set`` topics are checked here
(shared.controls) and carried out by the poller between two reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from services.reader import adapter as adapter_ops
from services.reader.advertisements import AdvertisementBatcher, RawAdvertisement, address_type, encode_ad
from services.reader.airtime import Airtime
from services.reader.backends import Backends, load_class, resolve_backends
from services.reader.link import Bt2Link, Exchange, backend_name
from services.reader.outbox import Outbox, capacity_for
from services.reader.poller import (
    BLOCKS_EVERY_CYCLE,
    EXIT_ADAPTER,
    EXIT_OK,
    EXIT_WATCHDOG,
    MAX_ADAPTER_ERRORS,
    MAX_PROBE_SPACING,
    ControlEvent,
    DeviceReadingEvent,
    Poller,
    PollerEvent,
    ReadingEvent,
)
from services.reader.proxy_connections import ProxyConnections
from services.reader.readings import BatteryCycle, DeviceCycle, Identity
from services.reader.recovery import Backoff, Watchdog
from services.reader.scanner import Scanner
from services.reader.shunt import ShuntReader
from services.reader.stats import ReaderStats
from shared.config import Config
from shared.controls import Reason, Result, Target, check_command
from shared.modbus import ReadRequest
from shared.mqtt import Message
from shared.payloads import PayloadError, dumps, loads_object
from shared.service import ServiceRuntime
from shared.topics import SCHEMA, bt2_id

if TYPE_CHECKING:
    from services.simulator.shunt import ShuntPeripheral

# A refused command is logged once per this many seconds (and kind of refusal): the result topic
# carries every one, the log only says that they keep coming.
COMMAND_LOG_INTERVAL = 600.0

_LOGGER = logging.getLogger(__name__)

# Imported from here by the CLI, tests and benchmarks.
__all__ = [
    "BLOCKS_EVERY_CYCLE",
    "EXIT_ADAPTER",
    "EXIT_OK",
    "EXIT_WATCHDOG",
    "MAX_ADAPTER_ERRORS",
    "MAX_PROBE_SPACING",
    "Backends",
    "Reader",
    "load_class",
    "resolve_backends",
    "run",
]


class Reader:
    """The MQTT shell of one reader: wires the poller to the outbox, health, adverts, scanner mode, proxy."""

    def __init__(self, config: Config, backends: Backends) -> None:
        self.config = config
        self.cfg = config.reader
        self.backends = backends
        self.runtime = ServiceRuntime(config, "reader", self.cfg.instance, on_message=self._on_message)
        self.topics = self.runtime.topics
        self.adapter_address = backends.adapter_address
        self._batcher = AdvertisementBatcher()
        self._flush_handle: asyncio.TimerHandle | None = None
        self._capture: TextIO | None = None
        self._outbox: Outbox | None = None  # created with the first reading (publishing, below)
        self._command_bt2: set[str] = set()  # BT-2 ids whose command topics we subscribed to
        self._command_logged: dict[str, float] = {}  # refusal kind -> monotonic time of its last log line
        self.scanner = Scanner(
            backend=backends.scanner,
            adapter=self.cfg.adapter,
            mode="active",
            on_advertisement=self._on_advertisement if self.cfg.proxy else None,
            on_state=self._publish_scanner_state,
        )
        self.airtime = Airtime.from_config(self.scanner, self.cfg)  # reader.scan_duty, pause_during_reads
        # The active Bluetooth proxy: GATT connections for Home Assistant through this adapter.
        self.proxy: ProxyConnections | None = None
        if self.cfg.proxy and self.cfg.proxy_slots > 0:
            self.proxy = ProxyConnections(
                slots=self.cfg.proxy_slots,
                backend=backends.proxy_client or backends.client,
                find_device=self.scanner.device,
                publish=lambda topic, payload, qos, retain: self.runtime.mqtt.publish(
                    topic, payload, qos=qos, retain=retain
                ),
                topics=self.topics,
                instance=self.cfg.instance,
            )
        self.poller = Poller(
            self.cfg,
            backends,
            self.scanner,
            self.runtime.stop_event,
            on_event=self._on_poller_event,
            request_stop=self.runtime.request_stop,
            before_connect=self.proxy.yield_adapter if self.proxy is not None else None,
        )
        # The Smart Shunt (reader.shunt_address, or the simulator's with simulator.shunt): its own
        # connection in its own task, started with the service.
        self.sim_shunt: ShuntPeripheral | None = None
        self.shunt: ShuntReader | None = None
        self._shunt_task: asyncio.Task[None] | None = None
        address = self.cfg.shunt_address
        if address is None and backends.simulator is not None and config.simulator.shunt:
            from services.simulator import SIM_SHUNT_ADDRESS  # noqa: PLC0415 - keeps the simulator optional

            address = SIM_SHUNT_ADDRESS
        if address:
            self.shunt = ShuntReader(
                address,
                interval=self.cfg.poll_interval,
                publish=self._publish_device_reading,
                backend=backends.proxy_client or backends.client,
                find_device=self.scanner.device,
                connect_timeout=self.cfg.connect_timeout,
            )

    # The poller's state, under the names tests, benchmarks and `status` have always used.

    @property
    def link(self) -> Bt2Link | None:
        return self.poller.link

    @property
    def stats(self) -> ReaderStats:
        return self.poller.stats

    @property
    def watchdog(self) -> Watchdog:
        return self.poller.watchdog

    @property
    def backoff(self) -> Backoff:
        return self.poller.backoff

    @backoff.setter
    def backoff(self, backoff: Backoff) -> None:
        self.poller.backoff = backoff

    @property
    def identities(self) -> dict[int, Identity]:
        return self.poller.identities

    @property
    def bt2(self) -> str | None:
        return self.poller.bt2

    @property
    def adapter_problem(self) -> str | None:
        return self.poller.adapter_problem

    @property
    def exit_code(self) -> int:
        return self.poller.exit_code

    # --- life cycle ------------------------------------------------------------------------------

    async def run(self) -> int:
        self.runtime.install_signal_handlers()
        await self.start()
        watch = asyncio.create_task(self.scanner.watch(self.runtime.stop_event), name="scanner-watchdog")
        try:
            await self._poll_loop()
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
            await self.shutdown()
        return self.exit_code

    async def start(self) -> None:
        """Connect to MQTT (in the background), open the capture file, start scanning."""
        self.runtime.mqtt.subscribe(self.topics.scanner_set(self.cfg.instance))
        self.runtime.mqtt.subscribe(self.topics.bridge_state("aggregator", "+"))
        # Our own retained health, once: the previous run's read plan (which packs take the merged read).
        self.runtime.mqtt.subscribe(self.runtime.health_topic)
        if self.cfg.bt2_address:
            self._subscribe_commands(bt2_id(self.cfg.bt2_address))
        if self.proxy is not None:
            for topic_filter, qos in self.proxy.filters:
                self.runtime.mqtt.subscribe(topic_filter, qos)
            self.proxy.start()
        await self.runtime.start()
        if self.cfg.capture_file is not None:
            self._capture = _open_capture(self.cfg.capture_file)
            self.poller.on_exchange = self._on_exchange
        if self.adapter_address is None and self.backends.client is None:
            self.adapter_address = await adapter_ops.adapter_address(self.cfg.adapter)
        await self.scanner.start()
        self.airtime.start(self.runtime.stop_event)
        self._start_shunt()
        # At once, so `healthcheck reader` and `status` see an adapter that cannot work before a cycle ends.
        self._publish_health()

    def _start_shunt(self) -> None:
        if self.shunt is None:
            return
        sim = self.backends.simulator
        if sim is not None and self.config.simulator.shunt and self.sim_shunt is None:
            from services.simulator import simulated_shunt  # noqa: PLC0415
            from services.simulator.devices import register_peripheral  # noqa: PLC0415

            self.sim_shunt = simulated_shunt(sim, self.shunt.address)
            register_peripheral(self.sim_shunt)
        self._shunt_task = asyncio.create_task(self.shunt.run(self.runtime.stop_event), name="shunt")

    async def _stop_shunt(self) -> None:
        task, self._shunt_task = self._shunt_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.sim_shunt is not None:
            from services.simulator.devices import unregister_peripheral  # noqa: PLC0415

            unregister_peripheral(self.sim_shunt)
            self.sim_shunt = None

    async def shutdown(self) -> None:
        await self._stop_shunt()
        if self.proxy is not None:
            await self.proxy.close()
        if self.link is not None:
            await self.link.disconnect()
        await self.airtime.close()
        await self.scanner.stop()
        self._flush_adverts()
        self._publish_health()
        if self._capture is not None:
            self._capture.close()
        if self._outbox is not None:
            await self._outbox.close()
        await self.runtime.stop()

    async def _poll_loop(self) -> None:
        await self.poller.run(self.cycle)

    async def cycle(self) -> int:
        """Read every battery once (the scanner paused meanwhile with reader.pause_during_reads)."""
        async with self.airtime.reading():
            return await self._read_cycle()

    async def _read_cycle(self) -> int:
        """Read every battery once; returns the number of batteries with at least one good block."""
        good = await self.poller.cycle()
        if self.poller.bt2 is not None:
            self._subscribe_commands(self.poller.bt2)
        self._publish_health()
        return good

    async def _ensure_link(self) -> bool:
        return await self.poller.ensure_link()

    def _on_poller_event(self, event: PollerEvent) -> None:
        if isinstance(event, ReadingEvent):
            self._publish_reading(event.reading)
        elif isinstance(event, DeviceReadingEvent):
            self._publish_device_reading(event.reading)
        elif isinstance(event, ControlEvent):
            self._publish_result(event.target, event.result)

    # --- publishing ----------------------------------------------------------------------------------

    def _publish_reading(self, reading: BatteryCycle) -> None:
        """Hand a reading to the outbox: published in order (QoS 1, retained), kept while the broker is away."""
        identity = self.identities.get(reading.slave_id, Identity())
        payload = reading.payload(identity, self.runtime.boot_id)
        self._outbox_put(self.topics.reading(reading.bt2, reading.slave_id), dumps(payload))

    def _publish_device_reading(self, reading: DeviceCycle) -> None:
        """A controller's, DC-DC charger's, inverter's or shunt's reading: the same outbox, in order."""
        topic = self.topics.reading(reading.bt2, reading.slave_id, reading.family.kind)
        self._outbox_put(topic, dumps(reading.payload(self.runtime.boot_id)))

    def _outbox_put(self, topic: str, payload: bytes) -> None:
        if self._outbox is None:
            devices = len(self.cfg.batteries) + len(self.poller.devices) + (self.shunt is not None)
            capacity = capacity_for(self.cfg.outage_buffer, self.cfg.poll_interval, devices)
            self._outbox = Outbox(self.runtime.mqtt, capacity)
            self._outbox.gated = True  # a backlog waits for the aggregator after a reconnect
        self._outbox.put(topic, payload)
        self.stats.readings_published += 1

    # --- controls ------------------------------------------------------------------------------------

    def _subscribe_commands(self, bt2: str) -> None:
        """Commands for our own BT-2 only (its id is known once it is found, or from reader.bt2_address)."""
        if bt2 not in self._command_bt2:
            self._command_bt2.add(bt2)
            self.runtime.mqtt.subscribe(self.topics.command_filter(bt2))

    def _configured(self, bt2: str) -> set[Target]:
        """Every device on our bus: batteries too, so slave 255 is refused while they share it."""
        return {(bt2, "battery", slave) for slave in self.cfg.batteries} | {
            (bt2, kind, slave) for kind, slave in self.poller.devices
        }

    def _on_command(self, target: Target, message: Message) -> None:
        own = self.poller.bt2 or (bt2_id(self.cfg.bt2_address) if self.cfg.bt2_address else None)
        if target[0] != own:
            return  # another BT-2's command (a subscription left from before a BT-2 change)
        if message.retain:
            # A retained command would switch the device again on every reconnect: never obeyed.
            self._log_refusal(
                "retained",
                "ignored a retained command on %s: commands are never retained; clear it with an empty "
                "retained message (mosquitto_pub -r -n -t <topic>)",
                message.topic,
            )
            return
        outcome = check_command(
            target,
            message.payload,
            enabled=self.config.controls,
            configured=self._configured(target[0]),
            now=time.time(),
        )
        if isinstance(outcome, Result):
            self._publish_result(target, outcome)
        else:
            self.poller.submit(target, outcome)

    def _publish_result(self, target: Target, result: Result) -> None:
        bt2, kind, slave = target
        topic = self.topics.device_result(bt2, kind, slave)
        self.runtime.mqtt.publish(topic, dumps(result.payload(time.time())), qos=1, retain=False)
        if result.ok:
            _LOGGER.info("%s %d: %s", kind, slave, result)
        elif result.reason is Reason.DISABLED:
            self._log_refusal(
                "disabled",
                "refused a command for %s %d: controls are off (set controls = true / RENOGY_CONTROLS=true to "
                "allow writes); the next refusals are not logged for %.0f s",
                kind,
                slave,
                COMMAND_LOG_INTERVAL,
            )
        else:
            _LOGGER.warning("command for %s %d not carried out: %s", kind, slave, result)

    def _log_refusal(self, what: str, fmt: str, *args: object) -> None:
        now = time.monotonic()
        last = self._command_logged.get(what)
        if last is None or now - last >= COMMAND_LOG_INTERVAL:
            self._command_logged[what] = now
            _LOGGER.warning(fmt, *args)

    def _publish_health(self) -> None:
        health: dict[str, Any] = {
            "bt2": self.poller.bt2,
            "bt2_name": self.poller.bt2_name,
            "adapter": self.cfg.adapter,
            "backend": backend_name(self.backends.client),
            "connected": bool(self.link and self.link.connected),
            "rssi": self.poller.rssi,
            "poll_interval": self.cfg.poll_interval,
            "scanner": {
                "state": self.scanner.state,
                "mode": self.scanner.mode,
                "restarts": self.scanner.restarts,
                "advertisements": self._batcher.seen,
                **self.airtime.health(),
            },
            "late_replies": self.link.late_replies if self.link else 0,
            "proxy": self.proxy.health() if self.proxy is not None else None,
            "shunt": self.shunt.health() if self.shunt is not None else None,
            "outbox": self._outbox.health() if self._outbox is not None else None,
            # What `healthcheck reader` judges: can it use the adapter, and how long without a good reading.
            "adapter_problem": self._adapter_problem(),
            "bad_cycles": self.watchdog.bad_cycles,
            "watchdog_cycles": self.cfg.watchdog_cycles,
            "read_plan": self.poller.read_plan(),
            "last_good_ts": max(
                (b.last_good_ts for b in self.stats.batteries.values() if b.last_good_ts is not None),
                default=None,
            ),
            **self.stats.as_health(),
        }
        self.runtime.publish_health(health)

    def _adapter_problem(self) -> str | None:
        scan = self.scanner.problem
        if self.scanner.state == "failed" and scan is not None and scan.kind == "adapter_error":
            return f"BLE scanner did not start: {scan.message}"
        return self.adapter_problem

    def _publish_scanner_state(self, state: str, mode: str) -> None:
        body = {
            "schema": SCHEMA,
            "ts": time.time(),
            "state": state,
            "mode": mode,
            "configured_mode": self.scanner.configured_mode if hasattr(self, "scanner") else mode,
            "adapter_address": self.adapter_address,
        }
        self.runtime.mqtt.publish(self.topics.scanner_state(self.cfg.instance), dumps(body), retain=True)

    def _on_advertisement(self, device: BLEDevice, adv: AdvertisementData) -> None:
        raw = RawAdvertisement(device.address.upper(), address_type(device, adv), adv.rssi, encode_ad(adv))
        if self._batcher.add(raw):
            self._flush_adverts()
        elif self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(0.1, self._flush_adverts)

    def _flush_adverts(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        while len(self._batcher):
            batch = self._batcher.take()
            body = {
                "schema": SCHEMA,
                "ts": time.time(),
                "adapter_address": self.adapter_address,
                "advertisements": [adv.to_json() for adv in batch],
            }
            self.runtime.mqtt.publish(self.topics.advertisements(self.cfg.instance), dumps(body), qos=0)

    def _on_message(self, message: Message) -> None:
        if self.proxy is not None and self.proxy.handle(message):
            return
        command = self.topics.parse_device_command(message.topic)
        if command is not None:
            self._on_command(command, message)
            return
        if message.topic == self.runtime.health_topic:
            self._on_own_health(message)
            return
        if self._is_aggregator_state(message.topic):
            with contextlib.suppress(PayloadError):
                if loads_object(message.payload).get("state") == "online" and self._outbox is not None:
                    self._outbox.consumer_online()
            return
        if message.topic != self.topics.scanner_set(self.cfg.instance) or message.retain:
            return
        try:
            mode = loads_object(message.payload).get("mode")
            if mode not in ("active", "passive"):
                raise PayloadError(f"mode must be 'active' or 'passive', got {mode!r}")
        except PayloadError as exc:
            _LOGGER.warning("ignored scanner mode request on %s: %s", message.topic, exc)
            return
        if mode != self.scanner.mode:
            _LOGGER.info("scanner mode %s requested", mode)
            asyncio.get_running_loop().create_task(self.scanner.restart(mode))

    def _on_own_health(self, message: Message) -> None:
        """The previous run's retained health carries its read plan; after it (or our own first live
        health, when there was none) the subscription has done its job."""
        self.runtime.mqtt.unsubscribe(self.runtime.health_topic)
        if not message.retain or not message.payload:
            return
        try:
            health = loads_object(message.payload)
        except PayloadError as exc:
            _LOGGER.debug("ignored the retained reader health on %s: %s", message.topic, exc)
            return
        taken = self.poller.remember_read_plan(health.get("bt2"), health.get("read_plan"))
        if taken:
            _LOGGER.debug("read plan of the previous run taken for %d batteries", taken)

    def _is_aggregator_state(self, topic: str) -> bool:
        prefix, _, rest = topic.partition("/bridge/aggregator/")
        return prefix == self.topics.root and rest.endswith("/state") and rest.count("/") == 1

    def _on_exchange(self, exchange: Exchange) -> None:
        if self._capture is None:
            return
        request = exchange.request
        record = {
            "ts": time.time(),
            "slave": request.slave,
            "start": request.start if isinstance(request, ReadRequest) else request.register,
            "words": request.count if isinstance(request, ReadRequest) else 1,
            "request": request.encode().hex(),
            "notifications": [
                [round(at - exchange.sent_at, 4), data.hex()] for at, data in exchange.notifications
            ],
            "result": "ok" if exchange.response else exchange.error,
            "elapsed": round(exchange.elapsed, 4),
        }
        self._capture.write(dumps(record).decode() + "\n")
        self._capture.flush()


def _open_capture(path: Path) -> TextIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    _LOGGER.info("capturing every request/response to %s", path)
    return path.open("a", encoding="utf-8")


async def run(config: Config) -> int:
    """Entry point of `renogy-proxy reader`; returns the process exit code."""
    try:
        backends = resolve_backends(config)
    except ValueError as exc:
        if config.simulator.enabled:
            _LOGGER.error("cannot start the simulator: %s (settings simulator.*, RENOGY_SIM_*)", exc)
        else:
            _LOGGER.error("%s (setting reader.backend / RENOGY_BLE_BACKEND)", exc)
        return 2
    reader = Reader(config, backends)
    try:
        return await reader.run()
    finally:
        if backends.simulator is not None:
            from services.simulator import unregister_simulator  # noqa: PLC0415

            unregister_simulator(backends.simulator)
            backends.simulator.close()
