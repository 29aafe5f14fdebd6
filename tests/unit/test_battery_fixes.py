"""The battery fixes of issue 14, each on a real frame (source cited per frame).

Frames marked "derived" are a real frame with one word changed and the CRC recomputed, to show one
fault at a time; the word changed is named.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from hypothesis import given
from hypothesis import strategies as st

from services.reader.scanner import Scanner
from services.tools import decode_frame
from shared import registers
from shared.modbus import ReadRequest, ReadResponse, ResponseAssembler, with_crc
from shared.payloads import parse_reading
from shared.registers import Family

VECTORS = Path(__file__).resolve().parent.parent / "data" / "renogy-frames.json"


def _vector(vector_id: str) -> dict[str, Any]:
    return next(v for v in json.loads(VECTORS.read_text()) if v["id"] == vector_id)


def _registers(frame_hex: str, start: int) -> list[int]:
    frame = bytes.fromhex(frame_hex)
    (event,) = ResponseAssembler(ReadRequest(0xFF, start, frame[2] // 2)).feed(frame)
    assert isinstance(event, ReadResponse)
    return list(event.registers)


def _frame(slave: int, words: list[int]) -> str:
    body = bytes((slave, 3, 2 * len(words))) + b"".join(w.to_bytes(2, "big") for w in words)
    return with_crc(body).hex()


# IAmTheMitchell/renogy-ble tests/test_battery_rngpro.py: "captured over BLE from a real RBT12500LFP-SHBT",
# which advertises as RNGPRO125BAT-*.
RNGPRO_NAME = "RNGPRO125BAT-EF036881"
RNGPRO_PACK_STATUS = "ff030eff370085000746ee0007a1200018f9db"  # 5042 x 7
# gambleben/renogy_dev_resources "BT2 Capture Decode.txt" (BT-2 + RBT100LFP12S-G1), command "5017, 5 registers".
GB_5017X5 = "30030a000300c800be00be00bef2b4"
# patman15/BMS_BLE-HA issue 596 (advmon of two real RNGC122BAT packs): name and manufacturer data.
RNGC_NAME, RNGC_ADDRESS, RNGC_MANUFACTURER = (
    "RNGC122BAT28000194",
    "4C:E1:74:68:36:92",
    {57676: b"\x74\x68\x36\x92"},
)


# --- (a) RNGPRO packs and the 0xE14C manufacturer id ----------------------------------------------------


def _sightings(address: str, name: str | None, manufacturer: dict[int, bytes]) -> dict[str, Any]:
    scanner = Scanner(
        backend=None, adapter="hci0", mode="active", on_advertisement=None, on_state=lambda s, m: None
    )
    scanner._detected(
        BLEDevice(address, name, None), AdvertisementData(name, manufacturer, {}, [], None, -70, ())
    )
    return scanner.bt2_sightings


def test_rngpro_packs_are_found_and_keep_the_hundredth_amp_scale() -> None:
    sightings = _sightings("4C:E1:74:49:00:01", RNGPRO_NAME, {0xE14C: b"\x74\x49\x00\x01"})
    assert list(sightings) == ["4C:E1:74:49:00:01"]
    family = registers.family_for_name(RNGPRO_NAME)
    assert family is Family.RNGPRO and sightings["4C:E1:74:49:00:01"].family is Family.RNGPRO
    # renogy-ble's ground truth for this capture: -2.01 A (0.01 A), not -20.1 A (the RNGRBP/RNGC scale).
    values = registers.decode_checked(5042, _registers(RNGPRO_PACK_STATUS, 5042), family=family)
    assert values["current"] == -2.01 and values["voltage"] == 13.3
    assert values["capacity"] == 500.0 and values["remaining_charge"] == 476.91


def test_a_pack_advertising_only_renogys_manufacturer_id_is_found() -> None:
    # What BlueZ hands over before the name arrives: the 0xE14C data of the RNGC122BAT advertisement.
    sightings = _sightings(RNGC_ADDRESS, None, RNGC_MANUFACTURER)
    assert list(sightings) == [RNGC_ADDRESS]
    assert sightings[RNGC_ADDRESS].family is Family.PRO  # as renogy-ble: the Pro id alone means Pro
    named = _sightings(RNGC_ADDRESS, RNGC_NAME, RNGC_MANUFACTURER)
    assert named[RNGC_ADDRESS].family is Family.PRO
    # A BT-2's manufacturer data is its MAC, not a company id: it is found by name, as before.
    assert _sightings("60:98:66:ED:FC:11", "BT-TH-66EDFC11", {39008: b"\x66\xed\xfc\x11"})
    assert not _sightings("11:22:33:44:55:66", "SomethingElse", {0x004C: b"\x02\x15"})


def test_family_for_advertisement_lets_the_name_win() -> None:
    assert registers.family_for_advertisement(RNGPRO_NAME, {0xE14C: b""}) is Family.RNGPRO
    assert registers.family_for_advertisement("RNGRBP1228000830", {0xE14C: b""}) is Family.PRO
    assert registers.family_for_advertisement("BT-TH-FD86824D  ", {}) is Family.BT2
    assert registers.family_for_advertisement("", {0xE14C: b""}) is Family.PRO
    assert registers.family_for_advertisement("Phone", {}) is None


# --- (b) the RNGPRO alarm block ----------------------------------------------------------------------


def test_rngpro_alarm_block_is_not_read_as_alarms() -> None:
    vector = _vector(
        "rb-rngpro-5100x8"
    )  # renogy-ble test_battery_rngpro.py MOSFET_STATUS, real RBT12500LFP-SHBT
    words = _registers(vector["response_hex"], 5100)
    assert registers.decode_block(5100, words)["cell_voltage_alarms"] == 0xAA  # every cell "high" at 3.3 V
    values = registers.decode_block(5100, words, family=registers.family_for_name(RNGPRO_NAME))
    for name in ("cell_voltage_alarms", "cell_temperature_alarms", "other_alarms", "status1"):
        assert name not in values, name
    assert values["charge_mosfet_on"] is True and values["discharge_mosfet_on"] is True
    assert values["heater_on"] is False and values["status2"] == 0
    assert registers.problems(values) is None  # unknown, not "alarm": no alarm word of this family is read


# --- (c) protection trips ----------------------------------------------------------------------------

TRACE_5104 = _vector("trace-30-5104")["response_hex"]  # charlieh0tel/renogy-rs traces/renogy-bt.btsnoop


def _trace_5104_with(status1: int | None = None, status3: int | None = None) -> list[int]:
    """Derived: the trace's 5104 x 28 reply with Status1 (5106) or Status3 (5108) replaced."""
    words = _registers(TRACE_5104, 5104)
    if status1 is not None:
        words[2] = status1
    if status3 is not None:
        words[4] = status3
    return words


