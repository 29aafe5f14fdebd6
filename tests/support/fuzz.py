"""Fuzz budgets: short in `make test`, long under `make fuzz` (RENOGY_PROOF=long)."""

from __future__ import annotations

import os


def long_run() -> bool:
    return os.environ.get("RENOGY_PROOF") == "long"


def budget(short: int, long: int | None = None) -> int:
    """Hypothesis max_examples for this run."""
    return (long if long is not None else short * 100) if long_run() else short
