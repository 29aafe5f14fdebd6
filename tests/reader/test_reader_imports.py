"""The reader's modules import without cycles, and the poller without the MQTT shell."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_simulator_backend_does_not_import_the_mqtt_service() -> None:
    """No service <-> simulate cycle: building the simulator's backends needs no MQTT shell (it did lazily)."""
    code = (
        "import sys\n"
        "from services.reader.simulate import simulator_backends\n"
        "from shared.config import load_config\n"
        "backends = simulator_backends(load_config(environ={}, overrides={'simulator.enabled': True}))\n"
        "backends.simulator.close()\n"
        "sys.exit('services.reader.service imported' if 'services.reader.service' in sys.modules else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_poller_imports_nothing_of_mqtt() -> None:
    tree = ast.parse((ROOT / "services" / "reader" / "poller.py").read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {"shared.mqtt", "services.reader.outbox", "services.reader.service"} & imported
