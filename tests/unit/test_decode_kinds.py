"""`renogy-proxy decode --kind KIND REGISTER HEX` decodes every family's real frames (tests/data/devices)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.cli import main

DATA = Path(__file__).resolve().parents[1] / "data" / "devices"
KINDS = ("controller", "dcc", "inverter", "shunt")


def vectors() -> list[Any]:
    out = []
    for kind in KINDS:
        for vector in json.loads((DATA / f"{kind}.json").read_text())["vectors"]:
            frame = vector.get("response_hex") or vector.get("payload_hex")
            if frame:
                out.append(pytest.param(kind, vector, frame, id=vector["id"]))
    return out


def decode(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any] | None, str]:
    code = main(["decode", *argv])
    captured = capsys.readouterr()
    return code, (orjson.loads(captured.out) if code == 0 else None), captured.err


@pytest.mark.parametrize(("kind", "vector", "frame"), vectors())
def test_every_real_frame_of_every_kind_decodes(
    capsys: pytest.CaptureFixture[str], kind: str, vector: dict[str, Any], frame: str
) -> None:
    code, result, err = decode(capsys, "--kind", kind, str(vector["register"]), frame)
    assert code == 0, err
    assert result is not None and result["kind"] == kind
    for key, expected in vector["expected"].items():
        value = result.get(key)
        if isinstance(expected, float):
            assert value == pytest.approx(expected, abs=1e-6), key
        else:
            assert value == expected, key


def test_a_rover_block_given_in_decimal(capsys: pytest.CaptureFixture[str]) -> None:
    rover = json.loads((DATA / "controller.json").read_text())["vectors"][0]
    code, result, _ = decode(capsys, "--kind", "controller", "256", rover["response_hex"])
    assert code == 0 and result is not None
    assert result["words"] == 34 and result["slave_id"] == 255
    assert result["pv_voltage"] == pytest.approx(23.2)


def test_the_wrong_kind_or_register_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    battery_status = "30030c0000020c0000c2b20000c350ee9a"  # a battery's 5042 x 6 reply
    code, _, err = decode(capsys, "--kind", "controller", "5042", battery_status)
    assert code == 1
    assert err.startswith("error: ") and "another kind" in err and "Traceback" not in err
    code, _, err = decode(capsys, "--kind", "shunt", "0", "ff0344")
    assert code == 1 and err.startswith("error: ")


def test_battery_stays_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    code, result, _ = decode(capsys, "5042", "30030c0000020c0000c2b20000c350ee9a")
    assert code == 0 and result is not None
    assert "kind" not in result and result["voltage"] == pytest.approx(52.4)
