"""Atomic JSON persistence of the counters: temp file + fsync + rename; corrupt files are set aside."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson

_LOGGER = logging.getLogger(__name__)

STORE_SCHEMA = 1
T = TypeVar("T")


class StateStore:
    """One JSON document with a schema number, replaced atomically on every save."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.saves = 0
        self.errors = 0
        self.problem: str | None = None  # why the file cannot be read, when it cannot

    def load(self, decode: Callable[[dict[str, Any]], T]) -> T | None:
        """The decoded document; None when there is none or it was corrupt (then moved aside)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            _LOGGER.info("no state file at %s; starting with empty counters", self.path)
            return None
        except OSError as exc:  # a directory, no permission, an I/O error: not a reason to crash-loop
            self.problem = f"{type(exc).__name__}: {exc.strerror or exc}"
            _LOGGER.error(
                "cannot read the state file %s (%s); carrying on with the broker's retained device states as "
                "the only copy of the energy counters. Fix the path (state_dir, RENOGY_STATE_DIR) or remove "
                "what is in the way",
                self.path,
                self.problem,
            )
            return None
        try:
            obj = orjson.loads(data)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
            if obj.get("schema") != STORE_SCHEMA:
                raise ValueError(f"schema {obj.get('schema')!r}, expected {STORE_SCHEMA}")
            return decode(obj)
        except (ValueError, TypeError, KeyError) as exc:  # orjson.JSONDecodeError is a ValueError
            self.set_aside(str(exc))
            return None

    def set_aside(self, reason: str) -> Path | None:
        """Move a corrupt file out of the way so the next save starts fresh; returns its new name."""
        target = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        suffix = 0
        while target.exists():
            suffix += 1
            target = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}-{suffix}")
        try:
            self.path.rename(target)
        except OSError as exc:
            _LOGGER.error(
                "state file %s is corrupt (%s) and cannot be moved aside: %s", self.path, reason, exc
            )
            return None
        _LOGGER.error(
            "state file %s is corrupt (%s); moved it to %s and starting from the retained states",
            self.path,
            reason,
            target,
        )
        return target

    def save(self, document: dict[str, Any]) -> None:
        """Write atomically and durably; raises OSError (the caller counts and logs it)."""
        try:
            if self.path.is_dir():
                raise IsADirectoryError(21, "is a directory", str(self.path))
            self._write({"schema": STORE_SCHEMA, **document})
        except OSError:
            self.errors += 1
            raise
        self.saves += 1

    def _write(self, document: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        data = orjson.dumps(document, option=orjson.OPT_INDENT_2)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        # The rename is durable only once the directory entry is on disk too.
        with contextlib.suppress(OSError):
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
