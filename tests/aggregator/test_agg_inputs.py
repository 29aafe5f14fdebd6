"""Drop reasons of malformed payloads, rate-limited drop logging, reader health validation."""

from __future__ import annotations

import logging

import orjson
import pytest

from services.aggregator.inputs import DropLog, drop_reason, parse_reader_health
from shared.payloads import PayloadError, parse_reading
from tests.aggregator.support import BT2, reading_dict


def reason_of(payload: bytes, **identity: object) -> str:
    with pytest.raises(PayloadError) as caught:
        parse_reading(payload, **identity)  # type: ignore[arg-type]
    return drop_reason(caught.value)


def body(**changes: object) -> bytes:
    data = reading_dict(48, 1_795_524_654.2)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return orjson.dumps(data)


def test_drop_reasons() -> None:
    assert reason_of(b"not json") == "not_json"
    assert reason_of(b'{"voltage": NaN}') == "not_json"
    assert reason_of(b"[1]") == "not_object"
    assert reason_of(body(schema=2)) == "schema"
    assert reason_of(body(ts=None)) == "missing_key"
    assert reason_of(body(bt2=None)) == "missing_key"
    assert reason_of(body(voltage="52.4")) == "wrong_type"
    assert reason_of(body(current=True)) == "wrong_type"
    assert reason_of(body(cell_voltages=[3.3, "x"])) == "wrong_type"
    assert reason_of(body(voltage=120.0)) == "implausible"
    assert reason_of(body(current=-900.0)) == "implausible"
    assert reason_of(body(remaining_charge=70.0)) == "implausible"
    assert reason_of(body(), slave_id=49) == "identity_mismatch"
    assert reason_of(b" " * 300_000) == "too_large"
    assert drop_reason("something new") == "invalid"


def test_drop_log_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    log = DropLog(logging.getLogger("test.drops"), window=60, limit=3)
    with caplog.at_level(logging.DEBUG, logger="test.drops"):
        for index in range(1_000):
            log.dropped(f"t/{index % 5}", "not JSON", 100.0 + index * 0.01)
        log.flush(200.0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4  # 3 topics, then one summary
    assert "997 more" in warnings[-1].getMessage()


def test_reader_health() -> None:
    payload = orjson.dumps(
        {
            "schema": 1,
            "ts": 1795524654.4,
            "bt2": BT2,
            "rssi": -62,
            "link_quality": 98,
            "batteries": {"48": {"link_quality": 100, "last_good_ts": 1.0}},
        }
    )
    bt2, link = parse_reader_health(payload)  # type: ignore[misc]
    assert bt2 == BT2 and link.rssi == -62 and link.battery_link_quality == {48: 100}
    assert parse_reader_health(orjson.dumps({"schema": 1, "ts": 5.0, "bt2": None})) is None
    for bad in (
        {"ts": 5.0, "bt2": "XYZ"},
        {"ts": 5.0, "bt2": BT2, "rssi": 500},
        {"ts": 5.0, "bt2": BT2, "batteries": {"x": {}}},
        {"bt2": BT2},
        {"ts": 5.0, "bt2": BT2, "batteries": {"48": {"link_quality": "high"}}},
    ):
        with pytest.raises(PayloadError):
            parse_reader_health(orjson.dumps({"schema": 1, **bad}))
