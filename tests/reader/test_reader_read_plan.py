"""A restart keeps the read plan: the previous run's retained health says which packs take the merged
5000 x 49 read, so a new reader neither probes a refusing pack again nor reads a taking one in blocks.
The plan is MQTT input: a forged or stale one can cost one refused read, never a wrong value."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from shared import registers
from shared.topics import SCHEMA
from tests.gateway.support import wait_until
from tests.reader.support import assert_truthful, reader_on_sim, readings, with_sim
from tests.reader.test_poller import requests_of
from tests.support.probe import MqttProbe

MERGED = registers.BLOCK_MERGED
EVERY_CYCLE = {registers.BLOCK_STATUS, registers.BLOCK_CELLS}
INFO = set(registers.BLOCKS_INFO)
TAKES_MERGED = {"read_reserved": True, "max_read_words": 49}


def _health_topic(reader: Any) -> str:
    return str(reader.runtime.health_topic)


@pytest.mark.parametrize(
    ("changes", "plan", "first_cycle"),
    [({}, "split", EVERY_CYCLE | INFO), (TAKES_MERGED, "merged", {MERGED} | INFO)],
    ids=["packs-refuse", "packs-take"],
)
async def test_a_restart_reads_as_the_previous_run_found_out(
    mosquitto, changes: dict[str, Any], plan: str, first_cycle: set[tuple[int, int]]
) -> None:
    sim_config = with_sim(**changes)
    async with reader_on_sim(mosquitto.url, sim_config) as (reader, _sim, probe):
        assert await reader.cycle() == 4
        assert await reader.cycle() == 4  # the probe of the merged read
        assert set(reader.poller.read_plan().values()) == {plan}
        topic = _health_topic(reader)
        await probe.wait_for(
            lambda: topic in probe.latest and set(probe.json(topic)["read_plan"].values()) == {plan},
            what="the read plan in the retained health",
        )
    async with reader_on_sim(mosquitto.url, sim_config) as (reader, sim, probe):
        await wait_until(lambda: reader.poller.remembered_plans, what="the previous run's read plan")
        before = len(readings(probe))
        assert await reader.cycle() == 4
        assert {(start, words) for _, start, words in requests_of(sim)} == first_cycle
        assert await reader.cycle() == 4
        asked = {(start, words) for _, start, words in requests_of(sim)}
        assert (MERGED in asked) == (plan == "merged"), "a refusing pack is not asked again"
        for reading in readings(probe)[before:]:
            assert_truthful(reading, sim)


async def test_a_forged_plan_costs_one_refused_read_and_no_wrong_value(mosquitto) -> None:
    """A retained health claiming every pack takes the merged read, for packs that refuse it: each is
    asked once, refuses, and is read in blocks; what is published is the simulator's truth."""
    sim_config = with_sim()
    async with reader_on_sim(mosquitto.url, sim_config) as (reader, _sim, probe):
        assert await reader.cycle() == 4
        topic, bt2 = _health_topic(reader), reader.poller.bt2
        await probe.wait_for(lambda: topic in probe.latest, what="the reader's health")
    forged = {"schema": SCHEMA, "bt2": bt2, "read_plan": {"48": "merged", "49": "merged", "50": "bogus", "x": "merged"}}
    async with MqttProbe(mosquitto.url, topic) as probe:
        probe.publish(topic, orjson.dumps(forged), retain=True)
        await probe.wait_for(
            lambda: topic in probe.latest and probe.json(topic).get("read_plan") == forged["read_plan"]
        )
    async with reader_on_sim(mosquitto.url, sim_config) as (reader, sim, probe):
        await wait_until(lambda: reader.poller.remembered_plans, what="the forged read plan")
        assert reader.poller.remembered_plans == {bt2: {48: "merged", 49: "merged"}}
        before = len(readings(probe))
        assert await reader.cycle() == 4
        merged_asked = [slave for slave, start, words in requests_of(sim) if (start, words) == MERGED]
        assert merged_asked == [48, 49]
        assert reader.poller.read_plan() == {"48": "split", "49": "split", "50": "untried", "51": "untried"}
        assert reader.poller.stats.errors == {}
        fresh = readings(probe)[before:]
        assert {r["slave_id"] for r in fresh} == {48, 49, 50, 51}
        for reading in fresh:
            assert_truthful(reading, sim)
