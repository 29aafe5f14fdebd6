"""What answers on an MQTT port: a broker that accepts us, one that refuses our login, something else, nobody.

`renogy-proxy run` asks before it decides to start the embedded broker: a password-protected
Mosquitto (Home Assistant's add-on) refuses an anonymous CONNECT, which is not the same as "no
broker", and a port held by another program cannot be taken over. One blocking MQTT 3.1.1 CONNECT,
no dependencies (the embedded broker's amqtt is an optional extra).
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
from dataclasses import dataclass
from enum import StrEnum

# CONNACK return codes of MQTT 3.1.1 (section 3.2.2.3).
CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


class Answer(StrEnum):
    ACCEPTED = "accepted"  # a broker took our CONNECT
    REFUSED = "refused"  # a broker answered with a CONNACK error (credentials, usually)
    NOT_MQTT = "not_mqtt"  # something listens but does not speak MQTT
    NOTHING = "nothing"  # nothing listens (connection refused)


@dataclass(frozen=True, slots=True)
class Probe:
    answer: Answer
    detail: str = ""


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str, username: str | None = None, password: str | None = None) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session and a 10 s keep-alive."""
    flags = 0x02 | (0x80 if username else 0) | (0x40 if username and password is not None else 0)
    body = _string("MQTT") + bytes((4, flags)) + struct.pack("!H", 10) + _string(client_id)
    if username:
        body += _string(username)
        if password is not None:
            body += _string(password)
    length, encoded = len(body), b""
    while True:
        length, digit = divmod(length, 128)
        encoded += bytes((digit | (0x80 if length else 0),))
        if not length:
            break
    return b"\x10" + encoded + body


def probe(
    host: str,
    port: int,
    *,
    username: str | None = None,
    password: str | None = None,
    timeout: float = 1.0,
) -> Probe:
    """CONNECT to host:port (with these credentials) and say what answered."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        return Probe(Answer.NOTHING, "connection refused")
    except OSError as exc:
        return Probe(Answer.NOTHING, exc.strerror or exc.__class__.__name__)
    with sock:
        try:
            sock.settimeout(timeout)
            sock.sendall(connect_packet("renogy-probe", username, password))
            reply = b""
            while len(reply) < 4:
                chunk = sock.recv(4 - len(reply))
                if not chunk:
                    break
                reply += chunk
        except OSError as exc:
            return Probe(Answer.NOT_MQTT, f"no MQTT answer ({exc.strerror or exc.__class__.__name__})")
        if len(reply) < 4 or reply[0] != 0x20 or reply[1] != 2:
            shown = reply.hex() or "the connection was closed"
            return Probe(Answer.NOT_MQTT, f"the reply is not an MQTT CONNACK ({shown})")
        code = reply[3]
        if code:
            return Probe(Answer.REFUSED, CONNACK_REASONS.get(code, f"return code {code}"))
        with contextlib.suppress(OSError):
            sock.sendall(b"\xe0\x00")  # DISCONNECT, so the broker logs no error
        return Probe(Answer.ACCEPTED)


def port_free(host: str, port: int) -> bool:
    """Can a server bind host:port (as the embedded broker would, with SO_REUSEADDR)?"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True