def test_real_status_words_raise_no_problem() -> None:
    values = registers.decode_block(5104, _registers(TRACE_5104, 5104))
    assert values["status1"] == 0x000E and registers.problems(values) == []


@pytest.mark.parametrize(
    ("status1", "status3", "expected"),
    [
        (0x000E | 1 << 0, None, ["short circuit"]),
        (0x000E | 1 << 6, None, ["module over-voltage"]),
        (0x000E | 1 << 15, None, ["module under-voltage"]),
        (0x000E | 1 << 9 | 1 << 5, None, ["discharge over-current 2", "charge over-current 1"]),
        (0x000E | 1 << 8, None, ["cell over-voltage"]),
        (None, 0b101, ["cell 1 voltage error", "cell 3 voltage error"]),
    ],
)
def test_protection_bits_are_problems(status1: int | None, status3: int | None, expected: list[str]) -> None:
    values = registers.decode_block(5104, _trace_5104_with(status1, status3))
    assert registers.problems(values) == expected


def test_alarm_words_name_their_cells() -> None:
    assert registers.problems({"cell_voltage_alarms": 0b01 << 6 | 0b10}) == [
        "cell 1 voltage high",
        "cell 4 voltage low",
    ]
    assert registers.problems({"other_alarms": 0b10 << 30}) == ["BMS board temperature high"]
    assert registers.problems({"fully_charged": True}) is None  # no alarm or status word known


# --- (d) one bad sensor ---------------------------------------------------------------------------------

TRACE_5000 = _vector("trace-30-5000-a")["response_hex"]  # charlieh0tel/renogy-rs btsnoop, RBT50LFP48S @0x30


def test_one_bad_temperature_or_cell_keeps_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    words = _registers(TRACE_5000, 5000)
    good = registers.decode_block(5000, words)
    words[18 + 2] = 0x8000  # derived: temperature 3 reads 0x8000 (no sensor)
    words[1 + 4] = 0x0000  # derived: cell 5 reads 0 V
    values, dropped = registers.decode_screened(5000, words)
    temps, cells = values["temperatures"], values["cell_voltages"]
    assert isinstance(temps, list) and isinstance(cells, list)
    assert temps[2] is None and cells[4] is None
    assert [t for i, t in enumerate(temps) if i != 2] == [
        t for i, t in enumerate(good["temperatures"]) if i != 2
    ]  # type: ignore[arg-type]
    assert [c for i, c in enumerate(cells) if i != 4] == [
        c for i, c in enumerate(good["cell_voltages"]) if i != 4
    ]  # type: ignore[arg-type]
    assert dropped == [
        "cell_voltages[5] = 0.0 V outside 2.0..4.5 (raw 0x0000)",
        "temperatures[3] = -3276.8 °C outside -40.0..90.0 (raw 0x8000)",
    ]
    assert registers.decode_checked(5000, words)["temperatures"] == temps  # no BlockError any more


