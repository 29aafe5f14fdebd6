"""`renogy-proxy probe-bus` (issue 14): which kind answers at which slave id, told by each family's
identity register; the classifier on real captured frames, the probe plan, and the tool on the simulator."""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from services.cli import main
from services.reader.bus_probe import (
    BATTERY_PROBES,
    CHARGER_PROBES,
    DEFAULT_IDS,
    INVERTER_PROBES,
    BusProbe,
    Finding,
    Probe,
    classify,
    config_entries,
    config_lines,
    parse_ids,
    probes_for,
)
from services.reader.link import Exchange
from services.tools import probe_bus
from shared.config import load_config
from shared.devices.battery import HUB_SLAVE_IDS
from shared.modbus import ReadRequest, ReadResponse, ResponseAssembler
from tests.deploy.support import cli

ROOT = Path(__file__).resolve().parents[2]
DEVICES = ROOT / "tests" / "data" / "devices"
SHARED_VECTORS = Path("/work/shared/vectors/renogy-frames.json")
FOUR = "battery:48,battery:49,controller:1,dcc:96"
FAST = {"RENOGY_SIM_LATENCY_SCALE": "0.02"}  # replies in milliseconds: a silent id costs the deadline


def _registers(slave: int, start: int, words: int, response_hex: str) -> tuple[int, ...]:
    events = ResponseAssembler(ReadRequest(slave, start, words)).feed(bytes.fromhex(response_hex))
    response = next(e for e in events if isinstance(e, ReadResponse))
    return response.registers


def _vectors() -> list[dict[str, Any]]:
    found = [
        v for kind in ("battery", "controller", "dcc", "inverter") for v in _load(DEVICES / f"{kind}.json")
    ]
    if SHARED_VECTORS.exists():  # the brief's vectors; tests/data/devices carries copies of the frames used
        found += [
            {**v, "slave": v["device_id"]}
            for v in json.loads(SHARED_VECTORS.read_text())
            if v.get("response_hex") and v.get("crc_valid") and isinstance(v.get("device_id"), int)
        ]
    return found


def _load(path: Path) -> list[dict[str, Any]]:
    return list(json.loads(path.read_text())["vectors"])


def _reply(vector_id: str, start: int, words: int) -> tuple[int, ...]:
    vector = next(v for v in _vectors() if v["id"] == vector_id)
    assert (vector["register"], vector["words"]) == (start, words), vector_id
    return _registers(vector["slave"], start, words, vector["response_hex"])


@pytest.mark.parametrize(
    ("vector_id", "probe", "expected"),
    [
        ("gb-30-5122", BATTERY_PROBES[0], ("battery", "RBT100LFP12S-G1")),  # BT-2 + RBT100LFP12S-G1
        ("ab-30-5122x8", BATTERY_PROBES[0], ("battery", "RBT100LFP12-BT")),
        ("rb-rvr40-000cx8", CHARGER_PROBES[0], ("controller", "RNG-CTRL-RVR40")),  # "  RNG-CTRL-RVR40"
        ("rb-riv4835-4000x10", INVERTER_PROBES[1], ("inverter", None)),  # the RIV refuses 4311
    ],
)
def test_classify_real_identity_replies(
    vector_id: str, probe: Probe, expected: tuple[str, str | None]
) -> None:
    assert classify(probe, _reply(vector_id, probe.start, probe.words)) == expected


def test_classify_a_cell_count_from_real_cell_replies() -> None:
    # The first word of a real 5000 x 34 reply is what 5000 x 1 returns: the cells in series.
    replies = [v for v in _vectors() if v["register"] == 5000 and v["words"] == 34]
    assert len(replies) >= 4
    for vector in replies:
        registers = _registers(vector["slave"], 5000, 34, vector["response_hex"])
        assert classify(BATTERY_PROBES[1], registers[:1]) == ("battery", None), vector["id"]


def _text(model: str) -> list[int]:
    raw = model.encode().ljust(16, b"\x00")
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, 16, 2)]


@pytest.mark.parametrize(
    "model", ["DCC50S", "DCC30S", "RBC20D1U", "RBC50D1S-G1", "RBC2125DS-21W", "rbc30d1s"]
)
def test_a_dc_dc_model_at_0x000c_is_a_dcc(model: str) -> None:
    # Same register map as a Rover: only the model text tells them apart (renogy-ha DCC_MODEL_PATTERN).
    assert classify(CHARGER_PROBES[0], _text(model)) == ("dcc", model)


