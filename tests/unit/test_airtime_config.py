"""reader.scan_duty and reader.pause_during_reads: parsing, validation, defaults, the pause deadline."""

from __future__ import annotations

import pytest

from services.reader.airtime import MAX_PAUSE, pause_limit
from shared.config import ConfigError, env_for, load_config


def test_off_by_default() -> None:
    cfg = load_config(environ={}).reader
    assert cfg.scan_duty == [] and cfg.pause_during_reads is False


def test_from_environment_toml_and_command_line(tmp_path) -> None:
    env = load_config(environ={"RENOGY_SCAN_DUTY": "10, 20.5", "RENOGY_PAUSE_DURING_READS": "true"}).reader
    assert env.scan_duty == [10.0, 20.5] and env.pause_during_reads is True
    path = tmp_path / "c.toml"
    path.write_text("[reader]\nscan_duty = [5, 15]\npause_during_reads = true\n")
    assert load_config(path, environ={}).reader.scan_duty == [5.0, 15.0]
    overrides = {"reader.scan_duty": [1.5, 2.0]}
    assert load_config(environ=env_for(overrides)).reader.scan_duty == [1.5, 2.0]


@pytest.mark.parametrize("value", ["10", "10,20,30", "0,10", "10,0.1", "10,4000", "x,1"])
def test_bad_duty_names_the_key(value: str) -> None:
    with pytest.raises(ConfigError, match=r"reader\.scan_duty"):
        load_config(environ={"RENOGY_SCAN_DUTY": value})


def test_pause_limit_is_a_bounded_worst_case_cycle() -> None:
    cfg = load_config(environ={}).reader  # 20 s connect + 15 s search + 4 x 4 x 3 x 1.5 s: capped
    assert pause_limit(cfg) == MAX_PAUSE
    known = load_config(
        environ={}, overrides={"reader.bt2_address": "C4:64:E3:38:3D:0E", "reader.batteries": [48, 49]}
    ).reader
    assert pause_limit(known) == 20 + 2 * 4 * 3 * 1.5
