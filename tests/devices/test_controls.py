"""Opt-in controls, sans-IO: the load switch as data, the command checks, and a write against the
real simulator model, framed and reassembled as on the wire."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.simulator.models import (
    ControllerModel,
    DccModel,
    InverterModel,
    ShuntModel,
    SimBank,
    WriteRefused,
    read,
    write,
)
from services.simulator.physics import HOUR
from shared.controls import (
    MAX_DEADLINE_AHEAD,
    Accepted,
    Reason,
    Result,
    check_command,
    command_payload,
    confirm,
    failed,
    parse_command,
    parse_result,
)
from shared.devices import FAMILIES, RegField, decode
from shared.devices.base import ControlDef, DeviceFamily, EntityDef
from shared.devices.controller import LOAD_SWITCH
from shared.modbus import (
    FrameError,
    FrameErrorKind,
    WriteAssembler,
    WriteRequest,
    WriteResponse,
    decode_request,
    encode_exception_response,
    encode_write_response,
)
from shared.payloads import PayloadError
from shared.topics import Topics
from tests.support.fuzz import budget

CONTROLLER = FAMILIES["controller"]
BT2 = "a4c138000001"
NOW = 1_764_633_600.0
TARGET = (BT2, "controller", 0xFF)
CONFIGURED = {TARGET}


def _command(state: object = True, **changes: Any) -> bytes:
    body: dict[str, Any] = command_payload("load_switch", True, "c-1", NOW + 10)
    body["state"] = state
    body.update(changes)
    return orjson.dumps(body)


def _check(payload: bytes, target: tuple[str, str, int] = TARGET, **kw: Any) -> Accepted | Result:
    options: dict[str, Any] = {"enabled": True, "configured": CONFIGURED, "now": NOW} | kw
    return check_command(target, payload, **options)


# --- the load switch as data ------------------------------------------------------------------


def test_controller_load_switch_is_register_0x010a_read_back_from_0x0120_bit_15() -> None:
    assert CONTROLLER.controls == (LOAD_SWITCH,)
    assert CONTROLLER.get_control("load_switch") is LOAD_SWITCH
    assert (LOAD_SWITCH.register, LOAD_SWITCH.raw(True), LOAD_SWITCH.raw(False)) == (0x010A, 1, 0)
    field = CONTROLLER.get_field(LOAD_SWITCH.readback)
    assert field is not None and (field.address, field.shift, field.flag) == (0x0120, 15, True)
    spec = LOAD_SWITCH.spec
    assert (spec.key, spec.platform, spec.device_class) == ("load_switch", "switch", "outlet")
    # 0x0120 = 0x8002: load on, brightness 0, charging state mppt.
    values, _ = decode(CONTROLLER, 0x0120, [0x8002])
    assert LOAD_SWITCH.compute(values) is True
    assert LOAD_SWITCH.compute(decode(CONTROLLER, 0x0120, [0x0002])[0]) is False
    assert LOAD_SWITCH.compute({}) is None


def test_only_the_controller_has_controls() -> None:
    assert [kind for kind, fam in FAMILIES.items() if fam.controls] == ["controller"]


def test_family_refuses_a_control_that_cannot_be_read_back_or_clashes() -> None:
    fields = (RegField(0x10, "flag", flag=True), RegField(0x11, "number"))
    base: dict[str, Any] = {"kind": "controller", "title": "t", "fields": fields, "blocks": (), "ranges": {}}
    base["identity"] = ()
    with pytest.raises(ValueError, match="reads back 'number', not a flag"):
        DeviceFamily(**base, controls=(ControlDef("x", "X", 0x20, readback="number"),))
    with pytest.raises(ValueError, match="duplicate entity keys"):
        DeviceFamily(
            **base,
            entities=(EntityDef("x", "X", "flag"),),
            controls=(ControlDef("x", "X", 0x20, readback="flag"),),
        )
    with pytest.raises(ValueError, match="differ"):
        ControlDef("x", "X", 0x20, readback="flag", on=1, off=1)


# --- the simulator: a write to 0x010A switches the load --------------------------------------


def test_simulated_load_follows_the_write_and_stops_drawing_the_bank() -> None:
    on = ControllerModel(bank=SimBank(200.0, 0.8), load_w=60.0, start=0.0)
    off = ControllerModel(bank=SimBank(200.0, 0.8), load_w=60.0, start=0.0)
    assert write(off, 0x010A, 0, 1 * HOUR) == 0  # the echo
    reading = decode(CONTROLLER, 0x0100, _registers(off, 5 * HOUR))[0]
    assert reading["load_on"] is False and reading["load_power"] == 0 and reading["load_current"] == 0
    assert decode(CONTROLLER, 0x0100, _registers(on, 5 * HOUR))[0]["load_power"] == 60
    assert off.bank.soc > on.bank.soc  # no PV at night: only the switched-on load drained its bank
    assert write(off, 0x010A, 1, 5 * HOUR) == 1
    assert decode(CONTROLLER, 0x0100, _registers(off, 5 * HOUR + 10))[0]["load_on"] is True


def _registers(model: ControllerModel, t: float, start: int = 0x0100, count: int = 34) -> list[int]:
    answer = read(model, start, count, t)
    assert isinstance(answer, list)
    return answer


@pytest.mark.parametrize(
    ("model", "register", "value", "code"),
    [
        (ControllerModel(), 0x0100, 1, 0x02),  # readable, not writable
        (ControllerModel(), 0xE004, 4, 0x02),  # battery type: not a control here
        (ControllerModel(), 0x010A, 2, 0x03),  # neither on nor off
        (DccModel(), 0x010A, 1, 0x02),
        (InverterModel(), 0x010A, 1, 0x02),
        (ShuntModel(), 0x010A, 1, 0x01),  # notify-only: no Modbus at all
    ],
)
def test_other_writes_are_refused_as_a_real_device_would(
    model: Any, register: int, value: int, code: int
) -> None:
    assert write(model, register, value, 11 * HOUR) == WriteRefused(code)
    if isinstance(model, ControllerModel):
        assert model.load_enabled is True


# --- the whole exchange, framed as on the wire ---------------------------------------------------


def _exchange(model: ControllerModel, payload: bytes, t: float) -> Result:
    """What the reader will do: check, write, reassemble the echo, read back, confirm."""
    verdict = _check(payload)
    assert isinstance(verdict, Accepted), verdict
    request = decode_request(verdict.write.encode())  # the simulator's side of the link
    assert isinstance(request, WriteRequest)
    answer = write(model, request.register, request.value, t)
    reply = (
        encode_exception_response(0xFF, 0x06, answer.code)
        if isinstance(answer, WriteRefused)
        else encode_write_response(0x01, request.register, answer)
    )
    assembler = WriteAssembler(verdict.write)
    events = assembler.feed(reply[:3]) + assembler.feed(reply[3:])  # split like 20-byte notifications
    assert len(events) == 1
    event = events[0]
    if isinstance(event, FrameError):
        return failed(verdict, Reason.DEVICE_REFUSED, str(event))
    assert isinstance(event, WriteResponse)
    registers = _registers(model, t + 1, verdict.readback.start, verdict.readback.count)
    return confirm(verdict, registers)


def test_switching_the_simulated_load_off_and_on_reports_the_read_back() -> None:
    model = ControllerModel(start=0.0)
    result = _exchange(model, _command(False), 2 * HOUR)
    assert result == Result(None, "load_switch is off (read back)", "c-1", "load_switch", False)
    assert result.ok and model.load_enabled is False
    assert _exchange(model, _command(True), 3 * HOUR).state is True


def test_state_follows_the_read_back_not_the_request() -> None:
    # An empty bank: the controller's low-voltage disconnect keeps the load off whatever is written.
    model = ControllerModel(bank=SimBank(200.0, 0.02), start=0.0)
    result = _exchange(model, _command(True), 2 * HOUR)
    assert result.reason is Reason.READBACK_MISMATCH and result.state is False
    assert str(result) == "readback_mismatch: load_switch reads back off after writing on"


def test_confirm_without_a_decodable_read_back_is_no_reply() -> None:
    verdict = _check(_command(True))
    assert isinstance(verdict, Accepted)
    assert (verdict.readback.start, verdict.readback.count) == (0x0120, 1)
    assert confirm(verdict, [0x1_0000]).reason is Reason.NO_REPLY


def test_a_device_exception_is_device_refused() -> None:
    verdict = _check(_command(True))
    assert isinstance(verdict, Accepted)
    [event] = WriteAssembler(verdict.write).feed(encode_exception_response(0xFF, 0x06, 0x04))
    assert isinstance(event, FrameError) and event.kind is FrameErrorKind.EXCEPTION
    result = failed(verdict, Reason.DEVICE_REFUSED, str(event))
    assert result.payload(NOW)["reason"] == "device_refused" and result.state is None


# --- refusals: one distinct reason per cause ------------------------------------------------------

REFUSALS: list[tuple[str, bytes, dict[str, Any], Reason, str]] = [
    ("controls off", _command(True), {"enabled": False}, Reason.DISABLED, "controls are off"),
    ("not JSON", b"{on", {}, Reason.BAD_PAYLOAD, "not JSON"),
    ("old schema", _command(True, schema=0), {}, Reason.BAD_PAYLOAD, "schema"),
    ("no id", _command(True, id=None), {}, Reason.BAD_PAYLOAD, "id must be"),
    ("no deadline", _command(True, deadline="soon"), {}, Reason.BAD_PAYLOAD, "deadline must be"),
    ("far deadline", _command(True, deadline=NOW + 3600), {}, Reason.BAD_PAYLOAD, "clocks out of step"),
    ("not configured", _command(True), {"configured": set()}, Reason.NOT_CONFIGURED, "no controller 255"),
    ("no such key", _command(True, key="pv_power"), {}, Reason.UNKNOWN_KEY, "known: load_switch"),
    ("text state", _command("ON"), {}, Reason.BAD_VALUE, "got 'ON'"),
    ("number state", _command(1), {}, Reason.BAD_VALUE, "got 1"),
    (
        "missing state",
        orjson.dumps({"schema": 1, "id": "x", "key": "k", "deadline": NOW}),
        {},
        Reason.BAD_PAYLOAD,
        "state is missing",
    ),
    ("stale", _command(True, deadline=NOW - 2.5), {}, Reason.STALE, "deadline passed 2.5 s ago"),
    (
        "broadcast on a shared bus",
        _command(True),
        {"configured": {TARGET, (BT2, "battery", 0x30)}},
        Reason.AMBIGUOUS_SLAVE,
        "slave 255 reaches every device",
    ),
]


@pytest.mark.parametrize(
    ("case", "payload", "options", "reason", "text"), REFUSALS, ids=[r[0] for r in REFUSALS]
)
def test_each_refusal_has_its_reason_and_one_line(
    case: str, payload: bytes, options: dict[str, Any], reason: Reason, text: str
) -> None:
    verdict = _check(payload, **options)
    assert isinstance(verdict, Result), case
    assert verdict.reason is reason and not verdict.ok
    assert text in str(verdict) and "\n" not in str(verdict)
    body = orjson.loads(orjson.dumps(verdict.payload(NOW)))
    assert body["ok"] is False and body["reason"] == reason.value and body["state"] is None
    assert parse_result(orjson.dumps(body)) == verdict


def test_refusals_keep_the_command_id_for_the_result() -> None:
    cases: list[tuple[bytes, dict[str, Any]]] = [
        (_command(True), {"enabled": False}),
        (_command("ON"), {}),
        (_command(True), {"now": NOW + 60}),
    ]
    for payload, options in cases:
        verdict = _check(payload, **options)
        assert isinstance(verdict, Result) and verdict.command_id == "c-1", verdict


def test_kinds_without_controls_and_unknown_kinds() -> None:
    battery = (BT2, "battery", 0x30)
    verdict = _check(_command(True), battery, configured={battery})
    assert isinstance(verdict, Result) and verdict.reason is Reason.UNKNOWN_KEY
    assert "known: none" in verdict.detail
    verdict = _check(_command(True), (BT2, "toaster", 1), configured={(BT2, "toaster", 1)})
    assert isinstance(verdict, Result) and verdict.reason is Reason.NOT_CONFIGURED


def test_an_accepted_command_writes_the_configured_slave() -> None:
    target = (BT2, "controller", 0x11)
    verdict = _check(_command(False), target, configured={target, (BT2, "battery", 0x30)})
    assert isinstance(verdict, Accepted)
    assert verdict.write == WriteRequest(0x11, 0x010A, 0)
    assert verdict.write.encode().hex()[:12] == "1106010a0000"
    assert verdict.command.deadline - NOW <= MAX_DEADLINE_AHEAD


def test_parse_command_returns_a_typed_command() -> None:
    command = parse_command(_command(False))
    assert (command.id, command.key, command.state, command.deadline) == (
        "c-1",
        "load_switch",
        False,
        NOW + 10,
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
command_like = st.fixed_dictionaries(
    {},
    optional={
        "schema": st.sampled_from([1, 1, 2, "1"]),
        "id": st.text(max_size=70) | json_values,
        "key": st.sampled_from(["load_switch", "LOAD", ""]) | json_values,
        "state": json_values,
        "deadline": st.floats(allow_nan=True) | json_values,
    },
)


@settings(max_examples=budget(300))
@given(st.binary(max_size=80) | command_like.map(orjson.dumps))
def test_hostile_commands_give_a_result_never_an_exception(payload: bytes) -> None:
    verdict = _check(payload)
    assert isinstance(verdict, Accepted | Result)
    if isinstance(verdict, Result):
        assert verdict.reason is not None and "\n" not in verdict.detail
    with contextlib.suppress(PayloadError):
        parse_command(payload)


@settings(max_examples=budget(300))
@given(
    st.binary(max_size=80)
    | st.fixed_dictionaries(
        {"schema": st.just(1)},
        optional={
            "id": json_values,
            "key": json_values,
            "ok": json_values,
            "reason": st.sampled_from([r.value for r in Reason]) | json_values,
            "detail": json_values,
            "state": json_values,
        },
    ).map(orjson.dumps)
)
def test_hostile_results_raise_only_payload_error(payload: bytes) -> None:
    try:
        result = parse_result(payload)
    except PayloadError:
        return
    assert result.ok is (result.reason is None)


# --- topics --------------------------------------------------------------------------------------


def test_command_and_result_topics() -> None:
    topics = Topics()
    assert topics.device_command(BT2, "controller", 255) == f"renogy/bt2/{BT2}/controller/255/set"
    assert topics.parse_device_command(f"renogy/bt2/{BT2}/controller/255/set") == TARGET
    assert topics.device_result(BT2, "controller", 1) == f"renogy/bt2/{BT2}/controller/1/result"
    assert topics.parse_device_result(topics.device_result(BT2, "controller", 1)) == (BT2, "controller", 1)
    assert topics.command_filter(BT2) == f"renogy/bt2/{BT2}/+/+/set"
    assert topics.command_filter() == "renogy/bt2/+/+/+/set"
    assert topics.result_filter == "renogy/bt2/+/+/+/result"
    # Each leaf parses only as itself, with the reading topic's rules.
    assert topics.parse_device_reading(f"renogy/bt2/{BT2}/controller/255/set") is None
    assert topics.parse_device_command(f"renogy/bt2/{BT2}/controller/255/reading") is None
    assert not topics.reading_topic_shape(topics.device_command(BT2, "controller", 1))
    for bad in (
        f"renogy/bt2/{BT2}/controller/256/set",
        f"renogy/bt2/{BT2}/controller/²/set",
        f"renogy/bt2/{BT2}/battery/0/set",
        f"renogy/bt2/{BT2.upper()}/controller/1/set",
        f"renogy/bt2/{BT2}/controller/1/set/x",
        f"other/bt2/{BT2}/controller/1/set",
    ):
        assert topics.parse_device_command(bad) is None, bad