@pytest.mark.parametrize("model", ["RNG-CTRL-RVR40", "RNG-CTRL-WND30", "RBC1218S0"])
def test_other_models_at_0x000c_are_controllers(model: str) -> None:
    assert classify(CHARGER_PROBES[0], _text(model)) == ("controller", model)


@pytest.mark.parametrize(
    ("probe", "registers"),
    [
        (BATTERY_PROBES[0], [0] * 8),  # blank model text proves nothing
        (BATTERY_PROBES[0], [0x0102] * 8),  # not text
        (BATTERY_PROBES[1], [0]),
        (BATTERY_PROBES[1], [200]),  # no pack has 200 cells in series
        (CHARGER_PROBES[0], [0] * 8),
        (INVERTER_PROBES[0], [0] * 8),
        (INVERTER_PROBES[1], [0] * 10),  # an all-zero block from a device that maps nothing there
        (CHARGER_PROBES[0], _text("RNG-CTRL-RVR40")[:4]),  # not the length asked for
    ],
)
def test_classify_refuses_replies_that_identify_nothing(probe: Probe, registers: list[int]) -> None:
    assert classify(probe, registers) is None


def test_default_ids_cover_every_family_default_once() -> None:
    expected = {*range(1, 17), 32, *range(48, 64), *HUB_SLAVE_IDS, 96, 255, 247}
    assert set(DEFAULT_IDS) == expected and len(DEFAULT_IDS) == len(expected)
    assert DEFAULT_IDS[0] == 255  # on the fresh connection: no late reply can be taken for its answer
    assert probes_for(48)[0].family == "battery" and probes_for(1)[0].family == "controller"
    assert probes_for(32)[0] == INVERTER_PROBES[0] and probes_for(96)[0] == CHARGER_PROBES[0]
    for slave in DEFAULT_IDS:
        families = {p.family for p in probes_for(slave)}
        assert families == {"battery", "controller", "inverter"}, slave


def test_parse_ids() -> None:
    assert parse_ids("1-3, 0x30,255,2") == [1, 2, 3, 48, 255]
    for bad, why in (("0", "outside 1..255"), ("9-3", "outside"), ("x", "not an id"), (",", "no slave id")):
        with pytest.raises(ValueError, match=why):
            parse_ids(bad)


Bus = dict[tuple[int, int], Sequence[int] | str]  # (slave, start) -> registers or "refused"; absent = silent


def _drive(ids: Sequence[int], bus: Bus) -> tuple[BusProbe, list[tuple[ReadRequest, bool]]]:
    """The core against a modelled bus: every request sent, with whether a reconnect came first."""
    prober = BusProbe(ids)
    sent: list[tuple[ReadRequest, bool]] = []
    while (step := prober.next_step()) is not None:
        assert len(sent) < 200
        sent.append((step.request, step.reconnect))
        if step.reconnect:
            prober.reconnected()
        answer = bus.get((step.slave, step.probe.start))
        if answer is None:
            prober.silent()
        elif answer == "refused":
            prober.refused()
        else:
            assert not isinstance(answer, str)
            prober.answered(answer, step.slave)
    return prober, sent


def test_a_silent_id_costs_one_request() -> None:
    prober, sent = _drive(DEFAULT_IDS, {})
    assert [request.slave for request, _ in sent] == list(DEFAULT_IDS)
    # Every id may still answer the read of 255: one reconnect after it, none after a silent id.
    assert [i for i, (_, reconnect) in enumerate(sent) if reconnect] == [1]
    assert prober.findings == []


def test_a_refusal_moves_to_the_next_family_and_a_late_reply_cannot_pass_for_an_answer() -> None:
    rover: Bus = {(5, 0x000C): "refused", (5, 5122): "refused", (5, 4311): _text("RIV4835CSH1S")}
    prober, sent = _drive([5, 6], rover)  # 5000 x 1 silent: someone is there, keep probing id 5
    assert [(r.slave, r.start) for r, _ in sent] == [
        (5, 0x000C),
        (5, 5122),
        (5, 5000),
        (5, 4311),
        (6, 0x000C),
    ]
    # After the silent 5000 x 1, a read of another block of the same slave reconnects first.
    assert [reconnect for _, reconnect in sent] == [False, False, False, True, False]
    assert [f.line() for f in prober.findings] == ["5 inverter RIV4835CSH1S"]


def test_after_a_timeout_a_read_of_255_reconnects_first() -> None:
    _, sent = _drive([7, 255, 8], {(255, 0x000C): _text("RNG-CTRL-RVR40")})
    assert [(r.slave, reconnect) for r, reconnect in sent] == [(7, False), (255, True), (8, False)]


