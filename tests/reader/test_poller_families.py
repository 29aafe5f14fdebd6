"""Controllers, DC-DC chargers and inverters read by the transport-free poller on the real simulator
(no broker): readings equal the models' truth, a silent device is backed off, a value out of range is
left out, and a write goes through the same link."""

from __future__ import annotations

import logging
import time

import orjson
import pytest

from services.reader.poller import ControlEvent, DeviceBackedOff, DeviceReadingEvent, ReadingEvent
from services.simulator import BankSimulator
from services.simulator.models import ControllerModel
from shared.controls import Accepted, Reason, check_command, command_payload
from shared.devices import family, read_plan
from shared.registers import Value
from tests.reader.support import with_sim
from tests.reader.test_poller import poller_on_sim

DEVICES = (("controller", 1), ("dcc", 96), ("inverter", 32))


def _sim(*devices: tuple[str, int], batteries: tuple[int, ...] = (48,)) -> BankSimulator:
    return BankSimulator.from_config(with_sim(batteries=batteries, devices=devices))


def _pairs(devices: tuple[tuple[str, int], ...]) -> list[str]:
    return [f"{kind}:{slave}" for kind, slave in devices]


async def test_every_family_reading_equals_the_models_truth() -> None:
    sim = _sim(*DEVICES)
    async with poller_on_sim(sim, devices=_pairs(DEVICES)) as (poller, events):
        assert await poller.cycle() == 4  # the battery and the three devices
        batteries = [e for e in events if isinstance(e, ReadingEvent)]
        assert [e.reading.slave_id for e in batteries] == [48, 48]  # its values, then its identity
        readings = {e.reading.slave_id: e.reading for e in events if isinstance(e, DeviceReadingEvent)}
        assert sorted(readings) == [1, 32, 96]
        for kind, slave in DEVICES:
            reading = readings[slave]
            assert reading.family.kind == kind and not reading.failed
            fam = family(kind)
            for block in read_plan(fam, info_due=True):  # the first cycle reads the info blocks too
                truth = sim.truth.latest(slave, block.start)
                assert truth is not None, f"{kind} {slave}: no genuine reply to {block.start}"
                for name, value in truth.values.items():
                    assert reading.values[name] == value, f"{kind} {slave} {name}"
            assert reading.identity["model"] == truth_model(sim, slave)
        # The second cycle reads only the every-cycle blocks; the identity still rides along.
        events.clear()
        await poller.cycle()
        second = {e.reading.slave_id: e.reading for e in events if isinstance(e, DeviceReadingEvent)}
        assert "model" not in second[1].values and second[1].payload("boot")["model"] == "RNG-CTRL-RVR40"


def truth_model(sim: BankSimulator, slave: int) -> Value:
    return sim.devices[slave].values(sim.sim_time())["model"]


async def test_a_device_that_does_not_answer_is_backed_off() -> None:
    sim = _sim(("controller", 1))
    devices = ["controller:1", "dcc:5"]  # nothing answers at slave 5
    async with poller_on_sim(sim, devices=devices, retries=0) as (poller, events):
        for _ in range(3):
            await poller.cycle()
        backed = [e for e in events if isinstance(e, DeviceBackedOff)]
        assert backed and backed[0] == DeviceBackedOff("dcc", 5, 2, 2)
        # One a cycle, and a second with the identity in the first.
        assert sum(isinstance(e, DeviceReadingEvent) and e.reading.slave_id == 1 for e in events) == 4
        assert not any(isinstance(e, DeviceReadingEvent) and e.reading.slave_id == 5 for e in events)


class _BrokenSensor(ControllerModel):
    """A controller whose PV voltage register reads 999.9 V (a broken sensor)."""

    def values(self, t: float) -> dict[str, Value]:
        return {**super().values(t), "pv_voltage": 999.9}


async def test_an_out_of_range_register_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    sim = _sim(("controller", 1))
    sim.devices[1] = _BrokenSensor(1, start=sim.config.sim_start)
    caplog.set_level(logging.WARNING, "services.reader.service")
    async with poller_on_sim(sim, devices=["controller:1"]) as (poller, events):
        await poller.cycle()
        await poller.cycle()
    readings = [e.reading for e in events if isinstance(e, DeviceReadingEvent)]
    assert len(readings) == 3  # the first cycle's values, its identity, the second cycle's values
    for reading in readings:
        assert "pv_voltage" not in reading.values and "pv_voltage" not in reading.payload("boot")
        assert "battery_voltage" in reading.values
    lines = [r.getMessage() for r in caplog.records if "pv_voltage" in r.getMessage()]
    assert len(lines) == 1, lines  # once per streak
    assert "controller 1: read 256x34: pv_voltage = 999.9 V outside" in lines[0]


def _accepted(bt2: str, slave: int, state: bool, kind: str = "controller") -> Accepted:
    target = (bt2, kind, slave)
    outcome = check_command(
        target,
        orjson.dumps(command_payload("load_switch", state, f"t{slave}", time.time() + 30)),
        enabled=True,
        configured={target},
        now=time.time(),
    )
    assert isinstance(outcome, Accepted), outcome
    return outcome


async def test_a_write_is_read_back_and_the_reading_follows() -> None:
    sim = _sim(("controller", 1))
    async with poller_on_sim(sim, devices=["controller:1"]) as (poller, events):
        await poller.cycle()
        assert poller.bt2 is not None
        poller.submit((poller.bt2, "controller", 1), _accepted(poller.bt2, 1, False))
        events.clear()
        await poller.run_commands()
        (control,) = [e for e in events if isinstance(e, ControlEvent)]
        assert control.result.ok and control.result.state is False, control.result
        (after,) = [e.reading for e in events if isinstance(e, DeviceReadingEvent)]
        assert after.values["load_on"] is False
        assert sim.devices[1].values(sim.sim_time())["load_on"] is False


async def test_a_device_that_refuses_the_write_is_device_refused() -> None:
    sim = _sim(("dcc", 96))  # configured as a controller: the DC-DC charger has no writable register
    async with poller_on_sim(sim, devices=["dcc:96"]) as (poller, events):
        await poller.cycle()
        assert poller.bt2 is not None
        poller.submit((poller.bt2, "controller", 96), _accepted(poller.bt2, 96, True))
        await poller.run_commands()
    (control,) = [e for e in events if isinstance(e, ControlEvent)]
    assert control.result.reason is Reason.DEVICE_REFUSED, control.result
    assert "exception 0x02" in control.result.detail
