"""A state change reaches N plaintext clients as one encoding written N times (issue 15 item 4)."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from services.gateway import framing, server
from tests.gateway.support import all_configs, api_client, bare_server, battery_state, wait_until

CLIENTS = 3


async def test_one_encoding_per_state_message_for_every_plaintext_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encodes: list[int] = []
    real = framing.encode_plaintext_many

    def counting(frames: Iterable[framing.Frame]) -> bytes:
        frames = list(frames)
        encodes.append(len(frames))
        return real(frames)

    # Where each version of the code encodes: the codec (framing) or the fan-out (server).
    monkeypatch.setattr(framing, "encode_plaintext_many", counting)
    monkeypatch.setattr(server, "encode_plaintext_many", counting, raising=False)
    async with bare_server(tmp_path, configs=all_configs()) as gateway, AsyncExitStack() as stack:
        seen: list[list[Any]] = [[] for _ in range(CLIENTS)]
        for index in range(CLIENTS):
            client = await stack.enter_async_context(api_client(gateway.port))
            await client.list_entities_services()
            client.subscribe_states(seen[index].append)
        await wait_until(lambda: all(seen), what="every client's initial states")
        before = [len(states) for states in seen]
        encodes.clear()
        changed = gateway.registry.set_state("battery_48", battery_state(48, offset=10.0))
        assert changed, "the new power value is a change"
        await wait_until(
            lambda: all(len(s) > b for s, b in zip(seen, before, strict=True)),
            what="the change at every client",
        )
        assert encodes == [len(changed)], f"{len(encodes)} encodings for {CLIENTS} clients: {encodes}"
