"""Which kind sits at which slave id: reader.devices and simulator.devices (kind:slave pairs)."""

from __future__ import annotations

import pytest

from services.cli import build_parser, config_from
from shared.config import ConfigError, load_config, other_devices

SIM_DEVICES = "battery:48,battery:49,controller:1,dcc:96"


def test_the_reader_on_the_simulator_reads_what_is_simulated() -> None:
    config = load_config(environ={"RENOGY_SIMULATE": "1", "RENOGY_SIM_DEVICES": SIM_DEVICES})
    assert config.simulator.batteries == [48, 49]
    assert config.reader.batteries == [48, 49]
    assert other_devices(config.reader.devices) == [("controller", 1), ("dcc", 96)]
    assert other_devices(config.simulator.devices) == [("controller", 1), ("dcc", 96)]


def test_the_command_line_takes_kind_id_pairs() -> None:
    args = build_parser().parse_args(["run", "--simulate", "--sim-devices", SIM_DEVICES])
    config = config_from(args)
    assert config.reader.batteries == [48, 49]
    assert config.reader.devices == ["controller:1", "dcc:96"]


def test_sim_batteries_keeps_working_and_explicit_reader_lists_win() -> None:
    assert load_config(
        environ={"RENOGY_SIMULATE": "1", "RENOGY_SIM_BATTERIES": "50,51"}
    ).simulator.batteries == [50, 51]
    config = load_config(
        environ={"RENOGY_SIMULATE": "1", "RENOGY_SIM_DEVICES": SIM_DEVICES, "RENOGY_BATTERIES": "48"}
    )
    assert config.reader.batteries == [48] and config.reader.devices == []
    config = load_config(environ={"RENOGY_DEVICES": "battery:50,controller:2"})
    assert config.reader.batteries == [50] and config.reader.devices == ["controller:2"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("controller", "is not kind:slave"),
        ("shunt:1", "is not kind:slave"),  # a shunt is its own BLE device, not on the bus
        ("controller:0", "outside 1..255"),
        ("controller:x", "is not kind:slave"),
        ("controller:1,dcc:1", "given twice"),
    ],
)
def test_bad_pairs_name_the_key(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"^simulator\.devices: .*{message}"):
        load_config(environ={"RENOGY_SIM_DEVICES": value})


def test_a_device_may_not_take_a_batterys_id() -> None:
    with pytest.raises(ConfigError, match=r"^reader\.devices: slave id 48 is also a battery's"):
        load_config(environ={"RENOGY_DEVICES": "controller:48"})
