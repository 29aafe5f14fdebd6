"""Readings on their way to the broker: published in order with QoS 1, kept while the broker is away.

Every reading goes through the outbox. It is removed only once the broker acknowledged it (PUBACK), so
a reading published just as the connection dropped is sent again after the reconnect (the aggregator
recognises the copy by its boot_id and monotonic time). While the broker is unreachable the readings
pile up, bounded: the oldest are dropped first and counted. When the broker is back they are published
in the order they were taken, before any newer one, so the aggregator integrates the outage by their own
times (docs/mqtt.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from itertools import islice

from shared.mqtt import MqttClient

_LOGGER = logging.getLogger(__name__)

MAX_READINGS = 20_000  # ~16 MB of payloads at most, whatever reader.outage_buffer says
BATCH = 100  # publishes in flight at once (paho's max_inflight_messages)
ACK_TIMEOUT = 10.0  # s to wait for the broker's PUBACKs of a batch before trying again
CONSUMER_WAIT = 10.0  # s a backlog waits for the aggregator after a reconnect before going anyway


def capacity_for(outage_buffer: float, poll_interval: float, batteries: int) -> int:
    """How many readings cover `outage_buffer` seconds of polling (at least one cycle, at most MAX_READINGS)."""
    if outage_buffer <= 0:
        return batteries  # the current cycle only: nothing survives an outage
    cycles = outage_buffer / max(poll_interval, 1.0)
    return max(batteries, min(MAX_READINGS, round(cycles * batteries)))


class Outbox:
    """An ordered, bounded queue of (topic, payload) drained to the broker by one task."""

    def __init__(self, mqtt: MqttClient, capacity: int) -> None:
        self.mqtt = mqtt
        self.capacity = max(1, capacity)
        self._items: deque[tuple[str, bytes]] = deque()
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self.dropped = 0
        self.peak = 0
        self._dropping = False
        self._backlog_logged = False
        # A backlog waits, after each (re)connect, until the consumer (the aggregator) is seen online:
        # a broker that restarted without its sessions delivers QoS 1 only to subscriptions that
        # exist, so a backlog flushed before the aggregator has resubscribed would be lost to it.
        self.gated = False
        self._connected_at = time.monotonic()
        self._consumer_at: float | None = None
        mqtt.add_connect_handler(self._on_connect)

    def _on_connect(self) -> None:
        self._connected_at = time.monotonic()
        self._wake.set()

    def consumer_online(self) -> None:
        """The aggregator announced itself online (its subscriptions are in place before it does)."""
        self._consumer_at = time.monotonic()
        self._wake.set()

    def _consumer_ready(self) -> bool:
        if not self.gated:
            return True
        if self._consumer_at is not None and self._consumer_at >= self._connected_at:
            return True
        return time.monotonic() - self._connected_at >= CONSUMER_WAIT

    def __len__(self) -> int:
        return len(self._items)

    def health(self) -> dict[str, int]:
        return {
            "queued": len(self._items),
            "dropped": self.dropped,
            "peak": self.peak,
            "capacity": self.capacity,
        }

    def put(self, topic: str, payload: bytes) -> None:
        if len(self._items) >= self.capacity:
            self._items.popleft()
            self.dropped += 1
            if not self._dropping:
                self._dropping = True
                _LOGGER.warning(
                    "the broker has been unreachable for %d readings: dropping the oldest from now on "
                    "(setting reader.outage_buffer; counted in health outbox.dropped)",
                    self.capacity,
                )
        self._items.append((topic, payload))
        self._drained.clear()
        self.peak = max(self.peak, len(self._items))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="reader-outbox")
        self._wake.set()

    async def close(self, timeout: float = 2.0) -> None:
        """Give the queue a moment to drain (shutdown), then stop the task."""
        if self._items and self.mqtt.connected.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._items:
            _LOGGER.warning("stopping with %d readings not published", len(self._items))

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            backlog = len(self._items)
            if backlog > 1 and self.mqtt.connected.is_set() and not self._consumer_ready():
                # Look again when the aggregator shows up, or at the deadline at the latest.
                wait = max(0.05, CONSUMER_WAIT - (time.monotonic() - self._connected_at))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                self._wake.set()
                continue
            if backlog > BATCH and self.mqtt.connected.is_set():
                _LOGGER.info("publishing %d readings kept while the broker was unreachable", backlog)
                self._backlog_logged = True
            while self._items and self.mqtt.connected.is_set():
                if not await self._send_batch():
                    await asyncio.sleep(0.5)  # the connection went away mid-batch: wait for the reconnect
                    break
            if not self._items and self._backlog_logged:
                self._backlog_logged = False
                _LOGGER.info(
                    "readings kept during the outage are published (%d dropped as the oldest)", self.dropped
                )
            if not self._items:
                self._dropping = False
                self._drained.set()

    async def _send_batch(self) -> bool:
        """Publish the first BATCH readings and drop those the broker acknowledged; False if not all were."""
        batch = list(islice(self._items, 0, BATCH))
        infos = []
        for topic, payload in batch:
            info = self.mqtt.publish_tracked(topic, payload, qos=1, retain=True)
            if info is None:
                break
            infos.append(info)
        deadline = time.monotonic() + ACK_TIMEOUT
        while infos and not all(info.is_published() for info in infos) and time.monotonic() < deadline:
            if not self.mqtt.connected.is_set():
                break
            await asyncio.sleep(0.002)
        acked = 0
        for info in infos:
            if not info.is_published():
                break
            acked += 1
        for item in batch[:acked]:
            # One dropped as the oldest meanwhile (the queue overflowed) is not at the head any more.
            if self._items and self._items[0] is item:
                self._items.popleft()
        self.published += acked
        return acked == len(batch)
