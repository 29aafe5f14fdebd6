"""The BLE reader: owns the adapter, holds one BT-2 connection, reads every battery each cycle.

A thin asyncio shell around the pure parts (shared.modbus, shared.registers, readings, stats,
recovery). It publishes raw per-battery readings and, for the Bluetooth proxy, batches of the
advertisements its scanner sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner

from services.reader import adapter as adapter_ops
from services.reader.advertisements import AdvertisementBatcher, RawAdvertisement, address_type, encode_ad
from services.reader.airtime import Airtime
from services.reader.bluez_errors import diagnose
from services.reader.link import Bt2Link, Exchange, LinkError, backend_name
from services.reader.outbox import Outbox, capacity_for
from services.reader.proxy_connections import ProxyConnections
from services.reader.readings import BatteryCycle, Identity
from services.reader.recovery import Action, Backoff, Watchdog
from services.reader.scanner import Scanner
from services.reader.stats import ReaderStats
from shared import registers
from shared.config import Config
from shared.modbus import ReadRequest, ReadResponse
from shared.mqtt import Message
from shared.payloads import PayloadError, dumps, loads_object
from shared.service import RepeatFilter, ServiceRuntime
from shared.topics import SCHEMA, bt2_id

_LOGGER = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_WATCHDOG = 3
EXIT_ADAPTER = 4
MAX_ADAPTER_ERRORS = 5
MAX_PROBE_SPACING = 32
BLOCKS_EVERY_CYCLE = (registers.BLOCK_STATUS, registers.BLOCK_CELLS)


@dataclass(frozen=True, slots=True)
class Backends:
    client: type[BaseBleakClient] | None
    scanner: type[BaseBleakScanner] | None
    adapter_address: str | None = None
    simulator: Any = None
    # The backend of proxied GATT connections (active Bluetooth proxy) when it is not ``client``.
    proxy_client: type[BaseBleakClient] | None = None


def load_class(spec: str) -> type[Any]:
    """Import 'module:Class'."""
    module_name, _, class_name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module_name), class_name)  # type: ignore[no-any-return]
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load BLE backend {spec!r}: {exc}") from exc


def resolve_backends(config: Config) -> Backends:
    """The bleak backends to use: the simulator, a custom module:Class, or BlueZ (None)."""
    if config.simulator.enabled:
        from services.reader.simulate import simulator_backends  # noqa: PLC0415 - keeps the simulator optional

        return simulator_backends(config)
    if config.reader.backend:
        client = load_class(config.reader.backend)
        scanner = getattr(client, "scanner_backend", None)
        return Backends(client, scanner)
    return Backends(None, None)


class Reader:
    """State and loops of one reader instance."""

    def __init__(self, config: Config, backends: Backends) -> None:
        self.config = config
        self.cfg = config.reader
        self.backends = backends
        self.runtime = ServiceRuntime(config, "reader", self.cfg.instance, on_message=self._on_message)
        self.topics = self.runtime.topics
        self.stats = ReaderStats()
        self.watchdog = Watchdog(self.cfg.watchdog_cycles, self.cfg.adapter_reset and backends.client is None)
        self.backoff = Backoff(initial=1.0, maximum=max(5.0, min(60.0, self.cfg.poll_interval or 5.0)))
        self.identities: dict[int, Identity] = {}
        self.info_due: dict[int, float] = {}
        self._failed_cycles: dict[int, int] = {}
        self._skip_until: dict[int, int] = {}
        # Set when a read ended because the BT-2 link could not be made, not because the battery was silent.
        self._link_unavailable = False
        self.last_cycle_attempted = False
        self.link: Bt2Link | None = None
        self.bt2: str | None = None
        self.bt2_name: str | None = None
        self.family = registers.Family.BT2
        self.rssi: int | None = None
        self.adapter_address = backends.adapter_address
        self.adapter_errors = 0
        # The last adapter-level failure of a connect (no D-Bus socket, adapter missing); None once it works.
        self.adapter_problem: str | None = None
        self.exit_code = EXIT_OK
        self._log = RepeatFilter(_LOGGER)
        self._batcher = AdvertisementBatcher()
        self._flush_handle: asyncio.TimerHandle | None = None
        self._capture: TextIO | None = None
        self._outbox: Outbox | None = None  # created with the first reading (publishing, below)
        self._cycle_floor = 0.0
        self._floor_known = True
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
        if self.proxy is not None:
            for topic_filter, qos in self.proxy.filters:
                self.runtime.mqtt.subscribe(topic_filter, qos)
            self.proxy.start()
        await self.runtime.start()
        if self.cfg.capture_file is not None:
            self._capture = _open_capture(self.cfg.capture_file)
        if self.adapter_address is None and self.backends.client is None:
            self.adapter_address = await adapter_ops.adapter_address(self.cfg.adapter)
        await self.scanner.start()
        self.airtime.start(self.runtime.stop_event)
        # At once, so `healthcheck reader` and `status` see an adapter that cannot work before a cycle ends.
        self._publish_health()

    async def shutdown(self) -> None:
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
        loop = asyncio.get_running_loop()
        stop = self.runtime.stop_event
        next_start = loop.time()
        while not stop.is_set():
            good = await self.cycle()
            # A cycle in which every battery was skipped (backed off) says nothing about the link.
            action = self.watchdog.cycle_done(good) if self.last_cycle_attempted else Action.NONE
            if action is not Action.NONE and not await self._escalate(action):
                return
            if not self.cfg.keep_connected and self.link is not None:
                await self.link.disconnect()
            next_start = (
                max(next_start + self.cfg.poll_interval, loop.time())
                if self.cfg.poll_interval
                else loop.time()
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_start - loop.time()))

    async def _escalate(self, action: Action) -> bool:
        """Apply a watchdog action; False when the process should exit."""
        bad = self.watchdog.bad_cycles
        if action is Action.RECONNECT:
            _LOGGER.warning("no good reading for %d cycles; reconnecting to the BT-2", bad)
            if self.link is not None:
                await self.link.disconnect()
        elif action is Action.RESET_ADAPTER:
            _LOGGER.warning("no good reading for %d cycles; power-cycling adapter %s", bad, self.cfg.adapter)
            if self.link is not None:
                await self.link.disconnect()
            await adapter_ops.power_cycle(self.cfg.adapter)
            await self.scanner.restart()
        elif action is Action.EXIT:
            _LOGGER.error(
                "no good reading for %d cycles despite reconnecting and resetting the adapter; "
                "exiting so the supervisor restarts the reader",
                bad,
            )
            self.exit_code = EXIT_WATCHDOG
            return False
        return True

    # --- one cycle ---------------------------------------------------------------------------------

    async def cycle(self) -> int:
        """Read every battery once (the scanner paused meanwhile with reader.pause_during_reads)."""
        async with self.airtime.reading():
            return await self._read_cycle()

    async def _read_cycle(self) -> int:
        """Read every battery once; returns the number of batteries with at least one good block."""
        started = time.monotonic()
        self._cycle_floor, self._floor_known = 0.0, True
        good = attempted = 0
        linked = await self._ensure_link()
        if linked:
            for slave in self.cfg.batteries:
                if self.runtime.stop_event.is_set():
                    break
                if self.stats.cycles < self._skip_until.get(slave, 0):
                    continue
                attempted += 1
                self._link_unavailable = False
                reading = await self._read_battery(slave)
                if reading.any_good:
                    good += 1
                    self._failed_cycles.pop(slave, None)
                    self._publish_reading(reading)
                elif not self._link_unavailable:
                    # Only a battery that was asked and did not answer; a link that could not be made says
                    # nothing about it (backing it off then delayed recovery by a cycle).
                    self._back_off_battery(slave)
        self.last_cycle_attempted = bool(attempted) or not linked
        self.stats.cycles += 1
        self.stats.last_cycle_s = time.monotonic() - started
        self.stats.last_cycle_floor_s = self._cycle_floor if self._floor_known and self._cycle_floor else None
        self._publish_health()
        return good

    def _back_off_battery(self, slave: int) -> None:
        """Probe a battery that stopped answering less and less often (1, 2, 4 ... 32 cycles apart)."""
        failed = self._failed_cycles[slave] = self._failed_cycles.get(slave, 0) + 1
        skip = min(2 ** (failed - 1), MAX_PROBE_SPACING) - 1
        self._skip_until[slave] = self.stats.cycles + 1 + skip
        if skip and (failed == 2 or skip == MAX_PROBE_SPACING - 1):
            _LOGGER.warning(
                "battery %d has not answered for %d cycles; probing it every %d cycles (is slave id %d on this "
                "BT-2's bus? setting reader.batteries)",
                slave,
                failed,
                skip + 1,
                slave,
            )

    def _blocks_for(self, slave: int) -> list[tuple[int, int]]:
        blocks = list(BLOCKS_EVERY_CYCLE)
        if time.monotonic() >= self.info_due.get(slave, 0.0):
            blocks.extend(registers.BLOCKS_INFO)
        return blocks

    async def _read_battery(self, slave: int) -> BatteryCycle:
        assert self.bt2 is not None
        reading = BatteryCycle(self.bt2, slave)
        for start, words in self._blocks_for(slave):
            result = await self._read_block(slave, start, words)
            if result is None:
                reading.fail_block(start)
                if start == registers.BLOCK_STATUS[0]:
                    break  # silent or unreachable: do not spend the cycle's timeouts on its other blocks
                continue
            response, values, received_at = result
            reading.add_block(start, values, response.frame, received_at)
            if start == registers.BLOCK_INFO[0]:
                self.identities.setdefault(slave, Identity()).update(values)
                self.info_due[slave] = time.monotonic() + self.cfg.info_interval
        return reading

    async def _read_block(
        self, slave: int, start: int, words: int
    ) -> tuple[ReadResponse, dict[str, registers.Value], float] | None:
        request = ReadRequest(slave, start, words)
        attempts = 1 + self.cfg.retries
        for attempt in range(1, attempts + 1):
            if (self.link is None or not self.link.connected) and not await self._ensure_link():
                self._link_unavailable = True
                return None
            assert self.link is not None
            try:
                response = await self.link.request(request)
                received_at = time.time()
                values, dropped = registers.decode_screened(start, response.registers, family=self._family())
            except LinkError as exc:
                action = "; reconnecting" if exc.reconnect else ""
                self._request_failed(
                    slave,
                    exc.kind,
                    f"battery {slave}: read {start}x{words} failed ({exc.kind}: {exc}){action}",
                    attempt,
                    attempts,
                )
                if exc.reconnect:
                    await self.link.disconnect()
                continue
            except registers.BlockError as exc:
                self._request_failed(
                    slave,
                    "implausible",
                    f"battery {slave}: read {start}x{words} decoded to an "
                    f"implausible value ({exc}); not published",
                    attempt,
                    attempts,
                )
                continue
            self.stats.request_ok(slave, received_at)
            self._log.success(f"{slave}")
            self._log_dropped(slave, start, words, dropped)
            self._add_floor(words)
            return response, values, received_at
        return None

    def _log_dropped(self, slave: int, start: int, words: int, dropped: list[str]) -> None:
        """One sensor outside its range is published as null, the rest of the block as read (once per streak)."""
        key = f"{slave}:sensors:{start}"
        if not dropped:
            self._log.success(key)
            return
        self._log.failure(
            key,
            "battery %s: read %sx%s: %s; published as null, the other values as read",
            slave,
            start,
            words,
            "; ".join(dropped),
        )

    def _request_failed(self, slave: int, kind: str, message: str, attempt: int, attempts: int) -> None:
        self.stats.request_failed(slave, kind)
        suffix = (
            f"; retrying ({attempt + 1} of {attempts})" if attempt < attempts else "; giving up this cycle"
        )
        self._log.failure(f"{slave}", "%s%s", message, suffix)

    def _add_floor(self, words: int) -> None:
        floor = self.link.read_floor(words) if self.link is not None else None
        if floor is None:
            self._floor_known = False
        else:
            self._cycle_floor += floor

    def _family(self) -> registers.Family:
        scale = self.cfg.current_scale
        if scale == "0.01":  # an RNGPRO pack is 0.01 A too, and keeps its family's alarm rule
            return registers.Family.RNGPRO if self.family is registers.Family.RNGPRO else registers.Family.BT2
        if scale == "0.1":
            return registers.Family.PRO
        return self.family

    # --- connection --------------------------------------------------------------------------------

    async def _ensure_link(self) -> bool:
        if self.link is not None and self.link.connected:
            return True
        delay = self.backoff.next_delay()
        if delay:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.runtime.stop_event.wait(), delay)
            if self.runtime.stop_event.is_set():
                return False
        try:
            device = await self._find_device()
            if device is None:
                return False
            if self.link is not None:
                await self.link.disconnect()
            if self.proxy is not None:
                await self.proxy.yield_adapter()  # a pending proxied connect must not hold up the BT-2's
            self.link = Bt2Link(
                device,
                backend=self.backends.client,
                connect_timeout=self.cfg.connect_timeout,
                request_timeout=self.cfg.request_timeout,
                on_exchange=self._on_exchange if self._capture is not None else None,
            )
            await self.link.connect()
        except LinkError as exc:
            self.stats.request_failed(None, exc.kind)
            self._log.failure(
                "connect",
                "cannot connect to the BT-2: %s (next attempt in %.0f s at most)",
                exc,
                self.backoff.maximum,
            )
            return False
        except Exception as exc:
            diagnosis = diagnose(exc, self.cfg.adapter)
            self.stats.request_failed(None, diagnosis.kind)
            if diagnosis.kind == "adapter_error":
                self.adapter_errors += 1
                self.adapter_problem = diagnosis.message
                _LOGGER.error("Bluetooth adapter problem: %s", diagnosis.message)
                if diagnosis.fatal or self.adapter_errors >= MAX_ADAPTER_ERRORS:
                    _LOGGER.error(
                        "exiting so the supervisor restarts the reader with a fresh D-Bus connection"
                    )
                    self.exit_code = EXIT_ADAPTER
                    self.runtime.request_stop()
            else:
                self._log.failure("connect", "cannot connect to the BT-2: %s", diagnosis.message)
            return False
        self.adapter_errors = 0
        self.adapter_problem = None
        self.backoff.reset()
        self._log.success("connect")
        return True

    async def _find_device(self) -> BLEDevice | str | None:
        cfg = self.cfg
        problem = self.scanner.problem
        if not cfg.bt2_address and self.scanner.state == "failed" and problem is not None:
            # Waiting for an advertisement would only end in blaming the BT-2 for what the adapter did.
            self.stats.request_failed(None, problem.kind)
            self._log.failure(
                "scan",
                "cannot look for the BT-2: the BLE scanner did not start (%s); set reader.bt2_address "
                "to connect without scanning",
                problem.message,
            )
            return None
        sighting = await self.scanner.find_bt2(
            address=cfg.bt2_address,
            name=cfg.bt2_name,
            timeout=cfg.scan_timeout if not cfg.bt2_address else 0.0,
        )
        if sighting is not None:
            self.rssi = sighting.rssi
            self.bt2_name = sighting.name
            self.family = sighting.family
            self._set_bt2(sighting.device.address)
            return sighting.device
        if cfg.bt2_address:
            # BlueZ resolves a known address itself; a custom backend may do the same.
            self._set_bt2(cfg.bt2_address)
            return cfg.bt2_address
        self.stats.request_failed(None, "connect_failed")
        self._log.failure(
            "scan",
            "no BT-2 found in %.0f s of scanning (looking for %s): is it powered, in range "
            "and not held by the Renogy app?",
            cfg.scan_timeout,
            cfg.bt2_name or "BT-TH-*",
        )
        return None

    def _set_bt2(self, address: str) -> None:
        new_id = bt2_id(address)
        if self.bt2 is not None and new_id != self.bt2:
            _LOGGER.warning("now reading BT-2 %s (was %s)", address, self.bt2)
        self.bt2 = new_id

    # --- publishing ----------------------------------------------------------------------------------

    def _publish_reading(self, reading: BatteryCycle) -> None:
        """Hand a reading to the outbox: published in order (QoS 1, retained), kept while the broker is away."""
        identity = self.identities.get(reading.slave_id, Identity())
        payload = reading.payload(identity, self.runtime.boot_id)
        if self._outbox is None:
            capacity = capacity_for(self.cfg.outage_buffer, self.cfg.poll_interval, len(self.cfg.batteries))
            self._outbox = Outbox(self.runtime.mqtt, capacity)
            self._outbox.gated = True  # a backlog waits for the aggregator after a reconnect
        self._outbox.put(self.topics.reading(reading.bt2, reading.slave_id), dumps(payload))
        self.stats.readings_published += 1

    def _publish_health(self) -> None:
        health: dict[str, Any] = {
            "bt2": self.bt2,
            "bt2_name": self.bt2_name,
            "adapter": self.cfg.adapter,
            "backend": backend_name(self.backends.client),
            "connected": bool(self.link and self.link.connected),
            "rssi": self.rssi,
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
            "outbox": self._outbox.health() if self._outbox is not None else None,
            # What `healthcheck reader` judges: can it use the adapter, and how long without a good reading.
            "adapter_problem": self._adapter_problem(),
            "bad_cycles": self.watchdog.bad_cycles,
            "watchdog_cycles": self.cfg.watchdog_cycles,
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

    def _is_aggregator_state(self, topic: str) -> bool:
        prefix, _, rest = topic.partition("/bridge/aggregator/")
        return prefix == self.topics.root and rest.endswith("/state") and rest.count("/") == 1

    def _on_exchange(self, exchange: Exchange) -> None:
        if self._capture is None:
            return
        record = {
            "ts": time.time(),
            "slave": exchange.request.slave,
            "start": exchange.request.start,
            "words": exchange.request.count,
            "request": exchange.request.encode().hex(),
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
