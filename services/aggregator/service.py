"""The aggregator service: a thin asyncio shell that feeds MQTT messages to the core and publishes its output.

Order of every step: core update -> persist the counters (atomic) -> publish. So a published counter
is always on disk, and a restart (even after kill -9) resumes at or above it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from services.aggregator.banks import layout_from_config
from services.aggregator.core import AggregatorCore, Rejected, Settings
from services.aggregator.inputs import DropLog, drop_reason, parse_reader_health
from services.aggregator.store import StateStore
from shared.config import Config, ConfigError
from shared.mqtt import Message
from shared.payloads import PayloadError, parse_device_state, parse_reading
from shared.service import ServiceRuntime

_LOGGER = logging.getLogger(__name__)

SERVICE = "aggregator"
TICK_INTERVAL = 2.0
HEALTH_INTERVAL = 30.0
RECOVERY_WAIT = 2.0
CONFLICT_LOG_INTERVAL = 600.0
EXIT_OK = 0
EXIT_CONFIG = 2


class Aggregator:
    """One aggregator instance: subscriptions, recovery, persistence, periodic staleness and health."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        tick_interval: float = TICK_INTERVAL,
        health_interval: float = HEALTH_INTERVAL,
        recovery_wait: float = RECOVERY_WAIT,
    ) -> None:
        self.config = config
        self.cfg = config.aggregator
        self.clock = clock
        self.tick_interval = tick_interval
        self.health_interval = health_interval
        self.recovery_wait = recovery_wait
        stale_after = config.aggregator_stale_after
        settings = Settings(
            profile=self.cfg.profile,
            max_gap=config.aggregator_max_gap,
            stale_after=stale_after,
            # alarm and status words come with the 5100 and 5104 blocks, read every reader.info_interval only
            info_stale_after=max(stale_after, 3 * config.reader.info_interval),
        )
        self.core = AggregatorCore(layout_from_config(self.cfg), settings, started=clock())
        self.store = StateStore(config.state_dir / f"aggregator-{self.cfg.instance}.json")
        self.runtime = ServiceRuntime(config, SERVICE, self.cfg.instance, on_message=self._on_message)
        self.topics = self.runtime.topics
        self.settled = False
        self.recovered_from = "none"
        self._file_loaded = False
        self._awaiting: set[str] = set()
        self._settle_handle: asyncio.TimerHandle | None = None
        self._drops = DropLog(_LOGGER)
        self._conflicts_logged: dict[tuple[str, str], float] = {}
        self._persist_failing = False
        self._last_health = 0.0

    # --- life cycle ------------------------------------------------------------------------------

    async def run(self) -> int:
        self._file_loaded = self.store.load(self._restore) is not None
        self.recovered_from = "file" if self._file_loaded else "retained"
        self._awaiting = set(self.core.restored_devices) if self._file_loaded else set()
        runtime, mqtt = self.runtime, self.runtime.mqtt
        runtime.install_signal_handlers()
        mqtt.subscribe(self.topics.reading_filter)
        mqtt.subscribe(self.topics.device_state("+"))
        if self.cfg.profile == "extended":
            mqtt.subscribe(self.topics.bridge_health("reader", "+"))
        mqtt.add_connect_handler(self._on_connect)
        await runtime.start()
        _LOGGER.info(
            "aggregator %s started (profile %s, max_gap %.0f s, stale_after %.0f s, state %s)",
            self.cfg.instance,
            self.cfg.profile,
            self.core.settings.max_gap,
            self.core.settings.stale_after,
            self.store.path,
        )
        try:
            while not runtime.stop_event.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(runtime.stop_event.wait(), self.tick_interval)
                self._tick()
        finally:
            if self._settle_handle is not None:
                self._settle_handle.cancel()
            if self.core.dirty:
                self._persist(self.clock())
            self._publish_health(self.clock())
            await runtime.stop()
        return EXIT_OK

    def _restore(self, document: dict[str, Any]) -> bool:
        self.core.restore(document)
        _LOGGER.info("restored %d energy counters from %s", len(self.core.restored_devices), self.store.path)
        return True

    def _on_connect(self) -> None:
        if self.settled or self._settle_handle is not None:
            return
        # Retained device states may hold newer counters than the file (or the file is gone): give them
        # time to arrive before publishing, so nothing published ever goes below what HA has seen.
        self._settle_handle = asyncio.get_running_loop().call_later(self.recovery_wait, self._settle)

    def _settle(self) -> None:
        if self.settled:
            return
        self.settled = True
        if self._settle_handle is not None:
            self._settle_handle.cancel()
        _LOGGER.info(
            "recovery done (%d counters raised from retained states); publishing", self.core.stats.recovered
        )
        now = self.clock()
        self._commit(now)
        self._publish_health(now)

    def _tick(self) -> None:
        now = self.clock()
        self._drops.flush(now)
        if self.settled:
            self._commit(now)
        if now - self._last_health >= self.health_interval:
            self._publish_health(now)

    # --- inputs ----------------------------------------------------------------------------------

    def _on_message(self, message: Message) -> None:
        try:
            self._dispatch(message)
        except Exception:  # one bad message must never stop the service
            _LOGGER.exception("unexpected error handling a message on %s", message.topic)

    def _dispatch(self, message: Message) -> None:
        # amqtt also sends retained messages of other clients' filters, so match every topic here.
        now = self.clock()
        identity = self.topics.parse_reading(message.topic)
        if identity is not None:
            self._reading(message, identity[0], identity[1], now)
            return
        device = self.topics.parse_device(message.topic)
        if device is not None:
            if device[1] == "state" and message.retain and message.payload:
                self._retained_state(device[0], message, now)
            return
        bridge = self.topics.parse_bridge(message.topic)
        if self.cfg.profile == "extended" and bridge is not None and bridge[::2] == ("reader", "health"):
            self._reader_health(message, now)

    def _drop(self, message: Message, reason: str, error: Exception, now: float) -> None:
        self.core.drop(reason)
        self._drops.dropped(message.topic, str(error), now)

    def _reading(self, message: Message, bt2: str, slave_id: int, now: float) -> None:
        if not message.payload:
            return  # a retained reading was cleared
        try:
            reading = parse_reading(message.payload, bt2=bt2, slave_id=slave_id)
        except PayloadError as exc:
            self._drop(message, drop_reason(exc), exc, now)
            return
        try:
            self.core.accept(reading, now)
        except Rejected as exc:
            if exc.reason == "slave_conflict":
                self._log_conflict(bt2, str(exc), now)
            else:
                self._drops.dropped(message.topic, str(exc), now)
            return
        self._commit(now)

    def _log_conflict(self, bt2: str, text: str, now: float) -> None:
        key = (text.partition(":")[0], bt2)
        if now - self._conflicts_logged.get(key, -CONFLICT_LOG_INTERVAL) >= CONFLICT_LOG_INTERVAL:
            self._conflicts_logged[key] = now
            _LOGGER.error("%s", text)
        else:
            _LOGGER.debug("%s", text)

    def _retained_state(self, device_id: str, message: Message, now: float) -> None:
        try:
            state = parse_device_state(message.payload)
        except PayloadError as exc:
            self._drop(message, "device_state", exc, now)
            return
        if self.core.recover(device_id, state):
            self._commit(now)
        self._awaiting.discard(device_id)
        if self._file_loaded and self.core.restored_devices and not self._awaiting and not self.settled:
            self._settle()

    def _reader_health(self, message: Message, now: float) -> None:
        if not message.payload:
            return
        try:
            parsed = parse_reader_health(message.payload)
        except PayloadError as exc:
            self._drop(message, "reader_health", exc, now)
            return
        if parsed is not None:
            self.core.link(*parsed)
            self._commit(now)

    # --- outputs ---------------------------------------------------------------------------------

    def _commit(self, now: float) -> None:
        """Persist what changed, then publish what differs (nothing until recovery is done)."""
        outgoing = self.core.pending(now) if self.settled else []
        if self.core.dirty:
            self._persist(now)
        mqtt = self.runtime.mqtt
        for item in outgoing:
            topic = (
                self.topics.device_config(item.device_id)
                if item.kind == "config"
                else (self.topics.device_state(item.device_id))
            )
            mqtt.publish(topic, item.payload, retain=True)

    def _persist(self, now: float) -> None:
        try:
            self.store.save(self.core.snapshot(now))
        except OSError as exc:
            level = logging.DEBUG if self._persist_failing else logging.ERROR
            _LOGGER.log(
                level,
                "cannot save energy counters to %s: %s (retrying on the next update)",
                self.store.path,
                exc,
            )
            self._persist_failing = True
            return
        if self._persist_failing:
            _LOGGER.info("energy counters saved to %s again", self.store.path)
        self._persist_failing = False
        self.core.dirty = False

    def _publish_health(self, now: float) -> None:
        self._last_health = now
        self.runtime.publish_health(
            {
                **self.core.health(now),
                "settled": self.settled,
                "recovered_from": self.recovered_from,
                "state_file": str(self.store.path),
                "persist_count": self.store.saves,
                "persist_errors": self.store.errors,
            }
        )


async def run(
    config: Config,
    *,
    clock: Callable[[], float] = time.time,
    tick_interval: float = TICK_INTERVAL,
    health_interval: float = HEALTH_INTERVAL,
    recovery_wait: float = RECOVERY_WAIT,
) -> int:
    """Run the aggregator until SIGINT/SIGTERM (or ServiceRuntime.stop_event); returns the exit code."""
    try:
        service = Aggregator(
            config,
            clock=clock,
            tick_interval=tick_interval,
            health_interval=health_interval,
            recovery_wait=recovery_wait,
        )
    except ConfigError as exc:
        _LOGGER.error("%s", exc)
        return EXIT_CONFIG
    return await service.run()