def test_garbled_replies_are_retried_once_then_named() -> None:
    prober = BusProbe([255, 9])
    first = prober.next_step()
    prober.garbled("bad_crc")
    again = prober.next_step()
    assert first is not None and again is not None and again.request == first.request
    prober.garbled("bad_crc")
    step = prober.next_step()
    assert step is not None and step.slave == 9
    assert prober.findings[0].kind is None and "several devices answer this id" in prober.findings[0].line()


def test_config_entries_list_batteries_first_and_255_once() -> None:
    findings = [
        Finding(255, "controller", "RNG-CTRL-RVR40", responder=1),
        Finding(1, "controller", "RNG-CTRL-RVR40"),
        Finding(96, "dcc", "RBC50D1S-G1"),
        Finding(49, "battery", "RBT50LFP48S"),
        Finding(48, "battery", "RBT50LFP48S"),
        Finding(20, note="answered, but not as a battery, controller, DC-DC charger or inverter"),
    ]
    entries = config_entries(findings)
    assert entries == ["battery:48", "battery:49", "controller:1", "dcc:96"]
    assert config_lines(entries) == [
        'devices = ["battery:48", "battery:49", "controller:1", "dcc:96"]',
        "RENOGY_DEVICES=battery:48,battery:49,controller:1,dcc:96",
    ]
    assert config_entries([Finding(255, "controller", "RNG-CTRL-RVR40", responder=16)]) == ["controller:255"]


def test_probe_bus_on_the_simulator_finds_exactly_the_four_devices() -> None:
    done = cli("probe-bus", "--simulate", "--sim-devices", FOUR, "--timeout", "0.2", env=FAST)
    assert done.code == 0, done.err
    lines = done.out.splitlines()
    assert lines[:4] == [
        "1 controller RNG-CTRL-RVR40",
        "48 battery RBT50LFP48S",
        "49 battery RBT50LFP48S",
        "96 dcc RBC50D1S-G1",
    ]
    assert lines[4:] == [
        'devices = ["battery:48", "battery:49", "controller:1", "dcc:96"]',
        "RENOGY_DEVICES=battery:48,battery:49,controller:1,dcc:96",
    ]
    assert f"probing {len(DEFAULT_IDS)} slave ids" in done.err and "at most" in done.err
    assert "255 ? garbled replies" in done.err  # the four answer 255 at once: a collision, not a device
    # The printed line is one the configuration takes, and reads these four.
    config = load_config(environ={"RENOGY_DEVICES": lines[-1].partition("=")[2]})
    assert config.reader.batteries == [48, 49] and config.reader.devices == ["controller:1", "dcc:96"]


def test_probe_bus_where_nobody_answers_exits_1_with_a_hint() -> None:
    done = cli(
        "probe-bus", "--simulate", "--sim-devices", FOUR, "--ids", "200,201", "--timeout", "0.2", env=FAST
    )
    assert done.code == 1, done.err
    assert done.out == ""
    assert "nothing identified: no slave id answered" in done.err and "--ids" in done.err


async def test_probe_bus_only_reads_one_request_at_a_time_and_reads_255_alone() -> None:
    config = load_config(
        environ={},
        overrides={
            "simulator.enabled": True,
            "simulator.devices": ["battery:48"],
            "simulator.latency_scale": 0.02,
        },
    )
    exchanges: list[Exchange] = []
    out, err = io.StringIO(), io.StringIO()
    code = await probe_bus(
        config, ids=[255, 3, 48], timeout=0.2, out=out, err=err, on_exchange=exchanges.append
    )
    assert code == 0, err.getvalue()
    # A battery alone answers 255 as its own id: listed once in the configuration, at 48.
    assert out.getvalue().splitlines() == [
        "255 battery RBT50LFP48S (answers as 48)",
        "48 battery RBT50LFP48S",
        'devices = ["battery:48"]',
        "RENOGY_DEVICES=battery:48",
    ]
    assert exchanges and all(isinstance(e.request, ReadRequest) for e in exchanges)  # never a write
    for earlier, later in itertools.pairwise(exchanges):
        assert later.sent_at >= earlier.ended_at  # never two requests at once
    # 255: the controller probe first (refused by the battery), then its model; 3: silent; 48: the model.
    reads = [(e.request.slave, e.request.start) for e in exchanges if isinstance(e.request, ReadRequest)]
    assert reads == [(255, 0x000C), (255, 5122), (3, 0x000C), (48, 5122)]


def test_probe_bus_rejects_bad_ids_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["probe-bus", "--ids", "0-4"])
    assert done.value.code == 2
    assert "outside 1..255" in capsys.readouterr().err
