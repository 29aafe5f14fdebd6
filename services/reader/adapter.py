"""BlueZ adapter operations over D-Bus: read its address, power-cycle it (with deadlines)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dbus_fast import Message
    from dbus_fast.aio import MessageBus

_LOGGER = logging.getLogger(__name__)
TIMEOUT = 10.0


@contextlib.asynccontextmanager
async def system_bus() -> AsyncIterator[MessageBus]:
    """A connection to the system D-Bus, closed on exit; callers put it under a deadline."""
    from dbus_fast import BusType  # noqa: PLC0415 - Linux only
    from dbus_fast.aio import MessageBus  # noqa: PLC0415

    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        yield bus
    finally:
        bus.disconnect()


def adapter_properties(adapter: str, member: str, signature: str, *args: Any) -> Message:
    """A Properties call (``Get``, ``GetAll``, ``Set``) on BlueZ's Adapter1 interface of ``adapter``."""
    from dbus_fast import Message  # noqa: PLC0415 - Linux only

    return Message(
        destination="org.bluez",
        path=f"/org/bluez/{adapter}",
        interface="org.freedesktop.DBus.Properties",
        member=member,
        signature=signature,
        body=["org.bluez.Adapter1", *args],
    )


async def _set_powered(bus: MessageBus, adapter: str, powered: bool) -> None:
    from dbus_fast import Variant  # noqa: PLC0415 - Linux only

    reply = await bus.call(adapter_properties(adapter, "Set", "ssv", "Powered", Variant("b", powered)))
    if reply is None or reply.message_type.name == "ERROR":
        raise OSError(f"{reply.error_name}: {reply.body}" if reply else "no reply from BlueZ")


async def power_cycle(adapter: str) -> bool:
    """Power the adapter off and on through BlueZ; False (logged) when that is not possible."""
    try:
        async with asyncio.timeout(TIMEOUT), system_bus() as bus:
            await _set_powered(bus, adapter, False)
            await asyncio.sleep(1.0)  # the controller needs a moment before it powers up again
            await _set_powered(bus, adapter, True)
    except Exception as exc:
        _LOGGER.error(
            "could not power-cycle adapter %s through BlueZ: %r (in docker this needs the host "
            "D-Bus socket; permission comes from the bluetooth D-Bus policy)",
            adapter,
            exc,
        )
        return False
    _LOGGER.warning("power-cycled Bluetooth adapter %s", adapter)
    return True


async def adapter_address(adapter: str) -> str | None:
    """The adapter's MAC (BlueZ Adapter1.Address), or None when BlueZ is unreachable."""
    try:
        async with asyncio.timeout(TIMEOUT), system_bus() as bus:
            reply = await bus.call(adapter_properties(adapter, "Get", "ss", "Address"))
    except Exception as exc:
        _LOGGER.debug("adapter address unavailable: %r", exc)
        return None
    if reply is None or reply.message_type.name == "ERROR" or not reply.body:
        return None
    return str(reply.body[0].value).upper()
