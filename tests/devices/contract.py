"""The contract every device family passes; each tests/devices/test_<kind>.py subclasses it.

Like aiobmsble's BMSBasicTests: a family only states its kind and how to build its simulator model,
and inherits these checks: its real frames decode to the values recorded with them, the simulator's
registers decode back inside the ranges, every entity is computable from a decoded reading, the MQTT
payload is JSON, and random register contents never publish an out-of-range value nor raise
anything but BlockError.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.simulator import models
from services.simulator.physics import HOUR
from shared.devices import (
    FAMILIES,
    BlockError,
    DeviceFamily,
    decode,
    entity_values,
    read_plan,
    reading_payload,
)
from shared.devices.shunt import LIVE_HEADER, payload_words
from shared.modbus import crc_ok
from shared.payloads import PLATFORMS, STATE_CLASSES
from shared.registers import Value

DATA = Path(__file__).resolve().parent.parent / "data" / "devices"
START = 10 * HOUR


def load_vectors(kind: str) -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = json.loads((DATA / f"{kind}.json").read_text(encoding="utf-8"))["vectors"]
    return vectors


def vector_registers(vector: dict[str, Any]) -> list[int]:
    """The register words of a vector: from a CRC-checked reply frame, a payload, or as recorded."""
    if vector.get("response_hex"):
        frame = bytes.fromhex(vector["response_hex"])
        assert crc_ok(frame), f"{vector['id']}: CRC mismatch"
        assert frame[0] == vector["slave"] and frame[1] == 0x03 and frame[2] == 2 * vector["words"]
        return [int.from_bytes(frame[3 + 2 * k : 5 + 2 * k], "big") for k in range(vector["words"])]
    if vector.get("payload_hex"):
        return payload_words(bytes.fromhex(vector["payload_hex"]))
    registers: list[int] = vector["registers"]
    return registers


def out_of_range(family: DeviceFamily, values: dict[str, Value]) -> list[str]:
    """Published values outside the family's ranges, or enum text the family does not define."""
    bad = []
    for name, value in values.items():
        limits = family.ranges.get(name)
        items = value if isinstance(value, list) else [value]
        bad += [
            f"{name} = {item}"
            for item in items
            if limits is not None
            and isinstance(item, int | float)
            and not isinstance(item, bool)
            and not (math.isfinite(item) and limits[0] <= item <= limits[1])
        ]
        field = family.get_field(name)
        if field is not None and field.enum is not None and value not in field.enum.values():
            bad.append(f"{name} = {value!r} not in its enum")
    return bad


def assert_matches(expected: dict[str, Any], values: dict[str, Value], vector_id: str) -> None:
    for key, want in expected.items():
        assert key in values, f"{vector_id}: {key} missing from {sorted(values)}"
        got = values[key]
        if isinstance(want, float) or isinstance(got, float):
            assert got == pytest.approx(want), f"{vector_id}: {key} = {got}, expected {want}"
        else:
            assert got == want, f"{vector_id}: {key} = {got!r}, expected {want!r}"


