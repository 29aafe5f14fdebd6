"""`renogy-proxy run` on the simulator with two batteries, a charge controller and a DC-DC charger:
a real aioesphomeapi client lists every family's entities with states, and the controller's PV power
is what the reader published."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import orjson
from aioesphomeapi import APIClient, EntityInfo, EntityState

from shared.devices import FAMILIES
from shared.topics import Topics, bt2_id
from tests.e2e.support import running_stack, snapshot
from tests.support.probe import MqttProbe

SIM_ADDRESS = "C4:64:E3:38:3D:0E"
BT2 = bt2_id(SIM_ADDRESS)
CONTROLLER = f"controller_{BT2}_1"
DCC = f"dcc_{BT2}_96"


def _ready(by_id: dict[str, EntityInfo]) -> bool:
    wanted = {"battery_48_battery_level", "battery_49_battery_level", f"{CONTROLLER}_pv_power"}
    return wanted <= set(by_id) and any(o.startswith(DCC) for o in by_id)


async def _snapshot(port: int, timeout: float) -> tuple[dict[str, EntityInfo], dict[int, EntityState]]:
    """Entities by object id and one state per entity, as Home Assistant would see them."""
    return await snapshot(port, timeout, _ready, "every device")


async def test_run_serves_every_family(mosquitto, tmp_path: Path) -> None:
    topic = Topics().reading(BT2, 1, "controller")
    async with (
        running_stack(
            tmp_path,
            mosquitto.url,
            "--sim-devices",
            "battery:48,battery:49,controller:1,dcc:96",
            "--poll-interval",
            "2",
        ) as port,
        MqttProbe(mosquitto.url, topic) as probe,
    ):
        entities, states = await _snapshot(port, timeout=60)
        prefixes = ("battery_48_", "battery_49_", "bank_", f"{CONTROLLER}_", f"{DCC}_")
        for prefix in prefixes:
            assert any(o.startswith(prefix) for o in entities), f"no entity of {prefix}"
        for kind, ref in (("controller", CONTROLLER), ("dcc", DCC)):
            for entity in FAMILIES[kind].entities:  # type: ignore[index]
                if not entity.extended:
                    assert f"{ref}_{entity.key}" in entities, f"{ref}_{entity.key} not listed"
        assert all(e.key in states for e in entities.values()), "an entity without a state"
        pv_key = entities[f"{CONTROLLER}_pv_power"].key

        async def pv_matches() -> bool:
            _entities, now = await _snapshot(port, timeout=20)
            published = orjson.loads(probe.latest[topic].payload)["pv_power"]
            return float(getattr(now[pv_key], "state", -1)) == float(published)

        deadline = time.monotonic() + 30
        while not await pv_matches():  # PV power moves; wait until both sides agree on one reading
            assert time.monotonic() < deadline, "the API's PV power never equalled the published one"


async def test_load_switch_through_every_real_part(mosquitto, tmp_path: Path) -> None:
    """controls = true: a real client's SwitchCommandRequest goes gateway -> MQTT -> reader -> simulated
    Rover register 0x010A, and the switch state follows the read-back reading."""
    topics = Topics()
    results = topics.device_result(BT2, "controller", 1)
    reading = topics.reading(BT2, 1, "controller")
    async with running_stack(
        tmp_path,
        mosquitto.url,
        "--controls",
        "--sim-devices",
        "battery:48,battery:49,controller:1,dcc:96",
        "--poll-interval",
        "5",
    ) as port:
        client = APIClient("127.0.0.1", port, None)
        try:
            async with MqttProbe(mosquitto.url, results, reading) as probe:
                entities, _ = await _snapshot(port, timeout=60)
                switch = entities[f"{CONTROLLER}_load_switch"]
                assert type(switch).__name__ == "SwitchInfo"
                await client.connect(login=True)
                states: dict[int, Any] = {}
                changed = asyncio.Event()

                def on_state(state: Any) -> None:
                    states[state.key] = state
                    changed.set()

                client.subscribe_states(on_state)
                async with asyncio.timeout(20):
                    while switch.key not in states:
                        changed.clear()
                        await changed.wait()
                wanted = not states[switch.key].state
                client.switch_command(switch.key, wanted)
                async with asyncio.timeout(30):  # the next read-back, not the request, turns it
                    while states[switch.key].state != wanted:
                        changed.clear()
                        await changed.wait()
                result = orjson.loads(probe.latest[results].payload)
                assert result["ok"] is True and result["state"] is wanted, result
                assert orjson.loads(probe.latest[reading].payload)["load_on"] is wanted
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 2)
