"""aioesphomeapi's protocol modules (api_pb2, api_options_pb2, core) without the rest of the client.

The gateway needs only the pinned client's protobuf classes and its message-id table. Importing
``aioesphomeapi.api_pb2`` the ordinary way first runs the package ``__init__``, which imports the whole
client, its connection code and ``aioesphomeapi.model`` (~190 ms and ~15 MB here) only to throw them away.

:func:`load` imports the three submodules under their real names with a temporary package shell in
``sys.modules`` (a bare module with the package's ``__path__``), then removes the shell. The
submodules stay registered, so a later ``import aioesphomeapi`` (the tests' client in the same process)
runs the real ``__init__``, whose ``from .api_pb2 import ...`` finds and reuses these very modules: one
copy of every message class and one registration in protobuf's default descriptor pool. A one-shot
finder (it removes itself at that import) binds them as attributes of the real package, as an
ordinary import would have (``aioesphomeapi.api_pb2``). When the real package is already imported, its
own modules are returned.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Sequence
from typing import Any, NamedTuple

PACKAGE = "aioesphomeapi"
SUBMODULES = ("api_options_pb2", "api_pb2", "core")  # in dependency order


class Protocol(NamedTuple):
    api_pb2: types.ModuleType
    core: types.ModuleType


class _Bind(importlib.abc.Loader):
    """The real package's loader, which first binds the preloaded submodules to the new package."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        module: types.ModuleType | None = self._loader.create_module(spec)
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        for name in SUBMODULES:
            if (sub := sys.modules.get(f"{PACKAGE}.{name}")) is not None:
                setattr(module, name, sub)
        self._loader.exec_module(module)

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, get_code, ...
        return getattr(self._loader, name)


class _BindOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: hands the real package's spec over with the binding loader, once."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != PACKAGE:
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Bind(spec.loader)
        return spec


def load() -> Protocol:
    """The pinned aioesphomeapi's api_pb2 and core, importing nothing else of the package."""
    if PACKAGE in sys.modules or all(f"{PACKAGE}.{name}" in sys.modules for name in SUBMODULES):
        # The real package is imported, or this ran before: its modules, never a second copy.
        return Protocol(*(importlib.import_module(f"{PACKAGE}.{name}") for name in ("api_pb2", "core")))
    spec = importlib.util.find_spec(PACKAGE)  # finds the package without executing its __init__
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError(f"{PACKAGE} is not installed (pinned in pyproject.toml)")
    shell = types.ModuleType(PACKAGE, "temporary package shell: see services/gateway/esphome_protocol.py")
    shell.__path__ = list(spec.submodule_search_locations)
    shell.__package__ = PACKAGE
    sys.modules[PACKAGE] = shell
    try:
        loaded = {name: importlib.import_module(f"{PACKAGE}.{name}") for name in SUBMODULES}
    except BaseException:
        for name in SUBMODULES:
            sys.modules.pop(f"{PACKAGE}.{name}", None)
        raise
    finally:
        # The real package, when something imports it, is created afresh from its spec.
        if sys.modules.get(PACKAGE) is shell:
            del sys.modules[PACKAGE]
    sys.meta_path.insert(0, _BindOnImport())
    return Protocol(loaded["api_pb2"], loaded["core"])
