"""`renogy-proxy migrate`: the old system's config.ini and energy_totals.json in their own formats."""

from __future__ import annotations

import configparser
import tomllib
from pathlib import Path

import orjson
import pytest

from services.aggregator.banks import layout_from_config
from services.aggregator.core import AggregatorCore, Settings
from services.aggregator.store import StateStore
from services.cli import main
from services.migrate import MigrateError, convert_config, import_energy
from shared.config import Config, load_config

# The old system's config.ini as its repository ships it (inline comments and all), for our simulator.
OLD_CONFIG_INI = """
[device]
adapter = hci0
mac_addr = C4:64:E3:38:3D:0E
alias = BT-TH-E3383D0E
type = RNG_BATT
# RNG_CTRL      => Charge Controller (Rover/Wanderer/Adventurer)
# RNG_BATT      => Smart Battery
device_id = 48,49,50,51 # hub mode battery IDs (comma-separated)
# adjust the ids to match your installation

[data]
enable_polling = true # periodically read data
poll_interval = 10 # read data interval (seconds)
temperature_unit = F # F = Fahrenheit, C = Celsius
fields = # fields to log (comma separated), leave empty for all fields

[remote_logging]
enabled = false
url = https://example.com/post.php
auth_header = auth_header # optional HTTP header sent as "Authorization: Bearer <AUTH_HEADER>"

[mqtt]
enabled = true
server = 192.168.1.89
port = 1883
topic = solar/state
user =
password =
homeassistant_discovery = true

[pvoutput]
# free accounts has a cap of max one request per minute.
enabled = false
api_key =
system_id =

[home_assistant_proxy]
enabled = true
with_renogy_client = true
host = homeassistant.local
port = 8123
ssl = false
endpoint = /api/bluetooth/adv
fallback_endpoints = /api/bluetooth/remote/adv,/ble/advertisements
adapter = hci0
source = BT-TH-E3383D0E-proxy
device_name = renogy-bt-proxy
native_api_port = 6053
native_api_mac = 02:11:22:33:44:55
renogy_poll_mode = scheduled
renogy_read_interval = 30
scan_active_seconds = 5
scan_idle_seconds = 10
pause_during_renogy = true
health_check_interval = 30
"""

# energy_totals.json as update_energy_totals writes it: keyed by "<alias>_<device id>", kWh.
OLD_TOTALS = {
    "BT-TH-E3383D0E_48": {"energy_in_kwh": 12.345, "energy_out_kwh": 10.5},
    "BT-TH-E3383D0E_49": {"energy_in_kwh": 11.0, "energy_out_kwh": 9.25},
    "BT-TH-E3383D0E_50": {"energy_in_kwh": 0, "energy_out_kwh": 0.001},
    "BT-TH-E3383D0E_51": {"energy_in_kwh": 7.5},
}


def _config(tmp_path: Path, **overrides: object) -> Config:
    return load_config(None, environ={}, overrides={"state_dir": str(tmp_path / "state"), **overrides})


def _totals(tmp_path: Path, totals: object = OLD_TOTALS) -> Path:
    path = tmp_path / "energy_totals.json"
    path.write_bytes(orjson.dumps(totals))
    return path


def test_config_ini_becomes_equivalent_toml(tmp_path: Path) -> None:
    text = convert_config(OLD_CONFIG_INI, "config.ini")
    data = tomllib.loads(text)
    assert data["reader"] == {
        "bt2_address": "C4:64:E3:38:3D:0E",
        "adapter": "hci0",
        "batteries": [48, 49, 50, 51],
        "poll_interval": 30.0,  # scheduled mode: renogy_read_interval wins over [data] poll_interval
        "scan_duty": [5.0, 10.0],  # scan_active_seconds, scan_idle_seconds
        "pause_during_reads": True,  # pause_during_renogy
    }
    assert data["gateway"] == {
        "entity_naming": "legacy",
        "legacy_device_name": "BT-TH-E3383D0E",
        "name": "renogy-bt-proxy",
        "api_port": 6053,
        "mac": "02:11:22:33:44:55",
    }
    assert data["mqtt"] == {"url": "mqtt://192.168.1.89:1883"}
    # It loads as our configuration.
    path = tmp_path / "config.toml"
    path.write_text(text)
    config = load_config(path, environ={})
    assert config.gateway.entity_naming == "legacy" and config.reader.batteries == [48, 49, 50, 51]
    assert config.reader.scan_duty == [5.0, 10.0] and config.reader.pause_during_reads is True


