"""The protobuf classes of the pinned aioesphomeapi, typed loosely (the generated module has no stubs)."""

from __future__ import annotations

from typing import Any

from aioesphomeapi import api_pb2 as _api_pb2

pb: Any = _api_pb2
