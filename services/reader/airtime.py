"""Airtime: let Wi-Fi and the BT-2's link have the radio the scanner would otherwise fill.

On a Raspberry Pi Zero 2 W or Pi 3 Wi-Fi and Bluetooth share one radio, and an active scan that never
stops takes a large share of it. Two opt-in measures (both off by default):

* ``reader.scan_duty = [active, idle]``: scan for ``active`` seconds, rest for ``idle`` seconds, repeat;
* ``reader.pause_during_reads``: stop the scanner while a cycle reads the batteries, start it after.

Both act through :meth:`Scanner.hold` / :meth:`Scanner.release`, so the published scanner state follows
(``stopping`` -> ``idle`` -> ``starting`` -> ``running``) and Home Assistant's bleak-esphome knows the
scanner is not scanning. A pause has a deadline: a cycle that hangs past it gets the scanner back all the
same (the old system's scanner could stay paused for good when its pause and resume calls got out of
step), and every cycle's pause is its own hold, so a late resume of one cycle never ends the next one's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from services.reader.scanner import Scanner
from shared.config import ReaderConfig
from shared.service import RepeatFilter

_LOGGER = logging.getLogger(__name__)

DUTY = "duty"
BLOCKS_PER_BATTERY = 4  # 5042, 5000 and, every reader.info_interval, 5100 and 5104
MIN_PAUSE = 1.0
MAX_PAUSE = 60.0


def pause_limit(cfg: ReaderConfig) -> float:
    """Longest pause of one cycle: what a cycle may take when every request times out, at most 60 s."""
    search = cfg.scan_timeout if not cfg.bt2_address else 0.0
    requests = len(cfg.batteries) * BLOCKS_PER_BATTERY * (1 + cfg.retries)
    bound = cfg.connect_timeout + search + requests * cfg.request_timeout
    return max(MIN_PAUSE, min(MAX_PAUSE, bound))


class Airtime:
    """The scan duty cycle (a task) and the pause around each cycle (a context manager)."""

    def __init__(
        self,
        scanner: Scanner,
        *,
        duty: Sequence[float] = (),
        pause_during_reads: bool = False,
        pause_limit: float = MAX_PAUSE,
    ) -> None:
        self.scanner = scanner
        self.duty: tuple[float, float] | None = (float(duty[0]), float(duty[1])) if duty else None
        self.pause_during_reads = pause_during_reads
        self.pause_limit = pause_limit
        self.pauses = 0
        self.overruns = 0
        self.rests = 0
        self._cycle = 0
        self._task: asyncio.Task[None] | None = None
        self._late: set[asyncio.Task[None]] = set()
        self._log = RepeatFilter(_LOGGER)

    @classmethod
    def from_config(cls, scanner: Scanner, cfg: ReaderConfig) -> Airtime:
        return cls(
            scanner,
            duty=cfg.scan_duty,
            pause_during_reads=cfg.pause_during_reads,
            pause_limit=pause_limit(cfg),
        )

    # --- duty cycle ------------------------------------------------------------------------------

    def start(self, stop: asyncio.Event) -> None:
        """Run the duty cycle in the background (nothing when reader.scan_duty is empty)."""
        if self.duty is not None and self._task is None:
            active, idle = self.duty
            _LOGGER.info("scan duty cycle: %g s scanning, %g s resting", active, idle)
            self._task = asyncio.get_running_loop().create_task(self._duty(stop), name="scan-duty")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for late in list(self._late):
            late.cancel()

    async def _duty(self, stop: asyncio.Event) -> None:
        assert self.duty is not None
        active, idle = self.duty
        loop = asyncio.get_running_loop()
        # Phases on a fixed grid from the start, so slow starts and stops do not make the cycle drift.
        boundary = loop.time()
        try:
            while True:
                boundary = max(boundary + active, loop.time())
                if await _until(stop, boundary, loop):
                    return
                await self.scanner.hold(DUTY)
                self.rests += 1
                boundary = max(boundary + idle, loop.time())
                if await _until(stop, boundary, loop):
                    return
                await self.scanner.release(DUTY)
        except asyncio.CancelledError:
            self.scanner.drop(DUTY)  # shutting down: the reader stops the scanner itself
            raise

    # --- pause during reads ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[None]:
        """Around one cycle: the scanner rests until it ends or its deadline (pause_limit) passes."""
        if not self.pause_during_reads:
            yield
            return
        self._cycle += 1
        reason = f"read {self._cycle}"
        await self.scanner.hold(reason)
        self.pauses += 1
        overruns = self.overruns
        deadline = asyncio.get_running_loop().call_later(self.pause_limit, self._overrun, reason)
        try:
            yield
        finally:
            deadline.cancel()
            await self.scanner.release(reason)
        if self.overruns == overruns:
            self._log.success("overrun")  # the next overrun is news again

    def _overrun(self, reason: str) -> None:
        self.overruns += 1
        self._log.failure(
            "overrun",
            "a cycle is still running %.0f s after it paused the scanner; starting the scanner again",
            self.pause_limit,
        )
        task = asyncio.get_running_loop().create_task(self.scanner.release(reason), name="scan-pause-deadline")
        self._late.add(task)
        task.add_done_callback(self._late.discard)

    def health(self) -> dict[str, Any]:
        return {
            "duty": list(self.duty) if self.duty is not None else None,
            "pause_during_reads": self.pause_during_reads,
            "pauses": self.pauses,
            "pause_overruns": self.overruns,
        }


async def _until(stop: asyncio.Event, when: float, loop: asyncio.AbstractEventLoop) -> bool:
    """Wait until loop time ``when``; True when ``stop`` was set first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max(0.0, when - loop.time()))
    return stop.is_set()
