"""Defer a module a dependency imports but rarely uses, until something uses it.

A placeholder module goes into sys.modules (and onto its package, as the import system would bind
it); an `import` of the name then finds it without running anything, and the first attribute looked
up on it imports the real module, puts that in its place, and answers from it. importlib's own
LazyLoader cannot do this on Python 3.11: the import statement reads the module's __spec__, which
makes a LazyLoader module load at once.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any


class _Deferred(types.ModuleType):
    """Stands in for a module not imported yet; the first missing attribute imports it."""

    def __getattr__(self, attr: str) -> Any:
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        real = importlib.import_module(name)  # binds the real module on its package, too
        return getattr(real, attr)


def defer(name: str) -> None:
    """Make submodule ``name`` (e.g. ``urllib.request``) load on first use; a no-op once imported."""
    if name in sys.modules:
        return
    parent, _, child = name.rpartition(".")
    spec = importlib.util.find_spec(name)
    if not parent or spec is None:
        return
    placeholder = _Deferred(name)
    placeholder.__spec__ = None  # the import system then takes it as loaded (not initialising)
    sys.modules[name] = placeholder
    setattr(sys.modules[parent], child, placeholder)


def is_loaded(name: str) -> bool:
    """Imported and executed (a deferred module that nothing has used yet is not)."""
    module = sys.modules.get(name)
    return module is not None and not isinstance(module, _Deferred)
