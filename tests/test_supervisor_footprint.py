"""What a forked service copies of the supervisor's memory at start (issue 15): each mechanism that made
every child build its own copy of something the supervisor could build once is checked in a real
preloaded, forked child (a fresh interpreter per test: the preload must be the supervisor's alone)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(
    not hasattr(os, "fork"), reason="the supervisor forks only where os.fork exists"
)


def in_forked_child(body: str) -> dict[str, Any]:
    """Run ``body`` in a child forked from a preloaded supervisor; ``body`` sets ``result`` (JSON)."""
    script = f"""
import json, os, sys
from services.supervisor import preload
preload(simulator=True)
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    result = None
{_indent(body)}
    os.write(write, json.dumps(result).encode())
    os._exit(0)
os.close(write)
out = b""
while chunk := os.read(read, 65536):
    out += chunk
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
print(out.decode())
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RENOGY_", "PYTHONTRACEMALLOC"))}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return found


def _indent(body: str) -> str:
    return "\n".join("    " + line for line in body.strip().splitlines())


def test_a_child_interns_new_names_without_growing_the_interned_table() -> None:
    """The preload leaves CPython's table of interned strings with room: a child that interns a couple of
    thousand new names (a module imported at run time) does not allocate a table of its own (~1 MB)."""
    result = in_forked_child(
        """
import _tracemalloc
_tracemalloc.start(1)
base = _tracemalloc.get_traced_memory()[0]
names = [sys.intern(f"name-{i}-of-a-late-module") for i in range(2000)]  # held, as a module holds them
result = {"peak_kb": (_tracemalloc.get_traced_memory()[1] - base) // 1024}
"""
    )
    # The names and their list take ~150 KB; a resized table alone is ~950 KB.
    assert result["peak_kb"] < 400, result


def test_a_child_imports_nothing_for_the_default_executor() -> None:
    """asyncio's default executor (asyncio.to_thread: the gateway's start, every MQTT stop) is preloaded:
    a child importing it itself would hold its own copy of those modules."""
    result = in_forked_child(
        """
import asyncio
before = set(sys.modules)
asyncio.run(asyncio.to_thread(int))
result = sorted(set(sys.modules) - before)
"""
    )
    assert result == []


def test_a_child_sets_its_log_format_without_touching_every_logger() -> None:
    """setup_logging again in a fork keeps the supervisor's handler and, at the same level, clears no
    logger's cache (setLevel does, for every logger: each one touched is a page copied)."""
    result = in_forked_child(
        """
import io, logging
from shared.logsetup import setup_logging
setup_logging("info", "run")  # the supervisor's
handler = logging.getLogger().handlers[0]
logging.getLogger("some.library").isEnabledFor(logging.INFO)  # fills that logger's cache
setup_logging("info", "gateway")
cache = dict(logging.getLogger("some.library")._cache)
handler.stream = io.StringIO()
logging.getLogger("some.library").warning("hello")
result = {
    "same_handler": logging.getLogger().handlers == [handler],
    "cache": cache,
    "line": handler.stream.getvalue(),
}
setup_logging("debug", "gateway")  # a new level still applies
result["debug"] = logging.getLogger("some.library").isEnabledFor(logging.DEBUG)
"""
    )
    assert result["same_handler"]
    assert result["cache"] == {"20": True}  # JSON keys
    assert " WARNING gateway some.library: hello" in result["line"]
    assert result["debug"] is True


def test_a_child_loads_no_c_library_of_its_own() -> None:
    """prctl (process name, death signal) comes from one CDLL the supervisor loaded before the fork."""
    result = in_forked_child(
        """
import ctypes
from services import supervisor
made = []
original = ctypes.CDLL.__init__
def counting(self, *args, **kwargs):
    made.append(args)
    original(self, *args, **kwargs)
ctypes.CDLL.__init__ = counting
supervisor._die_with_parent()
supervisor._set_process_name("renogy-test")
result = {"made": len(made), "comm": open("/proc/self/comm").read().strip()}
"""
    )
    assert result == {"made": 0, "comm": "renogy-test"}


def test_a_child_changes_only_the_environment_variables_that_differ() -> None:
    """Only what differs is set or removed: the rest stay the very objects the supervisor made."""
    result = in_forked_child(
        """
from services import supervisor
os.environ["KEPT"], os.environ["GONE"], os.environ["CHANGED"] = "1", "2", "3"
kept = os.environ._data[b"KEPT"]
env = {k: v for k, v in os.environ.items() if k != "GONE"} | {"CHANGED": "4", "NEW": "5"}
supervisor._set_environ(env)
result = {"same": dict(os.environ) == env, "kept_object": os.environ._data[b"KEPT"] is kept,
          "libc": [os.getenv(k) for k in ("GONE", "CHANGED", "NEW")]}
"""
    )
    assert result == {"same": True, "kept_object": True, "libc": [None, "4", "5"]}
