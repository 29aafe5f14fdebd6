"""One cached venv per aioesphomeapi release, built with the interpreter that runs the tests.

``${XDG_CACHE_HOME:-~/.cache}/renogy-bt-proxy/compat/aioesphomeapi-<version>`` holds a venv with
exactly ``aioesphomeapi==<version>`` (and whatever that release pulls in) from the configured
package index. A stamp file written last marks a venv as complete, so one left half-made by an
interrupted build is removed and built again; a lock file per version makes two processes that
build at once take turns (the second finds the first one's stamp and reuses the venv).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

STAMP_NAME = ".renogy-compat-complete"
BUILD_TIMEOUT = 900.0  # seconds for venv + pip install of one release
LOCK_TIMEOUT = 1200.0  # seconds to wait for another process's build of the same release


@dataclass(frozen=True, slots=True)
class ClientRelease:
    version: str
    ha_release: str  # the Home Assistant release that pins it, "-" when none is known here


RELEASES: tuple[ClientRelease, ...] = (
    ClientRelease("21.0.3", "2024.1"),
    ClientRelease("24.6.2", "-"),
    ClientRelease("29.9.0", "2025.4"),
    ClientRelease("43.14.0", "2026.2"),
    ClientRelease("46.23.0", "project pin"),
)


class VenvUnavailable(RuntimeError):
    """The venv of a release could not be built (no index reachable, pip failed, ...)."""


@dataclass(frozen=True, slots=True)
class ClientVenv:
    version: str
    path: Path
    built: bool  # True if this call built it, False if a complete one was reused
    seconds: float  # time spent here (waiting for the lock included)

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "renogy-bt-proxy" / "compat"


def table_path() -> Path:
    """Where the matrix test writes its last result table (and ``.json`` beside it)."""
    return cache_root() / "matrix.txt"


def venv_path(version: str) -> Path:
    return cache_root() / f"aioesphomeapi-{version}"


def _interpreter() -> str:
    """The real interpreter behind sys.executable (the project venv's python is a symlink to it)."""
    return os.path.realpath(sys.executable)


def _stamp_body(version: str) -> dict[str, str]:
    return {"requirement": f"aioesphomeapi=={version}", "interpreter": _interpreter(), "python": sys.version}


def is_complete(version: str) -> bool:
    path = venv_path(version)
    stamp = path / STAMP_NAME
    if not stamp.is_file() or not (path / "bin" / "python").exists():
        return False
    try:
        body = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    return bool(body == _stamp_body(version))


def client_env() -> dict[str, str]:
    """The environment for the venv's own processes: the caller's venv and import paths left out."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTHONSAFEPATH"):
        env.pop(name, None)
    return env


@contextlib.contextmanager
def _locked(lock_path: Path, timeout: float) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise VenvUnavailable(
                        f"{lock_path} stayed locked for {timeout:.0f} s (another build hung?)"
                    ) from None
                time.sleep(0.2)  # polling the lock another process holds, with a deadline
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _run(cmd: list[str], what: str, timeout: float) -> None:
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=client_env(), check=False
        )
    except subprocess.TimeoutExpired:
        raise VenvUnavailable(f"{what} did not finish within {timeout:.0f} s") from None
    except OSError as exc:
        raise VenvUnavailable(f"{what} could not start: {exc}") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise VenvUnavailable(f"{what} failed (exit {proc.returncode}):\n{tail}")


def _build(version: str, timeout: float) -> None:
    path = venv_path(version)
    if path.exists():
        shutil.rmtree(path)  # half-made or made by another interpreter: start over
    deadline = time.monotonic() + timeout
    _run([sys.executable, "-m", "venv", str(path)], f"python -m venv {path}", timeout)
    python = str(path / "bin" / "python")
    _run(
        [python, "-m", "pip", "install", "--quiet", "--no-input", f"aioesphomeapi=={version}"],
        f"pip install aioesphomeapi=={version}",
        max(1.0, deadline - time.monotonic()),
    )
    check = (
        "import importlib.metadata as m, aioesphomeapi.client; "
        f"assert m.version('aioesphomeapi') == {version!r}"
    )
    _run([python, "-I", "-c", check], f"import check of aioesphomeapi {version}", 60)
    (path / STAMP_NAME).write_text(json.dumps(_stamp_body(version)))


def ensure_venv(version: str, *, timeout: float = BUILD_TIMEOUT) -> ClientVenv:
    """The complete venv of ``version``, built first if needed; VenvUnavailable says why it cannot be."""
    started = time.monotonic()
    path = venv_path(version)
    if is_complete(version):
        return ClientVenv(version, path, False, time.monotonic() - started)
    with _locked(path.with_name(path.name + ".lock"), LOCK_TIMEOUT):
        if is_complete(version):  # another process finished it while we waited
            return ClientVenv(version, path, False, time.monotonic() - started)
        _build(version, timeout)
    return ClientVenv(version, path, True, time.monotonic() - started)


def main() -> None:
    """``python -m tests.compat.venvs [VERSION...]``: build (or confirm) the venvs and say how long it took."""
    versions = sys.argv[1:] or [r.version for r in RELEASES]
    for version in versions:
        try:
            venv = ensure_venv(version)
        except VenvUnavailable as exc:
            print(f"{version}: unavailable: {exc}")
            continue
        print(f"{version}: {'built' if venv.built else 'reused'} in {venv.seconds:.1f} s at {venv.path}")


if __name__ == "__main__":
    main()
