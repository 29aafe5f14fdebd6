"""``python -m tests.compat [PYTEST_ARGS...]`` runs the client-version matrix and prints its table;
``python -m tests.compat table`` prints the table of the last run without running anything."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.compat.venvs import table_path

MATRIX_TEST = Path(__file__).with_name("test_compat_matrix.py")


def _mtime(path: Path) -> float | None:
    return path.stat().st_mtime if path.exists() else None


def main(argv: list[str]) -> int:
    path = table_path()
    if argv[:1] == ["table"]:
        if not path.exists():
            print(f"no matrix table yet ({path}); run make compat")
            return 1
        print(path.read_text(), end="")
        return 0
    before = _mtime(path)
    code = int(pytest.main(["-q", "-p", "no:cacheprovider", str(MATRIX_TEST), *argv]))
    if _mtime(path) == before:
        print(f"no matrix table written (every release skipped or the stack did not start); last one: {path}")
    else:
        print(f"\n{path.read_text()}", end="")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
