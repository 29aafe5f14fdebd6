"""`renogy-proxy status` with readings of every kind: batteries as before, the other kinds listed."""

from __future__ import annotations

import orjson

from services.ops.session import Retained
from services.ops.status import evaluate, render_table
from shared.config import load_config
from shared.topics import Topics

BT2 = "c464e3383d0e"
NOW = 10_000.0


def _reading(ts: float, **values: object) -> bytes:
    return orjson.dumps({"schema": 1, "ts": ts, "bt2": BT2, **values})


def test_status_lists_other_kinds_beside_the_batteries() -> None:
    topics = Topics()
    messages = {
        topics.reading(BT2, 48): _reading(NOW - 5, slave_id=48, voltage=52.0, current=1.0),
        topics.reading(BT2, 1, "controller"): _reading(NOW - 5, kind="controller", slave_id=1, pv_power=300),
        topics.reading(BT2, 96, "dcc"): _reading(NOW - 500, kind="dcc", slave_id=96),
        f"renogy/bt2/{BT2}/toaster/1/reading": _reading(NOW, kind="toaster", slave_id=1),
    }
    report = evaluate(Retained(messages), load_config(environ={}), now=NOW)
    assert [(b.bt2, b.slave_id) for b in report.batteries] == [(BT2, 48)]  # batteries only, as before
    by_name = {d.name: d for d in report.devices}
    assert sorted(by_name) == [f"controller 1 @{BT2}", f"dcc 96 @{BT2}"]  # no unknown kind
    assert not by_name[f"controller 1 @{BT2}"].problems
    assert "last reading 500 s old" in by_name[f"dcc 96 @{BT2}"].problems[0]
    assert any("dcc 96" in p for p in report.problems)
    rows = {line.split("  ")[0]: line.split() for line in render_table(report).splitlines()}
    assert rows[f"controller 1 @{BT2}"][3] == "ok" and rows[f"dcc 96 @{BT2}"][3] == "stale"
    assert report.to_json()["devices"][0]["kind"] == "controller"
