"""One Home-Assistant-like session with whichever aioesphomeapi release is installed; prints one JSON object.

Run by the python of a compat venv (``python -I client_probe.py HOST PORT [--psk KEY] [--timeout S]``).
It imports nothing from the project: only the stdlib and the installed aioesphomeapi, and copes
with the API differences between releases 21.x and 46.x:

* ``subscribe_states`` and ``subscribe_bluetooth_le_raw_advertisements`` are coroutines in 21.x and
  plain methods from 24.x on; the advertisement unsubscribe callback is synchronous in all of them
  (both are awaited here if they return an awaitable);
* ``SensorInfo.device_id`` and ``DeviceInfo.devices`` (sub-devices) exist only from 2025 releases on;
* ``connect(login=True)`` sends ConnectRequest and waits for ConnectResponse up to 29.x; later
  releases send AuthenticationRequest and wait only for HelloResponse.

The session: connect, device_info, list_entities_services, one state per sensor, the raw
advertisement subscription (waits for one batch, or reports none), unsubscribe, disconnect.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import time
from collections import Counter
from importlib import metadata
from typing import Any

from aioesphomeapi.client import APIClient
from aioesphomeapi.model import SensorInfo, SensorState


async def _settle(value: Any) -> Any:
    """The value, awaited first if this release made the call a coroutine."""
    if inspect.isawaitable(value):
        return await value
    return value


class Probe:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.monotonic()
        self.deadline = self.started + args.timeout
        self.stage = "start"
        self.result: dict[str, Any] = {
            "version": metadata.version("aioesphomeapi"),
            "transport": "noise" if args.psk else "plaintext",
            "connected": False,
            "api_version": None,
            "name": None,
            "mac": None,
            "sensors": 0,
            "states": 0,
            "unique_names": None,
            "unique_by": None,
            "duplicate_names": [],
            "unique_object_ids": None,
            "unique_keys": None,
            "sub_devices": None,
            "advert_batches": 0,
            "adverts": 0,
            "disconnect": None,
            "elapsed": None,
            "stage": None,
            "error": None,
        }
        self.stopped: asyncio.Future[bool] | None = None

    def remaining(self, cap: float | None = None) -> float:
        left = max(0.0, self.deadline - time.monotonic())
        return left if cap is None else float(min(cap, left))

    async def within(self, stage: str, awaitable: Any, cap: float | None = None) -> Any:
        self.stage = stage
        budget = self.remaining(cap)
        try:
            return await asyncio.wait_for(_settle(awaitable), budget)
        except TimeoutError:
            raise TimeoutError(f"no answer within {budget:.1f} s") from None

    async def on_stop(self, expected_disconnect: bool) -> None:
        if self.stopped is not None and not self.stopped.done():
            self.stopped.set_result(expected_disconnect)

    async def run(self) -> dict[str, Any]:
        args = self.args
        self.stopped = asyncio.get_running_loop().create_future()
        client = APIClient(
            args.host,
            args.port,
            None,
            noise_psk=args.psk or None,
            client_info=f"compat-probe {self.result['version']}",
        )
        try:
            await self.session(client)
        except Exception as exc:  # every failure is reported in the JSON, with the stage it happened in
            self.result["stage"] = self.stage
            self.result["error"] = f"{self.stage}: {type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):  # already gone: nothing to clean up
                await asyncio.wait_for(client.disconnect(force=True), 2)
        self.result["elapsed"] = round(time.monotonic() - self.started, 2)
        return self.result

    async def session(self, client: Any) -> None:  # Any: the signatures differ between releases
        args, result = self.args, self.result
        await self.within("connect", client.connect(on_stop=self.on_stop, login=True))
        result["connected"] = True
        version = client.api_version
        if version is not None:
            result["api_version"] = f"{version.major}.{version.minor}"

        info = await self.within("device_info", client.device_info())
        result["name"] = info.name
        result["mac"] = info.mac_address
        devices = getattr(info, "devices", None)
        result["sub_devices"] = None if devices is None else len(devices)

        entities, _services = await self.within("list_entities", client.list_entities_services())
        sensors = [e for e in entities if isinstance(e, SensorInfo)]
        result["sensors"] = len(sensors)
        if sensors and all(hasattr(e, "device_id") for e in sensors):
            labels = [f"{e.device_id}/{e.name}" for e in sensors]
            result["unique_by"] = "device_id+name"
        else:
            labels = [str(e.name) for e in sensors]
            result["unique_by"] = "name"
        repeated = sorted(label for label, count in Counter(labels).items() if count > 1)
        result["unique_names"] = not repeated
        result["duplicate_names"] = repeated[:5]
        # HA before 2025 builds entity unique ids from object_id; its state cache is keyed by key.
        result["unique_object_ids"] = len({e.object_id for e in sensors}) == len(sensors)
        result["unique_keys"] = len({e.key for e in sensors}) == len(sensors)

        wanted = {e.key for e in sensors}
        seen: set[int] = set()
        all_states = asyncio.Event()

        def on_state(state: Any) -> None:
            if isinstance(state, SensorState) and state.key in wanted:
                seen.add(state.key)
                result["states"] = len(seen)
                if len(seen) >= len(wanted):
                    all_states.set()

        await self.within("subscribe_states", client.subscribe_states(on_state))
        await self.within("states", all_states.wait())

        first_batch = asyncio.Event()

        def on_adverts(message: Any) -> None:
            result["advert_batches"] += 1
            result["adverts"] += len(message.advertisements)
            first_batch.set()

        unsubscribe = await self.within(
            "subscribe_adverts", client.subscribe_bluetooth_le_raw_advertisements(on_adverts)
        )
        self.stage = "adverts"
        with contextlib.suppress(TimeoutError):  # none heard: adverts = 0, the caller decides
            await asyncio.wait_for(first_batch.wait(), self.remaining(args.advert_wait))
        await self.within("unsubscribe_adverts", unsubscribe())

        await self.within("disconnect", client.disconnect(), cap=10)
        assert self.stopped is not None
        try:
            expected = await asyncio.wait_for(asyncio.shield(self.stopped), self.remaining(5))
        except TimeoutError:
            result["disconnect"] = "no on_stop callback"
        else:
            result["disconnect"] = "clean" if expected else "unexpected (on_stop expected_disconnect=False)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--psk", default=None, help="Noise pre-shared key (base64); plaintext when absent")
    parser.add_argument("--timeout", type=float, default=45.0, help="deadline of the whole session, s")
    parser.add_argument(
        "--advert-wait", type=float, default=10.0, help="longest wait for the first advertisement batch, s"
    )
    args = parser.parse_args()
    print(json.dumps(asyncio.run(Probe(args).run())), flush=True)


if __name__ == "__main__":
    main()
