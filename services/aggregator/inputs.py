"""Checks of what arrives from the broker: drop reasons, rate-limited drop logs, reader health."""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from collections import Counter
from typing import Any

from services.aggregator.model import LinkInfo
from shared.payloads import PayloadError, loads_object

_BT2 = re.compile(r"^[0-9a-f]{12}$")
MAX_REASONS = 32
MAX_LOGGED_TEXT = 200


def printable(text: str) -> str:
    """A topic or reason as it may go into a log line: control and format characters escaped, bounded."""
    out = "".join(
        char if char.isprintable() and unicodedata.category(char) != "Cf" else f"\\u{ord(char):04x}"
        for char in text[:MAX_LOGGED_TEXT]
    )
    return out + ("..." if len(text) > MAX_LOGGED_TEXT else "")


# (how the message starts or what it contains, reason key in health); first match wins.
_REASONS = (
    ("not JSON", "not_json"),
    ("expected a JSON object", "not_object"),
    ("unsupported schema", "schema"),
    ("payload of", "too_large"),
    ("implausible", "implausible"),
    ("differs from topic", "identity_mismatch"),
    ("is not finite", "not_finite"),
    ("missing", "missing_key"),
    ("must be", "wrong_type"),
    ("holds a non-numeric", "wrong_type"),
)


def drop_reason(error: Exception | str) -> str:
    """A short, stable key for a payload error (the health topic counts drops by it)."""
    text = str(error)
    for needle, reason in _REASONS:
        if text.startswith(needle) or needle in text:
            return reason
    return "invalid"


class DropLog:
    """At most one WARNING per topic and `limit` in all per window; the rest at DEBUG plus a summary."""

    def __init__(self, logger: logging.Logger, *, window: float = 60.0, limit: int = 20) -> None:
        self._logger = logger
        self._window = window
        self._limit = limit
        self._start: float | None = None
        self._topics: set[str] = set()
        self._suppressed: Counter[str] = Counter()

    def dropped(self, topic: str, reason: str, now: float) -> None:
        self.flush(now)
        if self._start is None:
            self._start = now
        topic, reason = printable(topic), printable(reason)
        if topic in self._topics or len(self._topics) >= self._limit:
            # bounded: the reasons are texts with values in them, so count at most MAX_REASONS of them
            key = reason if reason in self._suppressed or len(self._suppressed) < MAX_REASONS else "other"
            self._suppressed[key] += 1
            self._logger.debug("dropped message on %s: %s", topic, reason)
            return
        self._topics.add(topic)
        self._logger.warning("dropped message on %s: %s", topic, reason)

    def flush(self, now: float) -> None:
        """End the window when it is over, summarising what was not logged."""
        if self._start is None or now - self._start < self._window:
            return
        if self._suppressed:
            summary = ", ".join(f"{reason} {count}" for reason, count in self._suppressed.most_common())
            self._logger.warning(
                "dropped %d more messages in the last %.0f s (%s)",
                sum(self._suppressed.values()),
                now - self._start,
                summary,
            )
        self._start = None
        self._topics.clear()
        self._suppressed.clear()


def _bounded(obj: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PayloadError(f"{key!r} must be a finite number")
    if not low <= value <= high:
        raise PayloadError(f"implausible value: {key} = {value} outside {low}..{high}")
    return float(value)


def parse_reader_health(payload: bytes) -> tuple[str, LinkInfo] | None:
    """(bt2, link) from a reader health payload; None while the reader has no BT-2 yet."""
    obj = loads_object(payload)
    ts = _bounded(obj, "ts", 1.0, 1e11)
    if ts is None:
        raise PayloadError("missing 'ts'")
    bt2 = obj.get("bt2")
    if bt2 is None:
        return None
    if not isinstance(bt2, str) or not _BT2.match(bt2):
        raise PayloadError("'bt2' must be 12 lower-case hex digits")
    batteries = obj.get("batteries") or {}
    if not isinstance(batteries, dict) or len(batteries) > 255:
        raise PayloadError("'batteries' must be an object of at most 255 batteries")
    per_battery: dict[int, float] = {}
    for key, entry in batteries.items():
        # isascii first: str.isdigit() also accepts digits such as '²' that int() refuses.
        if not (key.isascii() and key.isdigit()) or not 0 < int(key) < 256 or not isinstance(entry, dict):
            raise PayloadError(f"'batteries' entry {key[:8]!r} must be a slave id with an object")
        quality = _bounded(entry, "link_quality", 0, 100)
        if quality is not None:
            per_battery[int(key)] = quality
    link = LinkInfo(
        ts=ts,
        rssi=_bounded(obj, "rssi", -127, 20),
        link_quality=_bounded(obj, "link_quality", 0, 100),
        battery_link_quality=per_battery,
    )
    return bt2, link
