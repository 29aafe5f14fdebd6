"""Opt-in controls: the command and result payloads, and every check before a write (sans-IO).

Flow (docs/devices.md "Controls", docs/mqtt.md "Controls"): the gateway turns a SwitchCommandRequest
into :func:`command_payload` on ``<root>/bt2/<bt2>/<kind>/<slave>/set``; the reader that owns the
BT-2 calls :func:`check_command`, which returns an :class:`Accepted` (the Modbus write and the
read-back request) or a refused :class:`Result`. After the write the reader reads the register back
and :func:`confirm` turns it into the published :class:`Result`; the switch state is always that
read-back, never the request. Nothing here trusts the payload or does I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from shared.devices import FAMILIES, BlockError, DeviceFamily, decode
from shared.devices.base import ControlDef
from shared.modbus import BROADCAST_SLAVE, ReadRequest, WriteRequest
from shared.payloads import PayloadError, clean_text, loads_object
from shared.topics import SCHEMA, valid_device_id

# How far ahead a deadline may lie: the gateway gives a few seconds; more means a clock out of step
# or a command meant to be replayed later, and a write must not outlive the user's intent.
MAX_DEADLINE_AHEAD: Final = 300.0
MAX_DETAIL: Final = 200
_COMMAND_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")

Target = tuple[str, str, int]  # (bt2 id, kind, slave id), as Topics.parse_device_command returns


class Reason(StrEnum):
    """Why a command did not switch anything (one per cause, for the log line and the result)."""

    # Refused before anything is written:
    DISABLED = "controls_disabled"  # controls = false on this reader
    BAD_PAYLOAD = "bad_payload"  # not JSON, wrong schema, missing or malformed fields
    NOT_CONFIGURED = "not_configured"  # no such kind/slave on this reader's BT-2
    UNKNOWN_KEY = "unknown_key"  # the device family has no control with this key
    BAD_VALUE = "bad_value"  # state is not true/false
    STALE = "stale"  # the deadline passed before the reader got to it
    AMBIGUOUS_SLAVE = "ambiguous_slave"  # slave 255 while other devices share the bus
    # After the write was sent:
    DEVICE_REFUSED = "device_refused"  # Modbus exception reply
    NO_REPLY = "no_reply"  # no (valid) echo or read-back: timeout, lost link, wrong answer
    READBACK_MISMATCH = "readback_mismatch"  # the device reports another state than requested


@dataclass(frozen=True, slots=True)
class Command:
    id: str
    key: str
    state: bool
    deadline: float  # wall-clock epoch seconds (time.time())


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome published on ``.../result``: ok when ``reason`` is None; ``state`` is the
    read-back state (None when unknown)."""

    reason: Reason | None
    detail: str
    command_id: str | None = None
    key: str | None = None
    state: bool | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    def __str__(self) -> str:
        return self.detail if self.reason is None else f"{self.reason}: {self.detail}"

    def payload(self, ts: float) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "id": self.command_id,
            "key": self.key,
            "ok": self.ok,
            "reason": None if self.reason is None else self.reason.value,
            "detail": self.detail[:MAX_DETAIL],
            "state": self.state,
            "ts": ts,
        }


@dataclass(frozen=True, slots=True)
class Accepted:
    """A command that passed every check: write ``write``, then read ``readback`` and :func:`confirm`."""

    command: Command
    family: DeviceFamily
    control: ControlDef
    write: WriteRequest
    readback: ReadRequest


