"""Which kind of device answers at which slave id of a BT-2's bus: the sans-IO core of `probe-bus`.

Each family has an identity register (model text) that only its own kind maps:

- battery: 5122 x 8 model (shared/registers.py), else 5000 x 1 cell count (1..16);
- controller and DC-DC charger: 0x000C x 8 model (shared/devices/controller.py, dcc.py). Both
  families share this register map, so only the model text tells them apart: DCC30S/DCC50S and
  RBC<amps>D... (RBC20D1U, RBC50D1S-G1, RBC2125DS-21W) are DC-DC chargers, as IAmTheMitchell/renogy-ha
  ``custom_components/renogy/device_name.py`` (``DCC_MODEL_PATTERN``) reads them; anything else
  (RNG-CTRL-RVR40, ...) is a controller;
- inverter: 4311 x 8 model, else 4000 x 10 (battery voltage and output frequency): the RIV4835CSH1S
  refuses 4311 (shared/devices/inverter.py).

A present device answers a register it does not have with Modbus exception 02 (captured:
/work/shared/vectors/renogy-frames.json ``cy15-exception``), an absent id stays silent
(``gb-31-5122-noresp``). So the first probe of an id decides whether anyone is there: silence ends
that id after one request deadline; an exception moves on to the next family's probe. The first
probe is the likeliest family for that id (batteries at 48+, controllers at 1..16 and 255, the
inverter at 32, DC-DC chargers at 96). Only reads (function 3) are ever planned.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Final, Literal

from shared.devices import BlockError, decode, family
from shared.devices.battery import FACTORY_SLAVE, HUB_SLAVE_IDS
from shared.modbus import BROADCAST_SLAVE, ReadRequest

BusKind = Literal["battery", "controller", "dcc", "inverter"]
KIND_ORDER: Final[tuple[BusKind, ...]] = ("battery", "controller", "dcc", "inverter")
INVERTER_SLAVE: Final = 0x20
DCC_SLAVE: Final = 0x60
# 255 (any Rover alone on a BT-1/BT-2 answers it) first, on the fresh connection: every device answers
# it, so a late reply from any id could pass for its answer. Then 1..16 controllers, 32 inverter,
# 48..63 batteries (0x30-0x37 behind a hub), 96 DC-DC, 247 (a battery's factory id).
DEFAULT_IDS: Final[tuple[int, ...]] = tuple(
    dict.fromkeys(
        (
            BROADCAST_SLAVE,
            *range(1, 17),
            INVERTER_SLAVE,
            *range(48, 64),
            *HUB_SLAVE_IDS,
            DCC_SLAVE,
            FACTORY_SLAVE,
        )
    )
)
DCC_MODEL = re.compile(r"^(DCC|RBC\d+D)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Probe:
    """One identity read: ``family`` is the register map it belongs to (controller covers dcc)."""

    family: Literal["battery", "controller", "inverter"]
    start: int
    words: int

    def request(self, slave: int) -> ReadRequest:
        return ReadRequest(slave, self.start, self.words)


BATTERY_PROBES: Final = (Probe("battery", 5122, 8), Probe("battery", 5000, 1))
CHARGER_PROBES: Final = (Probe("controller", 0x000C, 8),)
INVERTER_PROBES: Final = (Probe("inverter", 4311, 8), Probe("inverter", 4000, 10))


def probes_for(slave: int) -> tuple[Probe, ...]:
    """The probes of one id, likeliest family first (its first probe decides whether anyone is there)."""
    if slave == INVERTER_SLAVE:
        return (*INVERTER_PROBES, *CHARGER_PROBES, *BATTERY_PROBES)
    if 1 <= slave <= 16 or slave in (DCC_SLAVE, BROADCAST_SLAVE):
        return (*CHARGER_PROBES, *BATTERY_PROBES, *INVERTER_PROBES)
    return (*BATTERY_PROBES, *CHARGER_PROBES, *INVERTER_PROBES)


def parse_ids(text: str) -> list[int]:
    """``"1-16,32,0x30-0x37,255"`` -> ids in the given order, duplicates dropped; ValueError says why."""
    ids: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        low_text, dash, high_text = part.partition("-")
        try:
            low = int(low_text.strip(), 0)
            high = int(high_text.strip(), 0) if dash else low
        except ValueError:
            raise ValueError(f"--ids: {part!r} is not an id or a range like 48-55") from None
        if not 1 <= low <= high <= 255:
            raise ValueError(f"--ids: {part!r} is outside 1..255 (or a range written high-low)")
        ids.extend(range(low, high + 1))
    if not ids:
        raise ValueError("--ids: no slave id given")
    return list(dict.fromkeys(ids))


def _model_text(kind: str, start: int, registers: Sequence[int]) -> str | None:
    try:
        values, _dropped = decode(family(kind), start, registers)
    except BlockError:
        return None
    model = values.get("model")
    # The battery decoder keeps control bytes; a model is printable ASCII on every family.
    if not isinstance(model, str) or not model or not (model.isascii() and model.isprintable()):
        return None
    return model


def classify(probe: Probe, registers: Sequence[int]) -> tuple[BusKind, str | None] | None:
    """(kind, model) when ``registers`` (the reply to ``probe``) identify a kind; None otherwise.

    The model is None when the kind is known from a non-text register (cell count, inverter data).
    """
    if len(registers) != probe.words:
        return None
    if probe.family == "controller":
        model = _model_text("controller", probe.start, registers)
        if model is None:
            return None
        return ("dcc" if DCC_MODEL.match(model) else "controller"), model
    if probe.start in (5122, 4311):
        model = _model_text(probe.family, probe.start, registers)
        return (probe.family, model) if model is not None else None
    if probe.family == "battery":  # 5000 x 1: a pack has 1..16 cells in series
        return ("battery", None) if 1 <= registers[0] <= 16 else None
    try:
        values, _dropped = decode(family("inverter"), probe.start, registers)
    except BlockError:
        return None
    volts, hertz = values.get("battery_voltage"), values.get("output_frequency")
    # All-zero words prove nothing; a running inverter has a battery and 0 or 45..65 Hz out.
    if (
        isinstance(volts, float)
        and volts >= 5
        and isinstance(hertz, float)
        and (hertz == 0 or 45 <= hertz <= 65)
    ):
        return "inverter", None
    return None


class Outcome(Enum):
    ANSWER = "answer"  # a valid reply (registers)
    REFUSED = "refused"  # a Modbus exception: someone is there, not this register
    SILENT = "silent"  # nothing within the deadline
    GARBLED = "garbled"  # bytes, but no valid reply (bad CRC, wrong slave, truncated...)
    LOST = "lost"  # the link dropped


@dataclass(frozen=True, slots=True)
class Step:
    """The next request; ``reconnect`` first when a reply to an earlier one may still be on its way
    to the same slave (it could be taken for this answer: same slave, function and byte count)."""

    slave: int
    probe: Probe
    reconnect: bool

    @property
    def request(self) -> ReadRequest:
        return self.probe.request(self.slave)


@dataclass(slots=True)
class Finding:
    """What one id showed: a kind (and model), or a note saying why it is not identified."""

    slave: int
    kind: BusKind | None = None
    model: str | None = None
    responder: int | None = None  # the id the reply named when it differs (a read of 255)
    note: str | None = None

    def line(self) -> str:
        if self.kind is None:
            return f"{self.slave} ? {self.note}"
        text = f"{self.slave} {self.kind} {self.model or '(no model text)'}"
        if self.responder is not None:
            text += f" (answers as {self.responder})"
        return text


@dataclass(slots=True)
class BusProbe:
    """Walk ids x probes one request at a time; the shell reports each outcome back.

    ``next_step()`` -> send it -> one of ``answered/refused/silent/garbled/lost`` -> ``next_step()``
    ... until None. A garbled reply or a lost link is retried once; silence on an id's first probe
    ends that id.
    """

    ids: Sequence[int]
    retries: int = 1
    findings: list[Finding] = field(default_factory=list)
    _id_index: int = 0
    _probe_index: int = 0
    _attempt: int = 0
    _heard: bool = False  # the current id answered something (an exception counts)
    _problem: str | None = None
    _unsafe_slave: int | None = None  # a reply to this slave may still come (after a timeout)
    _unsafe_request: ReadRequest | None = None
    _lost: bool = False

    def next_step(self) -> Step | None:
        if self._id_index >= len(self.ids):
            return None
        slave = self.ids[self._id_index]
        probe = probes_for(slave)[self._probe_index]
        request = probe.request(slave)
        # The same request again may take its own late reply: harmless. Another block may not. A read
        # of 255 takes a reply from any id, and every id may still answer a read of 255.
        unsafe = self._unsafe_slave
        reached = unsafe is not None and (slave == unsafe or BROADCAST_SLAVE in (slave, unsafe))
        stale = reached and self._unsafe_request != request
        return Step(slave, probe, reconnect=self._lost or stale)

    def reconnected(self) -> None:
        self._lost = False
        self._unsafe_slave = self._unsafe_request = None

    def answered(self, registers: Sequence[int], responder: int) -> None:
        slave, probe = self._current()
        found = classify(probe, registers)
        if found is None:
            self._heard = True
            self._problem = self._problem or f"answered {probe.start} x {probe.words} with unknown data"
            self._advance_probe()
            return
        kind, model = found
        self._finish(Finding(slave, kind, model, responder if responder != slave else None))

    def refused(self) -> None:
        self._heard = True
        self._advance_probe()

    def silent(self) -> None:
        slave, probe = self._current()
        self._mark_unsafe(slave, probe)
        if not self._heard and self._probe_index == 0 and self._attempt == 0:
            self._finish(None)  # nobody at this id
            return
        self._heard = True  # it answered before, or garbled: someone is there
        self._advance_probe()

    def garbled(self, why: str, *, timed_out: bool = False) -> None:
        slave, probe = self._current()
        if timed_out:
            self._mark_unsafe(slave, probe)
        self._heard = True
        if self._attempt < self.retries:
            self._attempt += 1
            return
        # Every other probe of this id would meet the same collision or noise.
        self._finish(
            Finding(slave, note=f"garbled replies ({why}): several devices answer this id, or a weak link")
        )

    def lost(self) -> None:
        self._lost = True
        if self._attempt < self.retries:
            self._attempt += 1
            return
        self._problem = self._problem or "the link dropped while probing"
        self._advance_probe()

    @property
    def identified(self) -> list[Finding]:
        return [f for f in self.findings if f.kind is not None]

    def _current(self) -> tuple[int, Probe]:
        slave = self.ids[self._id_index]
        return slave, probes_for(slave)[self._probe_index]

    def _mark_unsafe(self, slave: int, probe: Probe) -> None:
        self._unsafe_slave, self._unsafe_request = slave, probe.request(slave)

    def _advance_probe(self) -> None:
        slave = self.ids[self._id_index]
        self._attempt = 0
        self._probe_index += 1
        if self._probe_index >= len(probes_for(slave)):
            note = self._problem or "answered, but not as a battery, controller, DC-DC charger or inverter"
            self._finish(Finding(slave, note=note) if self._heard else None)

    def _finish(self, finding: Finding | None) -> None:
        if finding is not None:
            self.findings.append(finding)
        self._id_index += 1
        self._probe_index = self._attempt = 0
        self._heard = False
        self._problem = None


def config_entries(findings: Iterable[Finding]) -> list[str]:
    """``kind:slave`` entries for reader.devices: batteries first, then by kind and id.

    A device seen at 255 answering as its own id is listed once, at its own id, when that id was found
    too (255 reaches every device at once, so it only works for a device alone on the bus).
    """
    found = [f for f in findings if f.kind is not None]
    at_own_id = {(f.kind, f.slave) for f in found}
    pairs = {
        (f.kind, f.slave)
        for f in found
        if not (f.slave == BROADCAST_SLAVE and f.responder is not None and (f.kind, f.responder) in at_own_id)
    }
    ordered = sorted(pairs, key=lambda pair: (KIND_ORDER.index(pair[0]), pair[1]))
    return [f"{kind}:{slave}" for kind, slave in ordered]


def config_lines(entries: Sequence[str]) -> list[str]:
    """The TOML line for [reader] and the environment form of the same list."""
    toml = ", ".join(f'"{entry}"' for entry in entries)
    return [f"devices = [{toml}]", f"RENOGY_DEVICES={','.join(entries)}"]


def worst_case_seconds(ids: Sequence[int], timeout: float, quiet: float) -> float:
    """Upper bound of the probing time without reconnects: every planned request times out and flushes."""
    return sum(len(probes_for(slave)) for slave in ids) * (timeout + quiet)


def silent_bus_seconds(ids: Sequence[int], timeout: float, quiet: float) -> float:
    """The time of a bus where nobody answers: one deadline and one flush per id."""
    return len(ids) * (timeout + quiet)


def nothing_found_hint(findings: Sequence[Finding]) -> str:
    """Why nothing was identified, as one line naming the likely cause."""
    if findings:
        return (
            "some ids answered but none was identified (see above): devices sharing an id, or a kind "
            "this tool does not know"
        )
    return (
        "no slave id answered: is the device cable in the BT-2's RS485 port and the device on (a battery "
        "asleep after a BMS protection stays silent)? Are the ids right (--ids)? A slow bus needs "
        "--timeout 1.5"
    )