def test_every_old_option_is_converted_or_explained() -> None:
    text = convert_config(OLD_CONFIG_INI, "config.ini")
    old = configparser.ConfigParser(inline_comment_prefixes=("#",), interpolation=None)
    old.read_string(OLD_CONFIG_INI)
    comments = [line for line in text.splitlines() if line.startswith("#")]
    for section in old.sections():
        for option in old.options(section):
            where = f"[{section}] {option}"
            mentioned = [line for line in comments if where in line]
            assert mentioned, f"{where} is neither converted nor explained"
    assert any("[data] temperature_unit = F: temperatures are published in °C" in line for line in comments)
    assert "# from [home_assistant_proxy] pause_during_renogy" in comments
    assert any("[pvoutput] enabled = false: no counterpart" in line for line in comments)


@pytest.mark.parametrize(
    ("options", "reader", "noted"),
    [
        # The old system cycled only with both phases above 0: otherwise it scanned all the time.
        ("scan_active_seconds = 5\nscan_idle_seconds = 0\n", {}, ["scan_active_seconds = 5", "scan_idle_seconds = 0"]),
        ("scan_idle_seconds = 10\n", {}, ["scan_idle_seconds = 10: no duty cycle"]),
        ("scan_active_seconds = 0.1\nscan_idle_seconds = 2\n", {}, ["scan_active_seconds = 0.1: no duty cycle"]),
        ("scan_active_seconds = 2.5\nscan_idle_seconds = 7.5\n", {"scan_duty": [2.5, 7.5]}, []),
        ("pause_during_renogy = false\n", {}, ["pause_during_renogy = false: off here too"]),
        ("pause_during_renogy = maybe\n", {}, ["pause_during_renogy = maybe: not a boolean"]),
        ("pause_during_renogy = yes\n", {"pause_during_reads": True}, []),
    ],
)
def test_airtime_options(options: str, reader: dict[str, object], noted: list[str]) -> None:
    text = convert_config(f"[device]\nmac_addr = C4:64:E3:38:3D:0E\n\n[home_assistant_proxy]\n{options}")
    data = tomllib.loads(text)
    airtime = {key: data["reader"][key] for key in ("scan_duty", "pause_during_reads") if key in data["reader"]}
    assert airtime == reader
    for note in noted:
        assert f"#   [home_assistant_proxy] {note}" in text, note


def test_config_ini_of_another_device_type_is_refused() -> None:
    with pytest.raises(MigrateError, match="RNG_BATT"):
        convert_config(OLD_CONFIG_INI.replace("type = RNG_BATT", "type = RNG_CTRL"))
    with pytest.raises(MigrateError, match=r"\[device\]"):
        convert_config("[data]\npoll_interval = 10\n")


def test_config_ini_with_a_noise_key() -> None:
    key = "px7tsbK3C7bpXHr2OevEV2ZMg/FSNTx1zgdqNYvJtLo="
    text = convert_config(OLD_CONFIG_INI + f"api_key = {key}\n")
    assert tomllib.loads(text)["gateway"]["api_key"] == key


