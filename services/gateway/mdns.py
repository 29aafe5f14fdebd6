"""mDNS announcement of ``<name>._esphomelib._tcp.local.`` with the TXT records Home Assistant reads.

Only addresses Home Assistant can reach are announced (services.gateway.netif decides which).
Failing to announce is logged and otherwise ignored: Home Assistant can still add the node by address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any, Final

from services.gateway.identity import Mac
from services.gateway.netif import Choice, announced_addresses
from services.gateway.noise import NOISE_PROTOCOL_NAME

_LOGGER = logging.getLogger(__name__)

SERVICE_TYPE: Final = "_esphomelib._tcp.local."


def build_txt(
    *,
    mac: Mac,
    friendly_name: str,
    esphome_version: str,
    project_name: str,
    project_version: str,
    encrypted: bool,
) -> dict[str, str]:
    """TXT records as ESPHome publishes them (mac as 12 lower-case hex digits)."""
    txt = {
        "friendly_name": friendly_name,
        "version": esphome_version,
        "mac": mac.hex_lower,
        "project_name": project_name,
        "project_version": project_version,
    }
    # api_encryption tells HA a key is required; _supported that one can be provisioned.
    txt["api_encryption" if encrypted else "api_encryption_supported"] = NOISE_PROTOCOL_NAME.decode()
    return {k: v for k, v in txt.items() if v}


def host_addresses(
    bind: str, *, addresses: Sequence[str] = (), interface: str | None = None
) -> list[str]:
    """Addresses to announce on this host (blocking); the choice is ``netif.choose_addresses``."""
    return list(announced_addresses(bind, explicit=addresses, only_interface=interface).addresses)


class MdnsAnnouncer:
    """Registers, updates and withdraws the node's mDNS service."""

    def __init__(
        self,
        name: str,
        port: int,
        bind: str,
        txt: dict[str, str],
        *,
        addresses: Sequence[str] = (),
        interface: str | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.bind = bind
        self.txt = txt
        self.addresses = tuple(addresses)
        self.interface = interface
        self.choice: Choice | None = None
        self._zc: Any = None
        self._info: Any = None
        self._task: asyncio.Task[None] | None = None
        self.registered = False

    def start(self) -> None:
        """Announce in the background (name probing takes about a second)."""
        self._task = asyncio.get_running_loop().create_task(self._register())

    async def _register(self) -> None:
        try:
            from zeroconf import ServiceInfo  # noqa: PLC0415 - keep import cost off the tests that disable mDNS
            from zeroconf.asyncio import AsyncZeroconf  # noqa: PLC0415

            choice = await asyncio.to_thread(
                announced_addresses, self.bind, explicit=self.addresses, only_interface=self.interface
            )
            self.choice = choice
            if not choice.addresses:
                # Home Assistant ignores a record without addresses; say why there are none.
                raise RuntimeError(f"nothing to announce: {choice.describe()}")
            self._info = ServiceInfo(
                SERVICE_TYPE,
                f"{self.name}.{SERVICE_TYPE}",
                port=self.port,
                properties=self.txt,
                server=f"{self.name}.local.",
                parsed_addresses=list(choice.addresses),
            )
            self._zc = AsyncZeroconf()
            await (await self._zc.async_register_service(self._info))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _LOGGER.warning(
                "mDNS announcement of %s.%s failed: %s; add the node in Home Assistant by address instead",
                self.name,
                SERVICE_TYPE,
                exc,
            )
            return
        self.registered = True
        _LOGGER.info(
            "announced %s.%s on port %d via mDNS: %s", self.name, SERVICE_TYPE, self.port, choice.describe()
        )

    async def update(self, txt: dict[str, str]) -> None:
        self.txt = txt
        if not self.registered or self._zc is None or self._info is None:
            return
        try:
            from zeroconf import ServiceInfo  # noqa: PLC0415

            info = self._info
            self._info = ServiceInfo(
                SERVICE_TYPE,
                info.name,
                port=info.port,
                properties=txt,
                server=info.server,
                parsed_addresses=info.parsed_addresses(),
            )
            await (await self._zc.async_update_service(self._info))
        except Exception as exc:
            _LOGGER.warning("mDNS update failed: %s", exc)

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._zc is not None:
            try:
                if self.registered and self._info is not None:
                    await (await self._zc.async_unregister_service(self._info))
                await self._zc.async_close()
            except Exception as exc:
                _LOGGER.debug("mDNS shutdown: %s", exc)
        self._zc = None
        self.registered = False
