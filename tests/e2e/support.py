"""What the end-to-end tests share: a real aioesphomeapi client's view of a running stack."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aioesphomeapi import APIClient, EntityInfo

from tests.support.brokers import free_port


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


@contextlib.asynccontextmanager
async def running_stack(tmp_path: Path, mqtt_url: str, *args: str) -> AsyncIterator[int]:
    """`renogy-proxy run --simulate <args>` against ``mqtt_url``; yields its API port. Its log is printed
    when the body fails; SIGTERM (then a kill after 20 s) at the end."""
    port = free_port()
    log_path = tmp_path / "run.log"
    env = {**os.environ, "RENOGY_API_BIND": "127.0.0.1", "RENOGY_SIM_LATENCY_SCALE": "0.05"}
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "run", "--simulate", *args,
            "--api-port", str(port), "--state-dir", str(tmp_path / "state"), "--mqtt", mqtt_url,
            "--no-mdns",
            env=env, stdout=log, stderr=log,
        )  # fmt: skip
        try:
            yield port
        except BaseException:
            print(log_path.read_text(errors="replace")[-6000:])
            raise
        finally:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()
