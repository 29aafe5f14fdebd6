"""The embedded MQTT broker (amqtt) that `renogy-proxy run` starts when no broker is configured.

amqtt speaks MQTT 3.1.1 only and keeps retained messages in memory; the services republish their
retained state on every reconnect, so a restarted embedded broker is repopulated within a second.
Production deployments use Mosquitto (docker-compose.yml).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from amqtt.broker import Broker

_LOGGER = logging.getLogger(__name__)
INSTALL_HINT = "pip install 'renogy-bt-esphome-proxy[broker]' (make run installs it)"


class BrokerUnavailable(RuntimeError):
    """amqtt is an optional extra: the Docker image and Mosquitto installs do without it."""


def make_broker(host: str, port: int) -> Broker:
    """A broker with anonymous access and none of the $SYS/packet-logging plugins (they cost 15-30 %)."""
    try:
        from amqtt.broker import Broker  # noqa: PLC0415 - only the embedded broker pays for amqtt
    except ImportError:
        raise BrokerUnavailable(f"the embedded broker needs amqtt: {INSTALL_HINT}") from None
    return Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
    )


def mqtt_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when something on host:port completes an MQTT CONNECT/CONNACK exchange."""
    connect = bytes.fromhex("101000044d5154540402000a0004") + b"rpxy"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(connect)
            reply = sock.recv(4)
            with contextlib.suppress(OSError):
                sock.sendall(b"\xe0\x00")  # DISCONNECT, so the broker logs no error
    except OSError:
        return False
    return len(reply) == 4 and reply[0] == 0x20 and reply[3] == 0


async def serve(host: str, port: int) -> None:
    """Run the embedded broker until SIGINT/SIGTERM."""
    broker = make_broker(host, port)
    await broker.start()
    _LOGGER.info("embedded MQTT broker (amqtt) listening on %s:%d", host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.shutdown()
    _LOGGER.info("embedded MQTT broker stopped")
