"""Device logs: this process's log records streamed to clients that sent SubscribeLogsRequest."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Final, Protocol

from services.gateway import messages as ids
from services.gateway.framing import Frame
from services.gateway.proto import pb

LOG_NONE: Final = 0
LOG_ERROR: Final = 1
LOG_WARN: Final = 2
LOG_INFO: Final = 3
LOG_CONFIG: Final = 4
LOG_DEBUG: Final = 5
_LETTERS: Final = {LOG_ERROR: "E", LOG_WARN: "W", LOG_INFO: "I", LOG_DEBUG: "D"}
MAX_MESSAGE: Final = 4096


def esphome_level(levelno: int) -> int:
    """ESPHome LogLevel of a Python level."""
    if levelno >= logging.ERROR:
        return LOG_ERROR
    if levelno >= logging.WARNING:
        return LOG_WARN
    if levelno >= logging.INFO:
        return LOG_INFO
    return LOG_DEBUG


def log_frame(level: int, text: str) -> Frame:
    message = text.encode("utf-8", "replace")[:MAX_MESSAGE]
    return Frame(ids.LOGS, pb.SubscribeLogsResponse(level=level, message=message).SerializeToString())


class LogSubscriber(Protocol):
    def send_log(self, frame: Frame, level: int) -> None: ...


class LogFanout(logging.Handler):
    """A logging handler that hands each record to the subscribed connections on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.DEBUG)
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self.subscribers: dict[LogSubscriber, int] = {}
        self._delivering = False

    def subscribe(self, subscriber: LogSubscriber, level: int) -> None:
        if level <= LOG_NONE:
            self.subscribers.pop(subscriber, None)
        else:
            self.subscribers[subscriber] = level

    def unsubscribe(self, subscriber: LogSubscriber) -> None:
        self.subscribers.pop(subscriber, None)

    def emit(self, record: logging.LogRecord) -> None:
        if not self.subscribers or self._delivering:
            return
        level = esphome_level(record.levelno)
        try:
            text = f"[{_LETTERS[level]}][{record.name}]: {record.getMessage()}"
            if record.exc_info and record.exc_info[0] is not None:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
        except Exception:
            self.handleError(record)
            return
        if threading.get_ident() == self._loop_thread:
            self.deliver(level, text)
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._loop.call_soon_threadsafe(self.deliver, level, text)

    def deliver(self, level: int, text: str) -> None:
        # Records logged while sending (e.g. a slow-client warning) are not streamed: no recursion.
        if self._delivering:
            return
        self._delivering = True
        try:
            frame: Frame | None = None
            for subscriber, wanted in list(self.subscribers.items()):
                if level <= wanted:
                    frame = frame or log_frame(level, text)
                    subscriber.send_log(frame, level)
        finally:
            self._delivering = False
