"""Which bleak backends the reader uses: BlueZ, a custom module:Class, or the built-in simulator."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from bleak.backends.client import BaseBleakClient
from bleak.backends.scanner import BaseBleakScanner

from shared.config import Config


@dataclass(frozen=True, slots=True)
class Backends:
    client: type[BaseBleakClient] | None
    scanner: type[BaseBleakScanner] | None
    adapter_address: str | None = None
    simulator: Any = None
    # The backend of proxied GATT connections (active Bluetooth proxy) when it is not ``client``.
    proxy_client: type[BaseBleakClient] | None = None


def load_class(spec: str) -> type[Any]:
    """Import 'module:Class'."""
    module_name, _, class_name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module_name), class_name)  # type: ignore[no-any-return]
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load BLE backend {spec!r}: {exc}") from exc


def resolve_backends(config: Config) -> Backends:
    """The bleak backends to use: the simulator, a custom module:Class, or BlueZ (None)."""
    if config.simulator.enabled:
        from services.reader.simulate import simulator_backends  # noqa: PLC0415 - keeps the simulator optional

        return simulator_backends(config)
    if config.reader.backend:
        client = load_class(config.reader.backend)
        scanner = getattr(client, "scanner_backend", None)
        return Backends(client, scanner)
    return Backends(None, None)
