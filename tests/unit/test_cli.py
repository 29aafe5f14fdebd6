"""The console script: decode, keygen, configuration errors."""

from __future__ import annotations

import orjson
import pytest

from services.cli import main
from services.reader.service import load_class, resolve_backends
from services.simulator import SimBT2Client
from shared.config import load_config
from shared.noise_key import decode_key


def test_decode_prints_reading_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "5042", "30030c0000020c0000c2b20000c350ee9a"]) == 0
    out = orjson.loads(capsys.readouterr().out)
    assert out["voltage"] == 52.4 and out["remaining_charge"] == 49.842 and out["capacity"] == 50.0


def test_decode_cells(capsys: pytest.CaptureFixture[str]) -> None:
    frame = (
        "300344000f0022002200220022002200220022002200220023002300220022002200220000000f00820082008200820082"
        "008200820082008c008c008c008c008c008c008c0000799c"
    )
    assert main(["decode", "5000", frame]) == 0
    out = orjson.loads(capsys.readouterr().out)
    assert (
        out["cell_voltages"][9] == 3.5 and out["temperatures"][-1] == 14.0 and len(out["temperatures"]) == 15
    )


@pytest.mark.parametrize(
    ("frame", "reason"),
    [("30030c0000020c0000c2b20000c350ee9b", "bad_crc"), ("zz", "not valid hex"), ("308302913e", "exception")],
)
def test_decode_bad_frame_exits_1_with_reason(
    capsys: pytest.CaptureFixture[str], frame: str, reason: str
) -> None:
    assert main(["decode", "5042", frame]) == 1
    assert reason in capsys.readouterr().err


def test_keygen(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen"]) == 0
    assert len(decode_key(capsys.readouterr().out.strip())) == 32


def test_config_error_exits_2(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RENOGY_POLL_INTERVAL", "-1")
    assert main(["reader"]) == 2
    assert "reader.poll_interval" in capsys.readouterr().err


def test_custom_backend_by_name() -> None:
    assert load_class("services.simulator:SimBT2Client") is SimBT2Client
    backends = resolve_backends(
        load_config(environ={"RENOGY_BLE_BACKEND": "services.simulator:SimBT2Client"})
    )
    assert backends.client is SimBT2Client
    with pytest.raises(ValueError, match="cannot load BLE backend"):
        load_class("services.simulator:Nope")
