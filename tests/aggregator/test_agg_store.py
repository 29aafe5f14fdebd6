"""Atomic persistence of the counters; corrupt files are set aside, never fatal."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.aggregator.store import STORE_SCHEMA, StateStore


def identity(doc: dict[str, Any]) -> dict[str, Any]:
    return doc


def test_save_and_load(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "sub" / "aggregator-default.json")
    assert store.load(identity) is None
    store.save({"batteries": {"battery_48": 1}})
    store.save({"batteries": {"battery_48": 2}})
    assert store.saves == 2
    loaded = store.load(identity)
    assert loaded == {"schema": STORE_SCHEMA, "batteries": {"battery_48": 2}}
    assert sorted(p.name for p in store.path.parent.iterdir()) == ["aggregator-default.json"]  # no temp left


CORRUPT = [b"{not json", b"", b"[1, 2]", b'{"schema": 99}', b'{"schema": 1, "x": 1}']


@pytest.mark.parametrize("content", CORRUPT)
def test_corrupt_file_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    path = tmp_path / "aggregator-default.json"
    path.write_bytes(content)

    def strict(doc: dict[str, Any]) -> dict[str, Any]:
        if "x" in doc:
            raise ValueError("unexpected x")
        return doc

    store = StateStore(path)
    with caplog.at_level(logging.ERROR):
        assert store.load(strict) is None
    assert not path.exists()
    aside = list(tmp_path.glob("aggregator-default.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == content
    assert any(r.levelno == logging.ERROR and "corrupt" in r.getMessage() for r in caplog.records)
    store.save({"fresh": True})  # the service carries on with a new file
    assert orjson.loads(path.read_bytes())["fresh"] is True


def test_two_corrupt_files_in_one_second_are_both_kept(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    for _ in range(2):
        path.write_bytes(b"garbage")
        StateStore(path).load(identity)
    assert len(list(tmp_path.glob("a.json.corrupt-*"))) == 2


def test_save_failure_is_counted_and_raised(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("x")
    store = StateStore(tmp_path / "not-a-dir" / "a.json")
    with pytest.raises(OSError):
        store.save({"x": 1})
    assert store.errors == 1 and store.saves == 0
