"""The protobuf classes of the pinned aioesphomeapi, typed loosely (the generated module has no stubs)."""

from __future__ import annotations

from typing import Any

from services.gateway.esphome_protocol import load

# Only api_pb2 (and core, for the id table), not the whole client package: esphome_protocol.py.
pb: Any = load().api_pb2