def test_energy_import_into_an_empty_state(tmp_path: Path) -> None:
    config = _config(tmp_path, **{"reader.bt2_address": "C4:64:E3:38:3D:0E"})
    result = import_energy(_totals(tmp_path), config, now=1795524654.0)
    assert result.written
    document = StateStore(result.state_file).load(lambda obj: obj)
    assert document is not None
    battery = document["batteries"]["battery_48"]
    assert (battery["bt2"], battery["slave_id"]) == ("c464e3383d0e", 48)
    assert (battery["counter"]["in_wh"], battery["counter"]["out_wh"]) == pytest.approx((12345.0, 10500.0))
    assert document["batteries"]["battery_51"]["counter"]["out_wh"] == 0.0
    text = "\n".join(result.lines)
    assert "battery_48 (old slave 48): energy in 0.000 -> 12.345 kWh, energy out 0.000 -> 10.500 kWh" in text
    assert "bank: energy in 30.845 kWh, energy out 19.751 kWh (sum of its batteries)" in text
    # The aggregator reads the file as its own.
    core = AggregatorCore(layout_from_config(config.aggregator), Settings(), started=1795524654.0)
    core.restore(document)
    assert core.batteries["battery_49"].counter.in_wh == pytest.approx(11000.0)
    # A second import finds nothing to do.
    again = import_energy(_totals(tmp_path), config)
    assert not again.written and "nothing written" in again.lines[-1]


def test_energy_import_refuses_when_ours_are_higher(tmp_path: Path) -> None:
    config = _config(tmp_path)
    import_energy(_totals(tmp_path), config)
    state = config.state_dir / "aggregator-default.json"
    before = state.read_bytes()
    lower = {**OLD_TOTALS, "BT-TH-E3383D0E_48": {"energy_in_kwh": 1.0, "energy_out_kwh": 10.5}}
    with pytest.raises(MigrateError, match=r"battery_48: our energy in 12\.345 kWh > the old 1\.000 kWh"):
        import_energy(_totals(tmp_path, lower), config)
    assert state.read_bytes() == before  # nothing written


def test_energy_import_raises_lower_counters_and_keeps_their_anchor(tmp_path: Path) -> None:
    config = _config(tmp_path)
    store = StateStore(config.state_dir / "aggregator-default.json")
    counter: dict[str, float | None] = {
        "in_wh": 100.0,
        "out_wh": 50.0,
        "last_ts": 1795524600.0,
        "last_power": -10.0,
    }
    counter |= {"last_boot": None, "last_mono": None}
    store.save(
        {
            "saved": 1.0,
            "batteries": {"battery_48": {"bt2": "c464e3383d0e", "slave_id": 48, "counter": counter}},
            "banks": {},
        }
    )
    import_energy(_totals(tmp_path), config)
    document = store.load(lambda obj: obj)
    assert document is not None
    entry = document["batteries"]["battery_48"]
    assert entry["counter"]["in_wh"] == pytest.approx(12345.0)
    assert entry["counter"]["last_ts"] == 1795524600.0 and entry["bt2"] == "c464e3383d0e"


def test_energy_file_problems(tmp_path: Path) -> None:
    config = _config(tmp_path)
    two = {**OLD_TOTALS, "OTHER_48": {"energy_in_kwh": 1.0, "energy_out_kwh": 1.0}}
    with pytest.raises(MigrateError, match="several devices"):
        import_energy(_totals(tmp_path, two), config)
    assert import_energy(_totals(tmp_path, two), config, alias="OTHER").written
    with pytest.raises(MigrateError, match="non-negative"):
        import_energy(_totals(tmp_path, {"A_48": {"energy_in_kwh": -1}}), config)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(MigrateError, match="not JSON"):
        import_energy(tmp_path / "bad.json", config)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ini = tmp_path / "config.ini"
    ini.write_text(OLD_CONFIG_INI)
    assert main(["migrate", str(ini)]) == 0
    assert tomllib.loads(capsys.readouterr().out)["gateway"]["entity_naming"] == "legacy"
    state = tmp_path / "state"
    assert main(["migrate", "--energy", str(_totals(tmp_path)), "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "12.345 kWh" in out
    lower = {"BT-TH-E3383D0E_48": {"energy_in_kwh": 1.0, "energy_out_kwh": 1.0}}
    assert main(["migrate", "--energy", str(_totals(tmp_path, lower)), "--state-dir", str(state)]) == 1
    assert "counters only go up" in capsys.readouterr().err
    assert main(["migrate"]) == 2
