"""Warnings that repeat under attack or misconfiguration, logged at most once per interval per kind."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any


class ThrottledLog:
    """The first event of a kind at WARNING, then at most one line per ``interval`` with a count.

    Unlike a streak filter, it never goes quiet for good: a lockout that lasts a day is reported
    every interval, and a new one after a quiet spell is reported at once.
    """

    def __init__(
        self, logger: logging.Logger, interval: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._logger = logger
        self.interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, kind: str, msg: str, *args: Any) -> bool:
        """Log unless one line of this kind went out less than ``interval`` ago; True when logged."""
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return False
        self._last[kind] = now
        suppressed = self._suppressed.pop(kind, 0)
        if suppressed and last is not None:
            line = msg % args if args else msg
            self._logger.warning("%s (%d more like it in the last %.0f s)", line, suppressed, now - last)
        else:
            self._logger.warning(msg, *args)
        return True
