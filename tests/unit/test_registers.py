"""The register map: captured frames decode to their published values; encode/decode round trips."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import registers
from shared.modbus import FrameError, ReadRequest, ReadResponse, ResponseAssembler
from shared.registers import Family

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors" / "renogy-frames.json"
LOCAL_VECTORS = Path(__file__).resolve().parent.parent / "data" / "renogy-frames.json"
# The decoder's names for keys the vector file spells differently, and keys that are derived, not decoded.
RENAMED = {
    "sw_version": "firmware",
    "other_alarm_info": "other_alarms",
    "cell_voltage_alarm_info": "cell_voltage_alarms",
    "cell_temperature_alarm_info": "cell_temperature_alarms",
}
DERIVED = {
    "soc_percent",
    "power",
    "registers_hex",
    "exception",
    "responder_id",
    "function",
    "exception_code",
    "no_response",
    "error",
}
FAMILY = {"pro_rngrbp": Family.PRO}


def _vectors() -> list[dict[str, Any]]:
    path = VECTORS if VECTORS.exists() else LOCAL_VECTORS
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def _responses() -> list[dict[str, Any]]:
    return [
        v
        for v in _vectors()
        if v["response_hex"]
        and v["crc_valid"]
        and v["family"] != "non_battery"
        and not v["decoded"].get("exception")
    ]


@pytest.mark.parametrize("vector", _responses(), ids=lambda v: v["id"])
def test_captured_frames_decode_to_their_stated_values(vector: dict[str, Any]) -> None:
    request = ReadRequest(vector["device_id"], vector["register"], vector["words"])
    (event,) = ResponseAssembler(request).feed(bytes.fromhex(vector["response_hex"]))
    assert isinstance(event, ReadResponse)
    decoded = registers.decode_block(
        vector["register"], event.registers, family=FAMILY.get(vector["family"], Family.BT2)
    )
    for key, expected in vector["decoded"].items():
        if key in DERIVED:
            continue
        assert decoded[RENAMED.get(key, key)] == expected, key
    if "soc_percent" in vector["decoded"]:
        soc = 100 * decoded["remaining_charge"] / decoded["capacity"]  # type: ignore[operator]
        assert round(soc, 1) == vector["decoded"]["soc_percent"]


@pytest.mark.parametrize("vector", [v for v in _vectors() if v["request_hex"]], ids=lambda v: v["id"])
def test_captured_requests_are_what_the_builder_makes(vector: dict[str, Any]) -> None:
    request = ReadRequest(vector["device_id"], vector["register"], vector["words"])
    assert request.encode().hex() == vector["request_hex"]


@pytest.mark.parametrize(
    "vector", [v for v in _vectors() if v["response_hex"] and v["crc_valid"] is False], ids=lambda v: v["id"]
)
def test_negative_fixtures_never_decode(vector: dict[str, Any]) -> None:
    request = ReadRequest(vector["device_id"], vector["register"], vector["words"])
    events = ResponseAssembler(request).feed(bytes.fromhex(vector["response_hex"]))
    assert events and all(isinstance(e, FrameError) for e in events)


def test_reader_blocks_are_mapped_and_gaps_are_not() -> None:
    for start, words in (registers.BLOCK_STATUS, registers.BLOCK_CELLS, registers.BLOCK_INFO, (5042, 6)):
        assert registers.block_is_mapped(start, words)
    assert not registers.block_is_mapped(5000, 35)  # 5034 is reserved
    assert not registers.block_is_mapped(5053, 1)
    assert not registers.block_is_mapped(0, 1)


def test_cell_arrays_are_cut_to_their_count() -> None:
    values = {
        "cell_count": 15,
        "cell_voltages": [3.3] * 15,
        "temperature_count": 3,
        "temperatures": [20.5, -4.0, 0.0],
    }
    decoded = registers.decode_block(5000, registers.encode_block(5000, 34, values))
    assert decoded["cell_voltages"] == [3.3] * 15 and decoded["temperatures"] == [20.5, -4.0, 0.0]


def test_pro_family_scales_current_by_a_tenth() -> None:
    words = registers.encode_block(5042, 1, {"current": -1.2}, family=Family.PRO)
    assert words == [0xFFF4]
    assert registers.decode_block(5042, words, family=Family.PRO)["current"] == -1.2
    assert registers.decode_block(5042, words, family=Family.BT2)["current"] == -0.12
    assert registers.family_for_name("RNGRBP12100-1234  ") is Family.PRO
    assert registers.family_for_name("BT-TH-E3383D0E    ") is Family.BT2


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"voltage": 248.7}, "voltage"),
        ({"current": 653.96}, "current"),
        ({"cell_voltages": [3.3, 0.034]}, r"cell_voltages\[2\]"),
        ({"temperatures": [20.0, 120.0]}, r"temperatures\[2\]"),
        ({"remaining_charge": 70.0, "capacity": 50.0}, "remaining_charge"),
    ],
)
def test_implausible_values_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(registers.BlockError, match=message):
        registers.check_plausible(values)


status_values = st.fixed_dictionaries(
    {
        "current": st.integers(-32768, 32767).map(lambda raw: round(raw * 0.01, 2)),
        "voltage": st.integers(0, 0xFFFF).map(lambda raw: round(raw * 0.1, 1)),
        "remaining_charge": st.integers(0, 0xFFFFFFFF).map(lambda raw: round(raw * 0.001, 3)),
        "capacity": st.integers(0, 0xFFFFFFFF).map(lambda raw: round(raw * 0.001, 3)),
        "cycle_count": st.integers(0, 0xFFFF),
    }
)


@given(status_values)
def test_status_block_round_trip(values: dict[str, Any]) -> None:
    assert {
        k: v
        for k, v in registers.decode_block(5042, registers.encode_block(5042, 7, values)).items()
        if k in values
    } == values


@given(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=125), st.integers(4990, 5240))
def test_decode_never_crashes_on_any_registers(words: list[int], start: int) -> None:
    with contextlib.suppress(registers.BlockError):
        registers.decode_block(start, words)
