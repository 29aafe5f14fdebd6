"""The aggregator service: a thin asyncio shell that feeds MQTT messages to the core and publishes its output.

Order of every step: core update -> persist the counters when a save is due -> publish. The state file
is written at most every aggregator.save_interval (and at once after structural changes, and on
shutdown), which spares an SD card; the retained device states are the second copy in between, and a
restart (even after kill -9) resumes at the larger of the two.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from services.aggregator.banks import layout_from_config
from services.aggregator.core import AggregatorCore, Rejected, Settings
from services.aggregator.devices import family_reading
from services.aggregator.documents import Outgoing
from services.aggregator.energy import EnergyCounter
from services.aggregator.inputs import DropLog, drop_reason, parse_reader_health
from services.aggregator.store import StateStore
from shared.config import Config, ConfigError
from shared.mqtt import Message
from shared.payloads import PayloadError, loads_object, parse_device_state, parse_reading
from shared.service import ServiceRuntime

_LOGGER = logging.getLogger(__name__)

SERVICE = "aggregator"
# Work is deadline-driven: documents are evaluated when an input changed something or when the next
# deadline falls due (a value going stale, a refresh, a save, health), not on a fixed tick. Only the
# extended profile's read_age changes continuously: it is re-evaluated every TICK_INTERVAL.
TICK_INTERVAL = 2.0
WAKE_SLACK = 0.01  # s after a staleness deadline: a value is fresh up to and including it
MIN_WAKE = 0.005  # s; the soonest a deadline wakes the service (never a busy loop)
HEALTH_INTERVAL = 30.0
RECOVERY_WAIT = 2.0
CONFLICT_LOG_INTERVAL = 600.0
FOREIGN_LOG_INTERVAL = 600.0
MAX_LOGGED = 256  # entries of each "logged lately" dict
MIN_AHEAD = 5.0  # s; readings may be this far ahead of our clock (or a poll interval, if longer)
CLOCK_STEP = 2.0  # s; this host's wall clock moving against its monotonic clock by more is a step
EXIT_OK = 0
EXIT_CONFIG = 2


class Aggregator:
    """One aggregator instance: subscriptions, recovery, persistence, periodic staleness and health."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        mono_clock: Callable[[], float] = time.monotonic,
        tick_interval: float = TICK_INTERVAL,
        health_interval: float = HEALTH_INTERVAL,
        recovery_wait: float = RECOVERY_WAIT,
    ) -> None:
        self.config = config
        self.cfg = config.aggregator
        self.clock = clock
        self.mono_clock = mono_clock
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
            max_ahead=max(config.reader.poll_interval, MIN_AHEAD),
            save_interval=self.cfg.save_interval,
            forget_after=self.cfg.forget_after,
            refresh=stale_after / 3,
            controls=config.controls,
        )
        self.core = AggregatorCore(layout_from_config(self.cfg), settings, started=clock(), mono=mono_clock())
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
        self._foreign_logged: dict[str, float] = {}
        self._republish: set[str] = set()
        self._persist_failing = False
        self._last_save: float | None = None
        self._last_health = 0.0
        self._last_eval: float | None = None  # monotonic time documents were last evaluated
        self._clock_offset = self.clock() - self.mono_clock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    # --- life cycle ------------------------------------------------------------------------------

    async def run(self) -> int:
        self._file_loaded = self.store.load(self._restore) is not None
        self.recovered_from = "file" if self._file_loaded else "retained"
        self._awaiting = set(self.core.restored_devices) if self._file_loaded else set()
        runtime, mqtt = self.runtime, self.runtime.mqtt
        runtime.install_signal_handlers()
        for reading_filter in self.topics.reading_filters:  # one per kind: an old ACL refuses only new kinds
            mqtt.subscribe(reading_filter)
        mqtt.subscribe(self.topics.device_state("+"))
        mqtt.subscribe(self.topics.device_config("+"))
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
        self._loop = asyncio.get_running_loop()
        self._schedule()
        try:
            await runtime.stop_event.wait()
        finally:
            self._loop = None
            for handle in (self._settle_handle, self._timer):
                if handle is not None:
                    handle.cancel()
            self._publish_health(self.clock())
            await runtime.stop()
            if self.core.dirty:  # after the broker connection is closed: nothing can change any more
                self._persist(self.clock(), self.mono_clock())
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
        now, mono = self.clock(), self.mono_clock()
        self._watch_clock(now, mono)
        self._drops.flush(mono)
        republish = bool(self._republish)
        for device_id in self._republish:
            self.core.publisher.forget(device_id)
        self._republish.clear()
        if self.settled and (republish or self._documents_due(mono)):
            self._commit(now)
        elif self.core.save_due(mono, self._last_save):  # a save or health deadline: no document changed
            self._persist(now, mono)
        if mono - self._last_health >= self.health_interval:
            self._publish_health(now)
        self._schedule()

    def _documents_due(self, mono: float) -> bool:
        """Whether a document deadline passed since the last evaluation (staleness, refresh, read_age)."""
        last = self._last_eval
        if last is None:
            return True
        if self.cfg.profile == "extended" and mono - last >= self.tick_interval:
            return True
        change = self.core.next_change(last)
        return change is not None and change <= mono

    def _next_wake(self, mono: float) -> float:
        """The monotonic time of the next deadline: health, a save, and once settled whatever makes a
        document differ without input (core.next_change; read_age in the extended profile)."""
        due = [self._last_health + self.health_interval]
        if self.settled:  # _tick commits (and so saves) only then
            save = self.core.save_at(self._last_save)
            if save is not None:
                due.append(save)
            change = self.core.next_change(mono)
            if change is not None:
                due.append(change + WAKE_SLACK)
            read = any(battery.last is not None for battery in self.core.batteries.values())
            if self.cfg.profile == "extended" and self._last_eval is not None and read:
                due.append(self._last_eval + self.tick_interval)
        return min(due)

    def _schedule(self, soonest: float = MIN_WAKE) -> None:
        """(Re)arm the one timer for the next deadline; a no-op outside run() (tests drive _tick)."""
        if self._loop is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        mono = self.mono_clock()
        delay = soonest if self._republish else max(soonest, self._next_wake(mono) - mono)
        self._timer = self._loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self._tick()
        except Exception:  # the periodic work must go on: retried at the tick interval
            _LOGGER.exception("unexpected error in the aggregator's periodic work")
            self._schedule(soonest=self.tick_interval)

    def _watch_clock(self, now: float, mono: float) -> None:
        """Log a step of this host's wall clock once, with its size (counting goes on regardless)."""
        offset = now - mono
        step = offset - self._clock_offset
        self._clock_offset = offset
        if abs(step) > CLOCK_STEP:
            self.core.stats.clock["host_steps"] += 1
            _LOGGER.warning(
                "this host's clock stepped by %+.1f s (NTP, fake-hwclock or a manual change); energy is "
                "counted on monotonic time, values are judged fresh by their age",
                step,
            )

    # --- inputs ----------------------------------------------------------------------------------

    def _on_message(self, message: Message) -> None:
        try:
            self._dispatch(message)
        except Exception:  # one bad message must never stop the service
            _LOGGER.exception("unexpected error handling a message on %s", message.topic)

    def _dispatch(self, message: Message) -> None:
        # amqtt also sends retained messages of other clients' filters, so match every topic here.
        now = self.clock()
        # Every input, not only the (now sparse) timer: a step and its correction between two timer
        # wakes would otherwise go unlogged.
        self._watch_clock(now, self.mono_clock())
        identity = self.topics.parse_reading(message.topic)
        if identity is not None:
            self._reading(message, identity[0], identity[1], now)
            return
        handled = family_reading(
            self.core, self.topics, message, self._drops, now=now, mono=self.mono_clock()
        )
        if handled is not None:  # controller, dcc, inverter, shunt (services/aggregator/devices.py)
            if handled:
                self._commit(now)
            return
        device = self.topics.parse_device(message.topic)
        if device is not None:
            if device[1] == "state" and message.retain and message.payload:
                self._retained_state(device[0], message, now)
            if not message.retain:  # retained copies at (re)subscribe are older ones of ours
                self._check_ours(device[0], device[1], message.payload)
            return
        bridge = self.topics.parse_bridge(message.topic)
        if self.cfg.profile == "extended" and bridge is not None and bridge[::2] == ("reader", "health"):
            self._reader_health(message, now)

    def _check_ours(self, device_id: str, kind: str, payload: bytes) -> None:
        """A config or state of one of our devices that we did not publish (emptied, replaced): publish
        ours again at the next tick, so nobody else's document stays served."""
        publisher = self.core.publisher
        if not self.settled or not publisher.owns(device_id) or publisher.is_ours(device_id, payload):
            return
        if kind == "state" and not payload:
            return  # an empty state changes nothing the gateway serves
        self._republish.add(device_id)
        self._schedule()  # at once: nobody else's document stays served
        mono = self.mono_clock()
        last = self._foreign_logged.get(device_id)
        if last is None or mono - last >= FOREIGN_LOG_INTERVAL:
            if len(self._foreign_logged) >= MAX_LOGGED:
                self._foreign_logged.clear()
            self._foreign_logged[device_id] = mono
            _LOGGER.warning(
                "someone else published %s %s %s; publishing ours again (restrict renogy/device/# to the "
                "aggregator with broker ACLs, docs/deploy.md)",
                "an empty" if not payload else "a different",
                kind,
                device_id,
            )

    def _drop(self, message: Message, reason: str, error: Exception, now: float) -> None:
        self.core.drop(reason)
        self._drops.dropped(message.topic, str(error), self.mono_clock())

    def _reading(self, message: Message, bt2: str, slave_id: int, now: float) -> None:
        if not message.payload:
            return  # a retained reading was cleared
        try:
            reading = parse_reading(message.payload, bt2=bt2, slave_id=slave_id)
        except PayloadError as exc:
            self._drop(message, drop_reason(exc), exc, now)
            return
        mono = self.mono_clock()
        try:
            self.core.accept(reading, now, mono)
        except Rejected as exc:
            if exc.reason == "slave_conflict":
                self._log_conflict(bt2, str(exc), mono)
            else:
                self._drops.dropped(message.topic, str(exc), mono)
            return
        self._commit(now)

    def _log_conflict(self, bt2: str, text: str, now: float) -> None:
        key = (text.partition(":")[0], bt2)
        if now - self._conflicts_logged.get(key, -CONFLICT_LOG_INTERVAL) >= CONFLICT_LOG_INTERVAL:
            if len(self._conflicts_logged) >= MAX_LOGGED:  # bounded: drop what is over, or everything
                logged = self._conflicts_logged
                self._conflicts_logged = {k: t for k, t in logged.items() if now - t < CONFLICT_LOG_INTERVAL}
                if len(self._conflicts_logged) >= MAX_LOGGED:
                    self._conflicts_logged.clear()
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
        if self.core.recover(device_id, state, _counter_copy(message.payload), now):
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
            self.core.link(*parsed, at=self.mono_clock())
            self._commit(now)

    # --- outputs ---------------------------------------------------------------------------------

    def _commit(self, now: float) -> None:
        """Persist when a save is due, then publish what differs (nothing until recovery is done)."""
        mono = self.mono_clock()
        outgoing: list[Outgoing] = []
        if self.settled:
            outgoing = self.core.pending(now, mono)
            self._last_eval = mono
        if self.core.save_due(mono, self._last_save):
            self._persist(now, mono)
        mqtt = self.runtime.mqtt
        for item in outgoing:
            topic = (
                self.topics.device_config(item.device_id)
                if item.kind == "config"
                else (self.topics.device_state(item.device_id))
            )
            if item.payload:
                mqtt.publish(topic, item.payload, retain=True)
            else:
                mqtt.clear_retained(topic)
        self._schedule()

    def _persist(self, now: float, mono: float) -> None:
        self._last_save = mono
        try:
            self.store.save(self.core.snapshot(now))
        except OSError as exc:
            level = logging.DEBUG if self._persist_failing else logging.ERROR
            _LOGGER.log(
                level,
                "cannot save energy counters to %s: %s (retrying every %.0f s; until then the broker's "
                "retained device states are the only copy)",
                self.store.path,
                exc,
                self.core.settings.save_interval,
            )
            self._persist_failing = True
            self.core.urgent = False  # retried at the next interval, not on every reading
            return
        if self._persist_failing:
            _LOGGER.info("energy counters saved to %s again", self.store.path)
        self._persist_failing = False
        self.core.mark_saved()

    def _publish_health(self, now: float) -> None:
        self._last_health = self.mono_clock()
        self.runtime.publish_health(
            {
                **self.core.health(now, self.mono_clock()),
                "settled": self.settled,
                "recovered_from": self.recovered_from,
                "state_file": str(self.store.path),
                "persist_count": self.store.saves,
                "persist_errors": self.store.errors,
                "persist_interval_s": self.core.settings.save_interval,
                "state_file_problem": self.store.problem,
            }
        )


def _counter_copy(payload: bytes) -> EnergyCounter | None:
    """The exact counter a battery's retained state carries (None in older documents or when malformed)."""
    try:
        raw = loads_object(payload).get("counter")
        return None if raw is None else EnergyCounter.from_json(raw)
    except ValueError:  # PayloadError too
        return None


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