def test_a_reading_with_a_dropped_sensor_is_accepted() -> None:
    payload = {"schema": 1, "ts": 1000.0, "bt2": "c464e3383d0e", "slave_id": 48, "complete": True,
               "cell_voltages": [3.4, None, 3.5], "temperatures": [13.0, None]}  # fmt: skip
    reading = parse_reading(json.dumps(payload))
    assert reading.cell_voltages == (3.4, None, 3.5) and reading.temperatures == (13.0, None)


raw_temperature = st.integers(0, 0xFFFF)


@given(st.integers(0, 16), st.lists(raw_temperature, min_size=16, max_size=16))
def test_screening_drops_exactly_the_out_of_range_sensors(count: int, raws: list[int]) -> None:
    words = [0] * 17 + [count, *raws]
    values, dropped = registers.decode_screened(5000, words[:34])
    temps = values["temperatures"]
    assert isinstance(temps, list) and len(temps) == count
    low, high = registers.TEMPERATURE_RANGE
    for raw, item in zip(raws, temps, strict=False):
        signed = raw - 0x10000 if raw & 0x8000 else raw
        assert item == (None if not low <= signed / 10 <= high else round(signed * 0.1, 1))
    assert len([d for d in dropped if d.startswith("temperatures")]) == sum(1 for t in temps if t is None)


# --- (e) short reads and frames decoded as the wrong register --------------------------------------------


def test_a_short_temperature_read_decodes_what_it_holds() -> None:
    result = decode_frame(5017, GB_5017X5)
    assert result["temperature_count"] == 3 and result["temperatures"] == [20.0, 19.0, 19.0]
    assert "warnings" not in result
    # The simulator answers the same read with the same words (4th sensor word is beyond the count).
    words = registers.encode_block(5017, 5, {"temperature_count": 3, "temperatures": [20.0, 19.0, 19.0]})
    assert words[:4] == _registers(GB_5017X5, 5017)[:4]


def test_a_frame_decoded_as_the_wrong_register_warns() -> None:
    result = decode_frame(5000, _vector("gb-30-5104x4")["response_hex"])  # 5104 x 4 decoded as 5000 x 4
    assert result["cell_count"] == 0
    assert any("cell_count = 0" in w for w in result["warnings"])
    status = decode_frame(5000, _vector("trace-30-5042")["response_hex"])  # 5042 x 6 read as 5000 x 6
    assert status["cell_count"] == 0 and status["warnings"]
    with pytest.raises(ValueError, match=r"temperature_count = 12601 .*another register"):
        decode_frame(5000, TRACE_5104)  # the 5104 x 28 reply decoded as if it were 5000 x 28
    assert decode_frame(5042, TRACE_5000)["warnings"][0].startswith("a battery refuses a read of 5042 x 34")
    good = decode_frame(5000, TRACE_5000)
    assert "warnings" not in good


@given(st.integers(1, 17), st.integers(0, 16), st.lists(st.integers(0, 0x7FFF), min_size=16, max_size=16))
def test_a_prefix_of_the_temperature_block_agrees_with_the_whole(
    words: int, count: int, raws: list[int]
) -> None:
    block = [count, *raws]
    whole = registers.decode_block(5017, block)
    part = registers.decode_block(5017, block[:words])
    assert part["temperature_count"] == count
    if words > 1:
        assert part["temperatures"] == whole["temperatures"][: words - 1]  # type: ignore[index]
    else:
        assert "temperatures" not in part


# --- (f) the cycle count byte order ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame_hex", "family", "cycles"),
    [
        (RNGPRO_PACK_STATUS, "rngpro", 24),  # renogy-ble: real RBT12500LFP-SHBT, its own readout 24
        (_vector("abp-30-5042x7")["response_hex"], "pro", 6),  # aiobmsble Renogy Pro mock "6 cycles"
        (_vector("ab-30-5042x7")["response_hex"], "bt2", 15),  # aiobmsble RBT100LFP12-BT mock
    ],
)
def test_cycle_count_is_big_endian_in_every_frame_that_has_it(
    frame_hex: str, family: str, cycles: int
) -> None:
    assert (
        registers.decode_block(5042, _registers(frame_hex, 5042), family=Family(family))["cycle_count"]
        == cycles
    )