class CommandError(PayloadError):
    """A command payload refused as it stands; ``reason`` is BAD_PAYLOAD or BAD_VALUE."""

    def __init__(self, reason: Reason, detail: str, command_id: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.command_id = command_id


def command_payload(key: str, state: bool, command_id: str, deadline: float) -> dict[str, Any]:
    """The body the gateway publishes on ``.../set`` (not retained)."""
    return {"schema": SCHEMA, "id": command_id, "key": key, "state": state, "deadline": deadline}


def parse_command(payload: bytes | bytearray | str) -> Command:
    """A :class:`Command` from an untrusted payload; CommandError (a PayloadError) naming the key."""
    try:
        obj = loads_object(payload)
    except PayloadError as exc:
        raise CommandError(Reason.BAD_PAYLOAD, str(exc)) from None
    raw_id = obj.get("id")
    if not isinstance(raw_id, str) or not _COMMAND_ID.match(raw_id):
        raise CommandError(Reason.BAD_PAYLOAD, "id must be 1-64 characters of A-Z a-z 0-9 _ . : -")
    key = obj.get("key")
    if not isinstance(key, str) or not valid_device_id(key):
        raise CommandError(Reason.BAD_PAYLOAD, "key must be a control key of a-z, 0-9 and '_'", raw_id)
    deadline = obj.get("deadline")
    if isinstance(deadline, bool) or not isinstance(deadline, int | float) or not math.isfinite(deadline):
        raise CommandError(Reason.BAD_PAYLOAD, "deadline must be a number (epoch seconds)", raw_id)
    if "state" not in obj:
        raise CommandError(Reason.BAD_PAYLOAD, "state is missing", raw_id)
    state = obj["state"]
    if not isinstance(state, bool):
        shown = clean_text(repr(state)[:32]) if isinstance(state, str | int | float) else type(state).__name__
        raise CommandError(Reason.BAD_VALUE, f"state must be true or false, got {shown}", raw_id)
    return Command(raw_id, key, state, float(deadline))


def _best_effort_id(payload: bytes | bytearray | str) -> str | None:
    try:
        return parse_command(payload).id
    except CommandError as exc:
        return exc.command_id


def check_command(
    target: Target,
    payload: bytes | bytearray | str,
    *,
    enabled: bool,
    configured: Collection[Target],
    now: float,
) -> Accepted | Result:
    """Everything the reader checks before writing a register, in this order: controls enabled;
    the payload (its shape, then ``state`` true/false); the target is one of ``configured`` (this
    reader's (bt2, kind, slave) devices); the family has the key; the deadline; and that slave 255
    reaches only the target. The first failure is the refused Result (reason and one line)."""
    bt2, kind, slave = target
    where = f"{kind} {slave} on {bt2}"
    if not enabled:
        return Result(
            Reason.DISABLED,
            f"controls are off (controls = false); {where} not written",
            _best_effort_id(payload),
        )
    try:
        command = parse_command(payload)
    except CommandError as exc:
        return Result(exc.reason, str(exc), exc.command_id)

    def refuse(reason: Reason, detail: str) -> Result:
        return Result(reason, detail, command.id, command.key)

    family = next((f for k, f in FAMILIES.items() if k == kind), None)
    if family is None or target not in configured:
        return refuse(Reason.NOT_CONFIGURED, f"no {where} is configured on this reader")
    control = family.get_control(command.key)
    if control is None:
        known = ", ".join(c.key for c in family.controls) or "none"
        return refuse(Reason.UNKNOWN_KEY, f"{kind} has no control {command.key!r} (known: {known})")
    if command.deadline <= now:
        return refuse(
            Reason.STALE, f"deadline passed {now - command.deadline:.1f} s ago; {where} not written"
        )
    if command.deadline > now + MAX_DEADLINE_AHEAD:
        return refuse(
            Reason.BAD_PAYLOAD,
            f"deadline is {command.deadline - now:.0f} s ahead, more than {MAX_DEADLINE_AHEAD:.0f} s "
            "(clocks out of step?)",
        )
    if slave == BROADCAST_SLAVE and any(t[0] == bt2 and t != target for t in configured):
        return refuse(
            Reason.AMBIGUOUS_SLAVE,
            f"slave 255 reaches every device behind {bt2}; configure the {kind}'s own slave id",
        )
    field = family.get_field(control.readback)
    assert field is not None  # DeviceFamily checks every control's read-back field
    return Accepted(
        command,
        family,
        control,
        WriteRequest(slave, control.register, control.raw(command.state)),
        ReadRequest(slave, field.address, field.words),
    )


def confirm(accepted: Accepted, registers: Sequence[int]) -> Result:
    """The result from the read-back registers (``accepted.readback`` answered): ok when the device
    reports the requested state, READBACK_MISMATCH when it reports the other, NO_REPLY when the
    read-back does not decode."""
    command, control = accepted.command, accepted.control
    try:
        values, _dropped = decode(accepted.family, accepted.readback.start, registers)
    except BlockError as exc:
        return failed(accepted, Reason.NO_REPLY, f"read-back of {control.key} did not decode: {exc}")
    state = control.compute(values)
    if state is None:
        return failed(accepted, Reason.NO_REPLY, f"read-back of {control.key} has no {control.readback}")
    word = "on" if state else "off"
    if state != command.state:
        return Result(
            Reason.READBACK_MISMATCH,
            f"{control.key} reads back {word} after writing {'on' if command.state else 'off'}",
            command.id,
            command.key,
            state,
        )
    return Result(None, f"{control.key} is {word} (read back)", command.id, command.key, state)


def failed(accepted: Accepted, reason: Reason, detail: str) -> Result:
    """A result for a write that went out but failed (DEVICE_REFUSED, NO_REPLY); state unknown."""
    return Result(reason, detail, accepted.command.id, accepted.command.key)


def parse_result(payload: bytes | bytearray | str) -> Result:
    """A :class:`Result` from an untrusted ``.../result`` payload (the gateway's side); PayloadError."""
    obj = loads_object(payload)
    raw_id, key, state = obj.get("id"), obj.get("key"), obj.get("state")
    if raw_id is not None and (not isinstance(raw_id, str) or not _COMMAND_ID.match(raw_id)):
        raise PayloadError("id must be null or 1-64 characters of A-Z a-z 0-9 _ . : -")
    if key is not None and (not isinstance(key, str) or not valid_device_id(key)):
        raise PayloadError("key must be null or a control key")
    if state is not None and not isinstance(state, bool):
        raise PayloadError("state must be true, false or null")
    raw_reason = obj.get("reason")
    try:
        reason = None if raw_reason is None else Reason(raw_reason)
    except ValueError:
        raise PayloadError(f"reason {clean_text(str(raw_reason)[:32])!r} is unknown") from None
    if obj.get("ok") is not (reason is None):
        raise PayloadError("ok must be true exactly when reason is null")
    detail = obj.get("detail")
    if not isinstance(detail, str):
        raise PayloadError("detail must be a string")
    return Result(reason, clean_text(detail[:MAX_DETAIL]) or "", raw_id, key, state)
