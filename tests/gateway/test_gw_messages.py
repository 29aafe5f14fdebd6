"""Message ids come from aioesphomeapi's own dispatch table; the few copies elsewhere must agree."""

from __future__ import annotations

from aioesphomeapi.core import MESSAGE_TYPE_TO_PROTO

from services import ops
from services.gateway import messages
from services.gateway.proto import pb


def test_ids_are_the_clients_own() -> None:
    for name in dir(messages):
        value = getattr(messages, name)
        if name.isupper() and isinstance(value, int):
            assert value in MESSAGE_TYPE_TO_PROTO, name


def test_connect_request_keeps_its_old_id() -> None:
    """Renamed AuthenticationRequest in the client; clients up to 29.x send it as ConnectRequest (3)."""
    assert messages.AUTH_REQUEST == 3 and messages.AUTH_RESPONSE == 4


def test_frame_of_round_trips() -> None:
    frame = messages.frame_of(pb.PingRequest())
    assert frame.msg_type == messages.PING_REQUEST and frame.payload == b""


def test_healthcheck_copies_agree() -> None:
    assert ops.MSG_PING_REQUEST == messages.PING_REQUEST
    assert ops.MSG_PING_RESPONSE == messages.PING_RESPONSE
