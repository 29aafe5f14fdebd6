"""What every service shares: identity, presence (state + last will), health, logging, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from shared.config import Config
from shared.logsetup import setup_logging as setup_logging  # noqa: PLC0414 - re-exported, see logsetup.py
from shared.logsetup import version
from shared.mqtt import Message, MqttClient
from shared.payloads import dumps
from shared.topics import SCHEMA, Topics

_LOGGER = logging.getLogger(__name__)

VERSION = version()

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mb() -> float | None:
    """This process's resident set size from /proc/self/statm (None elsewhere): psutil costs every
    service ~20 ms of start-up and its pages for this one figure."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return round(int(statm.read().split()[1]) * _PAGE_SIZE / 1e6, 1)
    except (OSError, ValueError, IndexError):
        return None


class RepeatFilter:
    """First failure of a streak at WARNING, repeats at DEBUG; reset on success (avoids log storms)."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._streak: dict[str, int] = {}

    def failure(self, kind: str, msg: str, *args: Any) -> None:
        count = self._streak.get(kind, 0) + 1
        self._streak[kind] = count
        level = logging.WARNING if count == 1 else logging.DEBUG
        self._logger.log(level, msg, *args)

    def success(self, kind: str | None = None) -> None:
        if kind is None:
            self._streak.clear()
        else:
            self._streak.pop(kind, None)


def client_id(root_topic: str, service: str, instance: str) -> str:
    """``<root_topic>-<service>-<instance>`` ('/' as '_'): unique per stack on a shared broker, since two
    clients with one id kick each other off. The default root gives renogy-reader-default as before."""
    return f"{root_topic.replace('/', '_')}-{service}-{instance}"


class ServiceRuntime:
    """MQTT presence for one service instance: retained online/offline state with a last will."""

    def __init__(
        self,
        config: Config,
        service: str,
        instance: str,
        *,
        on_message: Callable[[Message], None] | None = None,
    ) -> None:
        self.config = config
        self.service = service
        self.instance = instance
        self.topics = Topics(config.mqtt.root_topic)
        self.boot_id = uuid.uuid4().hex
        self.started = time.time()
        self.state_topic = self.topics.bridge_state(service, instance)
        self.health_topic = self.topics.bridge_health(service, instance)
        self.mqtt = MqttClient(
            config.mqtt,
            client_id=client_id(config.mqtt.root_topic, service, instance),
            will=(self.state_topic, self.state_payload("offline")),
            on_message=on_message,
        )
        self.stop_event = asyncio.Event()

    def state_payload(self, state: str) -> bytes:
        return dumps(
            {
                "schema": SCHEMA,
                "state": state,
                "version": VERSION,
                "boot_id": self.boot_id,
                "ts": time.time(),
                "host": socket.gethostname(),
                "pid": os.getpid(),
            }
        )

    async def start(self) -> None:
        self.mqtt.publish(self.state_topic, self.state_payload("online"), retain=True)
        await self.mqtt.start()

    def publish_health(self, health: Mapping[str, Any]) -> None:
        body = {
            "schema": SCHEMA,
            "ts": time.time(),
            "uptime_s": round(time.time() - self.started, 1),
            # Process figures, so soaks (and users) can see memory and task counts stay flat.
            "rss_mb": rss_mb(),
            "tasks": _task_count(),
            **health,
        }
        self.mqtt.publish(self.health_topic, dumps(body), retain=True)

    async def stop(self) -> None:
        await self.mqtt.stop(final=[(self.state_topic, self.state_payload("offline"))])

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop, sig)

    def request_stop(self, sig: signal.Signals | None = None) -> None:
        if not self.stop_event.is_set():
            _LOGGER.info("%s %s stopping (%s)", self.service, self.instance, sig.name if sig else "requested")
        self.stop_event.set()


def _task_count() -> int:
    """Tasks of the running event loop (0 outside one)."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:
        return 0
