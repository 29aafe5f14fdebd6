"""Opt-in controls in the aggregator: with controls on, a controller's document lists the load switch and
its state is the read-back ``load_on`` of the newest fresh reading; with controls off it is not there."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

from services.aggregator.banks import Layout
from services.aggregator.core import AggregatorCore, Settings
from services.aggregator.devices import family_reading
from services.aggregator.inputs import DropLog
from shared.devices.controller import LOAD_SWITCH
from shared.mqtt import Message
from shared.payloads import DeviceConfig, EntitySpec, parse_device_config, parse_device_state
from tests.aggregator.families_support import CONTROLLER_ID, CONTROLLER_SLAVE, controller, sim_body, topic
from tests.aggregator.support import TOPICS

_LOGGER = logging.getLogger("tests.controls")
T0 = 1_795_524_654.0
STALE_AFTER = 90.0


def core_with(*, controls: bool, profile: str = "default") -> AggregatorCore:
    settings = Settings(profile=profile, stale_after=STALE_AFTER, controls=controls)
    return AggregatorCore(Layout(), settings, started=T0, mono=T0)


def feed(core: AggregatorCore, at: float, **changes: Any) -> None:
    """One controller reading published at ``at`` through the service's own routing."""
    payload = orjson.dumps(sim_body(controller(), at, **changes))
    message = Message(topic("controller", CONTROLLER_SLAVE), payload, False)
    accepted = family_reading(core, TOPICS, message, DropLog(_LOGGER), now=at, mono=at)
    assert accepted is True


class Served:
    """What the gateway holds: the newest config and state documents the core published."""

    def __init__(self, core: AggregatorCore) -> None:
        self.core = core
        self.payloads: dict[str, bytes] = {}

    def at(self, when: float) -> tuple[DeviceConfig, dict[str, Any]]:
        for out in self.core.pending(when, when):
            if out.device_id == CONTROLLER_ID:
                self.payloads[out.kind] = out.payload
        state = parse_device_state(self.payloads["state"])
        return parse_device_config(self.payloads["config"]), dict(state.values)


@pytest.mark.parametrize("profile", ["default", "extended"])
def test_controls_on_lists_the_load_switch_with_the_read_back_state(profile: str) -> None:
    core = core_with(controls=True, profile=profile)
    served = Served(core)
    feed(core, T0, load_on=False)
    config, state = served.at(T0)
    switches = [e for e in config.entities if e.platform == "switch"]
    assert switches == [
        EntitySpec(key="load_switch", name="Load switch", device_class="outlet", platform="switch")
    ]
    assert config.entities[-1] == switches[0]  # after the family's sensors: their order is unchanged
    assert state["load_switch"] is False
    feed(core, T0 + 5, load_on=True)  # the next reading after a write: the read-back flipped
    _config, state = served.at(T0 + 5)
    assert state["load_switch"] is True
    if profile == "extended":  # the read-only binary sensor of the same bit keeps its own key
        assert state["load"] is True


def test_controls_off_lists_no_switch_and_no_switch_state() -> None:
    core = core_with(controls=False, profile="extended")
    served = Served(core)
    feed(core, T0, load_on=True)
    config, state = served.at(T0)
    assert [e.key for e in config.entities if e.platform == "switch"] == []
    assert LOAD_SWITCH.key not in state
    assert state["load"] is True  # the extended profile's binary sensor is not a control


def test_switch_state_turns_unknown_when_the_reading_goes_stale() -> None:
    core = core_with(controls=True)
    served = Served(core)
    feed(core, T0, load_on=True)
    _config, state = served.at(T0)
    assert state["load_switch"] is True
    later = T0 + STALE_AFTER + 1
    _config, state = served.at(later)
    assert state["load_switch"] is None  # unknown, never the last known or a requested value


def test_a_reading_without_load_on_leaves_the_switch_unknown() -> None:
    core = core_with(controls=True)
    served = Served(core)
    body = sim_body(controller(), T0)
    del body["load_on"]
    message = Message(topic("controller", CONTROLLER_SLAVE), orjson.dumps(body), False)
    assert family_reading(core, TOPICS, message, DropLog(_LOGGER), now=T0, mono=T0) is True
    _config, state = served.at(T0)
    assert state["load_switch"] is None
