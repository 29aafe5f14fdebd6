"""What the end-to-end tests share: a real aioesphomeapi client's view of a running stack."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from aioesphomeapi import APIClient, EntityInfo


async def snapshot(
    port: int, timeout: float, ready: Callable[[dict[str, EntityInfo]], bool], what: str
) -> tuple[dict[str, EntityInfo], dict[int, Any]]:
    """Entities by object id and one state per entity, as Home Assistant would see them, once
    ``ready`` says the listed entities are complete (the stack may still be starting)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        client = APIClient("127.0.0.1", port, None)
        try:
            async with asyncio.timeout(max(0.5, min(5.0, deadline - time.monotonic()))):
                await client.connect(login=True)
                entities, _ = await client.list_entities_services()
                by_id = {e.object_id: e for e in entities}
                if not ready(by_id):
                    raise AssertionError(f"not every entity listed yet: {sorted(by_id)[:8]}...")
                states: dict[int, Any] = {}
                done = asyncio.Event()

                def on_state(
                    state: Any,
                    states: dict[int, Any] = states,
                    done: asyncio.Event = done,
                    wanted: int = len(by_id),
                ) -> None:
                    states[state.key] = state
                    if len(states) >= wanted:
                        done.set()

                client.subscribe_states(on_state)
                await done.wait()
                return by_id, states
        except (Exception, TimeoutError) as exc:  # not up yet: try again until the deadline
            last = exc
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 2)
        await asyncio.sleep(0.2)
    raise TimeoutError(f"the gateway did not serve {what}: {last!r}")
