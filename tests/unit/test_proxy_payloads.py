"""The active-proxy MQTT contract: round trips and what a consumer rejects."""

from __future__ import annotations

import pytest

from shared import proxy_payloads as pp
from shared.payloads import PayloadError, dumps


def test_request_round_trip() -> None:
    request = pp.ProxyRequest(
        "ab-1",
        "write",
        "default/boot",
        "A4:C1:38:12:34:56",
        1795524654.25,
        10.0,
        handle=18,
        data=b"\x01\x02",
        response=True,
    )
    assert pp.parse_request(request.to_payload()) == request
    connect = pp.ProxyRequest(
        "ab-2", "connect", "default/boot", "A4:C1:38:12:34:56", 1.0, 20.0, address_type=1
    )
    assert pp.parse_request(connect.to_payload()).address_type == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"op": "explode"}, "'op'"),
        ({"address": "A4:C1:38"}, "'address'"),
        ({"id": ""}, "'id'"),
        ({"timeout": 0}, "'timeout'"),
        ({"timeout": float("inf")}, "'timeout'"),
        ({"handle": 70000}, "'handle'"),
        ({"data": "zz"}, "not hex"),
        ({"data": "00" * 513}, "at most 512"),
        ({"response": "yes"}, "'response'"),
    ],
)
def test_bad_requests_are_rejected(change: dict[str, object], message: str) -> None:
    body = {
        "schema": 1,
        "id": "ab-1",
        "op": "read",
        "owner": "default/boot",
        "address": "A4:C1:38:12:34:56",
        "deadline": 1.0,
        "timeout": 10.0,
        "handle": 3,
    }
    body.update(change)
    with pytest.raises(PayloadError, match=message):
        pp.parse_request(dumps(body))


def test_response_with_services_round_trip() -> None:
    services = (
        pp.GattService(
            "0000181a-0000-1000-8000-00805f9b34fb",
            16,
            (
                pp.GattCharacteristic(
                    "00002a6e-0000-1000-8000-00805f9b34fb",
                    18,
                    0x12,
                    (pp.GattDescriptor("00002902-0000-1000-8000-00805f9b34fb", 19),),
                ),
            ),
        ),
    )
    response = pp.ProxyResponse(
        "A4:C1:38:12:34:56", "default/boot", id="ab-1", op="services", services=services
    )
    assert pp.parse_response(response.to_payload()) == response
    read = pp.ProxyResponse("A4:C1:38:12:34:56", "o/b", id="x-1", op="read", handle=18, data=b"\x66")
    assert pp.parse_response(read.to_payload()).data == b"\x66"
    event = pp.ProxyResponse("A4:C1:38:12:34:56", "o/b", event="disconnected", ok=False, error=8)
    assert pp.parse_response(event.to_payload()) == event


def test_response_needs_an_id_or_an_event() -> None:
    with pytest.raises(PayloadError, match="without 'id'"):
        pp.parse_response(dumps({"schema": 1, "address": "A4:C1:38:12:34:56", "owner": "o/b"}))


def test_slots_and_addresses() -> None:
    slots = pp.Slots(2, ("A4:C1:38:12:34:56",), 5.0)
    parsed = pp.parse_slots(slots.to_payload())
    assert parsed == slots and parsed.free == 1
    assert pp.int_to_address(0xA4C138123456) == "A4:C1:38:12:34:56"
    assert pp.address_to_int("A4:C1:38:12:34:56") == 0xA4C138123456
    with pytest.raises(ValueError, match="48-bit"):
        pp.int_to_address(1 << 48)
