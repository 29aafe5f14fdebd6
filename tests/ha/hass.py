"""A real Home Assistant process for tests, driven over its REST and websocket APIs.

HA runs in its own venv (tests/ha/venv.py) through tests/ha/launcher.py; the test talks to it only
over HTTP (stdlib urllib in a thread) and the websocket API (the ``websockets`` client the project
venv has), never by importing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect

from tests.ha.venv import HaEnv
from tests.support.brokers import free_port

LAUNCHER = Path(__file__).with_name("launcher.py")
USERNAME = "renogy-test"
PASSWORD = "renogy-test-password"  # a throw-away HA instance on loopback

T = TypeVar("T")


class HaApiError(RuntimeError):
    """A websocket command answered success=false."""

    def __init__(self, command: str, error: dict[str, Any]) -> None:
        super().__init__(f"{command}: {error.get('code')}: {error.get('message')}")
        self.code = str(error.get("code"))


async def poll(
    what: str, probe: Callable[[], Awaitable[T | None]], *, timeout: float, interval: float = 0.2
) -> T:
    """Call ``probe`` until it returns something other than None; TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = await probe()
        except (OSError, HaApiError, AssertionError) as exc:
            last, result = exc, None
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{what}: not within {timeout:.0f} s" + (f" (last error: {last!r})" if last else "")
            )
        await asyncio.sleep(interval)


def configuration_yaml(port: int) -> str:
    """A minimal configuration: HTTP on loopback and the integrations the test uses, no default_config."""
    return f"""\
homeassistant:
  name: Renogy test
  latitude: 52.37
  longitude: 4.89
  elevation: 0
  unit_system: metric
  time_zone: UTC
  currency: EUR
  country: NL
http:
  server_host: 127.0.0.1
  server_port: {port}
api:
config:
onboarding:
websocket_api:
network:
zeroconf:
bluetooth:
logger:
  default: warning
  logs:
    homeassistant.bootstrap: info
    homeassistant.setup: info
    homeassistant.components.esphome: debug
    homeassistant.components.bluetooth: info
    homeassistant.config_entries: info
    aioesphomeapi.reconnect_logic: debug
    bleak_esphome: info
    habluetooth: info
"""


