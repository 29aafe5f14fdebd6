"""Make the skip of the real-Home-Assistant test visible in plain `make test` output."""

from __future__ import annotations

import os

import pytest

from tests.ha import GATE


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = [
        r for r in terminalreporter.stats.get("skipped", []) if "tests/ha/" in str(getattr(r, "nodeid", ""))
    ]
    if skipped and not os.environ.get(GATE):
        terminalreporter.write_line(
            f"tests/ha: {len(skipped)} real Home Assistant tests skipped; run `make test-ha` ({GATE}=1)",
            yellow=True,
        )
