"""Each process imports only what it uses (issue 15): a subprocess per service's import path, and its
sys.modules checked against the heavy modules that process must not load.

amqtt (and its websockets/transitions) only in the embedded broker; the aioesphomeapi client and model
nowhere (the gateway takes api_pb2/core alone, services/gateway/esphome_protocol.py); cryptography and
noise only once an encrypted connection needs them; the simulator only in a reader that uses it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

AMQTT = ("amqtt", "websockets", "transitions", "passlib")
CLIENT = ("aioesphomeapi", "aioesphomeapi.client", "aioesphomeapi.model", "aioesphomeapi.connection")
CRYPTO = ("cryptography", "noise")
# psutil only where a service asks it for more than its own RSS (the gateway's interfaces, a held port).
PSUTIL = ("psutil",)
# The package's version is a constant (shared/version.py): the metadata machinery costs ~1.7 MB of heap
# that every forked service would map, and 50 ms of start-up.
METADATA = ("importlib.metadata",)
# urllib.request (with http.client and email: 40 modules, ~2 MB) is what paho imports to look for a
# SOCKS proxy, used only with PySocks installed: deferred (shared/lazy_import.py), never loaded here.
URLLIB = ("http.client", "email.parser")
# What `renogy-proxy` itself, the supervisor and the tools load before a command needs more.
LIGHT = ("paho", "psutil", "importlib.metadata", "google.protobuf", "zeroconf", "bleak", "services.simulator")

# process -> (modules its command imports, modules it must not import)
BUDGET: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "cli": ((), (*AMQTT, *CLIENT, *CRYPTO, *LIGHT)),
    "supervisor": (("services.supervisor",), (*AMQTT, *CLIENT, *CRYPTO, *LIGHT, *URLLIB)),
    "reader": (
        ("services.reader.service",),
        (
            *AMQTT,
            *CLIENT,
            *CRYPTO,
            *PSUTIL,
            *METADATA,
            *URLLIB,
            "google.protobuf",
            "zeroconf",
            "services.simulator",
            "services.gateway",
        ),
    ),
    "aggregator": (
        ("services.aggregator.service",),
        (
            *AMQTT,
            *CLIENT,
            *CRYPTO,
            *PSUTIL,
            *METADATA,
            *URLLIB,
            "google.protobuf",
            "zeroconf",
            "bleak",
            "services.simulator",
        ),
    ),
    "gateway": (
        ("services.gateway.service",),
        (*AMQTT, *CLIENT, *CRYPTO, *PSUTIL, *METADATA, *URLLIB, "bleak", "services.simulator"),
    ),
    "broker": (("services.broker", "amqtt.broker"), (*CLIENT, *CRYPTO, "bleak", "zeroconf")),
}

PROBE = """
import json, sys
import services.cli
for name in sys.argv[1:]:
    __import__(name)
print(json.dumps(sorted(sys.modules)))
"""


def loaded(modules: tuple[str, ...]) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *modules], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(out.stdout))


def importers(modules: tuple[str, ...], forbidden: str) -> str:
    """The -X importtime lines from the forbidden module on: the less indented ones after it imported it."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", PROBE, *modules],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = out.stderr.splitlines()
    hit = next((i for i, line in enumerate(lines) if line.split("|")[-1].strip() == forbidden), None)
    return "" if hit is None else "\n".join(lines[hit : hit + 12])


@pytest.mark.parametrize("process", sorted(BUDGET))
def test_process_imports_nothing_heavy_it_does_not_use(process: str) -> None:
    if process == "broker":
        pytest.importorskip("amqtt")
    modules, forbidden = BUDGET[process]
    found = loaded(modules)
    bad = sorted(name for name in forbidden if name in found)
    assert not bad, f"{process} imports {bad}; first importers:\n{importers(modules, bad[0])}"


def test_gateway_protocol_modules_are_the_clients_own() -> None:
    """The gateway's api_pb2 without the package __init__, then the real client in the same process:
    one api_pb2 (one set of classes, one descriptor-pool entry), bound on the real package."""
    code = """
import sys
from services.gateway.proto import pb
from services.gateway.messages import CLASS_OF, HELLO_REQUEST
assert "aioesphomeapi" not in sys.modules and "aioesphomeapi.client" not in sys.modules
import aioesphomeapi
from aioesphomeapi import APIClient, api_pb2
from aioesphomeapi.core import MESSAGE_TYPE_TO_PROTO
from google.protobuf import descriptor_pool
assert api_pb2 is pb and aioesphomeapi.api_pb2 is pb
assert aioesphomeapi.core.MESSAGE_TYPE_TO_PROTO is MESSAGE_TYPE_TO_PROTO
assert CLASS_OF[HELLO_REQUEST] is aioesphomeapi.core.HelloRequest is pb.HelloRequest
assert descriptor_pool.Default().FindFileByName("api.proto") is pb.DESCRIPTOR
assert aioesphomeapi.__spec__.loader.is_package("aioesphomeapi")
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "ok", out.stderr


def test_gateway_protocol_reuses_an_imported_client() -> None:
    """Client first (as in the gateway tests), then the gateway: the same modules, nothing reloaded."""
    import aioesphomeapi.api_pb2

    from services.gateway.esphome_protocol import load

    assert load().api_pb2 is aioesphomeapi.api_pb2


def test_the_version_constant_is_the_installed_distributions() -> None:
    """pyproject.toml takes its version from shared/version.py, so what pip installed says the same."""
    from importlib import metadata

    from shared.version import __version__

    assert metadata.version("renogy-bt-esphome-proxy") == __version__