@dataclass
class HomeAssistant:
    env: HaEnv
    config_dir: Path
    port: int = field(default_factory=free_port)
    process: asyncio.subprocess.Process | None = None
    token: str | None = None
    starts: int = 0

    def __post_init__(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "configuration.yaml").write_text(configuration_yaml(self.port))
        self.console_log = self.config_dir / "hass-console.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def client_id(self) -> str:
        return f"{self.base_url}/"

    # ---- process -------------------------------------------------------------------------------

    async def start(self, timeout: float = 180.0) -> float:
        """Start hass and wait until its HTTP API answers; returns the seconds it took."""
        started = time.monotonic()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("VIRTUAL_ENV", None)
        with self.console_log.open("ab") as log:
            log.write(f"\n==== hass start {self.starts + 1} at {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            self.process = await asyncio.create_subprocess_exec(
                str(self.env.python),
                str(LAUNCHER),
                "-c",
                str(self.config_dir),
                "--skip-pip",
                "--log-no-color",
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.starts += 1

        async def http_up() -> bool | None:
            if self.process is not None and self.process.returncode is not None:
                raise RuntimeError(f"hass exited with {self.process.returncode}:\n{self.log_tail()}")
            status, _ = await self.http("GET", "/api/onboarding", auth=False, timeout=2)
            return True if status == 200 else None

        await poll("Home Assistant HTTP API", http_up, timeout=timeout, interval=0.25)
        if self.token is not None:
            await self.wait_running(timeout=max(5.0, timeout - (time.monotonic() - started)))
        return time.monotonic() - started

    async def wait_running(self, timeout: float = 120.0) -> None:
        async def running() -> bool | None:
            async with self.websocket() as ws:
                config = await ws.call("get_config")
            return True if config.get("state") == "RUNNING" else None

        await poll("Home Assistant state RUNNING", running, timeout=timeout, interval=0.5)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (HA's clean shutdown, which writes .storage) and wait; SIGKILL the group if it hangs."""
        if self.process is None:
            return None
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                await self.process.wait()
        return self.process.returncode

    def log(self) -> str:
        return self.console_log.read_text(errors="replace") if self.console_log.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def storage(self, key: str) -> dict[str, Any]:
        """A ``.storage`` file as JSON (HA writes them with a short delay and at shutdown)."""
        data: dict[str, Any] = json.loads((self.config_dir / ".storage" / key).read_text())
        return data

    # ---- REST -----------------------------------------------------------------------------------

    async def http(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        form: dict[str, str] | None = None,
        auth: bool = True,
        timeout: float = 30.0,
    ) -> tuple[int, Any]:
        """One request; returns (status, decoded JSON or text). Connection errors raise OSError."""
        headers: dict[str, str] = {}
        data: bytes | None = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)

        def send() -> tuple[int, bytes]:
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    return int(response.status), response.read()
            except urllib.error.HTTPError as exc:
                return int(exc.code), exc.read()

        status, raw = await asyncio.to_thread(send)
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    async def onboard(self) -> str:
        """Create the owner user (onboarding step 1) and exchange its auth code for an access token."""
        status, result = await self.http(
            "POST",
            "/api/onboarding/users",
            body={
                "client_id": self.client_id,
                "name": "Renogy Test",
                "username": USERNAME,
                "password": PASSWORD,
                "language": "en",
            },
            auth=False,
        )
        assert status == 200, f"onboarding user step: HTTP {status} {result}"
        status, tokens = await self.http(
            "POST",
            "/auth/token",
            form={
                "grant_type": "authorization_code",
                "code": result["auth_code"],
                "client_id": self.client_id,
            },
            auth=False,
        )
        assert status == 200, f"/auth/token: HTTP {status} {tokens}"
        self.token = str(tokens["access_token"])
        return self.token

    async def flow(self, flow_id: str | None, data: dict[str, Any]) -> dict[str, Any]:
        """Start a config flow (``flow_id`` None, ``data`` = {"handler": ...}) or submit a step of one."""
        path = "/api/config/config_entries/flow" + (f"/{flow_id}" if flow_id else "")
        status, result = await self.http("POST", path, body=data, timeout=90)
        assert status == 200, f"POST {path} {data}: HTTP {status} {result}"
        assert isinstance(result, dict)
        return result

    async def abort_flow(self, flow_id: str) -> None:
        await self.http("DELETE", f"/api/config/config_entries/flow/{flow_id}")

    # ---- websocket ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def websocket(self) -> AsyncIterator[HaWebSocket]:
        assert self.token is not None, "onboard() first"
        async with connect(
            f"ws://127.0.0.1:{self.port}/api/websocket", max_size=64 * 1024 * 1024, open_timeout=10
        ) as conn:
            ws = HaWebSocket(conn)
            await ws.authenticate(self.token)
            try:
                yield ws
            finally:
                await ws.close()


class HaWebSocket:
    """Home Assistant's websocket API: commands with ids, results and subscription events."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self._next_id = 1
        self._results: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: dict[int, asyncio.Queue[Any]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def authenticate(self, token: str) -> None:
        hello = json.loads(await self.conn.recv())
        assert hello.get("type") == "auth_required", hello
        await self.conn.send(json.dumps({"type": "auth", "access_token": token}))
        answer = json.loads(await self.conn.recv())
        assert answer.get("type") == "auth_ok", answer
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.conn:
                messages = json.loads(raw)
                for msg in messages if isinstance(messages, list) else [messages]:
                    msg_id = int(msg.get("id", 0))
                    if msg.get("type") == "result" and msg_id in self._results:
                        future = self._results.pop(msg_id)
                        if not future.done():
                            future.set_result(msg)
                    elif msg.get("type") == "event" and msg_id in self._events:
                        self._events[msg_id].put_nowait(msg.get("event"))
        finally:
            for future in self._results.values():
                if not future.done():
                    future.set_exception(ConnectionError("Home Assistant websocket closed"))

    async def call(self, command: str, timeout: float = 30.0, **fields: Any) -> Any:
        msg_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._results[msg_id] = future
        await self.conn.send(json.dumps({"id": msg_id, "type": command, **fields}))
        reply = await asyncio.wait_for(future, timeout)
        if not reply.get("success"):
            raise HaApiError(command, reply.get("error") or {})
        return reply.get("result")

    async def subscribe(self, command: str, **fields: Any) -> asyncio.Queue[Any]:
        """Send a subscription command; its events arrive on the returned queue."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._events[self._next_id] = queue
        await self.call(command, **fields)
        return queue

    async def close(self) -> None:
        await self.conn.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
