"""The three services as separate processes: readings flow to a real aioesphomeapi client."""

from __future__ import annotations

from pathlib import Path

from tests.support.stack import Stack, api_snapshot


async def test_stack_serves_55_entities(mosquitto, tmp_path: Path) -> None:
    stack = Stack(mosquitto.url, tmp_path)
    await stack.start()
    try:
        snapshot = await api_snapshot(stack.api_port, expect_entities=55, timeout=30)
        assert len(snapshot.entities) == 55
        level = snapshot.value("battery_48_battery_level")
        assert level is not None and 0 <= level <= 100
    except BaseException:
        print(stack.logs())
        raise
    finally:
        await stack.stop()
