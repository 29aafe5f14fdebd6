"""Broker URLs (mqtt://host:port, mqtts://...) without the MQTT client: the supervisor and the tools that
only need an address import this, not paho (shared.mqtt re-exports both names)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

SCHEMES = ("mqtt", "mqtts", "tcp", "ssl")


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def redact(url: str) -> str:
    """The URL with any password replaced by ***, for messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, hostpart = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}{sep}{user}:***@{hostpart}"


def parse_url(url: str) -> BrokerAddress:
    """mqtt://host[:port] or mqtts://host[:port]; a bare host:port means mqtt://.

    Raises ValueError with a one-line reason that shows the URL without its password.
    """
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    shown = redact(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(
            f"unsupported MQTT URL scheme {parts.scheme!r} in {shown!r}; write mqtt://HOST:PORT or mqtts://HOST:PORT"
        )
    tls = parts.scheme in ("mqtts", "ssl")
    if not parts.hostname:
        raise ValueError(f"no host in MQTT URL {shown!r}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is None:
        port = 8883 if tls else 1883
    if not 1 <= port <= 65535:
        raise ValueError(f"bad port in MQTT URL {shown!r}: a port is a number from 1 to 65535")
    return BrokerAddress(parts.hostname, port, tls)
