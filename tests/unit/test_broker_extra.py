"""amqtt is an optional extra: only the embedded broker may import it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services import broker
from tests.deploy.support import ROOT


@pytest.mark.parametrize("module", ["services.supervisor", "services.cli", "services.gateway.service"])
def test_services_do_not_import_amqtt(module: str) -> None:
    code = f"import sys, {module}; sys.exit('amqtt' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False).returncode == 0


def test_a_missing_amqtt_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # A venv without the extra cannot be had cheaply here; a failing import stands in for it.
    monkeypatch.setitem(sys.modules, "amqtt.broker", None)
    with pytest.raises(broker.BrokerUnavailable, match=r"renogy-bt-esphome-proxy\[broker\]"):
        broker.make_broker("127.0.0.1", 1883)
