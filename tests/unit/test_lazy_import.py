"""shared/lazy_import.py: a deferred module costs nothing until used, then is the real module."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import shared.mqtt  # defers urllib.request before paho imports it
from shared.lazy_import import is_loaded
import urllib.request  # as paho does: finds the placeholder, runs nothing
before = (is_loaded("urllib.request"), "http.client" in sys.modules)
from urllib.request import getproxies  # the first use loads the real module
import urllib
after = (
    is_loaded("urllib.request"),
    "http.client" in sys.modules,
    urllib.request is sys.modules["urllib.request"],
    getproxies is urllib.request.getproxies,
    callable(urllib.request.proxy_bypass),
)
print(before, after)
"""


def test_urllib_request_loads_on_first_use_only() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "(False, False) (True, True, True, True, True)"


def test_defer_leaves_an_imported_module_alone() -> None:
    import json

    from shared.lazy_import import defer, is_loaded

    defer("json")  # already imported: a no-op
    defer("json.decoder")
    assert sys.modules["json"] is json and is_loaded("json") and is_loaded("json.decoder")
