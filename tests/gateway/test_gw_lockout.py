"""Nobody who merely opens sockets or floods requests can keep Home Assistant out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import pytest

from services.gateway.connection import Keepalive, Limits, MessageBudget
from services.gateway.framing import PlaintextDecoder, encode_plaintext
from services.gateway.messages import HELLO_REQUEST, PING_REQUEST, PING_RESPONSE
from services.gateway.proto import pb
from services.gateway.throttle import ThrottledLog
from tests.gateway.support import all_configs, api_client, bare_server, wait_until

_HELLO = encode_plaintext(
    HELLO_REQUEST,
    pb.HelloRequest(client_info="flood", api_version_major=1, api_version_minor=19).SerializeToString(),
)


async def _idle_socket(port: int) -> asyncio.StreamWriter:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    return writer


async def test_idle_sockets_never_lock_out_a_real_client(tmp_path: Path) -> None:
    """Today's port scanner: more silent connections than gateway.max_clients, reopened as they close."""
    # A scanner's sockets stay silent past the grace period; 0 here stands for "they all have".
    async with bare_server(
        tmp_path, configs=all_configs(), max_clients=16, limits=Limits(pending_grace=0.0)
    ) as server:
        idle = [await _idle_socket(server.port) for _ in range(24)]
        await wait_until(lambda: server.counters.connections_total >= 24, what="24 idle connections")
        pending = [c for c in server.connections if not c.hello_done]
        assert len(pending) <= Limits().pending  # the oldest were closed to make room
        async with api_client(server.port) as client:
            entities, _ = await client.list_entities_services()
            assert len(entities) == 55
        assert server.counters.rejected_full == 0
        assert server.counters.pending_evicted >= 24 - Limits().pending
        for writer in idle:
            writer.close()


async def test_young_silent_sockets_are_capped(tmp_path: Path) -> None:
    """Within the grace period sockets are let in over the budget, but never above the hard cap."""
    async with bare_server(tmp_path, configs=all_configs(), limits=Limits(pending_cap=12)) as server:
        idle = [await _idle_socket(server.port) for _ in range(24)]
        await wait_until(lambda: server.counters.connections_total >= 24, what="24 idle connections")
        assert len([c for c in server.connections if not c.hello_done]) <= 12
        async with api_client(server.port) as client:
            entities, _ = await client.list_entities_services()
            assert len(entities) == 55
        for writer in idle:
            writer.close()


async def test_real_clients_connecting_at_once_are_all_let_in(tmp_path: Path) -> None:
    """16 real clients connecting together (more than the pre-Hello budget mid-handshake at one time)
    all get their session: the budget closed the first of them before (the gateway fan-out bench)."""
    async with bare_server(tmp_path, configs=all_configs(), max_clients=16) as server:
        async with contextlib.AsyncExitStack() as stack:
            clients = await asyncio.gather(
                *(stack.enter_async_context(api_client(server.port)) for _ in range(16))
            )
            listed = await asyncio.gather(*(client.list_entities_services() for client in clients))
            assert [len(entities) for entities, _ in listed] == [55] * 16
        assert server.counters.pending_evicted == 0


async def test_silent_connection_is_closed_after_the_short_deadline(tmp_path: Path) -> None:
    assert Keepalive().handshake_timeout <= 10  # not ESPHome's 60 s: a slot is held that long
    async with bare_server(tmp_path, keepalive=Keepalive(handshake_timeout=0.2)) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # closed by the gateway
        writer.close()


async def test_real_client_limit_counts_sessions_only(tmp_path: Path) -> None:
    async with bare_server(tmp_path, configs=all_configs(), max_clients=2) as server:
        idle = [await _idle_socket(server.port) for _ in range(3)]
        async with api_client(server.port), api_client(server.port):
            assert server.counters.rejected_full == 0
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(_HELLO)
            async with asyncio.timeout(5):
                assert await reader.read() == b""  # a third session is refused at Hello
            writer.close()
            assert server.counters.rejected_full == 1
        for w in idle:
            w.close()


async def test_refusals_are_logged_again_after_the_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A lockout that lasts is reported every interval, with how many refusals were not logged."""
    caplog.set_level(logging.WARNING, logger="services.gateway.server")
    async with (
        bare_server(tmp_path, max_clients=1, refusal_log_interval=0.3) as server,
        api_client(server.port),
    ):

        async def refused() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(_HELLO)
            async with asyncio.timeout(5):
                await reader.read()
            writer.close()

        for _ in range(3):
            await refused()
        lines = [r.getMessage() for r in caplog.records if "refusing client" in r.getMessage()]
        assert len(lines) == 1
        await wait_until(lambda: _elapsed(server), within=5, what="the log interval")
        await refused()
        lines = [r.getMessage() for r in caplog.records if "refusing client" in r.getMessage()]
        assert len(lines) == 2 and "(2 more like it" in lines[1]


def _elapsed(server: object) -> bool:
    refusals = server._refusals  # type: ignore[attr-defined]
    last = refusals._last.get("full")
    return last is not None and refusals._clock() - last >= refusals.interval


async def test_ping_flood_is_cut_off_and_others_keep_their_answers(tmp_path: Path) -> None:
    """10 MB of PingRequests cost 13-17 s of gateway CPU; now the flooder is closed after its budget."""
    async with bare_server(tmp_path, configs=all_configs()) as server, api_client(server.port) as other:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(_HELLO + encode_plaintext(PING_REQUEST, b"") * 200_000)  # 600 kB
        answered = 0
        decoder = PlaintextDecoder()
        async with asyncio.timeout(10):
            with contextlib.suppress(ConnectionResetError):  # the gateway aborts a flooder
                while data := await reader.read(65536):
                    answered += sum(f.msg_type == PING_RESPONSE for f in decoder.feed(data))
        assert answered <= Limits().burst
        assert server.counters.rate_limited == 1
        with contextlib.suppress(ConnectionError):
            writer.close()
        assert (await other.device_info()).name == "bare-node"


def test_message_budget_refills_at_its_rate() -> None:
    budget = MessageBudget(burst=10, rate=5.0, now=0.0)
    assert budget.take(10, now=0.0)
    assert not budget.take(1, now=0.0)
    assert budget.take(4, now=1.0)  # 5 back after a second, one of them owed
    assert not budget.take(2, now=1.0)
    assert budget.take(10, now=100.0)  # never more than the burst


def test_throttled_log_counts_what_it_did_not_log(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = ThrottledLog(logging.getLogger("throttle-test"), 60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="throttle-test"):
        assert log.log("full", "refusing %s", "a")
        now[0] = 30.0
        assert not log.log("full", "refusing %s", "b")
        assert log.log("other", "something else")
        now[0] = 61.0
        assert log.log("full", "refusing %s", "c")
    assert [r.getMessage() for r in caplog.records] == [
        "refusing a",
        "something else",
        "refusing c (1 more like it in the last 61 s)",
    ]
