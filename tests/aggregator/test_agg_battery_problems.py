"""Issue 14's battery fixes as Home Assistant sees them: real frames through the reader's decode and
payload into the aggregator's extended profile (source cited per frame; "derived" = one word changed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson

from services.aggregator.entities import BATTERY, for_profile
from services.reader.readings import BatteryCycle, Identity
from shared import registers
from shared.modbus import ReadRequest, ReadResponse, ResponseAssembler, with_crc
from shared.payloads import parse_reading
from tests.aggregator.support import BT2, make_core

VECTORS = Path(__file__).resolve().parent.parent / "data" / "renogy-frames.json"
T0 = 1_000.0
RNGPRO_NAME = "RNGPRO125BAT-EF036881"  # renogy-ble tests/test_battery_rngpro.py (real RBT12500LFP-SHBT)


def _hex(vector_id: str) -> str:
    return str(next(v for v in json.loads(VECTORS.read_text()) if v["id"] == vector_id)["response_hex"])


def _words(frame_hex: str, start: int) -> list[int]:
    frame = bytes.fromhex(frame_hex)
    (event,) = ResponseAssembler(ReadRequest(0xFF, start, frame[2] // 2)).feed(frame)
    assert isinstance(event, ReadResponse)
    return list(event.registers)


def _state(blocks: dict[int, list[int]], family: registers.Family = registers.Family.BT2) -> dict[str, Any]:
    """Decode blocks as the reader does, publish them as its reading, and return battery 48's state."""
    cycle = BatteryCycle(BT2, 48)
    for start, words in blocks.items():
        values = registers.decode_checked(start, words, family=family)
        body = bytes((48, 3, 2 * len(words))) + b"".join(w.to_bytes(2, "big") for w in words)
        cycle.add_block(start, values, with_crc(body), T0, 0.0)
    reading = parse_reading(orjson.dumps(cycle.payload(Identity(), "boot")))
    core = make_core(profile="extended")
    core.accept(reading, T0)
    out = core.pending(T0 + 1)
    states = {item.device_id: orjson.loads(item.payload) for item in out if item.kind == "state"}
    return states["battery_48"]["values"]  # type: ignore[no-any-return]


def test_rngpro_alarm_block_does_not_raise_the_alarm() -> None:
    # renogy-ble test_battery_rngpro.py MOSFET_STATUS: 5101 = 0x00AA on a healthy pack (cells at 3.3 V).
    words = _words(_hex("rb-rngpro-5100x8"), 5100)
    blocks = {5100: words[:4], 5104: words[4:]}  # as the reader reads them: 5100 x 4, then from 5104
    state = _state(blocks, registers.family_for_name(RNGPRO_NAME))
    assert state["alarm"] is not True and state["problems"] != "4: cell 1 voltage high, cell 2 voltage high"
    assert state["charge_mosfet"] is True and state["discharge_mosfet"] is True
    # The same words on a BT-2 battery are V1.7 alarm bits and do raise it.
    bt2 = _state(blocks)
    assert bt2["alarm"] is True and bt2["problems"].startswith("4: cell 1 voltage high")


TRACE_5104 = "trace-30-5104"  # charlieh0tel/renogy-rs traces/renogy-bt.btsnoop, RBT50LFP48S @0x30


def test_a_real_status_block_is_no_alarm() -> None:
    state = _state({5104: _words(_hex(TRACE_5104), 5104)})
    assert state["alarm"] is False and state["problems"] == "none"


def test_a_short_circuit_trip_raises_the_alarm() -> None:
    words = _words(_hex(TRACE_5104), 5104)
    words[2] |= 1  # derived: Status1 (5106) 0x000E -> 0x000F, bit 0 short circuit
    state = _state({5104: words})
    assert state["alarm"] is True and state["problems"] == "short circuit"


def test_over_voltage_and_over_current_trips_raise_the_alarm() -> None:
    words = _words(_hex(TRACE_5104), 5104)
    words[2] |= 1 << 6 | 1 << 10  # derived: Status1 module over-voltage and discharge over-current 1
    state = _state({5104: words})
    assert state["alarm"] is True
    assert state["problems"] == "2: module over-voltage, discharge over-current 1"


def test_a_cell_voltage_error_raises_the_alarm() -> None:
    words = _words(_hex(TRACE_5104), 5104)
    words[4] = 1 << 14  # derived: Status3 (5108) bit 14, cell 15 voltage error
    state = _state({5104: words})
    assert state["alarm"] is True and state["problems"] == "cell 15 voltage error"


def test_one_dead_temperature_sensor_keeps_the_other_values() -> None:
    words = _words(_hex("trace-30-5000-a"), 5000)  # charlieh0tel/renogy-rs btsnoop: 15 x 13.0/14.0 °C
    words[18] = 0x8000  # derived: temperature 1 reads 0x8000 (absent sensor)
    words[1] = 0x0000  # derived: cell 1 reads 0 V
    state = _state({5000: words})
    assert state["temperature_min"] == 13.0 and state["temperature_max"] == 14.0
    assert state["cell_voltage_min"] == 3.4 and state["cell_voltage_max"] == 3.5
    assert state["temperature_average"] == round((7 * 13.0 + 7 * 14.0) / 14, 2)  # 8 x 13.0 and 7 x 14.0 read
    assert state["cell_voltage_delta"] == 0.1


def test_charging_follows_the_current() -> None:
    core = make_core(profile="extended")
    for slave, current in ((48, 3.26), (49, -3.26), (50, 0.05)):
        payload = {"schema": 1, "ts": T0, "bt2": BT2, "slave_id": slave, "complete": True,
                   "voltage": 52.4, "current": current, "remaining_charge": 40.0, "capacity": 50.0}  # fmt: skip
        core.accept(parse_reading(orjson.dumps(payload)), T0)
    states = {i.device_id: orjson.loads(i.payload) for i in core.pending(T0 + 1) if i.kind == "state"}
    assert [states[f"battery_{s}"]["values"]["charging"] for s in (48, 49, 50)] == [True, False, False]


def test_extended_profile_has_the_issues_battery_entities() -> None:
    extended = {e.key: e for e in for_profile(BATTERY, "extended")}
    assert extended["charging"].platform == "binary_sensor"
    assert extended["charging"].device_class == "battery_charging"
    assert extended["temperature_average"].unit == "°C"
    assert extended["problems"].platform == "text_sensor"
    for key in ("cycle_count", "cell_voltage_delta", "alarm", "firmware"):
        assert key in extended
    assert not {"charging", "temperature_average", "problems"} & {
        e.key for e in for_profile(BATTERY, "default")
    }
