"""Keep the log records a service emits, for tests that assert on them beyond caplog's reach."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


class RecordingHandler(logging.Handler):
    """Keeps every record at or above ``level``."""

    def __init__(self, level: int = logging.DEBUG) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def recording(logger_name: str, level: int = logging.DEBUG) -> Iterator[RecordingHandler]:
    """Attach a RecordingHandler to ``logger_name``, letting records from ``level`` up through."""
    handler = RecordingHandler(level)
    logger = logging.getLogger(logger_name)
    old_level = logger.level
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