class FamilyContract:
    """Subclass with ``kind`` and ``make_model``; pytest collects the subclasses (Test*)."""

    kind: ClassVar[str]
    make_model: ClassVar[Callable[[], models.DeviceModel]]

    @property
    def family(self) -> DeviceFamily:
        return FAMILIES[self.kind]  # type: ignore[index]

    def model(self) -> models.DeviceModel:
        return type(self).make_model()

    def sim_reading(self, model: models.DeviceModel, t: float) -> tuple[dict[str, Value], list[str]]:
        """Everything a reader decodes from the model at ``t`` (all blocks, info included)."""
        values: dict[str, Value] = {}
        dropped: list[str] = []
        if self.family.transport == "notify":
            assert isinstance(model, models.ShuntModel)
            return decode(self.family, 0, payload_words(model.notification(t)))
        for block in read_plan(self.family, info_due=True):
            registers = models.read(model, block.start, block.words, t)
            assert not isinstance(registers, int), f"{block} refused with exception {registers}"
            got, lost = decode(self.family, block.start, registers, variant=getattr(model, "variant", None))
            values.update(got)
            dropped += lost
        return values, dropped

    # --- real frames -------------------------------------------------------------------------

    def test_vectors_cite_their_source(self) -> None:
        vectors = load_vectors(self.kind)
        assert vectors, f"tests/data/devices/{self.kind}.json holds no vectors"
        ids = [v["id"] for v in vectors]
        assert len(ids) == len(set(ids))
        for vector in vectors:
            assert "/" in vector["source"] and len(vector["source"]) > 20, vector["id"]

    def test_real_frames_decode_to_recorded_values(self) -> None:
        for vector in load_vectors(self.kind):
            values, dropped = decode(
                self.family, vector["register"], vector_registers(vector), variant=vector.get("variant")
            )
            assert vector["expected"], vector["id"]
            assert_matches(vector["expected"], values, vector["id"])
            for name in vector.get("dropped", []):
                assert name not in values and any(line.startswith(name) for line in dropped), vector["id"]
            assert not out_of_range(self.family, values), vector["id"]

    # --- simulator ---------------------------------------------------------------------------

    def test_simulator_round_trip_within_ranges(self) -> None:
        model = self.model()
        for step in range(48):  # a day and a night, every 30 minutes
            values, dropped = self.sim_reading(model, START + step * 1800.0)
            assert dropped == [], f"t+{step / 2} h: {dropped}"
            assert values
            assert not out_of_range(self.family, values)

    def test_simulator_refuses_unmapped_reads(self) -> None:
        model = self.model()
        if self.family.transport == "notify":
            assert models.read(model, 0, 1, START) == 0x01
            return
        assert models.read(model, 0x7000, 1, START) == 0x02  # no family maps 0x7000

    # --- entities and payload ----------------------------------------------------------------

    def test_entities_are_well_formed(self) -> None:
        for entity in self.family.entities:
            assert entity.platform in PLATFORMS
            assert (entity.state_class or "") in STATE_CLASSES
            if entity.device_class == "energy":
                assert entity.unit == "kWh" and entity.state_class == "total_increasing", entity.key
            if entity.platform != "sensor":
                assert entity.unit is None and entity.state_class is None, entity.key
            if isinstance(entity.value, str):
                assert (
                    self.family.get_field(entity.value) is not None or entity.value in self.family.ranges
                ), f"{entity.key} reads unknown field {entity.value}"

    def test_every_entity_computable_from_a_simulated_reading(self) -> None:
        values, _ = self.sim_reading(self.model(), START + 2 * HOUR)
        states = entity_values(self.family, values, "extended")
        assert list(states) == [e.key for e in self.family.entities]
        for entity in self.family.entities:
            state = states[entity.key]
            assert state is not None, f"{entity.key} unknown from {sorted(values)}"
            kind = {"sensor": float, "binary_sensor": bool, "text_sensor": str}[entity.platform]
            assert isinstance(state, kind), f"{entity.key} = {state!r}"
        default = entity_values(self.family, values)
        assert set(default) == {e.key for e in self.family.entities if not e.extended}

    def test_reading_payload_is_json(self) -> None:
        values, _ = self.sim_reading(self.model(), START)
        body = reading_payload(self.family, bt2="aabbccddeeff", slave_id=0x30, ts=1.7e9, values=values)
        again = orjson.loads(orjson.dumps(body))
        assert again["kind"] == self.kind and again["slave_id"] == 0x30
        assert {k: again[k] for k in values} == orjson.loads(orjson.dumps(values))

    # --- faults: random registers ------------------------------------------------------------

    def test_random_registers_never_publish_out_of_range(self) -> None:
        random_registers_check(self.family)()


def random_registers_check(family: DeviceFamily) -> Callable[[], None]:
    """A property test bound to one family (a plain function: hypothesis wants one executor)."""

    @settings(max_examples=150, deadline=None, database=None)
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        block = data.draw(st.sampled_from(family.blocks))
        words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=block.words, max_size=block.words))
        variant = data.draw(st.sampled_from(family.variants)) if family.variants else None
        if family.transport == "notify" and data.draw(st.booleans()):
            words[:2] = payload_words(LIVE_HEADER)  # mostly live frames, so the fields get exercised
        try:
            values, dropped = decode(family, block.start, words, variant=variant)
        except BlockError as exc:
            assert str(exc) and "\n" not in str(exc)
            return
        assert not out_of_range(family, values), values
        assert all(isinstance(line, str) and "\n" not in line for line in dropped)
        orjson.dumps(reading_payload(family, bt2="aabbccddeeff", slave_id=1, ts=1.0, values=values))
        entity_values(family, values, "extended")  # never raises on whatever survived screening

    return check
