"""Broker URLs (mqtt://host:port, mqtts://...) without the MQTT client: the supervisor and the tools that
only need an address import this, not paho (shared.mqtt re-exports both names)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_url(url: str) -> BrokerAddress:
    """mqtt://host[:port] or mqtts://host[:port]; a bare host:port means mqtt://."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"unsupported MQTT URL scheme {parts.scheme!r} in {url!r}")
    tls = parts.scheme in ("mqtts", "ssl")
    if not parts.hostname:
        raise ValueError(f"no host in MQTT URL {url!r}")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise ValueError(f"bad port in MQTT URL {url!r}") from None
    return BrokerAddress(parts.hostname, port, tls)
