"""deploy/systemd units: `systemd-analyze verify` clean, sandboxed, ordered, running real subcommands."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services.cli import build_parser
from tests.deploy.support import UNITS

INSTALLED = "/opt/renogy-proxy/.venv/bin/renogy-proxy"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or (
    "/usr/bin/systemd-analyze" if Path("/usr/bin/systemd-analyze").exists() else None
)
MAX_EXPOSURE = 2.0


def _unit(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser


def _local_copies(tmp_path: Path) -> list[Path]:
    """The units with ExecStart pointing at this venv's console script (verify checks it exists)."""
    script = Path(sys.executable).parent / "renogy-proxy"
    assert script.exists(), f"{script} missing: install the project into the venv (pip install -e .)"
    copies = []
    for unit in UNITS:
        text = unit.read_text()
        assert INSTALLED in text
        copy = tmp_path / unit.name
        copy.write_text(text.replace(INSTALLED, str(script)))
        copies.append(copy)
    return copies


def test_the_expected_units_exist() -> None:
    assert [u.name for u in UNITS] == [
        "renogy-proxy-aggregator.service",
        "renogy-proxy-gateway.service",
        "renogy-proxy-reader.service",
        "renogy-proxy.service",
    ]


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed: units not verified")
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    copies = _local_copies(tmp_path)
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", *map(str, copies)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    # verify exits 0 on unknown keys and bad values too; it only prints them.
    ours = [line for line in (done.stdout + done.stderr).splitlines() if "renogy-proxy" in line]
    assert done.returncode == 0 and not ours, done.stdout + done.stderr


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed: units not verified")
def test_systemd_analyze_verify_reports_mistakes(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    copy = _local_copies(tmp_path)[0]
    copy.write_text(copy.read_text().replace("Restart=always", "Restart=sometimes"))
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(copy)], capture_output=True, text=True, check=False
    )
    assert "sometimes" in done.stdout + done.stderr


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed: units not scored")
def test_sandbox_exposure_is_low(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    for copy in _local_copies(tmp_path):
        done = subprocess.run(
            [SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(copy)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=tmp_path,
        )
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout + done.stderr)
        if match is None and "offline" in done.stderr:
            pytest.skip("this systemd-analyze cannot score unit files offline")
        assert match, done.stdout + done.stderr
        assert float(match[1]) <= MAX_EXPOSURE, f"{copy.name}: exposure {match[1]}"


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_policy(path: Path) -> None:
    unit = _unit(path)
    service, deps = unit["Service"], unit["Unit"]
    subcommands = set(next(a for a in build_parser()._actions if a.dest == "command").choices)
    command = service["ExecStart"].split()
    assert command[0] == INSTALLED and command[1] in subcommands
    assert service["Restart"] == "always"
    assert "network-online.target" in deps["After"] and "network-online.target" in deps["Wants"]
    if command[1] in ("reader", "run"):
        assert "bluetooth.service" in deps["After"]
        assert service["SupplementaryGroups"] == "bluetooth"
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "DynamicUser": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert service[key] == value, f"{path.name}: {key}"
    state = service["StateDirectory"]
    assert service["Environment"] == f"RENOGY_STATE_DIR=%S/{state}"
    assert service["EnvironmentFile"] == "-/etc/renogy-proxy/env"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_the_embedded_stack_and_the_separate_units_exclude_each_other() -> None:
    by_name = {p.name: _unit(p) for p in UNITS}
    stack = by_name.pop("renogy-proxy.service")
    assert set(stack["Unit"]["Conflicts"].split()) == set(by_name)
    for unit in by_name.values():
        assert unit["Unit"]["Conflicts"] == "renogy-proxy.service"
    states = [u["Service"]["StateDirectory"] for u in (*by_name.values(), stack)]
    assert len(set(states)) == len(states), "dynamic users must not share a state directory"
